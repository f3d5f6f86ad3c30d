"""A backend process that imports only ``producer``: it enqueues without the worker's
runtime (no ``worker.tasks``), and the WaveSpeed API key never reaches Redis."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import redis

from worker.constants import QUEUE_HIGH

SECRET = "sk-never-in-a-producer-31f9"

BACKEND_SCRIPT = """
import json, sys
import producer

loaded_at_import = sorted(m for m in ("celery", "worker.app", "worker.tasks") if m in sys.modules)
with producer.JobClient.from_env() as client:
    job_id = client.text_to_image("a producer-only job", seed=3, priority="high")
    api_key_held = client.settings.api_key is not None
print(json.dumps({
    "job_id": job_id,
    "loaded_at_import": loaded_at_import,
    "worker_tasks_loaded": "worker.tasks" in sys.modules,
    "worker_app_loaded": "worker.app" in sys.modules,
    "api_key_held": api_key_held,
}))
"""


def test_enqueue_from_a_process_that_imports_only_producer(redis_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "WAVESPEED_API_KEY": SECRET}
    done = subprocess.run(
        [sys.executable, "-c", BACKEND_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["loaded_at_import"] == []  # Celery is built on the first send only
    assert report["worker_tasks_loaded"] is False
    assert report["worker_app_loaded"] is False  # the worker's env-reading module
    assert report["api_key_held"] is False

    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    [message] = [json.loads(item) for item in raw.lrange(QUEUE_HIGH, 0, -1)]
    assert message["headers"]["task"] == "wavequeue.run_job"
    body = json.loads(base64.b64decode(message["body"]))
    assert body[1] == {"job_id": report["job_id"]}  # (args, kwargs, embed): ids only
    assert raw.hget(f"wq:job:{report['job_id']}", "status") == "queued"
    for key in raw.scan_iter("*"):
        dumped = raw.dump(key)
        assert dumped is not None and SECRET.encode() not in dumped, key
