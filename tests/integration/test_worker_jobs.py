"""Jobs through a real worker process and the emulator: completion, faults, duplicates.

One stack (redis-server, emulator, one worker of concurrency 4) serves the module;
each test resets the emulator and uses fresh job ids.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence

import pytest
import requests
from PIL import Image

from tests.support.stack import WorkerStack, worker_stack
from worker.models import JobRecord
from worker.schedule import POLL_QUANTILES, poll_delay

T2I = "flux-kontext-max/text-to-image"
EDIT = "flux-kontext-pro"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    with worker_stack(tmp_path_factory.mktemp("worker-jobs")) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_emulator(stack: WorkerStack) -> None:
    stack.emulator.reset()
    stack.emulator.configure(latency="fixed:0.3", image_scale=0.1)


def run_one(
    stack: WorkerStack, model: str = T2I, timeout: float = 30, **fields: object
) -> JobRecord:
    job_id = stack.jobs.enqueue(model, **fields)
    return stack.jobs.wait([job_id], timeout=timeout)[0]


def test_text_to_image_and_edit_complete(stack: WorkerStack) -> None:
    t2i = run_one(stack, prompt="a lighthouse at dusk", seed=42, aspect_ratio="16:9")
    assert t2i.status == "completed", t2i.error
    assert len(t2i.outputs) == 1
    assert t2i.has_nsfw_contents == [False]
    assert t2i.inference_ms == pytest.approx(300, abs=50)
    assert t2i.attempts == 1 and t2i.polls >= 1
    assert t2i.submitted_at is not None and t2i.completed_at is not None

    edit = run_one(stack, EDIT, prompt="make it snow", image=t2i.outputs[0])
    assert edit.status == "completed", edit.error
    before = Image.open(io.BytesIO(requests.get(t2i.outputs[0], timeout=5).content))
    after = Image.open(io.BytesIO(requests.get(edit.outputs[0], timeout=5).content))
    assert after.size == before.size
    assert before.width > before.height  # 16:9
    assert stack.input_submissions() and max(stack.input_submissions().values()) == 1

    # One line per job at INFO: the runner's, not Celery's received/retry/succeeded per run.
    deadline = time.monotonic() + 20
    while f"job {edit.id} completed in" not in stack.worker_logs():
        assert time.monotonic() < deadline, "the job's line was not logged"
        time.sleep(0.05)
    assert f"job {t2i.id} completed in" in stack.worker_logs()
    assert "Task wavequeue.run_job[" not in stack.worker_logs()


def test_nsfw_flag_is_recorded(stack: WorkerStack) -> None:
    stack.emulator.configure(faults={"nsfw": {"probability": 1}})
    record = run_one(stack, prompt="anything")
    assert record.status == "completed"
    assert record.has_nsfw_contents == [True]


TRANSIENT_FAULTS = [
    {"submit_503": {"count": 2}},
    {"submit_429": {"count": 2, "retry_after": 1}},
    {"result_500": {"count": 2}},
    {"result_502": {"count": 2}},
    {"result_503": {"count": 2}},
    {"result_429": {"count": 2, "retry_after": 1}},
    {"result_drop": {"count": 2}},
    {"result_malformed": {"count": 2}},
    {"result_slow": {"count": 1, "delay": 0.5}},
    {"submit_slow": {"count": 1, "delay": 0.5}},
    {"prediction_failed": {"count": 1, "code": 5003}},
]


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS, ids=lambda f: next(iter(f)))
def test_transient_faults_end_completed(stack: WorkerStack, fault: dict[str, object]) -> None:
    stack.emulator.configure(faults=fault)
    record = run_one(stack, prompt=f"transient {next(iter(fault))}")
    assert record.status == "completed", record.error
    served = stack.emulator.stats()["faults"]
    assert sum(served.values()) >= 1, "the fault never fired: the test proves nothing"


def test_429s_on_submit_cost_no_retry_budget(stack: WorkerStack) -> None:
    """More 429s than the retry budget allows errors: the job still completes, because a
    429 pauses submits (fleet-wide) instead of counting as this job's error."""
    budget = int(stack.env.get("WAVEQUEUE_RETRY_BUDGET", "8"))
    stack.emulator.configure(faults={"submit_429": {"count": budget + 2, "retry_after": 1}})
    key = ("remote_rate_limited", ())
    before = stack.jobs.store.counters().get(key, 0)
    job_id = stack.jobs.enqueue(T2I, prompt="many 429s")
    record = stack.jobs.wait([job_id], timeout=60)[0]
    assert record.status == "completed", record.error
    assert stack.jobs.store.snapshot(job_id).number("error_retries") == 0
    assert stack.jobs.store.counters()[key] - before == budget + 2


PERMANENT_FAULTS = [
    ({"prediction_failed": {"code": 1200, "message": "flagged by moderation"}}, 1200),
    ({"prediction_failed": {"code": 1403}}, 1403),
]


@pytest.mark.parametrize(("fault", "code"), PERMANENT_FAULTS, ids=["1200", "1403"])
def test_permanent_failures_keep_the_remote_code(
    stack: WorkerStack, fault: dict[str, object], code: int
) -> None:
    stack.emulator.configure(faults=fault)
    record = run_one(stack, prompt=f"permanent {code}")
    assert record.status == "failed"
    assert record.error is not None and record.error.code == code
    assert record.error.message
    assert record.attempts == 1  # a final failure is never resubmitted
    # An expected ending: the job's one line, without a traceback (Celery's per-run
    # lines are off at INFO, worker.run_logs).
    deadline = time.monotonic() + 20
    while f"job {record.id} failed: [{code}]" not in stack.worker_logs():
        assert time.monotonic() < deadline, "the failed job was not logged"
        time.sleep(0.05)
    assert "Traceback" not in stack.worker_logs()
    assert f"raised unexpected: WavequeueError('job {record.id}" not in stack.worker_logs()


def test_unreachable_input_image_fails_with_1402(stack: WorkerStack) -> None:
    record = run_one(stack, EDIT, prompt="edit", image="http://127.0.0.1:9/missing.png")
    assert record.status == "failed"
    assert record.error is not None and record.error.code == 1402


AMBIGUOUS_FAULTS = [
    "submit_drop_after_create",
    "submit_drop_before_create",
    "submit_malformed",
    "submit_500",
    "submit_502",
]


@pytest.mark.parametrize("kind", AMBIGUOUS_FAULTS)
def test_ambiguous_submit_fails_without_resubmitting(stack: WorkerStack, kind: str) -> None:
    stack.emulator.configure(faults={kind: {"count": 1}})
    record = run_one(stack, prompt=f"ambiguous {kind}")
    assert record.status == "failed"
    assert record.error is not None and record.error.code == "submit_outcome_unknown"
    assert "may be billed" in record.error.message
    assert list(stack.input_submissions().values()) == [1]


def test_slow_submit_past_the_read_timeout_is_ambiguous(stack: WorkerStack) -> None:
    stack.emulator.configure(faults={"submit_slow": {"count": 1, "delay": 4}})  # read timeout 3 s
    record = run_one(stack, prompt="slow submit")
    assert record.status == "failed"
    assert record.error is not None and record.error.code == "submit_outcome_unknown"
    assert list(stack.input_submissions().values()) == [1]


def test_error_budget_ends_in_failure(stack: WorkerStack) -> None:
    stack.emulator.configure(faults={"result_503": {"probability": 1}})
    record = run_one(stack, prompt="never answers")
    assert record.status == "failed"
    assert record.error is not None and record.error.code == 503
    assert "gave up after 8 error retries" in record.error.message


def test_deadline_ends_timed_out(stack: WorkerStack) -> None:
    stack.emulator.configure(latency="fixed:5")
    job_id = stack.jobs.create(T2I, deadline=1.5, prompt="too slow")
    stack.jobs.send(job_id)
    record = stack.jobs.wait([job_id], timeout=20)[0]
    assert record.status == "timed_out"
    assert record.error is not None and record.error.code == "deadline_exceeded"


def test_copies_of_one_message_submit_once_and_complete_once(stack: WorkerStack) -> None:
    stack.emulator.configure(latency="fixed:1")
    job_id = stack.jobs.create(T2I, prompt="sent five times")
    before = stack.jobs.store.counters()
    for _ in range(5):
        stack.jobs.send(job_id, task_id=f"same-{job_id}")
    record = stack.jobs.wait([job_id], timeout=30)[0]
    assert record.status == "completed"
    assert list(stack.input_submissions().values()) == [1]
    assert stack.emulator.stats()["predictions"]["created"] == 1
    after = stack.jobs.store.counters()
    completed = ("jobs_completed", (("model", T2I),))
    assert after.get(completed, 0) - before.get(completed, 0) == 1
    assert record.attempts == 1


def test_slots_are_not_held_while_wavespeed_computes(stack: WorkerStack) -> None:
    """60 jobs of 3 s on 4 slots. A worker that held a slot while WaveSpeed computes could
    never have more than 4 predictions running at once; waiting on countdowns, it has many.
    (How many depends on the machine's speed, so only "more than the slots" is asserted.)"""
    slots = 4
    stack.emulator.configure(latency="fixed:3", image_scale=0.05)
    job_ids = [stack.jobs.enqueue(T2I, prompt=f"load {i}") for i in range(60)]
    records = stack.jobs.wait(job_ids, timeout=150)
    assert all(r.status == "completed" for r in records)
    stats = stack.emulator.stats()
    assert stats["concurrency"]["peak"] > slots, stats["concurrency"]
    assert max(stats["submissions"]["per_input"].values()) == 1
    # No prediction is polled more often than the schedule allows over its lifetime: one
    # poll per latency target, plus the growing intervals of a job with no history.
    worst_case_polls, elapsed = len(POLL_QUANTILES), 0.0
    while elapsed < 3.0 + 1.0:  # latency plus the longest interval
        elapsed += poll_delay(
            elapsed,
            profile=None,
            first_poll_default=0.3,
            min_interval=0.2,
            max_interval=1.0,
            backoff=1.5,
            time_left=900,
        )
        worst_case_polls += 1
    assert max(stats["polls"]["per_prediction"].values()) <= worst_case_polls


def test_a_server_that_echoes_the_key_is_never_quoted(stack: WorkerStack) -> None:
    """Error messages quote up to 300 characters of the server's words: redacted first."""
    secret = stack.env["WAVESPEED_API_KEY"]
    stack.emulator.configure(
        faults={
            "submit_echo_auth": {"count": 1, "prompt_contains": "echo one"},
            "prediction_failed": {
                "count": 1,
                "prompt_contains": "echo two",
                "message": f"bad key {secret}; header was Authorization: Bearer {secret}",
            },
        }
    )
    echoed = run_one(stack, prompt="echo one")
    failed = run_one(stack, prompt="echo two")
    for record in (echoed, failed):
        assert record.status == "failed" and record.error is not None
        assert secret not in record.error.message
        assert "[redacted]" in record.error.message
    assert echoed.error is not None and echoed.error.code == 400
    assert secret not in stack.worker_logs()
    assert_no_secret_in_redis(stack)


def test_api_key_never_reaches_redis_or_logs(stack: WorkerStack) -> None:
    # Jobs in flight (messages queued and held) and finished, including failures.
    stack.emulator.configure(latency="fixed:1", faults={"prediction_failed": {"count": 1}})
    job_ids = [stack.jobs.enqueue(T2I, prompt=f"secret check {i}") for i in range(5)]
    stack.wait_for_status(job_ids, {"submitted", "processing", "failed"}, timeout=20)
    assert_no_secret_in_redis(stack)
    stack.jobs.wait(job_ids, timeout=30)
    assert_no_secret_in_redis(stack)
    assert stack.env["WAVESPEED_API_KEY"] not in stack.worker_logs()


def assert_no_secret_in_redis(stack: WorkerStack) -> None:
    client = stack.jobs.store.client
    secret = stack.env["WAVESPEED_API_KEY"]
    seen = 0
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: Sequence[object]
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [*client.hkeys(key), *client.hvals(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        else:
            values = []
        seen += 1
        assert secret not in key and not any(secret in str(v) for v in values), key
    assert seen > 0
