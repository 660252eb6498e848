"""Throughput scenarios of `bench/run.py`: fan-out, latency at a fixed rate, joins and memory.

1. fan-out: 100 clients in one room, 4 of them send 300 texts each without waiting for
   echoes (120,000 deliveries); rounds alternate between the two servers.
2. latency at a fixed 20,000 deliveries/s: 200 stamped messages/s into a room of 100.
3. 1,000 clients join one room, 100 handshakes in flight; every socket must see nb_users=1000.
4. server RSS per idle connection: around scenario 3's 1,000 sockets, once RSS settles.
7. scenarios 3 and 4 with 10,000 sockets, from the light client of `bench/crowd.py`, then from picows.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from crowd import Crowd, disperse, open_crowd
from harness import (
    CONNECT_CONCURRENCY,
    ROOM,
    CpuMeter,
    Peer,
    Results,
    Server,
    Tally,
    Value,
    connect_many,
    describe_cores,
    drop,
    joined_room,
    ms,
    num,
    paced_sends,
    percentile,
    stamped,
    warm_up,
)

# Scenario sizes and bounds (every wait below is bounded by one of these).
FANOUT_CLIENTS, FANOUT_SENDERS, FANOUT_MESSAGES, FANOUT_TIMEOUT, FANOUT_ROUNDS = 100, 4, 300, 20.0, 5
LATENCY_CLIENTS, LATENCY_SENDERS, LATENCY_RATE, LATENCY_SECONDS = 100, 4, 200, 4.0
LATENCY_ROUNDS = 3
JOIN_CLIENTS, JOIN_TIMEOUT = 1000, 20.0
# Scenario 7: the crowd gischat alone is asked to hold (the naive loop's quadratic nb_users
# broadcasts would take minutes), its join time and memory per idle socket.
CROWD_CLIENTS, CROWD_TIMEOUT = 10_000, 30.0


@dataclass
class Flood:
    """What one flood measured: deliveries, seconds, CPU in cores (server, client, others), complete?,
    close codes of the clients the server closed, uncompliant replies."""

    delivered: int
    elapsed: float
    cpu: tuple[float, float, float]
    complete: bool
    closed: list[int | None]
    errors: list[str]

    def describe_cpu(self) -> str:
        return describe_cores(self.cpu)


async def flood(server: Server, tally: Tally, peers: Sequence[Peer]) -> Flood:
    """The first FANOUT_SENDERS of `peers` send FANOUT_MESSAGES texts each, without waiting for echoes,
    into the room every peer joined; the clients are dropped afterwards."""
    await warm_up(tally, peers)
    tally.record(FANOUT_SENDERS * FANOUT_MESSAGES, peers)
    tally.count_only = True

    async def blast(peer: Peer, author: str) -> None:
        for seq in range(FANOUT_MESSAGES):
            if not peer.writable.is_set():  # the server is not taking them: TCP backpressure
                await peer.writable.wait()
            if peer.gone:
                return
            peer.send(stamped(author, seq, "fan-out"))
            if seq % 10 == 9:
                await asyncio.sleep(0)  # let deliveries in while sending

    meter = CpuMeter(server)
    start = time.perf_counter_ns()
    senders = [asyncio.create_task(blast(peer, f"bench{i}")) for i, peer in enumerate(peers[:FANOUT_SENDERS])]
    complete = await tally.texts_gate.wait(FANOUT_TIMEOUT, progress=lambda: tally.delivered, idle=1.0)
    elapsed = (tally.last_ns - start) / 1e9 if tally.last_ns else float("nan")
    cpu = meter.stop(elapsed if tally.last_ns else None)
    await asyncio.gather(*senders)
    closed = [peer.close_code for peer in peers if peer.gone]
    drop(peers)
    await server.wait_count(ROOM, 0, 5.0)
    return Flood(tally.delivered, elapsed, cpu, complete, closed, tally.errors)


async def fanout_round(server: Server) -> tuple[int, float, str, bool, list[int | None], list[str]]:
    """One flood into a fresh room of clients: deliveries, seconds, CPU, complete?, close codes, errors."""
    tally, peers = await joined_room(server, ROOM, FANOUT_CLIENTS)
    done = await flood(server, tally, peers)
    return done.delivered, done.elapsed, done.describe_cpu(), done.complete, done.closed, done.errors


async def scenario_fanout(servers: dict[str, Server], results: Results) -> None:
    """Rounds alternate between the servers, so a drift in the machine's load hits both alike."""
    expected = FANOUT_CLIENTS * FANOUT_SENDERS * FANOUT_MESSAGES
    rates: dict[str, list[float]] = {kind: [] for kind in servers}
    worst = dict.fromkeys(servers, expected)
    for round_no in range(1, FANOUT_ROUNDS + 1):
        for kind, server in servers.items():
            delivered, elapsed, cpu, complete, closed, errors = await fanout_round(server)
            rate = delivered / elapsed if delivered else 0.0
            rates[kind].append(rate)
            worst[kind] = min(worst[kind], delivered)
            results.note(
                kind,
                f"fan-out round {round_no}: {delivered:,}/{expected:,} deliveries in {elapsed:.3f} s = "
                f"{rate:,.0f}/s; {cpu}"
                + ("" if complete else " — INCOMPLETE (gave up after 1 s without a delivery)")
                + (
                    f"; the server closed {len(closed)} clients (codes {sorted({str(c) for c in closed})})"
                    if closed
                    else ""
                )
                + (f"; {len(errors)} uncompliant replies, e.g. {errors[0]!r}" if errors else ""),
            )
    for kind in servers:
        rate = statistics.median(rates[kind])
        spread = f"{min(rates[kind]):,.0f} to {max(rates[kind]):,.0f}"
        shown = f"{rate:,.0f} ({spread})" + ("" if worst[kind] == expected else " incomplete")
        results.put(kind, "fanout_rate", Value(rate, shown))
        results.put(
            kind,
            "fanout_done",
            Value(worst[kind], f"{worst[kind]:,}" + (" (worst round)" if worst[kind] < expected else "")),
        )


async def scenario_latency(servers: dict[str, Server], results: Results) -> None:
    """Rounds alternate between the servers, as in scenario 1: one round's p99 moves by a few
    milliseconds with whatever else the machine does, so each server's row is the median round
    (and the range)."""
    p50s: dict[str, list[float]] = {kind: [] for kind in servers}
    p99s: dict[str, list[float]] = {kind: [] for kind in servers}
    worst: dict[str, float] = dict.fromkeys(servers, 0.0)
    for round_no in range(1, LATENCY_ROUNDS + 1):
        for kind, server in servers.items():
            lat, complete, cpu = await latency_round(server)
            p50s[kind].append(ms(percentile(lat, 50)))
            p99s[kind].append(ms(percentile(lat, 99)))
            worst[kind] = max(worst[kind], ms(max(lat, default=0)))
            results.note(
                kind,
                f"latency round {round_no}: {len(lat):,} deliveries at {LATENCY_RATE} msg/s x "
                f"{LATENCY_CLIENTS} clients, p50 {ms(percentile(lat, 50)):.2f} / p90 "
                f"{ms(percentile(lat, 90)):.2f} / p99 {ms(percentile(lat, 99)):.2f} / max "
                f"{ms(max(lat, default=0)):.2f} ms; {cpu}" + ("" if complete else " — INCOMPLETE"),
            )
    for kind in servers:
        for key, values in (("lat_p50", p50s[kind]), ("lat_p99", p99s[kind])):
            middle = statistics.median(values)
            results.put(kind, key, Value(middle, f"{middle:.2f} ({min(values):.2f} to {max(values):.2f})"))
        results.put(kind, "lat_max", num(worst[kind], 2))


async def latency_round(server: Server) -> tuple[list[float], bool, str]:
    """One paced run: every delivery's latency (s), whether all arrived, the CPU it took."""
    tally, peers = await joined_room(server, ROOM, LATENCY_CLIENTS)
    await warm_up(tally, peers)
    tally.record(round(LATENCY_RATE * LATENCY_SECONDS), peers)
    meter = CpuMeter(server)
    await paced_sends(peers[:LATENCY_SENDERS], LATENCY_RATE, LATENCY_SECONDS, "latency")
    complete = await tally.texts_gate.wait(5.0)
    cpu = meter.describe()
    drop(peers)
    return list(tally.latencies), complete, cpu


async def scenario_crowd(server: Server, results: Results) -> None:
    """Scenario 7: scenarios 3 and 4 with CROWD_CLIENTS sockets, opened by the light idle-socket
    client of `bench/crowd.py`; then again with the picows client of the other scenarios, whose
    own cost per connection is as high as the server's (rows "picows client")."""
    await settle_with_one_client(server)
    before = await server.settled_rss()
    crowd = Crowd(CROWD_CLIENTS, CROWD_CLIENTS)
    meter = CpuMeter(server)
    start = time.perf_counter()
    sockets = await open_crowd(server.port, f"/room/{quote(ROOM, safe='')}/ws", crowd)
    handshakes = time.perf_counter() - start
    complete = await crowd.wait(CROWD_TIMEOUT - handshakes)
    elapsed = time.perf_counter() - start
    cpu = meter.describe()
    shown = num(elapsed, 2) if complete else Value(None, f"> {CROWD_TIMEOUT:.0f} (gave up)")
    results.put(server.kind, "crowd_time", shown)
    results.note(
        server.kind,
        f"crowd (light client): {CROWD_CLIENTS} handshakes done after {handshakes:.2f} s "
        f"({CONNECT_CONCURRENCY} in flight at a time), "
        + (
            f"every socket saw nb_users={CROWD_CLIENTS} after {elapsed:.2f} s"
            if complete
            else f"only {crowd.saw} saw nb_users={CROWD_CLIENTS} within {CROWD_TIMEOUT:.0f} s"
        )
        + f"; {cpu}",
    )
    counted = await server.wait_count(ROOM, CROWD_CLIENTS, 10.0)
    after = await server.settled_rss()
    per_connection = (after - before) / CROWD_CLIENTS / 1024
    results.put(server.kind, "crowd_mem", num(per_connection, 1))
    results.note(
        server.kind,
        f"crowd memory: RSS {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB with {CROWD_CLIENTS} "
        f"idle sockets (/status {'agrees' if counted else 'DISAGREES'}) = {per_connection:.1f} kB each",
    )
    disperse(sockets)
    await server.wait_count(ROOM, 0, 10.0)
    # The picows crowd's memory row would measure nothing: the allocator keeps the first crowd's.
    await scenario_join_and_memory(server, results, CROWD_CLIENTS, CROWD_TIMEOUT, "crowd_picows")


async def settle_with_one_client(server: Server) -> None:
    """One client and one message through the room, then an empty room again (first-use costs)."""
    tally, peers = await joined_room(server, ROOM, 1)
    await warm_up(tally, peers)
    drop(peers)
    await server.wait_count(ROOM, 0, 5.0)


async def scenario_join_and_memory(
    server: Server,
    results: Results,
    clients: int = JOIN_CLIENTS,
    give_up: float = JOIN_TIMEOUT,
    key: str = "join",
) -> None:
    # Warm the server up with one client and one message, then take the "before" reading.
    await settle_with_one_client(server)
    before = await server.settled_rss()

    tally = Tally(clients)
    gate = tally.expect_users(clients)
    meter = CpuMeter(server)
    start = time.perf_counter()
    peers = await connect_many(server.ws_url(ROOM), clients, tally)
    handshakes = time.perf_counter() - start
    complete = await gate.wait(give_up - handshakes)
    elapsed = time.perf_counter() - start
    cpu = meter.describe()
    if complete:
        results.put(server.kind, f"{key}_time", num(elapsed, 2))
    else:
        results.put(server.kind, f"{key}_time", Value(None, f"> {give_up:.0f} (gave up)"))
    results.note(
        server.kind,
        f"join: {clients} handshakes done after {handshakes:.2f} s "
        f"({CONNECT_CONCURRENCY} in flight at a time), every socket saw nb_users={clients} "
        + (f"after {elapsed:.2f} s" if complete else f"— only {gate.hits} did within {give_up:.0f} s")
        + f"; {cpu}",
    )

    counted = await server.wait_count(ROOM, clients, 10.0)
    after = await server.settled_rss()
    per_connection = (after - before) / clients / 1024
    results.put(server.kind, f"{key}_mem", num(per_connection, 1))
    results.note(
        server.kind,
        f"memory: RSS {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB with {clients} idle "
        f"sockets (/status {'agrees' if counted else 'DISAGREES'}) = {per_connection:.1f} kB each",
    )
    drop(peers)
