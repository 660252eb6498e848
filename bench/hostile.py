"""Replay every known attack on a real gischat server and print what everyone else saw.

    python bench/hostile.py                       # every attack, ~10 s each, about 6 minutes
    python bench/hostile.py --attacks 1,3,5 --duration 5
    python bench/hostile.py --env MESSAGE_RATE=0 --env MAX_FRAME_SIZE=1048576

The server is the `gischat` command (`python -m gischat`) with its default settings except
HOST=127.0.0.1, a free PORT and ROOMS=busy,other (`--env` adds more), started afresh for every
attack so each one starts from a clean baseline; its output goes to
bench/results/gischat-hostile-N.log, whose growth during the attack is counted. Its open-file
limit is 1,024 by default (`--server-nofile`), the usual soft limit of a service.

Per attack, in this order: the server starts; `bench/observer.py` starts in its own process
(13 innocent clients in the busy room from 127.0.0.2 and 13 in the other from 127.0.0.4, taking
turns so that each room gets a text every 20 ms while each client sends itself one every 260 ms,
under a 5-a-second per-connection limit; a fresh handshake from 127.0.0.3 every 2 s; the server's RSS, children included,
every 100 ms); 1 s of baseline; the attack from 127.0.0.10 (`bench/attacks.py`) for
`--duration` seconds or until its one shot is answered; every attacking socket is aborted;
10 s later the observer stops and reports. Only loopback addresses are used, every loop is
bounded in count and time, and a table cell says "timeout" or "stalled" rather than hang.

The table goes to stdout and to bench/results/hostile.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop
from attacks import (
    BUSY,
    OTHER,
    Attack,
    Target,
    baseline,
    foreign_origin,
    huge_header,
    huge_multipoint,
    huge_polygons,
    many_websockets,
    photo_attack,
    ping_flood,
    refused_flood,
    silent_tcp,
    slowloris,
    text_flood,
    unfinished_frames,
)
from harness import (
    BENCH_DIR,
    OPTIONS,
    RESULTS_DIR,
    Server,
    gischat_revision,
    machine,
    machine_busy,
    make_photo,
    percentile,
    raise_fd_limit,
    running,
)

import gischat

BASELINE_SECONDS = 1.0  # quiet time before each attack: the RSS baseline
AFTER_SECONDS = 10.0  # wait after the attack before the last RSS sample
ATTACK_GRACE = 30.0  # an attack still running this long past its duration is cancelled
OBSERVER_READY_TIMEOUT = 30.0
OBSERVER_REPORT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Scenario:
    """One row of the table: what the attacker does, and the coroutine that does it."""

    number: int
    label: str
    make: Callable[[], Attack]


def scenarios() -> list[Scenario]:
    """Every attack of the issue's table, in its order, after a baseline without one."""
    return [
        Scenario(0, "baseline: no attack", lambda: baseline),
        Scenario(
            1,
            "one 12 MB frame: a Feature whose MultiPoint has 2 million points (looped)",
            lambda: huge_multipoint,
        ),
        Scenario(
            2, "500 features x 5,500-vertex polygons (16.5 MB), 4 clients looping", lambda: huge_polygons
        ),
        Scenario(3, "websocket pings as fast as possible, never reading the pongs", lambda: ping_flood),
        Scenario(
            4,
            "150 connections each sending 15 MiB of one frame, never finishing it",
            lambda: unfinished_frames,
        ),
        Scenario(5, "a 64 MB header on GET /status", lambda: huge_header),
        Scenario(6, "small valid texts as fast as possible", lambda: text_flood),
        Scenario(
            7,
            "3,000 websockets from one IP in the busy room, 3,000 nickname registrations",
            lambda: many_websockets,
        ),
        Scenario(8, "3,000 half-sent HTTP requests (slowloris)", lambda: slowloris),
        Scenario(9, "1,100 silent TCP connections", lambda: silent_tcp),
        Scenario(10, "20 clients sending 4000x3000 photos", photo_scenario),
        Scenario(11, "a flood of refused messages", lambda: refused_flood),
        Scenario(12, "Origin: https://evil.example (websocket and PUT)", lambda: foreign_origin),
    ]


def photo_scenario() -> Attack:
    """The photo attack needs the JPEG of bench/run.py, built (and cached) only when asked for."""
    return photo_attack(base64.b64encode(make_photo()).decode("ascii"))


# --------------------------------------------------------------------------- observer


@dataclass
class Observer:
    """The observer subprocess (bench/observer.py) watching one server."""

    proc: asyncio.subprocess.Process

    @classmethod
    async def start(cls, server: Server, interval: float, sockets: int, budget: float, log: Path) -> Observer:
        """Start it and wait until its innocents are registered (bounded)."""
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, str(BENCH_DIR / "observer.py"), "--port", str(server.port)),
                *("--pid", str(server.proc.pid), "--rooms", f"{BUSY},{OTHER}", "--interval", str(interval)),
                *("--max-seconds", f"{budget:.0f}", "--sockets", str(sockets)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                limit=1 << 26,
            )
        observer = cls(proc)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), OBSERVER_READY_TIMEOUT)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            await observer.kill()
            raise RuntimeError(f"the observer did not start, see {log}")
        return observer

    async def report(self) -> dict[str, Any] | str:
        """Ask for its report; what went wrong instead if it does not come in time (then it is killed)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(b"stop\n")
            await self.proc.stdin.drain()
        report: dict[str, Any] | str
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), OBSERVER_REPORT_TIMEOUT)
            report = orjson.loads(line) if line else f"observer died ({self.proc.returncode})"
        except TimeoutError:
            report = "observer timeout"
        except (orjson.JSONDecodeError, ValueError) as exc:
            report = f"observer report unreadable: {exc}"[:60]
        await self.kill()
        return report

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


# --------------------------------------------------------------------------- one attack


@dataclass
class Window:
    """When the attack ran, on the monotonic clock the observer shares."""

    start: float
    end: float

    def probe_end(self) -> float:
        """One-shot attacks last milliseconds: judge the probes over at least a second."""
        return max(self.end, self.start + 1.0)


@dataclass
class Row:
    label: str
    cells: list[str]


class CpuWatch:
    """CPU seconds used during the attack by the server, its workers, the attacker and the rest.

    Sampled every 250 ms by pid (the highest total seen per process), so that workers which are
    recycled during the attack still count; 2 cores are shared by all of them, which is what tells
    a server stall from a bench artifact (the attacker or another program hogging a core).
    """

    INTERVAL = 0.25

    def __init__(self, server_pid: int, observer_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self.observer_pid = observer_pid
        self.me = psutil.Process()
        self.seen: dict[int, tuple[float, float]] = {}  # pid -> (first, last) cpu seconds
        self.machine = machine_busy()
        self.started = time.monotonic()
        self.sample(first=True)
        self.task = asyncio.ensure_future(self._run())

    def _cpu(self, process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def sample(self, first: bool = False) -> None:
        """Processes seen on the first sample count from then; later ones from their birth."""
        try:
            members = [self.server, *self.server.children(recursive=True)]
        except psutil.Error:
            members = []
        with contextlib.suppress(psutil.Error):
            members += [self.me, psutil.Process(self.observer_pid)]
        for process in members:
            with contextlib.suppress(psutil.Error):
                cpu = self._cpu(process)
                start = self.seen[process.pid][0] if process.pid in self.seen else (cpu if first else 0.0)
                self.seen[process.pid] = (start, cpu)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.INTERVAL)
            self.sample()

    def summary(self) -> str:
        self.task.cancel()
        self.sample()
        wall = max(time.monotonic() - self.started, 1e-9)
        used = {pid: last - first for pid, (first, last) in self.seen.items()}
        server = used.pop(self.server.pid, 0.0)
        attacker = used.pop(self.me.pid, 0.0)
        observer = used.pop(self.observer_pid, 0.0)
        workers = sum(used.values())
        rest = max((machine_busy() - self.machine) - server - attacker - observer - workers, 0.0)
        return (
            f"CPU (cores): server {server / wall:.2f}, workers {workers / wall:.2f}, "
            f"attacker {attacker / wall:.2f}, observer {observer / wall:.2f}, other programs {rest / wall:.2f}"
        )


async def run_attack(scenario: Scenario, server: Server, args: argparse.Namespace, log_name: Path) -> Row:
    """Baseline, attack, cleanup, 10 s of aftermath; then the row of the table."""
    budget = BASELINE_SECONDS + args.duration + ATTACK_GRACE + AFTER_SECONDS + 60
    observer = await Observer.start(server, args.interval, args.sockets, budget, log_name)
    await asyncio.sleep(BASELINE_SECONDS)
    log_start = server.log_path.stat().st_size
    attack = scenario.make()
    gc.collect()
    start = time.monotonic()
    cpu = CpuWatch(server.proc.pid, observer.proc.pid)
    target = Target(server.port, server, start + args.duration)
    try:
        await asyncio.wait_for(attack(target), args.duration + ATTACK_GRACE)
    except TimeoutError:
        target.answers.note(f"attack still running {ATTACK_GRACE:.0f} s past its duration: cancelled")
    except Exception as exc:  # a broken attack must not cost the others
        target.answers.note(f"attack failed: {exc!r}"[:120])
    end = time.monotonic()
    target.answers.note(cpu.summary())
    target.cleanup()
    log_bytes, log_lines = log_growth(server.log_path, log_start)
    await asyncio.sleep(max(end + AFTER_SECONDS - time.monotonic(), 0.0))
    target.answers.note(rss_split(server))
    report = await observer.report()
    target.clients.clear()
    target.writers.clear()
    if scenario.number == 11 or log_bytes > 1_000_000:
        target.answers.note(f"log +{log_bytes / 1e6:.1f} MB ({log_lines:,} lines) during the attack")
    if isinstance(report, str):
        return Row(scenario.label, [report] * 5 + [target.answers.summary()])
    window = Window(start, end)
    return Row(scenario.label, [*observer_cells(report, window), target.answers.summary()])


def rss_split(server: Server) -> str:
    """Where the server's memory is, 10 s after the attack: its own process, then each child."""
    try:
        main = server.ps.memory_info().rss / 1e6
        children = [child.memory_info().rss / 1e6 for child in server.ps.children(recursive=True)]
    except psutil.Error:
        return "RSS split: server gone"
    kids = ", ".join(f"{mb:.0f}" for mb in sorted(children, reverse=True))
    return f"RSS at +10 s (MB): server {main:.0f}, children {kids or 'none'}"


def log_growth(path: Path, offset: int) -> tuple[int, int]:
    """Bytes and lines the server logged since `offset`."""
    with path.open("rb") as log:
        log.seek(offset)
        data = log.read()
    return len(data), data.count(b"\n")


# --------------------------------------------------------------------------- cells


def observer_cells(report: dict[str, Any], window: Window) -> list[str]:
    """busy room, other room, disconnects, new connects, RSS; the observer saw them all."""
    rooms = report["rooms"]
    return [
        round_trips(rooms[BUSY], window, foreign=True),
        round_trips(rooms[OTHER], window, foreign=False),
        disconnects(rooms, window),
        new_connects(report["connects"], window),
        rss(report["rss"], window),
    ]


def round_trips(room: dict[str, Any], window: Window, foreign: bool) -> str:
    """`p50 / max` ms of the probe's texts sent during the attack; lost ones and refusals noted."""
    samples = [rtt for t, rtt in room["samples"] if window.start <= t <= window.probe_end()]
    done = [rtt for rtt in samples if rtt is not None]
    lost = len(samples) - len(done)
    if not samples:
        return "no probe"
    if not done:
        cell = f"stalled: all {lost} lost"
    else:
        cell = f"{percentile(done, 50):,.1f} / {max(done):,.0f}"
        if lost:
            cell += f" ({lost} of {len(samples)} lost)"
    refused = sum(room["refusals"].values())
    if refused:
        cell += f"; {refused} own texts refused"
    if foreign:
        got = sum(n for second, _kind, n in room["foreign"] if second >= int(window.start))
        if got > 1000:
            cell += f"; room got {got:,} msgs"
    return cell


def disconnects(rooms: dict[str, Any], window: Window) -> str:
    events = [
        f"{name}: {what}"
        for name, room in rooms.items()
        for t, what in room["disconnects"]
        if t >= window.start
    ]
    if not events:
        return "0"
    return f"{len(events)}: " + "; ".join(sorted(set(events))[:2])


def new_connects(connects: list[list[Any]], window: Window) -> str:
    """Fresh handshakes started during the attack: slowest time, and failures."""
    during = [
        (ms, what) for t, ms, what in connects if window.start <= t <= max(window.end, window.start + 2.0)
    ]
    if not during:
        return "none tried"
    times = [ms for ms, _ in during if ms is not None]
    failures = [what for ms, what in during if ms is None]
    cell = f"max {max(times):,.0f}" if times else "all failed"
    if failures:
        cell += f"; {len(failures)} of {len(during)} failed ({statistics.mode(failures)})"
    return cell


def rss(samples: list[list[float]], window: Window) -> str:
    """Server tree RSS in MB: before the attack, peak during it and up to 10 s after, 10 s after."""
    before = [value for t, value in samples if t < window.start]
    after_window = [value for t, value in samples if t >= window.start]
    if not before or not after_window:
        return "no samples"
    mb = 1e6
    base = before[-1] / mb
    peak = max(after_window) / mb
    last = after_window[-1] / mb
    return f"{base:,.0f} / {peak:,.0f} / {last:,.0f}"


# --------------------------------------------------------------------------- report


HEADER = (
    "| attack by one client (127.0.0.10) | busy room p50 / max (ms) | other room p50 / max (ms) | "
    "innocent disconnects | new connect (ms) | RSS base / peak / +10 s (MB) | attacker answered |"
)


def table(rows: Sequence[Row]) -> str:
    lines = [HEADER, "|---|---|---|---|---|---|---|"]
    lines += [
        f"| {row.label} | " + " | ".join(cell.replace("|", "/") for cell in row.cells) + " |" for row in rows
    ]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    own_limit = raise_fd_limit(8_000)  # up to 3,000 attacking sockets at once, and the observer's
    chosen = [s for s in scenarios() if s.number in args.attacks]
    rows: list[Row] = []
    began = time.perf_counter()
    nofile = args.server_nofile or None
    for scenario in chosen:
        print(f"== {scenario.number}. {scenario.label}", flush=True)
        log = RESULTS_DIR / f"observer-hostile-{scenario.number}.log"
        log.unlink(missing_ok=True)
        try:
            async with running(
                "gischat", f"hostile-{scenario.number}", rooms=(BUSY, OTHER), nofile=nofile
            ) as server:
                row = await run_attack(scenario, server, args, log)
        except Exception as exc:  # the server did not start, the observer did not...
            row = Row(scenario.label, ["—"] * 5 + [f"FAILED: {exc!r}"[:160]])
        print("   " + " | ".join(row.cells), flush=True)
        rows.append(row)
    took = time.perf_counter() - began
    settings = ", ".join(f"{k}={v}" for k, v in OPTIONS.gischat_env.items()) or "defaults"
    report = "\n".join(
        [
            table(rows),
            "",
            f"`python bench/hostile.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
            f"gischat {gischat_revision()} (imported from {Path(gischat.__file__).parent}), settings: {settings} (HOST=127.0.0.1, ROOMS={BUSY},{OTHER}); "
            f"server RLIMIT_NOFILE {nofile or f'inherited ({own_limit})'}. Innocents: {args.sockets} clients per room "
            f"(busy from 127.0.0.2, other from 127.0.0.4) taking turns so that the room gets a text every "
            f"{args.interval * 1000:.0f} ms, each client sending itself one every "
            f"{args.interval * args.sockets * 1000:.0f} ms (round trip to its own echo, over the attack's "
            f"{args.duration:.0f} s or at least 1 s); new connect: the slowest of the "
            "fresh handshakes from 127.0.0.3 started every 2 s during the attack. RSS: server and children, "
            f"sampled every 100 ms. Run took {took:.0f} s.",
            f"Machine: {machine()}.",
        ]
    )
    print()
    print(report)
    (RESULTS_DIR / "hostile.md").write_text(report + "\n")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description="replay every attack on gischat, print what others saw")
    parser.add_argument(
        "--attacks",
        default=",".join(str(s.number) for s in scenarios()),
        help="comma-separated attack numbers (0 is the baseline, always run first)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per attack")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="profile each server with py-spy; raw stacks go to bench/results/gischat-hostile-N.py-spy.txt",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the gischat server (repeatable)",
    )
    parser.add_argument(
        "--server-nofile",
        type=int,
        default=1024,
        help="the server's open-file limit (0: inherit the bench's raised one)",
    )
    parser.add_argument(
        "--interval", type=float, default=0.02, help="seconds between two innocent texts in a room"
    )
    parser.add_argument(
        "--sockets",
        type=int,
        default=13,
        help="innocent clients per room taking turns (each at interval x sockets)",
    )
    args = parser.parse_args()
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env wants KEY=VALUE, got {item!r}")
        OPTIONS.gischat_env[name.upper()] = value
    known = {s.number for s in scenarios()}
    try:
        wanted = {int(part) for part in args.attacks.split(",") if part.strip()}
    except ValueError:
        parser.error(f"--attacks wants numbers, got {args.attacks!r}")
    if wanted - known:
        parser.error(f"unknown attacks: {sorted(wanted - known)}; known: {sorted(known)}")
    args.attacks = wanted | {0}
    OPTIONS.profile = args.py_spy
    if not 0.5 <= args.duration <= 120:
        parser.error("--duration must be between 0.5 and 120 s")
    return uvloop.run(main(args))


if __name__ == "__main__":
    raise SystemExit(cli())
