"""``wait`` and ``wait_all`` against a real redis-server: the pub/sub event wakes them,
a missed event only delays them until the next re-read, and the timeout is clear.

The job's end is written here the way the worker writes it (``JobStore.transition``,
which publishes), or behind pub/sub's back (a plain HSET) to stand for a lost message.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from producer import JobClient, JobNotFoundError, JobStatus, WaitTimeoutError, WavequeueError
from tests.support.records import put_in_status
from worker.constants import JOB_EVENT_CHANNEL, JOB_KEY
from worker.models import JobRecord

#: With re-reads this rare, only the pub/sub event can end a wait within a few seconds.
NEVER = 600.0


def _queued_job(client: JobClient) -> str:
    now = time.time()
    record = JobRecord(
        id=uuid.uuid4().hex,
        model="flux-kontext-max/text-to-image",
        input={"prompt": "a cat"},
        status=JobStatus.QUEUED,
        created_at=now,
        deadline_at=now + 60,
    )
    job_id, _ = client.store.create_job(record)
    return job_id


def _complete(client: JobClient, job_id: str) -> None:
    """What the worker does: compare-and-set to completed, announced on the channel."""
    put_in_status(client.store, job_id, "completed", outputs=[f"https://cdn.example/{job_id}.png"])


def _later(delay: float, action: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture
def client(redis_url: str) -> Iterator[JobClient]:
    with JobClient(redis_url=redis_url, reread_interval=NEVER) as job_client:
        yield job_client


def test_wait_wakes_on_the_event(client: JobClient) -> None:
    job_id = _queued_job(client)
    started = time.monotonic()
    thread = _later(0.3, lambda: _complete(client, job_id))
    record = client.wait(job_id, timeout=30)
    thread.join()

    assert record.status is JobStatus.COMPLETED
    assert record.outputs == [f"https://cdn.example/{job_id}.png"]
    assert time.monotonic() - started < 10  # no re-read before 600 s: the event woke it


def test_wait_returns_at_once_for_a_job_already_finished(client: JobClient) -> None:
    job_id = _queued_job(client)
    _complete(client, job_id)  # announced before anyone listened: the read finds it
    started = time.monotonic()
    assert client.wait(job_id, timeout=30).status is JobStatus.COMPLETED
    assert time.monotonic() - started < 10


def test_a_missed_event_only_delays_wait_until_the_next_reread(redis_url: str) -> None:
    with JobClient(redis_url=redis_url, reread_interval=0.2) as client:
        job_id = _queued_job(client)
        # Terminal without an announcement, as when a pub/sub message is lost.
        silent = _later(
            0.5, lambda: client.store.client.hset(JOB_KEY.format(job_id=job_id), "status", "failed")
        )
        record = client.wait(job_id, timeout=30)
        silent.join()
    assert record.status is JobStatus.FAILED


def test_wait_raises_a_clear_timeout(client: JobClient) -> None:
    job_id = _queued_job(client)
    with pytest.raises(WaitTimeoutError) as raised:
        client.wait(job_id, timeout=0.5)
    assert isinstance(raised.value, WavequeueError)
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.pending == [job_id]
    assert "1 of 1 job(s) not finished" in str(raised.value)


def test_wait_for_an_unknown_job_says_so(client: JobClient) -> None:
    with pytest.raises(JobNotFoundError):
        client.wait("no-such-job", timeout=1)


def test_wait_all_listens_to_its_own_jobs_on_one_connection_and_keeps_the_order(
    client: JobClient,
) -> None:
    job_ids = [_queued_job(client) for _ in range(20)]
    bystander = _queued_job(client)  # nobody waits for it: its end reaches nobody
    channels = [JOB_EVENT_CHANNEL.format(job_id=job_id) for job_id in [*job_ids, bystander]]
    seen: list[tuple[int, dict[str, int]]] = []

    def finish_all_while_counting_subscribers() -> None:
        for job_id in reversed(job_ids):
            connections = client.store.client.client_list(_type="pubsub")
            counts = dict(client.store.client.pubsub_numsub(*channels))
            seen.append((len(connections), {str(k): int(v) for k, v in counts.items()}))
            _complete(client, job_id)
            time.sleep(0.01)
        _complete(client, bystander)

    thread = _later(0.2, finish_all_while_counting_subscribers)
    records = client.wait_all(job_ids, timeout=30)
    thread.join()

    assert [record.id for record in records] == job_ids
    assert all(record.status is JobStatus.COMPLETED for record in records)
    assert all(connections == 1 for connections, _ in seen)
    first = seen[0][1]
    assert all(first[JOB_EVENT_CHANNEL.format(job_id=job_id)] == 1 for job_id in job_ids)
    assert first[JOB_EVENT_CHANNEL.format(job_id=bystander)] == 0


def test_waiting_on_many_jobs_reads_each_record_about_once(client: JobClient) -> None:
    """Each ending names its job: the waiter reads that record, not every pending one
    (which would be N²/2 reads for N jobs ending one by one)."""
    job_ids = [_queued_job(client) for _ in range(100)]
    client.store.client.config_resetstat()

    def finish_one_by_one() -> None:
        for job_id in job_ids:
            _complete(client, job_id)
            time.sleep(0.005)

    thread = _later(0.2, finish_one_by_one)
    records = client.wait_all(job_ids, timeout=60)
    thread.join()

    assert all(record.status is JobStatus.COMPLETED for record in records)
    stats = client.store.client.info("commandstats")
    record_reads = stats.get("cmdstat_hgetall", {}).get("calls", 0)
    assert record_reads <= 3 * len(job_ids), record_reads
