"""Cap glibc's malloc arenas in a worker process, before its pool threads start.

glibc gives threads their own malloc arenas, up to 8 per core, to spare them each
other's locks. A Python worker's threads take the GIL for nearly every allocation, so
they gain almost nothing from them, while each arena keeps its own free pieces: a
threads-pool worker ran with 15 arenas and its resident memory crept up for as long as
the soak ran (``make soak``; README "Memory over long runs"). ``MALLOC_ARENA_MAX`` in
the environment does the same, but only for a process started with it;
``mallopt(M_ARENA_MAX)`` applies to arenas created after the call, which in a worker is
all but the main thread's, as long as it runs before the pool starts (``worker_init``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: glibc's ``M_ARENA_MAX`` (malloc.h).
M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int) -> bool:
    """Ask glibc for at most ``arenas`` arenas; False where that cannot be done (another
    C library, or glibc refused). 0 leaves glibc's default."""
    if arenas <= 0:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, arenas) != 1:
        log.warning("malloc arenas not capped: mallopt(M_ARENA_MAX, %d) refused", arenas)
        return False
    return True
