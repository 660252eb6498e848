"""Handing freed memory back to the system: in workers after big jobs, in the server after big reads.

CPython frees a 16 MB frame into glibc's heap, which keeps it: after a few large layers a process
holds hundreds of megabytes it no longer uses. These helpers ask glibc to return it (a no-op on
other C libraries), right away in a worker, a second after the last large read in the server.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from functools import cache

logger = logging.getLogger("gischat.processing")

# Glibc serves larger blocks with mmap, returned to the system as soon as they are freed.
# Left alone, glibc raises this threshold after every large free (up to 32 MB), and the
# next layers' buffers then stay in the heap after use.
MMAP_THRESHOLD = 1024 * 1024
# In the server process: buffers below glibc's own ceiling for the threshold come from the heap,
# and a free keeps up to this much at the heap's top instead of handing it back at once.
SERVER_MMAP_THRESHOLD = 32 * 1024 * 1024
SERVER_TRIM_THRESHOLD = 256 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
# After a large job, the main process trims its heap once big jobs have been quiet this long
# (seconds): by then the frame, the result and the copies sent to sockets are freed.
TRIM_DELAY = 1.0


# --- memory ---------------------------------------------------------------------------------------


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has malloc_trim and mallopt), else None (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def release_memory() -> bool:
    """Give freed heap memory back to the system (glibc `malloc_trim(0)`); False if unavailable.

    glibc keeps freed memory in its arenas for reuse. Once `tune_allocator()` has run, big
    buffers no longer land there and a trim finds little to do (0.3 ms after a burst of
    16 MB layers; 30 ms and 150 MB without the tuning). ctypes releases the GIL during the
    call but the calling thread waits: call it from a thread (`asyncio.to_thread`).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def tune_allocator() -> bool:
    """Pin glibc's mmap threshold in a worker; False where that is not possible.

    Blocks above the threshold are mapped on their own and unmapped the moment they are
    freed; left dynamic, glibc raises the threshold after each big free and keeps the next
    big buffers in its heap. A worker wants its memory back after each big job.
    """
    libc = _glibc()
    if libc is None or MMAP_THRESHOLD <= 0:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def keep_heap_warm() -> bool:
    """In the server process: keep the pages of freed large buffers for the next ones; False
    where that is not possible.

    Each large frame the server reads is copied whole a few times (the parser's buffer, its
    slice, the unmasked payload), and each copy is a fresh 16 MB buffer. Left to itself, glibc
    hands the top of the heap back on every big free (its trim threshold follows the mmap
    threshold, 2 x 16 MB), so the next frame's buffers fault their pages in again with the
    interpreter lock held: about 1 ms per MB on a small virtual machine, and the longest steps
    of the loop under a flood of large layers. With both thresholds set, buffers up to 32 MB
    come from the heap and frees keep up to 256 MB there; the trim after a burst
    (`trim_heap_soon`) still hands it all back a second after the last large read.
    """
    libc = _glibc()
    if libc is None:
        return False
    # Setting either turns glibc's dynamic thresholds off: both are set, the mmap one first.
    mapped = libc.mallopt(_M_MMAP_THRESHOLD, SERVER_MMAP_THRESHOLD)
    return bool(mapped and libc.mallopt(_M_TRIM_THRESHOLD, SERVER_TRIM_THRESHOLD))


class _HeapTrimmer:
    """Trims the main heap TRIM_DELAY seconds after the last large buffer was let go.

    Called for every large frame the transport receives or drops (most of them never reach a
    worker: refused for their rate, or left unfinished), so one timer is kept and moved.
    """

    def __init__(self) -> None:
        self.due = 0.0
        self.trims = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False

    def soon(self) -> None:
        loop = asyncio.get_running_loop()
        self.due = loop.time() + TRIM_DELAY
        if self._timer is None or self._loop is not loop:  # none yet, or one of a loop now gone
            self._loop, self._running = loop, False
            self._timer = loop.call_at(self.due, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if loop.is_closed():
            return
        if loop.time() < self.due:  # more came since: wait for quiet
            self._timer = loop.call_at(self.due, self._fire, loop)
            return
        if self._running:
            return  # the running trim schedules the next one when it is done
        self._running = True
        self.due = float("inf")  # nothing new since this trim
        self.trims += 1
        loop.run_in_executor(None, release_memory).add_done_callback(self._done)

    def _done(self, _: object) -> None:
        self._running = False
        loop = self._loop
        if self._timer is None and self.due != float("inf") and loop is not None and not loop.is_closed():
            self._timer = loop.call_at(self.due, self._fire, loop)  # more came during the trim


_heap_trimmer = _HeapTrimmer()


def trim_heap_soon() -> None:
    """On the event loop: a large buffer was just freed, trim the heap once they stop coming."""
    _heap_trimmer.soon()


# --- in the worker --------------------------------------------------------------------------------
