"""The opening half of gischat's websocket protocol: the handshake, and the app's answer to it.

The upgrade request is read by gischat itself (`server.upgrade`), or by `websockets` when
permessage-deflate is enabled and an extension must be negotiated. The app then gets its scope
(`server.handshake`) and answers: accept (the 101 goes out), close (403), or an HTTP denial
response of its own. Reading stays paused (`Pause.HANDSHAKE`) until it has answered.
"""

from __future__ import annotations

from typing import Any

from uvicorn.server import ServerState
from websockets.http11 import Request

from gischat.server.guard import TransportGuard, address_of
from gischat.server.handshake import accepted_headers, log_access, websocket_scope
from gischat.server.reading import Pause, Phase, WebSocketReading
from gischat.server.upgrade import (
    HandshakeRefused,
    Upgrade,
    from_request,
    http_answer,
    read_upgrade,
    refusal,
    switching_protocols,
)


class WebSocketOpening(WebSocketReading):
    """The handshake of a websocket; `GuardedWebSocketProtocol` is the rest."""

    __slots__ = ("app_state", "response", "scope", "server_state")

    server_state: ServerState
    app_state: dict[str, Any]
    # The 101 answer (the accept value, or `websockets`' response) until the app accepts; then
    # a denial response under way (status, headers, body parts).
    response: Any
    scope: dict[str, Any]

    # What the protocol provides.

    async def _run(self, scope: dict[str, Any]) -> None:
        raise NotImplementedError

    def _join_share(self, guard: TransportGuard) -> None:
        raise NotImplementedError

    def queue(self, data: bytes) -> None:
        raise NotImplementedError

    def _handshake(self, data: bytes) -> None:
        """The upgrade request (uvicorn hands it over as it parsed it): start the app, or answer.

        gischat reads it itself (`server.upgrade`); with permessage-deflate enabled `websockets`
        does, since it negotiates the extension.
        """
        if self.deflate:
            self._negotiate(data)
            return
        try:
            upgrade = read_upgrade(data)
        except HandshakeRefused as exc:
            self.transport.write(refusal(exc))
            self._finish_refused_handshake()
            return
        self.response = upgrade.accept
        self._start(upgrade)

    def _negotiate(self, data: bytes) -> None:
        """The handshake by `websockets`, extensions included."""
        self.conn.receive_data(data)
        request = next((event for event in self.conn.events_received() if isinstance(event, Request)), None)
        if request is None:
            if self.conn.handshake_exc is not None:
                self.transport.write(refusal(HandshakeRefused(400, "invalid HTTP request")))
                self._finish_refused_handshake()
            return
        response = self.conn.accept(request)
        if response.status_code != 101:
            self.conn.send_response(response)
            self._flush()
            self.phase = Phase.CLOSING
            self.transport.close()
            return
        self.response = response
        self._start(from_request(request, response.headers["Sec-WebSocket-Accept"]))

    def _start(self, upgrade: Upgrade) -> None:
        """Start the app on this handshake; reading waits for its answer."""
        transport = self.transport
        self.scope = scope = websocket_scope(
            upgrade,
            scheme="wss" if transport.get_extra_info("sslcontext") else "ws",
            server=address_of(transport.get_extra_info("sockname")),
            client=address_of(transport.get_extra_info("peername")),
            root_path=self.config.root_path,
            asgi_version=self.config.asgi_version,
            state=self.app_state,
            sink=self,
        )
        if self.guard is not None:
            self._join_share(self.guard)
        self._pause(Pause.HANDSHAKE)
        self._put({"type": "websocket.connect"})
        task = self.loop.create_task(self._run(scope))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    def _answer(self, message: dict[str, Any]) -> None:
        """The app's answer to the handshake: accept, close (403), or an HTTP response."""
        kind = message["type"]
        if kind == "websocket.accept":
            # No access line: the room logs the join, with the same address and more (one line
            # per join, not two: at 10,000 joins a second line was 5 % of the server's time).
            self._switch(accepted_headers(self.server_state.default_headers, message))
        elif kind == "websocket.close":
            log_access(self.scope, "403")
            self._reject(403, "")
        elif kind == "websocket.http.response.start" and not isinstance(self.response, tuple):
            log_access(self.scope, str(message["status"]))
            self.response = (message["status"], list(message.get("headers", [])), [])
        else:
            raise RuntimeError(
                f"expected websocket.accept, websocket.close or a denial response, not {kind!r}"
            )

    def _switch(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the 101 answer: the connection is open."""
        response, self.response = self.response, None
        if self.transport.is_closing():
            return
        if isinstance(response, bytes):
            # With the count and history the app sends the newcomer this turn, in one write.
            self.queue(switching_protocols(response, headers))
        else:  # negotiated by `websockets`: its answer, with the server's and the app's headers
            if any(name.lower() == b"date" for name, _ in headers):
                del response.headers["Date"]
            for name, value in headers:
                response.headers[name.decode("latin-1")] = value.decode("latin-1")
            self.conn.send_response(response)
            self._flush()
        self.phase = Phase.OPEN
        self._resume(Pause.HANDSHAKE)
        self._keepalive()

    def _deny_body(self, message: dict[str, Any]) -> None:
        status, headers, body = self.response
        body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        self.response = None
        self.transport.write(http_answer(status, headers, b"".join(body)))
        self._finish_refused_handshake()

    def _reject(self, status: int, text: str) -> None:
        self.transport.write(http_answer(status, [], text.encode()))
        self._finish_refused_handshake()

    def _finish_refused_handshake(self) -> None:
        self._put({"type": "websocket.disconnect", "code": 1006})
        self._flush()
        self.phase = Phase.CLOSING
        self.transport.close()

    def _error_answer(self) -> None:
        if self.phase is Phase.CONNECTING and not isinstance(self.response, tuple):
            self._reject(500, "Internal Server Error")
