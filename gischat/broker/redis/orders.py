"""Moderators' orders across nodes: carried out by every node, bans kept in Redis, sockets gathered.

An order (kick, ban, lift, delete) goes through the node's ordered outbox like a message, as one
script call: the script changes the shared state the order is about (a ban kept in the bans hash
or lifted, a message taken out of the room's history list) and publishes the event, which every
node, this one included, hands to `Node.obey`. A kick and a deletion travel on their room's
channel, in order with its messages; a ban and its lifting on the node-wide one. So a ban made on one node is enforced
on all of them, a node that starts (or comes back) loads the bans Redis keeps, and a deleted
message is gone from the history every newcomer replays, wherever it connects.

Listing a room's sockets asks the other nodes a question on the event channel (`who`); each
answers with its own sockets (`sockets`), and the asking node waits for as many answers as it
knows nodes, or a second at most: a moderator gets what the nodes that answered hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from redis.exceptions import RedisError

from gischat.broker.base import Node, Order, OrderKind
from gischat.broker.redis.commands import Retention
from gischat.broker.redis.connection import Client
from gischat.broker.redis.events import EventKind, Header
from gischat.broker.redis.keys import NodeKeys
from gischat.broker.redis.mirror import Mirror
from gischat.broker.redis.outbox import Command, Outbox

logger = logging.getLogger("gischat.broker")

# How long a room's sockets are waited for from the other nodes.
GATHER_TIMEOUT = 1.0


def order_command(keys: NodeKeys, node: str, n: int, order: Order, retention: Retention) -> Command:
    """The script call that carries out `order` in Redis and tells every node: a deletion or a
    kick on the room's keys and channel (in the room's order among its messages: what the kicked
    person said before, the message deleted), a ban or its lifting on the node-wide ones."""
    header = orjson.dumps([EventKind.ORDER, order.room or "", node, n])
    payload = orjson.dumps({"kind": order.kind, "room": order.room, "args": order.args})
    target = str(order.args.get("id", ""))
    if order.kind in (OrderKind.DELETE, OrderKind.KICK) and order.room is not None:
        room = order.room
        return Command(
            "room_order",
            [
                keys.room_seq(room),
                keys.room_channel(room),
                keys.history(room),
                keys.recent(room),
                keys.recent_bytes(room),
            ],
            [
                header,
                payload,
                target if order.kind is OrderKind.DELETE else "",
                retention.recent_messages,
                retention.recent_ms,
                retention.history_bytes,
            ],
            n=n,
        )
    ban = payload if order.kind is OrderKind.BAN else b""
    return Command(
        "order", [keys.seq, keys.channel, keys.bans], [header, payload, order.kind, target, ban], n=n
    )


def read_order(payload: bytes) -> Order | None:
    """The order an event carries; None (and a warning) for one this node cannot read."""
    try:
        data = orjson.loads(payload)
        return Order(OrderKind(data["kind"]), data.get("room"), dict(data.get("args") or {}))
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
        logger.warning("broker: skipped a moderator's order this node cannot read")
        return None


async def load_bans(client: Client, key: str) -> list[dict[str, Any]]:
    """The bans Redis keeps (in hash `key`) that have not ended; ended ones are taken out on the way."""
    now = time.time()
    bans: list[dict[str, Any]] = []
    ended: list[bytes | str] = []
    for field, value in (await client.hgetall(key)).items():
        order = read_order(value.encode() if isinstance(value, str) else value)
        ban = order.args if order is not None else None
        if ban is None or float(ban.get("until", 0)) <= now:
            ended.append(field)
        else:
            bans.append(ban)
    if ended:
        await client.hdel(key, *ended)
    return bans


class Gatherer:
    """This node's open questions to the others about a room's sockets, and their answers."""

    def __init__(self) -> None:
        self.asks: dict[str, tuple[list[dict[str, Any]], int, asyncio.Future[None]]] = {}

    def ask(self, expected: int) -> tuple[str, asyncio.Future[None]]:
        """A new question, answered once `expected` nodes answered (see `wait`)."""
        ask = secrets.token_hex(8)
        done = asyncio.get_running_loop().create_future()
        self.asks[ask] = ([], expected, done)
        if expected <= 0:
            done.set_result(None)
        return ask, done

    def answer(self, ask: str, payload: bytes) -> None:
        """A node's sockets for question `ask` (another node's question is none of ours)."""
        entry = self.asks.get(ask)
        if entry is None:
            return
        sockets, expected, done = entry
        try:
            answered = orjson.loads(payload)
        except orjson.JSONDecodeError:
            answered = []
        sockets.extend(item for item in answered if isinstance(item, dict))
        expected -= 1
        self.asks[ask] = (sockets, expected, done)
        if expected <= 0 and not done.done():
            done.set_result(None)

    async def wait(self, ask: str, done: asyncio.Future[None]) -> list[dict[str, Any]]:
        """The sockets the other nodes told of, once all answered or GATHER_TIMEOUT passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), GATHER_TIMEOUT)
        sockets, _, _ = self.asks.pop(ask, ([], 0, done))
        return sockets


def who_command(keys: NodeKeys, node: str, n: int, room: str, ask: str) -> Command:
    """The question to every node: which sockets of `room` do you hold?"""
    header = orjson.dumps([EventKind.WHO, room, node, n, ask])
    return Command("say", [keys.seq, keys.channel], [header, b""], n=n)


def sockets_command(keys: NodeKeys, node: str, n: int, room: str, ask: str, sockets: Any) -> Command:
    """This node's answer to question `ask`."""
    header = orjson.dumps([EventKind.SOCKETS, room, node, n, ask])
    return Command("say", [keys.seq, keys.channel], [header, orjson.dumps(sockets)], n=n)


class Link(Protocol):
    """What orders need to know of the node's life on Redis (its session, through the broker)."""

    @property
    def online(self) -> bool:
        """Commands go to Redis (else this node serves its own sockets alone)."""

    @property
    def hub(self) -> Node | None:
        """The rooms of this process, once the broker started."""

    async def settled_client(self) -> Client | None:
        """The connection once the first attempt to connect is over (None: Redis is away)."""


class NodeOrders:
    """One Redis node's side of moderators' orders: sending them, obeying them, answering.

    It is given what it uses: the node's names and keys, the ordered outbox it sends through, the
    mirror that knows how many nodes answer, and the link to the node's life on Redis."""

    def __init__(
        self, node: str, keys: NodeKeys, outbox: Outbox, mirror: Mirror, link: Link, retention: Retention
    ) -> None:
        self.node = node
        self.retention = retention  # a deletion is kept among the room's recent events as its messages are
        self.keys = keys
        self.outbox = outbox
        self.mirror = mirror
        self.link = link
        self.gatherer = Gatherer()

    def _send(self, make: Callable[[NodeKeys, int], Command]) -> None:
        self.outbox.send(make(self.keys, self.outbox.number()))

    def order(self, order: Order) -> None:
        if not self.link.online:
            hub = self.link.hub
            if hub is not None:
                hub.obey(order)  # this node alone: Redis keeps nothing while it is away
            return
        self._send(lambda keys, n: order_command(keys, self.node, n, order, self.retention))

    async def load_bans(self) -> list[dict[str, Any]]:
        client = await self.link.settled_client()
        if client is None:
            return []
        try:
            return await load_bans(client, self.keys.bans)
        except RedisError as exc:
            logger.warning("broker: loading the bans failed: %s", type(exc).__name__)
            return []

    async def reload_bans(self) -> None:
        """Back on Redis: the bans it keeps apply on this node (made while it was away, too)."""
        for ban in await self.load_bans():
            hub = self.link.hub
            if hub is not None:
                hub.obey(Order(OrderKind.BAN, ban.get("room"), ban))

    async def gather(self, room: str) -> list[dict[str, Any]]:
        if not self.link.online:
            return []
        ask, done = self.gatherer.ask(self.mirror.nodes())
        self._send(lambda keys, n: who_command(keys, self.node, n, room, ask))
        return await self.gatherer.wait(ask, done)

    def on_event(self, header: Header, mine: bool, payload: bytes) -> None:
        """An order (every node obeys), a question about sockets (others answer), an answer."""
        hub = self.link.hub
        if header.kind is EventKind.ORDER:
            order = read_order(payload)
            if order is not None and hub is not None:
                hub.obey(order)
        elif header.kind is EventKind.WHO and not mine and hub is not None and self.link.online:
            room, ask, sockets = header.room, str(header.rest[0]), hub.describe(header.room)
            self._send(lambda keys, n: sockets_command(keys, self.node, n, room, ask, sockets))
        elif header.kind is EventKind.SOCKETS and not mine:
            self.gatherer.answer(str(header.rest[0]), payload)
