"""Load benchmark: gischat against a naive broadcast server, over real sockets.

    pip install -e ".[test,bench]"
    python bench/run.py                      # every scenario, both servers (~1-2 minutes)
    python bench/run.py --scenarios 1,5 --servers gischat --gischat-env SEND_QUEUE_SIZE=512
    python bench/run.py --scenarios 1 --py-spy   # also profile the servers (root or ptrace rights)

Each server runs as its own subprocess (`python -m gischat`; `python bench/naive_server.py`,
which runs uvicorn with gischat's own `uvicorn_options`) on 127.0.0.1 and a free port, afresh
for every scenario. The load comes from this process: picows clients (frames parsed in
Cython, one Python callback per message) on uvloop. The CPU used by the server, by this
client and by anything else on the machine is printed with every result, to show which side
bounded the measurement and how noisy the machine was.

Scenarios:
  1. fan-out: 100 clients in one room, 4 of them send 300 texts each without waiting for
     echoes (120,000 deliveries); rounds alternate between the two servers.
  2. latency at a fixed 20,000 deliveries/s: 200 stamped messages/s into a room of 100.
  3. 1,000 clients join one room, 100 handshakes in flight; every socket must see nb_users=1000.
  4. server RSS per idle connection: around scenario 3's 1,000 sockets, once RSS settles.
  5. a client that never reads, beside 20 readers of a paced sender (texts plus 60 kB CRS
     messages, so the stalled socket's ~3 MB of loopback buffers fill within seconds).
  6. 4000x3000 JPEG photos sent in one room while another room does round trips.

The table goes to stdout and to bench/results/latest.md; server logs (and py-spy stacks) to
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import io
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psutil
import uvloop

# CI type-checks bench/ with only the test and dev extras installed, i.e. without picows.
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect  # type: ignore[import-not-found, unused-ignore]
from PIL import Image, ImageChops

from gischat.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"  # the bench never connects anywhere else

# Room names: the one with a space checks that percent-encoded paths work on both servers.
ROOM = "bench room"
STALL_ROOM = "stall"
PHOTO_ROOM = "photo"
OTHER_ROOM = "other"
ROOMS = (ROOM, STALL_ROOM, PHOTO_ROOM, OTHER_ROOM)
SERVERS = ("gischat", "naive")

CONNECT_CONCURRENCY = 100  # handshakes in flight at once: far below uvicorn's backlog of 2048
MAX_FRAME = 64 * 1024 * 1024  # the naive server echoes the photo unresized
BIG_FRAME = 16 * 1024  # above this a frame's type is sniffed from its first bytes, not parsed
PAD = "lorem ipsum dolor sit amet "

# Scenario sizes and bounds (every wait below is bounded by one of these).
FANOUT_CLIENTS, FANOUT_SENDERS, FANOUT_MESSAGES, FANOUT_TIMEOUT, FANOUT_ROUNDS = 100, 4, 300, 20.0, 5
LATENCY_CLIENTS, LATENCY_SENDERS, LATENCY_RATE, LATENCY_SECONDS = 100, 4, 200, 4.0
JOIN_CLIENTS, JOIN_TIMEOUT = 1000, 20.0
STALL_READERS, STALL_RATE, STALL_BASE_SECONDS, STALL_SECONDS, STALL_GIVE_UP = 20, 200, 2.0, 5.0, 5.0
STALL_BULK_RATE, STALL_BULK_BYTES = 30, 60_000
STALL_RCVBUF = 4096
PHOTO_COUNT, PHOTO_SIZE, PHOTO_TIMEOUT = 5, (4000, 3000), 20.0
SERVER_START_TIMEOUT = 30.0

TYPE_SNIFF = re.compile(rb'"type": ?"(\w+)"')


# --------------------------------------------------------------------------- results


@dataclass
class Value:
    """One measurement as shown in the table; `number` is None when there is no number to compare."""

    number: float | None
    text: str


def num(value: float, digits: int = 1) -> Value:
    return Value(value, f"{value:,.{digits}f}")


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
    Metric("lat_p50", f"2. latency p50 @ {LATENCY_RATE * LATENCY_CLIENTS:,} deliveries/s (ms)", "—"),
    Metric(
        "lat_p99",
        f"2. latency p99 @ {LATENCY_RATE * LATENCY_CLIENTS:,} deliveries/s (ms)",
        "< 10 ms",
        below(10.0),
    ),
    Metric("lat_max", f"2. latency max @ {LATENCY_RATE * LATENCY_CLIENTS:,} deliveries/s (ms)", "—"),
    Metric(
        "join_time",
        f"3. {JOIN_CLIENTS:,} clients joined, all saw nb_users={JOIN_CLIENTS} (s)",
        "< 2 s",
        below(2.0),
    ),
    Metric("mem_per_conn", "4. server RSS per idle connection (kB)", "< 30 kB", below(30.0)),
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


@dataclass
class Results:
    values: dict[str, dict[str, Value]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, server: str, key: str, value: Value) -> None:
        self.values.setdefault(key, {})[server] = value

    def note(self, server: str, text: str) -> None:
        line = f"[{server}] {text}"
        self.notes.append(line)
        print("   ", line, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; values need not be sorted."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ms(ns: float) -> float:
    return ns / 1e6


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A server subprocess and what the bench asks of it."""

    kind: str
    port: int
    proc: asyncio.subprocess.Process
    http: httpx.AsyncClient
    ps: Any  # psutil.Process

    def ws_url(self, room: str) -> str:
        return f"ws://{HOST}:{self.port}/room/{quote(room, safe='')}/ws"

    def ws_path(self, room: str) -> str:
        return f"/room/{quote(room, safe='')}/ws"

    async def count(self, room: str) -> int:
        """Sockets in the room according to the server's own /status."""
        response = await self.http.get(f"http://{HOST}:{self.port}/status")
        for entry in response.json()["rooms"]:
            if entry["name"] == room:
                return int(entry["nb_connected_users"])
        return 0

    async def wait_count(self, room: str, expected: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await self.count(room) == expected:
                return True
            await asyncio.sleep(0.05)
        return False

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    async def settled_rss(self, within: float = 8.0) -> int:
        """RSS once two reads 0.3 s apart differ by less than 64 kB (bounded by `within` s)."""
        deadline = time.monotonic() + within
        previous = self.rss()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            current = self.rss()
            if abs(current - previous) < 64 * 1024:
                return current
            previous = current
        return self.rss()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# Extra settings for the gischat subprocess (--gischat-env), e.g. to try another SEND_QUEUE_SIZE.
GISCHAT_OVERRIDES: dict[str, str] = {}


def server_env(port: int, kind: str) -> dict[str, str]:
    """The caller's environment minus anything gischat would read as a setting, plus ours."""
    names = {name.lower() for name in Settings.model_fields} | {"main_language"}
    env = {key: value for key, value in os.environ.items() if key.lower() not in names}
    env.update(HOST=HOST, PORT=str(port), ROOMS=",".join(ROOMS), ENVIRONMENT="bench")
    if kind == "gischat":
        env.update(GISCHAT_OVERRIDES)
    return env


@contextlib.asynccontextmanager
async def running(kind: str, label: str) -> AsyncIterator[Server]:
    """Start a server subprocess, wait until /status answers, stop it afterwards."""
    port = free_port()
    if kind == "gischat":
        command = [sys.executable, "-m", "gischat"]
    else:
        command = [sys.executable, str(BENCH_DIR / "naive_server.py"), "--host", HOST, "--port", str(port)]
    log_path = RESULTS_DIR / f"{kind}-{label}.log"
    with log_path.open("wb") as log:
        # cwd: no stray .env is read; the environment carries every setting.
        proc = await asyncio.create_subprocess_exec(
            *command, env=server_env(port, kind), cwd=RESULTS_DIR, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                server = Server(kind, port, proc, http, psutil.Process(proc.pid))
                deadline = time.monotonic() + SERVER_START_TIMEOUT
                while True:
                    if proc.returncode is not None:
                        raise RuntimeError(f"{kind} exited at start-up, see {log_path}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"http://{HOST}:{port}/status")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{kind} did not answer /status in {SERVER_START_TIMEOUT} s")
                    await asyncio.sleep(0.05)
                profiler = await start_profiler(proc.pid, RESULTS_DIR / f"{kind}-{label}.py-spy.txt")
                try:
                    yield server
                finally:
                    await stop(profiler, signal.SIGINT)  # py-spy writes its output on SIGINT
        finally:
            await stop(proc, signal.SIGTERM)


async def stop(proc: asyncio.subprocess.Process | None, how: signal.Signals) -> None:
    """Signal a subprocess and wait for it; kill it if it lingers for 10 s."""
    if proc is None or proc.returncode is not None:
        return
    proc.send_signal(how)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()


# --py-spy: sample each server while it runs (py-spy attaches by PID; root or ptrace rights needed).
PROFILE_SERVERS = False


async def start_profiler(pid: int, output: Path) -> asyncio.subprocess.Process | None:
    """Attach `py-spy record` to the server; raw collapsed stacks go to `output`."""
    if not PROFILE_SERVERS:
        return None
    profiler = await asyncio.create_subprocess_exec(
        *("py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", str(output)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # let it attach before the load starts
    return profiler


class CpuMeter:
    """CPU used by the server and by this client process over a window, in cores."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.me = psutil.Process()
        self.start()

    def start(self) -> None:
        self.wall = time.perf_counter()
        self.server_cpu = self.server.cpu()
        times = self.me.cpu_times()
        self.client_cpu = times.user + times.system
        self.machine_busy = machine_busy()

    def stop(self, window: float | None = None) -> tuple[float, float, float]:
        """Cores used by the server, this client and everything else, since start.

        `window`: the active part of the interval, when known (CPU time spent after it is small).
        """
        wall = max(window if window is not None else time.perf_counter() - self.wall, 1e-9)
        times = self.me.cpu_times()
        server = (self.server.cpu() - self.server_cpu) / wall
        client = (times.user + times.system - self.client_cpu) / wall
        others = (machine_busy() - self.machine_busy) / wall - server - client
        return server, client, max(others, 0.0)

    def describe(self, window: float | None = None) -> str:
        server, client, others = self.stop(window)
        return f"CPU: server {server:.0%} of a core, client {client:.0%}, other processes {others:.0%}"


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores, kernel included)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


# --------------------------------------------------------------------------- clients


class Gate:
    """Done once `expected` peers have either hit or gone (disconnected)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.hits = 0
        self.misses = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._check()

    def hit(self) -> None:
        self.hits += 1
        self._check()

    def miss(self) -> None:
        self.misses += 1
        self._check()

    def _check(self) -> None:
        if self.hits + self.misses >= self.expected and not self.done.done():
            self.done.set_result(None)

    async def wait(self, within: float, progress: Callable[[], int] | None = None, idle: float = 2.0) -> bool:
        """True if every peer hit in time; with `progress`, give up early after `idle` s without any."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last, last_change = progress() if progress else 0, loop.time()
        while not self.done.done() and (now := loop.time()) < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.done), min(0.25, deadline - now))
            if progress is not None:
                current = progress()
                if current != last:
                    last, last_change = current, loop.time()
                elif loop.time() - last_change > idle:
                    break
        return self.hits >= self.expected


class Tally:
    """What a group of peers received: text deliveries, latencies, counts, images."""

    def __init__(self, peers: int) -> None:
        self.peers = peers
        self.recording = False
        self.count_only = False  # True: texts are counted, not parsed (no latencies)
        self.delivered = 0
        self.last_ns = 0
        self.max_gap = 0  # longest wait between two deliveries while recording, ns
        self.latencies: list[int] = []
        self.per_peer = 0  # texts each peer should get while recording
        self.texts_gate = Gate(0)
        self.users_target = -1
        self.users_gate = Gate(0)
        self.errors: list[str] = []

    def record(self, per_peer: int, peers: Sequence[Peer]) -> None:
        """Start counting texts afresh: each peer should receive `per_peer` of them."""
        for peer in peers:
            peer.texts = 0
        self.delivered = 0
        self.last_ns = 0
        self.max_gap = 0
        self.latencies = []
        self.per_peer = per_peer
        self.texts_gate = Gate(self.peers)
        for peer in peers:
            if peer.gone:
                self.texts_gate.miss()
        self.recording = True

    def expect_users(self, count: int, peers: Sequence[Peer] = ()) -> Gate:
        """A gate that opens when every peer has seen nb_users == count."""
        self.users_target = count
        self.users_gate = Gate(self.peers)
        for peer in peers:
            if peer.gone:
                self.users_gate.miss()
            elif peer.nb_users == count:
                peer.saw_target = True
                self.users_gate.hit()
            else:
                peer.saw_target = False
        return self.users_gate

    def __call__(self, peer: Peer, message: dict[str, Any], now: int) -> None:
        kind = message.get("type")
        if kind == "text":
            if peer.waiting_for == "text":
                peer.resolve(now)
            if not self.recording:
                return
            self.latencies.append(now - int(message["text"].split(" ", 1)[0]))
            self.count(peer, now)
        elif kind == "nb_users":
            peer.nb_users = int(message["nb_users"])
            if peer.nb_users == self.users_target and not peer.saw_target:
                peer.saw_target = True
                self.users_gate.hit()
        elif kind == "image":
            if peer.waiting_for == "image":
                peer.resolve(now)
        elif kind == "uncompliant":
            self.errors.append(str(message.get("reason")))
            if peer.waiter is not None and not peer.waiter.done():
                peer.waiter.set_exception(RuntimeError(f"uncompliant: {message.get('reason')}"))

    def count(self, peer: Peer, now: int) -> None:
        peer.texts += 1
        self.delivered += 1
        if self.last_ns and now - self.last_ns > self.max_gap:
            self.max_gap = now - self.last_ns
        self.last_ns = now
        if peer.texts == self.per_peer:
            self.texts_gate.hit()

    def gone(self, peer: Peer) -> None:
        if self.recording and peer.texts < self.per_peer:
            self.texts_gate.miss()
        if not peer.saw_target:
            self.users_gate.miss()


class Peer(WSListener):  # type: ignore[misc, unused-ignore]  # WSListener is Any without picows
    """One websocket client: hands every message to its tally, remembers how it ended."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.transport: WSTransport | None = None
        self.texts = 0
        self.nb_users = 0
        self.saw_target = False
        self.gone = False
        self.close_code: int | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.waiting_for: str | None = None
        self.waiter: asyncio.Future[int] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT:
            now = time.perf_counter_ns()
            tally = self.tally
            # Flood scenarios: counting is all that is needed, and parsing would make the
            # client, not the server, the bottleneck. Both servers put "type" first.
            if (
                tally.count_only
                and tally.recording
                and b'"text"' in frame.get_payload_as_memoryview()[:16].tobytes()
            ):
                tally.count(self, now)
                return
            if frame.payload_size > BIG_FRAME:
                # A photo: only its type matters here, and parsing megabytes would skew timings.
                sniffed = TYPE_SNIFF.search(frame.get_payload_as_memoryview()[:64].tobytes())
                message: dict[str, Any] = {"type": sniffed.group(1).decode() if sniffed else None}
            else:
                message = orjson.loads(frame.get_payload_as_memoryview())
            self.tally(self, message, now)
        elif msg_type == WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_code = int(code.value)
            transport.send_close(code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gone = True
        self.tally.gone(self)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("disconnected"))

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, orjson.dumps(message))

    def expect(self, kind: str) -> asyncio.Future[int]:
        """A future for the arrival time (perf_counter_ns) of the next message of this type."""
        self.waiting_for = kind
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    def resolve(self, now: int) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(now)
        self.waiting_for = None


def text_message(author: str, text: str) -> dict[str, Any]:
    return {"type": "text", "author": author, "avatar": None, "text": text}


def stamped(author: str, seq: int, pad: str = PAD) -> dict[str, Any]:
    """A text whose first word is its send time, so every recipient can compute the latency."""
    return text_message(author, f"{time.perf_counter_ns()} {seq} {pad}")


async def connect(url: str, tally: Tally) -> Peer:
    _, listener = await ws_connect(
        lambda: Peer(tally), url, max_frame_size=MAX_FRAME, websocket_handshake_timeout=10
    )
    assert isinstance(listener, Peer)
    return listener


async def connect_many(url: str, count: int, tally: Tally) -> list[Peer]:
    """Open `count` websockets with at most CONNECT_CONCURRENCY handshakes in flight."""
    semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> Peer:
        async with semaphore:
            return await connect(url, tally)

    return list(await asyncio.gather(*(one() for _ in range(count))))


def drop(peers: Sequence[Peer]) -> None:
    """Abort every client connection; the server is stopped right after."""
    for peer in peers:
        if peer.transport is not None and not peer.gone:
            peer.transport.disconnect(graceful=False)


async def joined_room(
    server: Server, room: str, count: int, within: float = 10.0
) -> tuple[Tally, list[Peer]]:
    """`count` clients in `room`, each having seen nb_users == count."""
    tally = Tally(count)
    tally.expect_users(count)
    peers = await connect_many(server.ws_url(room), count, tally)
    if not await tally.users_gate.wait(within):
        raise RuntimeError(f"{server.kind}: {count} clients did not all see nb_users={count}")
    return tally, peers


async def warm_up(tally: Tally, peers: Sequence[Peer]) -> None:
    """One message through the room, so first-use costs stay out of the measurement."""
    tally.record(1, peers)
    peers[0].send(stamped("warmup", 0))
    if not await tally.texts_gate.wait(5.0):
        raise RuntimeError("warm-up message was not delivered to every client")
    tally.recording = False


# --------------------------------------------------------------------------- scenarios


async def fanout_round(server: Server) -> tuple[int, float, str, bool, list[int | None], list[str]]:
    """One flood into a fresh room of clients: deliveries, seconds, CPU, complete?, close codes, errors."""
    tally, peers = await joined_room(server, ROOM, FANOUT_CLIENTS)
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
    cpu = meter.describe(elapsed if tally.last_ns else None)
    await asyncio.gather(*senders)
    closed = [peer.close_code for peer in peers if peer.gone]
    drop(peers)
    await server.wait_count(ROOM, 0, 5.0)
    return tally.delivered, elapsed, cpu, complete, closed, tally.errors


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


async def paced_sends(
    senders: Sequence[Peer], rate: float, seconds: float, pad: str, sent: dict[str, int] | None = None
) -> int:
    """Send `rate` messages/s round-robin from `senders` for `seconds`, on an absolute schedule.

    `sent["texts"]`, when given, counts the messages as they go.
    """
    interval = 1.0 / rate
    count = round(rate * seconds)
    start = time.perf_counter()
    for seq in range(count):
        delay = start + seq * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sender = senders[seq % len(senders)]
        if not sender.gone:
            sender.send(stamped(f"bench{seq % len(senders)}", seq, pad))
            if sent is not None:
                sent["texts"] += 1
    return count


async def scenario_latency(server: Server, results: Results) -> None:
    tally, peers = await joined_room(server, ROOM, LATENCY_CLIENTS)
    await warm_up(tally, peers)
    count = round(LATENCY_RATE * LATENCY_SECONDS)
    tally.record(count, peers)
    meter = CpuMeter(server)
    await paced_sends(peers[:LATENCY_SENDERS], LATENCY_RATE, LATENCY_SECONDS, "latency")
    complete = await tally.texts_gate.wait(5.0)
    cpu = meter.describe()
    lat = tally.latencies
    for key, q in (("lat_p50", 50), ("lat_p99", 99), ("lat_max", 100)):
        results.put(server.kind, key, num(ms(percentile(lat, q)), 2))
    results.note(
        server.kind,
        f"latency: {len(lat):,} deliveries at {LATENCY_RATE} msg/s x {LATENCY_CLIENTS} clients, "
        f"p50 {ms(percentile(lat, 50)):.2f} / p90 {ms(percentile(lat, 90)):.2f} / p99 "
        f"{ms(percentile(lat, 99)):.2f} / max {ms(max(lat, default=0)):.2f} ms; {cpu}"
        + ("" if complete else " — INCOMPLETE"),
    )
    drop(peers)


async def scenario_join_and_memory(server: Server, results: Results) -> None:
    # Warm the server up with one client and one message, then take the "before" reading.
    tally, peers = await joined_room(server, ROOM, 1)
    await warm_up(tally, peers)
    drop(peers)
    await server.wait_count(ROOM, 0, 5.0)
    before = await server.settled_rss()

    tally = Tally(JOIN_CLIENTS)
    gate = tally.expect_users(JOIN_CLIENTS)
    meter = CpuMeter(server)
    start = time.perf_counter()
    peers = await connect_many(server.ws_url(ROOM), JOIN_CLIENTS, tally)
    handshakes = time.perf_counter() - start
    complete = await gate.wait(JOIN_TIMEOUT - handshakes)
    elapsed = time.perf_counter() - start
    cpu = meter.describe()
    if complete:
        results.put(server.kind, "join_time", num(elapsed, 2))
    else:
        results.put(server.kind, "join_time", Value(None, f"> {JOIN_TIMEOUT:.0f} (gave up)"))
    results.note(
        server.kind,
        f"join: {JOIN_CLIENTS} handshakes done after {handshakes:.2f} s "
        f"({CONNECT_CONCURRENCY} in flight at a time), every socket saw nb_users={JOIN_CLIENTS} "
        + (f"after {elapsed:.2f} s" if complete else f"— only {gate.hits} did within {JOIN_TIMEOUT:.0f} s")
        + f"; {cpu}",
    )

    counted = await server.wait_count(ROOM, JOIN_CLIENTS, 10.0)
    after = await server.settled_rss()
    per_connection = (after - before) / JOIN_CLIENTS / 1024
    results.put(server.kind, "mem_per_conn", num(per_connection, 1))
    results.note(
        server.kind,
        f"memory: RSS {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB with {JOIN_CLIENTS} idle "
        f"sockets (/status {'agrees' if counted else 'DISAGREES'}) = {per_connection:.1f} kB each",
    )
    drop(peers)


@dataclass
class StalledSocket:
    """A raw websocket client that completes the handshake and then never reads again."""

    sock: socket.socket
    buffer: bytearray

    @classmethod
    async def open(cls, port: int, path: str) -> StalledSocket:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Small receive window, set before connecting so the window scale stays small too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL_RCVBUF)
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5.0)
            if not chunk:
                raise ConnectionError("stalled client: connection closed during the handshake")
            buffer += chunk
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"stalled client: handshake refused: {head[:60]!r}")
        return cls(sock, bytearray(rest))

    async def drain(self, seconds: float) -> tuple[int, int | None]:
        """Read for at most `seconds`: chat messages received before the close frame, and its code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        texts, pos = 0, 0
        while True:
            pos, found, close_code = parse_frames(self.buffer, pos)
            texts += found
            if close_code is not None:
                return texts, close_code
            remaining = deadline - loop.time()
            if remaining <= 0:
                return texts, None
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), remaining)
            except (TimeoutError, OSError):
                return texts, None
            if not chunk:
                return texts, None
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def parse_frames(buffer: bytearray, pos: int) -> tuple[int, int, int | None]:
    """Parse complete server frames (unmasked) from `pos`: new position, chat messages, close code."""
    texts = 0
    while len(buffer) - pos >= 2:
        opcode, length, header = buffer[pos] & 0x0F, buffer[pos + 1] & 0x7F, 2
        if length == 126:
            if len(buffer) - pos < 4:
                break
            length, header = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            if len(buffer) - pos < 10:
                break
            length, header = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
        if len(buffer) - pos < header + length:
            break
        payload = bytes(buffer[pos + header : pos + header + length])
        pos += header + length
        if opcode == 0x1 and orjson.loads(payload).get("type") in ("text", "crs"):
            texts += 1
        elif opcode == 0x8:
            return pos, texts, int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return pos, texts, None


def bulk_message(author: str) -> dict[str, Any]:
    """A CRS message with a 60 kB WKT: valid for gischat (limit 64 kB), bulky for the buffers."""
    wkt = 'GEOGCRS["bench",' + "PARAMETER[0]," * (STALL_BULK_BYTES // 13) + "]"
    return {"type": "crs", "author": author, "avatar": None, "crs_wkt": wkt, "crs_authid": "EPSG:4326"}


async def scenario_stall(server: Server, results: Results) -> None:
    tally, peers = await joined_room(server, STALL_ROOM, STALL_READERS + 1)
    sender = peers[0]
    await warm_up(tally, peers)
    pad = (PAD * 10)[:200]
    bulk = orjson.dumps(bulk_message("bench0"))
    sent = {"texts": 0, "bulk": 0}

    async def bulk_sends(seconds: float) -> None:
        """The bulk stream, paced like the texts; it fills a stalled socket's buffers in ~2 s."""
        start = time.perf_counter()
        for seq in range(round(STALL_BULK_RATE * seconds)):
            delay = start + seq / STALL_BULK_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sender.transport is not None and not sender.gone:
                sender.transport.send(WSMsgType.TEXT, bulk)
                sent["bulk"] += 1

    async def phase(seconds: float) -> int:
        count = round(STALL_RATE * seconds)
        tally.record(count, peers)
        bulk_task = asyncio.create_task(bulk_sends(seconds))
        await paced_sends([sender], STALL_RATE, seconds, pad, sent)
        await bulk_task
        return count

    # Phase A: nobody stalls.
    await phase(STALL_BASE_SECONDS)
    await tally.texts_gate.wait(3.0)
    base = list(tally.latencies)
    base_p50, base_p99 = ms(percentile(base, 50)), ms(percentile(base, 99))
    results.put(server.kind, "stall_base_p99", Value(base_p99, f"{base_p50:.2f} / {base_p99:.2f}"))

    # Phase B: a client joins and never reads again.
    stalled = await StalledSocket.open(server.port, server.ws_path(STALL_ROOM))
    if not await tally.expect_users(STALL_READERS + 2, peers).wait(5.0):
        results.note(server.kind, "stall: the readers did not all see the stalled client join")
    sent["texts"] = sent["bulk"] = 0
    evicted: tuple[float, int] | None = None  # seconds into phase B, messages sent by then
    start = time.perf_counter()

    async def watch() -> None:
        """Poll /status for the stalled client leaving the room."""
        nonlocal evicted
        while evicted is None:
            await asyncio.sleep(0.1)
            if await server.count(STALL_ROOM) <= STALL_READERS + 1:
                evicted = (time.perf_counter() - start, sent["texts"] + sent["bulk"])

    watcher = asyncio.create_task(watch())
    count = await phase(STALL_SECONDS)
    last_send = time.perf_counter_ns()
    complete = await tally.texts_gate.wait(STALL_GIVE_UP, progress=lambda: tally.delivered, idle=1.0)
    # Stalled: the readers went a whole second without a delivery while texts were due.
    stalled_room = tally.max_gap > 1e9 or last_send - tally.last_ns > 1e9
    tally.recording = False
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    latencies = list(tally.latencies)  # every reader, and the sender's own echo
    delivered = tally.delivered
    received, close_code = await stalled.drain(1.0)
    stalled.close()

    p50, p99 = ms(percentile(latencies, 50)), ms(percentile(latencies, 99))
    expected = count * len(peers)
    if stalled_room:
        results.put(
            server.kind,
            "stall_p99",
            Value(
                None, f"stalled ({delivered / expected:.0%} delivered, gave up after {STALL_GIVE_UP:.0f} s)"
            ),
        )
    elif complete:
        results.put(server.kind, "stall_p99", Value(p99, f"{p50:.2f} / {p99:.2f}"))
    else:
        lost = expected - delivered
        results.put(server.kind, "stall_p99", Value(p99, f"{p50:.2f} / {p99:.2f} ({lost} deliveries lost)"))
    if close_code is not None:
        verdict = f"disconnected ({close_code}) after it got {received} msgs"
        if evicted is not None:
            verdict += f"; evicted {evicted[0]:.1f} s in, {evicted[1]} msgs sent by then"
    else:
        verdict = f"never disconnected ({received} msgs read when drained for 1 s)"
    results.put(server.kind, "stall_verdict", Value(None, verdict))
    total = sent["texts"] + sent["bulk"]
    results.note(
        server.kind,
        f"stall: {STALL_READERS} readers; sender: {STALL_RATE} texts/s (latency measured) + {STALL_BULK_RATE} "
        f"CRS msgs/s of {len(bulk) / 1000:.0f} kB (fills the stalled socket's ~3 MB of kernel buffers on "
        f"loopback in ~2 s). Without stall p50/p99 {ms(percentile(base, 50)):.2f}/{ms(percentile(base, 99)):.2f} ms; "
        f"with the stalled client p50/p99 {p50:.2f}/{p99:.2f} ms over {delivered:,}/{expected:,} text deliveries"
        + (
            f" — STALLED: the readers got nothing for over a second (gave up {STALL_GIVE_UP:.0f} s after the last send)"
            if stalled_room
            else (
                ""
                if complete
                else f" — {expected - delivered} text deliveries LOST (never arrived, no stall)"
            )
        )
        + f"; {total} msgs sent in phase B; stalled client: {verdict}",
    )
    drop(peers)


def make_photo() -> bytes:
    """A 4000x3000 JPEG (q90) that compresses like a photo: gradients under sensor-like noise."""
    cached = RESULTS_DIR / "photo-4000x3000-q90.jpg"
    if cached.exists():
        return cached.read_bytes()
    noise = Image.effect_noise(PHOTO_SIZE, 8)
    red = ImageChops.add(Image.linear_gradient("L").rotate(90).resize(PHOTO_SIZE), noise, offset=-128)
    green = ImageChops.add(
        Image.linear_gradient("L").resize(PHOTO_SIZE),
        noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        offset=-128,
    )
    blue = ImageChops.add(
        Image.new("L", PHOTO_SIZE, 100), noise.transpose(Image.Transpose.FLIP_TOP_BOTTOM), offset=-128
    )
    out = io.BytesIO()
    Image.merge("RGB", (red, green, blue)).save(out, "JPEG", quality=90)
    cached.write_bytes(out.getvalue())
    return out.getvalue()


async def scenario_photo(server: Server, results: Results, photo_b64: str) -> None:
    tally = Tally(2)
    pinger = await connect(server.ws_url(OTHER_ROOM), tally)
    photographer = await connect(server.ws_url(PHOTO_ROOM), tally)
    samples: list[tuple[int, int]] = []  # (send time, round trip) in ns
    stop = asyncio.Event()

    async def ping() -> None:
        seq = 0
        while not stop.is_set():
            echo = pinger.expect("text")
            sent = time.perf_counter_ns()
            pinger.send(text_message("pinger", f"{sent} {seq}"))
            seq += 1
            try:
                samples.append((sent, await asyncio.wait_for(echo, 2.0) - sent))
            except TimeoutError:
                samples.append((sent, 2_000_000_000))

    pinging = asyncio.create_task(ping())
    await asyncio.sleep(0.5)  # baseline round trips
    meter = CpuMeter(server)
    times: list[float] = []
    window_start = time.perf_counter_ns()
    for _ in range(PHOTO_COUNT):
        arrival = photographer.expect("image")
        sent = time.perf_counter_ns()
        photographer.send(
            {"type": "image", "author": "photographer", "avatar": None, "image_data": photo_b64}
        )
        try:
            times.append((await asyncio.wait_for(arrival, PHOTO_TIMEOUT) - sent) / 1e9)
        except (TimeoutError, RuntimeError, ConnectionError) as exc:
            results.note(server.kind, f"photo: no broadcast back: {exc!r}")
            break
        await asyncio.sleep(0.1)
    window_end = time.perf_counter_ns()
    cpu = meter.describe()
    await asyncio.sleep(0.2)
    stop.set()
    await pinging
    drop([pinger, photographer])

    during = [rtt for sent, rtt in samples if window_start <= sent <= window_end]
    baseline = [rtt for sent, rtt in samples if sent < window_start]
    resized = "resized" if server.kind == "gischat" else "relayed as is, not resized"
    if times:
        results.put(
            server.kind,
            "photo_time",
            Value(statistics.median(times), f"{statistics.median(times):.3f} ({resized})"),
        )
    else:
        results.put(server.kind, "photo_time", Value(None, "failed"))
    results.put(server.kind, "photo_rtt_p99", num(ms(percentile(during, 99)), 2))
    results.put(server.kind, "photo_rtt_max", num(ms(max(during, default=0)), 2))
    results.note(
        server.kind,
        f"photo: {len(photo_b64) / 1e6:.1f} MB of base64 x {len(times)}, send→broadcast "
        + ", ".join(f"{t:.3f}" for t in times)
        + f" s ({resized}); other room: {len(during)} round trips during the photos, p50/p99/max "
        f"{ms(percentile(during, 50)):.2f}/{ms(percentile(during, 99)):.2f}/{ms(max(during, default=0)):.2f} ms "
        f"(before: p99 {ms(percentile(baseline, 99)):.2f} ms over {len(baseline)}); {cpu}",
    )


# --------------------------------------------------------------------------- report


def gischat_revision() -> str:
    """The commit of the gischat tree being measured (the server is imported from it)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gischat"],
            cwd=BENCH_DIR.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {commit}" + (" + uncommitted changes in gischat/" if dirty else "")


def machine() -> str:
    cores = len(os.sched_getaffinity(0))
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "?"
    versions = ", ".join(
        f"{name} {version(name)}"
        for name in ("uvicorn", "websockets", "starlette", "fastapi", "uvloop", "picows")
    )
    return (
        f"{cores} cores ({model}), Python {platform.python_version()} on {platform.system()} "
        f"{platform.release()}; {versions}"
    )


def table(results: Results, servers: Sequence[str]) -> str:
    lines = [
        "| metric | gischat | naive | ratio | target | met? |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for metric in METRICS:
        values = results.values.get(metric.key)
        if not values:
            continue
        g, n = values.get("gischat"), values.get("naive")
        ratio = "—"
        if metric.ratio and g and n and g.number is not None and n.number:
            ratio = f"{g.number / n.number:.2f}"
        met = "—"
        if metric.met is not None and g is not None:
            met = "yes" if metric.met(g, n) else "**no**"
        cells = [g.text if g else "not run", n.text if n else "not run"]
        if "naive" not in servers:
            cells[1] = "not run"
        lines.append(f"| {metric.label} | {cells[0]} | {cells[1]} | {ratio} | {metric.target} | {met} |")
    return "\n".join(lines)


def raise_fd_limit() -> int:
    """1,000+ sockets on each side: lift the soft limit, before any server is spawned (they inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < JOIN_CLIENTS + 200:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is too low for {JOIN_CLIENTS} connections")
    return max(soft, wanted)


async def main(scenarios: Sequence[int], servers: Sequence[str]) -> int:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fd_limit = raise_fd_limit()
    results = Results()
    began = time.perf_counter()
    photo_b64 = ""
    if 6 in scenarios:
        photo_b64 = base64.b64encode(make_photo()).decode("ascii")

    async def fanout() -> None:
        async with contextlib.AsyncExitStack() as stack:
            started = {kind: await stack.enter_async_context(running(kind, "fanout")) for kind in servers}
            await scenario_fanout(started, results)

    def each_server(
        label: str, scenario: Callable[[Server, Results], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        async def run_all() -> None:
            for kind in servers:
                print(f"   on {kind}", flush=True)
                gc.collect()
                try:
                    async with running(kind, label) as server:
                        await scenario(server, results)
                except Exception as exc:  # one broken scenario must not cost the others
                    results.note(kind, f"{label}: FAILED: {exc!r}")

        return run_all

    plan: list[tuple[set[int], str, Callable[[], Awaitable[None]]]] = [
        ({1}, "fan-out, rounds alternating between the servers", fanout),
        ({2}, "latency", each_server("latency", scenario_latency)),
        ({3, 4}, "join + memory", each_server("join", scenario_join_and_memory)),
        ({5}, "stalled reader", each_server("stall", scenario_stall)),
        ({6}, "photo", each_server("photo", lambda server, res: scenario_photo(server, res, photo_b64))),
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

    report = "\n".join(
        [
            table(results, servers),
            "",
            "ratio = gischat / naive (higher is better for deliveries/s, lower for times, latencies and memory).",
            f"Machine: {machine()}. gischat {gischat_revision()}.",
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
    parser = argparse.ArgumentParser(description="gischat load benchmark against a naive server")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6", help="comma-separated scenario numbers")
    parser.add_argument("--servers", default=",".join(SERVERS), help="gischat, naive or both")
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
    args = parser.parse_args()
    global PROFILE_SERVERS  # a command-line switch read deep inside
    PROFILE_SERVERS = args.py_spy
    for item in args.gischat_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--gischat-env wants NAME=VALUE, got {item!r}")
        GISCHAT_OVERRIDES[name.upper()] = value
    scenarios = [int(part) for part in args.scenarios.split(",") if part.strip()]
    servers = [part.strip() for part in args.servers.split(",") if part.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    return uvloop.run(main(scenarios, servers))


if __name__ == "__main__":
    raise SystemExit(cli())
