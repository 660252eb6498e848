"""Why a websocket is not being read: reasons to pause reading, held together, dropped one by one.

The protocol does not buffer what it should not take from the peer now: it pauses its transport's
reading, the kernel's buffers fill, and TCP backpressure slows the peer down. Several reasons can
hold at once (the app has an unread message while the byte rate asks to wait, say); each one is
dropped on its own, and reading resumes only when the last one is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import IntFlag


class Pause(IntFlag):
    """Why reading is paused; it resumes when no reason is left."""

    HANDSHAKE = 1  # the app has not answered the handshake yet
    APP = 2  # the app has an unread message
    PEER = 4  # the peer does not read what we write
    BUDGET = 8  # a large frame waits for room in its address's budget
    PACE = 16  # the byte rate asks to wait
    TURN = 32  # a big read: every other socket gets its turn first


class ReadFlow:
    """The `Pause` reasons in force on one transport, its reading paused and resumed with them.

    uvicorn's `FlowControl` does this for an HTTP connection with a single reason. The reasons are
    a plain int: the flags' own operators go through the enum machinery, many times slower than
    an int's, and these run several times per message.
    """

    __slots__ = ("on_resume", "reasons", "stopped", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0  # the `Pause` reasons in force, or-ed together
        self.stopped = False  # the connection is lost: reading never resumes
        # Told when reading resumes (a guard restarts the deadline of an unfinished message).
        self.on_resume: Callable[[], None] | None = None

    def pause(self, why: Pause) -> None:
        if not self.reasons and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reasons = self.reasons | int(why)

    def resume(self, why: Pause) -> None:
        """Drop `why`; reading resumes if it was the last reason."""
        bit = int(why)
        if not self.reasons & bit:
            return
        self.reasons = self.reasons & ~bit
        if self.reasons or self.stopped or self.transport.is_closing():
            return
        self.transport.resume_reading()
        if self.on_resume is not None:
            self.on_resume()

    def paused_for(self, why: Pause) -> bool:
        return bool(self.reasons & int(why))

    def release(self) -> None:
        """Drop every reason and read: our close frame is out, the peer's reply is awaited."""
        self.reasons = 0
        self.transport.resume_reading()

    def stop(self) -> None:
        """The connection is lost: whatever is dropped from now on, reading stays as it is."""
        self.stopped = True
