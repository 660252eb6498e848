"""Scenario 7's load generator: thousands of idle websockets from a client light enough not to be
the bottleneck.

The picows client of the other scenarios costs about 0.6 ms of CPU per connection (most of it
`create_connection` in Python), as much as the server spends on a join: on a 2-core machine
the crowd's time then measured the client as much as the server. An idle socket needs far less:
this one is a bare `asyncio.Protocol` on uvloop that writes a prebuilt upgrade request, checks
the 101, answers pings, and reads the server's frames only for `nb_users`. Its frames are
unmasked (the server's), so parsing is a few slices; it never sends data frames.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Sequence
from typing import cast

import orjson
from harness import CONNECT_CONCURRENCY, HOST

TEXT, CLOSE, PING = 0x1, 0x8, 0x9
NB_USERS = b'"nb_users"'


class Crowd:
    """What the crowd saw: how many sockets saw `target` as their latest count, and who is gone."""

    def __init__(self, size: int, target: int) -> None:
        self.target = target
        self.size = size
        self.saw = 0
        self.gone = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def count(self, previous: int, current: int) -> None:
        if current == self.target and previous != self.target:
            self.saw += 1
            if self.saw == self.size and not self.done.done():
                self.done.set_result(None)

    async def wait(self, within: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self.done), within)
        except TimeoutError:
            return False
        return True


class IdleSocket(asyncio.Protocol):
    """One websocket that only listens."""

    def __init__(self, request: bytes, crowd: Crowd) -> None:
        self.request = request
        self.crowd = crowd
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.nb_users = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.crowd.gone += 1
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.opened.done():
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 101 "):
                self.opened.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
                return
            self.buffer = rest
            self.opened.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buffer = self.buffer
        start = 0
        while len(buffer) - start >= 2:
            opcode, length = buffer[start] & 0x0F, buffer[start + 1] & 0x7F
            head = 2
            if length == 126:
                if len(buffer) - start < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, start + 2)
                head = 4
            elif length == 127:
                if len(buffer) - start < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, start + 2)
                head = 10
            end = start + head + length
            if len(buffer) < end:
                break
            payload = buffer[start + head : end]
            start = end
            if opcode == TEXT and NB_USERS in payload:
                previous, self.nb_users = self.nb_users, int(orjson.loads(payload)["nb_users"])
                self.crowd.count(previous, self.nb_users)
            elif opcode == PING and self.transport is not None:
                # A pong, masked with an all-zero key so that the payload goes as is.
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + bytes(4) + payload)
            elif opcode == CLOSE and self.transport is not None:
                self.transport.close()
        self.buffer = buffer[start:]

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def upgrade_request(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def open_crowd(port: int, path: str, crowd: Crowd) -> list[IdleSocket]:
    """`crowd.size` sockets, CONNECT_CONCURRENCY handshakes in flight at a time (as `connect_many`)."""
    loop = asyncio.get_running_loop()
    request = upgrade_request(port, path)  # the key is checked for its form only
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> IdleSocket:
        async with semaphore:
            _, sock = await loop.create_connection(lambda: IdleSocket(request, crowd), HOST, port)
            await sock.opened
            return sock

    return list(await asyncio.gather(*(one() for _ in range(crowd.size))))


def disperse(sockets: Sequence[IdleSocket]) -> None:
    for sock in sockets:
        sock.abort()
