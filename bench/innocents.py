"""The innocent clients of bench/fuzz.py, in a process of their own.

    python bench/innocents.py --ports 8001,8002 --seconds 60   # what bench/fuzz.py runs

Their own process, so that the fuzzer's work (building 20 MB bombs, masking large frames) never
delays them: a late echo is then the server's doing, or the machine's, never the fuzzer's.
On each node (each port), in the fuzzed room and in a calm one, `--per-dialect` clients of each
dialect register and send themselves a stamped text every `--interval` seconds. Each times the
echo of its own texts; with two nodes or more each also times the texts of the innocents of its
room on the other nodes, from their send to its arrival here (the same clock: one process), so
that a delivery across nodes (through the broker) is measured as well as the echo.

Prints "ready" once every client has registered, and at the end one line of JSON: per room, what
was sent, delivered and dropped, percentiles of both timings, the worst ones and every one of
SLOW_MS or more with their wall-clock time (to be matched with the machine's load at that
moment), refusals and disconnects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop
from harness import percentile
from rawws import TEXT, HandshakeRefused, WsClient

INNOCENT_SOURCES = {"room": "127.0.0.2", "channel": "127.0.0.4"}
FUZZ_ROOM = "fuzz"
CALM_ROOM = "calm"
ROOMS = (FUZZ_ROOM, CALM_ROOM)
ECHO_GRACE = 3.0  # after the last text, how long an echo may still come
WORST_KEPT = 5  # the worst timings reported with their moment
SLOW_MS = 100.0  # timings at least this long are all reported with their moment (the lower bar)
SLOW_KEPT = 5000  # at most this many of them


def ws_path(dialect: str, room: str) -> str:
    return f"/{dialect}/{room}/ws"


@dataclass
class Timings:
    """Delivery times (ms) of one kind in one room, and the worst ones with their moment."""

    values: list[float] = field(default_factory=list)
    worst: list[tuple[float, float, str]] = field(default_factory=list)  # ms, wall-clock time, who
    slow: list[tuple[float, float, str]] = field(default_factory=list)  # those of SLOW_MS or more

    def add(self, ms: float, who: str) -> None:
        self.values.append(ms)
        if len(self.worst) < WORST_KEPT or ms > self.worst[-1][0]:
            self.worst = sorted([*self.worst, (ms, time.time(), who)], reverse=True)[:WORST_KEPT]
        if ms >= SLOW_MS and len(self.slow) < SLOW_KEPT:
            self.slow.append((ms, time.time(), who))

    def summary(self) -> dict[str, Any]:
        values = self.values
        return {
            "count": len(values),
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "max": max(values, default=float("nan")),
            "worst": self.worst,
            "slow": self.slow,
        }


class Stamps:
    """Every stamped text of every innocent: when it was sent, and who on another node awaits it."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, int], float] = {}
        self.node_of: dict[str, int] = {}
        self.expected: Counter[str] = Counter()  # cross-node deliveries awaited, by room
        self.timings: dict[tuple[str, str], Timings] = {
            (room, kind): Timings() for room in ROOMS for kind in ("echo", "cross")
        }


class Innocent:
    """A client of one dialect in one room on one node, timing its echoes and the texts of the
    innocents of its room on the other nodes."""

    def __init__(self, stamps: Stamps, port: int, node: int, dialect: str, room: str, index: int) -> None:
        self.stamps, self.port, self.node, self.dialect, self.room = stamps, port, node, dialect, room
        self.nickname = f"calm{index}{dialect[0]}{room[0]}{node}x{os.getpid() % 1000}"
        stamps.node_of[self.nickname] = node
        self.client: WsClient | None = None
        self.sent = 0
        self.echoed: set[int] = set()
        self.seen: set[tuple[str, int]] = set()  # cross-node texts arrived
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
        elif kind == "text":
            author, seq = str(message.get("author")), str(message.get("text", "")).partition(" ")[0]
            sent = self.stamps.sent.get((author, int(seq))) if seq.isdigit() else None
            if sent is None:
                return
            ms, key = (time.monotonic() - sent) * 1000, (author, int(seq))
            if author == self.nickname and key[1] not in self.echoed:
                self.echoed.add(key[1])
                self.stamps.timings[self.room, "echo"].add(ms, f"node{self.node} {self.dialect}")
            elif self.stamps.node_of.get(author, self.node) != self.node and key not in self.seen:
                self.seen.add(key)
                who = f"node{self.stamps.node_of[author]} to node{self.node} {self.dialect}"
                self.stamps.timings[self.room, "cross"].add(ms, who)

    async def connect(self) -> None:
        source = INNOCENT_SOURCES[self.dialect]
        self.client = await WsClient.open(
            self.port, ws_path(self.dialect, self.room), source, on_frame=self.on_frame
        )
        self.client.start()
        self.client.send(TEXT, orjson.dumps({"type": "newcomer", "newcomer": self.nickname}))
        await asyncio.wait_for(self.registered.wait(), 10.0)

    async def chat(self, until: float, interval: float, offset: float, others: int) -> None:
        """Send a stamped text every `interval` s until `until`; `others`: the innocents of this
        room on other nodes, each of which awaits every text."""
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
            self.stamps.sent[self.nickname, seq] = time.monotonic()
            self.stamps.expected[self.room] += others
            text = {"type": "text", "author": self.nickname, "avatar": None, "text": f"{seq} innocent"}
            client.send(TEXT, orjson.dumps(text))
            self.sent += 1
            seq += 1


async def innocents(ports: list[int], seconds: float, interval: float, per_dialect: int) -> dict[str, Any]:
    stamps = Stamps()
    clients = [
        Innocent(stamps, port, node, dialect, room, index)
        for node, port in enumerate(ports)
        for room in ROOMS
        for dialect in ("room", "channel")
        for index in range(per_dialect)
    ]
    await asyncio.gather(*(client.connect() for client in clients))
    print("ready", flush=True)
    until = time.monotonic() + seconds
    spread = interval / len(clients)
    await asyncio.gather(
        *(
            c.chat(until, interval, i * spread, sum(o.room == c.room and o.node != c.node for o in clients))
            for i, c in enumerate(clients)
        )
    )
    await asyncio.sleep(ECHO_GRACE)
    report: dict[str, Any] = {}
    for room in ROOMS:
        members = [client for client in clients if client.room == room]
        report[room] = {
            "sent": sum(c.sent for c in members),
            "delivered": sum(len(c.echoed) for c in members),
            "echo": stamps.timings[room, "echo"].summary(),
            "cross_expected": stamps.expected[room],
            "cross_delivered": sum(len(c.seen) for c in members),
            "cross": stamps.timings[room, "cross"].summary(),
            "refusals": dict(sum((c.refusals for c in members), Counter())),
            "disconnects": [event for c in members for event in c.disconnects],
        }
    for client in clients:
        if client.client is not None:
            await client.client.close(0.5)
    return report


def cli() -> None:
    parser = argparse.ArgumentParser(description="bench/fuzz.py's innocent clients")
    parser.add_argument("--ports", required=True, help="the nodes' ports, comma-separated")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between two texts of one")
    parser.add_argument("--per-dialect", type=int, default=2, help="innocents per dialect, room and node")
    args = parser.parse_args()
    ports = [int(port) for port in args.ports.split(",")]
    report = uvloop.run(innocents(ports, args.seconds, args.interval, args.per_dialect))
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    cli()
