"""The opening handshake as ASGI sees it: the scope of a websocket, its real client, its answers."""

from __future__ import annotations

import email.utils
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gischat.networks import Networks
from gischat.protocol.frames import SINK_EXTENSION

# The ASGI spec version of the websocket scopes we build (2.4: denial responses, `reason`).
SPEC_VERSION = "2.4"

# Shared with uvicorn's own access lines, so operators see one format whatever serves the socket.
access_logger = logging.getLogger("uvicorn.error")


def real_client(peer: str, headers: Headers, trusted: Networks) -> str:
    """The client's address: the peer's, or behind trusted proxies the nearest untrusted
    address of X-Forwarded-For (the one uvicorn's proxy-headers middleware shows the app)."""
    if not peer or peer not in trusted:
        return peer
    forwarded = ",".join(headers.get_all("X-Forwarded-For"))
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return hops[0] if hops else peer


def header_items(scope_headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """A scope's headers back as the text pairs `websockets.datastructures.Headers` takes."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope_headers]


def websocket_scope(
    request: Request,
    *,
    scheme: str,
    server: tuple[str, int] | None,
    client: tuple[str, int] | None,
    root_path: str,
    asgi_version: str,
    state: dict[str, Any],
    sink: object,
) -> dict[str, Any]:
    """The ASGI scope of a websocket handshake, with gischat's frame sink among its extensions."""
    headers = [(key.encode("ascii"), value.encode("latin-1")) for key, value in request.headers.raw_items()]
    raw_path, _, query = request.path.partition("?")
    subprotocols = [
        token.strip()
        for header in request.headers.get_all("Sec-WebSocket-Protocol")
        for token in header.split(",")
    ]
    return {
        "type": "websocket",
        "asgi": {"version": asgi_version, "spec_version": SPEC_VERSION},
        "http_version": "1.1",
        "scheme": scheme,
        "server": server,
        "client": client,
        "root_path": root_path,
        "path": root_path + unquote(raw_path),
        "raw_path": root_path.encode("ascii") + raw_path.encode("ascii"),
        "query_string": query.encode("ascii"),
        "headers": headers,
        "subprotocols": [token for token in subprotocols if token],
        "state": state.copy(),
        "extensions": {"websocket.http.response": {}, SINK_EXTENSION: sink},
    }


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def denial(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
    """The HTTP answer an app gives instead of accepting (ASGI websocket denial response)."""
    if not 100 <= status < 600:
        raise RuntimeError(f"invalid HTTP status {status} in a websocket denial response")
    fields = Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers])
    fields.setdefault("Date", email.utils.formatdate(usegmt=True))
    fields.setdefault("Connection", "close")
    fields.setdefault("Content-Length", str(len(body)))
    fields.setdefault("Content-Type", "text/plain; charset=utf-8")
    return Response(status, reason_phrase(status), fields, body)


def accepted_headers(
    default_headers: list[tuple[bytes, bytes]], message: dict[str, Any]
) -> list[tuple[str, str]]:
    """Headers to add to the 101 answer: the server's defaults, the app's, its subprotocol."""
    headers = [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in [*default_headers, *message.get("headers", [])]
    ]
    subprotocol = message.get("subprotocol")
    if subprotocol:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    return headers


def log_access(scope: dict[str, Any], outcome: str) -> None:
    """One access line per handshake, as uvicorn writes them: `client - "WebSocket /path" outcome`."""
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "-"
    query = scope.get("query_string", b"")
    path = scope["path"]
    target = f"{path}?{query.decode('ascii')}" if query else path
    access_logger.info('%s - "WebSocket %s" %s', who, target, outcome)
