"""The HTTP gate (gischat.server.http) against real servers, over real sockets.

The gate sits in front of uvicorn's httptools protocol and tracks request heads with a parser of
its own; these tests cover what that adds to the limits test_transport.py checks: exact head
sizes, pipelined requests, the answer to a stalled follow-up head while a response is under
way, upgrades to protocols with and without `adopt`, and the refusal it writes itself.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, cast

import orjson
import pytest
import uvicorn
from websockets.asyncio.client import connect

from gischat.server.addresses import peer_address
from gischat.server.guard import GuardSettings, TransportGuard
from gischat.server.http import GuardedHttpProtocol, http_refusal
from gischat.server.registry import GuardSpec, forget_guard, guard_for
from gischat.server.runner import listening_socket
from gischat.settings import project

from conftest import TIMEOUT, LiveServer, make_settings, wait_for, ws_client

pytestmark = pytest.mark.anyio

BIG = 32 * 1024 * 1024  # far more than loopback socket buffers hold


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers `<path> <body length>`, or BIG bytes on /big; accepts every websocket."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    length, more = 0, True
    while more:
        message = await receive()
        length += len(message.get("body", b""))
        more = message.get("more_body", False)
    payload = b"x" * BIG if scope["path"] == "/big" else f"{scope['path']} {length}".encode()
    headers = [(b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@dataclass
class Gate:
    port: int
    guard: TransportGuard

    def connect(self, source: str = "127.0.0.2") -> socket.socket:
        sock = socket.socket()
        sock.settimeout(TIMEOUT)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", self.port))
        return sock

    async def released(self) -> None:
        """Every slot and deadline was given back."""
        guard = self.guard
        await wait_for(lambda: guard.connections == 0 and not guard.heads and not guard.lingering)


# uvicorn's own websocket protocol, as each supported uvicorn names it (sans-I/O from 0.35 on).
STOCK_WS = "websockets-sansio" if "websockets-sansio" in uvicorn.config.WS_PROTOCOLS else "websockets"


@contextmanager
def gate_server(ws: Any = STOCK_WS, **overrides: Any) -> Iterator[Gate]:
    """`app` behind the gate, with gischat's guard settings (and `overrides`)."""
    settings = make_settings(host="127.0.0.1", port=0, **overrides)
    spec = GuardSpec(project(GuardSettings, settings), uuid.uuid4().hex)
    sock = listening_socket(settings)
    config = uvicorn.Config(
        app,
        # As the runner binds it: uvicorn calls whatever `http` is with its protocol arguments.
        http=cast(Any, partial(GuardedHttpProtocol, guard_spec=spec)),
        ws=ws,
        lifespan="off",
        log_config=None,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # a bounded wait for startup, as conftest does
        assert thread.is_alive(), "server did not start"
        assert time.monotonic() < deadline, "server did not start in time"
        time.sleep(0.005)
    try:
        yield Gate(int(sock.getsockname()[1]), guard_for(spec))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        forget_guard(spec.token)


@pytest.fixture
def gate() -> Iterator[Gate]:
    with gate_server(max_header_bytes=1024, header_timeout=0.5) as running:
        yield running


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def split_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Consecutive HTTP/1.1 responses with content-length bodies."""
    responses = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers["content-length"])
        responses.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return responses


def head_of(size: int, path: str = "/exact") -> bytes:
    """A complete request head of exactly `size` bytes."""
    start = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: ".encode()
    head = start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size
    return head


# --- the refusal the gate writes -------------------------------------------------------------------


def test_refusal_is_a_whole_response_with_its_own_date() -> None:
    [(status, headers, body)] = split_responses(http_refusal(503, "server busy"))
    assert status == 503
    assert http_refusal(503, "x").startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert parsedate_to_datetime(headers["date"]).tzname() == "UTC"
    assert (headers["retry-after"], headers["connection"]) == ("5", "close")
    assert orjson.loads(body) == {"detail": "server busy"}
    assert b"retry-after" not in http_refusal(431, "too large")
    assert http_refusal(431, "x").startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


class FakeTransport:
    def __init__(self, peername: Any) -> None:
        self.peername = peername

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peername if name == "peername" else default


@pytest.mark.parametrize(
    ("peername", "address"),
    [
        (("10.0.0.1", 4242), "10.0.0.1"),
        (("::1", 4242, 0, 0), "::1"),
        ("", ""),
        ("/run/x.sock", ""),
        (None, ""),
    ],
)
def test_peer_address_comes_from_the_transport(peername: Any, address: str) -> None:
    assert peer_address(FakeTransport(peername)) == address  # type: ignore[arg-type]


# --- request heads ---------------------------------------------------------------------------------


async def test_a_head_of_exactly_the_limit_passes_one_byte_more_is_431(gate: Gate) -> None:
    with gate.connect() as sock:
        sock.sendall(head_of(1024))
        assert split_responses(read_to_eof(sock))[0][:3:2] == (200, b"/exact 0")
    with gate.connect() as sock:
        sock.sendall(head_of(1025))
        [(status, _, body)] = split_responses(read_to_eof(sock))
    assert (status, orjson.loads(body)) == (431, {"detail": "request head larger than 1024 bytes"})
    await gate.released()


async def test_pipelined_requests_in_one_write_are_all_answered(gate: Gate) -> None:
    with gate.connect() as sock:
        sock.sendall(
            b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        answers = split_responses(read_to_eof(sock))
    assert [(status, body) for status, _, body in answers] == [(200, b"/a 0"), (200, b"/b 5"), (200, b"/c 0")]
    await gate.released()


async def test_data_after_a_closing_request_does_not_cut_its_answer(gate: Gate) -> None:
    """Our parser is as lenient as uvicorn's: it must not give up (and close) where uvicorn goes on."""
    with gate.connect() as sock:
        sock.sendall(b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGARBAGE\r\n\r\n")
        assert [(s, b) for s, _, b in split_responses(read_to_eof(sock))] == [(200, b"/last 0")]
    await gate.released()


async def test_stalled_follow_up_while_a_response_is_under_way_is_closed_without_a_408(gate: Gate) -> None:
    sock = gate.connect()
    # The answer to /big cannot all leave while we do not read; the next head stops halfway.
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\n")
    await wait_for(lambda: gate.guard.refusals.get("408") == 1)
    assert not gate.guard.lingering
    raw = read_to_eof(sock)  # the response goes out whole, then the connection ends: no 408 in it
    sock.close()
    [(status, _, body)] = split_responses(raw)
    assert (status, len(body)) == (200, BIG)
    await gate.released()


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """Read until `marker` has arrived (a response the app wrote, say)."""
    received = b""
    while marker not in received:
        chunk = sock.recv(4096)
        assert chunk, f"closed before {marker!r}"
        received += chunk
    return received


async def test_refusing_a_follow_up_closes_at_once(gate: Gate) -> None:
    """After a request the application may still be writing: no half-close to make it fail."""
    with gate.connect() as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(sock, b"/first 0")
        sock.sendall(b"GET /second HTTP/1.1\r\nX-Pad: " + b"p" * 2000)
        await wait_for(lambda: gate.guard.refusals.get("431") == 1)
        assert not gate.guard.lingering
        [(status, _, body)] = split_responses(read_to_eof(sock))
    assert (status, orjson.loads(body)) == (431, {"detail": "request head larger than 1024 bytes"})
    await gate.released()


async def test_a_refused_upgrade_keeps_the_head_limits(gate: Gate) -> None:
    """uvicorn serves an unsupported upgrade (h2c) as plain HTTP: the gate keeps tracking heads."""
    with gate.connect() as sock:
        sock.sendall(b"GET /h2c HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        read_until(sock, b"/h2c 0")
        sock.sendall(b"GET /next HTTP/1.1\r\nX-Pad: " + b"p" * 2000)
        [(status, _, _)] = split_responses(read_to_eof(sock))
    assert status == 431
    await gate.released()


# --- upgrades ----------------------------------------------------------------------------------------


async def test_upgrade_to_a_protocol_without_adopt_gives_the_slot_back() -> None:
    with gate_server() as gate:
        url = f"ws://127.0.0.1:{gate.port}/"
        async with connect(url, local_addr=("127.0.0.2", 0), open_timeout=TIMEOUT) as ws:
            await ws.send("still open")
            # uvicorn's own websocket protocol would never release the slot: the gate did.
            assert (gate.guard.connections, gate.guard.per_ip) == (0, {})
        await gate.released()


async def test_upgrade_to_gischat_websockets_hands_the_slot_over(server: LiveServer) -> None:
    guard = guard_for(server.guard_spec)
    async with ws_client(server, local_addr=("127.0.0.2", 0)) as client:
        await client.send({"type": "newcomer", "newcomer": "adopted"})
        await client.expect("newcomer", newcomer="adopted")
        assert (guard.connections, guard.per_ip, len(guard.heads)) == (1, {"127.0.0.2": 1}, 0)
    await wait_for(lambda: guard.connections == 0 and not guard.per_ip)
