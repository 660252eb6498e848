"""The opening handshake gischat reads and answers itself (`gischat.server.upgrade`), and the one
`websockets` negotiates when permessage-deflate is enabled."""

from __future__ import annotations

import base64
import os
import socket

import pytest
from websockets.asyncio.client import connect

from gischat.server.handshake import websocket_scope
from gischat.server.upgrade import HandshakeRefused, read_upgrade, refusal

from conftest import TIMEOUT, LiveServer, ServerFactory, text, ws_client

pytestmark = pytest.mark.anyio

# RFC 6455, section 1.3: this key must be answered with this accept value.
RFC_KEY, RFC_ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def head(
    *,
    method: str = "GET",
    version: str = "1.1",
    key: str | None = RFC_KEY,
    ws_version: str | None = "13",
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    extra: str = "",
) -> bytes:
    lines = [f"{method} /room/QGIS/ws?x=1 HTTP/{version}", "Host: example.org"]
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if ws_version is not None:
        lines.append(f"Sec-WebSocket-Version: {ws_version}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def test_a_valid_request_is_answered_with_the_rfc_accept_value() -> None:
    upgrade = read_upgrade(head(connection="keep-alive, Upgrade", upgrade="WebSocket"))
    assert upgrade.accept == RFC_ACCEPT
    assert upgrade.target == b"/room/QGIS/ws?x=1"
    assert (b"host", b"example.org") in upgrade.headers  # names lower-cased, as ASGI wants


@pytest.mark.parametrize(
    ("request_head", "status", "detail"),
    [
        (head(method="POST"), 405, "GET"),
        (head(version="1.0"), 400, "HTTP/1.1"),
        (head(key=None), 400, "Sec-WebSocket-Key"),
        (head(key="c2hvcnQ="), 400, "Sec-WebSocket-Key"),  # 5 bytes, not 16
        (head(key="not base64!"), 400, "Sec-WebSocket-Key"),
        (head(extra=f"Sec-WebSocket-Key: {RFC_KEY}\r\n"), 400, "Sec-WebSocket-Key"),  # twice
        (head(ws_version="8"), 426, "Sec-WebSocket-Version"),
        (head(ws_version=None), 426, "Sec-WebSocket-Version"),
        (head(connection="keep-alive"), 400, "Connection"),
        (head(upgrade="h2c"), 426, "Upgrade"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", 400, "incomplete"),
        (b"\x00\x01 nonsense\r\n\r\n", 400, "invalid HTTP request"),
    ],
)
def test_requests_that_are_not_upgrades_are_refused_with_a_reason(
    request_head: bytes, status: int, detail: str
) -> None:
    with pytest.raises(HandshakeRefused) as refused:
        read_upgrade(request_head)
    assert refused.value.status == status
    assert detail in refused.value.detail
    answer = refusal(refused.value)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nconnection: close\r\n" in answer
    if status == 426 and "Version" in detail:
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer


def test_the_scope_is_built_from_the_request_as_sent() -> None:
    upgrade = read_upgrade(
        head(extra="Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Protocol: v2\r\n").replace(
            b"/room/QGIS/ws", b"/room/Caf%C3%A9/ws"
        )
    )
    scope = websocket_scope(
        upgrade,
        scheme="ws",
        server=("127.0.0.1", 8000),
        client=("127.0.0.2", 5000),
        root_path="",
        asgi_version="3.0",
        state={},
        sink=None,
    )
    assert scope["path"] == "/room/Café/ws"
    assert scope["raw_path"] == b"/room/Caf%C3%A9/ws"
    assert scope["query_string"] == b"x=1"
    assert scope["subprotocols"] == ["chat", "superchat", "v2"]


def raw_exchange(server: LiveServer, request: bytes) -> bytes:
    """Send `request` and read the whole answer (the server closes after a refusal)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_bad_version_gets_426_through_the_server(server: LiveServer) -> None:
    answer = raw_exchange(server, head(ws_version="8"))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 426 Upgrade Required"
    assert b"Sec-WebSocket-Version: 13" in rest
    assert rest.endswith(
        b"Failed to open a WebSocket connection: unsupported Sec-WebSocket-Version (13 only).\n"
    )


def test_a_bad_key_gets_400_through_the_server(server: LiveServer) -> None:
    key = base64.b64encode(os.urandom(8)).decode()
    answer = raw_exchange(server, head(key=key))
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Sec-WebSocket-Key" in answer


async def test_an_offered_extension_is_declined_when_compression_is_off(server: LiveServer) -> None:
    # The websockets client offers permessage-deflate by default, and checks the accept value.
    async with ws_client(server) as client:
        assert client.ws.response is not None
        headers = client.ws.response.headers
        assert "Sec-WebSocket-Extensions" not in headers
        assert "date" in headers  # the server's default headers follow ours
        await client.register("alice")
        await client.send(text("alice", "hi"))
        await client.expect("text", text="hi")


async def test_compression_is_negotiated_by_websockets_when_enabled(server_factory: ServerFactory) -> None:
    server = server_factory(ws_per_message_deflate=True)
    async with ws_client(server) as client:
        assert client.ws.response is not None
        assert client.ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        await client.register("alice")
        await client.send(text("alice", "compressed " * 20))
        await client.expect("text", text="compressed " * 20)
    async with connect(server.ws_url("QGIS"), open_timeout=TIMEOUT, compression=None) as plain:
        assert plain.response is not None
        assert "Sec-WebSocket-Extensions" not in plain.response.headers


async def test_a_bad_version_is_refused_with_compression_enabled_too(server_factory: ServerFactory) -> None:
    server = server_factory(ws_per_message_deflate=True)
    answer = raw_exchange(server, head(ws_version="8"))
    assert answer.startswith(b"HTTP/1.1 400 ")  # websockets' answer (gischat's own says 426)
    assert answer.endswith(b"invalid Sec-WebSocket-Version header: 8.\n")
