"""The opening handshake as ASGI sees it: the scope of a websocket, the answers, the access lines."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote, unquote

from uvicorn.config import Config

from gischat.protocol.frames import SINK_EXTENSION
from gischat.server.addresses import address_of
from gischat.server.upgrade import Upgrade

# The ASGI spec version of the websocket scopes we build (2.4: denial responses, `reason`).
SPEC_VERSION = "2.4"

# Shared with uvicorn's own access lines, so operators see one format whatever serves the socket.
access_logger = logging.getLogger("uvicorn.error")


def websocket_scope(
    upgrade: Upgrade,
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
    raw_path, _, query = upgrade.target.partition(b"?")
    subprotocols = [
        token.strip()
        for name, value in upgrade.headers
        if name == b"sec-websocket-protocol"
        for token in value.decode("latin-1").split(",")
    ]
    return {
        "type": "websocket",
        "asgi": {"version": asgi_version, "spec_version": SPEC_VERSION},
        "http_version": "1.1",
        "scheme": scheme,
        "server": server,
        "client": client,
        "root_path": root_path,
        "path": root_path + unquote(raw_path.decode("latin-1")),
        "raw_path": root_path.encode("latin-1") + raw_path,
        "query_string": query,
        "headers": upgrade.headers,
        "subprotocols": [token for token in subprotocols if token],
        "state": state.copy(),
        "extensions": {"websocket.http.response": {}, SINK_EXTENSION: sink},
    }


def scope_for(
    upgrade: Upgrade, transport: asyncio.Transport, config: Config, state: dict[str, Any], sink: object
) -> dict[str, Any]:
    """The scope of a websocket handshake on `transport`, for an app served with `config`."""
    return websocket_scope(
        upgrade,
        scheme="wss" if transport.get_extra_info("sslcontext") else "ws",
        server=address_of(transport.get_extra_info("sockname")),
        client=address_of(transport.get_extra_info("peername")),
        root_path=config.root_path,
        asgi_version=config.asgi_version,
        state=state,
        sink=sink,
    )


def accepted_headers(
    default_headers: list[tuple[bytes, bytes]], message: dict[str, Any]
) -> list[tuple[bytes, bytes]]:
    """Headers to add to the 101 answer: the server's defaults, the app's, its subprotocol."""
    headers = [*default_headers, *message.get("headers", [])]
    subprotocol = message.get("subprotocol")
    if subprotocol:
        headers.append((b"Sec-WebSocket-Protocol", subprotocol.encode("latin-1")))
    return headers


def log_access(scope: dict[str, Any], outcome: str) -> None:
    """One access line per refused handshake, as uvicorn writes them: `client - "WebSocket /path" outcome`.

    Accepted ones have none: the room's "joined" line names the same client, room and route.

    The path is percent-encoded again, as uvicorn's own access lines have it: `scope["path"]` is
    decoded, and `/room/%0d%0a.../ws` would otherwise write a line break (a forged log line) or
    any control character into the log."""
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "-"
    query = scope.get("query_string", b"")
    path = quote(scope["path"])
    target = f"{path}?{query.decode('ascii', 'backslashreplace')}" if query else path
    access_logger.info('%s - "WebSocket %s" %s', who, target, outcome)
