"""Polls due far ahead wait in Redis, not in held countdown messages (``worker.due_polls``).

Real workers and the emulator. The stack's fast settings cap held polls at 1 s
(``WAVEQUEUE_POLL_MAX_INTERVAL``), so a first poll 3 s after the submit is deferred: the
job waits in ``DUE_POLLS_KEY`` with no message anywhere, and a dispatcher sends it when
due. What is checked: no message is held while jobs wait; each job is polled once; a
worker killed with -9 while jobs wait loses nothing (another worker's dispatcher sends
them); a due entry taken and never sent (a dispatcher that died in between) is brought
back by the sweeper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.stack import WorkerStack, worker_stack
from worker.constants import DUE_POLLS_KEY, QUEUES

T2I = "flux-kontext-max/text-to-image"
#: First poll 3 s after the submit (no history: ``first_poll_default``), past the 1 s
#: that the fast settings hold as a countdown; the emulator finishes in 2.5 s.
DEFERRING = {"WAVEQUEUE_FIRST_POLL_DEFAULT": "3"}


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.02)


def _messages(stack: WorkerStack) -> int:
    """Messages anywhere in Redis: queued, or delivered and held unacked."""
    client = stack.jobs.store.client
    return sum(int(client.llen(queue)) for queue in QUEUES) + int(client.hlen("unacked"))


def _deferred(stack: WorkerStack) -> int:
    return int(stack.jobs.store.client.zcard(DUE_POLLS_KEY))


def test_a_far_poll_waits_in_redis_with_no_message_and_is_sent_when_due(
    tmp_path: Path,
) -> None:
    with worker_stack(tmp_path, latency="fixed:2.5", settings=DEFERRING) as stack:
        job_ids = [stack.jobs.enqueue(T2I, prompt=f"deferred {i}") for i in range(20)]
        # Every job submitted and waiting for its poll, and not one message in Redis.
        _wait_until(
            lambda: _deferred(stack) == 20 and _messages(stack) == 0,
            timeout=30,
            what="all 20 jobs deferred with no message held",
        )
        records = stack.jobs.wait(job_ids, timeout=60)
        assert [r.status.value for r in records] == ["completed"] * 20
        assert [r.polls for r in records] == [1] * 20  # the one poll, sent when due
        assert _deferred(stack) == 0
        assert max(stack.input_submissions().values()) == 1


def test_a_worker_killed_while_polls_wait_loses_nothing(tmp_path: Path) -> None:
    with worker_stack(tmp_path, latency="fixed:2.5", settings=DEFERRING) as stack:
        job_ids = [stack.jobs.enqueue(T2I, prompt=f"killed {i}") for i in range(10)]
        _wait_until(lambda: _deferred(stack) == 10, timeout=30, what="all 10 deferred")
        stack.workers[0].kill()
        # A fresh worker, started after the kill: the jobs' polls were never held by the
        # dead one, so there is nothing for a visibility timeout to give back.
        stack.start_worker()
        records = stack.jobs.wait(job_ids, timeout=60)
        assert [r.status.value for r in records] == ["completed"] * 10
        assert [r.polls for r in records] == [1] * 10
        assert max(stack.input_submissions().values()) == 1
        resent = stack.jobs.store.counters().get(("sweeper_resent", ()), 0)
        assert resent == 0  # sent by a dispatcher, not found lost by the sweeper


def test_a_due_poll_taken_but_never_sent_is_brought_back_by_the_sweeper(
    tmp_path: Path,
) -> None:
    with worker_stack(tmp_path, latency="fixed:2.5", settings=DEFERRING) as stack:
        job_id = stack.jobs.enqueue(T2I, prompt="dropped by a dying dispatcher")
        _wait_until(lambda: _deferred(stack) == 1, timeout=30, what="the job deferred")
        # Take the entry before any dispatcher does (it is due 3 s after the submit), as a
        # dispatcher that dies right after its claim would: no message will be sent.
        store = stack.jobs.store
        taken, _ = store.claim_due_polls(store.clock(), 10, due_by=math.inf)
        assert taken == [job_id]
        [record] = stack.jobs.wait([job_id], timeout=90)
        assert record.status.value == "completed"
        counters = store.counters()
        assert counters[("sweeper_resent", ())] >= 1  # the path that brought it back
        assert max(stack.input_submissions().values()) == 1
