"""uvicorn's httptools protocol with connection caps and request-head limits (see `server.guard`)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gischat.server.guard import (
    LINGER_SECONDS,
    MAX_LINGERING,
    GuardSpec,
    HeadState,
    TransportGuard,
    _peer,
    guard_for,
    http_refusal,
)
from gischat.server.websocket import GuardedWebSocketProtocol

logger = logging.getLogger("gischat.transport")


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with connection caps and request-head limits."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        guard_spec: GuardSpec | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The runner binds `guard_spec` (functools.partial); uvicorn's own callers pass none.
        self._guard: TransportGuard | None = None
        if guard_spec is not None:
            self._guard = guard_for(guard_spec)
            self._guard.attach(self.loop)
        self._slot: str | None = None  # the peer address whose connection slot we hold
        # Bytes received for the request head in progress, or HeadState.DONE, or HeadState.REFUSED.
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self._guard
        if guard is None:
            return
        ip = _peer(self.client)
        refusal = guard.acquire(ip)
        if refusal is not None:
            self.refuse(*refusal)
            return
        self._slot = ip
        guard.heads[self] = time.monotonic() + guard.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        guard = self._guard
        if guard is not None:
            guard.heads.pop(self, None)
            guard.lingering.pop(self, None)
            if self._slot is not None:
                guard.release(self._slot)
                self._slot = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        guard = self._guard
        if guard is None:
            super().data_received(data)
            return
        while data:
            if self._head_bytes == HeadState.REFUSED:
                return  # our answer is out; what the peer still sends is dropped
            if self._head_bytes == HeadState.DONE:  # a body, or the next request of a pipeline
                super().data_received(data)
                return
            room = guard.max_header_bytes - self._head_bytes
            if room <= 0:
                self.refuse(431, f"request head larger than {guard.max_header_bytes} bytes")
                return
            # Never hand the parser more head than allowed: a huge header costs nothing.
            chunk, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            self._head_bytes += len(chunk)
            super().data_received(chunk)
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # answered and closed, or upgraded to a websocket

    def on_message_begin(self) -> None:
        super().on_message_begin()
        guard = self._guard
        if guard is not None and self._head_bytes != HeadState.REFUSED and self not in guard.heads:
            # The next request on a kept-alive connection: its head has HEADER_TIMEOUT too.
            guard.heads[self] = time.monotonic() + guard.header_timeout

    def on_headers_complete(self) -> None:
        guard = self._guard
        if guard is not None:
            self._head_bytes = HeadState.DONE
            guard.heads.pop(self, None)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._guard is not None and self._head_bytes == HeadState.DONE:
            self._head_bytes = 0

    def handle_websocket_upgrade(self) -> None:
        guard, slot = self._guard, self._slot
        super().handle_websocket_upgrade()
        if guard is None or slot is None:
            return
        guard.heads.pop(self, None)
        protocol = self.transport.get_protocol()
        if protocol is self:
            return
        # The websocket protocol now owns the connection and its slot: our connection_lost
        # will never be called.
        self._slot = None
        if isinstance(protocol, GuardedWebSocketProtocol):
            protocol.adopt(guard)
        else:
            guard.release(slot)  # a foreign class would never give it back

    def head_expired(self, now: float) -> None:
        """Called by the sweep when the request head did not arrive within HEADER_TIMEOUT."""
        guard = self._guard
        if guard is None or self.transport.is_closing() or self._head_bytes == HeadState.REFUSED:
            return
        if not self.transport.is_reading():  # we paused reading (a pipeline): not the peer's fault
            guard.heads[self] = now + guard.header_timeout
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: no room for another one
            return
        self.refuse(408, f"request head not received within {guard.header_timeout:g} s")

    def refuse(self, status: int, detail: str) -> None:
        """Answer `status` with a JSON detail and close, parsing nothing more."""
        guard = self._guard
        assert guard is not None
        self._head_bytes = HeadState.REFUSED
        guard.heads.pop(self, None)
        guard.refused(str(status), _peer(self.client), detail)
        if self.transport.is_closing():
            return
        self.transport.write(http_refusal(status, detail, self.server_state.default_headers))
        if len(guard.lingering) < MAX_LINGERING and self.transport.can_write_eof():
            # Half-close and keep reading (discarding) until the peer closes or a short time
            # passes: closing with unread input would reset the connection under our answer.
            self.transport.write_eof()
            self.transport.resume_reading()
            guard.lingering[self] = time.monotonic() + LINGER_SECONDS
        else:
            self.transport.close()
