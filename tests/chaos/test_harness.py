"""The harness's own parts, checked on planted evidence: a checker that cannot see a
leak, a lost job or a double submission would let every scenario pass."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from tests.chaos import checks
from tests.chaos.broker import decode_payload, read_messages
from tests.chaos.facts import JobFacts, RunFacts
from tests.chaos.faults import PoisonMessage
from tests.chaos.monitor import FaultEvent
from tests.chaos.secrets_scan import needles, redis_blobs, search
from tests.chaos.workload import Enqueued, tag_of
from worker.settings import Settings
from worker.store import decode_record

KEY = "sk-chaos-0123456789abcdef01234567"


def _celery_payload(kwargs: dict[str, Any], chain: list[dict[str, Any]] | None = None) -> str:
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": chain}])
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "headers": {"task": "wavequeue.run_job", "id": "task-1"},
            "properties": {"body_encoding": "base64", "delivery_tag": "tag-1"},
        }
    )


def test_the_key_is_found_base64_encoded_at_every_alignment() -> None:
    for prefix in ("", "a", "ab", "abc"):
        blob = base64.b64encode(f'{prefix}{{"key": "{KEY}"}}'.encode())
        assert search([("blob", blob)], KEY), prefix
    assert not search([("blob", base64.b64encode(b"nothing secret here"))], KEY)
    assert needles(KEY)[0] == KEY.encode()


def test_a_key_planted_in_redis_is_found(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hset("unacked", "tag-1", json.dumps([_celery_payload({"api_key": KEY}), "", "q"]))
    client.set("wq:clean", "nothing here")
    hits = search(redis_blobs(redis_url), KEY)
    assert [hit.where for hit in hits] == ["db0 b'unacked'"]
    assert KEY not in hits[0].excerpt  # the report never prints the key itself


def test_broker_messages_are_decoded_with_the_jobs_they_carry(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    chained = [{"kwargs": {"job_id": "step-2"}}, {"kwargs": {"job_id": "step-3"}}]
    client.rpush("wavequeue.normal", _celery_payload({"job_id": "step-1"}, chained))
    raw = json.loads(_celery_payload({"job_id": "held"}))
    client.hset("unacked", "tag-1", json.dumps([raw, "", "wavequeue.high"]))
    client.zadd("unacked_index", {"tag-1": 123.0})

    waiting, held = sorted(read_messages(client), key=lambda m: m.where)

    assert waiting.where == "queue:wavequeue.normal"
    assert waiting.job_ids == ("step-1", "step-2", "step-3")
    assert (held.where, held.job_ids, held.delivered_at) == ("unacked:tag-1", ("held",), 123.0)
    assert decode_payload("x", "{}").job_ids == ()


def _facts(jobs: list[JobFacts], predictions: list[dict[str, Any]], policy: str) -> RunFacts:
    items = list({id(job.item): job.item for job in jobs}.values())
    return RunFacts(
        scenario="test",
        settings=Settings.from_env({"WAVEQUEUE_AMBIGUOUS_SUBMIT": policy}),
        items=items,
        jobs={job.job_id: job for job in jobs},
        predictions=predictions,
        emulator_stats={"submissions": {"faults_per_input": {}}},
        producer_calls=[],
        logs=[],
        events=[],
        messages=[],
    )


def _job(job_id: str, status: str, tag: str = "j0001") -> JobFacts:
    item = Enqueued(tag, "text-to-image", "normal", [job_id], None, 0.0)
    raw = (
        {
            "id": job_id,
            "model": "flux-kontext-max/text-to-image",
            "status": status,
            "created_at": "1",
            "deadline_at": "2",
        }
        if status != "missing"
        else {}
    )
    request = json.dumps({"input": {"prompt": f"[{tag}] x"}})
    return JobFacts(job_id, tag, item, 1, raw, decode_record(raw, request, job_id) if raw else None)


def _prediction(number: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"p{number}",
        "input": {"prompt": "[j0001] x"},
        "input_key": "k",
        "status": "completed",
        "code": None,
        "submit_faults": [],
        "submit_answer": "delivered",
        "created_at": f"2026-01-01T00:00:0{number}.000Z",
        **fields,
    }


def test_missing_and_stuck_jobs_are_lost() -> None:
    facts = _facts([_job("a", "missing", "j0001"), _job("b", "processing", "j0002")], [], "fail")
    found = checks.every_job_ends_terminal(facts)
    assert [checks.is_lost(v) for v in found] == [True, True]
    assert "record missing" in found[0].evidence and "stuck in processing" in found[1].evidence


def test_a_second_prediction_needs_a_reason() -> None:
    job = _job("a", "completed")
    blind = _facts([job], [_prediction(1), _prediction(2)], "fail")
    after_remote_failure = _facts(
        [job], [_prediction(1, status="failed", code=5003), _prediction(2)], "fail"
    )
    lost_answer = [_prediction(1, submit_answer="submit_drop_after_create"), _prediction(2)]

    assert checks.double_submitted_jobs(checks.submitted_once(blind)) == {"job a [j0001]"}
    assert checks.submitted_once(after_remote_failure) == []
    # A lost answer justifies a second prediction only when the policy allows it.
    assert checks.submitted_once(_facts([job], lost_answer, "resubmit")) == []
    assert checks.submitted_once(_facts([job], lost_answer, "fail"))


def test_an_answer_cut_by_the_emulator_gate_justifies_a_resubmit_only() -> None:
    # The emulator wrote its answer ("delivered" to it) a millisecond after the gate was
    # told to reset every connection: the worker saw the connection drop, no answer.
    job = _job("a", "completed")
    created = datetime.fromisoformat("2026-01-01T00:00:01+00:00").timestamp()
    cut = FaultEvent("emulator_down", "emulator unreachable 10s", created - 0.001, created + 10)
    far = FaultEvent("emulator_down", "emulator unreachable 10s", created + 30, created + 40)
    both = [_prediction(1), _prediction(2)]

    def facts(policy: str, event: FaultEvent) -> RunFacts:
        found = _facts([job], both, policy)
        found.events.append(event)
        return found

    assert checks.submitted_once(facts("resubmit", cut)) == []
    assert checks.second_prediction_reasons(facts("resubmit", cut)) == {"interrupted": 1}
    # An outage long after the answer explains nothing; under fail nothing does.
    assert checks.submitted_once(facts("resubmit", far))
    assert checks.submitted_once(facts("fail", cut))


def test_log_records_group_a_traceback_with_its_line(tmp_path: Path) -> None:
    log = (
        "[2026-01-01 00:00:00,000: ERROR/MainProcess] Task x raised: boom\n"
        "Traceback (most recent call last):\n"
        "worker.errors.JobNotFoundError: no job 'poison-1'\n"
        "[2026-01-01 00:00:01,000: INFO/MainProcess] next\n"
    )
    facts = _facts([], [], "fail")
    facts.logs = [(tmp_path / "worker0.log", log)]
    assert facts.log_records("poison-1") == [
        "worker0.log: [2026-01-01 00:00:00,000: ERROR/MainProcess] Task x raised: boom"
    ]
    assert len(facts.log_lines("poison-1")) == 1


def test_workload_tags_map_prompts_back_to_jobs() -> None:
    assert tag_of("[c0007s2] make it blue") == "c0007s2"
    assert tag_of("[j0042] a lighthouse") == "j0042"
    assert tag_of("no tag") is None


def test_a_sweeper_pass_that_fails_while_redis_is_down_is_not_the_poisons_doing(
    tmp_path: Path,
) -> None:
    def at(stamp: str) -> float:
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp()

    line = "[{}: ERROR/MainProcess] sweeper pass failed; trying again next interval\n"
    facts = _facts([], [], "fail")
    facts.logs = [
        (tmp_path / "worker0.log", line.format("2026-01-01 00:00:05,000")),
        (tmp_path / "worker1.log", line.format("2026-01-01 00:01:00,000")),
    ]
    marker = "[2026-01-01 00:00:01,000: ERROR/MainProcess] run_job dropped a message for poison-1\n"
    facts.logs.append((tmp_path / "worker2.log", marker))
    facts.events = [
        FaultEvent(
            "redis_down", "Redis down 10s", at("2026-01-01 00:00:00"), at("2026-01-01 00:00:10")
        ),
        FaultEvent(
            "poison",
            "poison",
            0.0,
            0.0,
            detail={"poison": [PoisonMessage("unknown job", "t", "poison-1")]},
        ),
    ]
    found = checks.poison_acked_once(facts)
    assert [v.evidence.split(",")[0] for v in found] == ["1 failed sweeper pass(es)"]
    assert "worker1.log" in found[0].evidence
