"""Heap figures and allocation snapshots of one process, for long-run measurements.

With ``WAVEQUEUE_MEMORY_TRACE=<dir>`` a process (a worker, the soak's producer)
starts a thread that, every ``FIGURES_INTERVAL`` seconds, writes
``<dir>/<role>-<pid>.json``: its Python heap blocks (``sys.getallocatedblocks``) and
glibc's account of malloc (bytes live and bytes free in its heaps, ``mallinfo2``).
Both are cheap, and neither moves the resident memory the reader judges.

Allocation sites cost more: with ``WAVEQUEUE_MEMORY_TRACE_SITES`` the process also
runs ``tracemalloc`` (the figures then add the bytes it sees and what tracing itself
holds), and a label written as a line of ``<dir>/snapshot-requests`` makes it run a
full garbage collection and dump ``<dir>/<role>-<pid>-<label>.tracemalloc`` once (and,
beside it, how many objects that collection freed). Tracing allocates for every
allocation the process makes, and those allocations leave free space of their own in
malloc's heaps: a traced worker's resident memory rose ~0.04 MB per 1,000 jobs faster
than an untraced one's in the same soak (README "Memory over long runs"), so the soak
judges untraced processes and traces only to name sites. The reader (the soak
benchmark, another process) diffs two snapshots; nothing here interprets them.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from worker.malloc_tuning import malloc_figures

log = logging.getLogger(__name__)

#: Seconds between two writes of the figures file (and looks at the requests file).
FIGURES_INTERVAL = 2.0
#: Frames kept per allocation: enough to see which caller of a generic site grows.
TRACE_FRAMES = 8
REQUESTS_FILE = "snapshot-requests"
SNAPSHOT_SUFFIX = ".tracemalloc"


class MemoryTrace:
    def __init__(self, directory: Path, role: str, *, sites: bool) -> None:
        self.directory = directory
        self.stem = f"{role}-{os.getpid()}"
        self.sites = sites
        self._served: set[str] = set()

    def write_figures(self) -> None:
        figures: dict[str, float] = {
            "pid": os.getpid(),
            "at": time.time(),
            "blocks": sys.getallocatedblocks(),
        }
        if self.sites:
            figures["traced_bytes"] = tracemalloc.get_traced_memory()[0]
            # What tracing itself holds (its traces and tracebacks): part of the resident
            # memory, and growing with the heap it traces; the soak takes it out.
            figures["tracing_bytes"] = tracemalloc.get_tracemalloc_memory()
        malloc = malloc_figures()
        if malloc is not None:
            # tracemalloc's own memory is among malloc's live blocks: the reader takes
            # it out as it does from the resident size.
            figures["malloc_in_use_bytes"] = malloc.in_use_bytes
            figures["malloc_free_bytes"] = malloc.free_bytes
        _write_atomically(self.directory / f"{self.stem}.json", json.dumps(figures).encode())

    def serve_requests(self) -> None:
        if not self.sites:
            return
        try:
            labels = (self.directory / REQUESTS_FILE).read_text().split()
        except FileNotFoundError:
            return
        for label in labels:
            if label not in self._served:
                self._served.add(label)
                path = self.directory / f"{self.stem}-{label}{SNAPSHOT_SUFFIX}"
                # Dumped to a temporary name first: the reader sees whole files only.
                partial = path.with_name(path.name + ".partial")
                # Only what is still reachable: cyclic garbage would pass for a leak. How
                # much there was is a figure of its own (objects kept alive by cycles
                # until a full collection: heap and RSS that refcounting would not need).
                freed = gc.collect()
                tracemalloc.take_snapshot().dump(str(partial))
                partial.replace(path)
                _write_atomically(
                    self.directory / f"{self.stem}-{label}.gc.json",
                    json.dumps({"collected": freed, "at": time.time()}).encode(),
                )

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.write_figures()
                self.serve_requests()
            except OSError as exc:  # a full disk must not stop the process it watches
                log.warning("memory trace not written (%s)", exc)
            stop.wait(FIGURES_INTERVAL)


def start(directory: str, role: str, *, sites: bool = False) -> threading.Event:
    """Write this process's heap figures into ``directory`` (and, with ``sites``,
    trace its allocations for snapshots); set the event to stop."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if sites and not tracemalloc.is_tracing():
        tracemalloc.start(TRACE_FRAMES)
    stop = threading.Event()
    trace = MemoryTrace(path, role, sites=sites)
    thread = threading.Thread(target=trace.run, args=(stop,), name="wavequeue-memory-trace")
    thread.daemon = True
    thread.start()
    if sites:
        log.warning("tracing allocations into %s: slower, for measurements", path)
    else:
        log.info("writing heap figures into %s (WAVEQUEUE_MEMORY_TRACE)", path)
    return stop


def request_snapshots(directory: Path, label: str) -> None:
    """Ask every process tracing into ``directory`` for a snapshot named ``label``."""
    with (directory / REQUESTS_FILE).open("a") as requests:
        requests.write(label + "\n")


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
