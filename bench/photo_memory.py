"""Where a photo flood's memory goes, and whether it comes back: attackers of different timing.

    python bench/photo_memory.py                                    # this checkout, every attacker
    python bench/photo_memory.py --tree before=/tmp/old --tree after=.  # two trees side by side
    python bench/photo_memory.py --attackers paced --diagnose       # glibc's arenas, per process

20 clients on one address (127.0.0.10) send 4000 x 3000 photos (4 MB of base64) into the busy
room for `--duration` s, while `bench/observer.py` (the innocents of `bench/hostile.py`) measures
the round trips of both rooms. The attackers differ only in their timing:

- `hostile`: `bench/hostile.py`'s, each client sends its next photo once the last one is
  answered (relayed or refused);
- `paced`: each client sends a photo every second whatever the answers, all 20 at once, and
  reads what comes back;
- `pipelined`: each client sends photos back to back, as fast as the server takes them;
- `silent`: as `pipelined`, but the clients never read (a tiny receive window): every resized
  photo relayed to them stays queued at the server until they are dropped;
- `library`: the `websockets` package's client, as a script written without the server in
  view would use it: `await ws.send(photo)` in a loop (it returns once the frame is buffered),
  replies read in the background, and at the end a polite close (`ws.close()`, waiting up to
  10 s for the server's close frame) instead of the others' RST.

The server (`gischat` with its defaults, ROOMS=busy,other) is started afresh for each attacker
and tree, with the tree's directory first on its PYTHONPATH (`--tree label=path`, e.g. a
`git worktree` of an older commit). Memory is sampled every 100 ms: RSS of the server process,
of the whole tree (server, forkserver, workers), and the bytes of frame files in /dev/shm; the
tree's PSS (shared pages counted once) before and 10 s after; the CPU each side used (a busy
machine starves the workers, and the flood's work goes on past +10 s). `--timeline` notes the
memory once a second. With `--diagnose`, every process of the tree also reports glibc's arenas
(`mallinfo2`, `malloc_info`, through `bench/diag/sitecustomize.py`) before, at the end of and
10 s after the flood, with `/proc/PID/smaps_rollup`; at +10 s, once more after a full collection
and a trim, with what the collection found (the garbage by type, what each type held) and, with
`--env GISCHAT_TRACEMALLOC=8` (tracing from 5 s after the server started), the allocation sites
of what the collection freed.

The table goes to stdout and to bench/results/photo_memory.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop
from attacks import (
    ATTACKER,
    BUSY,
    OTHER,
    Attack,
    Replies,
    Target,
    gather_bounded,
    image_message,
    join,
    photo_attack,
)
from harness import BENCH_DIR, RESULTS_DIR, Server, machine, make_photo, raise_fd_limit, running
from hostile import CpuWatch, Observer, Window, round_trips
from rawws import TEXT, WsClient, encode, sniff
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

import gischat

CLIENTS = 20
AFTER = 10.0
SAMPLE_EVERY = 0.1
SHM = Path("/dev/shm")  # only read: the server's frame files
DIAG_DIR = RESULTS_DIR / "diag"
ANSWER_GRACE = 10.0


# --------------------------------------------------------------------------- attackers


def frames(photo_b64: str) -> list[bytes]:
    """Each attacking client's photo message, framed once (a client may only write as itself)."""
    return [encode(TEXT, image_message(f"photographer{i}", photo_b64)) for i in range(CLIENTS)]


def paced(photos: list[bytes], every: float = 1.0) -> Attack:
    """Every client sends a photo every `every` s, all at the same instants, whatever the answers."""

    async def attack(target: Target) -> None:
        target.answers.note(f"{CLIENTS} clients, a photo each every {every:g} s")
        clients = await joined(target)
        beat = time.monotonic()
        while not target.over():
            for (client, _), photo in zip(clients, photos, strict=True):
                if client.is_open:
                    client.send_raw(photo)
            target.answers.add("photo sent", sum(1 for client, _ in clients if client.is_open))
            beat += every
            await asyncio.sleep(max(0.0, min(beat, target.until) - time.monotonic()))
        await settle(target, clients)

    return attack


def pipelined(photos: list[bytes], read: bool) -> Attack:
    """Every client sends photos back to back, as fast as the server reads them."""

    async def attack(target: Target) -> None:
        how = "reading the answers" if read else "never reading (4 kB receive window)"
        target.answers.note(f"{CLIENTS} clients, photos back to back, {how}")
        clients = await joined(target, read)

        async def one(client: WsClient, photo: bytes) -> None:
            while not target.over() and client.is_open:
                client.send_raw(photo)
                target.answers.add("photo sent")
                if not await client.flush(max(target.left(), 0.1)):
                    break

        await gather_bounded(
            target, [one(client, photo) for (client, _), photo in zip(clients, photos, strict=True)]
        )
        if read:
            await settle(target, clients)

    return attack


async def joined(target: Target, read: bool = True) -> list[tuple[WsClient, Replies]]:
    """The attacking clients, registered in the busy room."""
    if read:
        return list(await asyncio.gather(*(join(target, f"photographer{i}") for i in range(CLIENTS))))
    clients = []
    for i in range(CLIENTS):
        replies = Replies(f"photographer{i}", target.answers)
        client = await WsClient.open(target.port, target.path, ATTACKER, 10.0, on_frame=replies, rcvbuf=4096)
        target.clients.append(client)
        client.send(TEXT, orjson.dumps({"type": "newcomer", "newcomer": f"photographer{i}"}))
        clients.append((client, replies))
    return clients


async def settle(target: Target, clients: list[tuple[WsClient, Replies]]) -> None:
    """Count what the clients got: their own photos relayed, and refusals by reason."""
    await asyncio.sleep(1.0)
    for _, replies in clients:
        target.answers.add("relayed (own photo)", replies.echoes)
        for reason, n in replies.refusals.items():
            target.answers.add(f"uncompliant: {reason}", n)


def library(photo_b64: str, lingering: list[asyncio.Task[None]]) -> Attack:
    """The `websockets` client: send in a loop, read in the background, close politely at the end.

    The attack returns at its deadline; the closes run on in `lingering` (the +10 s figure
    counts from the deadline, as for the others)."""

    async def attack(target: Target) -> None:
        target.answers.note(f"{CLIENTS} websockets clients, await send() in a loop, a polite close")
        url = f"ws://127.0.0.1:{target.port}{target.path}"

        async def one(i: int) -> None:
            author = f"photographer{i}"
            message = image_message(author, photo_b64).decode()
            try:
                async with ws_connect(
                    url, local_addr=(ATTACKER, 0), max_size=None, open_timeout=10, close_timeout=10
                ) as ws:
                    await ws.send(orjson.dumps({"type": "newcomer", "newcomer": author}).decode())
                    reading = asyncio.ensure_future(count_replies(ws, author, target))
                    while not target.over():
                        await ws.send(message)
                        target.answers.add("photo sent")
                    await asyncio.sleep(max(0.0, target.until - time.monotonic()))
                    reading.cancel()
            except (OSError, TimeoutError, WebSocketException) as exc:
                target.answers.add(f"client ended: {type(exc).__name__}")

        lingering.extend(asyncio.ensure_future(one(i)) for i in range(CLIENTS))
        await asyncio.sleep(max(0.0, target.until - time.monotonic()))

    return attack


async def count_replies(ws: ClientConnection, author: str, target: Target) -> None:
    with contextlib.suppress(WebSocketException):
        async for reply in ws:
            kind, sender = sniff(reply if isinstance(reply, bytes) else reply[:200].encode())
            if kind == "uncompliant":
                target.answers.add("uncompliant")
            elif sender == author:
                target.answers.add("relayed (own photo)")


def attackers(photo_b64: str, lingering: list[asyncio.Task[None]]) -> dict[str, Callable[[], Attack]]:
    made: list[list[bytes]] = []

    def framed() -> list[bytes]:
        if not made:
            made.append(frames(photo_b64))
        return made[0]

    return {
        "hostile": lambda: photo_attack(photo_b64),
        "paced": lambda: paced(framed()),
        "pipelined": lambda: pipelined(framed(), read=True),
        "silent": lambda: pipelined(framed(), read=False),
        "library": lambda: library(photo_b64, lingering),
    }


# --------------------------------------------------------------------------- measurements


@dataclass
class Memory:
    """Samples of (time, server RSS, tree RSS, /dev/shm bytes, children)."""

    samples: list[tuple[float, float, float, float, int]] = field(default_factory=list)

    def sample(self, server: Server) -> None:
        try:
            members = [server.ps, *server.ps.children(recursive=True)]
        except psutil.Error:
            return
        rss = []
        for member in members:
            try:
                rss.append(member.memory_info().rss / 1e6)
            except psutil.Error:
                rss.append(0.0)
        self.samples.append((time.monotonic(), rss[0], sum(rss), shm_bytes() / 1e6, len(members) - 1))

    async def run(self, server: Server) -> None:
        while True:
            self.sample(server)
            await asyncio.sleep(SAMPLE_EVERY)

    def timeline(self, start: float) -> str:
        """Once a second from the flood's start: server RSS / tree RSS / children (MB, MB, n)."""
        marks, shown = [], -1
        for t, server, tree, _shm, children in self.samples:
            second = int(t - start)
            if t >= start and second > shown:
                shown = second
                marks.append(f"{second}s {server:.0f}/{tree:.0f}/{children}")
        return "timeline (server MB / tree MB / children): " + ", ".join(marks)

    def figures(self, start: float, column: int) -> tuple[float, float, float]:
        """Before the flood, peak from its start on, last sample."""
        before = [s[column] for s in self.samples if s[0] < start]
        after = [s[column] for s in self.samples if s[0] >= start]
        return before[-1], max(after), after[-1]


def split(server: Server) -> str:
    """RSS of each process of the tree at +10 s."""
    try:
        members = [server.ps, *server.ps.children(recursive=True)]
    except psutil.Error:
        return "split: server gone"
    parts = []
    for i, member in enumerate(members):
        with contextlib.suppress(psutil.Error):
            parts.append(f"{'server' if i == 0 else name_of(member)} {member.memory_info().rss / 1e6:.0f}")
    return f"+{AFTER:.0f} s RSS by process (MB): " + ", ".join(parts)


def tree_pss(server: Server) -> float:
    """Proportional set size of the tree (MB): shared pages (the workers' forked ones, the
    forkserver's) counted once, where RSS counts them in every process."""
    try:
        members = [server.ps, *server.ps.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for member in members:
        with contextlib.suppress(psutil.Error):
            total += member.memory_full_info().pss / 1e6
    return total


def shm_bytes() -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in SHM.glob("gischat-frame-*"):
            with contextlib.suppress(OSError):
                total += entry.stat().st_size
    return total


def rollup(pid: int) -> dict[str, float]:
    """/proc/PID/smaps_rollup in MB: Rss, Anonymous, Shmem."""
    values: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Rss", "Anonymous", "Shmem", "Private_Dirty"):
                values[name] = int(rest.split()[0]) / 1024
    return values


def diagnose(server: Server, moment: str, report: list[str], collect: bool = False) -> None:
    """Ask every process of the tree for its arenas (after a full collection and a trim, if
    `collect`); their answers are read back in `arenas`."""
    try:
        members = [server.ps, *server.ps.children(recursive=True)]
    except psutil.Error:
        return

    def reports(pid: int) -> int:
        with contextlib.suppress(OSError):
            return len((DIAG_DIR / f"malloc-{pid}.jsonl").read_text().splitlines())
        return 0

    counts = {member.pid: reports(member.pid) for member in members}
    for member in members:
        with contextlib.suppress(psutil.Error, OSError):
            os.kill(member.pid, signal.SIGUSR1 if collect else signal.SIGUSR2)
    deadline = time.monotonic() + 60  # a snapshot of a traced process takes a while
    while time.monotonic() < deadline and any(reports(pid) == n for pid, n in counts.items()):
        time.sleep(0.2)
    for i, member in enumerate(members):
        role = "server" if i == 0 else name_of(member)
        report.append(f"{moment}: {role} {member.pid}: " + arenas(member.pid))


def name_of(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        line = " ".join(process.cmdline())
        if "forkserver" in line:
            return "forkserver"
        if "resource_tracker" in line:
            return "resource tracker"
    return "worker"


async def gauges(server: Server) -> str:
    """What the server says it still holds at +10 s: sockets, jobs, the loop's tasks."""
    wanted = (
        "gischat_websockets",
        "gischat_processing_jobs",
        "gischat_processing_bytes",
        "gischat_loop_tasks",
    )
    try:
        text = (await server.http.get(f"http://127.0.0.1:{server.port}/metrics")).text
    except Exception as exc:
        return f"metrics: {exc!r}"
    found = [line for line in text.splitlines() if line.startswith(wanted)]
    return f"+{AFTER:.0f} s gauges: " + ", ".join(found)


def holders(pid: int) -> str:
    """Who held large buffers in the garbage the collection found, and among live objects."""
    path = DIAG_DIR / f"malloc-{pid}.holders.jsonl"
    try:
        rows: list[dict[str, Any]] = [orjson.loads(line) for line in path.read_text().splitlines()[-2:]]
    except (OSError, orjson.JSONDecodeError):
        return ""
    parts = []
    with contextlib.suppress(OSError, IndexError, orjson.JSONDecodeError):
        blame = orjson.loads((DIAG_DIR / f"malloc-{pid}.blame.jsonl").read_text().splitlines()[-1])["blame"]
        parts.append(
            "freed by emptying the garbage's " + ", ".join(f"{t} {b / 1e6:+.1f} MB" for t, b in blame)
        )
    for row in rows:
        found = (
            ", ".join(f"{where} ({n}, {size / 1e6:.0f} MB)" for where, n, size in row["holders"]) or "none"
        )
        parts.append(f"large buffers held by {row['kind']} objects: {found}")
        if row.get("types"):
            parts.append("garbage by type: " + ", ".join(f"{name} {n}" for name, n in row["types"]))
    return "; " + "; ".join(parts)


def arenas(pid: int) -> str:
    """The last glibc report of `pid` and its smaps_rollup, in MB."""
    path = DIAG_DIR / f"malloc-{pid}.jsonl"
    roll = rollup(pid)
    head = ", ".join(f"{k} {v:.0f}" for k, v in roll.items())
    try:
        row: dict[str, Any] = orjson.loads(path.read_text().splitlines()[-1])
    except (OSError, IndexError, orjson.JSONDecodeError):
        return head + "; no malloc report"
    mb = 1e6
    heaps = "; ".join(
        f"arena {h['nr']}: {h.get('current', 0) / mb:.0f} held, {h['free'] / mb:.0f} free"
        for h in row.get("heaps", [])
    )
    collected = (
        "" if row.get("collected") is None else f"after gc.collect() ({row['collected']} found) and a trim: "
    )
    return (
        f"{collected}{head}; malloc: heap {row['arena'] / mb:.0f} (in use {row['uordblks'] / mb:.0f}, free "
        f"{row['fordblks'] / mb:.0f}, top {row['keepcost'] / mb:.0f}), mmapped {row['hblkhd'] / mb:.0f} "
        f"in {row['hblks']}; {heaps}" + (holders(pid) if row.get("collected") is not None else "")
    )


# --------------------------------------------------------------------------- one run


@dataclass
class Result:
    tree: str
    attacker: str
    server: tuple[float, float, float]
    whole: tuple[float, float, float]
    pss: tuple[float, float]
    shm_peak: float
    others: float  # cores other programs used during the flood
    busy: str
    other: str
    answers: str
    notes: list[str]


async def run_one(
    tree: str,
    path: Path,
    attacker: str,
    make: Callable[[], Attack],
    args: argparse.Namespace,
    lingering: list[asyncio.Task[None]],
) -> Result:
    env = {"PYTHONPATH": os.pathsep.join([str(path), *([str(BENCH_DIR / "diag")] if args.diagnose else [])])}
    if args.diagnose:
        env["GISCHAT_MALLOC_DIAG"] = "1"
    for item in args.env:
        name, _, value = item.partition("=")
        env[name.upper()] = value
    notes: list[str] = []
    label = f"photo-memory-{tree}-{attacker}"
    log = RESULTS_DIR / f"observer-{label}.log"
    async with running("gischat", label, rooms=(BUSY, OTHER), nofile=1024, extra_env=env) as server:
        memory = Memory()
        sampler = asyncio.ensure_future(memory.run(server))
        observer = await Observer.start(server, 0.02, 13, args.duration + AFTER + 120, log)
        await asyncio.sleep(1.0)
        if args.diagnose:
            await asyncio.to_thread(diagnose, server, "before", notes)
        pss_start = tree_pss(server)
        gc.collect()
        start = time.monotonic()
        cpu = CpuWatch(server.proc.pid, observer.proc.pid)
        target = Target(server.port, server, start + args.duration)
        try:
            await asyncio.wait_for(make()(target), args.duration + 30)
        except TimeoutError:
            target.answers.note("attack still running 30 s past its duration: cancelled")
        end = time.monotonic()
        used = cpu.summary()
        notes.append(used)
        others = float(used.rpartition("other programs ")[2] or "nan")
        target.cleanup()
        if args.diagnose:
            await asyncio.to_thread(diagnose, server, "end", notes)
        await asyncio.sleep(max(end + AFTER - time.monotonic(), 0.0))
        sampler.cancel()
        memory.sample(server)
        pss = (pss_start, tree_pss(server))
        notes.append(await gauges(server))
        notes.append(split(server))
        if args.timeline:
            notes.append(memory.timeline(start))
        if args.diagnose:
            await asyncio.to_thread(diagnose, server, f"+{AFTER:.0f} s", notes)
            await asyncio.to_thread(diagnose, server, f"+{AFTER:.0f} s", notes, True)
        report = await observer.report()
        if lingering:  # polite closes still under way (bounded by their close_timeout)
            await asyncio.wait(lingering, timeout=30)
            for task in lingering:
                task.cancel()
            lingering.clear()
    if isinstance(report, str):
        busy = other = report
    else:
        window = Window(start, end)
        busy = round_trips(report["rooms"][BUSY], window, foreign=True)
        other = round_trips(report["rooms"][OTHER], window, foreign=False)
    shm = max(s[3] for s in memory.samples)
    return Result(
        tree,
        attacker,
        memory.figures(start, 1),
        memory.figures(start, 2),
        pss,
        shm,
        others,
        busy,
        other,
        target.answers.summary(),
        notes,
    )


def table(results: list[Result]) -> str:
    lines = [
        "| tree | attacker | server RSS start / peak / +10 s (MB) | tree RSS start / peak / +10 s (MB) "
        "| tree +10 s - start (MB) | tree PSS start / +10 s (MB) | /dev/shm peak (MB) | busy room p50 / max (ms) "
        "| other room p50 / max (ms) | other programs (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.tree} | {r.attacker} | {' / '.join(f'{v:.0f}' for v in r.server)} "
            f"| {' / '.join(f'{v:.0f}' for v in r.whole)} | {r.whole[2] - r.whole[0]:+.0f} "
            f"| {r.pss[0]:.0f} / {r.pss[1]:.0f} | {r.shm_peak:.0f} "
            f"| {r.busy} | {r.other} | {r.others:.2f} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    DIAG_DIR.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(2_000)
    photo_b64 = base64.b64encode(make_photo()).decode("ascii")
    lingering: list[asyncio.Task[None]] = []
    makers = attackers(photo_b64, lingering)
    results: list[Result] = []
    for _ in range(args.rounds):
        for attacker in args.attackers:
            for tree, path in args.trees:  # trees alternate within a round
                print(f"== {tree}: {attacker}", flush=True)
                result = await run_one(tree, path, attacker, makers[attacker], args, lingering)
                print(table([result]).splitlines()[-1], flush=True)
                print(f"   attacker answered: {result.answers}", flush=True)
                for note in result.notes:
                    print(f"   {note}", flush=True)
                results.append(result)
    trees = ", ".join(f"{tree} = {path}" for tree, path in args.trees)
    report = "\n".join(
        [
            table(results),
            "",
            f"`python bench/photo_memory.py {' '.join(sys.argv[1:])}`",
            f"Trees: {trees}; bench from {Path(gischat.__file__).parent.parent}. {CLIENTS} clients from {ATTACKER}, "
            f"{args.duration:g} s; +10 s is {AFTER:g} s after the attack ended. Machine: {machine()}.",
            "",
            *[f"- {r.tree}, {r.attacker}: {r.answers}" for r in results],
            *[f"- {r.tree}, {r.attacker}: {note}" for r in results for note in r.notes],
        ]
    )
    print()
    print(report)
    (RESULTS_DIR / "photo_memory.md").write_text(report + "\n")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description="photo floods of different timing: memory and round trips")
    parser.add_argument(
        "--attackers", default="hostile,paced,pipelined,silent,library", help="comma-separated"
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a gischat checkout to run the server from (repeatable; default: this one)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of flood")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every attacker and tree")
    parser.add_argument(
        "--diagnose", action="store_true", help="glibc's arenas of every process, via SIGUSR2"
    )
    parser.add_argument("--timeline", action="store_true", help="memory once a second, in the notes")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="a server setting")
    args = parser.parse_args()
    known = set(attackers("", []).keys())
    args.attackers = [a for a in args.attackers.split(",") if a]
    if unknown := set(args.attackers) - known:
        parser.error(f"unknown attackers {sorted(unknown)}; known: {sorted(known)}")
    trees: list[tuple[str, Path]] = []
    for item in args.tree or [f"this={BENCH_DIR.parent}"]:
        label, sep, path = item.partition("=")
        if not sep or not (Path(path) / "gischat").is_dir():
            parser.error(f"--tree wants LABEL=PATH of a gischat checkout, got {item!r}")
        trees.append((label, Path(path).resolve()))
    args.trees = trees
    return uvloop.run(main(args))


if __name__ == "__main__":
    raise SystemExit(cli())
