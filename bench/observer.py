"""What everyone else saw: the innocent side of `bench/hostile.py`, in a process of its own.

    python bench/observer.py --port 8000 --pid 1234   # started by hostile.py, not by hand

It runs beside the attacker so that the attacker's Python work never delays these
measurements (no shared event loop, no shared GIL):

- innocent clients in each room (`--rooms`; the first room's from 127.0.0.2, the second's from
  127.0.0.4), each registered with a nickname and sending itself stamped texts; together the
  `--sockets` clients of a room send one text every `--interval` seconds, each of them at
  `--interval` x `--sockets` (20 ms x 13 = 260 ms, under a per-connection limit of 5 messages
  a second: an innocent must not be throttled for its own pace). The round trip to its own
  echo is recorded per message (None: never came back), as are other people's messages
  (counted per type and second, by one client per room), refusals and every disconnection
  (then it reconnects, so one attack cannot end the measurement);
- every `--connect-every` seconds a fresh websocket handshake from 127.0.0.3, timed;
- the RSS of the server and all its children every 100 ms (psutil).

"ready" goes to stdout once every probe is registered; on "stop" (or EOF) on stdin, or after
`--max-seconds`, one JSON line with every sample follows and the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import quote

import orjson
import psutil
import uvloop
from harness import tree_rss
from rawws import TEXT, HandshakeRefused, WsClient, sniff

INNOCENT_SOURCES = ("127.0.0.2", "127.0.0.4")  # one address per room, never 127.0.0.1
NEWCOMER_SOURCE = "127.0.0.3"
CONNECT_TIMEOUT = 10.0
RECONNECT_PAUSE = 0.5
SMALL = 4096  # frames below this are parsed; above, only their type is sniffed


def ws_path(room: str) -> str:
    return f"/room/{quote(room, safe='')}/ws"


class Probe:
    """An innocent member of one room measuring the round trip to its own echo."""

    def __init__(self, port: int, room: str, interval: float, index: int, source: str) -> None:
        self.port, self.room, self.interval, self.source = port, room, interval, source
        self.index = index  # the first of a room also counts the room's other traffic
        self.nickname = f"innocent{index}-{''.join(ch for ch in room if ch.isalnum())[:16] or 'room'}"
        self.author = self.nickname
        self.client: WsClient | None = None
        self.sent: dict[int, float] = {}  # seq -> monotonic send time
        self.rtt: dict[int, float] = {}  # seq -> round trip, ms
        self.foreign: Counter[tuple[int, str]] = Counter()  # (whole second, type) -> messages
        self.refusals: Counter[str] = Counter()
        self.disconnects: list[tuple[float, str]] = []
        self.registered = asyncio.Event()

    def on_frame(self, client: WsClient, opcode: int, payload: bytes) -> None:
        if opcode != TEXT:
            return
        now = time.monotonic()
        if len(payload) < SMALL:
            message: dict[str, Any] = orjson.loads(payload)
            kind = str(message.get("type"))
            if kind == "text" and message.get("author") == self.author:
                seq, _, _ = str(message.get("text", "")).partition(" ")
                if seq.isdigit() and int(seq) in self.sent:
                    self.rtt[int(seq)] = (now - self.sent[int(seq)]) * 1000
                return
            if kind == "newcomer" and message.get("newcomer") == self.author:
                self.registered.set()
                return
            if kind == "uncompliant":
                self.refusals[str(message.get("reason"))[:80]] += 1
                self.registered.set()  # refused or not, stop waiting for it
                return
        else:
            kind, _ = sniff(payload)
        if self.index == 0:
            self.foreign[(int(now), kind)] += 1

    async def connect(self, attempt: int) -> None:
        """Connect and register; a reconnection registers a fresh nickname (the old may linger)."""
        self.author = self.nickname if attempt == 0 else f"{self.nickname}-{attempt}"
        self.registered.clear()
        client = await WsClient.open(
            self.port, ws_path(self.room), self.source, CONNECT_TIMEOUT, on_frame=self.on_frame
        )
        client.start()
        client.send(TEXT, orjson.dumps({"type": "newcomer", "newcomer": self.author}))
        self.client = client
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.registered.wait(), CONNECT_TIMEOUT)

    async def keep_connected(self, until: float) -> None:
        """Stay in the room until `until`, reconnecting after every disconnection."""
        attempt = 0
        while time.monotonic() < until:
            try:
                await self.connect(attempt)
            except (OSError, TimeoutError, HandshakeRefused) as exc:
                self.disconnects.append((time.monotonic(), f"reconnect failed: {exc!r}"[:100]))
                await asyncio.sleep(RECONNECT_PAUSE)
                attempt += 1
                continue
            assert self.client is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.client.closed.wait(), max(until - time.monotonic(), 0.01))
            if not self.client.closed.is_set():
                return
            self.disconnects.append((self.client.ended_at, self.client.outcome()))
            await asyncio.sleep(RECONNECT_PAUSE)
            attempt += 1

    async def send_loop(self, until: float, offset: float) -> None:
        """A stamped text every `interval` s on an absolute schedule, connected or not."""
        start, seq = time.monotonic() + offset, 0
        while (due := start + seq * self.interval) < until:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            self.sent[seq] = now
            client = self.client
            if client is not None and client.is_open:
                text = f"{seq} {now:.6f}"
                client.send(
                    TEXT,
                    orjson.dumps({"type": "text", "author": self.author, "avatar": None, "text": text}),
                )
            seq += 1

    def report(self) -> dict[str, Any]:
        return {
            "samples": [[t, self.rtt.get(seq)] for seq, t in sorted(self.sent.items())],
            "foreign": [[second, kind, n] for (second, kind), n in sorted(self.foreign.items())],
            "refusals": dict(self.refusals),
            "disconnects": self.disconnects,
        }


async def newcomers(port: int, room: str, every: float, until: float, out: list[list[Any]]) -> None:
    """A fresh handshake every `every` s: [start time, ms or None, what happened]."""
    while (start := time.monotonic()) < until:
        try:
            client = await WsClient.open(port, ws_path(room), NEWCOMER_SOURCE, CONNECT_TIMEOUT)
        except HandshakeRefused as exc:
            out.append([start, None, f"HTTP {exc.status}"])
        except TimeoutError:
            out.append([start, None, "timeout"])
        except OSError as exc:
            out.append([start, None, type(exc).__name__])
        else:
            out.append([start, (time.monotonic() - start) * 1000, "101"])
            client.start()
            await client.close(0.5)
        await asyncio.sleep(max(start + every - time.monotonic(), 0.0))


async def sample_rss(pid: int, until: float, out: list[list[float]]) -> None:
    """[time, RSS of the server's process tree in bytes] every 100 ms."""
    try:
        process = psutil.Process(pid)
    except psutil.Error:
        return
    while (now := time.monotonic()) < until:
        out.append([now, float(tree_rss(process))])
        await asyncio.sleep(0.1)


async def wait_for_stop(until: float) -> None:
    """Return on a line on stdin (or EOF), or at `until`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.readline(), max(until - time.monotonic(), 0.01))


async def main(args: argparse.Namespace) -> None:
    until = time.monotonic() + args.max_seconds
    rooms = args.rooms.split(",")[: len(INNOCENT_SOURCES)]
    each = args.interval * args.sockets
    probes = [
        Probe(args.port, room, each, i, source)
        for room, source in zip(rooms, INNOCENT_SOURCES, strict=False)
        for i in range(args.sockets)
    ]
    rss: list[list[float]] = []
    connects: list[list[Any]] = []
    tasks = [asyncio.create_task(sample_rss(args.pid, until, rss))]
    tasks += [asyncio.create_task(probe.keep_connected(until)) for probe in probes]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(p.registered.wait() for p in probes)), CONNECT_TIMEOUT)
    print("ready", flush=True)
    tasks += [asyncio.create_task(p.send_loop(until, p.index * args.interval)) for p in probes]
    tasks.append(
        asyncio.create_task(newcomers(args.port, probes[0].room, args.connect_every, until, connects))
    )
    await wait_for_stop(until)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for probe in probes:
        if probe.client is not None:
            probe.client.abort()
    report = {
        "rooms": {room: merged([p.report() for p in probes if p.room == room]) for room in rooms},
        "rss": rss,
        "connects": connects,
    }
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    sys.stdout.flush()


def merged(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One room's view: every client's samples, refusals and disconnections together."""
    refusals: Counter[str] = Counter()
    for report in reports:
        refusals.update(report["refusals"])
    return {
        "samples": sorted(sample for report in reports for sample in report["samples"]),
        "foreign": reports[0]["foreign"],
        "refusals": dict(refusals),
        "disconnects": [event for report in reports for event in report["disconnects"]],
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description="innocent clients, new connections and RSS, for hostile.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server process (its children count too)")
    parser.add_argument(
        "--rooms", default="busy,other", help="one probe per room; new connects go to the first"
    )
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between two texts in a room")
    parser.add_argument("--sockets", type=int, default=13, help="innocent clients per room, taking turns")
    parser.add_argument("--connect-every", type=float, default=2.0, help="seconds between fresh handshakes")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="hard stop")
    uvloop.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
