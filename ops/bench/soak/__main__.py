"""``python -m ops.bench.soak`` (``make soak``, arguments in ``SOAK_ARGS``): prints the
table, writes it to ``--out`` (default ``out/soak/latest.md``) and exits 1 when a
process keeps growing or Redis keeps more per job than documented."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ops.bench.soak.run import SoakOptions, run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="load time (default 10)")
    parser.add_argument("--rate", type=float, default=15.0, help="jobs per second (default 15)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--out", type=Path, default=Path("out/soak/latest.md"))
    parser.add_argument(
        "--no-trace", action="store_true", help="no tracemalloc (no heap blocks, no sites)"
    )
    parser.add_argument("--no-flower", action="store_true", help="do not run Flower")
    args = parser.parse_args(argv)
    options = SoakOptions(
        minutes=args.minutes,
        rate=args.rate,
        workers=args.workers,
        sample_every=args.sample_every,
        out_dir=args.out.parent,
        trace=not args.no_trace,
        flower=not args.no_flower,
    )
    report = run_soak(options, say=lambda line: print(line, flush=True))
    text = report.markdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
