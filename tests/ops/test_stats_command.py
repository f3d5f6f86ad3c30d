"""``wavequeue stats`` on the session's real redis-server: the daily aggregates the
store's terminal transitions write, shown as a table and as JSON."""

from __future__ import annotations

import json
import time
import uuid

import redis
from click.testing import CliRunner

from producer.cli import main
from tests.support.records import put_in_status
from worker.constants import DAILY_KEY
from worker.models import JobRecord, JobStatus
from worker.store import JobStore, utc_day

T2I = "flux-kontext-max/text-to-image"


def _job(store: JobStore) -> str:
    now = time.time()
    record = JobRecord(
        id=uuid.uuid4().hex,
        model=T2I,
        input={"prompt": "a kite"},
        status=JobStatus.QUEUED,
        created_at=now,
        deadline_at=now + 60,
    )
    return store.create_job(record)[0]


def test_stats_shows_each_day_by_model(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, record_ttl=60)
    done = _job(store)
    put_in_status(store, done, "submitted")
    store.transition(
        done, updates={"status": "completed", "outputs": ["http://x/1.png"], "inference_ms": 2500}
    )
    put_in_status(store, _job(store), "failed")
    cancelled = _job(store)
    assert store.cancel([cancelled])[0].cancelled_now
    assert not store.cancel([cancelled])[0].cancelled_now  # counted once
    # An older day, as the aggregate a day ago left it.
    yesterday = utc_day(store.clock() - 24 * 3600)
    store.client.hset(DAILY_KEY.format(day=yesterday), f"timed_out|{T2I}", 3)

    runner = CliRunner()
    env = {"REDIS_URL": redis_url}
    shown = runner.invoke(main, ["stats", "--days", "2", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    days = json.loads(shown.stdout)["days"]
    today = utc_day(store.clock())
    assert [d["day"] for d in days] == [today, yesterday]
    assert days[0]["models"] == {
        T2I: {"completed": 1, "failed": 1, "cancelled": 1, "outputs": 1, "inference_ms": 2500}
    }
    assert days[1]["models"] == {T2I: {"timed_out": 3}}

    text = runner.invoke(main, ["stats", "--days", "2"], env=env)
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0].split() == [
        "day", "model", "completed", "failed", "timed_out", "cancelled", "images", "inference_s",
    ]  # fmt: skip
    assert lines[1].split() == [today, T2I, "1", "1", "0", "1", "1", "2.5"]
    assert lines[2].split() == [yesterday, T2I, "0", "0", "3", "0", "0", "0.0"]


def test_stats_with_nothing_finished_and_without_redis(redis_url: str) -> None:
    runner = CliRunner()
    empty = runner.invoke(main, ["stats"], env={"REDIS_URL": redis_url})
    assert empty.exit_code == 0
    assert empty.stdout.strip() == "no finished jobs in the last 7 day(s)"
    assert not redis.Redis.from_url(redis_url).keys("wq:daily:*")
    unreachable = runner.invoke(
        main,
        ["stats"],
        env={"REDIS_URL": "redis://127.0.0.1:1/0", "WAVEQUEUE_REDIS_RETRY_WINDOW": "0"},
    )
    assert unreachable.exit_code == 4
    assert unreachable.stderr.startswith("error:")
