"""Clients that keep chatting through a deployment while parts of it restart, and the tally.

Each `Chatter` is one user, in either dialect (a 2.x room socket, as QTribu; a 3.x channel socket,
as QChat and QField), connected through nginx. It registers its nickname, sends a numbered text
at a steady pace, and reads everything. When the server closes its socket it notes the close
code and reconnects at once, with a short backoff, as the web client does by itself (and QChat's
and QField's users do by hand), registers again (retrying while the old node still holds the
nickname), and takes in the history replay: what it missed while away is there.

What counts:
- a message is *confirmed* when its own sender got it back (every node delivers to the sender
  too): the service took it, so every client must end up with it, live or from the replay;
- a message sent but never confirmed was on the wire when its socket was closed: the server may
  have dropped it (after our close frame nothing more is read); it must then reach nobody, or
  everybody; it is never half-delivered;
- reconnection time: from the close frame to the nickname registered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

ROOM = "QGIS"


@dataclass
class Chatter:
    """One user chatting through `base` (ws://host:port) in `dialect` ("room" or "channel")."""

    base: str
    nickname: str
    dialect: str
    interval: float = 0.1
    ssl: Any = None
    sending: bool = True
    stopped: bool = False
    sent: list[str] = field(default_factory=list)
    confirmed: set[str] = field(default_factory=set)
    received: set[str] = field(default_factory=set)
    repeats: int = 0  # texts received again: the history replayed on reconnecting, else a duplicate
    exiters: int = 0  # others seen leaving
    closes: list[int | None] = field(default_factory=list)
    reconnects: list[float] = field(default_factory=list)
    connects: int = 0
    nb_users: int | None = None
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set by every frame and close
    ws: ClientConnection | None = None

    @property
    def url(self) -> str:
        return f"{self.base}/{self.dialect}/{ROOM}/ws"

    async def run(self) -> None:
        closed_at: float | None = None
        delay = 0.05
        while not self.stopped:
            try:
                async with connect(self.url, open_timeout=5, ssl=self.ssl, max_size=None) as ws:
                    self.ws = ws
                    self.connects += 1
                    delay = 0.05
                    await self._session(ws, closed_at)
            except ConnectionClosed as exc:
                if not self.stopped:
                    self.closes.append(exc.rcvd.code if exc.rcvd is not None else None)
            except (OSError, InvalidHandshake, TimeoutError):
                await asyncio.sleep(delay)  # nginx found no replica (502) or the port is away
                delay = min(delay * 2, 1.0)
                continue
            finally:
                self.ws = None
                self.registered.clear()
                self.changed.set()
            closed_at = time.monotonic()

    async def _session(self, ws: ClientConnection, closed_at: float | None) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(ws))
        try:
            while not self.registered.is_set():
                await ws.send(orjson.dumps({"type": "newcomer", "newcomer": self.nickname}).decode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.registered.wait(), 0.5)
                if reader.done():
                    reader.result()
            if closed_at is not None:
                self.reconnects.append(time.monotonic() - closed_at)
            while True:
                if self.sending:
                    body = f"{self.nickname}:{len(self.sent)}"
                    message = {"type": "text", "author": self.nickname, "avatar": None, "text": body}
                    self.sent.append(body)
                    await ws.send(orjson.dumps(message).decode())
                done, _ = await asyncio.wait([reader], timeout=self.interval)
                if done:
                    reader.result()
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            self.changed.set()
            message = orjson.loads(raw)
            kind = message.get("type")
            if kind == "text":
                body = message["text"]
                self.repeats += body in self.received
                self.received.add(body)
                if message.get("author") == self.nickname:
                    self.confirmed.add(body)
            elif kind == "nb_users":
                self.nb_users = message["nb_users"]
            elif kind == "newcomer" and message.get("newcomer") == self.nickname:
                self.registered.set()
            elif kind == "exiter":
                self.exiters += 1
        raise ConnectionClosed(ws.protocol.close_rcvd, ws.protocol.close_sent)

    async def leave(self) -> None:
        self.stopped = True
        if self.ws is not None:
            await self.ws.close()


@dataclass
class Tally:
    """What a run of chatters adds up to."""

    sent: int
    confirmed: int
    unconfirmed_delivered: int  # sent, not confirmed, but in every client's view
    unconfirmed_dropped: int  # sent, not confirmed, in nobody's view (dropped at a close)
    lost: list[str]  # confirmed but missing somewhere, or half-delivered
    closes: list[int | None]
    reconnects: list[float]

    def reconnect_summary(self) -> str:
        if not self.reconnects:
            return "no reconnection"
        ordered = sorted(self.reconnects)
        return (
            f"{len(ordered)} reconnections: p50 {statistics.median(ordered) * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms"
        )

    def summary(self) -> str:
        return (
            f"{self.sent} sent, {self.confirmed} confirmed to their sender, delivered to every client; "
            f"{self.unconfirmed_delivered + self.unconfirmed_dropped} on the wire at a close "
            f"({self.unconfirmed_delivered} delivered to all, {self.unconfirmed_dropped} to none); "
            f"lost: {len(self.lost)}; closes {sorted(set(self.closes), key=str)}; {self.reconnect_summary()}"
        )


def tally(chatters: Iterable[Chatter]) -> Tally:
    everyone = list(chatters)
    sent = [body for chatter in everyone for body in chatter.sent]
    confirmed = set().union(*(chatter.confirmed for chatter in everyone))
    lost: list[str] = []
    delivered = dropped = 0
    for body in sent:
        holders = sum(body in chatter.received for chatter in everyone)
        if body in confirmed:
            if holders < len(everyone):
                lost.append(body)
        elif holders == len(everyone):
            delivered += 1
        elif holders == 0:
            dropped += 1
        else:
            lost.append(body)
    return Tally(
        sent=len(sent),
        confirmed=len(confirmed),
        unconfirmed_delivered=delivered,
        unconfirmed_dropped=dropped,
        lost=lost,
        closes=[code for chatter in everyone for code in chatter.closes],
        reconnects=[seconds for chatter in everyone for seconds in chatter.reconnects],
    )


async def until(chatters: list[Chatter], condition: Callable[[], bool], timeout: float) -> bool:
    """Wait until `condition` holds, looking again whenever a chatter reads or loses a socket
    (and every 0.1 s, for what changes elsewhere); False when `timeout` passed first."""
    deadline = time.monotonic() + timeout
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        for chatter in chatters:
            chatter.changed.clear()
        waits = [asyncio.ensure_future(chatter.changed.wait()) for chatter in chatters]
        await asyncio.wait(waits, timeout=min(left, 0.1), return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
    return True


def heard_since(chatters: list[Chatter], since: dict[str, int]) -> bool:
    """Every chatter received something each other one said after `since` (each one's count of
    texts sent then): across every node, the conversation goes on again."""
    return all(
        any(
            f"{sender.nickname}:{number}" in reader.received
            for number in range(since[sender.nickname], len(sender.sent))
        )
        for sender in chatters
        for reader in chatters
        if reader is not sender
    )


async def traffic_for(chatters: list[Chatter], messages: int, timeout: float = 30) -> None:
    """Wait until every chatter has had `messages` more of its own confirmed."""
    targets = [len(chatter.confirmed) + messages for chatter in chatters]
    reached = await until(
        chatters,
        lambda: all(len(c.confirmed) >= target for c, target in zip(chatters, targets, strict=True)),
        timeout,
    )
    assert reached, "the chatters stopped getting their messages back"


async def settle(chatters: list[Chatter], timeout: float = 30, every_sent: bool = False) -> None:
    """Stop sending, then wait until every client is registered, holds every confirmed message
    and sees the final count (or the deadline passes: the tally tells what is missing). With
    `every_sent` (no socket may lose a message), until each sender has all its own back as well:
    the last ones sent may still be on their way."""
    for chatter in chatters:
        chatter.sending = False

    def settled() -> bool:
        confirmed = set().union(*(chatter.confirmed for chatter in chatters))
        return all(
            chatter.registered.is_set()
            and confirmed <= chatter.received
            and chatter.nb_users == len(chatters)
            and (not every_sent or len(chatter.confirmed) == len(chatter.sent))
            for chatter in chatters
        )

    await until(chatters, settled, timeout)


def assert_delivered_once(result: Tally, chatters: list[Chatter]) -> None:
    """Across a failover: nothing lost, every message back to its sender and to everyone once, nobody
    closed nor seen leaving, the count exact."""
    assert not result.lost, f"{len(result.lost)} lost: {result.lost[:10]}"
    assert result.confirmed == result.sent, "every message came back to its sender"
    assert not result.closes, "nobody's socket was closed"
    assert [chatter.repeats for chatter in chatters] == [0] * len(chatters), "delivered once"
    assert [chatter.exiters for chatter in chatters] == [0] * len(chatters), "nobody seen leaving"
    assert all(chatter.nb_users == len(chatters) for chatter in chatters)


async def stop(group: list[Chatter], tasks: list[asyncio.Task[None]]) -> None:
    """Every chatter leaves, then its task is given a moment to end, and cancelled."""
    for chatter in group:
        await chatter.leave()
    await asyncio.wait(tasks, timeout=10)
    for task in tasks:
        task.cancel()


@contextlib.asynccontextmanager
async def chatting(ports: list[int]) -> AsyncIterator[list[Chatter]]:
    """A room socket and a channel socket on each node (by its port), each sending 20 texts a second."""
    tag = uuid.uuid4().hex[:4]
    group = [
        Chatter(f"ws://127.0.0.1:{port}", f"{dialect[0]}{tag}-{number}", dialect, interval=0.05)
        for number, port in enumerate(ports)
        for dialect in ("room", "channel")
    ]
    tasks = [asyncio.get_running_loop().create_task(chatter.run()) for chatter in group]
    try:
        await asyncio.wait_for(asyncio.gather(*(chatter.registered.wait() for chatter in group)), 20)
        yield group
    finally:
        await stop(group, tasks)
