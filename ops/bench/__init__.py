"""Benchmarks: timings live here, not in pass/fail tests (see DESIGN.md, testing rules)."""
