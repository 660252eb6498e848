"""One websocket's outbound side: a bounded queue drained by its own writer task.

Why not simply `await websocket.send_text()` for each recipient in turn? Because a send
waits whenever that peer's TCP window is full, and a single client that stops reading
would then hold up the whole room. Here a broadcast only appends the already serialised
text to each recipient's queue, which never waits; each socket's writer task moves its
queue to the network at the pace its peer reads. A peer that falls too far behind (more
queued messages or bytes than the instance allows) is dropped from the room at once and
its socket is closed with 1008, so it costs nobody else any latency and the server no
unbounded memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from starlette.websockets import WebSocket

logger = logging.getLogger("gischat.connection")

CLOSE_POLICY_VIOLATION = 1008
SLOW_CONSUMER_REASON = "too slow: outbound queue full"


class Connection:
    """A websocket in a room: its registered nickname and what is waiting to be sent to it."""

    __slots__ = (
        "_bytes",
        "_closer",
        "_on_overflow",
        "_queue",
        "_waiter",
        "_writer",
        "closing",
        "max_bytes",
        "max_messages",
        "nickname",
        "peer",
        "room",
        "websocket",
    )

    def __init__(
        self,
        websocket: WebSocket,
        room: str,
        *,
        max_messages: int,
        max_bytes: int,
        on_overflow: Callable[[Connection], None],
    ) -> None:
        self.websocket = websocket
        self.room = room
        self.nickname: str | None = None
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.closing = False
        client = websocket.client
        self.peer = f"{client.host}:{client.port}" if client else "?"
        self._on_overflow = on_overflow
        self._queue: deque[str] = deque()
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer; called once the handshake is accepted."""
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        self._writer.add_done_callback(self._writer_done)

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        """A send that failed means the socket is gone: stop queueing for it."""
        self.closing = True
        if not task.cancelled() and task.exception() is not None:
            logger.debug("%s: writer stopped: %r", self.peer, task.exception())

    def push(self, text: str) -> None:
        """Queue a serialised message; never waits, whatever the peer is doing."""
        if self.closing:
            return
        if len(self._queue) >= self.max_messages or self._bytes + len(text) > self.max_bytes:
            self._overflow()
            return
        self._queue.append(text)
        self._bytes += len(text)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _write_loop(self) -> None:
        queue = self._queue
        send = self.websocket.send
        loop = asyncio.get_running_loop()
        while True:
            while queue:
                text = queue.popleft()
                self._bytes -= len(text)
                await send({"type": "websocket.send", "text": text})
            self._waiter = loop.create_future()
            await self._waiter
            self._waiter = None

    def _overflow(self) -> None:
        logger.warning("%s in %r: outbound queue full, disconnecting", self.peer, self.room)
        self.closing = True
        self._queue.clear()
        self._bytes = 0
        self._on_overflow(self)
        if self._writer is not None:
            self._writer.cancel()
        self._closer = asyncio.get_running_loop().create_task(
            self._close(CLOSE_POLICY_VIOLATION, SLOW_CONSUMER_REASON)
        )

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.websocket.close(code=code, reason=reason)
        except Exception:  # the peer may be gone already; closing is best effort
            logger.debug("%s: close after overflow failed", self.peer, exc_info=True)

    async def stop(self) -> None:
        """Stop the writer when the socket is done; queued messages are dropped."""
        self.closing = True
        self._queue.clear()
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            await asyncio.wait([writer])
