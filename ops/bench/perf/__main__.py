"""Command line of the benchmark harness (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from ops.bench.perf.harness import Stack
from ops.bench.perf.machine import Machine, load_average
from ops.bench.perf.plan import FULL, QUICK
from ops.bench.perf.processes import REPO_ROOT
from ops.bench.perf.readme import replace_table
from ops.bench.perf.scenarios import run_all
from ops.bench.perf.table import build_rows, markdown

DEFAULT_OUT = {"full": Path("out/bench/latest.md"), "quick": Path("out/bench/quick.md")}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.perf", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small numbers (make bench-quick)")
    parser.add_argument(
        "--out",
        type=Path,
        help="table file (default out/bench/latest.md, "
        "quick: out/bench/quick.md); worker and emulator logs go next to it",
    )
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="put the table into README.md's Performance section",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or DEFAULT_OUT[plan.name]
    log_dir = out.parent / f"logs-{plan.name}"
    shutil.rmtree(log_dir, ignore_errors=True)
    load_before, started = load_average(), time.monotonic()
    say(f"{plan.name} run; logs in {log_dir}")
    with (
        tempfile.TemporaryDirectory(prefix="wavequeue-bench-") as data,
        Stack(
            worker_env=dict(plan.worker_env), log_dir=log_dir, data_dir=Path(data), say=say
        ) as stack,
    ):
        machine = Machine.describe(stack.probe.server_version())
        results = run_all(stack, plan)
        breakdowns = stack.command_breakdowns
    elapsed = time.monotonic() - started
    block = "\n".join(
        [
            f"`make bench{'-quick' if args.quick else ''}` ({plan.name} run), "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s; "
            f"load average {load_before} before, {load_average()} after.  ",
            f"Machine: {machine.line()}.",
            "",
            markdown(build_rows(results, plan)),
        ]
    )
    print(block)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(block + "\n")
    (log_dir / "commands-per-job.json").write_text(json.dumps(breakdowns, indent=1) + "\n")
    say(f"table written to {out}; Redis commands per job by name in {log_dir}")
    if args.update_readme:
        replace_table(REPO_ROOT / "README.md", block)
        say("README.md's Performance table updated")


if __name__ == "__main__":
    main()
