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
