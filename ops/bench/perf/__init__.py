"""``make bench`` / ``make bench-quick``: wavequeue's cost per job beside its floors.

``python -m ops.bench.perf [--quick] [--update-readme]`` starts the real stack
(private redis-servers, the emulator, ``wavequeue worker`` processes), runs the
scenarios of issue #10 (``scenarios``), measures the floors in the same run (the raw
Celery floor, the async client, the blocking SDK) and prints one table (``table``),
also written to ``out/bench/``. See ops/bench/README.md.
"""
