"""Frames offered to many sockets during one loop turn, written once per socket at its end.

Writing to a TCP socket costs a system call (and on loopback the delivery itself), whatever the
size: more than everything else a delivery costs (docs/benchmarks.md, batching). When a read
brings several messages at once (a client sending a burst, several clients in one turn), the
same recipients get several frames in the same turn. So a socket that keeps up does not write
each frame at once: it collects the frames of the turn (references to the shared frame bytes,
no copy) and the batch writes them with one `writelines` per socket when the turn ends (one
`call_soon` for all sockets together). One frame in a turn costs what writing it at once would;
several share one system call. Nothing waits longer than the rest of the current loop turn.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Flushable(Protocol):
    def flush_out(self) -> None:
        """Write what was collected this turn."""


class WriteBatch:
    """The sockets holding frames of this loop turn, flushed together once the turn ends."""

    __slots__ = ("dirty", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Flushable] = []
        self.scheduled = False

    def add(self, sink: Flushable) -> None:
        """`sink` collected its first frame of the turn: write it (and any more) at the end."""
        self.dirty.append(sink)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for sink in dirty:
            sink.flush_out()
