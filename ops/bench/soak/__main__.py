"""``python -m ops.bench.soak`` (``make soak``, arguments in ``SOAK_ARGS``): prints the
table, writes it to ``--out`` (default ``out/soak/latest.md``) and exits 1 when a
process keeps growing or Redis keeps more per job than documented.

The judged run does not trace allocations: tracing moves the resident memory it would
judge (``worker.memory_trace``). When a process grows in it, a traced run of the same
load follows and names the allocation sites that grew (``--no-trace``: no such run;
``--trace``: one traced run, judged as it is)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ops.bench.soak.run import DEFAULT_WARMUP_JOBS, SoakOptions, run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="load time (default 10)")
    parser.add_argument("--rate", type=float, default=15.0, help="jobs per second (default 15)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument(
        "--warmup-jobs",
        type=int,
        default=DEFAULT_WARMUP_JOBS,
        help=f"jobs run before the measured load, not sampled (default {DEFAULT_WARMUP_JOBS})",
    )
    parser.add_argument(
        "--warmup-rate", type=float, default=60.0, help="their jobs per second (default 60)"
    )
    parser.add_argument("--out", type=Path, default=Path("out/soak/latest.md"))
    tracing = parser.add_mutually_exclusive_group()
    tracing.add_argument(
        "--no-trace", action="store_true", help="no traced run after a failure (no sites)"
    )
    tracing.add_argument(
        "--trace", action="store_true", help="trace allocations in the judged run itself"
    )
    parser.add_argument("--no-flower", action="store_true", help="do not run Flower")
    args = parser.parse_args(argv)
    options = SoakOptions(
        minutes=args.minutes,
        rate=args.rate,
        workers=args.workers,
        sample_every=args.sample_every,
        out_dir=args.out.parent,
        trace=args.trace,
        flower=not args.no_flower,
        warmup_jobs=args.warmup_jobs,
        warmup_rate=args.warmup_rate,
    )

    def say(line: str) -> None:
        print(line, flush=True)

    report = run_soak(options, say=say)
    grown = frozenset(p.name for p in report.processes if p.grows)
    if grown and not args.trace and not args.no_trace:
        sites_out = args.out.parent / "sites"
        say(f"{', '.join(sorted(grown))} grew: a traced run of the same load names the sites")
        traced = run_soak(
            dataclasses.replace(options, trace=True, sites_for=grown, out_dir=sites_out),
            say=say,
        )
        (sites_out / "latest.md").write_text(traced.markdown())
        report.allocations = traced.allocations
        report.facts.append(
            "allocation sites: from a traced run of the same load that followed this one "
            f"(its own table: {sites_out / 'latest.md'})"
        )
    text = report.markdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
