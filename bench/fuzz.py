"""Fuzz gischat at the socket, with innocent clients beside it, and print what happened.

    python bench/fuzz.py --minutes 3                 # starts `python -m gischat` on a free port
    python bench/fuzz.py --minutes 3 --nodes 2       # two nodes over a local Redis
    python bench/fuzz.py --minutes 3 --env WS_PER_MESSAGE_DEFLATE=true   # compressed cases too
    python bench/fuzz.py --minutes 1 --url http://127.0.0.1:8000 --log server.log
    python bench/fuzz.py --minutes 2 --seed 7 --env ALLOW_SCRIPTS=true --env REPLY_THREADS=true

The fuzzer (from 127.0.0.10, `--workers` connections at a time) opens connection after
connection to both routes (`/room/fuzz/ws`, `/channel/fuzz/ws`) and sends what no client library
would (bench/fuzzcases.py): real frames of both dialects with members dropped, replaced or
retyped, bits flipped, frames cut short, lengths that lie, unmasked, fragmented in order and out
of it, huge declared lengths, invalid UTF-8 (small and large messages), control frames of every
kind, reserved opcodes and bits, binary frames, large layers; one connection in eight starts
with a garbage or damaged upgrade head instead. Three in ten offer permessage-deflate: where the
server takes it (`--env WS_PER_MESSAGE_DEFLATE=true`), half their cases are compressed frames,
valid, garbage that does not inflate, a bomb (20 MB of text in 20 kB) or the compression bit on
a ping. Each connection ends one way or another (a close frame, a reset, a half-close, silence)
and how the server ended it is counted.

With `--nodes 2` the script starts a Redis (as bench/soak.py does, bench/harness.py) and two
gischat nodes on it: the fuzzer's connections go to the first node, one in four to the second,
so that what the first node relays of them crosses the broker too.

Beside it, in a process of their own (bench/innocents.py, so that the fuzzer's work never delays
them): on every node, innocent clients of both dialects in the fuzzed room and in another one
(`calm`), each sending itself a stamped text every `--interval` seconds and timing the echo;
with two nodes each also times the texts of its room's innocents on the other node, from their
send to its arrival (a delivery across the broker).

Meanwhile the machine's load is sampled every few seconds (bench/machineload.py: the 1-minute
load average, the cores used by every process that is not this run's, the CPU pressure): the
machine is shared, and a late round trip that coincides with other work is the machine's doing.
The worst round trips, and every one over its bar grouped by episode (late ones less than
EPISODE_GAP s apart), are listed with their moment and the load then, to tell the two apart: a
stall of the machine is one short episode where every room and node is late at once.

At the end: a table (frames and bytes the fuzzer sent, its connections and how they ended, the
innocents' messages sent, delivered and dropped, their round trips and cross-node deliveries,
the sockets each node still counts once every client has gone, the load) and whether a node's
log holds a traceback ("Traceback", "Logging error", "Exception"); it is also written to
bench/results/<name>.md. The exit status is 1 unless no traceback, no innocent dropped, no
socket left, and the worst round trips and deliveries within bench/hostile.py's bars (250 ms in
the fuzzed room, 100 ms in the other). The servers the script starts log every line (LOG_RATE
lifted) to bench/results/gischat-<name>-<node>.log, so that no traceback hides behind the log's
rate limit. Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import uvloop
from fuzzer import FuzzStats, fuzz
from harness import (
    BENCH_DIR,
    HOST,
    RESULTS_DIR,
    gischat_nodes,
    gischat_revision,
    machine,
    redis_server,
    tree_rss,
)
from innocents import CALM_ROOM, ECHO_GRACE, FUZZ_ROOM, ROOMS
from machineload import Load, load_at, watch_load

TRACEBACK = re.compile(rb"Traceback|Logging error|Exception")
# Bars of bench/hostile.py: worst round trip in the attacked room and in another one.
BARS_MS = {FUZZ_ROOM: 250.0, CALM_ROOM: 100.0}
LABELS = {FUZZ_ROOM: "fuzzed room", CALM_ROOM: "other room"}
LOAD_EVERY = 5.0  # seconds between two looks at the machine's load
EPISODE_GAP = 2.0  # late timings less than this many seconds apart are one episode


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
    """Lines of a server's log (written after byte `start`) that show a traceback."""
    if log is None or not log.exists():
        return []
    with log.open("rb") as file:
        file.seek(start)
        data = file.read()
    return [line.decode(errors="replace")[:160] for line in data.splitlines() if TRACEBACK.search(line)]


@dataclass
class Outcome:
    """What the run measured, for the table and the exit status."""

    seconds: float
    stats: FuzzStats
    report: dict[str, Any]  # bench/innocents.py's
    found: list[str]
    rss: list[tuple[int, int]]  # per node, before and after
    left: list[int]  # per node
    loads: list[Load]

    def failures(self) -> list[str]:
        failed = [f"{len(self.found)} traceback(s)"] if self.found else []
        failed += [f"{n} socket(s) left on node{i}" for i, n in enumerate(self.left) if n]
        for room in ROOMS:
            data = self.report[room]
            if dropped := data["sent"] - data["delivered"]:
                failed.append(f"{dropped} echo(es) dropped in the {LABELS[room]}")
            if missing := data["cross_expected"] - data["cross_delivered"]:
                failed.append(f"{missing} cross-node deliveries missing in the {LABELS[room]}")
            for kind in ("echo", "cross"):
                if data[kind]["count"] and data[kind]["max"] > BARS_MS[room]:
                    failed.append(f"{kind} over the bar in the {LABELS[room]}: {data[kind]['max']:.1f} ms")
        return failed


def counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in counter.most_common()) or "none"


def timing(summary: dict[str, Any]) -> str:
    return f"{summary['p50']:.1f} / {summary['p99']:.1f} / {summary['max']:.1f} ms"


def table(outcome: Outcome) -> str:
    stats, report, nodes = outcome.stats, outcome.report, len(outcome.left)
    opened = f"{sum(stats.connections.values()):,}"
    if nodes > 1:
        opened += f" ({counts(stats.connections)})"
    rows = [
        ("duration", f"{outcome.seconds:.0f} s"),
        ("fuzzer frames sent", f"{stats.frames:,}"),
        ("fuzzer bytes sent", f"{stats.bytes:,}"),
        ("fuzz cases", counts(stats.cases)),
        ("fuzzer connections opened", opened),
        ("their handshakes answered", counts(stats.handshakes)),
        ("how the fuzzer ended them", counts(stats.ended_by_us)),
        ("how the server ended them", counts(stats.ended_by_server)),
    ]
    for room in ROOMS:
        data, label, bar = report[room], LABELS[room], BARS_MS[room]
        rows += [
            (
                f"innocents, {label}: sent / echoed / dropped",
                f"{data['sent']:,} / {data['delivered']:,} / {data['sent'] - data['delivered']:,}",
            ),
            (f"innocents, {label}: round trip p50 / p99 / max (bar {bar:.0f})", timing(data["echo"])),
        ]
        if nodes > 1:
            expected, delivered = data["cross_expected"], data["cross_delivered"]
            rows += [
                (
                    f"innocents, {label}: cross-node deliveries expected / delivered / missing",
                    f"{expected:,} / {delivered:,} / {expected - delivered:,}",
                ),
                (
                    f"innocents, {label}: cross-node delivery p50 / p99 / max (bar {bar:.0f})",
                    timing(data["cross"]),
                ),
            ]
        rows.append(
            (
                f"innocents, {label}: refusals, disconnects",
                f"{sum(data['refusals'].values())}, {len(data['disconnects'])}",
            )
        )
    loads = outcome.loads or [Load(0.0, float("nan"), float("nan"), None)]
    load1, others = [s.load1 for s in loads], [s.others for s in loads]
    pressure = [s.pressure for s in loads if s.pressure is not None] or [float("nan")]
    per_node = ", ".join(f"node{i} {n}" for i, n in enumerate(outcome.left))
    rss = ", ".join(f"node{i} {a / 1e6:.0f} / {b / 1e6:.0f} MB" for i, (a, b) in enumerate(outcome.rss))
    found = outcome.found
    rows += [
        ("sockets still in the rooms once everybody left", per_node),
        ("server RSS (its process tree) before / after", rss),
        ("tracebacks in the servers' logs", f"{len(found)}" + (f" (first: {found[0]})" if found else "")),
        ("machine load average (1 min): min / mean / max", f"{min(load1):.2f} / {sum(load1) / len(load1):.2f} / {max(load1):.2f}"),
        (f"other work on the machine, cores ({LOAD_EVERY:g} s windows): mean / max", f"{sum(others) / len(others):.2f} / {max(others):.2f}"),
        ("CPU pressure (some task waiting for a core): mean / max", f"{sum(pressure) / len(pressure):.0%} / {max(pressure):.0%}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'what'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def episodes(outcome: Outcome) -> list[str]:
    """The round trips and deliveries over their room's bar, grouped by moment (less than
    EPISODE_GAP s apart), each with the machine's load then: a stall of the machine shows as one
    short episode where every room and node was late at once."""
    late = sorted(
        (wall, ms, f"{LABELS[room]} {'round trip' if kind == 'echo' else 'cross-node'}", who)
        for room in ROOMS
        for kind in ("echo", "cross")
        for ms, wall, who in outcome.report[room][kind]["slow"]
        if ms > BARS_MS[room]
    )
    groups: list[list[tuple[float, float, str, str]]] = []
    for item in late:
        if groups and item[0] - groups[-1][-1][0] < EPISODE_GAP:
            groups[-1].append(item)
        else:
            groups.append([item])
    lines = []
    for group in groups:
        start, load = group[0][0], load_at(outcome.loads, group[0][0])
        kinds = Counter(what for _, _, what, _ in group)
        nodes = sorted({word for *_, who in group for word in who.split() if word.startswith("node")})
        lines.append(
            f"- {time.strftime('%H:%M:%S', time.localtime(start))}, {group[-1][0] - start:.1f} s: "
            f"{len(group)} over the bar (max {max(ms for _, ms, *_ in group):.0f} ms; {counts(kinds)}; "
            f"{', '.join(nodes)}); " + (load.describe() if load else "load not sampled")
        )
    return lines or ["- none"]


def worst_moments(outcome: Outcome) -> list[str]:
    """The worst round trips and deliveries of the run, each with the machine's load at the time."""
    worst = [
        (ms, wall, f"{LABELS[room]}, {'round trip' if kind == 'echo' else 'cross-node'}, {who}")
        for room in ROOMS
        for kind in ("echo", "cross")
        for ms, wall, who in outcome.report[room][kind]["worst"]
    ]
    lines = []
    for ms, wall, what in sorted(worst, reverse=True)[:5]:
        load = load_at(outcome.loads, wall)
        at = time.strftime("%H:%M:%S", time.localtime(wall))
        seen = load.describe() if load else "load not sampled"
        lines.append(f"- {ms:.1f} ms at {at} ({what}): {seen}")
    return lines


async def innocent_process(
    ports: list[int], seconds: float, args: argparse.Namespace
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, str(BENCH_DIR / "innocents.py"), "--ports", ",".join(map(str, ports))),
        *("--seconds", str(seconds), "--interval", str(args.interval), "--per-dialect", str(args.per_dialect)),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line.strip() != b"ready":
        raise RuntimeError(f"the innocents did not start: {line!r}")
    return proc


async def against(
    args: argparse.Namespace, ports: list[int], logs: list[Path | None], pids: list[int]
) -> int:
    """The run against the nodes on `ports` (`pids`: their processes, when this script started them)."""
    seconds = args.minutes * 60
    trees = [psutil.Process(pid) for pid in pids]
    before = [tree_rss(tree) for tree in trees]
    starts = [log_size(log) for log in logs]
    loads: list[Load] = []
    watcher = asyncio.create_task(watch_load(loads, LOAD_EVERY))
    innocent = await innocent_process(ports, seconds, args)
    stats = await fuzz(ports, seconds, args.workers, args.seed)
    assert innocent.stdout is not None
    out = await asyncio.wait_for(innocent.stdout.read(), ECHO_GRACE + 60)
    await innocent.wait()
    watcher.cancel()
    report = json.loads(out.decode().strip().splitlines()[-1])
    left = [await leftovers(port) for port in ports]
    after = [tree_rss(tree) for tree in trees] or [0] * len(ports)
    found = [
        f"node{i}: {line}"
        for i, (log, start) in enumerate(zip(logs, starts, strict=True))
        for line in tracebacks(log, start)
    ]
    outcome = Outcome(
        seconds, stats, report, found, list(zip(before or after, after, strict=True)), left, loads
    )
    failed = outcome.failures()
    text = "\n".join(
        [
            f"`python bench/fuzz.py {' '.join(sys.argv[1:])}`",
            "",
            f"gischat {gischat_revision()}; {len(ports)} node(s){' over Redis' if len(ports) > 1 else ''}.",
            f"Machine: {machine()}.",
            "",
            table(outcome),
            "",
            "Worst round trips and deliveries, with the machine's load at the time:",
            *worst_moments(outcome),
            "",
            "Round trips and deliveries over their bar, by episode:",
            *episodes(outcome),
            "",
            f"Verdict: {'FAILED: ' + '; '.join(failed) if failed else 'passed'}.",
        ]
    )  # fmt: skip
    print(text, flush=True)
    (RESULTS_DIR / f"{args.name}.md").write_text(text + "\n")
    return 1 if failed else 0


async def run(args: argparse.Namespace) -> int:
    if args.url:
        parts = urlsplit(args.url)
        if parts.hostname != HOST or parts.port is None:
            raise SystemExit(f"--url must be http://{HOST}:PORT (the fuzzer and innocents use 127.0.0.x)")
        return await against(args, [parts.port], [Path(args.log) if args.log else None], [])
    env = {"LOG_RATE": "1000000"}
    with contextlib.ExitStack() as stack:
        if args.nodes > 1:
            url, _ = stack.enter_context(redis_server())
            env.update(BROKER_URL=url, REDIS_KEY_PREFIX=uuid.uuid4().hex)
        env.update(item.split("=", 1) for item in args.env)
        async with gischat_nodes(args.nodes, args.name, ROOMS, env) as servers:
            return await against(
                args, [s.port for s in servers], [s.log_path for s in servers], [s.proc.pid for s in servers]
            )


def cli() -> None:
    parser = argparse.ArgumentParser(description="fuzz gischat at the socket, innocents beside it")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument(
        "--nodes", type=int, default=1, choices=(1, 2), help="2: two nodes over a local Redis"
    )
    parser.add_argument("--url", help=f"a running server, http://{HOST}:PORT (default: start one)")
    parser.add_argument("--log", help="that server's log file, searched for tracebacks")
    parser.add_argument("--workers", type=int, default=4, help="fuzz connections at a time")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting of the servers it starts"
    )
    parser.add_argument(
        "--interval", type=float, default=0.5, help="seconds between two texts of an innocent"
    )
    parser.add_argument("--per-dialect", type=int, default=2, help="innocents per dialect, room and node")
    parser.add_argument("--name", help="results' name (default fuzz-1node or fuzz-2nodes)")
    args = parser.parse_args()
    if args.url and args.nodes > 1:
        parser.error("--url is one node: --nodes 2 starts its own")
    args.name = args.name or f"fuzz-{args.nodes}node{'s' if args.nodes > 1 else ''}"
    RESULTS_DIR.mkdir(exist_ok=True)
    raise SystemExit(uvloop.run(run(args)))


if __name__ == "__main__":
    cli()
