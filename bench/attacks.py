"""The attacks `bench/hostile.py` replays, one coroutine each, all from 127.0.0.10.

Every attack runs against a `Target` (the server's port, its busy room, a deadline) and writes
what the server answered into `target.answers`. Each one stops by itself at the deadline (or
when its one shot is answered); sockets it opens are registered with the target, which aborts
them all afterwards, whatever state the attack ended in.

The attacker never uses 127.0.0.1: the server trusts proxy headers from there
(FORWARDED_ALLOW_IPS), and per-address limits must see one ordinary client address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from harness import HOST, Server
from rawws import PING, PONG, TEXT, HandshakeRefused, WsClient, encode, frame_header, mask, open_tcp, sniff

ATTACKER = "127.0.0.10"
BUSY, OTHER = "busy", "other"
CONNECT_TIMEOUT = 10.0
ANSWER_GRACE = 10.0  # how long past the deadline a big message may take to be answered
IN_FLIGHT = 100  # connections being opened at once by the many-connection attacks

WKT = (
    'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563]],'
    'CS[ellipsoidal,2],AXIS["latitude",north],AXIS["longitude",east],UNIT["degree",0.0174532925199433]]'
)


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class Answers:
    """How the server answered the attacker: counted outcomes plus free notes."""

    counts: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, n: int = 1) -> None:
        self.counts[label] += n

    def note(self, text: str) -> None:
        self.notes.append(text)

    def summary(self, most: int = 5) -> str:
        """The notes, then the most frequent outcomes as `count x outcome`."""
        parts = list(self.notes)
        common = self.counts.most_common()
        parts += [f"{n:,} x {label}" for label, n in common[:most]]
        if len(common) > most:
            parts.append(f"{sum(n for _, n in common[most:]):,} x {len(common) - most} other outcomes")
        return "; ".join(parts) or "nothing"


@dataclass
class Target:
    """The server under attack, the attack's deadline and everything it opened."""

    port: int
    server: Server
    until: float  # time.monotonic() deadline
    answers: Answers = field(default_factory=Answers)
    clients: list[WsClient] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/room/{BUSY}/ws"

    def left(self) -> float:
        return max(self.until - time.monotonic(), 0.0)

    def over(self) -> bool:
        return time.monotonic() >= self.until

    def cleanup(self) -> None:
        """Abort every socket and task of the attack (RST: nothing lingers into the next one)."""
        for task in self.tasks:
            task.cancel()
        for client in self.clients:
            client.abort()
        for writer in self.writers:
            writer.transport.abort()


Attack = Callable[[Target], Awaitable[None]]


# --------------------------------------------------------------------------- payloads


def positions(count: int) -> bytes:
    """`count` GeoJSON positions, comma-separated, 6 bytes each with the comma.

    The table's sizes (2 million points in 12 MB, 2.75 million vertices in 16.5 MB) leave six
    bytes per position: one-digit integers. With five decimals they would not fit in one
    16 MiB frame and would be refused at the frame limit before any parsing.
    """
    pattern = b",".join(b"[%d,%d]" % (i % 10, (i // 10) % 10) for i in range(100))
    whole, rest = divmod(count, 100)
    parts = [pattern] * whole
    if rest:
        parts.append(pattern[: rest * 6 - 1])
    return b",".join(parts)


def feature_collection(features: list[bytes]) -> bytes:
    return b'{"type":"FeatureCollection","features":[' + b",".join(features) + b"]}"


def multipoint_collection(count: int = 2_000_000) -> bytes:
    """One Feature whose MultiPoint has `count` positions (12 MB), wrapped in a FeatureCollection."""
    geometry = b'{"type":"MultiPoint","coordinates":[' + positions(count) + b"]}"
    return feature_collection([b'{"type":"Feature","geometry":' + geometry + b',"properties":{}}'])


def polygon_collection(features: int = 500, vertices: int = 5_500) -> bytes:
    """`features` polygons of one closed ring of `vertices` positions each (16.5 MB)."""
    ring = positions(vertices - 1) + b",[0,0]"  # closed: the pattern starts with [0,0]
    feature = b'{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[' + ring + b"]]}"
    return feature_collection([feature + b',"properties":{"id":%d}}' % i for i in range(features)])


def geojson_message(author: str, collection: bytes) -> bytes:
    """A geojson message with every wire key, around a pre-serialised FeatureCollection."""
    head = orjson.dumps(
        {
            "type": "geojson",
            "author": author,
            "avatar": None,
            "layer_name": "attack",
            "crs_wkt": WKT,
            "crs_authid": "EPSG:4326",
        }
    )
    return head[:-1] + b',"geojson":' + collection + b"}"


def text_message(author: str, text: str) -> bytes:
    return orjson.dumps({"type": "text", "author": author, "avatar": None, "text": text})


def image_message(author: str, image_b64: str) -> bytes:
    return orjson.dumps({"type": "image", "author": author, "avatar": None, "image_data": image_b64})


# --------------------------------------------------------------------------- attacker clients


class Replies:
    """What one attacker socket got back; its own echo or a refusal settles the pending send."""

    def __init__(self, author: str, answers: Answers) -> None:
        self.author = author
        self.answers = answers
        self.pending: asyncio.Future[str] | None = None
        self.registered = asyncio.Event()
        self.echoes = 0
        self.refusals: Counter[str] = Counter()

    def __call__(self, client: WsClient, opcode: int, payload: bytes) -> None:
        if opcode != TEXT:
            return
        kind, author = sniff(payload)
        if kind == "uncompliant":
            reason = str(orjson.loads(payload).get("reason", ""))[:70]
            self.refusals[reason] += 1
            self.settle(f"uncompliant: {reason}")
            self.registered.set()
        elif kind == "newcomer" and self.author.encode() in payload[:120]:
            self.registered.set()
        elif author == self.author:
            self.echoes += 1
            self.settle(f"relayed ({kind})")

    def settle(self, label: str) -> None:
        if self.pending is not None and not self.pending.done():
            self.pending.set_result(label)

    def expect(self) -> asyncio.Future[str]:
        self.pending = asyncio.get_running_loop().create_future()
        return self.pending


async def join(target: Target, nickname: str, register: bool = True) -> tuple[WsClient, Replies]:
    """An attacker in the busy room, registered under `nickname` like any chat client."""
    replies = Replies(nickname, target.answers)
    client = await WsClient.open(
        target.port, target.path, ATTACKER, min(CONNECT_TIMEOUT, target.left() + 1), on_frame=replies
    )
    target.clients.append(client)
    client.start()
    if register:
        client.send(TEXT, orjson.dumps({"type": "newcomer", "newcomer": nickname}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(replies.registered.wait(), 5.0)
    return client, replies


async def first_of(waiter: asyncio.Future[str], client: WsClient, within: float) -> str:
    """The answer to one send: the reply, how the connection ended, or a timeout."""
    closed = asyncio.ensure_future(client.closed.wait())
    either: set[asyncio.Future[Any]] = {waiter, closed}
    try:
        await asyncio.wait(either, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
    if waiter.done():
        return waiter.result()
    if client.closed.is_set():
        return client.outcome()
    return f"no answer within {within:.0f} s"


async def send_and_wait(target: Target, client: WsClient, replies: Replies, frame: bytes) -> str:
    """Send one big pre-encoded message and wait for what comes back (bounded past the deadline)."""
    waiter = replies.expect()
    client.send_raw(frame)
    budget = target.left() + ANSWER_GRACE
    if not await client.flush(budget):
        return "server stopped reading" if client.is_open else client.outcome()
    return await first_of(waiter, client, max(target.left() + ANSWER_GRACE, 1.0))


async def looping_sender(target: Target, nickname: str, payload: Callable[[str], bytes]) -> None:
    """Join, then send the same message again as soon as the previous one is answered."""
    try:
        client, replies = await join(target, nickname)
    except (OSError, TimeoutError, HandshakeRefused) as exc:
        target.answers.add(f"join refused: {exc!r}"[:80])
        return
    frame = encode(TEXT, payload(nickname))
    while not target.over() and client.is_open:
        target.answers.add(await send_and_wait(target, client, replies, frame))
    if not client.is_open:
        target.answers.add(f"connection {client.outcome()}")


async def gather_bounded(target: Target, coroutines: Sequence[Awaitable[None]]) -> None:
    """Run the attack's clients together; the caller's timeout bounds them all."""
    target.tasks += [asyncio.ensure_future(c) for c in coroutines]
    await asyncio.gather(*target.tasks, return_exceptions=True)


# --------------------------------------------------------------------------- the attacks


async def baseline(target: Target) -> None:
    """No attack: what the probes see on a quiet server, for comparison."""
    await asyncio.sleep(target.left())
    target.answers.note("no attack")


async def huge_multipoint(target: Target) -> None:
    """One 12 MB frame, a Feature whose MultiPoint has 2 million positions, sent in a loop."""
    collection = multipoint_collection()
    target.answers.note(f"{len(geojson_message('attacker', collection)) / 1e6:.1f} MB each")
    await looping_sender(target, "attacker", lambda author: geojson_message(author, collection))


async def huge_polygons(target: Target) -> None:
    """500 features of 5,500-vertex polygons (16.5 MB), 4 clients looping."""
    collection = polygon_collection()
    target.answers.note(f"4 clients, {len(geojson_message('attacker0', collection)) / 1e6:.1f} MB each")
    await gather_bounded(
        target,
        [
            looping_sender(target, f"attacker{i}", lambda author: geojson_message(author, collection))
            for i in range(4)
        ],
    )


async def ping_flood(target: Target) -> None:
    """Websocket pings as fast as the server takes them, never reading a pong."""
    try:
        client = await WsClient.open(target.port, target.path, ATTACKER, CONNECT_TIMEOUT, rcvbuf=4096)
    except (OSError, TimeoutError, HandshakeRefused) as exc:
        target.answers.add(f"handshake: {exc!r}"[:80])
        return
    target.clients.append(client)
    batch = b"".join(encode(PING, os.urandom(125)) for _ in range(1000))
    sent = 0
    while not target.over() and client.is_open:
        client.send_raw(batch)
        if not await client.flush(target.left()):
            break
        sent += 1000
    target.answers.note(f"{sent:,} pings sent ({sent * 131 / 1e6:.0f} MB)")
    pongs = Counter[int]()
    client.on_frame = lambda _c, opcode, _p: pongs.update([opcode])
    client.start()  # now read back for a moment: pongs, or a close frame
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.closed.wait(), 2.0)
    target.answers.add(f"connection {client.outcome()}")
    target.answers.note(f"{pongs[PONG]:,} pongs read back in 2 s")


async def unfinished_frames(target: Target, count: int = 150, sent_bytes: int = 15 * 2**20) -> None:
    """`count` connections each declare a 16 MiB frame, send 15 MiB of it and never finish it.

    All connections send at once, 1 MiB at a time from one shared buffer, so the bench holds
    15 MiB however many connections there are.
    """
    key = os.urandom(4)
    declared = 16 * 2**20
    head = frame_header(TEXT, declared, key)
    body = memoryview(mask(b"a" * sent_bytes, key))
    gate = asyncio.Semaphore(IN_FLIGHT)
    fully_sent = 0

    async def one() -> None:
        nonlocal fully_sent
        async with gate:
            try:
                client = await WsClient.open(
                    target.port, target.path, ATTACKER, min(CONNECT_TIMEOUT, target.left() + 1)
                )
            except (OSError, TimeoutError, HandshakeRefused) as exc:
                target.answers.add(f"handshake: {type(exc).__name__} {exc}"[:60])
                return
        target.clients.append(client)
        client.start(parse=True)
        client.send_raw(head)
        for offset in range(0, sent_bytes, 2**20):
            client.send_raw(bytes(body[offset : offset + 2**20]))
            if not await client.flush(target.left()):
                break
        else:
            fully_sent += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.closed.wait(), target.left())
        target.answers.add("held open to the end" if client.is_open else f"connection {client.outcome()}")

    await gather_bounded(target, [one() for _ in range(count)])
    target.answers.note(f"{fully_sent} of {count} got all 15 MiB taken by the server")


async def huge_header(target: Target, size: int = 64 * 2**20) -> None:
    """One `GET /status` with a 64 MB header; the answer is read once it was sent."""
    request = b"GET /status HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX-Padding: "
    try:
        reader, writer = await open_tcp(target.port, ATTACKER, CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        target.answers.add(f"connect: {exc!r}"[:60])
        return
    target.writers.append(writer)
    start = time.monotonic()
    writer.write(request)
    writer.write(b"a" * size)
    writer.write(b"\r\n\r\n")
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.drain(), target.left() + ANSWER_GRACE)
    sent_in = time.monotonic() - start
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), target.left() + ANSWER_GRACE)
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
        target.answers.add(f"no status line: {type(exc).__name__}")
        return
    status = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 1 else "?"
    target.answers.add(f"answered {status} after {time.monotonic() - start:.1f} s (sent in {sent_in:.1f} s)")


async def text_flood(target: Target) -> None:
    """Small valid texts as fast as the server takes them, reading the echoes."""
    await flood(target, "spammer", "spam {}", "texts")


async def flood(target: Target, author: str, body: str, what: str) -> None:
    """Texts from `author` (`body` formatted with a counter) in batches of 500, as fast as taken."""
    try:
        client, replies = await join(target, author)
    except (OSError, TimeoutError, HandshakeRefused) as exc:
        target.answers.add(f"join refused: {exc!r}"[:80])
        return
    batch = b"".join(encode(TEXT, text_message(author, body.format(i))) for i in range(500))
    sent = 0
    while not target.over() and client.is_open:
        client.send_raw(batch)
        if not await client.flush(target.left()):
            break
        sent += 500
    echoed = f", {replies.echoes:,} echoed back to the {author}" if replies.echoes else ""
    target.answers.note(f"{sent:,} {what} sent{echoed}")
    for reason, n in replies.refusals.most_common(3):
        target.answers.add(f"uncompliant: {reason}", n)
    target.answers.add(f"connection {client.outcome()}")


async def many_websockets(target: Target, count: int = 3_000) -> None:
    """`count` websockets from one address in the busy room, each registering a nickname."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate:
            if target.over():
                target.answers.add("not attempted (time up)")
                return
            try:
                client = await WsClient.open(
                    target.port, target.path, ATTACKER, min(CONNECT_TIMEOUT, target.left() + 1)
                )
            except HandshakeRefused as exc:
                target.answers.add(f"handshake HTTP {exc.status}")
                return
            except (OSError, TimeoutError) as exc:
                target.answers.add(f"handshake {type(exc).__name__}")
                return
            target.clients.append(client)
            client.start(parse=False)  # 3,000 x 3,000 newcomers: drained, not parsed
            client.send(TEXT, orjson.dumps({"type": "newcomer", "newcomer": f"sock{i}"}))
            target.answers.add("handshake 101")

    await gather_bounded(target, [one(i) for i in range(count)])
    await asyncio.sleep(target.left())
    still = sum(1 for client in target.clients if client.is_open)
    target.answers.note(f"{still:,} still open at the end")
    with contextlib.suppress(httpx.HTTPError, ValueError):
        users = (await target.server.http.get(f"http://{HOST}:{target.port}/room/{BUSY}/users")).json()
        target.answers.note(f"{len(users):,} nicknames registered")


async def idle_connections(target: Target, count: int, half_request: bool) -> None:
    """`count` TCP connections: silent, or slowloris (a request head trickled, never finished)."""
    gate = asyncio.Semaphore(IN_FLIGHT * 2)
    outcomes: dict[int, str] = {}

    async def one(i: int) -> None:
        async with gate:
            if target.over():
                outcomes[i] = "not attempted (time up)"
                return
            try:
                reader, writer = await open_tcp(
                    target.port, ATTACKER, min(CONNECT_TIMEOUT, target.left() + 1)
                )
            except (OSError, TimeoutError) as exc:
                outcomes[i] = f"connect {type(exc).__name__}"
                return
            target.writers.append(writer)
            if half_request:
                writer.write(b"GET /status HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n")
        outcomes[i] = "held open to the end"
        try:
            data = await asyncio.wait_for(reader.read(4096), target.left())
        except TimeoutError:
            return
        except OSError:
            outcomes[i] = "reset by the server"
            return
        outcomes[i] = f"answered HTTP {data.split(b' ', 2)[1].decode()}" if data else "closed by the server"

    async def trickle() -> None:
        """Slowloris: one more header line per connection every 2 s, so no idle timer fires."""
        while not target.over():
            await asyncio.sleep(min(2.0, target.left()))
            for writer in target.writers:
                if not writer.is_closing():
                    writer.write(b"X-Slow: 1\r\n")

    trickler = [trickle()] if half_request else []
    await gather_bounded(target, [one(i) for i in range(count)] + trickler)
    for label in outcomes.values():
        target.answers.add(label)


async def slowloris(target: Target) -> None:
    """3,000 half-sent HTTP requests."""
    await idle_connections(target, 3_000, half_request=True)


async def silent_tcp(target: Target) -> None:
    """1,100 TCP connections that never send a byte."""
    await idle_connections(target, 1_100, half_request=False)


def photo_attack(photo_b64: str) -> Attack:
    """20 clients sending 4000x3000 photos in a loop."""

    async def photos(target: Target) -> None:
        target.answers.note(f"20 clients, {len(photo_b64) / 1e6:.1f} MB of base64 each")
        await gather_bounded(
            target,
            [
                looping_sender(target, f"photographer{i}", lambda author: image_message(author, photo_b64))
                for i in range(20)
            ],
        )

    return photos


async def refused_flood(target: Target) -> None:
    """Messages the server refuses (texts of 300 characters), as fast as it takes them."""
    await flood(target, "refused", "x" * 300, "refused messages")


async def foreign_origin(target: Target, origin: str = "https://evil.example") -> None:
    """A browser page from another site: websocket handshake and PUT with its Origin header."""
    replies = Replies("webpage", target.answers)
    try:
        client = await WsClient.open(
            target.port, target.path, ATTACKER, CONNECT_TIMEOUT, origin=origin, on_frame=replies
        )
    except HandshakeRefused as exc:
        target.answers.add(f"websocket refused HTTP {exc.status}")
    except (OSError, TimeoutError) as exc:
        target.answers.add(f"websocket {type(exc).__name__}")
    else:
        target.clients.append(client)
        client.start()
        client.send(TEXT, orjson.dumps({"type": "newcomer", "newcomer": "webpage"}))
        waiter = replies.expect()
        client.send(TEXT, text_message("webpage", "hello from another site"))
        answer = await first_of(waiter, client, 5.0)
        target.answers.add(f"websocket accepted (101), text {answer}")
    transport = httpx.AsyncHTTPTransport(local_address=ATTACKER)
    async with httpx.AsyncClient(transport=transport, timeout=5.0) as http:
        try:
            response = await http.put(
                f"http://{HOST}:{target.port}/room/{BUSY}/text",
                headers={"Origin": origin},
                json={"type": "text", "author": "webpage2", "avatar": None, "text": "hi"},
            )
            target.answers.add(f"PUT answered {response.status_code}")
        except httpx.HTTPError as exc:
            target.answers.add(f"PUT {type(exc).__name__}")
