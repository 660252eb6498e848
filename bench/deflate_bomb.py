"""How long a deflate bomb holds the event loop, as an innocent client sees it.

    python bench/deflate_bomb.py                          # this checkout's gischat
    python bench/deflate_bomb.py --tree /path/to/export   # another commit's, side by side

With WS_PER_MESSAGE_DEFLATE=true a client can send a few kilobytes that inflate to megabytes;
whatever inflates them does it on the event loop, where every other socket waits meanwhile.
bench/fuzz.py sends such bombs among hundreds of other cases, where their cost is hard to see;
here one probe client (in the next room) sends itself a text every `--interval` seconds
and times the echo, while a bomber opens connection after connection (permessage-deflate
offered) and sends one bomb on each, `--gap` seconds apart. Three phases of `--seconds` each:
no bomb; a bomb over MAX_FRAME_SIZE (20 MB of one letter in 20 kB, refused 1009 whatever
happens); a bomb just under it (16 MiB less 100 bytes: a message the server may accept).
The worst echo of a phase is about the longest stall of the loop.

The server is `python -m gischat` with its defaults but WS_PER_MESSAGE_DEFLATE=true and no
message or byte rates (a bomb a connection; the rates are not what is measured), from `--tree`
(first on its PYTHONPATH). Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import time
from collections import Counter
from pathlib import Path

import orjson
import uvloop
from fuzzcases import DEFLATE_OFFER, deflated, frame
from harness import BENCH_DIR, HOST, RESULTS_DIR, percentile, running, split_frame
from rawws import CLOSE, TEXT, WsClient, open_tcp, status_of

BOMBER, PROBE = "127.0.0.10", "127.0.0.2"
ROOMS = ("bombed", "neighbours")
PREFIX, SUFFIX = b'{"type":"text","author":"bomber","avatar":null,"text":"', b'"}'


def bomb(inflated: int) -> bytes:
    """A text message of `inflated` bytes, one letter repeated, deflated."""
    return deflated(PREFIX + b"a" * (inflated - len(PREFIX) - len(SUFFIX)) + SUFFIX)


async def close_code(reader: asyncio.StreamReader, within: float) -> str:
    """The code of the server's close frame, or how the stream ended."""
    buffer = bytearray()
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(1 << 16):
                buffer += chunk
                pos = 0
                while (parsed := split_frame(buffer, pos)) is not None:
                    opcode, payload, pos = parsed
                    if opcode == CLOSE:
                        return str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "1005"
                del buffer[:pos]
    except TimeoutError:
        return "still open"
    except OSError:
        return "reset"
    return "eof"


async def bomber(port: int, payload: bytes, gap: float, stop: asyncio.Event, ends: Counter[str]) -> None:
    """One bomb per connection until `stop`; how the server ended each one goes to `ends`."""
    path = f"/room/{ROOMS[0]}/ws"
    while not stop.is_set():
        reader, writer = await open_tcp(port, BOMBER, 5.0)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{DEFLATE_OFFER}\r\n".encode()
        )
        answer = await reader.readuntil(b"\r\n\r\n")
        if status_of(answer) != 101 or b"permessage-deflate" not in answer.lower():
            raise SystemExit(f"the server did not take permessage-deflate: {answer[:200]!r}")
        writer.write(frame(TEXT, payload, rsv=4))
        ends[await close_code(reader, 5.0)] += 1
        writer.transport.abort()
        await asyncio.sleep(gap)


async def probe(port: int, seconds: float, interval: float, nickname: str) -> list[float]:
    """Echo times (ms) of a client sending itself a text every `interval` s for `seconds` s (a
    nickname of its own: the last phase's may not be free yet)."""
    sent: dict[int, float] = {}
    echoes: list[float] = []
    all_back = asyncio.Event()

    def on_frame(client: WsClient, opcode: int, payload: bytes) -> None:
        if opcode == TEXT and f'"author":"{nickname}"'.encode() in payload:
            seq = int(orjson.loads(payload)["text"])
            echoes.append((time.monotonic() - sent.pop(seq)) * 1000)
            if not sent:
                all_back.set()

    client = await WsClient.open(port, f"/room/{ROOMS[1]}/ws", PROBE, on_frame=on_frame)
    client.start()
    client.send(TEXT, orjson.dumps({"type": "newcomer", "newcomer": nickname}))
    until, seq = time.monotonic() + seconds, 0
    while time.monotonic() < until:
        sent[seq] = time.monotonic()
        message = {"type": "text", "author": nickname, "avatar": None, "text": str(seq)}
        client.send(TEXT, orjson.dumps(message))
        seq += 1
        await asyncio.sleep(interval)
    all_back.clear()
    if sent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_back.wait(), 3.0)
    await client.close(0.5)
    if sent:
        raise SystemExit(f"{len(sent)} echoes never came")
    return echoes


async def run(args: argparse.Namespace, tree: Path) -> None:
    env = {"WS_PER_MESSAGE_DEFLATE": "true", "MESSAGE_RATE": "0", "BYTE_RATE": "0", "PYTHONPATH": str(tree)}
    phases = {
        "no bomb": None,
        "20 MB in 20 kB (over MAX_FRAME_SIZE)": bomb(20_000_000),
        "16 MiB less 100 bytes": bomb(16 * 1024 * 1024 - 100),
    }
    rows = []
    async with running("gischat", "deflate-bomb", rooms=ROOMS, extra_env=env) as server:
        for phase, (name, payload) in enumerate(phases.items()):
            stop, ends = asyncio.Event(), Counter[str]()
            task = (
                asyncio.create_task(bomber(server.port, payload, args.gap, stop, ends)) if payload else None
            )
            echoes = await probe(server.port, args.seconds, args.interval, f"probe{phase}")
            stop.set()
            if task is not None:
                await task
            closed = ", ".join(f"{code} {n}" for code, n in ends.most_common()) or "-"
            rows.append(
                f"| {name} | {len(payload or b''):,} | {sum(ends.values())} ({closed}) | {percentile(echoes, 50):.1f} "
                f"| {percentile(echoes, 99):.1f} | {max(echoes):.1f} | {os.getloadavg()[0]:.2f} |"
            )
            print(rows[-1], flush=True)
        tracebacks = server.log_path.read_bytes().count(b"Traceback")
    print(f"\ngischat from {tree}; {tracebacks} traceback(s) in {server.log_path}")
    print(
        "| bombs | bytes on the wire | bombs sent (how the server ended them) | echo p50 | p99 | max (ms) | load |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    print("\n".join(rows))


def cli() -> None:
    parser = argparse.ArgumentParser(description="a deflate bomb's stall, as an innocent sees it")
    parser.add_argument("--tree", default=str(BENCH_DIR.parent), help="the gischat tree to run")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between two probe texts")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between two bombs")
    args = parser.parse_args()
    RESULTS_DIR.mkdir(exist_ok=True)
    uvloop.run(run(args, Path(args.tree).resolve()))


if __name__ == "__main__":
    cli()
