"""What a node pays for rooms it does not serve, and what CPU a delivery costs as nodes are added.

    python bench/routing.py                        # this checkout against one-channel routing
    python bench/routing.py --baseline fea35bc     # the commit to compare with (git must have it)

Both measurements run for this checkout and for `--baseline` (by default fea35bc, the last commit
where every node read every room's traffic on one channel), side by side in one run, each on its
own throwaway Redis. The baseline's gischat is exported with `git archive` and put first on its
servers' PYTHONPATH.

R1. The idle node: two nodes; 100 clients in one room on node A, 4 of them sending 200 texts/s
    in all for 5 s (20,000 deliveries/s); node B has 5 clients in another room. CPU of each node
    over the window, and B's as a share of A's (the target: under 5 %).
R2. Delivery cost as nodes are added: 4 rooms of 100 clients, each room on one node (room i on
    node i mod N), one sender per room at 100 texts/s for 5 s (40,000 deliveries/s in all), for
    N = 1, 2 and 4 nodes: server CPU (every node) and Redis CPU per delivered message, against
    one node on memory://; and what the nodes spend over as long with nobody sending (being
    alive: heartbeats, counts, timers), a fixed cost per node that no routing takes away, with
    the per-delivery figure net of it. Each node may run on any core (the machine has few).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import psutil
import uvloop
from harness import (
    BENCH_DIR,
    RELAY_ONLY,
    Peer,
    Server,
    Tally,
    drop,
    gischat_revision,
    joined_room,
    machine,
    machine_busy,
    paced_sends,
    redis_server,
    running,
    warm_up,
)

ROOMS = ("room 0", "room 1", "room 2", "room 3")
WINDOW = 5.0
IDLE_CLIENTS, IDLE_SENDERS, IDLE_RATE, IDLE_OTHERS = 100, 4, 200, 5
SPREAD_CLIENTS, SPREAD_RATE = 100, 100


@contextlib.contextmanager
def exported(revision: str) -> Iterator[Path]:
    """`revision`'s tree in a temporary directory (its gischat package importable from there)."""
    with tempfile.TemporaryDirectory(prefix="gischat-baseline-") as directory:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", revision, "gischat"],
            cwd=BENCH_DIR.parent,
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(directory, filter="data")
        yield Path(directory)


@contextlib.asynccontextmanager
async def nodes(count: int, label: str, source: Path | None, broker: str) -> AsyncIterator[list[Server]]:
    """`count` gischat servers of `source` (None: this checkout) on `broker`."""
    path = str(source) if source is not None else str(BENCH_DIR.parent)
    env = {
        **RELAY_ONLY,
        "BROKER_URL": broker,
        "REDIS_KEY_PREFIX": label,
        "PYTHONPATH": os.pathsep.join([path, os.environ.get("PYTHONPATH", "")]),
    }
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(running("gischat", f"{label}-{i}", rooms=ROOMS, extra_env=env))
            for i in range(count)
        ]


def cpu_of(servers: Sequence[Server | psutil.Process]) -> list[float]:
    result = []
    for server in servers:
        times = server.ps.cpu_times() if isinstance(server, Server) else server.cpu_times()
        result.append(float(times.user + times.system))
    return result


async def fill(server: Server, room: str, count: int) -> tuple[Tally, list[Peer]]:
    tally, peers = await joined_room(server, room, count)
    await warm_up(tally, peers)
    return tally, peers


async def idle_node(source: Path | None, label: str) -> tuple[float, float]:
    """R1: CPU (cores) of the busy room's node and of the other node over the window."""
    with redis_server() as (url, _):
        async with nodes(2, label, source, url) as (busy, idle):
            tally, peers = await fill(busy, ROOMS[0], IDLE_CLIENTS)
            _, others = await fill(idle, ROOMS[1], IDLE_OTHERS)
            tally.record(round(IDLE_RATE * WINDOW), peers)
            tally.count_only = True
            before = cpu_of([busy, idle])
            await paced_sends(peers[:IDLE_SENDERS], IDLE_RATE, WINDOW, "idle node")
            await tally.texts_gate.wait(10.0)
            after = cpu_of([busy, idle])
            drop([*peers, *others])
    return (after[0] - before[0]) / WINDOW, (after[1] - before[1]) / WINDOW


async def spread(source: Path | None, label: str, count: int, redis: bool) -> tuple[float, float, float, int]:
    """R2: server CPU seconds over the window, the same with nobody sending (what the nodes spend
    only being alive: heartbeats, counts, timers), Redis CPU seconds, and the deliveries, with
    the rooms spread over `count` nodes."""
    with contextlib.ExitStack() as stack:
        url, redis_ps = stack.enter_context(redis_server()) if redis else ("memory://", None)
        async with nodes(count, label, source, url) as servers:
            groups = [await fill(servers[i % count], room, SPREAD_CLIENTS) for i, room in enumerate(ROOMS)]
            for tally, peers in groups:
                tally.record(round(SPREAD_RATE * WINDOW), peers)
                tally.count_only = True
            quiet = cpu_of(servers)
            await asyncio.sleep(WINDOW)  # a window with nobody sending: measured, not waited on
            idle = sum(cpu_of(servers)) - sum(quiet)
            watched: list[Server | psutil.Process] = [*servers, *([redis_ps] if redis_ps else [])]
            before = cpu_of(watched)
            await asyncio.gather(
                *(paced_sends(peers[:1], SPREAD_RATE, WINDOW, "spread") for _, peers in groups)
            )
            for tally, _ in groups:
                await tally.texts_gate.wait(10.0)
            after = cpu_of(watched)
            delivered = sum(tally.delivered for tally, _ in groups)
            for _, peers in groups:
                drop(peers)
    used = [a - b for a, b in zip(after, before, strict=True)]
    redis_cpu = used[count] if redis else 0.0
    return sum(used[:count]), idle, redis_cpu, max(delivered, 1)


async def main(baseline: str) -> None:
    busy_before = machine_busy()
    print(f"# bench/routing.py: {gischat_revision()} against {baseline}; {machine()}\n")
    with exported(baseline) as old:
        sources = [("this checkout", None), (f"{baseline} (one channel)", old)]
        print(
            "R1. the idle node: 100 clients in one room on node A at 20,000 deliveries/s, 5 elsewhere on B\n"
        )
        print("| gischat | node A (cores) | node B (cores) | B / A |")
        print("|---|---|---|---|")
        for name, source in sources:
            a, b = await idle_node(source, f"r1-{'new' if source is None else 'old'}")
            print(f"| {name} | {a:.2f} | {b:.3f} | {b / a:.1%} |")
        print(
            f"\nR2. 4 rooms of {SPREAD_CLIENTS}, one sender each at {SPREAD_RATE}/s, each room on one node\n"
        )
        print(
            "| gischat | nodes | deliveries | server CPU µs / delivery | vs 1 node | the nodes idle, "
            "µs / delivery | net of idle | net vs 1 node | Redis CPU µs / delivery |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        rows: list[tuple[str, Path | None, int, bool]] = [("this checkout", None, 1, False)]
        rows += [(name, source, count, True) for name, source in sources for count in (1, 2, 4)]
        firsts: dict[str, tuple[float, float]] = {}
        for name, source, count, redis in rows:
            label = f"r2-{'new' if source is None else 'old'}-{count}{'' if redis else '-memory'}"
            server_cpu, idle, redis_cpu, delivered = await spread(source, label, count, redis=redis)
            per, idle_per = server_cpu / delivered * 1e6, idle / delivered * 1e6
            net = per - idle_per
            first, first_net = firsts.setdefault(name if redis else "memory", (per, net))
            nodes_label = f"{count}" if redis else "1, memory://"
            print(
                f"| {name} | {nodes_label} | {delivered:,} | {per:.1f} | {per / first:.2f} | "
                f"{idle_per:.1f} | {net:.1f} | {net / first_net:.2f} | {redis_cpu / delivered * 1e6:.2f} |"
            )
    busy = machine_busy() - busy_before
    print(f"\nmachine busy over the whole run: {busy:.0f} CPU s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--baseline", default="fea35bc", help="the commit to compare with")
    args = parser.parse_args()
    sys.exit(uvloop.run(main(args.baseline)))
