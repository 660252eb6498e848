"""The fuzzer's connections for bench/fuzz.py: each opens, sends its cases, ends, and is counted.

`fuzz` runs `workers` connections at a time from FUZZ_SOURCE until the time is up, each to the
first node or (one time in four, with two nodes) the other; what they send comes from
bench/fuzzcases.py. Everything the server says back is read (a socket that is never read would
be the slow reader bench/hostile.py measures, not a fuzz case) and only its close code, or how
the stream ended, is kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

from fuzzcases import DEFLATE_OFFER, deflate_frames, frame, fuzz_frames, garbage_head
from harness import HOST, split_frame
from innocents import FUZZ_ROOM, ws_path
from rawws import CLOSE, open_tcp, status_of

FUZZ_SOURCE = "127.0.0.10"


@dataclass
class FuzzStats:
    frames: int = 0
    bytes: int = 0
    connections: Counter[str] = field(default_factory=Counter)  # by node
    cases: Counter[str] = field(default_factory=Counter)
    handshakes: Counter[str] = field(default_factory=Counter)  # HTTP status of the answer
    ended_by_server: Counter[str] = field(default_factory=Counter)  # close code, eof, reset
    ended_by_us: Counter[str] = field(default_factory=Counter)


class Reader:
    """Drain what the server sends to a fuzz connection; note its close frame, or eof, or reset."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.outcome = ""
        self.done = asyncio.Event()
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        buffer, pos = bytearray(), 0
        try:
            while chunk := await self.reader.read(1 << 18):
                buffer += chunk
                while (parsed := split_frame(buffer, pos)) is not None:
                    opcode, payload, pos = parsed
                    if opcode == CLOSE and not self.outcome:
                        self.outcome = (
                            str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "1005"
                        )
                if pos > 1 << 20:
                    del buffer[:pos]
                    pos = 0
            self.outcome = self.outcome or "eof"
        except OSError:
            self.outcome = self.outcome or "reset"
        finally:
            self.done.set()


async def fuzz_connection(rng: random.Random, ports: list[int], stats: FuzzStats, number: int) -> None:
    """One connection to the first node (to another one, one time in four), its cases, its end."""
    node = 0 if len(ports) == 1 or rng.random() < 0.75 else rng.randrange(1, len(ports))
    port = ports[node]
    dialect = rng.choice(["room", "channel"])
    path = ws_path(dialect, FUZZ_ROOM)
    author = f"fuzz{number % 997}"
    try:
        reader, writer = await open_tcp(port, FUZZ_SOURCE, 5.0)
    except (OSError, TimeoutError):
        stats.handshakes["connect failed"] += 1
        return
    stats.connections[f"node{node}"] += 1
    try:
        if rng.random() < 0.125:
            head = garbage_head(rng, path)
            writer.write(head)
            stats.bytes += len(head)
            stats.cases["upgrade head"] += 1
        else:
            offer = DEFLATE_OFFER if rng.random() < 0.3 else ""  # taken where the server enables it
            head = (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
                f"{offer}\r\n"
            ).encode()
            writer.write(head)
        try:
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            stats.handshakes["no answer (closed)"] += 1
            return
        except TimeoutError:
            stats.handshakes["no answer (timeout)"] += 1
            return
        status = status_of(answer)
        stats.handshakes[str(status)] += 1
        if status != 101:
            return
        deflated = b"permessage-deflate" in answer.lower()
        server = Reader(reader)
        for _ in range(rng.randrange(1, 12)):
            if server.done.is_set() or writer.transport.is_closing():
                break
            case, chunks = (
                deflate_frames(rng, author) if deflated and rng.random() < 0.5 else fuzz_frames(rng, author)
            )
            stats.cases[case] += 1
            for chunk in chunks:
                if writer.transport.is_closing():
                    break
                writer.write(chunk)
                stats.frames += 1
                stats.bytes += len(chunk)
                with contextlib.suppress(TimeoutError, OSError, RuntimeError):
                    await asyncio.wait_for(writer.drain(), 2.0)
            await asyncio.sleep(rng.uniform(0, 0.03))
        ending = (
            "waited"
            if server.done.is_set()
            else rng.choice(["close frame", "reset", "half-close", "silence"])
        )
        if writer.transport.is_closing():
            ending = "waited"
        if ending == "close frame":
            writer.write(frame(CLOSE, struct.pack("!H", 1000)))
        elif ending == "half-close":
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
        elif ending == "reset":
            writer.transport.abort()
        stats.ended_by_us[ending] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.done.wait(), 1.5 if ending != "silence" else 0.5)
        stats.ended_by_server[server.outcome or ("reset by us" if ending == "reset" else "still open")] += 1
        server.task.cancel()
    finally:
        writer.transport.abort()


async def fuzz(ports: list[int], seconds: float, workers: int, seed: int) -> FuzzStats:
    stats = FuzzStats()
    until = time.monotonic() + seconds
    counter = iter(range(1 << 62))

    async def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        while time.monotonic() < until:
            await fuzz_connection(rng, ports, stats, next(counter))

    await asyncio.gather(*(worker(index) for index in range(workers)))
    return stats
