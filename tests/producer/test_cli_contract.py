"""What a new user meets first (issue #12): no Redis that nobody named, usage errors as
one line, one ``--json`` shape, ``retry`` of a single job, idempotency conflicts, and
Redis errors inside the project's error tree. Against the module's real stack."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from ops.localstack.redis_server import free_port
from producer import (
    BrokerUnavailableError,
    IdempotencyConflictError,
    JobClient,
    NotRetryableError,
    ValidationError,
)
from producer.cli import main
from tests.producer.conftest import STACK_SETTINGS, ProducerStack
from worker.local_stack import write_stack_env
from worker.models import JobStatus
from worker.settings import Settings

Run = Callable[..., Result]


@pytest.fixture
def wavequeue(stack: ProducerStack) -> Run:
    runner = CliRunner()

    def run(*args: str, **env: str | None) -> Result:
        return runner.invoke(
            main,
            list(args),
            env={"REDIS_URL": stack.redis_url, "WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS": "1", **env},
        )

    return run


def _job_keys(url: str) -> int:
    raw = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in raw.scan_iter("wq:job:*", _type="hash"))
    finally:
        raw.close()


# REDIS_URL ----------------------------------------------------------------------------


def test_without_redis_url_the_cli_refuses_and_writes_nowhere(
    stack: ProducerStack, wavequeue: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no local stack here
    before = _job_keys(stack.redis_url)
    refused = wavequeue("generate", "nobody named a redis", REDIS_URL=None)
    assert refused.exit_code == 78  # EX_CONFIG: the configuration is refused
    assert refused.stderr.startswith("error: REDIS_URL is not set")
    assert "wavequeue up" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert _job_keys(stack.redis_url) == before


def test_without_redis_url_a_running_local_stack_is_used(
    stack: ProducerStack, wavequeue: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = _job_keys(stack.redis_url)
    # As `wavequeue up` writes it; this test's process stands for the running stack.
    write_stack_env(Path(".wavequeue") / "stack.env", {"REDIS_URL": stack.redis_url})
    queued = wavequeue("generate", "found the local stack", "--json", REDIS_URL=None)
    assert queued.exit_code == 0, queued.stderr
    job_id = json.loads(queued.stdout)["job_id"]
    with JobClient(redis_url=stack.redis_url) as client:
        assert client.get(job_id).status in set(JobStatus)
    assert _job_keys(stack.redis_url) == before + 1


# usage errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("wait",), "error: ID: missing (required)"),
        (("wait", "x", "--timeout", "-1"), "error: --timeout: -1.0 is not in the range x>=0"),
        (("wait", "x", "--timeout", "soon"), "error: --timeout: 'soon' is not a valid float"),
        (("generate", "x", "--priority", "urgent"), "error: --priority: 'urgent' is not one of"),
        (("generate", "x", "--bogus"), "error: --bogus: no such option"),
        (("generat", "x"), "error: usage: no such command 'generat'"),
        (("generate", "x", "--wait", "--timeout", "-5"), "error: --timeout: -5.0 is not in"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    wavequeue: Run, args: tuple[str, ...], line: str
) -> None:
    result = wavequeue(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(line), result.stderr


def test_a_negative_wait_timeout_is_refused_by_the_api(stack_client: JobClient) -> None:
    with pytest.raises(ValidationError, match="timeout"):
        stack_client.wait("any-id", timeout=-1)
    with pytest.raises(ValidationError, match="timeout"):
        stack_client.wait_chain("any-id", timeout=-0.5)


# --json -------------------------------------------------------------------------------


def test_json_is_the_record_with_or_without_wait(wavequeue: Run) -> None:
    queued = wavequeue("generate", "json shape: a kite", "--seed", "3", "--json")
    waited = wavequeue("generate", "json shape: a kite", "--seed", "4", "--json", "--wait")
    assert queued.exit_code == 0 and waited.exit_code == 0, queued.stderr + waited.stderr
    before, after = json.loads(queued.stdout), json.loads(waited.stdout)
    assert set(before) == set(after)
    assert "job_id" in before and "id" not in before
    assert before["model"] == after["model"] == "flux-kontext-max/text-to-image"
    assert after["status"] == "completed"
    status = json.loads(wavequeue("status", before["job_id"], "--json").stdout)
    assert set(status) == set(before) and status["job_id"] == before["job_id"]


# retry ---------------------------------------------------------------------------------


def test_retry_runs_a_failed_single_job_again(stack: ProducerStack, wavequeue: Run) -> None:
    stack.emulator.configure(
        faults={"prediction_failed": {"count": 1, "prompt_contains": "retry single"}}
    )
    failed = wavequeue("generate", "retry single: a lamp", "--wait", "--json")
    assert failed.exit_code == 1
    old = json.loads(failed.stdout)
    assert old["status"] == "failed"

    retried = wavequeue("retry", old["job_id"], "--wait", "--json")
    assert retried.exit_code == 0, retried.stderr
    new = json.loads(retried.stdout)
    assert new["status"] == "completed" and new["retry_of"] == old["job_id"]
    assert new["job_id"] != old["job_id"]
    assert {k: new[k] for k in ("model", "input", "priority")} == {
        k: old[k] for k in ("model", "input", "priority")
    }
    # Asking again gives the same new job, not a third run; a completed job is refused.
    again = wavequeue("retry", old["job_id"], "--json")
    assert json.loads(again.stdout)["job_id"] == new["job_id"]
    refused = wavequeue("retry", new["job_id"])
    assert refused.exit_code == 2
    assert refused.stderr.startswith(f"error: job {new['job_id']} is completed")


def test_retry_of_a_running_job_is_refused_by_the_api(stack_client: JobClient) -> None:
    job_id = stack_client.text_to_image("retry api: not failed")
    with pytest.raises(NotRetryableError):
        stack_client.retry(job_id)


# idempotency ---------------------------------------------------------------------------


def test_an_idempotency_key_reused_for_another_request_is_a_conflict(
    stack: ProducerStack, stack_client: JobClient, wavequeue: Run
) -> None:
    before = _job_keys(stack.redis_url)
    first = stack_client.text_to_image("idem: a boat", idempotency_key="order-17")
    assert stack_client.text_to_image("idem: a boat", idempotency_key="order-17") == first
    with pytest.raises(IdempotencyConflictError) as caught:
        stack_client.text_to_image("idem: a plane", idempotency_key="order-17")
    assert caught.value.job_id == first
    assert "idempotency_key" in caught.value.problems
    with pytest.raises(IdempotencyConflictError):
        stack_client.text_to_image("idem: a boat", idempotency_key="order-17", priority="high")

    same = wavequeue("generate", "idem: a boat", "--idempotency-key", "order-17", "--json")
    assert json.loads(same.stdout)["job_id"] == first
    other = wavequeue("generate", "idem: a train", "--idempotency-key", "order-17")
    assert other.exit_code == 2
    assert other.stderr.strip() == (
        f"error: idempotency_key: already used by job {first} for a different request (the "
        "same key with the same request returns that job; a new request needs a new key)"
    )
    assert _job_keys(stack.redis_url) == before + 1


def test_a_chain_key_reused_for_another_chain_is_a_conflict(stack_client: JobClient) -> None:
    chain_id = stack_client.chain({"prompt": "idem chain"}, ["a"], idempotency_key="c-1")
    assert stack_client.chain({"prompt": "idem chain"}, ["a"], idempotency_key="c-1") == chain_id
    with pytest.raises(IdempotencyConflictError):
        stack_client.chain({"prompt": "idem chain"}, ["b"], idempotency_key="c-1")


def test_submit_many_names_each_conflicting_item(stack_client: JobClient) -> None:
    stack_client.text_to_image("idem many", idempotency_key="m-1")
    prepared = stack_client.prepare_many(
        [
            {"kind": "text-to-image", "prompt": "idem many", "idempotency_key": "m-1"},
            {"kind": "text-to-image", "prompt": "idem many, other", "idempotency_key": "m-1"},
        ]
    )
    with pytest.raises(IdempotencyConflictError) as caught:
        stack_client.submit_many(prepared)
    assert list(caught.value.problems) == ["item1.idempotency_key"]


# Redis errors ---------------------------------------------------------------------------


def test_redis_down_is_broker_unavailable_from_every_call(tmp_path: Path) -> None:
    down = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_retry_window=0.2,
        allow_private_image_urls=STACK_SETTINGS.allow_private_image_urls,
    )
    client = JobClient(down)
    prepared = client.prepare({"kind": "text-to-image", "prompt": "down"})
    calls: dict[str, Callable[[], object]] = {
        "text_to_image": lambda: client.text_to_image("down"),
        "submit": lambda: client.submit(prepared),
        "submit_many": lambda: client.submit_many([prepared]),
        "chain": lambda: client.chain({"prompt": "down"}, ["x"]),
        "get": lambda: client.get("x"),
        "get_many": lambda: client.get_many(["x"]),
        "get_states": lambda: client.get_states(["x"]),
        "lookup": lambda: client.lookup("x"),
        "wait": lambda: client.wait("x", timeout=1),
        "wait_all": lambda: client.wait_all(["x"], timeout=1),
        "chain_status": lambda: client.chain_status("x"),
        "wait_chain": lambda: client.wait_chain("x", timeout=1),
        "retry": lambda: client.retry("x"),
        "retry_chain": lambda: client.retry_chain("x"),
        "list": client.list,
    }
    for name, call in calls.items():
        with pytest.raises(BrokerUnavailableError):
            call()
        # Never a raw redis-py error: the one tree, so `except WavequeueError` is enough.
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the type is the assertion
            assert not isinstance(exc, redis.RedisError), (name, type(exc))
    client.close()


# wavequeue jobs -------------------------------------------------------------------------


def test_jobs_lists_by_status_and_time(stack: ProducerStack, wavequeue: Run) -> None:
    stack.emulator.configure(
        faults={"prediction_failed": {"count": 1, "prompt_contains": "jobs cli: boom"}}
    )
    failed = json.loads(wavequeue("generate", "jobs cli: boom", "--wait", "--json").stdout)
    ok = json.loads(wavequeue("generate", "jobs cli: fine", "--wait", "--json").stdout)
    assert (failed["status"], ok["status"]) == ("failed", "completed")

    listed = wavequeue("jobs", "--status", "failed", "--since", "1h", "--json")
    assert listed.exit_code == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert failed["job_id"] in [job["job_id"] for job in page["jobs"]]
    assert {job["status"] for job in page["jobs"]} == {"failed"}
    assert set(page["jobs"][0]) >= {"job_id", "status", "model", "tenant", "polls", "error"}

    text = wavequeue("jobs", "--status", "completed", "--limit", "1")
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0].split()[:3] == ["job", "status", "model"]
    assert lines[1].split()[:2] == [ok["job_id"], "completed"]
    assert lines[-1].startswith("more: add --cursor ")
    cursor = lines[-1].removeprefix("more: add --cursor ")
    following = wavequeue("jobs", "--status", "completed", "--limit", "1", "--cursor", cursor)
    assert ok["job_id"] not in following.stdout

    bad = wavequeue("jobs", "--since", "soon")
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: --since: 'soon' is not a duration")
