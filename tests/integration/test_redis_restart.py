"""A redis-server restart (and a 10 s outage) under load, with the shipped visibility timeout.

Two real worker processes hold most of 40 jobs as countdown messages (the emulator's
latency keeps every job polling) when redis-server goes away. The workers must stay up,
reconnect by themselves, and put the messages they held back in their queue at reconnect,
so every job completes within a minute, not after the 10 minute visibility timeout, and
no input reaches WaveSpeed twice. The messages go back through kombu's own restore when
it closes the dead channel, if Redis is back within redis-py's retries, and otherwise
through the reconnect step (``worker.reconnect``).

A run under way when Redis goes away can lose its job's next message; the worker's
nudger (``worker/nudge.py``) re-sends that job once Redis answers. A message can also
vanish where no worker can see it (Redis popped it for a BRPOP whose reply was lost
with the connection): after a reconnect, one worker's sweeper makes a catch-up pass
that re-sends jobs still overdue ``CATCH_UP_SETTLE`` seconds later. So every job must
complete, well within the minute.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ops.localstack.redis_server import RedisServer
from tests.support.stack import WorkerStack, worker_stack
from worker.settings import Settings

T2I = "flux-kontext-max/text-to-image"
JOBS = 40
#: Long enough that every job is still polling (its countdown held by a worker) when
#: redis-server goes away, short enough to keep the test quick.
LATENCY = "fixed:5"
#: The shipped default, on purpose: held messages must not wait for it.
VISIBILITY_TIMEOUT = Settings().visibility_timeout
#: Generous for a loaded 2-core machine, and still a tenth of the visibility timeout.
RECOVERY_TIMEOUT = 60.0
RESTORED = re.compile(r"restored (\d+) held message\(s\) after reconnect")


@pytest.fixture
def stack(private_redis: RedisServer, tmp_path: Path) -> Iterator[WorkerStack]:
    settings = {"WAVEQUEUE_VISIBILITY_TIMEOUT": f"{VISIBILITY_TIMEOUT:g}"}
    with worker_stack(
        tmp_path, latency=LATENCY, settings=settings, workers=2, redis_server=private_redis
    ) as running:
        yield running


def test_recovery_timeout_is_well_below_the_visibility_timeout() -> None:
    # What makes the tests below prove something: the kombu fallback is out of reach.
    assert RECOVERY_TIMEOUT * 5 <= VISIBILITY_TIMEOUT


def test_redis_restart_mid_run(stack: WorkerStack, private_redis: RedisServer) -> None:
    # Redis is back within a fraction of a second. kombu's own restore when it closes
    # the dead channel (redis-py retries it for a few seconds) may then succeed, and
    # leave the reconnect step nothing to do: either way nothing may be left held.
    _survives(stack, private_redis.restart, restore_step_must_run=False)


def test_redis_unreachable_for_10s(stack: WorkerStack, private_redis: RedisServer) -> None:
    def outage() -> None:
        private_redis.stop()
        time.sleep(10)  # the fault itself: Redis is away this long
        private_redis.start()  # same port, same data dir (AOF)

    # Longer than redis-py's retries inside kombu's close-time restore: only the
    # reconnect step can put the held messages back.
    _survives(stack, outage, restore_step_must_run=True)


def _survives(
    stack: WorkerStack, fault: Callable[[], None], *, restore_step_must_run: bool
) -> None:
    client = stack.jobs.store.client
    job_ids = [stack.jobs.enqueue(T2I, prompt=f"restart {i}") for i in range(JOBS)]
    stack.wait_for_status(job_ids, {"submitted", "processing"}, timeout=60)
    held = client.hlen("unacked")
    assert held > 0, "no message held when Redis went away: the test proves nothing"

    fault()
    back_at = time.monotonic()
    polls_at_restart = stack.emulator.stats()["polls"]["total"]
    first_move = _wait_for_first_poll(stack, polls_at_restart)
    try:
        stack.jobs.wait(job_ids, timeout=RECOVERY_TIMEOUT)
        print(  # for the lead's notes; not asserted beyond RECOVERY_TIMEOUT
            f"\n{held} messages held; after Redis came back: first poll {first_move:.1f}s, "
            f"all {JOBS} jobs completed {time.monotonic() - back_at:.1f}s"
        )
    except TimeoutError:
        pass  # judged below, once what must hold in any case is checked

    for worker in stack.workers:
        assert worker.process is not None and worker.process.poll() is None, worker.log()
    _wait_until_nothing_is_held(client)
    logs = stack.worker_logs()
    assert "Unrecoverable error" not in logs
    restored = sum(int(n) for n in RESTORED.findall(logs))
    print(f"reconnect step restored {restored} held message(s)")
    if restore_step_must_run:
        assert restored > 0, "the reconnect step did not run"
    submissions = stack.input_submissions()
    assert len(submissions) == JOBS
    assert max(submissions.values()) == 1

    records = stack.jobs.store.get_many(job_ids)
    stuck = [f"{r.id}: {r.status.value}" for r in records if r and r.status.value != "completed"]
    assert not stuck, f"jobs not completed {RECOVERY_TIMEOUT:g}s after Redis came back: {stuck}"
    assert all(r is not None for r in records)


def _wait_until_nothing_is_held(client: redis.Redis) -> None:
    """No message left in kombu's ``unacked`` for the visibility timeout to bring back."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while client.hlen("unacked"):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{client.hlen('unacked')} message(s) still in unacked: they would wait "
                f"for the {VISIBILITY_TIMEOUT:g}s visibility timeout"
            )
        time.sleep(0.1)


def _wait_for_first_poll(stack: WorkerStack, polls_before: int) -> float:
    """Seconds until the emulator sees a poll after Redis came back (a job moved again)."""
    start = time.monotonic()
    while stack.emulator.stats()["polls"]["total"] <= polls_before:
        if time.monotonic() - start > RECOVERY_TIMEOUT:
            raise TimeoutError(f"no job polled in {RECOVERY_TIMEOUT}s after Redis came back")
        time.sleep(0.05)
    return time.monotonic() - start
