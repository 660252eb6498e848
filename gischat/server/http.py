"""An HTTP gate in front of uvicorn's httptools protocol: connection caps and request-head limits.

The gate is an `asyncio.Protocol` that *holds* uvicorn's `HttpToolsProtocol` (the class uvicorn
itself uses for `http="httptools"`) and talks to it only through the asyncio.Protocol methods every
protocol has: it overrides none of its callbacks and reads none of its attributes, so a uvicorn
upgrade cannot silently change what the gate relies on. To know where request heads begin and
end, the gate feeds the same bytes, just before, to a parser of its own: an
`httptools.HttpRequestParser` with only the three callbacks it needs (no URL or header
callbacks, so it copies and keeps nothing). Plain REST calls are parsed twice, which costs
microseconds; websocket traffic never passes through the gate: after an upgrade the transport
talks to the websocket protocol directly.

uvicorn's protocol is created when a connection's first request head is complete, and only if it
is not a websocket upgrade: a connection that opens with one is handed by the gate itself to the
websocket protocol uvicorn is configured with (`Config.ws_protocol_class`, built with the same
arguments uvicorn gives it), so a join costs no uvicorn request cycle, parse and re-serialised
head (what that cost: docs/benchmarks.md, joins). An upgrade on a kept-alive connection, after
other requests, goes through uvicorn as before.

What is limited (counted in `server.guard`; docs/limits.md): connections in all and per peer address
(503, 429), the size of each request head (431, and the inner parser never receives more head than
allowed) and the time to send it (408), kept-alive follow-up requests included. A refused
connection gets one JSON answer, one rate-limited log line, and a lingering close.
"""

from __future__ import annotations

import asyncio
import time
from enum import IntEnum
from typing import Any, cast

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gischat.server.addresses import peer_address
from gischat.server.guard import TransportGuard
from gischat.server.registry import GuardSpec, guard_for
from gischat.server.upgrade import http_answer, wants_websocket

# Refused connections kept open briefly so the answer arrives before the socket closes
# (closing with unread input makes the kernel reset the connection); beyond this many at
# once, refused connections are closed at once.
MAX_LINGERING = 64
LINGER_SECONDS = 1.0
# Seconds a client is asked to wait after a 503 or a 429.
RETRY_AFTER = 5


class HeadState(IntEnum):
    """`GuardedHttpProtocol._head_bytes` when no request head is being received (else the bytes
    counted towards it)."""

    DONE = -1  # the head is complete: a body, or nothing yet of the next request
    REFUSED = -2  # the connection was refused: nothing more is parsed


def http_refusal(status: int, detail: str) -> bytes:
    """A complete HTTP/1.1 response with a JSON `detail`, closing the connection.

    Written before any request reached the app, so it carries only what a refusal needs: its
    own `date` (no `server` header, as the runner configures uvicorn).
    """
    headers = [(b"content-type", b"application/json")]
    if status in (429, 503):
        headers.append((b"retry-after", b"%d" % RETRY_AFTER))
    return http_answer(status, headers, orjson.dumps({"detail": detail}))


def head_tracker(gate: GuardedHttpProtocol) -> httptools.HttpRequestParser:
    """A parser that only tells `gate` where request heads begin and end.

    It is as lenient as uvicorn's own (data after a `Connection: close` request is not an
    error there), so that both parsers agree on every byte.
    """
    parser = httptools.HttpRequestParser(gate)
    parser.set_dangerous_leniencies(lenient_data_after_close=True)  # httptools >= 0.6.3
    return parser


class GuardedHttpProtocol(asyncio.Protocol):
    """uvicorn's httptools protocol behind a gate: connection caps and request-head limits.

    Without a `guard_spec` (uvicorn's own callers pass none) everything is forwarded untouched.
    With one, the gate holds a connection slot from `connection_made` until the connection is
    lost or upgraded (the websocket protocol then adopts the slot).

    A request head that does not arrive within HEADER_TIMEOUT is answered according to what the
    gate can know without looking inside uvicorn:

    - On a connection's first request nothing can be under way: 408, then a lingering close.
    - On a kept-alive follow-up the previous response may still be under way, and the gate
      cannot see uvicorn's request cycle. Bytes still queued for the peer mean it is: the
      connection is closed without a word (a 408 there would corrupt the response). Otherwise
      the 408 is written and the connection closed at once, without lingering: a half-closed
      transport would make a late write of the application raise. Either way only a peer that
      stalled in the middle of a request head is concerned.
    - While reading is paused (uvicorn holds a pipelined request back, or waits for the peer to
      read), the peer cannot make progress: the deadline is extended instead.
    """

    __slots__ = (
        "_app_state", "_began_after", "_completed", "_config", "_early", "_guard", "_head_bytes",
        "_holding", "_inner", "_ip", "_loop", "_server_state", "_tracker", "transport",
    )  # fmt: skip

    transport: asyncio.Transport

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        guard_spec: GuardSpec | None = None,
    ) -> None:
        self._config, self._server_state, self._app_state, self._loop = config, server_state, app_state, _loop
        # The runner binds `guard_spec` (functools.partial); uvicorn's own callers pass none.
        self._guard: TransportGuard | None = None if guard_spec is None else guard_for(guard_spec)
        # uvicorn's protocol: at once without a guard, else once the first request head is read
        # and is not a websocket upgrade (the bytes of that head wait in `_early`).
        self._inner: HttpToolsProtocol | None = None
        self._early: list[bytes] = []
        self._tracker: httptools.HttpRequestParser | None = None
        self._ip = ""
        self._holding = False  # whether this connection holds a slot of the guard
        # Bytes received towards the request head in progress, or HeadState.DONE (a body is
        # being received), or HeadState.REFUSED (our answer is out: input is discarded).
        self._head_bytes = 0
        # Requests completed on this connection (a follow-up head has a response before it), and
        # how many had when the head in progress began.
        self._completed = 0
        self._began_after = 0

    # asyncio.Protocol: everything goes to uvicorn's protocol once the gate let it through.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport: uvicorn serves TCP
        guard = self._guard
        if guard is None:
            self._start_inner()
            return
        guard.attach(asyncio.get_running_loop())
        self._ip = peer_address(transport)
        refusal = guard.acquire(self._ip)
        if refusal is not None:
            self.refuse(*refusal)
            return
        self._holding = True
        self._tracker = head_tracker(self)
        guard.heads[self] = time.monotonic() + guard.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        guard = self._guard
        if guard is not None:
            guard.heads.pop(self, None)
            guard.lingering.pop(self, None)
            self._give_slot_back(guard)
        self._tracker = None  # the parser refers to us: let both go
        self._early = []
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self._head_bytes == HeadState.REFUSED or self._inner is None:
            return None  # our answer was read, or no request came: close our side too
        inner: asyncio.Protocol = self._inner  # its answer, as the asyncio interface types it
        return inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def data_received(self, data: bytes) -> None:
        guard = self._guard
        if guard is None:
            assert self._inner is not None
            self._inner.data_received(data)
            return
        if self._head_bytes == HeadState.REFUSED or self._tracker is None:
            return  # our answer is out (or the connection is closing): what still comes is dropped
        view = memoryview(data) if len(data) > guard.max_header_bytes else None
        start = 0
        while start < len(data):
            room = self._room(guard)
            if room <= 0:
                self.refuse(431, f"request head larger than {guard.max_header_bytes} bytes")
                return
            end = min(len(data), start + room)
            chunk = data if view is None else bytes(view[start:end])
            start = end
            if not self._forward(guard, chunk):
                return

    def _room(self, guard: TransportGuard) -> int:
        """How many bytes may be handed on at once.

        During a head: what is left of MAX_HEADER_BYTES. During a body: MAX_HEADER_BYTES too,
        since a pipelined request may begin inside the slice and its head is charged the
        whole slice (see `_forward`), so that no head ever reaches uvicorn larger than allowed.
        """
        if self._head_bytes == HeadState.DONE:
            return guard.max_header_bytes
        return guard.max_header_bytes - self._head_bytes

    def _forward(self, guard: TransportGuard, chunk: bytes) -> bool:
        """Track `chunk`, then hand it to uvicorn; whether the connection is still ours to read."""
        tracker = self._tracker
        assert tracker is not None
        completed, head_bytes = self._completed, self._head_bytes
        upgrade_at = -1
        try:
            tracker.feed_data(chunk)
        except httptools.HttpParserUpgrade as exc:
            upgrade_at = int(exc.args[0]) if exc.args else len(chunk)  # where the upgrade head ends
        except httptools.HttpParserError:
            self._untrackable(guard, chunk)
            return False
        self._count_head(chunk, completed, head_bytes)
        if self._inner is None:
            if not self._first_head(chunk, upgrade_at):
                return True  # the first head is not complete yet
            if self._inner is None:  # a websocket took the connection over
                self._hand_over(guard)
                return False
        else:
            self._inner.data_received(chunk)
        if self.transport.get_protocol() is not self:
            self._hand_over(guard)
            return False
        return not self.transport.is_closing()

    def _first_head(self, chunk: bytes, upgrade_at: int) -> bool:
        """Collect the first request's head; once it is complete, hand it on and say so.

        A websocket upgrade goes straight to the websocket protocol (`_upgrade`); anything else
        starts uvicorn's protocol, which gets every byte received so far.
        """
        if upgrade_at >= 0:
            self._early.append(chunk[:upgrade_at])
            head = b"".join(self._early)
            self._early = []
            if self._config.ws_protocol_class is not None and wants_websocket(head):
                self._upgrade(head)
                return True
            self._start_inner()
            assert self._inner is not None
            self._inner.data_received(head + chunk[upgrade_at:])
            return True
        self._early.append(chunk)
        if self._head_bytes != HeadState.DONE and not self._completed:
            return False
        early, self._early = b"".join(self._early), []
        self._start_inner()
        assert self._inner is not None
        self._inner.data_received(early)
        return True

    def _start_inner(self) -> None:
        self._inner = HttpToolsProtocol(self._config, self._server_state, self._app_state, self._loop)
        self._inner.connection_made(self.transport)

    def _upgrade(self, head: bytes) -> None:
        """Hand the connection to the websocket protocol, as uvicorn's upgrade does: built with
        the same arguments, given the transport and the request head. Bytes the client sent
        after the head are dropped, as uvicorn drops them (a client waits for the 101)."""
        ws_class: Any = self._config.ws_protocol_class
        protocol = ws_class(config=self._config, server_state=self._server_state, app_state=self._app_state)
        protocol.connection_made(self.transport)
        protocol.data_received(head)
        self.transport.set_protocol(protocol)

    def _count_head(self, chunk: bytes, completed: int, head_bytes: int) -> None:
        """Charge `chunk` to the request head in progress after it (if any).

        httptools does not say where in a chunk a head begins: when a request completed inside
        the chunk and the next one began after it, the new head is charged the whole chunk, an
        upper bound (only a pipelining client can notice, none of ours pipelines).
        """
        if self._head_bytes == HeadState.DONE:
            return  # a body follows: nothing to count
        if self._completed == completed:
            self._head_bytes = head_bytes + len(chunk)  # the same head, or the gap before one
        elif self._began_after == self._completed:
            self._head_bytes = len(chunk)
        else:
            self._head_bytes = 0  # a request completed, the next has not begun

    def _untrackable(self, guard: TransportGuard, chunk: bytes) -> None:
        """Our parser rejected the input: uvicorn's answers it (400), and the connection ends.

        Both parsers are httptools with the same leniency, so uvicorn rejects it as well and
        closes; if it ever did not, request heads could no longer be limited: we close then.
        """
        self._tracker = None
        guard.heads.pop(self, None)
        if self._inner is None:
            chunk, self._early = b"".join([*self._early, chunk]), []
            self._start_inner()
            assert self._inner is not None
        self._inner.data_received(chunk)
        if self.transport.get_protocol() is self and not self.transport.is_closing():
            self.transport.close()

    def _hand_over(self, guard: TransportGuard) -> None:
        """uvicorn upgraded the connection: its new protocol takes our slot over.

        A protocol with `adopt(guard)` (gischat's websocket protocol) gives the slot back when its
        connection is lost; any other would never give it back, so it is released now. Our own
        `connection_lost` will never be called.
        """
        guard.heads.pop(self, None)
        self._tracker = None
        if not self._holding:
            return
        self._holding = False
        adopt = getattr(self.transport.get_protocol(), "adopt", None)
        if callable(adopt):
            adopt(guard)
        else:
            guard.release(self._ip)

    def _give_slot_back(self, guard: TransportGuard) -> None:
        if self._holding:
            self._holding = False
            guard.release(self._ip)

    # httptools callbacks of our head tracker (its public callback interface).

    def on_message_begin(self) -> None:
        guard = self._guard
        assert guard is not None
        self._began_after = self._completed
        if self not in guard.heads:
            # The next request on a kept-alive connection: its head has HEADER_TIMEOUT too.
            guard.heads[self] = time.monotonic() + guard.header_timeout

    def on_headers_complete(self) -> None:
        guard = self._guard
        assert guard is not None
        self._head_bytes = HeadState.DONE
        guard.heads.pop(self, None)

    def on_message_complete(self) -> None:
        self._completed += 1
        self._head_bytes = 0

    # Deadlines and refusals.

    def head_expired(self, now: float) -> None:
        """Called by the sweep when the request head did not arrive within HEADER_TIMEOUT."""
        guard = self._guard
        if guard is None or self.transport.is_closing() or self._head_bytes == HeadState.REFUSED:
            return
        if not self.transport.is_reading():  # reading is paused: not the peer's fault
            guard.heads[self] = now + guard.header_timeout
            return
        detail = f"request head not received within {guard.header_timeout:g} s"
        if self._completed and self.transport.get_write_buffer_size():
            # A response is on its way out: no room for another one.
            self._head_bytes = HeadState.REFUSED
            self._tracker = None
            guard.refused("408", self._ip, f"{detail} (closed without an answer: a response was under way)")
            self.transport.close()
            return
        self.refuse(408, detail)

    def refuse(self, status: int, detail: str) -> None:
        """Answer `status` with a JSON detail and close, handing uvicorn nothing more.

        On a connection that served no request yet, the close lingers: half-close, then read and
        discard until the peer closes or LINGER_SECONDS pass, since closing with unread input
        would reset the connection under our answer. After a request, the application may still
        be writing its response, which a half-closed transport would refuse: close at once.
        """
        guard = self._guard
        assert guard is not None
        self._head_bytes = HeadState.REFUSED
        self._tracker = None
        guard.heads.pop(self, None)
        guard.refused(str(status), self._ip, detail)
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(http_refusal(status, detail))
        if not self._completed and len(guard.lingering) < MAX_LINGERING and transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()
            guard.lingering[self] = time.monotonic() + LINGER_SECONDS
        else:
            transport.close()
