"""The blocking-SDK baseline: the official ``wavespeed`` SDK's ``Client.run()`` per slot.

Run by the harness as ``python -m ops.bench.perf.sdk_baseline`` with a JSON plan on
stdin; prints one JSON object. ``slots`` threads (as many as the workers have
threads) each take the next job and call ``Client.run()``, which submits and then
blocks, polling at the SDK's default interval, until the prediction ends: what a
worker pool that holds its slot while the model computes would get.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def sdk_available() -> bool:
    try:
        import wavespeed  # noqa: F401, PLC0415 - optional: a dev extra
    except ImportError:
        return False
    return True


def run(plan: dict[str, Any]) -> dict[str, Any]:
    import wavespeed  # noqa: PLC0415 - optional: a dev extra

    local = threading.local()

    def one(index: int) -> bool:
        if not hasattr(local, "client"):  # one client per slot: nothing shared across threads
            local.client = wavespeed.Client(api_key=plan["api_key"], base_url=plan["base_url"])
        output = local.client.run(
            f"wavespeed-ai/{plan['model']}", {"prompt": f"{plan['prompt']} {index}"}
        )
        return bool(output.get("outputs"))

    cpu_before, started = time.process_time(), time.monotonic()
    with ThreadPoolExecutor(max_workers=plan["slots"]) as pool:
        completed = sum(pool.map(one, range(plan["jobs"])))
    return {
        "makespan": time.monotonic() - started,
        "completed": completed,
        "cpu_seconds": time.process_time() - cpu_before,
    }


def main() -> None:
    plan = json.load(sys.stdin)
    with contextlib.redirect_stdout(sys.stderr):  # the SDK prints its retries
        result = run(plan)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
