"""Fuzz a running gischat at the socket, with innocent clients beside it, and print what happened.

    python bench/fuzz.py --minutes 3                 # starts `python -m gischat` on a free port
    python bench/fuzz.py --minutes 1 --url http://127.0.0.1:8000 --log server.log
    python bench/fuzz.py --minutes 2 --seed 7 --env ALLOW_SCRIPTS=true --env REPLY_THREADS=true

The fuzzer (from 127.0.0.10, `--workers` connections at a time) opens connection after
connection to both routes (`/room/fuzz/ws`, `/channel/fuzz/ws`) and sends what no client library
would: real frames of both dialects with members dropped, replaced or retyped, bits flipped,
frames cut short, lengths that lie, unmasked, fragmented in order and out of it, huge declared
lengths, invalid UTF-8 (small and large messages), control frames of every kind, reserved
opcodes and bits, binary frames, large layers; one connection in eight starts with a garbage
or damaged upgrade head instead. Three in ten offer permessage-deflate: where the server takes it
(`--env WS_PER_MESSAGE_DEFLATE=true`), half their cases are compressed frames, valid, garbage that
does not inflate, a bomb (20 MB of text in 20 kB) or the compression bit on a ping. Each
connection ends one way or another (a close frame, a reset, a half-close, silence) and how the
server ended it is counted.

Beside it, in a process of their own (`--innocents`, so the fuzzer's work never delays them):
innocent clients of both dialects in the fuzzed room and in another one (`calm`), each sending
itself a stamped text every `--interval` seconds and timing the echo.

At the end: a table (frames and bytes the fuzzer sent, its connections and how they ended, the
innocents' messages sent, delivered and dropped, their round trips, the sockets the server still
counts once every client has gone) and whether the server's log holds a traceback ("Traceback",
"Logging error", "Exception"). The exit status is 1 unless no traceback, no innocent dropped, no
socket left, and the worst round trips within bench/hostile.py's bars (250 ms in the fuzzed
room, 100 ms in the other). The server the script starts logs every line (LOG_RATE lifted) to
bench/results/gischat-fuzz.log, so that no traceback hides behind the log's rate limit. Only
loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import uvloop
from harness import HOST, RESULTS_DIR, percentile, running, split_frame, tree_rss
from rawws import CLOSE, PING, TEXT, HandshakeRefused, WsClient, mask, open_tcp, status_of

FUZZ_SOURCE = "127.0.0.10"
INNOCENT_SOURCES = {"room": "127.0.0.2", "channel": "127.0.0.4"}
FUZZ_ROOM = "fuzz"
CALM_ROOM = "calm"
ROOMS = (FUZZ_ROOM, CALM_ROOM)
CONT, BINARY, PONG = 0x0, 0x2, 0xA
TRACEBACK = re.compile(rb"Traceback|Logging error|Exception")
# Bars of bench/hostile.py: worst round trip in the attacked room and in another one.
SAME_ROOM_BAR_MS = 250.0
OTHER_ROOM_BAR_MS = 100.0
ECHO_GRACE = 3.0  # after the last text, how long an echo may still come
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mOwbnIDAAH/AQTX7nkhAAAAAElFTkSuQmCC"


def ws_path(dialect: str, room: str) -> str:
    return f"/{dialect}/{room}/ws"


# --------------------------------------------------------------------------- what the fuzzer sends


def valid_message(rng: random.Random, author: str) -> dict[str, Any]:
    """A frame of either dialect the server accepts (channel-only types included)."""
    point = [rng.uniform(-180, 180), rng.uniform(-90, 90)]
    layer = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": point}, "properties": {"n": 1}}
        ],
    }
    crs = {"crs_wkt": 'GEOGCRS["WGS 84"]', "crs_authid": "EPSG:4326"}
    return rng.choice(
        [
            {"type": "text", "author": author, "avatar": None, "text": "fuzz"},
            {"type": "newcomer", "newcomer": author},
            {"type": "like", "liker_author": author, "liked_author": "someone", "message": "fuzz"},
            {"type": "image", "author": author, "avatar": None, "image_data": PNG},
            {"type": "geojson", "author": author, "avatar": None, "layer_name": "l", **crs, "geojson": layer},
            {"type": "crs", "author": author, "avatar": None, **crs},
            {
                "type": "bbox",
                "author": author,
                "avatar": None,
                **crs,
                "xmin": 0,
                "xmax": 1,
                "ymin": 0,
                "ymax": 1,
            },
            {"type": "position", "author": author, "avatar": None, **crs, "x": 2.35, "y": 48.85},
            {
                "type": "model",
                "author": author,
                "avatar": None,
                "model_name": "m",
                "model_group": None,
                "raw_xml": "<x/>",
            },
            {"type": "script", "author": author, "avatar": None, "name": "s", "raw_pycode": "print(1)"},
            {"type": "exiter", "exiter": author},
            {"type": "nb_users", "nb_users": 1},
        ]
    )


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(10 if depth < 3 else 7)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 2**63 - 1, 2**64 - 1, -(2**63), 10**30])
    if choice == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, 3.14])
    if choice in (4, 5, 6):
        return rng.choice(["", "x", "a" * 300, "é☃🌍", "\u0000", "../../etc", "text", "geojson", "[1,2]"])
    if choice in (7, 8):
        return [junk_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["type", "features", "a", "coordinates"]): junk_value(rng, depth + 1)}


def mutated_message(rng: random.Random, author: str) -> bytes:
    """A valid frame's JSON with members dropped, replaced, added or retyped, or its text damaged."""
    message = valid_message(rng, author)
    for _ in range(rng.randrange(1, 4)):
        action = rng.randrange(5)
        keys = sorted(message)
        if action == 0 and keys:
            del message[rng.choice(keys)]
        elif action == 1 and keys:
            message[rng.choice(keys)] = junk_value(rng)
        elif action == 2:
            message[rng.choice(["type", "in_reply_to_id", "extra", "geojson"])] = junk_value(rng)
        elif action == 3:
            message["type"] = rng.choice(["text", "image", "geojson", "position", "unknown", "", "exiter"])
        else:
            message["author"] = rng.choice(["ab", "x" * 40, "a b", "Jane/../", author.upper(), "\uff26ull"])
    text = json.dumps(message, ensure_ascii=False).encode()  # orjson refuses integers past 64 bits
    if rng.random() < 0.3:  # the text itself damaged: cut, or a byte changed
        at = rng.randrange(len(text))
        text = (
            text[:at] if rng.random() < 0.5 else text[:at] + bytes([rng.randrange(32, 127)]) + text[at + 1 :]
        )
    return text or b"{"


def large_layer(rng: random.Random, author: str, size: int) -> bytes:
    """A layer of about `size` bytes: a MultiPoint of many positions (its vertex count checked)."""
    count = size // 24
    coordinates = ",".join(f"[{rng.uniform(-180, 180):.6f},{rng.uniform(-90, 90):.6f}]" for _ in range(count))
    return (
        f'{{"type":"geojson","author":"{author}","avatar":null,"layer_name":"big",'
        f'"crs_wkt":"","crs_authid":"EPSG:4326","geojson":{{"type":"FeatureCollection","features":'
        f'[{{"type":"Feature","geometry":{{"type":"MultiPoint","coordinates":[{coordinates}]}},'
        f'"properties":null}}]}}}}'
    ).encode()


def header(opcode: int, length: int, *, fin: bool = True, key: bytes | None = b"", rsv: int = 0) -> bytes:
    """A frame header; `key` b"": a fresh masking key, None: unmasked."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    masked = 0 if key is None else 0x80
    if length < 126:
        start = struct.pack("!BB", first, masked | length)
    elif length < 1 << 16:
        start = struct.pack("!BBH", first, masked | 126, length)
    else:
        start = struct.pack("!BBQ", first, masked | 127, length)
    return start + (b"" if key is None else key)


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    key = os.urandom(4) if masked else None
    body = mask(payload, key) if key is not None else payload
    return header(opcode, len(payload), fin=fin, key=key, rsv=rsv) + body


INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
CLOSE_CODES = [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011, 1015, 999, 2999, 3000, 4999, 5000, 65535]


def fuzz_frames(rng: random.Random, author: str) -> tuple[str, list[bytes]]:
    """One fuzz case: its name, and the chunks to write (each written, then a short pause)."""
    case = rng.choices(
        [
            "json", "valid", "bitflip", "truncate", "bogus_length", "unmasked", "fragmented",
            "bad_fragments", "huge", "utf8", "control", "reserved", "binary", "large",
        ],
        weights=[30, 10, 8, 5, 4, 3, 6, 4, 3, 5, 8, 3, 3, 2],
    )[0]  # fmt: skip
    message = mutated_message(rng, author)
    if case == "json":
        return case, [frame(TEXT, message)]
    if case == "valid":
        return case, [frame(TEXT, orjson.dumps(valid_message(rng, author)))]
    if case == "bitflip":
        flipped = bytearray(frame(TEXT, message))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(min(len(flipped), 20) if rng.random() < 0.5 else len(flipped))
            flipped[at] ^= 1 << rng.randrange(8)
        return case, [bytes(flipped)]
    if case == "truncate":
        whole = frame(TEXT, message)
        return case, [
            whole[: rng.randrange(1, len(whole))],
            frame(TEXT, orjson.dumps(valid_message(rng, author))),
        ]
    if case == "bogus_length":
        declared = max(0, len(message) + rng.choice([-5, -1, 1, 7, 200, 70_000]))
        return case, [header(TEXT, declared, key=os.urandom(4)) + message]
    if case == "unmasked":
        return case, [frame(TEXT, message, masked=False)]
    if case == "fragmented":  # valid: pieces in order, control frames between them
        cuts = sorted(rng.sample(range(1, len(message)), min(len(message) - 1, rng.randrange(1, 5))))
        pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=False)]
        chunks = []
        for index, piece in enumerate(pieces):
            opcode = TEXT if index == 0 else CONT
            chunks.append(frame(opcode, piece, fin=index == len(pieces) - 1))
            if rng.random() < 0.3:
                chunks.append(frame(PING, b"p"))
        return case, chunks
    if case == "bad_fragments":
        return (
            case,
            rng.choice(
                [
                    [frame(CONT, message)],  # a continuation with nothing to continue
                    [
                        frame(TEXT, message[:5], fin=False),
                        frame(TEXT, message[5:]),
                    ],  # a new message inside one
                    [frame(PING, b"x", fin=False)],  # a fragmented control frame
                    [frame(TEXT, message[:5], fin=False), frame(BINARY, b"\x00", fin=True)],
                    [frame(TEXT, b"", fin=False)] * 50 + [frame(CONT, b"{}")],  # many empty fragments
                ]
            ),
        )
    if case == "huge":
        length = rng.choice([17 * 1024 * 1024, 2**31, 2**63 - 1, 2**64 - 1])
        return case, [header(rng.choice([TEXT, BINARY, CONT]), length, key=os.urandom(4)) + message]
    if case == "utf8":
        bad = rng.choice(INVALID_UTF8)
        at = rng.randrange(len(message))
        payload = message[:at] + bad + message[at:]
        if rng.random() < 0.2:  # a large message: checked by pieces on its way to a worker
            payload = large_layer(rng, author, 1_200_000)
            at = rng.randrange(len(payload))
            payload = payload[:at] + bad + payload[at:]
        if rng.random() < 0.3:  # across fragments
            return case, [frame(TEXT, payload[: at + 1], fin=False), frame(CONT, payload[at + 1 :])]
        return case, [frame(TEXT, payload)]
    if case == "control":
        code = rng.choice(CLOSE_CODES)
        return case, [
            rng.choice(
                [
                    frame(PING, os.urandom(rng.randrange(126))),
                    frame(PING, os.urandom(126 + rng.randrange(200))),  # too long for a control frame
                    frame(PONG, os.urandom(rng.randrange(20))),
                    frame(
                        CLOSE, struct.pack("!H", code) + rng.choice([b"", b"bye", b"\xff\xfe", b"x" * 123])
                    ),
                    frame(CLOSE, b"\x03"),  # a one-byte close payload
                ]
            )
        ]
    if case == "reserved":
        return case, [frame(rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xF]), b"x")] if rng.random() < 0.5 else [
            frame(TEXT, message, rsv=rng.randrange(1, 8))
        ]
    if case == "binary":
        return case, [frame(BINARY, message)]
    size = rng.choice([70_000, 300_000, 1_200_000])  # a worker's frame, a handed-over one
    return case, [frame(TEXT, large_layer(rng, author, size))]


DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
_BOMB: list[bytes] = []


def deflated(payload: bytes) -> bytes:
    """`payload` compressed as permessage-deflate wants it (RFC 7692: raw deflate, a window the
    server allows, the final empty block's 00 00 ff ff taken off)."""
    compressor = zlib.compressobj(wbits=-12)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def deflate_frames(rng: random.Random, author: str) -> tuple[str, list[bytes]]:
    """Compressed frames, for a connection that negotiated permessage-deflate: valid ones, data that
    does not inflate, a bomb (20 MB of text in 20 kB), the compression bit on a control frame."""
    case = rng.choice(["deflate", "deflate_garbage", "deflate_bomb", "deflate_control"])
    if case == "deflate":
        return case, [frame(TEXT, deflated(mutated_message(rng, author)), rsv=4)]
    if case == "deflate_garbage":
        return case, [frame(TEXT, os.urandom(rng.randrange(1, 64)), rsv=4)]
    if case == "deflate_bomb":
        if not _BOMB:
            _BOMB.append(deflated(b'{"type":"text","author":"x","text":"' + b"a" * 20_000_000 + b'"}'))
        return case, [frame(TEXT, _BOMB[0], rsv=4)]
    return case, [frame(PING, deflated(b"ping"), rsv=4)]


def garbage_head(rng: random.Random, path: str) -> bytes:
    """A damaged or hostile upgrade request (or no HTTP at all)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {HOST}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    action = rng.randrange(9)
    if action == 0:
        return os.urandom(rng.randrange(1, 200))
    if action == 1:
        del lines[rng.randrange(1, len(lines))]
    elif action == 2:
        lines[rng.randrange(1, len(lines))] += rng.choice([", x", "\x00", " \t", "é"])
    elif action == 3:
        lines[0] = (
            rng.choice(["POST", "GET", "get", "PRI"])
            + f" {path} "
            + rng.choice(["HTTP/1.0", "HTTP/2", "HTTP/1.1"])
        )
    elif action == 4:
        lines.insert(1, "X-Big: " + "a" * rng.choice([1000, 70_000]))
    elif action == 5:
        lines[4] = "Sec-WebSocket-Key: " + rng.choice(["", "short", key + "=", key[:-2]])
    elif action == 6:
        lines.insert(rng.randrange(1, len(lines)), lines[rng.randrange(1, len(lines))])  # a header twice
    elif action == 7:
        return (
            f"GET /status HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
            + "\r\n".join(lines).encode()
            + b"\r\n\r\n"
        )
    else:
        lines[0] = (
            f"GET /{rng.choice(['room', 'channel'])}/{'%ff%00' if rng.random() < 0.5 else 'nowhere'}/ws HTTP/1.1"
        )
    head = "\r\n".join(lines).encode(errors="surrogateescape") + b"\r\n\r\n"
    if rng.random() < 0.2:
        head = head[: rng.randrange(len(head))]
    return head


# --------------------------------------------------------------------------- the fuzzer's connections


@dataclass
class FuzzStats:
    frames: int = 0
    bytes: int = 0
    connections: int = 0
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


async def fuzz_connection(rng: random.Random, port: int, stats: FuzzStats, number: int) -> None:
    dialect = rng.choice(["room", "channel"])
    path = ws_path(dialect, FUZZ_ROOM)
    author = f"fuzz{number % 997}"
    try:
        reader, writer = await open_tcp(port, FUZZ_SOURCE, 5.0)
    except (OSError, TimeoutError):
        stats.handshakes["connect failed"] += 1
        return
    stats.connections += 1
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


async def fuzz(port: int, seconds: float, workers: int, seed: int) -> FuzzStats:
    stats = FuzzStats()
    until = time.monotonic() + seconds
    counter = iter(range(1 << 62))

    async def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        while time.monotonic() < until:
            await fuzz_connection(rng, port, stats, next(counter))

    await asyncio.gather(*(worker(index) for index in range(workers)))
    return stats


# --------------------------------------------------------------------------- innocents (own process)


class Innocent:
    """A client of one dialect in one room, timing the echo of its own stamped texts."""

    def __init__(self, port: int, dialect: str, room: str, index: int) -> None:
        self.port, self.dialect, self.room = port, dialect, room
        self.nickname = f"calm{index}{dialect[0]}{room[0]}{os.getpid() % 1000}"
        self.client: WsClient | None = None
        self.sent: dict[int, float] = {}
        self.rtt: dict[int, float] = {}
        self.refusals: Counter[str] = Counter()
        self.disconnects: list[str] = []
        self.registered = asyncio.Event()

    def on_frame(self, client: WsClient, opcode: int, payload: bytes) -> None:
        if opcode != TEXT or len(payload) > 4096:
            return
        message = orjson.loads(payload)
        kind = message.get("type")
        if kind == "newcomer" and message.get("newcomer") == self.nickname:
            self.registered.set()
        elif kind == "uncompliant":
            self.refusals[str(message.get("reason"))[:80]] += 1
        elif kind == "text" and message.get("author") == self.nickname:
            seq = str(message.get("text", "")).partition(" ")[0]
            if seq.isdigit() and int(seq) in self.sent and int(seq) not in self.rtt:
                self.rtt[int(seq)] = (time.monotonic() - self.sent[int(seq)]) * 1000

    async def connect(self) -> None:
        source = INNOCENT_SOURCES[self.dialect]
        self.client = await WsClient.open(
            self.port, ws_path(self.dialect, self.room), source, on_frame=self.on_frame
        )
        self.client.start()
        self.client.send(TEXT, orjson.dumps({"type": "newcomer", "newcomer": self.nickname}))
        await asyncio.wait_for(self.registered.wait(), 10.0)

    async def chat(self, until: float, interval: float, offset: float) -> None:
        start, seq = time.monotonic() + offset, 0
        while (due := start + seq * interval) < until:
            await asyncio.sleep(max(due - time.monotonic(), 0))
            client = self.client
            if client is None or not client.is_open:
                self.disconnects.append(client.outcome() if client is not None else "never connected")
                with contextlib.suppress(OSError, TimeoutError, HandshakeRefused):
                    self.registered.clear()
                    await self.connect()
                continue
            self.sent[seq] = time.monotonic()
            text = {"type": "text", "author": self.nickname, "avatar": None, "text": f"{seq} innocent"}
            client.send(TEXT, orjson.dumps(text))
            seq += 1


async def innocents(port: int, seconds: float, interval: float, per_dialect: int) -> dict[str, Any]:
    clients = [
        Innocent(port, dialect, room, index)
        for room in ROOMS
        for dialect in ("room", "channel")
        for index in range(per_dialect)
    ]
    await asyncio.gather(*(client.connect() for client in clients))
    print("ready", flush=True)
    until = time.monotonic() + seconds
    spread = interval / len(clients)
    await asyncio.gather(*(c.chat(until, interval, i * spread) for i, c in enumerate(clients)))
    await asyncio.sleep(ECHO_GRACE)
    report: dict[str, Any] = {}
    for room in ROOMS:
        members = [client for client in clients if client.room == room]
        report[room] = {
            "sent": sum(len(c.sent) for c in members),
            "delivered": sum(len(c.rtt) for c in members),
            "rtt": [rtt for c in members for rtt in c.rtt.values()],
            "refusals": dict(sum((c.refusals for c in members), Counter())),
            "disconnects": [event for c in members for event in c.disconnects],
        }
    for client in clients:
        if client.client is not None:
            await client.client.close(0.5)
    return report


# --------------------------------------------------------------------------- the run and its table


async def leftovers(port: int, within: float = 10.0) -> int:
    """Sockets still in the rooms once every client has gone (none may be: each one left is a
    socket the server lost track of), waited for up to `within` seconds."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=5.0) as http:
        while True:
            rooms = (await http.get(f"http://{HOST}:{port}/status")).json()["rooms"]
            left = sum(int(room["nb_connected_users"]) for room in rooms)
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)


def log_size(log: Path | None) -> int:
    return log.stat().st_size if log is not None and log.exists() else 0


def tracebacks(log: Path | None, start: int) -> list[str]:
    """Lines of the server's log (written after byte `start`) that show a traceback."""
    if log is None or not log.exists():
        return []
    with log.open("rb") as file:
        file.seek(start)
        data = file.read()
    return [line.decode(errors="replace")[:160] for line in data.splitlines() if TRACEBACK.search(line)]


def table(
    stats: FuzzStats,
    report: dict[str, Any],
    found: list[str],
    seconds: float,
    rss: tuple[int, int],
    left: int,
) -> str:
    def counts(counter: Counter[str]) -> str:
        return ", ".join(f"{key} {value:,}" for key, value in counter.most_common()) or "none"

    rows = [
        ("duration", f"{seconds:.0f} s"),
        ("fuzzer frames sent", f"{stats.frames:,}"),
        ("fuzzer bytes sent", f"{stats.bytes:,}"),
        ("fuzz cases", counts(stats.cases)),
        ("fuzzer connections opened", f"{stats.connections:,}"),
        ("their handshakes answered", counts(stats.handshakes)),
        ("how the fuzzer ended them", counts(stats.ended_by_us)),
        ("how the server ended them", counts(stats.ended_by_server)),
    ]
    for room, bar in ((FUZZ_ROOM, SAME_ROOM_BAR_MS), (CALM_ROOM, OTHER_ROOM_BAR_MS)):
        data = report[room]
        rtt = data["rtt"]
        dropped = data["sent"] - data["delivered"]
        label = "fuzzed room" if room == FUZZ_ROOM else "other room"
        rows += [
            (
                f"innocents, {label}: sent / delivered / dropped",
                f"{data['sent']:,} / {data['delivered']:,} / {dropped:,}",
            ),
            (
                f"innocents, {label}: round trip p50 / p99 / max (bar {bar:.0f})",
                f"{percentile(rtt, 50):.1f} / {percentile(rtt, 99):.1f} / {max(rtt, default=float('nan')):.1f} ms",
            ),
            (
                f"innocents, {label}: refusals, disconnects",
                f"{sum(data['refusals'].values())}, {len(data['disconnects'])}",
            ),
        ]
    rows += [
        ("sockets still in the rooms once everybody left", f"{left}"),
        ("server RSS (its process tree) before / after", f"{rss[0] / 1e6:.0f} / {rss[1] / 1e6:.0f} MB"),
        ("tracebacks in the server's log", f"{len(found)}" + (f" (first: {found[0]})" if found else "")),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'what'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


async def innocent_process(port: int, seconds: float, args: argparse.Namespace) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--innocents",
        "--port",
        str(port),
        "--seconds",
        str(seconds),
        "--interval",
        str(args.interval),
        "--per-dialect",
        str(args.per_dialect),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line.strip() != b"ready":
        raise RuntimeError(f"the innocents did not start: {line!r}")
    return proc


async def run(args: argparse.Namespace) -> int:
    seconds = args.minutes * 60

    async def against(port: int, log: Path | None, pid: int | None) -> int:
        import psutil

        tree = psutil.Process(pid) if pid is not None else None
        before = tree_rss(tree) if tree is not None else 0
        start = log_size(log)
        innocent = await innocent_process(port, seconds, args)
        stats = await fuzz(port, seconds, args.workers, args.seed)
        assert innocent.stdout is not None
        out = await asyncio.wait_for(innocent.stdout.read(), ECHO_GRACE + 30)
        await innocent.wait()
        report = json.loads(out.decode().strip().splitlines()[-1])
        left = await leftovers(port)
        after = tree_rss(tree) if tree is not None else 0
        found = tracebacks(log, start)
        print(table(stats, report, found, seconds, (before, after), left), flush=True)
        worst = max(max(report[FUZZ_ROOM]["rtt"], default=0), 0)
        calm = max(report[CALM_ROOM]["rtt"], default=0)
        dropped = sum(report[room]["sent"] - report[room]["delivered"] for room in ROOMS)
        failed = found or dropped or left or worst > SAME_ROOM_BAR_MS or calm > OTHER_ROOM_BAR_MS
        return 1 if failed else 0

    if args.url:
        parts = urlsplit(args.url)
        if parts.hostname != HOST or parts.port is None:
            raise SystemExit(f"--url must be http://{HOST}:PORT (the fuzzer and innocents use 127.0.0.x)")
        return await against(parts.port, Path(args.log) if args.log else None, None)
    env = {"LOG_RATE": "1000000", "ROOMS": ",".join(ROOMS), **dict(item.split("=", 1) for item in args.env)}
    async with running("gischat", "fuzz", rooms=ROOMS, extra_env=env) as server:
        return await against(server.port, server.log_path, server.proc.pid)


def cli() -> None:
    parser = argparse.ArgumentParser(description="fuzz gischat at the socket, innocents beside it")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--url", help=f"a running server, http://{HOST}:PORT (default: start one)")
    parser.add_argument("--log", help="that server's log file, searched for tracebacks")
    parser.add_argument("--workers", type=int, default=4, help="fuzz connections at a time")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting of the server it starts"
    )
    parser.add_argument(
        "--interval", type=float, default=0.5, help="seconds between two texts of an innocent"
    )
    parser.add_argument("--per-dialect", type=int, default=2, help="innocents per dialect and room")
    parser.add_argument("--innocents", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.innocents:
        report = uvloop.run(innocents(args.port, args.seconds, args.interval, args.per_dialect))
        sys.stdout.write(json.dumps(report) + "\n")
        return
    RESULTS_DIR.mkdir(exist_ok=True)
    raise SystemExit(uvloop.run(run(args)))


if __name__ == "__main__":
    cli()
