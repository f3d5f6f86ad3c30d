"""What one WaveSpeed call costs the worker's CPU (``python -m ops.bench.http_client``).

Starts the emulator (``python -m emulator``, latency 0) as a child process and, in
this process, times ``--calls`` submits and then as many result polls of the
predictions just made, on one thread, with ``time.thread_time()`` (the CPU of the
calling thread only: the emulator's work is in its own process). Three clients, each
doing the same calls over keep-alive connections to the same emulator:

- **requests**: the client the worker used before issue #10: a ``requests.Session``
  set up as ``worker.wavespeed`` set it up (``trust_env`` off, one adapter with urllib3
  retries off, the same headers), ``session.post(json=...)`` / ``session.get``,
  ``response.json()``, then the same parsing (``parse_prediction``).
- **wavequeue**: ``worker.wavespeed.WaveSpeedClient`` as the worker builds it.
- **bare urllib3**: the floor: one ``HTTPConnectionPool``, ``urlopen`` with the body
  already encoded, ``json.loads``, no checks and no parsing.

The clients take turns for ``--rounds`` rounds (so load from other processes hits each
alike) and the table shows each one's median round and the range; the submit + poll
column is the HTTP CPU of a plain job (one submit, one poll). Compare figures of one
run: the machine's load moves them between runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from ops.bench.perf.processes import Emulator
from worker.wavespeed import Prediction, WaveSpeedClient, parse_prediction

API_KEY = "bench-key"
MODEL = "flux-kontext-max/text-to-image"
BODY: Mapping[str, Any] = {"prompt": "a lighthouse at dusk", "seed": 7, "aspect_ratio": "1:1"}
#: The worker's settings: connect and read timeouts, its pool size.
CONNECT_TIMEOUT, READ_TIMEOUT, POOL_SIZE = 10.0, 30.0, 64


class RequestsClient:
    """The worker's client before the port, its successful path: the same session
    settings, the same calls and the same parsing."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (CONNECT_TIMEOUT, READ_TIMEOUT)
        self.session = requests.Session()
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Authorization"] = f"Bearer {API_KEY}"
        self.session.headers["User-Agent"] = "wavequeue"

    def submit(self, model: str, body: Mapping[str, Any]) -> Prediction:
        url = f"{self.base_url}/api/v3/wavespeed-ai/{model}"
        response = self.session.post(url, json=dict(body), params=None, timeout=self.timeout)
        if response.status_code != 200:
            raise RuntimeError(f"submit answered {response.status_code}")
        return parse_prediction(response.json())

    def result(self, prediction_id: str) -> Prediction:
        url = f"{self.base_url}/api/v3/predictions/{prediction_id}/result"
        response = self.session.get(url, timeout=self.timeout)
        if response.status_code != 200:
            raise RuntimeError(f"result answered {response.status_code}")
        return parse_prediction(response.json())

    def close(self) -> None:
        self.session.close()


class BareUrllib3:
    """The floor: what the two HTTP calls cost with nothing around them."""

    def __init__(self, base_url: str) -> None:
        self.pool = urllib3.connection_from_url(
            base_url, maxsize=POOL_SIZE, retries=False, timeout=READ_TIMEOUT
        )
        self.headers = {"Authorization": f"Bearer {API_KEY}", "User-Agent": "wavequeue"}
        self.json_headers = {**self.headers, "Content-Type": "application/json"}

    def submit(self, model: str, body: Mapping[str, Any]) -> str:
        encoded = json.dumps(body).encode()
        path = f"/api/v3/wavespeed-ai/{model}"
        response = self.pool.urlopen("POST", path, body=encoded, headers=self.json_headers)
        return str(json.loads(response.data)["data"]["id"])

    def result(self, prediction_id: str) -> str:
        path = f"/api/v3/predictions/{prediction_id}/result"
        response = self.pool.urlopen("GET", path, headers=self.headers)
        return str(json.loads(response.data)["data"]["status"])

    def close(self) -> None:
        self.pool.close()


def _id_of(answer: Any) -> str:
    return answer if isinstance(answer, str) else str(answer.id)


@dataclass(frozen=True)
class Round:
    submit_us: float  # CPU microseconds per submit
    result_us: float  # CPU microseconds per result poll
    wall_us: float  # wall microseconds per submit + poll

    @property
    def pair_us(self) -> float:
        return self.submit_us + self.result_us


def timed_round(client: Any, calls: int) -> Round:
    """``calls`` submits, then a poll of each prediction they made, on this thread."""
    for _ in range(5):  # warm: a connection in the pool, code paths run once
        client.result(_id_of(client.submit(MODEL, BODY)))
    wall = time.perf_counter()
    cpu = time.thread_time()
    ids = [_id_of(client.submit(MODEL, BODY)) for _ in range(calls)]
    submitted = time.thread_time()
    for prediction_id in ids:
        client.result(prediction_id)
    polled = time.thread_time()
    wall = time.perf_counter() - wall
    return Round(
        submit_us=(submitted - cpu) / calls * 1e6,
        result_us=(polled - submitted) / calls * 1e6,
        wall_us=wall / calls * 1e6,
    )


def build_clients(base_url: str) -> dict[str, Any]:
    return {
        "requests (before)": RequestsClient(base_url),
        "wavequeue (WaveSpeedClient)": WaveSpeedClient(
            base_url=base_url,
            api_key=API_KEY,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            pool_size=POOL_SIZE,
        ),
        "bare urllib3 (floor)": BareUrllib3(base_url),
    }


def table(rounds: Mapping[str, list[Round]], calls: int) -> str:
    lines = [
        f"{calls:,} submits then {calls:,} polls per round, {len(next(iter(rounds.values())))} "
        "rounds; thread CPU per call (median round, range)",
        "",
        "| client | submit | poll | submit + poll | range | wall per submit + poll |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, measured in rounds.items():
        ranked = sorted(measured, key=lambda r: r.pair_us)
        median = ranked[len(ranked) // 2]
        lines.append(
            f"| {name} | {median.submit_us:,.0f} µs | {median.result_us:,.0f} µs | "
            f"{median.pair_us:,.0f} µs | {ranked[0].pair_us:,.0f}-{ranked[-1].pair_us:,.0f} µs"
            f" | {statistics.median(r.wall_us for r in measured):,.0f} µs |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="submits (and polls) per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wq-bench-http-") as tmp:
        emulator = Emulator(API_KEY, Path(tmp) / "emulator.log", image_scale=0.05).start()
        clients = build_clients(emulator.base_url)
        rounds: dict[str, list[Round]] = {name: [] for name in clients}
        try:
            for number in range(1, args.rounds + 1):
                for name, client in clients.items():
                    rounds[name].append(timed_round(client, args.calls))
                emulator.reset()  # the emulator forgets the predictions: its work stays flat
                print(f"round {number}/{args.rounds} done", flush=True)
        finally:
            for client in clients.values():
                client.close()
            emulator.stop()
    print()
    print(table(rounds, args.calls))


if __name__ == "__main__":
    main()
