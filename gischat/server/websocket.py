"""gischat's websocket protocol: ASGI over the public sans-I/O API of `websockets`, guarded.

Plugged into uvicorn through its `ws=` option (uvicorn builds it with `config`, `server_state`
and `app_state` and hands it the upgraded connection). It was written from scratch in the
shape of uvicorn's `websockets-sansio` protocol (BSD-3; same handshake and ASGI events, same
access lines), and differs where gischat needs it to:

- The opening handshake is read and answered by gischat (`server.opening`, `server.upgrade`):
  the sans-I/O protocol starts open and only parses frames, unless permessage-deflate is
  enabled and `websockets` negotiates it.

- Reads are budgeted at the socket (`server.budget`, `server.meter`): each frame is judged by
  its header before its payload is read: too large for MAX_FRAME_SIZE is refused at once
  (1009), a ping over the ping rate is refused before it is answered (1008), a large frame
  waits until its address's held-bytes budget has room, and a peer reading faster than its
  byte rate (per connection and per address) is simply read slower.
- Reading pauses for one of several reasons at once (`Pause` flags), and resumes only when
  none is left: the app has an unread message, the peer does not read us, the budget is full,
  the rate asks to wait, a big read gives the other sockets a turn.
- Broadcasts skip ASGI: the protocol is the scope's `FrameSink`, and a ready frame (built once
  per dialect) is written as is when the peer keeps up.
- Every refusal, invalid UTF-8 included, ends with our close frame sent (the transport closes
  once it is out, or aborts after CLOSE_TIMEOUT) and one rate-limited log line, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.protocol import State
from websockets.server import ServerProtocol

from gischat.limits import TokenBucket
from gischat.protocol.frames import Outgoing
from gischat.server.batch import WriteBatch
from gischat.server.guard import (
    CLOSE_TIMEOUT,
    UNREAD_CLOSE_TIMEOUT,
    TransportGuard,
    peer_address,
)
from gischat.server.handshake import real_client
from gischat.server.opening import WebSocketOpening
from gischat.server.reading import Pause, Phase

logger = logging.getLogger("gischat.transport")
# `websockets` reports each closed connection at INFO: its own logger, quiet by default.
wire_logger = logging.getLogger("gischat.transport.wire")
CLOSE_GOING_AWAY = 1012  # "service restart"


class GuardedWebSocketProtocol(WebSocketOpening):
    """One websocket connection, from the upgrade request to the closed socket."""

    __slots__ = (
        "address", "app", "batch", "drain", "out", "peer", "writing_paused",
    )  # fmt: skip

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        extensions = (
            [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
                )
            ]
            if config.ws_per_message_deflate
            else []
        )
        # Without extensions to negotiate gischat answers the handshake itself (`server.upgrade`):
        # the sans-I/O protocol starts open and only parses frames.
        state = State.CONNECTING if extensions else State.OPEN
        conn = ServerProtocol(
            extensions=extensions, state=state, max_size=config.ws_max_size, logger=wire_logger
        )
        super().__init__(config, conn, _loop or asyncio.get_event_loop())
        self.app = config.loaded_app
        self.server_state = server_state
        self.app_state = app_state
        self.writing_paused = False
        self.peer = ""  # the peer's address (a proxy's, behind one)
        self.address = ""  # the client's, behind a trusted proxy
        self.drain: asyncio.Future[None] | None = None
        self.batch: WriteBatch | None = None  # under a guard, frames are written once per loop turn
        self.out: list[bytes] | None = None  # frames collected this turn
        self.response: Any = None  # the 101 answer, until the app accepts; then a denial under way
        self.scope: dict[str, Any] = {}

    def adopt(self, guard: TransportGuard) -> None:
        """Take over the connection slot the HTTP gate held for this peer: limits now apply."""
        self.guard = guard
        self.batch = guard.batch(self.loop)
        if guard.read.read_rate:
            self.pace = TokenBucket(guard.read.read_rate, guard.read.read_burst, self.loop.time())
        if self.scope:  # the gate hands over once uvicorn passed us the upgrade request
            self._join_share(guard)

    def _join_share(self, guard: TransportGuard) -> None:
        """Count this socket's reads against its client address (the real one behind a proxy)."""
        self.address = real_client(self.peer, self.scope["headers"], guard.trusted)
        self.share = guard.shares.join(self.address, self.loop.time())

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self.peer = peer_address(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        opened = self.phase is not Phase.CONNECTING
        self.phase = Phase.CLOSED
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self._put({"type": "websocket.disconnect", "code": 1005 if opened else 1006})
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)
        self.server_state.connections.discard(self)
        self.frames, self.stash, self.inbox, self.out = [], b"", [], None
        guard, self.guard = self.guard, None
        if guard is not None:
            guard.forget(self)
            guard.release(self.peer)
            if self.share is not None:
                self._release(self.held)
                guard.shares.leave(self.address, self.share, self._budget_freed)
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        """A half-close from the peer: the parser learns of it with the next read (or never)."""

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.guard is not None:
            self._pause(Pause.PEER)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)
        self._resume(Pause.PEER)

    # The app's side: ASGI send.

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.http.response.body" and isinstance(self.response, tuple):
            self._deny_body(message)
        elif self.phase is Phase.CONNECTING:
            self._answer(message)
        elif kind == "websocket.send":
            if self.phase is not Phase.OPEN:
                raise ConnectionResetError("websocket closed")
            await self._writable()
            data, text = message.get("bytes"), message.get("text")
            try:
                if data is not None:
                    self.conn.send_binary(data)
                elif text is not None:
                    self.conn.send_text(text.encode())
            except InvalidState:
                raise ConnectionResetError("websocket closed") from None
            self._flush()
        elif kind == "websocket.close":
            if self.phase is Phase.OPEN:
                self._close(message.get("code", 1000), message.get("reason") or "")
        elif self.phase is Phase.OPEN:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an open websocket")

    # The FrameSink the app writes broadcast frames to.

    def offer(self, item: Outgoing) -> bool:
        if self.writing_paused or self.phase is not Phase.OPEN:
            return False
        if self.deflate:  # compressed per connection: the shared frame cannot be used
            self.conn.send_text(item.data)
            self._flush()
            return True
        self.queue(item.wire)
        return True

    def queue(self, data: bytes) -> None:
        """Write `data` with the rest of this loop turn's frames (`server.batch`): one call for all."""
        out = self.out
        if out is not None:
            out.append(data)
        elif self.batch is not None:
            self.out = [data]
            self.batch.add(self)
        else:
            self.transport.write(data)

    async def deliver(self, item: Outgoing) -> None:
        await self._writable()
        if self.phase is not Phase.OPEN:
            raise ConnectionResetError("websocket closed")
        self.flush_out()
        if self.deflate:
            self.conn.send_text(item.data)
            self._flush()
        else:
            self.transport.write(item.wire)

    def receive_raw_text(self, minimum: int) -> None:
        self.raw_from = minimum

    def flush_out(self) -> None:
        """Write the frames collected this loop turn (`server.batch`), in one call."""
        out, self.out = self.out, None
        if out and not self.transport.is_closing():
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)

    async def _writable(self) -> None:
        while self.writing_paused and self.phase is Phase.OPEN:
            if self.drain is None or self.drain.done():
                self.drain = self.loop.create_future()
            await self.drain

    def _flush(self) -> None:
        """Write what the sans-I/O protocol has to send, after the frames collected before it."""
        if self.out:
            self.flush_out()
        out = self.conn.data_to_send()
        if out:
            data = b"".join(out)
            if data and not self.transport.is_closing():
                self.transport.write(data)

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            result = await self.app(scope, self.receive, self.send)
        except ConnectionError:
            pass  # the peer left while the app was sending
        except Exception:
            logger.exception("exception in the ASGI application")
            self._error_answer()
        else:
            if self.phase is Phase.CONNECTING:
                logger.error("the ASGI application returned without answering the websocket handshake")
                self._error_answer()
            elif result is not None:
                logger.error("the ASGI application returned %r instead of None", result)
        if self.phase is Phase.OPEN:
            self._close(1000, "")  # the app is done with the socket without saying goodbye
        elif self.phase is not Phase.CLOSED and "close" not in self.timers:
            self._end(CLOSE_TIMEOUT)

    # Closing.

    def _close(self, code: int, reason: str) -> None:
        """The app closes: our close frame goes out, and the peer's reply is awaited a while."""
        with contextlib.suppress(InvalidState):
            self.conn.send_close(code, reason)
        self._flush()
        self.phase = Phase.CLOSING
        self._put({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._forget_reading()
        if self.writing_paused:
            # The peer does not read: our close frame waits behind what it has not read; it
            # gets a while to read it all, and nothing it sends meanwhile is parsed.
            self._end(UNREAD_CLOSE_TIMEOUT)
            return
        # The peer's reply is awaited CLOSE_TIMEOUT under a guard, 10 s (uvicorn's wait) without.
        self._later("close", CLOSE_TIMEOUT if self.guard is not None else 10.0, self._end, CLOSE_TIMEOUT)
        self.paused = 0
        self.transport.resume_reading()

    def fail(self, code: int, reason: str) -> None:
        """Refuse the peer: our close frame with `code` and `reason`, one log line, the end."""
        if self.phase is not Phase.OPEN:
            return
        self.conn.fail(code, reason)
        self._flush()
        self._closed_by_us(code, reason)

    def _closed_by_us(self, code: int, reason: str) -> None:
        self.phase = Phase.CLOSING
        self._put({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self.guard is not None:
            self.guard.refused(str(code), self.address or self.peer, reason)
        else:
            logger.debug("%s refused (%d): %s", self.peer, code, reason)
        self._forget_reading()
        self._end(CLOSE_TIMEOUT)

    def _peer_closed(self) -> None:
        """The peer's close frame: the parser queued our reply; tell the app, then end."""
        received = self.conn.close_rcvd
        if self.phase is Phase.OPEN:
            code, reason = (received.code, received.reason) if received is not None else (1005, "")
            self.phase = Phase.CLOSING
            self._put({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._flush()
        self._end(CLOSE_TIMEOUT)

    def _forget_reading(self) -> None:
        """Nothing more the peer sends will be delivered: let go of what it held."""
        self.frames, self.stash = [], b""
        if self.guard is not None:
            self.guard.forget(self)

    def _end(self, grace: float) -> None:
        """Close the transport: what is buffered (our close frame last) goes out first, unless
        the peer has not read it within `grace` seconds; then the connection is aborted."""
        transport = self.transport
        timer = self.timers.pop("close", None)
        if timer is not None:
            timer.cancel()
        if not transport.is_closing():
            transport.close()
        if transport.get_write_buffer_size() and "abort" not in self.timers:
            self._later("abort", grace, transport.abort)

    def shutdown(self) -> None:
        """The server stops (uvicorn calls this on each connection): close with 1012."""
        if self.phase is Phase.OPEN:
            self._close(CLOSE_GOING_AWAY, "")
            self._end(CLOSE_TIMEOUT)
        elif self.phase is Phase.CONNECTING:
            self._reject(500, "Internal Server Error")
        else:
            self._end(CLOSE_TIMEOUT)
