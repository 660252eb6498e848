"""uvicorn's sans-I/O websocket protocol with read backpressure, ping and frame limits (see `server.guard`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame

from gischat.protocol.dialects import ASGI_BYTES_KEY
from gischat.protocol.refusals import CLOSE_POLICY_VIOLATION
from gischat.server.guard import (
    BULK_READ,
    CLOSE_TIMEOUT,
    CLOSING_READ_BYTES,
    UNREAD_CLOSE_TIMEOUT,
    TransportGuard,
    _peer,
)
from gischat.work.heap import trim_heap_soon

logger = logging.getLogger("gischat.transport")


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol with read backpressure, ping and frame limits.

    Per connection this adds one attribute, set when the HTTP protocol hands the connection
    over; the ping allowance is added on the first ping, unfinished-message state lives in the
    guard only while a message is unfinished. Idle sockets stay as small as uvicorn's.
    """

    # Class-level defaults, shadowed per instance only when needed.
    _guard: TransportGuard | None = None
    _ping_full_at = 0.0
    # Bytes the peer may still have parsed after our close frame (set when it is sent).
    _closing_budget = CLOSING_READ_BYTES
    _reaper: asyncio.TimerHandle | None = None

    def adopt(self, guard: TransportGuard) -> None:
        """Take over a connection slot of `guard` from the HTTP protocol that upgraded."""
        self._guard = guard
        self.close_timeout = CLOSE_TIMEOUT

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        guard = self._guard
        if guard is not None:
            self._guard = None
            guard.forget(self)
            guard.release(_peer(self.client))
            self._drop_buffers()

    def _drop_buffers(self) -> None:
        """Free what an unfinished message held, now that nobody will read it."""
        self.frames = []
        self.conn.reader.buffer = bytearray()

    # Reading stops while the peer does not read what we write.

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._guard is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        guard = self._guard
        if guard is not None and not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()
            guard.touch(self)

    async def receive(self) -> ASGIReceiveEvent:
        if self._guard is None:
            return await super().receive()
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            guard = self._guard  # may be gone: the connection was lost while we waited
            if self.writable.is_set() and not self.transport.is_closing():
                self.transport.resume_reading()
                if guard is not None:
                    guard.touch(self)
        return message

    # Incoming data: unfinished messages and pings.

    def data_received(self, data: bytes) -> None:
        guard = self._guard
        if guard is not None and self.close_sent and self.handshake_complete:
            self._data_after_close(len(data))
            if self._closing_budget < 0:
                return  # discarded unparsed: a peer we are closing costs no work per frame
        super().data_received(data)
        if guard is not None:
            guard.update(self)
            if len(data) >= BULK_READ:
                self._take_turns()
                # Big buffers will be let go soon: hand the heap back once they stop coming.
                trim_heap_soon()

    def _take_turns(self) -> None:
        """Stop reading until the next loop iteration, so that every socket gets its turn."""
        transport = self.transport
        if transport.is_closing() or not transport.is_reading():
            return
        transport.pause_reading()
        self.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        transport = self.transport
        if self.read_paused or not self.writable.is_set() or self.disconnected:
            return  # someone else paused reading; whoever resumes it will
        if not transport.is_closing():
            transport.resume_reading()

    def _data_after_close(self, size: int) -> None:
        """We sent our close frame: parse a little more (the peer's close reply), then nothing."""
        if self._closing_budget < 0:
            return
        self._closing_budget -= size
        if self._closing_budget >= 0:
            return
        # The peer keeps sending instead of answering our close: stop reading it, free what it
        # held, and end the connection once our close frame is out (at most CLOSE_TIMEOUT on).
        self._drop_buffers()
        if self._guard is not None:
            self._guard.forget(self)
        self._end_transport()

    def _end_transport(self) -> None:
        """Close now; abort if what we still have to write has not gone out within CLOSE_TIMEOUT."""
        transport = self.transport
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        transport.close()  # reads no more; writes what is buffered (our close frame), then closes
        if transport.get_write_buffer_size() and self._reaper is None:
            self._reaper = self.loop.call_later(CLOSE_TIMEOUT, transport.abort)

    def handle_text(self, event: Frame) -> None:
        super().handle_text(event)
        if self._guard is not None:
            self._guard.fragment(self, len(event.data), first=True)

    def handle_bytes(self, event: Frame) -> None:
        super().handle_bytes(event)
        if self._guard is not None:
            self._guard.fragment(self, len(event.data), first=True)

    def handle_cont(self, event: Frame) -> None:
        super().handle_cont(event)
        if self._guard is not None:
            self._guard.fragment(self, len(event.data), first=False)

    def handle_ping(self) -> None:
        guard = self._guard
        if guard is not None:
            if self.close_sent or self.transport.is_closing():
                return
            if guard.ping_interval:
                now = time.monotonic()
                full_at = max(self._ping_full_at, now) + guard.ping_interval
                if full_at - now > guard.ping_tolerance:
                    self.fail(
                        CLOSE_POLICY_VIOLATION, f"ping flood: more than {guard.ping_rate:g} pings per second"
                    )
                    return
                self._ping_full_at = full_at
        super().handle_ping()

    def fail(self, code: int, reason: str) -> None:
        """Close with `code` and `reason` at once, tell the app, and free what the peer sent."""
        guard = self._guard
        if not self.close_sent and not self.transport.is_closing():
            self.conn.fail(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            if guard is not None:
                guard.refused(str(code), _peer(self.client), reason)
            if self.writable.is_set():
                self.transport.close()
            else:  # the peer does not read: it will not read our close frame either
                self.transport.abort()
        if guard is not None:
            guard.forget(self)
        self._drop_buffers()

    def _close_unread(self, code: int, reason: str) -> None:
        """The app closes a peer that does not read: our close frame joins what it has not read,
        the app hears at once that the peer is gone, and nothing it sends is parsed any more.

        The connection ends when the peer has read everything (or after UNREAD_CLOSE_TIMEOUT).
        """
        with contextlib.suppress(InvalidState):
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._closing_budget = -1
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self._guard is not None:
            self._guard.forget(self)
        self._drop_buffers()
        self.transport.close()
        if self._reaper is None:
            self._reaper = self.loop.call_later(UNREAD_CLOSE_TIMEOUT, self.transport.abort)

    # Outgoing messages.

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "websocket.send":
            encoded = cast(Mapping[str, Any], message).get(ASGI_BYTES_KEY)
            if encoded is not None and message.get("bytes") is None:
                await self.writable.wait()
                if (
                    self.handshake_complete
                    and not self.close_sent
                    and not self.disconnected
                    and self.initial_response is None
                ):
                    try:
                        self.conn.send_text(encoded)
                    except InvalidState:
                        raise ClientDisconnected() from None
                    self.transport.write(b"".join(self.conn.data_to_send()))
                    return
        if self._guard is not None and self.handshake_complete:
            if self.close_sent:
                # We failed the connection (or it is closing): for the app the peer is gone.
                if message["type"] == "websocket.close":
                    return
                if message["type"] == "websocket.send":
                    raise ClientDisconnected()
            elif (
                message["type"] == "websocket.close"
                and not self.writable.is_set()
                and self.initial_response is None
                and not self.disconnected
            ):
                # The peer does not read what we send: uvicorn would wait (without end) for room
                # to write our close frame, reading and parsing whatever the peer sends meanwhile.
                self._close_unread(message.get("code", 1000), message.get("reason") or "")
                return
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            # A handshake refused with an HTTP answer (403, 429) is a complete handshake too;
            # uvicorn would otherwise log an error for every refusal.
            self.handshake_complete = True
