"""Fan-out in both dialects: one conversation read over /room (2.x), over /channel (3.x), and both.

    python bench/run.py --dialects                  # 2-5 minutes; or: python bench/scenarios_dialects.py
    python bench/run.py --dialects mixed --servers gischat --py-spy   # profile one arrangement
    git archive 82c0bd0 gischat | tar -x -C /tmp/before   # the last commit before the two dialects
    python bench/run.py --dialects --baseline /tmp/before  # scenario 1 on it too, as 'before'

A broadcast is serialised once and rendered once per dialect some recipient speaks
(gischat/protocol/dialects.py `Post.frame`, gischat/rooms/hub.py `Room.deliver`): a conversation read in
both dialects should cost the server about what one read in a single dialect does, one more
rendering per message and none per recipient. One gischat process serves every arrangement;
rounds alternate between them, the order rotating by one every round, so a drift in the
machine's load hits them all alike, and each round waits (up to QUIET_WAIT s) for the machine
to be quiet first:

  room     all 100 receivers on /room/{r}/ws (2.x frames: `{"type", keys...}`)
  channel  all 100 on /channel/{r}/ws (3.x frames: `{"type", "id", "timestamp", keys...}`, ~70
           bytes longer)
  mixed    every other socket on each route, 50 + 50; 2 of the 4 senders speak each dialect
  plain    scenario 1 of bench/run.py exactly (its code, its clients, all on /room): the
           regression check, beside the naive server running scenario 1 too when `--servers`
           includes it (the default), and with `--baseline DIR` beside the gischat package in
           DIR (another commit's, in its own process)

D1. fan-out: 100 receivers, 4 of them send 300 texts each without waiting for echoes
    (120,000 deliveries a round), FANOUT_ROUNDS (5) rounds of each arrangement, or `--rounds N`.
D2. latency at a fixed 20,000 deliveries/s (200 stamped texts/s into 100 receivers for 3 s),
    LATENCY_ROUNDS rounds of room, channel and mixed; in mixed, per receiving dialect too.

Every receiver checks that each text it counts is in its own socket's dialect. During the
flood, where parsing every frame would make the client the bottleneck, the frame's head is
matched: `{"type":"text","author":` on /room, `{"type":"text","id":"<uuid>","timestamp":<n>,
"author":` on /channel. Frames it parses (warm-up, counts, latency rounds) must carry exactly
their dialect's keys in that order. A frame of the wrong shape is still counted as a delivery,
and reported.

The table goes to stdout and to bench/results/dialects.md; server logs (and py-spy stacks) to
bench/results/*-dialects.*.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvloop
from harness import (
    CONNECT_CONCURRENCY,
    HOST,
    MAX_FRAME,
    OPTIONS,
    RELAY_ONLY,
    RESULTS_DIR,
    ROOM,
    SERVERS,
    CpuMeter,
    Peer,
    Server,
    Tally,
    describe_cores,
    drop,
    gischat_revision,
    joined_room,
    machine,
    machine_busy,
    ms,
    paced_sends,
    percentile,
    raise_fd_limit,
    running,
    warm_up,
)
from picows import WSFrame, WSMsgType, WSTransport, ws_connect  # type: ignore[import-not-found, unused-ignore]
from scenarios_fanout import (
    FANOUT_CLIENTS,
    FANOUT_MESSAGES,
    FANOUT_ROUNDS,
    FANOUT_SENDERS,
    LATENCY_CLIENTS,
    LATENCY_RATE,
    LATENCY_SENDERS,
    Flood,
    flood,
)


class Dialect(StrEnum):
    """The route a socket opened, as gischat/protocol/dialects.py names them (not imported from there, so
    the bench also runs beside an older gischat tree, see --baseline)."""

    ROOM = "room"  # 2.x: /room/{r}/ws
    CHANNEL = "channel"  # 3.x: /channel/{c}/ws


def is_message_id(value: Any) -> bool:
    """Whether `value` is an id as the 3.x dialect writes it: a canonical lowercase UUID."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


LATENCY_ROUNDS, LATENCY_SECONDS, LATENCY_TIMEOUT = 3, 3.0, 5.0
JOIN_TIMEOUT = 10.0
# A round is quiet when the rest of the machine used less than this many cores meanwhile: on a
# shared machine the rate of the others is mostly how much CPU was left to the server.
QUIET_OTHERS = 0.25
# Before each round, wait up to this long for the machine to be quiet (busy below QUIET_OTHERS
# cores over half a second): bursts of other work on a shared machine otherwise decide the rates.
QUIET_WAIT = 10.0
QUIET_BUDGET = 90.0  # seconds of such waiting over the whole run, at most
MIXED_TARGET = 0.9  # mixed deliveries/s at least this share of each single-dialect arrangement's

DIALECTS = ("room", "channel", "mixed")  # arrangements of gischat's two routes
ARRANGEMENTS = (*DIALECTS, "plain")  # plus scenario 1 as it is
LABELS = {
    "room": "all /room (2.x)",
    "channel": "all /channel (3.x)",
    "mixed": "mixed, half each",
    "plain": "scenario 1, gischat",
    "before": "scenario 1, gischat before",
    "naive": "scenario 1, naive",
}
# docs/benchmarks.md: scenario 1 before the two dialects (2 cores, Python 3.11.7).
README_FANOUT = {"gischat": 70_175.0, "naive": 57_812.0}

# What a text's head looks like in each dialect: enough to tell them apart, matched on every frame.
TEXT_HEAD = b'{"type":"text",'
HEAD_BYTES = 96
TEXT_SHAPE = {
    Dialect.ROOM: re.compile(rb'\{"type":"text","author":'),
    Dialect.CHANNEL: re.compile(rb'\{"type":"text","id":"[0-9a-f-]{36}","timestamp":\d+,"author":'),
}
# The keys of a parsed frame, in order (the bench sends texts with an avatar and no reply).
ENVELOPE = {Dialect.ROOM: ["type"], Dialect.CHANNEL: ["type", "id", "timestamp"]}
TEXT_KEYS = ["author", "avatar", "text"]


def dialect_of(arrangement: str, index: int) -> Dialect:
    """The route the `index`-th socket of an arrangement opens (senders are the first four)."""
    if arrangement == "channel":
        return Dialect.CHANNEL
    if arrangement == "mixed" and index % 2:
        return Dialect.CHANNEL
    return Dialect.ROOM


def ws_url(server: Server, dialect: Dialect, room: str = ROOM) -> str:
    return f"ws://{HOST}:{server.port}/{dialect}/{quote(room, safe='')}/ws"


def shape_error(message: dict[str, Any], dialect: Dialect) -> str | None:
    """Why a parsed frame is not in `dialect`'s shape; None when it is."""
    keys = list(message)
    envelope = ENVELOPE[dialect]
    if keys[: len(envelope)] != envelope:
        return f"{dialect} frame starts with {keys[: len(envelope)]}"
    rest = keys[len(envelope) :]
    if dialect is Dialect.CHANNEL:
        if not is_message_id(message["id"]) or not isinstance(message["timestamp"], int):
            return f"channel frame with id {message['id']!r}, timestamp {message['timestamp']!r}"
    elif "id" in rest or "timestamp" in rest:
        return f"room frame with keys {keys}"
    if message["type"] == "text" and rest != TEXT_KEYS:
        return f"{dialect} text with keys {keys}"
    return None


class DialectTally(Tally):
    """A tally that also checks every frame against its socket's dialect, and keeps latencies
    apart per receiving dialect."""

    def __init__(self, peers: int) -> None:
        super().__init__(peers)
        self.wrong = 0
        self.wrong_examples: list[str] = []
        self.by_dialect: dict[Dialect, list[int]] = {dialect: [] for dialect in Dialect}

    def record(self, per_peer: int, peers: Sequence[Peer]) -> None:
        super().record(per_peer, peers)
        self.by_dialect = {dialect: [] for dialect in Dialect}

    def misshapen(self, reason: str) -> None:
        self.wrong += 1
        if len(self.wrong_examples) < 3:
            self.wrong_examples.append(reason)

    def __call__(self, peer: Peer, message: dict[str, Any], now: int) -> None:
        assert isinstance(peer, DialectPeer)
        reason = shape_error(message, peer.dialect)
        if reason is not None:
            self.misshapen(reason)
        if self.recording and message.get("type") == "text":
            self.by_dialect[peer.dialect].append(now - int(message["text"].split(" ", 1)[0]))
        super().__call__(peer, message, now)


class DialectPeer(Peer):
    """A client of one route; while a flood is counted, it matches each text's head to its dialect."""

    def __init__(self, tally: DialectTally, dialect: Dialect) -> None:
        super().__init__(tally)
        self.dialect = dialect
        self.shape = TEXT_SHAPE[dialect]

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        tally = self.tally
        if tally.count_only and tally.recording and frame.msg_type == WSMsgType.TEXT:
            now = time.perf_counter_ns()
            head = frame.get_payload_as_memoryview()[:HEAD_BYTES].tobytes()
            if head.startswith(TEXT_HEAD):
                if self.shape.match(head) is None:
                    assert isinstance(tally, DialectTally)
                    tally.misshapen(f"{self.dialect} text starting {head[:60]!r}")
                tally.count(self, now)
                return
        super().on_ws_frame(transport, frame)


async def joined(server: Server, arrangement: str, count: int) -> tuple[DialectTally, list[Peer]]:
    """`count` clients of the conversation over the arrangement's routes, each having seen
    nb_users == count (sockets of both routes count alike)."""
    tally = DialectTally(count)
    tally.expect_users(count)
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(index: int) -> Peer:
        dialect = dialect_of(arrangement, index)
        async with semaphore:
            _, listener = await ws_connect(
                lambda: DialectPeer(tally, dialect),
                ws_url(server, dialect),
                max_frame_size=MAX_FRAME,
                websocket_handshake_timeout=10,
            )
        assert isinstance(listener, DialectPeer)
        return listener

    peers = list(await asyncio.gather(*(one(index) for index in range(count))))
    if not await tally.users_gate.wait(JOIN_TIMEOUT):
        drop(peers)
        raise RuntimeError(f"{arrangement}: {count} clients did not all see nb_users={count}")
    return tally, peers


@dataclass
class Outcome:
    """Every round of one arrangement."""

    rates: list[float] = field(default_factory=list)  # deliveries/s, one per round, in round order
    others: list[float] = field(default_factory=list)  # cores busy outside the server and the client
    worst: int = FANOUT_CLIENTS * FANOUT_SENDERS * FANOUT_MESSAGES
    server_cores: list[float] = field(default_factory=list)
    us_per_delivery: list[float] = field(default_factory=list)
    wrong: int = 0
    wrong_examples: list[str] = field(default_factory=list)
    latencies: list[int] = field(default_factory=list)
    by_dialect: dict[Dialect, list[int]] = field(default_factory=lambda: {d: [] for d in Dialect})
    latency_incomplete: int = 0

    def add_flood(self, done: Flood) -> float:
        rate = done.delivered / done.elapsed if done.delivered else 0.0
        self.rates.append(rate)
        self.worst = min(self.worst, done.delivered)
        self.others.append(done.cpu[2])
        if done.delivered:
            self.server_cores.append(done.cpu[0])
            self.us_per_delivery.append(done.cpu[0] * done.elapsed / done.delivered * 1e6)
        return rate

    def quiet_rates(self) -> list[float]:
        return [rate for rate, others in zip(self.rates, self.others, strict=True) if others < QUIET_OTHERS]

    def add_shapes(self, tally: DialectTally) -> None:
        self.wrong += tally.wrong
        self.wrong_examples.extend(tally.wrong_examples[: 3 - len(self.wrong_examples)])


class Quiet:
    """Before each round, half a second in which the machine is quiet (busy below QUIET_OTHERS cores),
    waiting at most QUIET_WAIT s for it, and QUIET_BUDGET s over the whole run."""

    def __init__(self) -> None:
        self.left = QUIET_BUDGET

    async def settle(self) -> str:
        """Wait for a quiet half second; what it took, for the round's note."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            busy, start = machine_busy(), loop.time()
            await asyncio.sleep(0.5)
            cores = (machine_busy() - busy) / (loop.time() - start)
            waited = loop.time() - began
            if cores < QUIET_OTHERS:
                return f" (waited {waited:.1f} s for a quiet machine)" if waited > 1.0 else ""
            self.left -= loop.time() - start
            if waited >= QUIET_WAIT or self.left <= 0:
                return f" (machine still busy, {cores:.2f} cores, after {waited:.0f} s)"


async def fanout_once(server: Server, arrangement: str, outcome: Outcome) -> str:
    """One flood of one arrangement; the note to print."""
    expected = FANOUT_CLIENTS * FANOUT_SENDERS * FANOUT_MESSAGES
    gc.collect()
    wrong = 0
    if arrangement in ("plain", "before", "naive"):
        # bench/run.py's fanout_round, with the flood's numbers kept apart.
        plain_tally, plain_peers = await joined_room(server, ROOM, FANOUT_CLIENTS)
        done = await flood(server, plain_tally, plain_peers)
    else:
        tally, peers = await joined(server, arrangement, FANOUT_CLIENTS)
        done = await flood(server, tally, peers)
        outcome.add_shapes(tally)
        wrong = tally.wrong
    rate = outcome.add_flood(done)
    return (
        f"{done.delivered:,}/{expected:,} in {done.elapsed:.3f} s = {rate:,.0f}/s; {describe_cores(done.cpu)}"
        + (f"; {wrong} MISSHAPEN frames" if wrong else "")
        + ("" if done.complete else " — INCOMPLETE")
        + (f"; the server closed {len(done.closed)} clients" if done.closed else "")
        + (f"; {len(done.errors)} uncompliant replies, e.g. {done.errors[0]!r}" if done.errors else "")
    )


async def latency_once(server: Server, arrangement: str, outcome: Outcome) -> str:
    """Paced texts into the conversation, every text parsed and checked by every receiver."""
    gc.collect()
    tally, peers = await joined(server, arrangement, LATENCY_CLIENTS)
    try:
        await warm_up(tally, peers)
        count = round(LATENCY_RATE * LATENCY_SECONDS)
        tally.record(count, peers)
        meter = CpuMeter(server)
        await paced_sends(peers[:LATENCY_SENDERS], LATENCY_RATE, LATENCY_SECONDS, "latency")
        complete = await tally.texts_gate.wait(LATENCY_TIMEOUT)
        cpu = meter.describe()
    finally:
        drop(peers)
    await server.wait_count(ROOM, 0, 5.0)
    outcome.add_shapes(tally)
    outcome.latencies.extend(tally.latencies)
    for dialect, values in tally.by_dialect.items():
        outcome.by_dialect[dialect].extend(values)
    if not complete:
        outcome.latency_incomplete += 1
    lat = tally.latencies
    return (
        f"{len(lat):,} deliveries, p50 {ms(percentile(lat, 50)):.2f} / p99 {ms(percentile(lat, 99)):.2f} / "
        f"max {ms(max(lat, default=0)):.2f} ms; {cpu}" + ("" if complete else " — INCOMPLETE")
    )


def rotated(items: Sequence[str], by: int) -> list[str]:
    by %= max(len(items), 1)
    return [*items[by:], *items[:by]]


def median_of(values: Sequence[float], digits: int) -> str:
    return f"{statistics.median(values):,.{digits}f}" if values else "—"


def quiet_cell(outcome: Outcome) -> str:
    rates = outcome.quiet_rates()
    return f"{median_range(rates)}, {len(rates)}" if rates else "none"


def median_range(values: Sequence[float]) -> str:
    if not values:
        return "not run"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f} to {max(values):,.0f})"


def ratio(a: Sequence[float], b: Sequence[float]) -> float | None:
    if not a or not b or not statistics.median(b):
        return None
    return statistics.median(a) / statistics.median(b)


def paired(a: Sequence[float], b: Sequence[float]) -> str:
    """a / b round by round (the two ran back to back), as median (range)."""
    ratios = [x / y for x, y in zip(a, b, strict=False) if y]
    if not ratios:
        return "—"
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f} to {max(ratios):.2f})"


def latency_at(q: float) -> Callable[[Outcome], list[float]]:
    """An arrangement's pooled latency percentile, in ms (none when it ran no latency round)."""
    return lambda o: [ms(percentile(o.latencies, q))] if o.latencies else []


def scenario_one_table(outcomes: dict[str, Outcome], baseline: str | None) -> list[str]:
    """Scenario 1 as run beside the dialects: gischat now, gischat before (a baseline tree), naive."""
    columns = [name for name in ("plain", "before", "naive") if name in outcomes]
    if "plain" not in columns:
        return []
    expected = FANOUT_CLIENTS * FANOUT_SENDERS * FANOUT_MESSAGES
    plain = outcomes["plain"]
    others = [name for name in columns if name != "plain"]

    def line(label: str, show: Callable[[Outcome], str], compare: Callable[[Outcome, Outcome], str]) -> str:
        cells = [show(outcomes[name]) for name in columns]
        cells += [compare(plain, outcomes[name]) for name in others]
        return f"| {label} | " + " | ".join(cells) + " |"

    def of(r: float | None) -> str:
        return "—" if r is None else f"{r:.2f}"

    readme = README_FANOUT["gischat"] / README_FANOUT["naive"]
    lines = [
        "",
        "Scenario 1 (bench/run.py's fan-out: its code, its clients, all on /room) in the same run"
        + (f"; 'before' is gischat from {baseline}" if baseline else "")
        + f". docs/benchmarks.md before the two dialects: gischat {README_FANOUT['gischat']:,.0f}, naive "
        f"{README_FANOUT['naive']:,.0f} deliveries/s, ratio {readme:.2f}.",
        "",
        "| metric | "
        + " | ".join(LABELS[name] for name in columns)
        + "".join(f" | now / {LABELS[name].removeprefix('scenario 1, ')}" for name in others)
        + " |",
        "| --- |" + " ---: |" * (len(columns) + len(others)),
        line(
            f"1. fan-out deliveries/s (median (range) of {len(plain.rates)})",
            lambda o: median_range(o.rates),
            lambda a, b: of(ratio(a.rates, b.rates)),
        ),
        line(
            "1. the same, round by round (median (range) of the paired ratios)",
            lambda o: "—",
            lambda a, b: paired(a.rates, b.rates),
        ),
        line(
            f"1. the same, quiet rounds only (other processes < {QUIET_OTHERS} core): median (range), rounds",
            quiet_cell,
            lambda a, b: of(ratio(a.quiet_rates(), b.quiet_rates())),
        ),
        line(
            "1. deliveries completed (worst round)",
            lambda o: f"{o.worst:,}" + ("" if o.worst == expected else " INCOMPLETE"),
            lambda a, b: "—",
        ),
        line(
            "1. server CPU per delivery (µs, median; lower is better)",
            lambda o: median_of(o.us_per_delivery, 2),
            lambda a, b: of(ratio(a.us_per_delivery, b.us_per_delivery)),
        ),
        line(
            "1. other processes' CPU during the flood (cores, median)",
            lambda o: median_of(o.others, 2),
            lambda a, b: "—",
        ),
    ]
    return lines


def report(outcomes: dict[str, Outcome], notes: list[str], took: float, baseline: str | None) -> str:
    expected = FANOUT_CLIENTS * FANOUT_SENDERS * FANOUT_MESSAGES
    room, channel, mixed = (outcomes.get(name) for name in DIALECTS)
    rows: list[list[str]] = []

    def row(
        label: str,
        pick: Callable[[Outcome], list[float]],
        show: Callable[[list[float]], str],
        target: str = "—",
        with_ratio: bool = True,
    ) -> None:
        """One metric per arrangement; with_ratio: mixed's median over each single dialect's."""
        values = {name: pick(outcome) for name, outcome in outcomes.items() if name in DIALECTS}
        cells = [show(values[name]) if name in values else "not run" for name in DIALECTS]
        for base in ("room", "channel"):
            r = ratio(values.get("mixed", []), values.get(base, [])) if with_ratio else None
            cells.append("—" if r is None else f"{r:.2f}")
        rows.append([label, *cells, target])

    rounds = len(next(iter(outcomes.values())).rates) if outcomes else 0
    row(
        f"D1. fan-out deliveries/s ({FANOUT_CLIENTS} receivers, {FANOUT_SENDERS} x {FANOUT_MESSAGES} texts; "
        f"median (range) of {rounds})",
        lambda o: o.rates,
        median_range,
        f"mixed ≥ {MIXED_TARGET}x each",
    )
    if room and channel and mixed:
        rows.append(
            [
                "D1. the same, mixed / single dialect round by round (median (range) of the paired ratios)",
                "—",
                "—",
                "—",
                paired(mixed.rates, room.rates),
                paired(mixed.rates, channel.rates),
                "—",
            ]
        )
    row(
        f"D1. the same, quiet rounds only (other processes < {QUIET_OTHERS} core): median (range), rounds",
        lambda o: o.quiet_rates(),
        lambda v: f"{median_range(v)}, {len(v)}" if v else "none",
    )
    row(
        "D1. deliveries completed (worst round)",
        lambda o: [float(o.worst)],
        lambda v: f"{v[0]:,.0f}",
        f"all {expected:,}",
        with_ratio=False,
    )
    row(
        "D1. server CPU per delivery (µs, median)",
        lambda o: o.us_per_delivery,
        lambda v: median_of(v, 2),
    )
    row(
        "D1. server CPU during the flood (cores, median)",
        lambda o: o.server_cores,
        lambda v: median_of(v, 2),
        with_ratio=False,
    )
    row(
        "D1. other processes' CPU during the flood (cores, median: the machine's noise)",
        lambda o: o.others,
        lambda v: median_of(v, 2),
        with_ratio=False,
    )
    row(
        "D1+D2. texts misshapen for the socket's dialect (every round)",
        lambda o: [float(o.wrong)],
        lambda v: f"{v[0]:,.0f}",
        "0",
        with_ratio=False,
    )
    rate = f"{LATENCY_RATE * LATENCY_CLIENTS:,}"
    for q in (50, 99):
        row(
            f"D2. latency p{q} @ {rate} deliveries/s (ms, {LATENCY_ROUNDS} rounds pooled)",
            latency_at(q),
            lambda v: f"{v[0]:.2f}" if v else "—",
            "< 10 ms (scenario 2)" if q == 99 else "—",
        )
    if mixed is not None and mixed.latencies:
        split = "; ".join(
            f"{dialect} {ms(percentile(values, 50)):.2f} / {ms(percentile(values, 99)):.2f}"
            for dialect, values in mixed.by_dialect.items()
        )
        rows.append(["D2. mixed: p50 / p99 per receiving dialect (ms)", "—", "—", split, "—", "—", "—"])
    incomplete = sum(o.latency_incomplete for name, o in outcomes.items() if name in DIALECTS)
    met: list[str] = []
    if room and channel and mixed:
        lows = [
            r for r in (ratio(mixed.rates, room.rates), ratio(mixed.rates, channel.rates)) if r is not None
        ]
        ok = bool(lows) and min(lows) >= MIXED_TARGET and mixed.wrong == room.wrong == channel.wrong == 0
        met.append(
            f"Target mixed ≥ {MIXED_TARGET}x of each single dialect, no misshapen frame: "
            + ("met" if ok else "**not met**")
            + (f"; {incomplete} latency rounds incomplete" if incomplete else "")
            + "."
        )
    header = (
        "| metric | " + " | ".join(LABELS[name] for name in DIALECTS) + " | mixed / all-room | "
        "mixed / all-channel | target |"
    )
    lines = [header, "| --- |" + " ---: |" * 5 + " --- |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    if not any(name in outcomes for name in DIALECTS):
        lines = []  # scenario 1 alone (--dialects plain)

    plain_lines = scenario_one_table(outcomes, baseline)
    if room is not None and "plain" in outcomes:
        r = ratio(room.rates, outcomes["plain"].rates)
        plain_lines += [
            "",
            f"all /room ÷ scenario 1 on the same gischat: {'—' if r is None else f'{r:.2f}'} "
            "(the same wire; only the clients differ, by the dialect check's head match per frame).",
        ]
    examples = [e for o in outcomes.values() for e in o.wrong_examples]
    return "\n".join(
        [
            *lines,
            *(["", *met] if met else []),
            *plain_lines,
            *(["", "Misshapen frames, e.g.: " + "; ".join(examples)] if examples else []),
            "",
            f"Machine: {machine()}. gischat {gischat_revision()}. Took {took:.0f} s.",
            "",
            "Rounds (CPU in cores over each measured window):",
            *(f"- {note}" for note in notes),
        ]
    )


async def main(
    arrangements: Sequence[str] = ARRANGEMENTS,
    servers: Sequence[str] = SERVERS,
    baseline: str | None = None,
    rounds: int = FANOUT_ROUNDS,
) -> int:
    """`baseline`: a directory holding another gischat package (e.g. `git archive <commit> gischat | tar
    -x -C DIR`) whose scenario 1 runs beside, as 'before', in its own process."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(FANOUT_CLIENTS * 2 + 64)
    for name, value in RELAY_ONLY.items():  # see harness.RELAY_ONLY; --gischat-env still wins
        OPTIONS.gischat_env.setdefault(name, value)
    wanted = [name for name in ARRANGEMENTS if name in arrangements]
    if "plain" in wanted and baseline is not None:
        if not (Path(baseline) / "gischat" / "__main__.py").is_file():
            raise SystemExit(f"--baseline: no gischat package in {baseline}")
        wanted.append("before")
    if "plain" in wanted and "naive" in servers:
        wanted.append("naive")
    outcomes = {name: Outcome() for name in wanted}
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        print("   ", text, flush=True)

    calm = Quiet()
    began = time.perf_counter()
    gc.disable()  # as bench/run.py: no collector pauses mid-measurement, a collection between rounds
    try:
        async with contextlib.AsyncExitStack() as stack:
            started = {"gischat": await stack.enter_async_context(running("gischat", "dialects"))}
            if "before" in wanted:
                started["before"] = await stack.enter_async_context(
                    running("gischat", "dialects-before", extra_env={"PYTHONPATH": str(baseline)})
                )
            if "naive" in wanted:
                started["naive"] = await stack.enter_async_context(running("naive", "dialects"))
            print(f"== D1. fan-out, rounds alternating: {', '.join(wanted)}", flush=True)
            for round_no in range(rounds):
                for name in rotated(wanted, round_no):
                    server = started.get(name, started["gischat"])
                    waited = await calm.settle()
                    text = await fanout_once(server, name, outcomes[name])
                    note(f"fan-out round {round_no + 1}, {LABELS[name]}: {text}{waited}")
            latency_plan = [name for name in wanted if name in DIALECTS]
            if latency_plan:
                print(f"== D2. latency, rounds alternating: {', '.join(latency_plan)}", flush=True)
            for round_no in range(LATENCY_ROUNDS if latency_plan else 0):
                for name in rotated(latency_plan, round_no):
                    waited = await calm.settle()
                    text = await latency_once(started["gischat"], name, outcomes[name])
                    note(f"latency round {round_no + 1}, {LABELS[name]}: {text}{waited}")
    finally:
        gc.enable()
    table = report(outcomes, notes, time.perf_counter() - began, baseline)
    print()
    print(table)
    (RESULTS_DIR / "dialects.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
