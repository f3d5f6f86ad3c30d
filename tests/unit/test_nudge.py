"""The nudger keeps a job until it could be sent again, and drops it once it was."""

from __future__ import annotations

import redis

from worker.nudge import Nudger


def test_a_job_stays_pending_while_redis_is_away_and_leaves_once_sent() -> None:
    redis_up = False
    sent: list[str] = []

    def bring_back(job_id: str) -> bool:
        if not redis_up:
            raise redis.ConnectionError("Redis is away")
        sent.append(job_id)
        return True

    nudger = Nudger(bring_back)
    nudger.add("j1")
    nudger.flush()
    assert nudger.pending() == {"j1"} and sent == []
    redis_up = True
    nudger.flush()
    assert nudger.pending() == set() and sent == ["j1"]


def test_a_forked_child_brings_back_its_own_lost_jobs() -> None:
    """With ``--pool prefork`` runs happen in children, which inherit the parent's nudger
    but not its thread: a child's first lost job starts the child's own thread."""
    import multiprocessing
    import time

    context = multiprocessing.get_context("fork")
    sent: multiprocessing.Queue[str] = context.Queue()
    nudger = Nudger(sent.put)
    nudger.start()  # the parent's thread, as the worker starts it

    def child() -> None:
        nudger.add("lost-in-child")
        time.sleep(1)  # keeps the child alive while its thread sends (not an assertion)

    process = context.Process(target=child)
    process.start()
    assert sent.get(timeout=10) == "lost-in-child"
    process.join(10)
