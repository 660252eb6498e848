"""gischat's websocket protocol: ASGI over the public sans-I/O API of `websockets`, guarded.

Plugged into uvicorn through its `ws=` option (uvicorn builds it with `config`, `server_state`
and `app_state` and hands it the upgraded connection). It was written from scratch in the
shape of uvicorn's `websockets-sansio` protocol (BSD-3; same handshake and ASGI events, same
access lines): one class whose `handle_*` methods take what the transport, the parser and the
app bring. It keeps the connection's phase and decides its moves; its parts do the rest, each
in a module of its own: the handshake (`Opening`), the read path with its frame-head judgments
(`Reader`, `Meter`), the read budgets (`ReadBudget`), why reading is paused (`ReadFlow`), the
app's unread messages (`Inbox`), the writes (`Writer`), keepalive pings and timers.

Broadcasts skip ASGI: the protocol is the scope's `FrameSink`, and a ready frame (built once per
dialect) is written as is when the peer keeps up. Every refusal, invalid UTF-8 included, ends
with our close frame sent (the transport closes once it is out, or aborts after CLOSE_TIMEOUT)
and one rate-limited log line, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from enum import IntEnum
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.server import ServerState

from gischat.limits import TokenBucket
from gischat.protocol.frames import Outgoing
from gischat.server.addresses import peer_address, real_client
from gischat.server.budget import ReadBudget
from gischat.server.closing import CLOSE_TIMEOUT, Closing
from gischat.server.flow import Pause, ReadFlow
from gischat.server.guard import TransportGuard
from gischat.server.handshake import accepted_headers, log_access, scope_for
from gischat.server.inbox import Inbox
from gischat.server.keepalive import Keepalive
from gischat.server.opening import Opening, sansio_protocol
from gischat.server.reading import PingAllowance, Reader, Stops
from gischat.server.timers import Timers
from gischat.server.upgrade import Upgrade, http_answer
from gischat.server.writing import Writer

logger = logging.getLogger("gischat.transport")

CLOSE_GOING_AWAY = 1012  # "service restart"


class Phase(IntEnum):
    """Where the connection is: handshake, open, closing (a close frame went out), closed."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class GuardedWebSocketProtocol(asyncio.Protocol):
    """One websocket connection, from the upgrade request to the closed socket."""

    __slots__ = (
        "address", "app", "app_state", "budget", "closing", "config", "conn", "flow", "guard",
        "inbox", "keepalive", "loop", "opening", "peer", "phase", "reader", "scope", "server_state",
        "timers", "transport", "writer",
    )  # fmt: skip

    # The parts that act on the transport, made with it in `connection_made`.
    flow: ReadFlow
    writer: Writer
    reader: Reader
    keepalive: Keepalive
    opening: Opening
    closing: Closing

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config, self.app = config, config.loaded_app
        self.server_state, self.app_state = server_state, app_state
        self.loop = loop = _loop or asyncio.get_event_loop()
        self.conn = sansio_protocol(config)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.phase = Phase.CONNECTING
        self.guard: TransportGuard | None = None
        self.peer = ""  # the peer's address (a proxy's, behind one)
        self.address = ""  # the client's, behind a trusted proxy
        self.scope: dict[str, Any] = {}
        self.budget = ReadBudget(loop, self._budget_freed, reserving=not config.ws_per_message_deflate)
        self.inbox = Inbox(loop)
        self.timers = Timers(loop)

    def adopt(self, guard: TransportGuard) -> None:
        """Take over the connection slot the HTTP gate held for this peer: limits now apply."""
        self.guard = guard
        self.writer.batch = guard.batch(self.loop)
        self.flow.on_resume = self._reading_resumed
        if guard.read.read_rate:
            self.budget.pace = TokenBucket(guard.read.read_rate, guard.read.read_burst, self.loop.time())
        if guard.ping_interval:
            self.reader.ping = PingAllowance(guard.ping_rate, guard.ping_interval, guard.ping_tolerance)
        if self.scope:  # the gate hands over once uvicorn passed us the upgrade request
            self._join_share(guard)

    def _reading_resumed(self) -> None:
        if self.guard is not None:
            self.guard.touch(self)  # the peer can make progress again: a whole FRAME_TIMEOUT from now

    def _join_share(self, guard: TransportGuard) -> None:
        """Count this socket's reads against its client address (the real one behind a proxy)."""
        self.address = real_client(self.peer, self.scope["headers"], guard.trusted)
        self.budget.join(guard.shares, self.address, self.loop.time())

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        conn, config, timers = self.conn, self.config, self.timers
        deflate = config.ws_per_message_deflate
        self.flow = ReadFlow(transport)
        self.writer = Writer(transport, conn, timers, deflate=deflate)
        self.reader = Reader(conn, self.budget, self.flow, self.inbox, timers, max_size=config.ws_max_size)
        self.keepalive = Keepalive(conn, self.writer, timers, config, refuse=self.fail)
        self.opening = Opening(transport, conn, self.writer, self.inbox, deflate=deflate)
        self.closing = Closing(conn, self.writer, self.reader, self.inbox, self.flow, self.keepalive, timers)
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self.peer = peer_address(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        opened = self.phase is not Phase.CONNECTING
        self.phase = Phase.CLOSED
        self.flow.stop()
        self.timers.cancel_all()
        # What the app has not read yet is dropped, the disconnect is not: cleared after it was
        # queued (the app busy with a message, a photo in a worker, say), the app waited forever
        # for a next event, and the socket stayed in its room, its nickname and its address's
        # count held for good (found by bench/fuzz.py).
        self.inbox.clear()
        self.inbox.put({"type": "websocket.disconnect", "code": 1005 if opened else 1006})
        self.writer.stop()
        self.server_state.connections.discard(self)
        self.reader.end()
        guard, self.guard = self.guard, None
        if guard is not None:
            guard.forget(self)
            guard.release(self.peer)
            self.budget.leave(guard.shares, self.address)
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        """A half-close from the peer: the parser learns of it with the next read (or never)."""

    def pause_writing(self) -> None:
        self.writer.pause()
        if self.guard is not None:
            self.flow.pause(Pause.PEER)

    def resume_writing(self) -> None:
        self.writer.resume()
        self.flow.resume(Pause.PEER)

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is Phase.OPEN:
            self.handle_frames(data)
        elif phase is Phase.CONNECTING:
            self.handle_upgrade(data)
        elif phase is Phase.CLOSING:
            self.closing.read(data)

    # The opening handshake.

    def handle_upgrade(self, data: bytes) -> None:
        """The upgrade request (uvicorn hands it over as it parsed it): start the app, or refuse."""
        upgrade = self.opening.read(data)
        if isinstance(upgrade, Upgrade):
            self._start(upgrade)
        elif upgrade is not None:
            self._refuse_handshake(upgrade)

    def _start(self, upgrade: Upgrade) -> None:
        """Start the app on this handshake; reading waits for its answer."""
        self.scope = scope = scope_for(upgrade, self.transport, self.config, self.app_state, sink=self)
        if self.guard is not None:
            self._join_share(self.guard)
        self.flow.pause(Pause.HANDSHAKE)
        self.inbox.put({"type": "websocket.connect"})
        task = self.loop.create_task(self._run(scope))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    def handle_answer(self, kind: str, message: dict[str, Any]) -> None:
        """The app's answer to the handshake: accept, close (403), or an HTTP response."""
        if kind == "websocket.accept":
            # No access line: the room logs the join, with the same address and more (one line
            # per join, not two).
            self._accept(accepted_headers(self.server_state.default_headers, message))
        elif kind == "websocket.close":
            log_access(self.scope, "403")
            self._reject(403, "")
        elif kind == "websocket.http.response.start" and not self.opening.denying:
            log_access(self.scope, str(message["status"]))
            self.opening.deny(message)
        else:
            raise RuntimeError(
                f"expected websocket.accept, websocket.close or a denial response, not {kind!r}"
            )

    def _accept(self, headers: list[tuple[bytes, bytes]]) -> None:
        """The 101 answer goes out: the connection is open."""
        if self.opening.accept(headers):
            self.phase = Phase.OPEN
            self.flow.resume(Pause.HANDSHAKE)
            self.keepalive.start()

    def _reject(self, status: int, text: str) -> None:
        self._refuse_handshake(http_answer(status, [], text.encode()))

    def _refuse_handshake(self, answer: bytes) -> None:
        self.opening.refuse(answer)
        self.phase = Phase.CLOSING

    # Reading an open connection (`Reader`).

    def handle_frames(self, data: bytes) -> None:
        if self.reader.stash:
            data = self.reader.take_stash() + data
        self._take(data)
        if self.guard is not None and self.phase is Phase.OPEN:
            self.guard.update(self, self.reader.unfinished())  # may refuse the peer
            self.reader.throttle(len(data))

    def _take(self, data: bytes) -> None:
        """Read `data` as far as it may go, then act on what only the protocol may."""
        stops = self.reader.read(data, self.phase is Phase.OPEN)
        if stops is not None:
            self.handle_stops(stops)
        self.writer.flush()
        sent = self.conn.close_sent
        if sent is not None and self.phase is Phase.OPEN:
            # The parser failed the connection (a protocol error): its close frame is out.
            self._closed_by_us(sent.code, sent.reason or "protocol error")
        if stops is not None and stops.refused is not None and self.phase is Phase.OPEN:
            self.fail(stops.refused.code, stops.refused.reason)

    def handle_stops(self, stops: Stops) -> None:
        if stops.invalid is not None:
            self.fail(stops.invalid.code, stops.invalid.reason)
        for payload in stops.pongs:
            self.keepalive.pong(payload)
        if stops.peer_closed:
            self.handle_peer_close()

    def _budget_freed(self) -> None:
        """Some bytes of our address's budget were given back: try the frame that waited."""
        if self.phase is not Phase.OPEN or not self.reader.stash:
            return
        self._take(self.reader.take_stash())
        if not self.reader.stash:
            self.flow.resume(Pause.BUDGET)

    # The app: ASGI receive and send, and the FrameSink it writes broadcast frames to.

    async def receive(self) -> dict[str, Any]:
        """The next message. A large one (it reserved budget) stays counted, and reading stays
        paused, until the app asks for the next: the app works on it meanwhile (a worker parses
        it, say), so a peer has at most one large message in the server at a time; the next one
        waits in the kernel's buffers (TCP backpressure), not in ours."""
        self.budget.finish_work()
        inbox = self.inbox
        if not inbox.events and self.reader.stash and not self.flow.paused_for(Pause.BUDGET):
            self._take(self.reader.take_stash())  # the messages held back while the app had plenty
        if inbox.events:
            received = inbox.pop()
        else:
            self.flow.resume(Pause.APP)  # nothing unread: the peer may send the next one
            received = await inbox.wait()
        if received.held:
            self.budget.work_on(received.held)
            self.flow.pause(Pause.APP)
        elif not inbox.events:
            self.flow.resume(Pause.APP)
        return received.event

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.http.response.body" and self.opening.denying:
            answer = self.opening.denial_body(message)  # the whole answer, once the body is complete
            if answer is not None:
                self._refuse_handshake(answer)
        elif self.phase is Phase.CONNECTING:
            self.handle_answer(kind, message)
        elif kind == "websocket.send":
            if self.phase is not Phase.OPEN:
                raise ConnectionResetError("websocket closed")
            await self._writable()
            self.writer.send(message.get("bytes"), message.get("text"))
        elif kind == "websocket.close":
            if self.phase is Phase.OPEN:
                self._close(message.get("code", 1000), message.get("reason") or "")
        elif self.phase is Phase.OPEN:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an open websocket")

    def offer(self, item: Outgoing) -> bool:
        return self.phase is Phase.OPEN and self.writer.offer(item)

    async def deliver(self, item: Outgoing) -> None:
        await self._writable()
        if self.phase is not Phase.OPEN:
            raise ConnectionResetError("websocket closed")
        self.writer.deliver(item)

    def receive_raw_text(self, minimum: int) -> None:
        self.reader.raw_from = minimum

    async def _writable(self) -> None:
        writer = self.writer
        while writer.paused and self.phase is Phase.OPEN:
            await writer.drained()

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
        elif self.phase is not Phase.CLOSED and not self.closing.awaiting_reply:
            self.closing.end(CLOSE_TIMEOUT)

    def _error_answer(self) -> None:
        if self.phase is Phase.CONNECTING and not self.opening.denying:
            self._reject(500, "Internal Server Error")

    # Closing (`Closing`).

    def _close(self, code: int, reason: str) -> None:
        """The app closes: our close frame goes out, and the peer's reply is awaited a while."""
        self.phase = Phase.CLOSING
        # The reply is awaited CLOSE_TIMEOUT under a guard, 10 s (uvicorn's wait) without.
        self.closing.close(code, reason, wait=CLOSE_TIMEOUT if self.guard is not None else 10.0)
        if self.guard is not None:
            self.guard.forget(self)

    def fail(self, code: int, reason: str) -> None:
        """Refuse the peer: our close frame with `code` and `reason`, one log line, the end."""
        if self.phase is not Phase.OPEN:
            return
        self.conn.fail(code, reason)
        self.writer.flush()
        self._closed_by_us(code, reason)

    def _closed_by_us(self, code: int, reason: str) -> None:
        self.phase = Phase.CLOSING
        if self.guard is not None:
            self.guard.refused(str(code), self.address or self.peer, reason)
            self.guard.forget(self)
        else:
            logger.debug("%s refused (%d): %s", self.peer, code, reason)
        self.closing.refused(code, reason)

    def handle_peer_close(self) -> None:
        """The peer's close frame: tell the app, reply, end."""
        if self.phase is Phase.OPEN:
            self.phase = Phase.CLOSING
            self.closing.peer_closed()
        self.closing.reply()

    def shutdown(self) -> None:
        """The server stops (uvicorn calls this on each connection): close with 1012."""
        if self.phase is Phase.OPEN:
            self._close(CLOSE_GOING_AWAY, "")
            self.closing.end(CLOSE_TIMEOUT)
        elif self.phase is Phase.CONNECTING:
            self._reject(500, "Internal Server Error")
        else:
            self.closing.end(CLOSE_TIMEOUT)
