"""One websocket's outbound side: written at once when the peer keeps up, else a bounded queue.

Why not simply `await websocket.send_text()` for each recipient in turn? Because a send
waits whenever that peer's TCP window is full, and a single client that stops reading
would then hold up the whole room. Here a broadcast only appends the already serialised
text to each recipient's queue, which never waits; each socket's writer task moves its
queue to the network at the pace its peer reads. A peer that falls too far behind (more
queued messages or bytes than the instance allows) is dropped from the room at once and
its socket is closed with 1008, so it costs nobody else any latency and the server no
unbounded memory.

Under gischat's own transport the socket offers a `FrameSink`: as long as the peer keeps up
and nothing is queued for it, a broadcast frame is written straight to its socket, with no
queue, no task and no ASGI event; only a peer that cannot take it now gets a queue and a
writer. Under any other ASGI server every message goes through the queue and `send`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket

from gischat.limits import ConnectionLimits
from gischat.observability.logs import context
from gischat.protocol.dialects import Dialect, Post, uncompliant
from gischat.protocol.frames import SINK_EXTENSION, FrameSink, Outgoing
from gischat.protocol.refusals import CLOSE_POLICY_VIOLATION, SLOW_CONSUMER_REASON

logger = logging.getLogger("gischat.connection")

# How far past its bound a queue may grow while its writer simply waits for its turn.
HARD_LIMIT_FACTOR = 4
# Messages waiting for a peer beyond which we stop reading from it until they are sent: a
# client that talks faster than it listens only ever waits for itself.
READ_PAUSE_MESSAGES = 64


def client_address(client: Any) -> str:
    """The client's address as the app sees it (the real one, behind a trusted proxy); "?" unknown."""
    return str(client.host) if client is not None else "?"


def peer_name(client: Any) -> str:
    """The client's address and port, as logs show a connection."""
    return f"{client.host}:{client.port}" if client is not None else "?"


class Connection:
    """A websocket in a room: its registered nickname and what is waiting to be sent to it."""

    __slots__ = (
        "_bytes",
        "_closer",
        "_drained",
        "_loop",
        "_on_overflow",
        "_pending",
        "_queue",
        "_sending",
        "_writer",
        "address",
        "closing",
        "connected_since",
        "dialect",
        "limits",
        "max_bytes",
        "max_messages",
        "messages_sent",
        "nickname",
        "peer",
        "refusals",
        "room",
        "sink",
        "websocket",
    )

    def __init__(
        self,
        websocket: WebSocket,
        room: str,
        dialect: Dialect,
        *,
        max_messages: int,
        max_bytes: int,
        on_overflow: Callable[[Connection, str], None],
    ) -> None:
        self.websocket = websocket
        # gischat's transport lets us write ready frames ourselves; other servers do not.
        self.sink: FrameSink | None = websocket.scope.get("extensions", {}).get(SINK_EXTENSION)
        self.room = room
        self.dialect = dialect
        self.nickname: str | None = None
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.closing = False
        self.address = client_address(websocket.client)
        self.peer = peer_name(websocket.client)
        # Rate-limit buckets, made on the first message: an idle socket carries none.
        self.limits: ConnectionLimits | None = None
        self.refusals = 0
        # What a moderator sees of it: since when (seconds since the epoch) and how many frames it sent.
        self.connected_since = time.time()
        self.messages_sent = 0
        self._on_overflow = on_overflow
        # A plain list, swapped out whole by the writer: cheaper per idle socket than a deque.
        self._queue: list[Outgoing] = []
        self._pending = 0  # messages queued or in the writer's current batch
        self._bytes = 0
        self._sending = False  # the writer is inside a send, i.e. waiting on the peer
        self._loop = asyncio.get_running_loop()
        # The writer task exists only while there is something to send: an idle socket
        # carries no task, no coroutine frame and no future.
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    def push(self, item: Outgoing) -> None:
        """Queue a serialised message; never waits, whatever the peer is doing."""
        if self.closing:
            return
        if self._writer is None and self.sink is not None and self.sink.offer(item):
            return  # written at once: the peer keeps up and nothing was waiting
        if self._too_slow(item.size):
            self._overflow()
            return
        self._queue.append(item)
        self._pending += 1
        self._bytes += item.size
        if self._writer is None:
            self._writer = self._loop.create_task(self._write())

    def push_post(self, post: Post, send_style: bool = True) -> None:
        """Queue a message in this socket's dialect; one its dialect lacks is not sent."""
        item = post.frame(self.dialect, send_style)
        if item is not None:
            self.push(item)

    def refuse(self, reason: str) -> None:
        """Tell this socket alone that its message was refused, and why."""
        self.push_post(uncompliant(reason))

    @property
    def pending(self) -> int:
        """Messages queued for this socket or being sent to it."""
        return self._pending

    @property
    def backlogged(self) -> bool:
        """Whether the peer is behind on what we send it: then we stop reading what it sends."""
        return self._pending > READ_PAUSE_MESSAGES or (self._sending and self._pending > 1)

    async def drained(self) -> None:
        """Wait until everything queued for this socket is sent (or the socket is done)."""
        if self._writer is None or self.closing:
            return
        if self._drained is None:
            self._drained = self._loop.create_future()
        await asyncio.shield(self._drained)

    def _too_slow(self, size: int) -> bool:
        """Whether queueing `size` more characters shows the peer cannot keep up.

        Past the bound, the peer is too slow if the writer is stuck on its socket. A writer that
        merely has not had its turn yet (a burst arrived in one read) gets slack up to a hard
        ceiling, so memory stays bounded either way.
        """
        messages, size = self._pending + 1, self._bytes + size
        if messages <= self.max_messages and size <= self.max_bytes:
            return False
        if self._sending:
            return True
        return messages > HARD_LIMIT_FACTOR * self.max_messages or size > HARD_LIMIT_FACTOR * self.max_bytes

    async def _write(self) -> None:
        """Send until the queue is empty, then end; the next push starts a new writer."""
        sink = self.sink
        send = sink.deliver if sink is not None else self._send_event
        try:
            while self._queue:
                # Everything queued so far goes out in this task step: one wake-up per batch.
                batch, self._queue = self._queue, []
                for item in batch:
                    self._sending = True
                    await send(item)
                    self._sending = False
                    self._pending -= 1
                    self._bytes -= item.size
        except Exception as exc:  # the socket is gone; its receive loop will clean up
            self.closing = True
            logger.debug("%s: send failed: %r", self.peer, exc)
        finally:
            self._sending = False
            self._writer = None
            self._wake_readers()

    async def _send_event(self, item: Outgoing) -> None:
        await self.websocket.send(item.event)

    def _wake_readers(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _overflow(self) -> None:
        logger.warning(
            "%s in %r: outbound queue full, disconnecting",
            self.peer,
            self.room,
            extra=context(self.peer, self.room, SLOW_CONSUMER_REASON),
        )
        self.drop(CLOSE_POLICY_VIOLATION, SLOW_CONSUMER_REASON, "slow")

    def drop(self, code: int, reason: str, cause: str) -> None:
        """Leave the room at once and close with `code`; what was queued is discarded."""
        if self.closing:
            return
        self.closing = True
        self._queue = []
        self._pending = 0
        self._bytes = 0
        self._on_overflow(self, cause)
        if self._writer is not None:
            self._writer.cancel()
        self._wake_readers()
        self._closer = self._loop.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.websocket.close(code=code, reason=reason)
        except Exception:  # the peer may be gone already; closing is best effort
            logger.debug("%s: close failed", self.peer, exc_info=True)

    async def stop(self) -> None:
        """Stop the writer when the socket is done; queued messages are dropped."""
        self.closing = True
        self._queue = []
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            await asyncio.wait([writer])
        self._wake_readers()
