"""The opening handshake of a websocket: the upgrade request read, the app's answer written.

The upgrade request is read by gischat itself (`server.upgrade`), or by `websockets` when
permessage-deflate is enabled and an extension must be negotiated. The app then gets its scope
(`server.handshake`) and answers: accept (the 101 goes out), close (403), or an HTTP denial
response of its own, which the opening writes. The protocol (`server.websocket`) starts the app,
and keeps reading paused until it has answered (`Pause.HANDSHAKE`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from uvicorn.config import Config
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from gischat.server.inbox import Inbox
from gischat.server.inflation import BoundedInflationFactory
from gischat.server.upgrade import (
    PIPELINED_REASON,
    HandshakeRefused,
    Upgrade,
    from_request,
    http_answer,
    read_upgrade,
    refusal,
    switching_protocols,
)
from gischat.server.writing import Writer

# `websockets` reports each closed connection at INFO: its own logger, quiet by default.
wire_logger = logging.getLogger("gischat.transport.wire")


def sansio_protocol(config: Config) -> ServerProtocol:
    """The connection's parser and framer, from `websockets`. Without extensions to negotiate
    gischat answers the handshake itself: the sans-I/O protocol starts open, only parsing frames."""
    extensions = []
    if config.ws_per_message_deflate:
        deflate = ServerPerMessageDeflateFactory(
            server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
        )
        extensions.append(BoundedInflationFactory(deflate))  # no deflate bomb on the event loop
    state = State.CONNECTING if extensions else State.OPEN
    return ServerProtocol(extensions=extensions, state=state, max_size=config.ws_max_size, logger=wire_logger)


@dataclass(slots=True)
class Denial:
    """The app's own HTTP answer to the handshake, while its body arrives."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: list[bytes] = field(default_factory=list)


class Opening:
    """One websocket's handshake, from the upgrade request to the app's answer."""

    __slots__ = ("answer", "conn", "deflate", "inbox", "transport", "writer")

    def __init__(
        self,
        transport: asyncio.Transport,
        conn: ServerProtocol,
        writer: Writer,
        inbox: Inbox,
        *,
        deflate: bool,
    ) -> None:
        self.transport, self.writer, self.inbox = transport, writer, inbox
        self.conn = conn  # the connection's sans-I/O protocol: it negotiates extensions
        self.deflate = deflate  # permessage-deflate is enabled: `websockets` reads the request
        # Until the app answers: the accept value of the 101 (gischat read the request), or
        # `websockets`' response (it negotiated). Then a `Denial` under way, or None.
        self.answer: bytes | Response | Denial | None = None

    def read(self, data: bytes) -> Upgrade | bytes | None:
        """The upgrade request (uvicorn hands it over as it parsed it): the `Upgrade` to start the
        app on, the bytes of a refusal to write before closing, or None: more is needed."""
        if self.deflate:
            return self._negotiate(data)
        try:
            upgrade = read_upgrade(data)
        except HandshakeRefused as exc:
            return refusal(exc)
        self.answer = upgrade.accept
        return upgrade

    def _negotiate(self, data: bytes) -> Upgrade | bytes | None:
        """The request read by `websockets`, extensions negotiated."""
        conn = self.conn
        conn.receive_data(data)
        request = next((event for event in conn.events_received() if isinstance(event, Request)), None)
        if request is None:
            if conn.handshake_exc is not None:
                return refusal(HandshakeRefused(400, "invalid HTTP request"))
            return None
        if conn.eof_sent:
            # The head held more than this request (the upgrade, sent after it without waiting):
            # `websockets` read the rest as frames and failed the connection, and can no longer
            # answer (`send_response` asserted: a traceback per such request, found by bench/fuzz.py).
            return refusal(HandshakeRefused(400, PIPELINED_REASON))
        response = conn.accept(request)
        if response.status_code != 101:
            conn.send_response(response)
            return b"".join(conn.data_to_send())
        self.answer = response
        return from_request(request, response.headers["Sec-WebSocket-Accept"])

    def accept(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Send the 101 answer, with the server's and the app's `headers` after ours; whether it
        went out (not when the peer is already gone)."""
        answer, self.answer = self.answer, None
        if self.transport.is_closing():
            return False
        if isinstance(answer, bytes):
            # Queued: in one write with the count and history the newcomer gets this loop turn.
            self.writer.queue(switching_protocols(answer, headers))
            return True
        assert isinstance(answer, Response)  # negotiated by `websockets`, which sends it
        if any(name.lower() == b"date" for name, _ in headers):
            del answer.headers["Date"]
        for name, value in headers:
            answer.headers[name.decode("latin-1")] = value.decode("latin-1")
        self.conn.send_response(answer)
        self.writer.flush()
        return True

    def refuse(self, answer: bytes) -> None:
        """Write `answer` instead of a 101, tell the app, and close."""
        self.transport.write(answer)
        self.inbox.put({"type": "websocket.disconnect", "code": 1006})
        self.writer.flush()
        self.transport.close()

    @property
    def denying(self) -> bool:
        """Whether the app is answering with an HTTP response of its own."""
        return isinstance(self.answer, Denial)

    def deny(self, message: dict[str, Any]) -> None:
        """The app's `websocket.http.response.start`: its body follows."""
        self.answer = Denial(message["status"], list(message.get("headers", [])))

    def denial_body(self, message: dict[str, Any]) -> bytes | None:
        """A part of the denial's body: the whole answer once the last part arrived, else None."""
        denial = self.answer
        assert isinstance(denial, Denial)
        denial.body.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        self.answer = None
        return http_answer(denial.status, denial.headers, b"".join(denial.body))
