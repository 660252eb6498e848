"""A node of the Redis engine: its side of the `Broker` interface. How the engine works is told in
the package's docstring.

What the hub calls never waits on Redis (but a claim, for its answer): each call becomes a command
in the ordered outbox while the node is online, and is served on this node alone while it is not.
The node's life on Redis (connect, register, snapshot, heartbeat, degraded mode, resync) is the
`Session` this broker composes.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from gischat.broker.base import BrokerSettings, Envelope, Node, Order
from gischat.broker.redis.commands import Retention, emit_command, exiter_wire, presence_stamp
from gischat.broker.redis.connection import Client
from gischat.broker.redis.events import EventKind
from gischat.broker.redis.keys import NodeKeys
from gischat.broker.redis.ledger import RedisLedger
from gischat.broker.redis.mirror import Mirror
from gischat.broker.redis.orders import NodeOrders
from gischat.broker.redis.outbox import Command, Outbox
from gischat.broker.redis.session import Session
from gischat.broker.redis.state import NodeReaped, NodeState
from gischat.protocol.dialects import Post


class RedisBroker:
    """Rooms shared by every gischat process connected to the same Redis and key prefix."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.prefix = settings.redis_key_prefix
        self.node = secrets.token_hex(6)
        self.keys = NodeKeys.of(self.prefix, self.node)
        self.retention = Retention.of(settings)
        self._outbox = Outbox()
        self._mirror = Mirror(self.node, list(settings.rooms))
        # Moderators' orders, bans kept, sockets gathered: the node's life on Redis reached through
        # this broker (`orders.Link`), which the session below composes.
        self._orders = NodeOrders(self.node, self.keys, self._outbox, self._mirror, self, self.retention)
        self._session = Session(settings, self.node, self.keys, self._outbox, self._mirror, self._orders)
        self.ledger = RedisLedger(self.prefix, self._ledger_client)

    # The node's life on Redis, as moderators' orders see it (`orders.Link`).

    @property
    def online(self) -> bool:
        return self._session.online

    @property
    def hub(self) -> Node | None:
        return self._session.hub

    async def settled_client(self) -> Client | None:
        """The connection once the first attempt to connect is over (None: Redis is away)."""
        return await self._session.settled_client()

    async def _ledger_client(self) -> Client | None:
        """The connection for the ledger while this node is online (None: answer from memory)."""
        if not self._session.online:
            return None
        return await self._session.settled_client()

    # --- the Broker interface ---------------------------------------------------------------

    shared = True

    @property
    def node_name(self) -> str:
        return self.node

    @property
    def healthy(self) -> bool:
        return self._session.state is NodeState.UP

    def status(self) -> dict[str, Any] | None:
        state = self._session.state
        outage = self._session.outage
        target = self._session.where
        return {
            "url": target.location,
            # With Sentinel: the primary this node was last connected to (it changes on failover).
            **({"primary": target.primary} if target.sentinel is not None else {}),
            "state": state,
            "node": self.node,
            "nodes": self._mirror.nodes() + 1 if state is NodeState.UP else 1,
            # Messages kept while Redis is away (`outage.py`), and those its bounds dropped.
            "kept": len(outage),
            # The rooms whose messages this node reads (`routes.py`).
            "reading": self._session.routes.reading(),
            "dropped": outage.dropped,
        }

    async def start(self, node: Node) -> None:
        await self._session.start(node)

    async def stop(self) -> None:
        await self._session.stop()

    def publish(self, room: str, envelope: Envelope) -> None:
        session = self._session
        if not session.online:
            session.deliver_local(room, envelope)
            session.outage.keep(room, envelope)  # for the other nodes, once Redis is back
            return
        n = self._outbox.number()
        command = emit_command(self.keys, self.node, n, room, envelope, self.retention, False, session.reach)
        command.echo = session.routes.receives(room)
        self._outbox.send(command)

    async def claim(self, room: str, key: str, nickname: str, payload: Post) -> bool:
        session = self._session
        if not session.online:
            session.deliver_local(room, Envelope(payload))
            return True
        n = self._outbox.number()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        k = self.keys

        def answered(result: Any) -> None:  # before anything this node sends next is stamped
            if isinstance(result, int) and result > 0:
                session.claimed(result)

        self._outbox.send(
            Command(
                "claim",
                [k.nodes, k.seq, k.channel, k.nicks(room), k.index],
                [self.node, room, key, nickname, b"", payload.encode(), exiter_wire(nickname)],
                future=future,
                local=(room, Envelope(payload)),
                n=n,
                channel=k.channel,
                on_result=answered,
                stamp=self._presence_stamp(EventKind.CLAIMED, room, n, key, nickname),
            )
        )
        result = await future
        if result == -1:
            # Redis took this node for dead: register again; the nickname is claimed then.
            session.deliver_local(room, Envelope(payload))
            session.fail(NodeReaped("this node was reaped"))
            return True
        # None: Redis went away before answering; the node now serves alone, and claims the
        # nickname again when it is back. -2: this node held it already.
        return result is None or int(result) > 0 or int(result) == -2

    def release(self, room: str, key: str, nickname: str, payload: Post) -> None:
        if not self._session.online:
            self._session.deliver_local(room, Envelope(payload))
            return
        n = self._outbox.number()
        k = self.keys
        self._outbox.send(
            Command(
                "release",
                [k.seq, k.channel, k.nicks(room), k.index],
                [self.node, room, key, nickname, b"", payload.encode()],
                local=(room, Envelope(payload)),
                n=n,
                channel=k.channel,
                stamp=self._presence_stamp(EventKind.FREED, room, n, key, nickname),
            )
        )

    def _presence_stamp(self, kind: EventKind, room: str, n: int, key: str, nickname: str) -> Any:
        """The header of a claim or a release, written as it is sent: after this node's last
        message in the room (`barrier.py`)."""
        channel = self.keys.room_channel(room)
        published = self._outbox.published
        return presence_stamp([kind, room, self.node, n, key, nickname, 0], lambda: published.get(channel, 0))

    async def attend(self, room: str) -> None:
        routes = self._session.routes
        await routes.attend(room)
        hub = self._session.hub
        if hub is not None:  # read for as long as this node has sockets there, then the linger
            routes.sockets_changed(room, hub.local_count(room))

    def count_changed(self, room: str) -> None:
        hub = self._session.hub
        if hub is not None:
            self._session.routes.sockets_changed(room, hub.local_count(room))
        if self._session.online:
            self._outbox.counts_changed(room)

    def remote_count(self, room: str) -> int:
        return self._mirror.remote_count(room)

    def remote_owner(self, room: str, key: str) -> str | None:
        return self._mirror.remote_owner(room, key)

    def remote_users(self, room: str) -> list[str]:
        return self._mirror.remote_users(room)

    def order(self, order: Order) -> None:
        self._orders.order(order)

    async def load_bans(self) -> list[dict[str, Any]]:
        return await self._orders.load_bans()

    async def gather(self, room: str) -> list[dict[str, Any]]:
        return await self._orders.gather(room)
