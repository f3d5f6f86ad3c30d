"""The async floor: one process, every job at once, tornado's ``AsyncHTTPClient``.

Run by the harness as ``python -m ops.bench.perf.async_floor`` with a JSON plan on
stdin; prints one JSON object. Each job is a list of steps (one for a plain job,
three for a chain); a step is submitted, then polled on the worker's own schedule
(``worker.schedule.poll_delay`` with a latency profile fitted to the same warm-up
samples the workers learned from); an edit step takes the previous step's first
output as its ``image``. This is what the work costs with no queue, no broker and no
record: the floor that wavequeue's makespan and CPU are compared with. Every job is
under way at once; HTTP requests go at most ``HTTP_CONNECTIONS`` at a time.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from worker.schedule import LatencyProfile, poll_delay

TERMINAL = frozenset({"completed", "failed", "cancelled", "timeout"})
#: Requests at once (the rest wait in the client): a worker process's HTTP pool is as
#: big, and a thousand simultaneous connects overflow the emulator's listen backlog.
HTTP_CONNECTIONS = 64


class AsyncFloor:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.base_url: str = plan["base_url"]
        self.headers = {
            "Authorization": f"Bearer {plan['api_key']}",
            "Content-Type": "application/json",
        }
        self.schedule: dict[str, float] = plan["schedule"]
        self.profiles = {
            model: LatencyProfile.of(samples) for model, samples in plan["profiles"].items()
        }
        self.max_clients = HTTP_CONNECTIONS
        self.client: AsyncHTTPClient | None = None

    async def _envelope(self, request: HTTPRequest) -> dict[str, Any]:
        assert self.client is not None
        reply = await self.client.fetch(request, raise_error=True)
        data: dict[str, Any] = json.loads(reply.body)["data"]
        return data

    async def step(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        submitted = await self._envelope(
            HTTPRequest(
                f"{self.base_url}/api/v3/wavespeed-ai/{model}",
                method="POST",
                headers=self.headers,
                body=json.dumps(body),
                request_timeout=60,
            )
        )
        started = time.monotonic()
        result_url = f"{self.base_url}/api/v3/predictions/{submitted['id']}/result"
        polls = 0
        while True:
            delay = poll_delay(
                time.monotonic() - started,
                profile=self.profiles.get(model),
                time_left=math.inf,
                **self.schedule,
            )
            await asyncio.sleep(delay)
            data = await self._envelope(
                HTTPRequest(result_url, headers=self.headers, request_timeout=60)
            )
            polls += 1
            if data["status"] in TERMINAL:
                return {
                    "prediction_id": submitted["id"],
                    "status": data["status"],
                    "outputs": data["outputs"],
                    "polls": polls,
                    "detected_at": time.time(),
                }

    async def job(self, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        for step in steps:
            body = dict(step["body"])
            if done:
                if done[-1]["status"] != "completed":
                    break
                body["image"] = done[-1]["outputs"][0]
            done.append(await self.step(step["model"], body))
        return done

    async def run(self, jobs: list[list[dict[str, Any]]]) -> dict[str, Any]:
        # Built inside the running loop: tornado binds a client to the current IOLoop.
        self.client = AsyncHTTPClient(force_instance=True, max_clients=self.max_clients)
        cpu_before, started = time.process_time(), time.time()
        results = await asyncio.gather(*(self.job(steps) for steps in jobs))
        return {
            "started": started,
            "jobs": results,
            "cpu_seconds": time.process_time() - cpu_before,
        }


def main() -> None:
    plan = json.load(sys.stdin)
    result = asyncio.run(AsyncFloor(plan).run(plan["jobs"]))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
