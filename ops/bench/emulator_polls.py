"""How many result polls per second one emulator process serves
(``python -m ops.bench.emulator_polls``).

Starts ``python -m emulator`` on a free port, creates a few predictions and waits
for them to complete, then runs ``wrk`` for ~10 s against their result URLs
(rotating through them, with the ``Authorization`` header), exactly as workers
poll. In the same run it measures the ceiling: a bare tornado handler that
returns the same fixed JSON, served the same way (one process, one
``HTTPServer``, no access log). The two alternate for ``--rounds`` rounds, so
that load from other processes on the machine hits both alike, and the table
shows each one's median and range, the 1,500 polls/s target and the ratios.
Exits 1 if the emulator's median misses the target.

``wrk`` is installed with apt-get when missing and running as root; otherwise
the script says how to get it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

TARGET_POLLS_PER_SECOND = 1500
API_KEY = "bench-key"
MODEL = "wavespeed-ai/flux-kontext-max/text-to-image"
REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on (http://\S+)")
#: What the ceiling server returns: the size of a completed prediction's envelope.
FIXED_BODY = (
    b'{"code":200,"message":"success","data":{"id":"0123456789abcdef0123456789abcdef",'
    b'"model":"wavespeed-ai/flux-kontext-max/text-to-image","outputs":["http://127.0.0.1:1/media/'
    b'0123456789abcdef0123456789abcdef.png"],"urls":{"get":"http://127.0.0.1:1/api/v3/predictions/'
    b'0123456789abcdef0123456789abcdef/result"},"has_nsfw_contents":[false],"status":"completed",'
    b'"created_at":"2025-01-01T00:00:00.000Z","error":"","timings":{"inference":3000}}}'
)


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50: str
    p99: str
    non_2xx: int
    socket_errors: str


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing it with apt-get ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit(
        "wrk is not installed and could not be installed here (needs root and apt-get).\n"
        "Install it (Debian/Ubuntu: sudo apt-get install -y wrk; macOS: brew install wrk) "
        "and run `python -m ops.bench.emulator_polls` again."
    )


@dataclass(frozen=True)
class Summary:
    """One target over all rounds: the median round (by requests/s) and the range."""

    median: WrkResult
    low: float
    high: float
    non_2xx: int

    @classmethod
    def of(cls, rounds: list[WrkResult]) -> Summary:
        ranked = sorted(rounds, key=lambda result: result.requests_per_second)
        rates = [result.requests_per_second for result in ranked]
        median_rate = statistics.median_low(rates)
        median = next(result for result in ranked if result.requests_per_second == median_rate)
        return cls(median, rates[0], rates[-1], sum(result.non_2xx for result in rounds))


@contextmanager
def server_process(argv: list[str]) -> Iterator[str]:
    """Start a server that prints 'listening on <url>' first; yield the URL; stop it."""
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = LISTENING.search(line)
        if match is None:
            raise RuntimeError(f"{argv[2:4]} did not start: {line!r}")
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def completed_result_paths(base_url: str, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    urls = []
    for index in range(count):
        response = requests.post(
            f"{base_url}/api/v3/{MODEL}",
            json={"prompt": f"benchmark {index}", "enable_sync_mode": True},
            headers=headers,
            timeout=30,
        )
        response.raise_for_status()
        data = response.json()["data"]
        if data["status"] != "completed":
            raise RuntimeError(f"prediction did not complete: {data}")
        urls.append(data["urls"]["get"])
    return [re.sub(r"^https?://[^/]+", "", url) for url in urls]


def run_wrk(wrk: str, base_url: str, paths: list[str], seconds: int, connections: int) -> WrkResult:
    rotation = ", ".join(f'"{path}"' for path in paths)
    script = (
        f"local paths = {{{rotation}}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        "  return wrk.format(nil, paths[i])\n"
        "end\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        script_path = handle.name
    try:
        output = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-H",
                f"Authorization: Bearer {API_KEY}",
                "-s",
                script_path,
                base_url + paths[0],
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        Path(script_path).unlink()
    return parse_wrk(output)


def parse_wrk(output: str) -> WrkResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors:\s+(.+)", output)
    if rate is None or p50 is None or p99 is None:
        raise RuntimeError(f"could not read wrk's output:\n{output}")
    return WrkResult(
        float(rate.group(1)),
        p50.group(1),
        p99.group(1),
        int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors.group(1).strip() if socket_errors else "none",
    )


def serve_baseline() -> None:
    """The ceiling: tornado answering fixed JSON, set up like the emulator's result handler."""
    import tornado.httpserver  # noqa: PLC0415 - only the server subprocess needs tornado
    import tornado.netutil  # noqa: PLC0415
    import tornado.web  # noqa: PLC0415

    class FixedJson(tornado.web.RequestHandler):
        def compute_etag(self) -> str | None:
            return None

        def get(self, _path: str) -> None:
            self.set_header("Content-Type", "application/json")
            self.write(FIXED_BODY)

    async def main() -> None:
        app = tornado.web.Application([(r"/(.*)", FixedJson)], log_function=lambda _handler: None)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        tornado.httpserver.HTTPServer(app).add_sockets(sockets)
        print(f"baseline listening on http://127.0.0.1:{sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per target")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--predictions", type=int, default=4, help="predictions to rotate through")
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        serve_baseline()
        return

    wrk = ensure_wrk()
    emulator_argv = [
        sys.executable, "-m", "emulator", "--port", "0", "--api-key", API_KEY,
        "--latency", "fixed:0.05", "--image-scale", "0.25",
    ]  # fmt: skip
    baseline_argv = [sys.executable, "-m", "ops.bench.emulator_polls", "--baseline-server"]
    print(
        f"wrk: 1 thread, {args.connections} connections, {args.seconds}s x {args.rounds} rounds "
        f"per target, alternating; {os.cpu_count()} CPUs; load average "
        f"{' '.join(f'{value:.2f}' for value in os.getloadavg())}",
        flush=True,
    )
    emulator_rounds: list[WrkResult] = []
    baseline_rounds: list[WrkResult] = []
    with (
        server_process(emulator_argv) as emulator_url,
        server_process(baseline_argv) as baseline_url,
    ):
        paths = completed_result_paths(emulator_url, args.predictions)
        for round_number in range(1, args.rounds + 1):
            emulator_rounds.append(
                run_wrk(wrk, emulator_url, paths, args.seconds, args.connections)
            )
            baseline_rounds.append(
                run_wrk(wrk, baseline_url, paths, args.seconds, args.connections)
            )
            print(
                f"round {round_number}: emulator {emulator_rounds[-1].requests_per_second:,.0f}/s, "
                f"ceiling {baseline_rounds[-1].requests_per_second:,.0f}/s",
                flush=True,
            )
    emulator, baseline = Summary.of(emulator_rounds), Summary.of(baseline_rounds)

    print()
    print(
        "| target | requests/s (median) | range | p50 | p99 | non-2xx | of ceiling "
        "| of 1,500/s target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ceiling = baseline.median.requests_per_second
    for name, summary in (
        ("emulator `GET /api/v3/predictions/<id>/result`", emulator),
        ("bare tornado fixed JSON (ceiling)", baseline),
    ):
        rate = summary.median.requests_per_second
        print(
            f"| {name} | {rate:,.0f} | {summary.low:,.0f}-{summary.high:,.0f} "
            f"| {summary.median.p50} | {summary.median.p99} | {summary.non_2xx} "
            f"| {rate / ceiling:.0%} | {rate / TARGET_POLLS_PER_SECOND:.2f}x |"
        )
    print(f"| target | {TARGET_POLLS_PER_SECOND:,} | | | | | | 1.00x |")
    rate = emulator.median.requests_per_second
    passed = rate >= TARGET_POLLS_PER_SECOND and emulator.non_2xx == 0
    verdict = "meets" if passed else "MISSES"
    print(f"\nThe emulator {verdict} the {TARGET_POLLS_PER_SECOND:,} polls/s target.")
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
