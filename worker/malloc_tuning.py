"""glibc's malloc in a worker process: fewer arenas, and free memory given back.

**Arenas**, capped before the pool threads start.

glibc gives threads their own malloc arenas, up to 8 per core, to spare them each
other's locks. A Python worker's threads take the GIL for nearly every allocation, so
they gain almost nothing from them, while each arena keeps its own free pieces: a
threads-pool worker ran with 15 arenas and its resident memory crept up for as long as
the soak ran (``make soak``; README "Memory over long runs"). ``MALLOC_ARENA_MAX`` in
the environment does the same, but only for a process started with it;
``mallopt(M_ARENA_MAX)`` applies to arenas created after the call, which in a worker is
all but the main thread's, as long as it runs before the pool starts (``worker_init``).

**Trimming.** ``free()`` gives memory back to the system only from the top of a heap;
free pieces between live ones stay resident, and a long-running process's resident
size drifts up with them. ``malloc_trim(0)`` releases every free page of every arena
(``madvise``) and takes about a millisecond here, so a thread calls it once a minute
(``WAVEQUEUE_MALLOC_TRIM_INTERVAL``).

**Figures.** ``malloc_figures`` reads glibc's own account (``mallinfo2``): bytes in
live blocks and bytes free inside its heaps. Resident memory that grows while the live
bytes stay flat is free space malloc cannot give back; live bytes that grow while
Python's heap stays flat are allocations made outside Python (C or Rust extensions).
The soak's memory trace writes them (``worker.memory_trace``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from dataclasses import dataclass
from functools import cache

log = logging.getLogger(__name__)

#: glibc's ``M_ARENA_MAX`` (malloc.h).
M_ARENA_MAX = -8


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


class _MallInfo2(ctypes.Structure):
    """``struct mallinfo2`` (malloc.h, glibc 2.33+): every field a ``size_t``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes of the heaps (sbrk'd main heap and mmap'd arena heaps)
            "ordblks",  # free chunks
            "smblks",  # free fastbin chunks
            "hblks",  # chunks mmap'd on their own
            "hblkhd",  # bytes in those
            "usmblks",
            "fsmblks",  # bytes in free fastbin chunks
            "uordblks",  # bytes in live chunks (heaps only)
            "fordblks",  # bytes free inside the heaps
            "keepcost",  # free bytes at the top of the main heap (trimmable by sbrk)
        )
    ]


@dataclass(frozen=True)
class MallocFigures:
    heap_bytes: int  # the heaps' size, free space included
    in_use_bytes: int  # live blocks: in the heaps and mmap'd on their own
    free_bytes: int  # free inside the heaps
    mmap_bytes: int  # live blocks mmap'd on their own (counted in in_use_bytes too)


def malloc_figures() -> MallocFigures | None:
    """glibc's account of this process's malloc, summed over its arenas; None where
    there is no ``mallinfo2`` (another C library, or glibc before 2.33). It takes every
    arena's lock in turn: cheap every few seconds, not for a hot path."""
    libc = _libc()
    mallinfo2 = getattr(libc, "mallinfo2", None) if libc is not None else None
    if mallinfo2 is None:
        return None
    mallinfo2.argtypes = ()
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return MallocFigures(
        heap_bytes=info.arena,
        in_use_bytes=info.uordblks + info.hblkhd,
        free_bytes=info.fordblks,
        mmap_bytes=info.hblkhd,
    )


def limit_malloc_arenas(arenas: int) -> bool:
    """Ask glibc for at most ``arenas`` arenas; False where that cannot be done (another
    C library, or glibc refused). 0 leaves glibc's default."""
    libc = _libc()
    if arenas <= 0 or libc is None:
        return False
    try:
        mallopt = libc.mallopt
    except AttributeError:  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, arenas) != 1:
        log.warning("malloc arenas not capped: mallopt(M_ARENA_MAX, %d) refused", arenas)
        return False
    return True


def trim_malloc() -> bool:
    """Give glibc's free pages back to the system; False where there is no
    ``malloc_trim`` (another C library)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)
    return True


def start_trimming(interval: float) -> threading.Event | None:
    """A daemon thread that trims every ``interval`` seconds (none for 0 or where
    glibc's trim is missing); set the event to stop it."""
    if interval <= 0 or not trim_malloc():
        return None
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            trim_malloc()

    threading.Thread(target=run, name="wavequeue-malloc-trim", daemon=True).start()
    return stop
