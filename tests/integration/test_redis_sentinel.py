"""Redis Sentinel: the master dies mid-run and everything moves to the promoted replica.

A producer (``JobClient``) keeps enqueueing through the failover, two real worker
processes poll an emulator that takes 2-4 s per prediction, and the master gets
SIGKILL once some jobs have completed. Nothing is restarted. The test asserts what
must hold (every job ends terminal, no input is submitted twice, no process died,
no producer call failed) and prints what it saw: completed and failed jobs (and why),
how long the failover and the longest producer call took, the replication lag at the
moment of the kill, what the old master had acknowledged that the new one never got
(records, record changes, unacked and queued messages: the old master's AOF against
the promoted replica), and messages the sweeper had to send again.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests

from producer import JobClient
from tests.ops.conftest import FLOWER_PASSWORD, FLOWER_USER, scrape, start_exporter, start_flower
from tests.support.emulator import running_emulator
from tests.support.redis_topologies import (
    SentinelCluster,
    read_state,
    sentinel_cluster,
    state_on_disk,
)
from tests.support.stack import FAST_SETTINGS, SECRET_API_KEY
from tests.support.worker_process import WorkerProcess
from worker.models import JobStatus
from worker.settings import Settings

JOBS = 40
#: Jobs completed before the master is killed: the run is well under way by then.
KILL_AFTER_COMPLETED = 8
#: The shipped visibility timeout and submit lease: after a failover, jobs in flight must
#: move again through the reconnect step, the nudger and the catch-up pass, not because
#: a test shortened the time kombu waits before it redelivers.
_DEFAULTS = Settings()
HA_SETTINGS = {
    "WAVEQUEUE_VISIBILITY_TIMEOUT": str(_DEFAULTS.visibility_timeout),
    "WAVEQUEUE_TASK_TIME_LIMIT": str(_DEFAULTS.task_time_limit),
}


@dataclass
class Producer:
    """Enqueues ``JOBS`` jobs, one every ``gap`` seconds, timing each call."""

    client: JobClient
    gap: float = 0.15
    job_ids: list[str] = field(default_factory=list)
    call_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        for n in range(JOBS):
            started = time.monotonic()
            try:
                self.job_ids.append(self.client.text_to_image(f"failover {n}", seed=n))
            except Exception as exc:  # noqa: BLE001 - reported and asserted below
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.call_seconds.append(time.monotonic() - started)
            time.sleep(self.gap)


def replication_lag(cluster: SentinelCluster) -> int:
    """Bytes of the replication stream the master had written and the replica had not yet
    applied, sampled master first (so a busy replica can only look less behind)."""
    offsets = []
    for process in (cluster.master, cluster.replica):
        client = process.client(socket_timeout=2)
        try:
            info = client.info("replication")
        finally:
            client.close()
        key = "master_repl_offset" if process is cluster.master else "slave_repl_offset"
        offsets.append(int(info[key]))
    return max(0, offsets[0] - offsets[1])


def wait_for_completed(client: JobClient, job_ids: list[str], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = list(job_ids)
        done = [r for r in client.get_many(ids) if r.status is JobStatus.COMPLETED]
        if len(done) >= count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} jobs completed in {timeout}s")


@pytest.mark.slow
def test_master_killed_mid_run_the_workload_completes_on_the_promoted_replica(
    tmp_path: Path,
) -> None:
    with (
        sentinel_cluster(tmp_path) as cluster,
        running_emulator(api_key=SECRET_API_KEY, latency="uniform:2:4", image_scale=0.1) as emu,
    ):
        env = {
            **cluster.env,
            "WAVESPEED_API_KEY": SECRET_API_KEY,
            "WAVESPEED_BASE_URL": emu.base_url,
            **FAST_SETTINGS,
            **HA_SETTINGS,
        }
        workers = [
            WorkerProcess(env, tmp_path / f"worker{n}.log", concurrency=8).start() for n in range(2)
        ]
        flower = start_flower(env, tmp_path, FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}")
        exporter = start_exporter(env, tmp_path)
        client = JobClient(Settings.from_env(env))
        producer = Producer(client)
        thread = threading.Thread(target=producer.run, name="producer")
        try:
            thread.start()
            wait_for_completed(client, producer.job_ids, KILL_AFTER_COMPLETED, timeout=90)
            old_master = cluster.master_address()
            lag_bytes = replication_lag(cluster)
            cluster.master.kill()
            killed_at = time.monotonic()
            new_master = cluster.wait_for_promotion(old_master)
            failover_seconds = time.monotonic() - killed_at
            # Read at once, before the workers and the producer are back on it.
            promoted = read_state(*new_master)
            thread.join(timeout=120)
            assert not thread.is_alive(), "the producer is stuck"

            # What the new master no longer knows: records written (and acknowledged to
            # the producer) on the old master that never reached the replica.
            present = client.store.get_many(producer.job_ids)
            lost = [i for i, r in zip(producer.job_ids, present, strict=True) if r is None]
            kept = [i for i in producer.job_ids if i not in lost]
            records = client.wait_all(kept, timeout=180)
            # Flower and the exporter followed the failover too (nothing restarted them).
            lengths = requests.get(
                f"{flower.address}/api/queues/length",
                auth=(FLOWER_USER, FLOWER_PASSWORD),
                timeout=30,
            )
            metrics = scrape(exporter.address)
        finally:
            client.close()
            exporter.stop()
            flower.stop()
            exit_codes = [w.process.poll() if w.process else None for w in workers]
            for worker in workers:
                worker.stop()

        # What the old master had acknowledged (its AOF) and the new one never got.
        lost_by_replication = state_on_disk(cluster.master, tmp_path).missing_from(promoted)
        logs = "\n".join(w.log() for w in workers)
        submissions = emu.stats()["submissions"]["per_input"]
        outcomes = collections.Counter(r.status.value for r in records)
        reasons = collections.Counter(
            f"[{r.error.code}] {r.error.message}" for r in records if r.error is not None
        )
        resent = logs.count("its message is overdue; re-sending it")
        print(
            f"\nsentinel failover: {JOBS} jobs, master {old_master} -> {new_master} "
            f"in {failover_seconds:.1f}s after SIGKILL\n"
            f"  replication lag at the kill: {lag_bytes} bytes; on the old master and not on "
            f"the new one at promotion: {lost_by_replication}\n"
            f"  outcomes: {dict(outcomes)}; failures: {dict(reasons)}\n"
            f"  records lost with the old master: {len(lost)}; "
            f"messages re-sent by the sweeper: {resent}\n"
            f"  longest producer call: {max(producer.call_seconds):.1f}s; "
            f"producer errors: {producer.errors}\n"
            f"  inputs submitted: {len(submissions)}, most per input: "
            f"{max(submissions.values(), default=0)}"
        )
        assert producer.errors == []
        assert len(producer.job_ids) == JOBS
        assert exit_codes == [None, None], "a worker process died during the failover"
        assert all(r.is_terminal for r in records)
        assert max(submissions.values()) == 1, "an input was submitted twice"
        assert lost == [], f"asynchronous replication lost {len(lost)} acknowledged record(s)"
        assert "Unrecoverable error" not in logs
        assert lengths.status_code == 200
        assert "wavequeue_redis_up 1.0" in metrics
        # The replica really took over: the old master is dead, the new one is the replica.
        assert new_master[1] == cluster.replica.port
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=old_master[1], socket_connect_timeout=1).ping()
