"""Isolation scenarios of `bench/run.py`: what one client's load does to everybody else.

5. a client that never reads, beside 20 readers of a paced sender (texts plus 60 kB CRS
   messages, so the stalled socket's ~3 MB of loopback buffers fill within seconds).
6. 4000x3000 JPEG photos sent in one room while another room does round trips.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import statistics
import time
from dataclasses import dataclass
from typing import Any

import orjson
from harness import (
    HOST,
    OTHER_ROOM,
    PAD,
    PHOTO_ROOM,
    STALL_ROOM,
    CpuMeter,
    Results,
    Server,
    Tally,
    Value,
    connect,
    drop,
    joined_room,
    ms,
    num,
    paced_sends,
    percentile,
    split_frame,
    text_message,
    warm_up,
)

# CI type-checks bench/ with only the test and dev extras installed, i.e. without picows.
from picows import WSMsgType  # type: ignore[import-not-found, unused-ignore]

# Scenario sizes and bounds (every wait below is bounded by one of these).
STALL_READERS, STALL_RATE, STALL_BASE_SECONDS, STALL_SECONDS, STALL_GIVE_UP = 20, 200, 2.0, 5.0, 5.0
STALL_BULK_RATE, STALL_BULK_BYTES = 30, 60_000
STALL_RCVBUF = 4096
PHOTO_COUNT, PHOTO_TIMEOUT = 5, 20.0


@dataclass
class StalledSocket:
    """A raw websocket client that completes the handshake and then never reads again."""

    sock: socket.socket
    buffer: bytearray

    @classmethod
    async def open(cls, port: int, path: str) -> StalledSocket:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Small receive window, set before connecting so the window scale stays small too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL_RCVBUF)
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5.0)
            if not chunk:
                raise ConnectionError("stalled client: connection closed during the handshake")
            buffer += chunk
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"stalled client: handshake refused: {head[:60]!r}")
        return cls(sock, bytearray(rest))

    async def drain(self, seconds: float) -> tuple[int, int | None]:
        """Read for at most `seconds`: chat messages received before the close frame, and its code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        texts, pos = 0, 0
        while True:
            pos, found, close_code = parse_frames(self.buffer, pos)
            texts += found
            if close_code is not None:
                return texts, close_code
            remaining = deadline - loop.time()
            if remaining <= 0:
                return texts, None
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), remaining)
            except (TimeoutError, OSError):
                return texts, None
            if not chunk:
                return texts, None
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def parse_frames(buffer: bytearray, pos: int) -> tuple[int, int, int | None]:
    """Parse complete server frames (unmasked) from `pos`: new position, chat messages, close code."""
    texts = 0
    while (frame := split_frame(buffer, pos)) is not None:
        opcode, payload, pos = frame
        if opcode == 0x1 and orjson.loads(payload).get("type") in ("text", "crs"):
            texts += 1
        elif opcode == 0x8:
            return pos, texts, int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return pos, texts, None


def bulk_message(author: str) -> dict[str, Any]:
    """A CRS message with a 60 kB WKT: valid for gischat (limit 64 kB), bulky for the buffers."""
    wkt = 'GEOGCRS["bench",' + "PARAMETER[0]," * (STALL_BULK_BYTES // 13) + "]"
    return {"type": "crs", "author": author, "avatar": None, "crs_wkt": wkt, "crs_authid": "EPSG:4326"}


async def scenario_stall(server: Server, results: Results) -> None:
    tally, peers = await joined_room(server, STALL_ROOM, STALL_READERS + 1)
    sender = peers[0]
    await warm_up(tally, peers)
    pad = (PAD * 10)[:200]
    bulk = orjson.dumps(bulk_message("bench0"))
    sent = {"texts": 0, "bulk": 0}

    async def bulk_sends(seconds: float) -> None:
        """The bulk stream, paced like the texts; it fills a stalled socket's buffers in ~2 s."""
        start = time.perf_counter()
        for seq in range(round(STALL_BULK_RATE * seconds)):
            delay = start + seq / STALL_BULK_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sender.transport is not None and not sender.gone:
                sender.transport.send(WSMsgType.TEXT, bulk)
                sent["bulk"] += 1

    async def phase(seconds: float) -> int:
        count = round(STALL_RATE * seconds)
        tally.record(count, peers)
        bulk_task = asyncio.create_task(bulk_sends(seconds))
        await paced_sends([sender], STALL_RATE, seconds, pad, sent)
        await bulk_task
        return count

    # Phase A: nobody stalls.
    await phase(STALL_BASE_SECONDS)
    await tally.texts_gate.wait(3.0)
    base = list(tally.latencies)
    base_p50, base_p99 = ms(percentile(base, 50)), ms(percentile(base, 99))
    results.put(server.kind, "stall_base_p99", Value(base_p99, f"{base_p50:.2f} / {base_p99:.2f}"))

    # Phase B: a client joins and never reads again.
    stalled = await StalledSocket.open(server.port, server.ws_path(STALL_ROOM))
    if not await tally.expect_users(STALL_READERS + 2, peers).wait(5.0):
        results.note(server.kind, "stall: the readers did not all see the stalled client join")
    sent["texts"] = sent["bulk"] = 0
    evicted: tuple[float, int] | None = None  # seconds into phase B, messages sent by then
    start = time.perf_counter()

    async def watch() -> None:
        """Poll /status for the stalled client leaving the room."""
        nonlocal evicted
        while evicted is None:
            await asyncio.sleep(0.1)
            if await server.count(STALL_ROOM) <= STALL_READERS + 1:
                evicted = (time.perf_counter() - start, sent["texts"] + sent["bulk"])

    watcher = asyncio.create_task(watch())
    count = await phase(STALL_SECONDS)
    last_send = time.perf_counter_ns()
    complete = await tally.texts_gate.wait(STALL_GIVE_UP, progress=lambda: tally.delivered, idle=1.0)
    # Stalled: the readers went a whole second without a delivery while texts were due.
    stalled_room = tally.max_gap > 1e9 or last_send - tally.last_ns > 1e9
    tally.recording = False
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    latencies = list(tally.latencies)  # every reader, and the sender's own echo
    delivered = tally.delivered
    received, close_code = await stalled.drain(1.0)
    stalled.close()

    p50, p99 = ms(percentile(latencies, 50)), ms(percentile(latencies, 99))
    expected = count * len(peers)
    if stalled_room:
        results.put(
            server.kind,
            "stall_p99",
            Value(
                None, f"stalled ({delivered / expected:.0%} delivered, gave up after {STALL_GIVE_UP:.0f} s)"
            ),
        )
    elif complete:
        results.put(server.kind, "stall_p99", Value(p99, f"{p50:.2f} / {p99:.2f}"))
    else:
        lost = expected - delivered
        results.put(server.kind, "stall_p99", Value(p99, f"{p50:.2f} / {p99:.2f} ({lost} deliveries lost)"))
    if close_code is not None:
        verdict = f"disconnected ({close_code}) after it got {received} msgs"
        if evicted is not None:
            verdict += f"; evicted {evicted[0]:.1f} s in, {evicted[1]} msgs sent by then"
    else:
        verdict = f"never disconnected ({received} msgs read when drained for 1 s)"
    results.put(server.kind, "stall_verdict", Value(None, verdict))
    total = sent["texts"] + sent["bulk"]
    results.note(
        server.kind,
        f"stall: {STALL_READERS} readers; sender: {STALL_RATE} texts/s (latency measured) + {STALL_BULK_RATE} "
        f"CRS msgs/s of {len(bulk) / 1000:.0f} kB (fills the stalled socket's ~3 MB of kernel buffers on "
        f"loopback in ~2 s). Without stall p50/p99 {ms(percentile(base, 50)):.2f}/{ms(percentile(base, 99)):.2f} ms; "
        f"with the stalled client p50/p99 {p50:.2f}/{p99:.2f} ms over {delivered:,}/{expected:,} text deliveries"
        + (
            f" — STALLED: the readers got nothing for over a second (gave up {STALL_GIVE_UP:.0f} s after the last send)"
            if stalled_room
            else (
                ""
                if complete
                else f" — {expected - delivered} text deliveries LOST (never arrived, no stall)"
            )
        )
        + f"; {total} msgs sent in phase B; stalled client: {verdict}",
    )
    drop(peers)


async def scenario_photo(server: Server, results: Results, photo_b64: str) -> None:
    tally = Tally(2)
    pinger = await connect(server.ws_url(OTHER_ROOM), tally)
    photographer = await connect(server.ws_url(PHOTO_ROOM), tally)
    samples: list[tuple[int, int]] = []  # (send time, round trip) in ns
    stop = asyncio.Event()

    async def ping() -> None:
        seq = 0
        while not stop.is_set():
            echo = pinger.expect("text")
            sent = time.perf_counter_ns()
            pinger.send(text_message("pinger", f"{sent} {seq}"))
            seq += 1
            try:
                samples.append((sent, await asyncio.wait_for(echo, 2.0) - sent))
            except TimeoutError:
                samples.append((sent, 2_000_000_000))

    pinging = asyncio.create_task(ping())
    await asyncio.sleep(0.5)  # baseline round trips
    meter = CpuMeter(server)
    times: list[float] = []
    window_start = time.perf_counter_ns()
    for _ in range(PHOTO_COUNT):
        arrival = photographer.expect("image")
        sent = time.perf_counter_ns()
        photographer.send(
            {"type": "image", "author": "photographer", "avatar": None, "image_data": photo_b64}
        )
        try:
            times.append((await asyncio.wait_for(arrival, PHOTO_TIMEOUT) - sent) / 1e9)
        except (TimeoutError, RuntimeError, ConnectionError) as exc:
            results.note(server.kind, f"photo: no broadcast back: {exc!r}")
            break
        await asyncio.sleep(0.1)
    window_end = time.perf_counter_ns()
    cpu = meter.describe()
    await asyncio.sleep(0.2)
    stop.set()
    await pinging
    drop([pinger, photographer])

    during = [rtt for sent, rtt in samples if window_start <= sent <= window_end]
    baseline = [rtt for sent, rtt in samples if sent < window_start]
    resized = "resized" if server.kind == "gischat" else "relayed as is, not resized"
    if times:
        results.put(
            server.kind,
            "photo_time",
            Value(statistics.median(times), f"{statistics.median(times):.3f} ({resized})"),
        )
    else:
        results.put(server.kind, "photo_time", Value(None, "failed"))
    results.put(server.kind, "photo_rtt_p99", num(ms(percentile(during, 99)), 2))
    results.put(server.kind, "photo_rtt_max", num(ms(max(during, default=0)), 2))
    results.note(
        server.kind,
        f"photo: {len(photo_b64) / 1e6:.1f} MB of base64 x {len(times)}, send→broadcast "
        + ", ".join(f"{t:.3f}" for t in times)
        + f" s ({resized}); other room: {len(during)} round trips during the photos, p50/p99/max "
        f"{ms(percentile(during, 50)):.2f}/{ms(percentile(during, 99)):.2f}/{ms(max(during, default=0)):.2f} ms "
        f"(before: p99 {ms(percentile(baseline, 99)):.2f} ms over {len(baseline)}); {cpu}",
    )
