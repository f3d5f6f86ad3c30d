"""``make soak``: steady load for a long while, to tell a leak from warm-up.

The workers, the producer, the exporter and Flower run under a constant job rate
against the emulator (1-3 s latency, ~5% mixed faults) while every process's resident
memory, threads, open files and Python heap blocks, and Redis's memory and keys, are
sampled. The verdict (``trend``) compares the slope per 1,000 jobs of the second half
(after warm-up) with a floor and with the samples' own noise; ``allocations`` names the
sites that grew, from ``tracemalloc`` snapshots the processes take when asked.
"""
