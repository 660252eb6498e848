"""A hand-written websocket client over asyncio streams, for `bench/hostile.py` and its observer.

The attacks need what no client library lets you do: pick the source address, declare a frame
of 16 MiB and send only part of it, flood pings and never read the pongs, keep a handshake half
sent. The innocent probes use the same client, playing by the rules (masked frames, pongs,
close handshake), so that both sides of a measurement share one frame parser.

Only loopback addresses are used: every function takes the source address to bind, and the
server is always `harness.HOST`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness import HOST, split_frame

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
READ_CHUNK = 1 << 18
STREAM_LIMIT = 1 << 20  # StreamReader buffer before the transport stops reading
SNIFF = re.compile(rb'"type": ?"(\w+)"(?:, ?"author": ?"([^"]*)")?')


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR `payload` with the 4-byte `key` repeated, as every client frame must be (RFC 6455 5.3).

    One big-integer XOR: a 16 MB payload costs tens of milliseconds, not a Python loop.
    """
    if not payload:
        return payload
    size = len(payload)
    repeated = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(size, "big")


def frame_header(opcode: int, length: int, key: bytes, fin: bool = True) -> bytes:
    """The header of a masked client frame declaring `length` payload bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, 0x80 | length) + key
    if length < 1 << 16:
        return struct.pack("!BBH", first, 0x80 | 126, length) + key
    return struct.pack("!BBQ", first, 0x80 | 127, length) + key


def encode(opcode: int, payload: bytes) -> bytes:
    """A complete masked client frame, with a fresh random key."""
    key = os.urandom(4)
    return frame_header(opcode, len(payload), key) + mask(payload, key)


def sniff(payload: bytes) -> tuple[str, str]:
    """The `type` and `author` of a server message from its first bytes, without parsing it all."""
    found = SNIFF.search(payload[:160])
    if found is None:
        return "?", ""
    author = found.group(2)
    return found.group(1).decode(), author.decode() if author else ""


class HandshakeRefused(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.head = head


def upgrade_lines(host: str, path: str, key: str) -> list[str]:
    """The lines of a websocket upgrade request (the fuzzer damages them one by one)."""
    return [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]


def upgrade_request(port: int, path: str, origin: str | None) -> bytes:
    """A websocket upgrade request, optionally with a browser's Origin header."""
    lines = upgrade_lines(f"{HOST}:{port}", path, base64.b64encode(os.urandom(16)).decode())
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(head: bytes) -> int:
    """The status code of an HTTP response head, 0 when it is not one."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


async def open_tcp(
    port: int, source: str, within: float, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the server from `source` (a 127.x.y.z address), bounded by `within` seconds.

    `rcvbuf`: a small receive buffer for clients that mean to stop reading, set before the
    connection so the advertised window stays small too.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), within)
        return await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)
    except BaseException:
        sock.close()
        raise


FrameHandler = Callable[["WsClient", int, bytes], None]


@dataclass
class WsClient:
    """One websocket connection: frames out (masked), frames in (parsed) to a handler.

    `close_code`/`close_reason` hold the server's close frame, `ended` why reading stopped
    ("close", "eof", "reset", "cancelled"). Nothing here waits without a bound.
    """

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    on_frame: FrameHandler | None = None
    auto_pong: bool = True
    close_code: int | None = None
    close_reason: str = ""
    ended: str = ""
    ended_at: float = 0.0
    received_bytes: int = 0
    reading: asyncio.Task[None] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(
        cls,
        port: int,
        path: str,
        source: str,
        within: float = 10.0,
        origin: str | None = None,
        on_frame: FrameHandler | None = None,
        rcvbuf: int | None = None,
    ) -> WsClient:
        """Connect from `source` and complete the handshake `within` seconds.

        Raises HandshakeRefused, TimeoutError or OSError; the socket is closed on failure.
        """
        deadline = time.monotonic() + within
        reader, writer = await open_tcp(port, source, within, rcvbuf)
        try:
            writer.write(upgrade_request(port, path, origin))
            remaining = max(deadline - time.monotonic(), 0.01)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), remaining)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.transport.abort()
            raise ConnectionResetError("closed during the handshake") from exc
        except BaseException:
            writer.transport.abort()
            raise
        status = status_of(head)
        if status != 101:
            writer.transport.abort()
            raise HandshakeRefused(status, head)
        return cls(reader, writer, on_frame)

    def start(self, parse: bool = True) -> None:
        """Read in the background; `parse=False` only drains (thousands of sockets, cheap)."""
        self.reading = asyncio.create_task(self._read(parse))

    @property
    def is_open(self) -> bool:
        return not self.closed.is_set() and not self.writer.is_closing()

    def send(self, opcode: int, payload: bytes) -> None:
        """Queue one masked frame (bounded by the caller's drain)."""
        if self.is_open:
            self.writer.write(encode(opcode, payload))

    def send_raw(self, data: bytes) -> None:
        """Queue pre-encoded bytes as they are (floods, unfinished frames)."""
        if self.is_open:
            self.writer.write(data)

    async def flush(self, within: float) -> bool:
        """Wait until the transport took our data; False if the server did not read it in time."""
        try:
            await asyncio.wait_for(self.writer.drain(), within)
        except (TimeoutError, OSError, RuntimeError):
            return False
        return True

    def abort(self) -> None:
        """Drop the connection at once (RST), whatever is queued."""
        self.writer.transport.abort()
        if self.reading is not None:
            self.reading.cancel()
        self._end("aborted")

    async def close(self, within: float = 1.0) -> None:
        """A polite close: close frame, wait briefly for the server's, then drop the socket."""
        if self.is_open:
            self.send(CLOSE, struct.pack("!H", 1000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), within)
        self.abort()

    def _end(self, why: str) -> None:
        if not self.closed.is_set():
            self.ended, self.ended_at = why, time.monotonic()
            self.closed.set()

    async def _read(self, parse: bool) -> None:
        """Read until the peer is done; frames are handled only when `parse` (else just counted)."""
        buffer = bytearray()
        pos = 0
        try:
            while chunk := await self.reader.read(READ_CHUNK):
                self.received_bytes += len(chunk)
                if not parse:
                    continue
                buffer += chunk
                pos = self._parse(buffer, pos)
                if self.closed.is_set():
                    return
                if pos > READ_CHUNK:
                    del buffer[:pos]
                    pos = 0
            self._end("eof")
        except OSError:
            self._end("reset")
        except asyncio.CancelledError:
            self._end("cancelled")
            raise

    def _parse(self, buffer: bytearray, pos: int) -> int:
        """Handle every complete server frame from `pos`; the position after the last one."""
        while (frame := split_frame(buffer, pos)) is not None:
            opcode, payload, pos = frame
            self._frame(opcode, payload)
            if self.closed.is_set():
                break
        return pos

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == PING and self.auto_pong:
            self.send(PONG, payload)
        elif opcode == CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_reason = payload[2:].decode("utf-8", "replace")
            with contextlib.suppress(OSError, RuntimeError):
                self.send(CLOSE, payload[:2])
            self._end("close")
            return
        if self.on_frame is not None:
            self.on_frame(self, opcode, payload)

    def outcome(self) -> str:
        """How the connection ended, for a report: close code and reason, eof or reset."""
        if self.close_code is not None:
            reason = f" {self.close_reason[:60]}" if self.close_reason else ""
            return f"closed {self.close_code}{reason}"
        return self.ended or "open"
