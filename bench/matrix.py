"""The Matrix bridge under load: one real Synapse and gischat subprocesses, measured side by side.

    pip install -e ".[test,bench]"
    python bench/matrix.py            # the three scenarios, 2.5 to 3 minutes
    python bench/matrix.py --quick    # fewer samples, shorter steps and rounds, 50 to 90 s
    python bench/matrix.py --py-spy   # also profile the bridged gischat through M3 (root or ptrace rights)

How long M2 takes depends on how fast Synapse drains the bridge's queue after each step (it waits
until every text reached the Matrix user, at most 60 s a step, 25 s with --quick).

Synapse (matrix-synapse of the test extra) runs as `tests/synapse_homeserver.py` runs it for the
bridge's tests: its own process, SQLite, loopback, every per-user rate limit lifted; its application
service registration points straight at the bridged gischat's port (no relay in between). gischat
runs as `gischat` subprocesses with the settings of `tests/redis_nodes.py` (`node_env`: the per-client
rates and quotas lifted, no room history). The Matrix side is a real registered user ("Echo") driven by
one `/sync` long poll for the whole run (a stored filter: the portals' timelines only, a few event
fields, no presence), on aiohttp in this process, beside the gischat sockets (picows clients).

M1. Round trip gischat socket -> Matrix user -> gischat socket: a /channel socket says a stamped text,
    the Matrix user answers each one with the same stamp as soon as its sync shows it, the socket
    times the answer's arrival (one in flight). The legs are split with this process's clock at each
    end and the `origin_server_ts` Synapse gave each event (the wall clock, in milliseconds).
M2. Sustained rate one portal carries: a /channel socket sends texts at rising offered rates while the
    Matrix user counts arrivals; gischat's `/status` (`matrix.queued`, `matrix.lag_seconds`) is
    sampled every 0.25 s, and the CPU of gischat, Synapse, this process and the rest of the machine
    is metered over each sending window.
M3. Fan-out cost of the bridge: a room of 100 picows sockets (2.x route), one of them sending stamped
    texts at a fixed rate, on two gischat servers, one bridged (its portal with the Matrix user in it),
    one not; rounds alternate between them. A bridged round's CPU window runs until the bridge's queue
    is empty, then both sides get the same short settle (the homeserver pushes the bridge's own events
    back to it, which it reads and drops).

The tables go to stdout and to bench/results/matrix.md; Synapse's directory (database, log) and the
gischat logs to bench/results/matrix/, replaced on each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import orjson
import psutil
import uvloop
from harness import (
    HOST,
    RESULTS_DIR,
    Peer,
    Server,
    Tally,
    free_port,
    gischat_revision,
    joined_room,
    machine,
    machine_busy,
    ms,
    paced_sends,
    percentile,
    raise_fd_limit,
    stop,
)

# WSListener is Any without picows (CI type-checks bench/ without it), as in harness.py.
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect  # type: ignore[import-not-found, unused-ignore]

from gischat.matrix import names

# The Synapse and gischat helpers of the bridge's tests (tests/ is not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from redis_nodes import gischat_command, node_env
from synapse_homeserver import (
    AS_TOKEN,
    HS_TOKEN,
    SERVER_NAME,
    USER_PREFIX,
    Homeserver,
    synapse_version,
    write_registration,
)

WORK_DIR = RESULTS_DIR / "matrix"
RTT_ROOM, RATE_ROOM, FANOUT_ROOM = "rtt", "rate", "fanout"
BRIDGED_ROOMS = (RTT_ROOM, RATE_ROOM, FANOUT_ROOM)
ECHO_DISPLAY = "Echo"
ECHO_NICKNAME = names.matrix_nickname(ECHO_DISPLAY, 1)  # what gischat calls the Matrix user
START_TIMEOUT = 60.0
TRIP_TIMEOUT = 10.0
STATUS_EVERY = 0.25  # M2: gischat's /status sampled this often
SETTLE = 0.5  # M3: after each round, before the CPU is read, on both sides
TARGET = 1.10  # M3: bridge on / bridge off, at most
SYNC_LIMIT = 1000  # events per room in one /sync answer at most (a `limited` answer is counted)


@dataclass(frozen=True)
class Plan:
    trips: int
    warm_trips: int
    rates: tuple[int, ...]
    step_seconds: float
    drain_within: float
    fan_clients: int
    fan_rate: int
    fan_seconds: float
    fan_rounds: int


FULL = Plan(200, 5, (20, 50, 100, 200), 5.0, 60.0, 100, 20, 4.0, 5)
QUICK = Plan(50, 3, (20, 50, 100, 200), 2.0, 25.0, 100, 20, 3.0, 2)


# --------------------------------------------------------------------------- processes


@dataclass
class Meter:
    """CPU seconds of gischat, Synapse, this process and the whole machine, read at once."""

    gischat: float
    synapse: float
    bench: float
    machine: float
    wall: float

    @classmethod
    def read(cls, gischat: Server, synapse: Any) -> Meter:
        return cls(
            cpu_seconds(gischat.ps),
            cpu_seconds(synapse),
            cpu_seconds(psutil.Process()),
            machine_busy(),
            time.perf_counter(),
        )

    def cores(self, since: Meter) -> Cores:
        wall = max(self.wall - since.wall, 1e-9)
        gischat = (self.gischat - since.gischat) / wall
        synapse = (self.synapse - since.synapse) / wall
        bench = (self.bench - since.bench) / wall
        others = (self.machine - since.machine) / wall - gischat - synapse - bench
        return Cores(gischat, synapse, bench, max(others, 0.0), wall)

    def per(self, since: Meter, count: int) -> Cores:
        """CPU seconds per one of `count` things done since then (`seconds`: the wall time per thing)."""
        c = self.cores(since)
        scale = c.seconds / count
        return Cores(c.gischat * scale, c.synapse * scale, c.bench * scale, c.others * scale, scale)


def cpu_seconds(process: Any) -> float:
    """CPU time of a process's live threads, to the nanosecond (/proc/PID/task/*/schedstat): a round
    of M3 costs gischat well under a second, which psutil's 10 ms ticks would blur. psutil elsewhere."""
    total = 0
    try:
        for task in os.scandir(f"/proc/{process.pid}/task"):
            with open(os.path.join(task.path, "schedstat")) as stat:
                total += int(stat.read().split()[0])
    except (OSError, ValueError, IndexError):
        times = process.cpu_times()
        return float(times.user + times.system)
    return total / 1e9


@dataclass
class Cores:
    """Cores used over a window (1.0: one core all the time)."""

    gischat: float
    synapse: float
    bench: float
    others: float
    seconds: float

    def describe(self) -> str:
        return (
            f"gischat {self.gischat:.0%} of a core, Synapse {self.synapse:.0%}, this process "
            f"{self.bench:.0%}, other processes {self.others:.0%}"
        )


@contextlib.asynccontextmanager
async def gischat_server(label: str, port: int, settings: dict[str, str]) -> AsyncIterator[Server]:
    """`gischat` on `port` with `node_env`'s settings plus `settings`, until /status says healthy."""
    log_path = WORK_DIR / f"gischat-{label}.log"
    env = node_env(PORT=port, ENVIRONMENT="bench", **settings)
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            gischat_command(), env=env, cwd=WORK_DIR, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
            server = Server("gischat", port, proc, http, psutil.Process(proc.pid), log_path)
            deadline = time.monotonic() + START_TIMEOUT
            while not await healthy(http, port):
                if proc.returncode is not None:
                    raise RuntimeError(f"gischat {label} exited at start-up, see {log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gischat {label} not healthy within {START_TIMEOUT} s")
                await asyncio.sleep(0.05)
            yield server
    finally:
        await stop(proc, signal.SIGTERM)


async def healthy(http: httpx.AsyncClient, port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        response = await http.get(f"http://{HOST}:{port}/status")
        return response.status_code == 200 and bool(response.json().get("healthy"))
    return False


async def bridge_status(server: Server) -> dict[str, Any]:
    status = (await server.http.get(f"http://{HOST}:{server.port}/status")).json()["matrix"]
    assert isinstance(status, dict)
    return status


async def until(check: Callable[[], Any], within: float, every: float = 0.05) -> bool:
    """Whether the awaitable `check()` returned true within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every)
    return False


async def queue_empty(server: Server, within: float) -> bool:
    async def empty() -> bool:
        return int((await bridge_status(server))["queued"]) == 0

    return await until(empty, within, 0.02)


# --------------------------------------------------------------------------- the Matrix user


@dataclass
class Seen:
    """An event of a portal as the Matrix user's sync returned it."""

    room_id: str
    sender: str
    body: str
    origin_ms: int  # Synapse's origin_server_ts
    at_ns: int  # this process's perf_counter_ns when the sync answer was read


class MatrixUser:
    """A registered Matrix user on aiohttp: one /sync long poll for the run, sends on other connections.

    Handlers are called for each m.room.message of a watched room, in timeline order, as each sync
    answer is read (their own events included: Synapse's timestamp of what the user said is read there).
    """

    def __init__(self, homeserver: Homeserver, user_id: str, access_token: str) -> None:
        self.homeserver = homeserver
        self.user_id = user_id
        self.session = aiohttp.ClientSession(
            base_url=homeserver.url,
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=aiohttp.ClientTimeout(total=60),
        )
        self.handlers: dict[str, Callable[[Seen], None]] = {}
        self.since: str | None = None
        self.filter_id = ""
        self.syncs = 0
        self.limited = 0  # sync answers that left events out (more than SYNC_LIMIT at once)
        self.errors: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def register(cls, homeserver: Homeserver, localpart: str, display: str) -> MatrixUser:
        password = uuid.uuid4().hex
        answer = await asyncio.to_thread(homeserver.register_user, localpart, password, display)
        return cls(homeserver, str(answer["user_id"]), str(answer["access_token"]))

    async def call(self, method: str, path: str, body: Any = None, **params: str) -> dict[str, Any]:
        data = None if body is None else orjson.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        async with self.session.request(method, path, data=data, params=params, headers=headers) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
        answer = orjson.loads(payload)
        assert isinstance(answer, dict)
        return answer

    async def join(self, alias: str) -> str:
        answer = await self.call("POST", f"/_matrix/client/v3/join/{quote(alias, safe='')}", {})
        return str(answer["room_id"])

    async def start(self, room_ids: Sequence[str]) -> None:
        """Store the filter, take the rooms as they stand (a first sync), then long-poll for good."""
        little = {"not_types": ["*"]}
        sync_filter = {
            "event_fields": ["type", "sender", "content.body", "origin_server_ts"],
            "presence": little,
            "account_data": little,
            "room": {
                "rooms": list(room_ids),
                "timeline": {"limit": SYNC_LIMIT, "types": ["m.room.message"]},
                "state": {"lazy_load_members": True, "types": []},
                "ephemeral": little,
                "account_data": little,
            },
        }
        path = f"/_matrix/client/v3/user/{quote(self.user_id, safe='')}/filter"
        self.filter_id = str((await self.call("POST", path, sync_filter))["filter_id"])
        first = await self.call("GET", "/_matrix/client/v3/sync", filter=self.filter_id, timeout="0")
        self.since = str(first["next_batch"])
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="matrix sync")

    async def _poll(self) -> None:
        params = {"filter": self.filter_id, "timeout": "30000", "set_presence": "offline"}
        while True:
            try:
                answer = await self.call("GET", "/_matrix/client/v3/sync", since=self.since or "", **params)
            except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError) as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.1)
                continue
            now = time.perf_counter_ns()
            self.syncs += 1
            self.since = str(answer["next_batch"])
            for room_id, room in answer.get("rooms", {}).get("join", {}).items():
                timeline = room.get("timeline", {})
                self.limited += bool(timeline.get("limited"))
                handler = self.handlers.get(room_id)
                if handler is None:
                    continue
                for event in timeline.get("events", []):
                    body = (event.get("content") or {}).get("body")
                    if event.get("type") == "m.room.message" and isinstance(body, str):
                        handler(
                            Seen(room_id, str(event["sender"]), body, int(event["origin_server_ts"]), now)
                        )

    async def send_text(self, room_id: str, body: str) -> int:
        """Say `body` in the room; returns when Synapse answered (perf_counter_ns)."""
        path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/{uuid.uuid4().hex}"
        await self.call("PUT", path, {"msgtype": "m.text", "body": body})
        return time.perf_counter_ns()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.session.close()


# --------------------------------------------------------------------------- a gischat socket


class Voice(WSListener):  # type: ignore[misc, unused-ignore]  # WSListener is Any without picows
    """One /channel socket: registers a nickname, says texts, resolves waiters on what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: WSTransport | None = None
        self.waiters: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future[int]]] = []
        self.refusals: list[str] = []  # what gischat answered `uncompliant`
        self.gone = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        now = time.perf_counter_ns()
        message = orjson.loads(frame.get_payload_as_memoryview())
        if message.get("type") == "uncompliant":
            self.refusals.append(str(message.get("reason")))
        for index, (wanted, future) in enumerate(self.waiters):
            if wanted(message):
                del self.waiters[index]
                if not future.done():
                    future.set_result(now)
                break

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gone = True
        for _, future in self.waiters:
            if not future.done():
                future.set_exception(ConnectionError("the socket was closed"))

    def expect(self, wanted: Callable[[dict[str, Any]], bool]) -> asyncio.Future[int]:
        """A future for the arrival time (perf_counter_ns) of the next message for which `wanted` holds."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiters.append((wanted, future))
        return future

    def say(self, author: str, text: str) -> None:
        assert self.transport is not None
        message = {"type": "text", "author": author, "avatar": None, "text": text}
        self.transport.send(WSMsgType.TEXT, orjson.dumps(message))

    def close(self) -> None:
        if self.transport is not None and not self.gone:
            self.transport.disconnect(graceful=False)


async def voice(server: Server, room: str, nickname: str) -> Voice:
    url = f"ws://{HOST}:{server.port}/channel/{quote(room, safe='')}/ws"
    _, listener = await ws_connect(Voice, url, websocket_handshake_timeout=10)
    assert isinstance(listener, Voice)
    registered = listener.expect(lambda m: m.get("type") == "newcomer" and m.get("newcomer") == nickname)
    assert listener.transport is not None
    listener.transport.send(WSMsgType.TEXT, orjson.dumps({"type": "newcomer", "newcomer": nickname}))
    await asyncio.wait_for(registered, TRIP_TIMEOUT)
    return listener


# --------------------------------------------------------------------------- context


@dataclass
class Bench:
    plan: Plan
    homeserver: Homeserver
    synapse: Any  # psutil.Process
    bridged: Server
    plain: Server
    echo: MatrixUser
    rooms: dict[str, str]  # gischat room -> portal room id
    profile: bool = False  # --py-spy: the bridged gischat through M3
    loads: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def meter(self, server: Server | None = None) -> Meter:
        return Meter.read(server or self.bridged, self.synapse)

    def load(self, label: str) -> None:
        self.loads.append((label, os.getloadavg()))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"   {text}", flush=True)


def stats_cells(values: Sequence[float]) -> list[str]:
    """p50, p99, max of values in ns, as milliseconds."""
    if not values:
        return ["—", "—", "—"]
    return [f"{ms(percentile(values, q)):.1f}" for q in (50, 99)] + [f"{ms(max(values)):.1f}"]


def table(header: Sequence[str], aligns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [f"| {' | '.join(header)} |", f"| {' | '.join(aligns)} |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- M1: round trip


@dataclass
class Trip:
    sent_ns: int
    sent_wall_ms: float
    seen_ns: int = 0  # the Matrix user's sync returned the socket's text
    out_origin_ms: int = 0  # Synapse's timestamp of the puppet's event
    echo_ns: int = 0  # the Matrix user's send began
    echo_wall_ms: float = 0.0
    echo_answered_ns: int = 0  # Synapse answered the send
    in_origin_ms: int = 0  # Synapse's timestamp of the Matrix user's event
    back_ns: int = 0  # the socket received the answer

    # The legs, in ns. Those against Synapse's timestamps mix this process's wall clock with Synapse's
    # (the same machine's), in milliseconds.
    def total(self) -> float:
        return self.back_ns - self.sent_ns

    def outward(self) -> float:
        return self.seen_ns - self.sent_ns

    def out_made(self) -> float:
        return (self.out_origin_ms - self.sent_wall_ms) * 1e6

    def out_synced(self) -> float:
        return self.outward() - self.out_made()

    def reaction(self) -> float:
        return self.echo_ns - self.seen_ns

    def inward(self) -> float:
        return self.back_ns - self.echo_ns

    def in_made(self) -> float:
        return (self.in_origin_ms - self.echo_wall_ms) * 1e6

    def in_relayed(self) -> float:
        return self.inward() - self.in_made()

    def answered(self) -> float:
        return self.echo_answered_ns - self.echo_ns

    def after_answer(self) -> float:
        return self.back_ns - self.echo_answered_ns


async def round_trips(bench: Bench) -> str:
    room_id = bench.rooms[RTT_ROOM]
    trips: dict[str, Trip] = {}
    echoes: set[asyncio.Task[None]] = set()

    async def answer(trip: Trip, body: str) -> None:
        trip.echo_ns = time.perf_counter_ns()
        trip.echo_wall_ms = time.time_ns() / 1e6
        trip.echo_answered_ns = await bench.echo.send_text(room_id, body)

    def on_event(seen: Seen) -> None:
        trip = trips.get(seen.body)
        if trip is None:
            return
        if seen.sender == bench.echo.user_id:
            trip.in_origin_ms = seen.origin_ms
            return
        trip.seen_ns, trip.out_origin_ms = seen.at_ns, seen.origin_ms
        task = asyncio.get_running_loop().create_task(answer(trip, seen.body))
        echoes.add(task)
        task.add_done_callback(echoes.discard)

    bench.echo.handlers[room_id] = on_event
    speaker = await voice(bench.bridged, RTT_ROOM, "speaker")
    lost = 0

    async def one(seq: int) -> Trip | None:
        body = f"rtt {seq} {uuid.uuid4().hex[:8]}"
        back = speaker.expect(
            lambda m: m.get("type") == "text" and m.get("author") == ECHO_NICKNAME and m.get("text") == body
        )
        trip = trips[body] = Trip(time.perf_counter_ns(), time.time_ns() / 1e6)
        speaker.say("speaker", body)
        try:
            trip.back_ns = await asyncio.wait_for(back, TRIP_TIMEOUT)
        except TimeoutError:
            return None
        return trip

    plan = bench.plan
    for seq in range(plan.warm_trips):  # the puppet's registration and join, the nickname's lookup
        if await one(-1 - seq) is None:
            raise RuntimeError("a warm-up round trip did not come back")
    bench.load("M1 start")
    log_start = bench.homeserver.log_position()
    before = bench.meter()
    done: list[Trip] = []
    for seq in range(plan.trips):
        trip = await one(seq)
        if trip is None:
            lost += 1
        else:
            done.append(trip)
    cores = bench.meter().cores(before)

    async def own_events_seen() -> bool:  # Synapse's timestamps of the last answers come by sync
        return all(trip.in_origin_ms for trip in done)

    await until(own_events_seen, 5.0)
    speaker.close()
    del bench.echo.handlers[room_id]
    if speaker.refusals:
        bench.note(
            f"M1: gischat refused the socket {len(speaker.refusals)} times: {Counter(speaker.refusals)}"
        )
    bench.load("M1 end")
    handled = synapse_handled(bench.homeserver, log_start)

    def leg(pick: Callable[[Trip], float]) -> list[float]:
        return [pick(t) for t in done if t.seen_ns and t.echo_ns and t.in_origin_ms]

    rows = [
        ("**round trip**: the socket says → the Matrix user's answer reaches it", leg(Trip.total)),
        ("gischat → Matrix: the socket says → the Matrix user's /sync returns it", leg(Trip.outward)),
        (
            "↳ of which: → Synapse stamps the event (gischat, its queue, the virtual user's PUT)",
            leg(Trip.out_made),
        ),
        (
            "↳ of which: stamped → the /sync answer is read (persisting, notifying, sync)",
            leg(Trip.out_synced),
        ),
        ("the Matrix user's reaction: its /sync is read → its PUT /send begins", leg(Trip.reaction)),
        ("Matrix → gischat: the Matrix user's PUT /send begins → the socket has it", leg(Trip.inward)),
        ("↳ of which: → Synapse stamps the event", leg(Trip.in_made)),
        (
            "↳ of which: stamped → the socket (persisting, AS transaction, gischat inbound)",
            leg(Trip.in_relayed),
        ),
        ("↳ (meanwhile the Matrix user's PUT /send was answered after)", leg(Trip.answered)),
        ("↳ (and from that answer → the socket has it)", leg(Trip.after_answer)),
        ("Synapse's own time on the virtual user's PUT /send (its access log)", handled.puppets),
        ("↳ of which its CPU", handled.puppets_cpu),
        ("↳ of which its database transactions, and waiting for the database", handled.puppets_db),
        ("Synapse's own time on the Matrix user's PUT /send (its access log)", handled.others),
    ]
    bench.note(
        f"M1: {len(done)} round trips, {lost} lost (none came back within {TRIP_TIMEOUT:.0f} s); "
        f"CPU over the {cores.seconds:.1f} s: {cores.describe()}; Synapse pushed {handled.pushes} "
        f"transactions to gischat"
    )
    return table(
        [f"M1 leg ({len(done)} round trips, one in flight)", "p50 (ms)", "p99 (ms)", "max (ms)"],
        ["---", "---:", "---:", "---:"],
        [[label, *stats_cells(values)] for label, values in rows],
    )


# --------------------------------------------------------------------------- M2: sustained rate


@dataclass
class Step:
    rate: int
    sent: int
    in_window: int
    reached: int
    carried: float  # arrivals per second from the first send to the last arrival
    drain: float | None  # seconds from the window's end to the last arrival; None: not all arrived
    max_queued: int
    max_lag: float
    dropped: int
    cores: Cores
    handled: Handled
    per_text: Cores  # CPU seconds per text that reached Matrix, from the step's start until it drained


async def sustained(bench: Bench) -> str:
    plan = bench.plan
    room_id = bench.rooms[RATE_ROOM]
    arrivals: list[int] = []
    prefix = ["-"]

    def on_event(seen: Seen) -> None:
        if seen.sender != bench.echo.user_id and seen.body.startswith(prefix[0]):
            arrivals.append(seen.at_ns)

    bench.echo.handlers[room_id] = on_event
    sender = await voice(bench.bridged, RATE_ROOM, "sender")
    bench.load("M2 start")
    steps: list[Step] = []
    for rate in plan.rates:
        arrivals.clear()
        prefix[0] = f"rate{rate} "
        dropped_before = int((await bridge_status(bench.bridged))["dropped"])
        peak = Peak()
        log_start = bench.homeserver.log_position()
        sampling = asyncio.get_running_loop().create_task(sample(bench.bridged, peak))
        before = bench.meter()
        start_ns = time.perf_counter_ns()
        start = start_ns / 1e9
        count = round(rate * plan.step_seconds)
        for seq in range(count):
            delay = start + seq / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sender.say("sender", f"{prefix[0]}{seq}")
        await asyncio.sleep(max(0.0, start + plan.step_seconds - time.perf_counter()))
        cores = bench.meter().cores(before)
        in_window = len(arrivals)
        end_ns = start_ns + round(plan.step_seconds * 1e9)

        complete = await arrived(arrivals, count, plan.drain_within)
        await queue_empty(bench.bridged, plan.drain_within if complete else 1.0)
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        per_text = bench.meter().per(before, max(len(arrivals), 1))
        dropped = int((await bridge_status(bench.bridged))["dropped"]) - dropped_before
        drain = (max(arrivals) - end_ns) / 1e9 if complete and arrivals else None
        carried = (len(arrivals) - 1) / ((max(arrivals) - start_ns) / 1e9) if len(arrivals) > 1 else 0.0
        handled = synapse_handled(bench.homeserver, log_start)
        steps.append(
            Step(
                rate,
                count,
                in_window,
                len(arrivals),
                carried,
                drain,
                peak.queued,
                peak.lag,
                dropped,
                cores,
                handled,
                per_text,
            )
        )
        bench.note(
            f"M2 {rate}/s: {count} sent, {in_window} reached Matrix while sending, {len(arrivals)} in all"
            f"{'' if drain is None else f', the last {drain:.2f} s after the window'}; queue max "
            f"{peak.queued}, lag max {peak.lag:.2f} s, dropped {dropped}; Synapse pushed {handled.pushes} "
            f"transactions to gischat; CPU over the window: {cores.describe()}"
        )
        await asyncio.sleep(0.5)
    sender.close()
    del bench.echo.handlers[room_id]
    bench.load("M2 end")
    if sender.refusals:
        bench.note(f"M2: gischat refused the sender {len(sender.refusals)} times: {Counter(sender.refusals)}")
    rows = []
    for step in steps:
        drained = (
            f"{max(step.drain, 0.0):.2f}"
            if step.drain is not None
            else f"not all ({step.reached}/{step.sent})"
        )
        rows.append(
            [
                f"{step.rate}",
                f"{step.sent}",
                f"{step.in_window / plan.step_seconds:.0f}",
                f"{step.carried:.0f}",
                drained,
                f"{step.max_queued}",
                f"{step.max_lag:.2f}",
                f"{step.dropped}",
                spread(step.handled.puppets),
                f"{step.cores.gischat:.2f} / {step.cores.synapse:.2f} / {step.cores.others:.2f}",
                f"{step.per_text.gischat * 1e3:.1f} / {step.per_text.synapse * 1e3:.1f}",
            ]
        )
    return table(
        [
            f"M2 offered (texts/s, {plan.step_seconds:g} s)",
            "sent",
            "reached Matrix while sending (/s)",
            "carried (/s, first send to last arrival)",
            "last one reached Matrix (s after the window)",
            "max `matrix.queued`",
            "max `matrix.lag_seconds`",
            "dropped",
            "Synapse's own time per virtual-user PUT /send, p50 / mean / p90 (ms)",
            "CPU while sending, gischat / Synapse / other processes (cores)",
            "CPU per text, whole step: gischat / Synapse (ms)",
        ],
        ["---:"] * 11,
        rows,
    )


def spread(values: Sequence[float]) -> str:
    """p50 / mean / p90 of values in ns, as milliseconds."""
    if not values:
        return "—"
    shown = (ms(percentile(values, 50)), ms(statistics.fmean(values)), ms(percentile(values, 90)))
    return " / ".join(f"{value:.0f}" for value in shown)


async def arrived(arrivals: list[int], total: int, within: float, quiet: float = 5.0) -> bool:
    """Whether `total` arrivals were seen within `within` s; gives up after `quiet` s without one
    (what is missing was dropped, or is stuck behind a homeserver that does not answer)."""
    deadline = time.monotonic() + within
    last, last_change = len(arrivals), time.monotonic()
    while len(arrivals) < total:
        now = time.monotonic()
        if now > deadline or now - last_change > quiet:
            return False
        if len(arrivals) != last:
            last, last_change = len(arrivals), now
        await asyncio.sleep(0.02)
    return True


@dataclass
class Peak:
    queued: int = 0
    lag: float = 0.0


async def sample(server: Server, peak: Peak) -> None:
    """The bridge's queue and lag, as /status tells them, every STATUS_EVERY s: their highest."""
    while True:
        with contextlib.suppress(httpx.HTTPError):
            status = await bridge_status(server)
            peak.queued = max(peak.queued, int(status["queued"]))
            peak.lag = max(peak.lag, float(status["lag_seconds"]))
        await asyncio.sleep(STATUS_EVERY)


# --------------------------------------------------------------------------- M3: fan-out cost


@dataclass
class Side:
    label: str
    server: Server
    tally: Tally
    peers: list[Peer]
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    worst: float = 0.0
    cpu_per_delivery: list[float] = field(default_factory=list)  # µs
    cpu_per_message: list[float] = field(default_factory=list)  # ms
    synapse: list[float] = field(default_factory=list)  # cores
    incomplete: int = 0
    reached: int = 0  # texts the Matrix user saw (bridged side)
    sent: int = 0


async def fanout_round(bench: Bench, side: Side, seconds: float, counted: bool) -> None:
    plan = bench.plan
    bridged = side.server is bench.bridged
    count = round(plan.fan_rate * seconds)
    side.tally.record(count, side.peers)
    before = bench.meter(side.server)
    await paced_sends(side.peers[:1], plan.fan_rate, seconds, "fan-out")
    complete = await side.tally.texts_gate.wait(10.0)
    if bridged:
        await queue_empty(side.server, 30.0)
    await asyncio.sleep(SETTLE)
    cores = bench.meter(side.server).cores(before)
    side.tally.recording = False
    if not counted:
        return
    delivered = side.tally.delivered
    cpu = cores.gischat * cores.seconds
    side.p50.append(ms(percentile(side.tally.latencies, 50)))
    side.p99.append(ms(percentile(side.tally.latencies, 99)))
    side.worst = max(side.worst, ms(max(side.tally.latencies, default=0)))
    side.cpu_per_delivery.append(cpu / max(delivered, 1) * 1e6)
    side.cpu_per_message.append(cpu / count * 1e3)
    side.synapse.append(cores.synapse)
    side.incomplete += not complete
    side.sent += count
    bench.note(
        f"M3 {side.label}: {delivered:,} deliveries, p50 {side.p50[-1]:.2f} p99 {side.p99[-1]:.2f} ms, "
        f"gischat {side.cpu_per_delivery[-1]:.2f} µs/delivery over {cores.seconds:.1f} s; {cores.describe()}"
    )


async def fanout(bench: Bench) -> str:
    plan = bench.plan
    room_id = bench.rooms[FANOUT_ROOM]
    reached = [0]
    counted_from = [time.perf_counter_ns() * 2]  # texts stamped (harness.stamped) from then on are counted

    def on_event(seen: Seen) -> None:
        stamp = seen.body.split(" ", 1)[0]
        if seen.sender != bench.echo.user_id and stamp.isdigit() and int(stamp) >= counted_from[0]:
            reached[0] += 1

    bench.echo.handlers[room_id] = on_event
    sides: list[Side] = []
    for label, server in (("bridge off", bench.plain), ("bridge on", bench.bridged)):
        tally, peers = await joined_room(server, FANOUT_ROOM, plan.fan_clients)
        sides.append(Side(label, server, tally, peers))
    for side in sides:  # the bridged side's first text registers and joins its puppet
        await fanout_round(bench, side, 1.0, counted=False)
    counted_from[0] = time.perf_counter_ns()
    bench.load("M3 start")
    profile = WORK_DIR / "gischat-bridged-m3.py-spy.txt"
    profiler = await start_py_spy(bench.bridged, profile) if bench.profile else None
    for _ in range(plan.fan_rounds):
        for side in sides:
            await fanout_round(bench, side, plan.fan_seconds, counted=True)
    if profiler is not None:
        await stop(profiler, signal.SIGINT)  # py-spy writes its output on SIGINT
        bench.note(profile_summary(profile))
    off, on = sides

    async def all_reached() -> bool:
        return reached[0] >= on.sent

    await until(all_reached, 10.0)
    on.reached = reached[0]
    bench.load("M3 end")
    for side in sides:
        for peer in side.peers:
            if peer.transport is not None and not peer.gone:
                peer.transport.disconnect(graceful=False)
    del bench.echo.handlers[room_id]

    def cell(values: Sequence[float], digits: int = 2) -> str:
        if not values:
            return "—"
        return (
            f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})"
        )

    def ratio(pick: Callable[[Side], Sequence[float]]) -> float:
        return statistics.median(pick(on)) / statistics.median(pick(off))

    def within(value: float) -> str:
        return "yes" if value <= TARGET else "**no**"

    p50, p99, cpu = ratio(lambda s: s.p50), ratio(lambda s: s.p99), ratio(lambda s: s.cpu_per_delivery)
    target = f"≤ {TARGET:.2f}"
    deliveries = plan.fan_clients * round(plan.fan_rate * plan.fan_seconds)
    rounds = f"{plan.fan_rounds}"
    rows = [
        ["delivery latency p50 (ms)", cell(off.p50), cell(on.p50), f"{p50:.2f}", target, within(p50)],
        ["delivery latency p99 (ms)", cell(off.p99), cell(on.p99), f"{p99:.2f}", target, within(p99)],
        ["delivery latency max, worst round (ms)", f"{off.worst:.2f}", f"{on.worst:.2f}", *["—"] * 3],
        [
            "gischat CPU per delivery (µs)",
            cell(off.cpu_per_delivery),
            cell(on.cpu_per_delivery),
            f"**{cpu:.2f}**",
            target,
            within(cpu),
        ],
        [
            f"gischat CPU per text said (ms, {plan.fan_clients} deliveries each)",
            cell(off.cpu_per_message, 3),
            cell(on.cpu_per_message, 3),
            f"{ratio(lambda s: s.cpu_per_message):.2f}",
            "—",
            "—",
        ],
        ["Synapse CPU during the rounds (cores)", cell(off.synapse), cell(on.synapse), "—", "—", "—"],
        [
            "rounds with every delivery made",
            f"{plan.fan_rounds - off.incomplete}/{rounds}",
            f"{plan.fan_rounds - on.incomplete}/{rounds}",
            "—",
            "all",
            "yes" if off.incomplete == on.incomplete == 0 else "**no**",
        ],
        [
            "texts that reached the Matrix user",
            "—",
            f"{on.reached}/{on.sent}",
            "—",
            "all",
            "yes" if on.reached >= on.sent else "**no**",
        ],
    ]
    bench.note(
        f"M3: bridge on / bridge off: latency p50 {p50:.2f}, p99 {p99:.2f}, gischat CPU per delivery "
        f"{cpu:.2f} (target ≤ {TARGET:.2f} each)"
    )
    return table(
        [
            f"M3: {plan.fan_clients} sockets, 1 sender at {plan.fan_rate} texts/s, {deliveries:,} deliveries "
            f"a round; median (range) of {plan.fan_rounds} rounds each, alternating",
            "bridge off",
            "bridge on",
            "on / off",
            "target",
            "met?",
        ],
        ["---", "---:", "---:", "---:", "---", "---"],
        rows,
    )


# --------------------------------------------------------------------------- profile

# Where a sample of the bridged gischat belongs: the first part one of whose markers is in its stack.
TO_MATRIX = ("gischat/matrix/outbound.py", "gischat/matrix/queue.py", "gischat/matrix/homeserver.py")
PROFILE_PARTS = (
    ("to Matrix (the outbound queue, mautrix, aiohttp)", (*TO_MATRIX, "/mautrix/", "/aiohttp/")),
    (
        "HTTP requests (the homeserver's transactions, the bench's /status)",
        ("httptools_impl.py", "gischat/web/matrix.py", "gischat/server/http.py"),
    ),
    (
        "the websockets (reading, relaying, fanning out)",
        ("gischat/server/websocket.py", "gischat/server/batch.py", "gischat/rooms/", "gischat/chat/"),
    ),
)


async def start_py_spy(server: Server, output: Path) -> asyncio.subprocess.Process:
    """`py-spy record` on the server, sampling without pausing it (root or ptrace rights needed)."""
    profiler = await asyncio.create_subprocess_exec(
        *("py-spy", "record", "--pid", str(server.proc.pid), "--rate", "250"),
        *("--nonblocking", "--format", "raw", "--output", str(output)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # attached before the load starts
    return profiler


def profile_summary(path: Path) -> str:
    """py-spy's samples (raw collapsed stacks) shared among PROFILE_PARTS, the rest being the event loop's
    own work (uvloop: polling and socket I/O, below any Python frame) or anything else."""
    parts: Counter[str] = Counter()
    total = 0
    for line in read_log(path).splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        part = next((label for label, marks in PROFILE_PARTS if any(mark in stack for mark in marks)), None)
        if part is None:
            leaf = stack.rsplit(";", 1)[-1]
            part = "the event loop itself" if leaf.startswith(("Runner.run ", "asyncio_run ")) else "other"
        parts[part] += int(count)
    if not total:
        return f"py-spy: no samples in {path}"
    shares = ", ".join(f"{label} {count / total:.0%}" for label, count in parts.most_common())
    return (
        f"py-spy on the bridged gischat through M3 ({total} samples at 250 Hz, idle ones left out): {shares}"
    )


# --------------------------------------------------------------------------- logs


LOG_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
NOISE = re.compile(r"\d+(\.\d+)?|![\w-]+:\S+|\$[\w-]+|@[\w=.-]+:\S+|'[0-9a-f-]{8,}'")
# Synapse's access log: who, the request's time in all, its CPU (user, system), its database
# transactions' time and the wait for a connection, and that it was a PUT /send.
SYNAPSE_SEND = re.compile(
    r"\{(@[^}]+)\} Processed request: ([\d.]+)sec/[\d.]+sec ru=\(([\d.]+)sec, ([\d.]+)sec\) "
    r"db=\(([\d.]+)sec/([\d.]+)sec/\d+\)[^\"]*\"PUT /_matrix/client/v3/rooms/[^/ ]+/send/"
)
AS_PUSH = re.compile(r"Received response to PUT \S+/_matrix/app/v1/transactions/")


def read_log(path: Path, start: int = 0) -> str:
    try:
        with path.open("rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def log_findings(path: Path, start: int = 0, keep: int = 8) -> list[str]:
    """A log's warning and error lines and tracebacks (each as its exception, and the message being
    logged for a logging error), numbers and ids blanked, counted: the most common first."""
    lines = read_log(path, start).splitlines()
    counts: Counter[str] = Counter()
    for index, line in enumerate(lines):
        if line.startswith("Traceback"):
            rest = lines[index + 1 : index + 100]
            error = next((later for later in rest if EXCEPTION.match(later)), "?")
            logged = next((later for later in rest if later.startswith("Message: ")), None)
            what = f"traceback, {error}" + (f" (a logging error, on {logged})" if logged else "")
        elif LOG_LEVEL.search(line):
            what = line.split(" - ", 4)[-1] if " - " in line else line
        else:
            continue
        counts[NOISE.sub("…", what.strip())[:240]] += 1
    if not counts:
        return [f"{path.name}: no warning, error or traceback"]
    return [f"{path.name}: {count} x {line}" for line, count in counts.most_common(keep)]


@dataclass
class Handled:
    """What Synapse's access log says of the PUT /send it finished, in ns: the virtual users' and the rest."""

    puppets: list[float] = field(default_factory=list)
    puppets_cpu: list[float] = field(default_factory=list)
    puppets_db: list[float] = field(default_factory=list)  # its transactions, and waiting for the database
    others: list[float] = field(default_factory=list)
    pushes: int = 0  # transactions pushed to the application service (gischat)


def synapse_handled(homeserver: Homeserver, start: int) -> Handled:
    """Synapse's log since `start`: its own time on each PUT /send, and its pushes to gischat."""
    text = read_log(homeserver.log_path, start)
    handled = Handled(pushes=len(AS_PUSH.findall(text)))
    for match in SYNAPSE_SEND.finditer(text):
        total, user, system, db, db_wait = (float(value) * 1e9 for value in match.groups()[1:])
        if match.group(1).startswith(f"@{USER_PREFIX}"):
            handled.puppets.append(total)
            handled.puppets_cpu.append(user + system)
            handled.puppets_db.append(db + db_wait)
        else:
            handled.others.append(total)
    return handled


# --------------------------------------------------------------------------- main


async def main(plan: Plan, command: str, profile: bool) -> int:
    began = time.perf_counter()
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir(parents=True)
    raise_fd_limit(2 * plan.fan_clients + 100)
    version = synapse_version()
    if version is None:
        raise SystemExit("matrix-synapse is not installed: pip install -e '.[test]'")
    loads_at_start = os.getloadavg()

    bridged_port = free_port()
    registration = write_registration(WORK_DIR / "appservice.yaml", url=f"http://{HOST}:{bridged_port}")
    homeserver = Homeserver(WORK_DIR / "synapse", [registration])
    print(f"== Synapse {version} on {homeserver.url}", flush=True)
    await asyncio.to_thread(homeserver.start)
    assert homeserver.process is not None
    synapse = psutil.Process(homeserver.process.pid)
    bridge = {
        "MATRIX_HOMESERVER_URL": homeserver.url,
        "MATRIX_SERVER_NAME": SERVER_NAME,
        "MATRIX_AS_TOKEN": AS_TOKEN,
        "MATRIX_HS_TOKEN": HS_TOKEN,
        "MATRIX_PREFIX": USER_PREFIX,
    }
    rooms = ",".join(BRIDGED_ROOMS)
    echo: MatrixUser | None = None
    synapse_log_start = 0
    try:
        async with (
            gischat_server("bridged", bridged_port, {"ROOMS": rooms, **bridge}) as bridged,
            gischat_server("plain", free_port(), {"ROOMS": FANOUT_ROOM}) as plain,
        ):

            async def portals_open() -> bool:
                status = await bridge_status(bridged)
                return status["homeserver"] == "up" and int(status["portals"]) == len(BRIDGED_ROOMS)

            if not await until(portals_open, START_TIMEOUT, 0.1):
                raise RuntimeError(f"the bridge did not open its portals: {await bridge_status(bridged)}")
            echo = await MatrixUser.register(homeserver, "echo", ECHO_DISPLAY)
            portal_ids = {
                room: await echo.join(names.portal_alias(USER_PREFIX, room, SERVER_NAME))
                for room in BRIDGED_ROOMS
            }
            await echo.start(list(portal_ids.values()))
            bench = Bench(plan, homeserver, synapse, bridged, plain, echo, portal_ids, profile)
            bench.load("start")
            synapse_log_start = homeserver.log_position()
            print(f"== M1 round trips ({plan.trips}, one in flight)", flush=True)
            rtt_table = await round_trips(bench)
            print(f"== M2 sustained rate ({', '.join(map(str, plan.rates))}/s)", flush=True)
            rate_table = await sustained(bench)
            print(f"== M3 fan-out cost ({plan.fan_rounds} rounds each, alternating)", flush=True)
            fan_table = await fanout(bench)
            bench.note(
                f"the Matrix user's sync: {echo.syncs} answers, {echo.limited} limited (events left out), "
                f"errors {dict(echo.errors) or 'none'}"
            )
    finally:
        if echo is not None:
            await echo.close()
        await asyncio.to_thread(homeserver.stop)
    took = time.perf_counter() - began

    findings = [
        *log_findings(WORK_DIR / "gischat-bridged.log"),
        *log_findings(WORK_DIR / "gischat-plain.log"),
        *log_findings(homeserver.log_path, synapse_log_start),
    ]
    loads = [("before the run", loads_at_start), *bench.loads]
    load_text = "; ".join(f"{label} {a:.2f} / {b:.2f} / {c:.2f}" for label, (a, b, c) in loads)
    report = "\n".join(
        [
            f"Command: `{command}`",
            "",
            rtt_table,
            "",
            rate_table,
            "",
            fan_table,
            "",
            f"Machine: {machine()}. Synapse {version} (SQLite, loopback, no rate limits); gischat "
            f"{gischat_revision()}, one process (plus one idle processing worker) per server.",
            f"Load average (1 / 5 / 15 min) observed: {load_text}.",
            f"Bench took {took:.0f} s.",
            "",
            "Notes:",
            *(f"- {line}" for line in bench.notes),
            "",
            "Warnings, errors and tracebacks in the logs (numbers and ids blanked; Synapse's from M1 on):",
            *(f"- {line}" for line in findings),
        ]
    )
    print()
    print(report)
    (RESULTS_DIR / "matrix.md").write_text(report + "\n")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description="the Matrix bridge against a real Synapse")
    parser.add_argument("--quick", action="store_true", help="fewer samples and shorter steps (50 to 90 s)")
    parser.add_argument(
        "--py-spy", action="store_true", help="profile the bridged gischat through M3 (root or ptrace rights)"
    )
    args = parser.parse_args()
    command = " ".join(["python", "bench/matrix.py", *sys.argv[1:]])
    return uvloop.run(main(QUICK if args.quick else FULL, command, args.py_spy))


if __name__ == "__main__":
    sys.exit(cli())
