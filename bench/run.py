"""Load benchmark: gischat against a naive broadcast server (and, in the fan-out, bare picows and
Node.js ws servers), over real sockets.

    pip install -e ".[test,bench]"
    python bench/run.py                      # every scenario, every server (~2-3 minutes)
    python bench/run.py --scenarios 1,2      # the fan-out and latency: gischat, naive, picows, node
    python bench/run.py --scenarios 1,2 --servers gischat,picows --no-pin
    python bench/run.py --scenarios 1,5 --servers gischat --gischat-env SEND_QUEUE_SIZE=512
    python bench/run.py --scenarios 1 --py-spy   # also profile the servers (root or ptrace rights)
    python bench/run.py --dialects           # fan-out over /room, /channel and both (2-5 minutes)

Each server runs as its own subprocess (`python -m gischat`; `python bench/naive_server.py`,
which runs uvicorn with gischat's own `uvicorn_options`) on 127.0.0.1 and a free port, afresh
for every scenario. The load comes from this process: picows clients (frames parsed in
Cython, one Python callback per message) on uvloop. The CPU used by the server, by this
client and by anything else on the machine is printed with every result, to show which side
bounded the measurement and how noisy the machine was.

Reference servers, in scenarios 1 and 2 only (they implement the room fan-out and /status, not
gischat's photos or its stalled-reader guard): `picows` (bench/picows_server.py: what the fan-out
costs with no framework at all, in Python) and `node` (bench/node_ws/server.js: the same on Node.js
and `ws`; its node_modules are installed with npm on first use, and the node column is skipped with
a message when node is missing). Each serialises a message once and hands the same bytes to every
member. The table adds a "gischat / X" ratio column for each server beside gischat.

In scenarios 1 and 2 every server is pinned to the same single core (`--pin-core`, by default
the last one this process may use; `os.sched_setaffinity`, as `taskset -c`), so that each gets one
core, whether it is single-threaded (the Python servers) or not (Node's helper threads); the load
generator is not pinned. `--no-pin` turns it off. Scenarios 3-6 leave the servers unpinned: gischat
resizes photos in worker processes, which one core would serialise with the relay.

Scenarios (bench/scenarios_fanout.py: 1-4 and 7; bench/scenarios_isolation.py: 5-6; the plumbing
they share is bench/harness.py):
  1. fan-out: 100 clients in one room, 4 of them send 300 texts each without waiting for
     echoes (120,000 deliveries); rounds alternate between the two servers.
  2. latency at a fixed 20,000 deliveries/s: 200 stamped messages/s into a room of 100; three
     rounds alternating between the servers, each row the median round (and the range).
  3. 1,000 clients join one room, 100 handshakes in flight; every socket must see nb_users=1000.
  4. server RSS per idle connection: around scenario 3's 1,000 sockets, once RSS settles.
  5. a client that never reads, beside 20 readers of a paced sender (texts plus 60 kB CRS
     messages, so the stalled socket's ~3 MB of loopback buffers fill within seconds).
  6. 4000x3000 JPEG photos sent in one room while another room does round trips.
  7. scenarios 3 and 4 with 10,000 clients, gischat alone (the naive loop broadcasts nb_users to
     everyone on every join: quadratic, minutes at this size).

With --dialects, bench/scenarios_dialects.py runs instead: the fan-out with every receiver on
/room (2.x), every one on /channel (3.x) and half on each, rounds alternating, beside scenario 1
(gischat and naive) as the regression check; its table goes to bench/results/dialects.md.

The table goes to stdout and to bench/results/latest.md; server logs (and py-spy stacks) to
bench/results/.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import uvloop
from harness import (
    CONNECT_CONCURRENCY,
    OPTIONS,
    REFERENCE_SERVERS,
    RELAY_ONLY,
    RESULTS_DIR,
    SERVERS,
    Results,
    Server,
    Value,
    gischat_revision,
    machine,
    make_photo,
    node_unavailable,
    node_version,
    raise_fd_limit,
    running,
)
from scenarios_dialects import ARRANGEMENTS as DIALECT_ARRANGEMENTS
from scenarios_dialects import main as dialects_main
from scenarios_fanout import (
    CROWD_CLIENTS,
    FANOUT_CLIENTS,
    FANOUT_MESSAGES,
    FANOUT_ROUNDS,
    FANOUT_SENDERS,
    JOIN_CLIENTS,
    LATENCY_CLIENTS,
    LATENCY_RATE,
    LATENCY_ROUNDS,
    scenario_crowd,
    scenario_fanout,
    scenario_join_and_memory,
    scenario_latency,
)
from scenarios_isolation import PHOTO_COUNT, scenario_photo, scenario_stall

# --------------------------------------------------------------------------- metrics


@dataclass
class Metric:
    key: str
    label: str
    target: str
    # gischat's value, the naive one (may be missing) -> met or not; None: no target.
    met: Callable[[Value, Value | None], bool] | None = None
    ratio: bool = True


def below(limit: float) -> Callable[[Value, Value | None], bool]:
    return lambda g, _n: g.number is not None and g.number < limit


def at_least_naive(g: Value, n: Value | None) -> bool:
    if g.number is None:
        return False
    return n is None or n.number is None or g.number >= n.number


METRICS = [
    Metric(
        "fanout_rate",
        f"1. fan-out deliveries/s ({FANOUT_CLIENTS} clients, {FANOUT_SENDERS}x{FANOUT_MESSAGES} msgs; median (range) of {FANOUT_ROUNDS})",
        "≥ naive",
        at_least_naive,
    ),
    Metric(
        "fanout_done",
        "1. fan-out deliveries completed",
        f"all {FANOUT_CLIENTS * FANOUT_SENDERS * FANOUT_MESSAGES:,}",
        lambda g, _n: g.number == FANOUT_CLIENTS * FANOUT_SENDERS * FANOUT_MESSAGES,
        ratio=False,
    ),
    Metric(
        "lat_p50",
        f"2. latency p50 @ {LATENCY_RATE * LATENCY_CLIENTS:,} deliveries/s (ms; median (range) of {LATENCY_ROUNDS})",
        "—",
    ),
    Metric(
        "lat_p99",
        f"2. latency p99 @ {LATENCY_RATE * LATENCY_CLIENTS:,} deliveries/s (ms; median (range) of {LATENCY_ROUNDS})",
        "< 10 ms",
        below(10.0),
    ),
    Metric(
        "lat_max", f"2. latency max @ {LATENCY_RATE * LATENCY_CLIENTS:,} deliveries/s (ms; worst round)", "—"
    ),
    Metric(
        "join_time",
        f"3. {JOIN_CLIENTS:,} clients joined, all saw nb_users={JOIN_CLIENTS} (s)",
        "< 2 s",
        below(2.0),
    ),
    Metric("join_mem", "4. server RSS per idle connection (kB)", "< 30 kB", below(30.0)),
    Metric(
        "crowd_time",
        f"7. {CROWD_CLIENTS:,} clients joined, all saw nb_users={CROWD_CLIENTS} (s)",
        "< 5 s",
        below(5.0),
    ),
    Metric("crowd_mem", f"7. server RSS per idle connection, {CROWD_CLIENTS:,} (kB)", "< 25 kB", below(25.0)),
    Metric(
        "crowd_picows_time",
        f"7. the same {CROWD_CLIENTS:,} joins from the picows client (s)",
        "—",
    ),
    Metric("stall_base_p99", "5. readers p50 / p99 without stalled client (ms)", "—"),
    Metric(
        "stall_p99",
        "5. readers p50 / p99 with stalled client (ms)",
        "< 10 ms, none stalled or lost",
        lambda g, _n: g.number is not None and g.number < 10.0 and "lost" not in g.text,
    ),
    Metric(
        "stall_verdict",
        "5. stalled client",
        "disconnected",
        lambda g, _n: g.text.startswith("disconnected"),
        ratio=False,
    ),
    Metric(
        "photo_time",
        f"6. photo send → resized broadcast (s, median of {PHOTO_COUNT})",
        "—",
        ratio=False,
    ),
    Metric("photo_rtt_p99", "6. other room round trip p99 during photos (ms)", "—"),
    Metric("photo_rtt_max", "6. other room round trip max during photos (ms)", "< 25 ms", below(25.0)),
]


# --------------------------------------------------------------------------- report

# The scenarios the reference servers (harness.REFERENCE_SERVERS) take part in.
REFERENCE_SCENARIOS = {1, 2}


def ratio_cell(metric: Metric, g: Value | None, other: Value | None) -> str:
    if metric.ratio and g and other and g.number is not None and other.number:
        return f"{g.number / other.number:.2f}"
    return "—"


def table(results: Results, servers: Sequence[str]) -> str:
    """One column per server that ran, then gischat / each other server, then the target (against naive)."""
    others = [kind for kind in servers if kind != "gischat"] if "gischat" in servers else []
    header = ["metric", *servers, *(f"gischat / {kind}" for kind in others), "target", "met?"]
    aligns = ["---", *(["---:"] * (len(servers) + len(others))), "---", "---"]
    lines = [f"| {' | '.join(header)} |", f"| {' | '.join(aligns)} |"]
    for metric in METRICS:
        values = results.values.get(metric.key)
        if not values:
            continue
        g, n = values.get("gischat"), values.get("naive")
        met = "—"
        if metric.met is not None and g is not None:
            met = "yes" if metric.met(g, n) else "**no**"
        cells = [
            metric.label,
            *(value.text if (value := values.get(kind)) else "not run" for kind in servers),
            *(ratio_cell(metric, g, values.get(kind)) for kind in others),
            metric.target,
            met,
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


async def main(scenarios: Sequence[int], servers: Sequence[str], core: int | None) -> int:
    """`core`: the CPU every server is pinned to in scenarios 1 and 2 (None: no pinning)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fd_limit = raise_fd_limit(CROWD_CLIENTS if 7 in scenarios else JOIN_CLIENTS)
    results = Results()
    began = time.perf_counter()
    skipped: list[str] = []
    if "node" in servers and REFERENCE_SCENARIOS & set(scenarios):
        reason = node_unavailable()
        if reason is not None:
            skipped.append(f"Node column skipped: {reason}.")
            print(f"   {skipped[-1]}", flush=True)
            servers = [kind for kind in servers if kind != "node"]
    # Scenarios 3-6 ask for more than the reference servers implement.
    full_servers = [kind for kind in servers if kind not in REFERENCE_SERVERS]
    photo_b64 = ""
    if 6 in scenarios:
        photo_b64 = base64.b64encode(make_photo()).decode("ascii")

    def alternating(
        label: str, scenario: Callable[[dict[str, Server], Results], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        async def run_rounds() -> None:
            async with contextlib.AsyncExitStack() as stack:
                started = {
                    kind: await stack.enter_async_context(running(kind, label, core=core)) for kind in servers
                }
                await scenario(started, results)

        return run_rounds

    def each_server(
        label: str,
        scenario: Callable[[Server, Results], Awaitable[None]],
        kinds: Sequence[str] = full_servers,
        pin: int | None = None,
    ) -> Callable[[], Awaitable[None]]:
        async def run_all() -> None:
            for kind in kinds:
                print(f"   on {kind}", flush=True)
                gc.collect()
                try:
                    async with running(kind, label, core=pin) as server:
                        await scenario(server, results)
                except Exception as exc:  # one broken scenario must not cost the others
                    results.note(kind, f"{label}: FAILED: {exc!r}")

        return run_all

    plan: list[tuple[set[int], str, Callable[[], Awaitable[None]]]] = [
        ({1}, "fan-out, rounds alternating between the servers", alternating("fanout", scenario_fanout)),
        ({2}, "latency, rounds alternating between the servers", alternating("latency", scenario_latency)),
        ({3, 4}, "join + memory", each_server("join", scenario_join_and_memory)),
        ({5}, "stalled reader", each_server("stall", scenario_stall)),
        ({6}, "photo", each_server("photo", lambda server, res: scenario_photo(server, res, photo_b64))),
        ({7}, "crowd of idle sockets", each_server("crowd", scenario_crowd, ["gischat"])),
    ]
    # The load generator allocates a dict per message: no collector pauses mid-measurement,
    # a full collection between scenarios instead.
    gc.disable()
    timings: list[str] = []
    for numbers, label, run in plan:
        if not numbers & set(scenarios):
            continue
        print(f"== {label}", flush=True)
        started_at = time.perf_counter()
        await run()
        timings.append(f"{label} {time.perf_counter() - started_at:.0f} s")
    took = time.perf_counter() - began

    pinning = "not pinned (--no-pin)" if core is None else f"all pinned to core {core}"
    report = "\n".join(
        [
            table(results, servers),
            "",
            "gischat / X: higher is better for deliveries/s, lower for times, latencies and memory; "
            "targets are against naive. picows and node run scenarios 1 and 2 only.",
            " ".join([f"Servers in scenarios 1-2: {pinning}; the load generator is not pinned.", *skipped]),
            f"Machine: {machine()}"
            + (f"; {node_version()}" if "node" in servers and REFERENCE_SCENARIOS & set(scenarios) else "")
            + f". gischat {gischat_revision()}.",
            f"Bench took {took:.0f} s ({', '.join(timings)}); RLIMIT_NOFILE {fd_limit} for the client and "
            f"the servers; connections opened {CONNECT_CONCURRENCY} handshakes at a time.",
            "",
            "Notes (CPU in cores over each measured window: the server is one process and one thread; "
            "'other processes' is whatever else ran on the machine meanwhile and makes the numbers noisier):",
            *(f"- {line}" for line in results.notes),
        ]
    )
    print()
    print(report)
    (RESULTS_DIR / "latest.md").write_text(report + "\n")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description="gischat load benchmark against reference servers")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="comma-separated scenario numbers")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated subset of {','.join(SERVERS)} ({', '.join(REFERENCE_SERVERS)}: scenarios 1-2 only)",
    )
    cores = sorted(os.sched_getaffinity(0))
    parser.add_argument(
        "--pin-core",
        type=int,
        default=cores[-1],
        metavar="N",
        help=f"in scenarios 1-2, pin every server to CPU N (default {cores[-1]}, the last this process may use)",
    )
    parser.add_argument("--no-pin", action="store_true", help="let the servers run on any core")
    parser.add_argument(
        "--gischat-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra setting for the gischat server (repeatable), e.g. SEND_QUEUE_SIZE=4096",
    )
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="profile each server with py-spy (bench extra); stacks go to bench/results/*.py-spy.txt",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="run the scale-out scenarios instead (bench/scenarios_redis.py: 2 nodes on Redis vs 1 on memory://)",
    )
    parser.add_argument(
        "--dialects",
        nargs="?",
        const=",".join(DIALECT_ARRANGEMENTS),
        metavar="ARRANGEMENTS",
        help="run the two-dialect fan-out instead (bench/scenarios_dialects.py); optionally a "
        f"comma-separated subset of {','.join(DIALECT_ARRANGEMENTS)} (plain: scenario 1 beside them)",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="with --dialects: DIR holds another commit's gischat package (git archive <commit> gischat | "
        "tar -x -C DIR); its scenario 1 runs beside as 'before'",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=FANOUT_ROUNDS,
        help=f"with --dialects: fan-out rounds of each arrangement (default {FANOUT_ROUNDS})",
    )
    args = parser.parse_args()
    if args.baseline is not None and args.dialects is None:
        parser.error("--baseline goes with --dialects")
    if args.redis:
        from scenarios_redis import main as redis_main

        return uvloop.run(redis_main())
    OPTIONS.profile = args.py_spy
    OPTIONS.gischat_env.update(RELAY_ONLY)  # see harness.RELAY_ONLY
    for item in args.gischat_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--gischat-env wants NAME=VALUE, got {item!r}")
        OPTIONS.gischat_env[name.upper()] = value
    scenarios = [int(part) for part in args.scenarios.split(",") if part.strip()]
    servers = [part.strip() for part in args.servers.split(",") if part.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if args.dialects is not None:
        arrangements = [part.strip() for part in args.dialects.split(",") if part.strip()]
        unknown = set(arrangements) - set(DIALECT_ARRANGEMENTS)
        if unknown or not arrangements:
            parser.error(f"--dialects wants some of {','.join(DIALECT_ARRANGEMENTS)}, got {args.dialects!r}")
        return uvloop.run(dialects_main(arrangements, servers, args.baseline, max(args.rounds, 1)))
    if not args.no_pin and args.pin_core not in cores:
        parser.error(f"--pin-core {args.pin_core}: this process may only use CPUs {cores}")
    return uvloop.run(main(scenarios, servers, None if args.no_pin else args.pin_core))


if __name__ == "__main__":
    raise SystemExit(cli())
