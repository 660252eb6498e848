"""Transport limits (gischat.server) against a real server, over real sockets.

Attackers connect from their own loopback addresses (127.0.0.2, 127.0.0.3...) with raw sockets
and hand-made frames; 127.0.0.1 is a trusted proxy under the default FORWARDED_ALLOW_IPS. Each
limit is checked for its refusal and wording, for a well-behaved client next to the attacker,
and for its slots and bytes being given back afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gischat.protocol.frames import SINK_EXTENSION, Outgoing
from gischat.server.descriptors import RESERVED_FDS, effective_max_connections, raise_nofile_limit
from gischat.server.guard import TransportGuard
from gischat.server.http import GuardedHttpProtocol
from gischat.server.registry import guard_for
from gischat.server.runner import log_connection_ceiling
from gischat.server.websocket import GuardedWebSocketProtocol

from conftest import TIMEOUT, LiveServer, ServerFactory, free_port, text, wait_for, ws_client

pytestmark = pytest.mark.anyio

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
MiB = 1024 * 1024


# --- helpers -------------------------------------------------------------------------------------


def guard_of(server: LiveServer) -> TransportGuard:
    """The server's guard, as the runner bound it to its protocols."""
    return guard_for(server.guard_spec)


async def all_released(server: LiveServer) -> None:
    """Every slot, deadline and byte of unfinished data was given back."""
    guard = guard_of(server)
    await wait_for(
        lambda: (
            guard.connections == 0
            and not guard.per_ip
            and not guard.heads
            and not guard.lingering
            and not guard.incomplete
            and guard.incomplete_bytes == 0
        )
    )


def connect_from(server: LiveServer, source: str) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(TIMEOUT)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    body = body[: int(headers.get("content-length", len(body)))]
    return status, headers, orjson.loads(body) if headers.get("content-type") == "application/json" else body


def refusal_of(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Read a refusal to the end: the server must close the connection after it."""
    raw = read_to_eof(sock)
    sock.close()
    status, headers, body = parse_response(raw)
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    return status, headers, body


def get_status(server: LiveServer, source: str) -> int:
    with connect_from(server, source) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        return parse_response(read_to_eof(sock))[0]


def frame_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """A masked client frame header with an all-zero mask key, so the payload goes as is."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, 0x80 | length) + bytes(4)
    if length < 65536:
        return struct.pack("!BBH", first, 0x80 | 126, length) + bytes(4)
    return struct.pack("!BBQ", first, 0x80 | 127, length) + bytes(4)


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    return frame_header(opcode, len(payload), fin) + payload


class RawSocket:
    """A websocket client by hand: whatever bytes a test wants, and strict reading of frames."""

    def __init__(self, server: LiveServer, source: str, room: str = "QGIS") -> None:
        self.sock = connect_from(server, source)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /room/{quote(room)}/ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the handshake"
            buffer += chunk
        head, _, self.buffer = buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.opened = time.monotonic()

    def _need(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        first, second = self._need(2)
        assert not second & 0x80, "server frames are not masked"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._need(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._need(8))
        return first & 0x0F, self._need(length)

    def read_close(self) -> tuple[int, str]:
        """Skip data frames and pongs up to the close frame; then the server must close the TCP."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == CLOSE:
                break
        code = struct.unpack("!H", payload[:2])[0]
        self.sock.settimeout(TIMEOUT)
        with pytest.raises((EOFError, ConnectionResetError)):
            self._need(1)
        return code, payload[2:].decode()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


async def round_trip(server: LiveServer, source: str, author: str = "bystander") -> None:
    """A well-behaved client from `source` chats and gets its own message back."""
    async with ws_client(server, local_addr=(source, 0)) as client:
        message = text(author, "all good here")
        await client.send(message)
        assert await client.expect("text", author=author) == message


@pytest.fixture
def silent_sockets() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


# --- request heads -------------------------------------------------------------------------------


async def test_huge_header_is_refused_431_before_it_is_read(server: LiveServer) -> None:
    sock = connect_from(server, "127.0.0.2")
    sock.sendall(b"GET /status HTTP/1.1\r\nHost: test\r\nX-Huge: ")
    sent = 0
    while not select.select([sock], [], [], 0.002)[0]:  # a 64 MiB header, until the server answers
        assert sent < 64 * MiB, "no answer to a huge header"
        try:
            sock.sendall(b"a" * 16384)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 16384
    assert sent < 8 * MiB  # answered soon after MAX_HEADER_BYTES (64 KiB), long before the end
    status, _, body = refusal_of(sock)
    assert status == 431
    assert body == {"detail": "request head larger than 65536 bytes"}
    await round_trip(server, "127.0.0.3")
    assert get_status(server, "127.0.0.2") == 200
    await all_released(server)


async def test_header_limit_is_a_setting_and_a_large_valid_head_passes(server_factory: ServerFactory) -> None:
    server = server_factory(max_header_bytes=4096)
    with connect_from(server, "127.0.0.2") as sock:
        sock.sendall(
            b"GET /status HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n"
        )
        assert parse_response(read_to_eof(sock))[0] == 200
    sock = connect_from(server, "127.0.0.2")
    sock.sendall(b"GET /status HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 5000 + b"\r\n\r\n")
    assert refusal_of(sock)[2] == {"detail": "request head larger than 4096 bytes"}
    await all_released(server)


async def test_slowloris_gets_408(server_factory: ServerFactory) -> None:
    server = server_factory(header_timeout=0.5)
    sock = connect_from(server, "127.0.0.2")
    started = time.monotonic()
    sock.sendall(b"GET /status HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    for _ in range(3):  # trickling bytes does not extend the deadline
        if select.select([sock], [], [], 0.1)[0]:
            break
        sock.sendall(b"z")
    status, _, body = refusal_of(sock)
    assert status == 408
    assert body == {"detail": "request head not received within 0.5 s"}
    assert 0.45 < time.monotonic() - started < 3
    await round_trip(server, "127.0.0.3")
    await all_released(server)


async def test_silent_connection_is_closed_after_the_header_timeout(server_factory: ServerFactory) -> None:
    server = server_factory(header_timeout=0.5)
    sock = connect_from(server, "127.0.0.2")
    status, _, body = refusal_of(sock)  # we send nothing at all
    assert (status, body) == (408, {"detail": "request head not received within 0.5 s"})
    await all_released(server)


async def test_next_request_on_a_kept_alive_connection_has_a_deadline_too(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(header_timeout=0.5)
    sock = connect_from(server, "127.0.0.2")
    sock.sendall(b"GET /version HTTP/1.1\r\nHost: test\r\n\r\n")
    response = b""
    while b"}" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /status HTTP/1.1\r\n")  # and nothing more
    status, _, body = refusal_of(sock)
    assert (status, body) == (408, {"detail": "request head not received within 0.5 s"})
    await all_released(server)


# --- connection caps -----------------------------------------------------------------------------


async def test_global_cap_answers_503_then_recovers(
    server_factory: ServerFactory, silent_sockets: list[socket.socket]
) -> None:
    server = server_factory(max_connections=5)
    guard = guard_of(server)
    async with ws_client(server, local_addr=("127.0.0.3", 0)) as chatter:
        silent_sockets += [connect_from(server, "127.0.0.2") for _ in range(4)]
        await wait_for(lambda: guard.connections == 5)
        sock = connect_from(server, "127.0.0.4")
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: test\r\n\r\n")
        status, headers, body = refusal_of(sock)
        assert status == 503
        assert headers["retry-after"] == "5"
        assert body == {"detail": "server busy: too many connections (5), try again later"}
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.ws_url("QGIS"), local_addr=("127.0.0.4", 0), open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 503
        # The connection already in keeps chatting.
        await chatter.send(text("chatter", "still served"))
        await chatter.expect("text", author="chatter")
        silent_sockets.pop().close()
        await wait_for(lambda: guard.connections == 4)
        assert get_status(server, "127.0.0.4") == 200
        assert guard.refusals["503"] == 2
    for sock in silent_sockets:
        sock.close()
    await all_released(server)


async def test_per_address_cap_answers_429_and_trusted_proxies_are_exempt(
    server_factory: ServerFactory, silent_sockets: list[socket.socket]
) -> None:
    server = server_factory(max_connections_per_ip=3)
    guard = guard_of(server)
    silent_sockets += [connect_from(server, "127.0.0.2") for _ in range(3)]
    await wait_for(lambda: guard.per_ip.get("127.0.0.2") == 3)
    sock = connect_from(server, "127.0.0.2")
    sock.sendall(b"GET /status HTTP/1.1\r\nHost: test\r\n\r\n")
    status, headers, body = refusal_of(sock)
    assert status == 429
    assert headers["retry-after"] == "5"
    assert body == {"detail": "too many connections from your address (3), try again later"}
    # Other addresses are not concerned; the trusted proxy 127.0.0.1 is not counted per address.
    await round_trip(server, "127.0.0.3")
    proxied = [connect_from(server, "127.0.0.1") for _ in range(5)]
    for sock in proxied:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    assert [parse_response(read_to_eof(sock))[0] for sock in proxied] == [200] * 5
    assert "127.0.0.1" not in guard.per_ip
    # A freed slot is available again.
    silent_sockets.pop().close()
    await wait_for(lambda: guard.per_ip.get("127.0.0.2") == 2)
    assert get_status(server, "127.0.0.2") == 200
    for sock in [*silent_sockets, *proxied]:
        sock.close()
    await all_released(server)


async def test_every_kind_of_close_gives_the_slot_back(server: LiveServer) -> None:
    guard = guard_of(server)
    # A websocket closed normally, one reset, one refused at the handshake, an HTTP 400, a
    # kept-alive HTTP connection closed by the client.
    async with ws_client(server, local_addr=("127.0.0.2", 0)) as client:
        await client.send(text("closer"))
        await client.expect("text", author="closer")
    reset = RawSocket(server, "127.0.0.2")
    await wait_for(lambda: guard.connections == 1)
    reset.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()
    with pytest.raises(InvalidStatus):
        await connect(server.ws_url("no such room"), local_addr=("127.0.0.2", 0), open_timeout=TIMEOUT)
    with connect_from(server, "127.0.0.2") as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert parse_response(read_to_eof(sock))[0] == 400
    with connect_from(server, "127.0.0.2") as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: test\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    await all_released(server)


# --- websocket reading ---------------------------------------------------------------------------


async def test_ping_flood_is_closed_1008(server_factory: ServerFactory) -> None:
    server = server_factory(ping_rate=2, ping_burst=5)
    polite = RawSocket(server, "127.0.0.2")
    polite.send(frame(PING, b"p") * 5)  # the burst is allowed
    pongs = 0
    while pongs < 5:
        opcode, payload = polite.read_frame()
        if opcode == PONG:
            assert payload == b"p"
            pongs += 1
    async with ws_client(server, local_addr=("127.0.0.4", 0)) as watcher:
        flood = RawSocket(server, "127.0.0.3")
        flood.send(frame(TEXT, orjson.dumps({"type": "newcomer", "newcomer": "flooder"})))
        await watcher.expect("newcomer", newcomer="flooder")
        flood.send(frame(PING, b"x") * 50)
        assert flood.read_close() == (1008, "ping flood: more than 2 pings per second")
        flood.close()
        # The app learnt at once: the flooder left its room.
        await watcher.expect("exiter", exiter="flooder")
        await watcher.send(text("watcher", "still served"))
        await watcher.expect("text", author="watcher")
    polite.close()
    assert guard_of(server).refusals == {"1008": 1}
    await all_released(server)


async def test_peer_that_does_not_read_is_not_read(server_factory: ServerFactory) -> None:
    """Pings without reading the pongs: the server stops reading, so our sends block."""
    server = server_factory(ping_rate=0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.bind(("127.0.0.2", 0))
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", server.port))
    raw = RawSocket.__new__(RawSocket)
    raw.sock, raw.buffer = sock, b""
    # Handshake by hand on our small-buffered socket.
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /room/QGIS/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    sock.setblocking(False)
    batch = frame(PING, b"q" * 125) * 100
    sent = 0
    blocked = False
    while sent < 256 * MiB:  # without backpressure the server would read (and answer) forever
        try:
            sent += sock.send(batch)
        except BlockingIOError:
            # Blocked: give the server a fair chance to read more before concluding.
            if not select.select([], [sock], [], 0.3)[1]:
                blocked = True
                break
    assert blocked, f"sent {sent} bytes of pings and the server still reads"
    assert select.select([], [sock], [], 0.2)[1] == []  # still not reading
    await round_trip(server, "127.0.0.3")
    sock.close()
    await all_released(server)


async def test_peer_we_closed_is_not_parsed_and_is_gone_within_a_second(
    server_factory: ServerFactory,
) -> None:
    """After our close frame a flooding peer costs no parsing: the TCP ends within CLOSE_TIMEOUT."""
    server = server_factory(message_rate=1, message_burst=1, rate_strikes_per_minute=1)
    flood = RawSocket(server, "127.0.0.3")
    spam = frame(TEXT, orjson.dumps(text("flooder", "spam"))) * 200
    stop = threading.Event()

    def keep_sending() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                flood.sock.sendall(spam)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        code, _ = await asyncio.to_thread(flood.read_close)  # also waits for the end of the TCP
        assert code == 1008
    finally:
        stop.set()
        sender.join(TIMEOUT)
    ended = time.monotonic()
    # uvicorn alone would read and parse the flood for its 10 s close timeout.
    assert ended - flood.opened < 5.0
    flood.close()
    await round_trip(server, "127.0.0.2")
    await all_released(server)


async def test_unfinished_frame_is_closed_after_frame_timeout(server_factory: ServerFactory) -> None:
    server = server_factory(frame_timeout=0.5)
    guard = guard_of(server)
    stalled = RawSocket(server, "127.0.0.2")
    stalled.send(frame_header(TEXT, 100_000) + b"a" * 10_000)
    await wait_for(lambda: guard.incomplete_bytes == 10_000)
    started = time.monotonic()
    assert stalled.read_close() == (1008, "message incomplete: no data for 0.5 s")
    assert 0.4 < time.monotonic() - started < 3
    stalled.close()
    await round_trip(server, "127.0.0.3")
    await all_released(server)


async def test_slow_but_steady_frame_is_not_closed(server_factory: ServerFactory) -> None:
    server = server_factory(frame_timeout=0.5)
    slow = RawSocket(server, "127.0.0.2")
    body = orjson.dumps(text("slowpoke", "x" * 200))
    slow.send(frame_header(TEXT, len(body) + 9000) + body[:-1])
    for _ in range(9):  # progress every 0.15 s for 1.35 s: each step well within the deadline
        await asyncio.sleep(0.15)
        slow.send(b" " * 1000)
    slow.send(body[-1:])
    opcode, payload = slow.read_frame()
    while orjson.loads(payload)["type"] == "nb_users":
        opcode, payload = slow.read_frame()
    assert opcode == TEXT
    assert orjson.loads(payload)["type"] in {"text", "uncompliant"}  # served, whatever the verdict
    slow.close()
    await all_released(server)


async def test_fragmented_message_counts_and_pings_are_not_progress(server_factory: ServerFactory) -> None:
    server = server_factory(frame_timeout=0.5, ping_rate=0)
    guard = guard_of(server)
    sock = RawSocket(server, "127.0.0.2")
    sock.send(frame(TEXT, b"a" * 50_000, fin=False) + frame(CONT, b"b" * 50_000, fin=False))
    await wait_for(lambda: guard.incomplete_bytes >= 100_000)
    started = time.monotonic()
    sock.sock.settimeout(0.1)
    code = None
    while code is None and time.monotonic() - started < 3:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.send(frame(PING, b"alive?"))  # answered, but no progress of the message
        try:
            opcode, payload = sock.read_frame()
        except TimeoutError:
            continue
        if opcode == CLOSE:
            code = struct.unpack("!H", payload[:2])[0], payload[2:].decode()
    assert code == (1008, "message incomplete: no data for 0.5 s")
    sock.close()
    await all_released(server)


async def test_global_budget_of_unfinished_data_closes_1013(server_factory: ServerFactory) -> None:
    server = server_factory(max_incomplete_bytes=2 * MiB)
    guard = guard_of(server)
    async with ws_client(server, local_addr=("127.0.0.5", 0)) as chatter:
        # A holds 1.5 MiB in fragments of a message, B wants to hold as much in one frame.
        first = RawSocket(server, "127.0.0.2")
        piece = b"a" * (256 * 1024)
        first.send(frame(BINARY, piece, fin=False) + frame(CONT, piece, fin=False) * 5)
        await wait_for(lambda: guard.incomplete_bytes >= 6 * len(piece))
        second = RawSocket(server, "127.0.0.3")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            second.send(frame_header(BINARY, 4 * MiB) + b"b" * (3 * MiB // 2))
        assert second.read_close() == (1013, "server busy: too much unfinished data, try again later")
        second.close()
        # Small frames of everybody else go on.
        await chatter.send(text("chatter", "small frame"))
        await chatter.expect("text", author="chatter")
        # A finishes its message and is served (binary frames are answered with a refusal).
        first.send(frame(CONT, b"a", fin=True))
        opcode, payload = first.read_frame()
        while orjson.loads(payload)["type"] in {"nb_users", "text"}:  # the chatter's is relayed
            opcode, payload = first.read_frame()
        assert opcode == TEXT
        assert orjson.loads(payload)["type"] == "uncompliant"
        first.close()
    assert guard.refusals == {"1013": 1}
    await all_released(server)


# --- without a guard, and the frame sink ----------------------------------------------------------


async def tiny_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes each text message back as a ready frame through the scope's frame sink."""
    if scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    sink = scope["extensions"][SINK_EXTENSION]
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        item = Outgoing.of(message["text"])
        if not sink.offer(item):
            await sink.deliver(item)


@pytest.fixture
def tiny_server() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        tiny_app,
        port=port,
        http=GuardedHttpProtocol,
        ws=GuardedWebSocketProtocol,
        lifespan="off",
        log_config=None,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


async def test_ready_frames_are_sent_as_is_and_no_guard_means_no_limits(tiny_server: int) -> None:
    # uvicorn's Config enables permessage-deflate: the large message deflates as real data does
    # (200 kB of one letter would inflate over INFLATE_RATIO times its size, refused 1009).
    large = base64.b64encode(os.urandom(150_000)).decode()
    async with connect(f"ws://127.0.0.1:{tiny_server}/", open_timeout=TIMEOUT) as ws:
        for message in ("héllo wörld ✓", large):
            await ws.send(message)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == message
        # Without a guard nothing is limited: pings far beyond any rate are answered.
        for _ in range(50):
            await asyncio.wait_for(await ws.ping(), TIMEOUT)
    with socket.create_connection(("127.0.0.1", tiny_server), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n"
        )
        assert parse_response(read_to_eof(sock))[:3:2] == (200, b"ok")


async def test_normal_chat_is_byte_identical(server: LiveServer) -> None:
    async with ws_client(server, local_addr=("127.0.0.2", 0)) as client:
        raw = '{"type":"text","author":"bytes","avatar":null,"text":"é ✓ 𝄞"}'
        await client.send(raw)
        while True:
            received = await client.recv_raw()
            if '"nb_users"' not in received:
                break
        assert orjson.loads(received) == orjson.loads(raw)


# --- file descriptors ----------------------------------------------------------------------------


def test_file_descriptor_limit_and_effective_cap(caplog: pytest.LogCaptureFixture) -> None:
    import resource

    nofile = raise_nofile_limit()
    assert nofile == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert effective_max_connections(10_000, 1024) == 1024 - RESERVED_FDS
    assert effective_max_connections(500, 1024) == 500
    log = logging.getLogger("gischat.test")
    with caplog.at_level(logging.INFO, logger="gischat.test"):
        log_connection_ceiling(log, 500, 1024)
        log_connection_ceiling(log, 10_000, 1024)
    assert caplog.records[0].getMessage() == "file descriptor limit 1024; MAX_CONNECTIONS 500"
    assert caplog.records[1].levelno == logging.WARNING
    assert "MAX_CONNECTIONS 10000 lowered to 896" in caplog.records[1].getMessage()
