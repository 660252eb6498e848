"""A node of the Redis engine: its side of the `Broker` interface and its life (connect, register,
snapshot, heartbeat, degraded mode, resync). How the engine works is told in the package's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from enum import StrEnum
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from gischat.broker.base import BrokerSettings, Envelope, Node, Order
from gischat.broker.redis.connection import describe, redis_client, redis_location, redis_secrets
from gischat.broker.redis.mirror import Buffered, Mirror, readable
from gischat.broker.redis.orders import NodeOrders
from gischat.broker.redis.outbox import Command, Outbox
from gischat.broker.redis.scripts import SCRIPTS, EventKind, Header, counts_command, exiter_wire, sync_command
from gischat.protocol.dialects import Post
from gischat.protocol.refusals import SPLIT_REASON

logger = logging.getLogger("gischat.broker")

FIRST_RETRY = 0.1  # seconds before the first reconnection attempt, doubled up to the maximum


class NodeState(StrEnum):
    """Where this node stands with the shared service (shown in `/status`)."""

    CONNECTING = "connecting"  # the first attempt to reach Redis
    SYNCING = "syncing"  # registered again, loading the others' state
    UP = "up"  # part of the shared service
    DOWN = "down"  # Redis is away: serving this node's sockets alone, retrying
    STOPPED = "stopped"


class NodeReaped(Exception):
    """Redis no longer lists this node (it was taken for dead): it must register again."""


class RedisBroker:
    """Rooms shared by every gischat process connected to the same Redis and key prefix."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.url = settings.broker_url
        self.where = redis_location(self.url)
        self._secrets = redis_secrets(self.url)
        self.prefix = settings.redis_key_prefix
        self.node = secrets.token_hex(6)
        self.node_timeout = settings.node_timeout
        # Several heartbeats per timeout, so one late beat does not get a live node reaped.
        self.beat_interval = max(0.05, settings.node_timeout / 5)
        self.max_delay = settings.redis_reconnect_max_delay
        self.rooms = list(settings.rooms)
        self.history_size = settings.max_stored_messages
        self.history_bytes = settings.max_stored_bytes
        self.state = NodeState.CONNECTING
        self._online = False  # commands go to Redis (else: everything stays on this node)
        self._hub: Node | None = None
        self._runner: asyncio.Task[None] | None = None
        self._client: Redis | None = None
        self._sha: dict[str, str] = {}
        self._outbox = Outbox()
        self._settled = asyncio.Event()  # the first connection attempt is over, either way
        self._orders = NodeOrders(self)  # moderators' orders, bans kept, sockets gathered
        self._sessions = 0  # times this node got up on Redis
        self._reloading: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._base = 0  # sequence number of the snapshot the mirror was loaded from
        self._buffer: list[Buffered] | None = None
        self._stopping = False
        self._down_since_logged = False
        self._mirror = Mirror(self.node, self.rooms)
        k = self.prefix
        self.k_channel = f"{k}:events"
        self.k_seq = f"{k}:seq"
        self.k_nodes = f"{k}:nodes"
        self.k_counts = f"{k}:counts:{self.node}"
        self.k_index = f"{k}:nodenicks:{self.node}"

    # What the engine's other parts (`orders.NodeOrders`) see of the node.

    @property
    def online(self) -> bool:
        return self._online

    @property
    def hub(self) -> Node | None:
        return self._hub

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def mirror(self) -> Mirror:
        return self._mirror

    async def settled_client(self) -> Redis | None:
        """The connection once the first attempt to connect is over (None: Redis is away)."""
        await self._settled.wait()
        return self._client

    # --- the Broker interface ---------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self.state is NodeState.UP

    def status(self) -> dict[str, Any] | None:
        return {
            "url": self.where,
            "state": self.state,
            "node": self.node,
            "nodes": self._mirror.nodes() + 1 if self.state is NodeState.UP else 1,
        }

    async def start(self, node: Node) -> None:
        self._hub = node
        self._runner = asyncio.get_running_loop().create_task(self._run())
        # Serve as soon as Redis answered (or at once, alone, if it does not: _run keeps trying).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(2.0, self.node_timeout)):
                await self._settled.wait()

    async def stop(self) -> None:
        self._stopping = True
        client = self._client
        if self._online and client is not None:
            try:
                async with asyncio.timeout(2):
                    self._outbox.wake.set()
                    await self._outbox.idle.wait()
                    # Leave at once: the other nodes drop this one's users now, not after a timeout.
                    await client.evalsha(
                        self._sha["reap"],
                        3,
                        self.k_nodes,
                        self.k_seq,
                        self.k_channel,
                        self.prefix,
                        0,
                        self.node,
                    )
            except Exception as exc:
                logger.warning("broker: could not leave %s cleanly: %s", self.where, self._describe(exc))
        self._online = False
        self.state = NodeState.STOPPED
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        self._hub = None

    def publish(self, room: str, envelope: Envelope) -> None:
        if not self._online:
            if self._hub is not None:
                self._hub.deliver(room, envelope)
            return
        n = self._outbox.number()
        header = orjson.dumps([EventKind.MESSAGE, room, self.node, n, envelope.to, envelope.keep])
        self._outbox.send(
            Command(
                "emit",
                [self.k_seq, self.k_channel, f"{self.prefix}:history:{room}"],
                [
                    header,
                    envelope.post.encode(),
                    self.history_size if envelope.keep else 0,
                    self.history_bytes,
                ],
                local=(room, envelope),
                n=n,
            )
        )

    async def claim(self, room: str, key: str, nickname: str, payload: Post) -> bool:
        if not self._online:
            self._deliver_local(room, Envelope(payload))
            return True
        n = self._outbox.number()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        header = orjson.dumps([EventKind.CLAIMED, room, self.node, n, key, nickname, 0])
        self._outbox.send(
            Command(
                "claim",
                [self.k_nodes, self.k_seq, self.k_channel, f"{self.prefix}:nicks:{room}", self.k_index],
                [self.node, room, key, nickname, header, payload.encode(), exiter_wire(nickname)],
                future=future,
                local=(room, Envelope(payload)),
                n=n,
            )
        )
        result = await future
        if result == -1:
            # Redis took this node for dead: register again; the nickname is claimed then.
            self._deliver_local(room, Envelope(payload))
            self._fail(NodeReaped("this node was reaped"))
            return True
        # None: Redis went away before answering; the node now serves alone, and claims the
        # nickname again when it is back.
        return result is None or int(result) > 0

    def release(self, room: str, key: str, nickname: str, payload: Post) -> None:
        if not self._online:
            self._deliver_local(room, Envelope(payload))
            return
        n = self._outbox.number()
        header = orjson.dumps([EventKind.FREED, room, self.node, n, key, nickname, 0])
        self._outbox.send(
            Command(
                "release",
                [self.k_seq, self.k_channel, f"{self.prefix}:nicks:{room}", self.k_index],
                [self.node, room, key, nickname, header, payload.encode()],
                local=(room, Envelope(payload)),
                n=n,
            )
        )

    def count_changed(self, room: str) -> None:
        if self._online:
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

    def _deliver_local(self, room: str, envelope: Envelope) -> None:
        if self._hub is not None:
            self._hub.deliver(room, envelope)

    def _counts_command(self, rooms: set[str]) -> Command:
        """The absolute socket counts of the rooms that changed, as one command."""
        assert self._hub is not None
        counts = {room: self._hub.local_count(room) for room in sorted(rooms)}
        keys = [self.k_nodes, self.k_seq, self.k_channel, self.k_counts]
        return counts_command(self.node, self._outbox.number(), keys, counts)

    # --- the connection's life ----------------------------------------------------------------

    def _client_for(self) -> Redis:
        return redis_client(self.url, self.node, connect_timeout=min(5.0, max(1.0, self.node_timeout)))

    async def _run(self) -> None:
        delay = FIRST_RETRY
        while not self._stopping:
            reached = False
            try:
                reached = await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = self._describe(exc)
            else:
                reason = "connection closed"
            if self._stopping:
                return
            self._go_down(reason)
            if reached:
                delay = FIRST_RETRY
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_delay)

    async def _session(self) -> bool:
        """Connect, register, load the mirror, then serve until the connection fails."""
        client = self._client_for()
        self._client = client
        tasks: list[asyncio.Task[Any]] = []
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(2.0, self.node_timeout)):
                await client.ping()
                self._sha = {name: await client.script_load(source) for name, source in SCRIPTS.items()}
                pubsub = client.pubsub()
                await pubsub.subscribe(self.k_channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        break
            # From here on, this node's commands go to Redis, behind the one that registers it.
            self._lost = loop.create_future()
            self._buffer = []
            self._online = True
            self.state = NodeState.SYNCING
            self._outbox.send_first(self._sync_command())
            tasks = [
                loop.create_task(self._read(pubsub)),
                loop.create_task(self._outbox.drain(client, self._sha, self._counts_command, self._describe)),
            ]
            async with asyncio.timeout(max(2.0, self.node_timeout)):
                snapshot_task = loop.create_task(self._snapshot(client))
                done, _ = await asyncio.wait([snapshot_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
                if snapshot_task not in done:
                    snapshot_task.cancel()
                    for task in done:
                        task.result()
                    raise ConnectionError("lost during the snapshot")
            assert self._hub is not None
            self._base = self._mirror.load(snapshot_task.result(), self._buffer or [], self._hub)
            self._buffer = None
            self.state = NodeState.UP
            self._settled.set()
            if self._down_since_logged:
                logger.warning("broker: back on %s as node %s; presence restored", self.where, self.node)
            else:
                logger.info("broker: connected to %s as node %s", self.where, self.node)
            self._down_since_logged = False
            tasks.append(loop.create_task(self._beat()))
            self._sessions += 1
            if self._sessions > 1:  # bans made while this node was away apply here too
                self._reloading = loop.create_task(self._orders.reload_bans())
            watched: list[asyncio.Future[Any]] = [self._lost, *tasks]
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for future in watched:
                error = future.exception() if future.done() else None
                if error is not None:
                    raise error
            return True
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            self._client = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await client.aclose()

    async def _snapshot(self, client: Redis) -> list[Any]:
        result = await client.evalsha(
            self._sha["snapshot"], 2, self.k_seq, self.k_nodes, self.prefix, *self.rooms
        )
        assert isinstance(result, list)
        return result

    def _sync_command(self) -> Command:
        """Register (again), rewrite the counts, free what was given up and claim what was taken."""
        hub = self._hub
        assert hub is not None
        counts = {room: hub.local_count(room) for room in self.rooms}
        held = hub.local_nicknames()

        def lost(room: str, key: str, nickname: str) -> None:
            hub.revoke(room, key, SPLIT_REASON.format(nickname=nickname))

        keys = [self.k_nodes, self.k_seq, self.k_channel, self.k_counts, self.k_index]
        return sync_command(self.prefix, self.node, self._outbox.number(), keys, counts, held, lost)

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        timeout_ms = int(self.node_timeout * 1000)
        while True:
            await asyncio.sleep(self.beat_interval)
            future: asyncio.Future[Any] = loop.create_future()
            self._outbox.send(Command("heartbeat", [self.k_nodes], [self.node], future=future))
            self._outbox.send(
                Command("reap", [self.k_nodes, self.k_seq, self.k_channel], [self.prefix, timeout_ms, ""])
            )
            try:
                async with asyncio.timeout(self.node_timeout):
                    alive = await future
            except TimeoutError:
                raise ConnectionError(f"Redis did not answer within {self.node_timeout:g} s") from None
            if alive == 0:
                raise NodeReaped("Redis took this node for dead; registering again")

    def _fail(self, exc: BaseException) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(exc)

    def _go_down(self, reason: str) -> None:
        """Redis is away: serve this node's sockets alone, and make up for what was in flight."""
        was = self.state
        self._online = False
        self.state = NodeState.DOWN
        self._settled.set()
        self._buffer = None
        for room, envelope in self._outbox.abandon():
            self._deliver_local(room, envelope)
        self._mirror.clear()
        if self._hub is not None:
            for room in self.rooms:
                self._hub.remote_changed(room)
        if not self._down_since_logged:
            verb = "cannot reach" if was is NodeState.CONNECTING else "lost"
            logger.warning(
                "broker: %s %s (%s); serving this node's sockets alone, retrying", verb, self.where, reason
            )
            self._down_since_logged = True

    def _describe(self, exc: BaseException) -> str:
        return describe(exc, self._secrets)

    # --- what comes back ----------------------------------------------------------------------

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None and message["type"] == "message":
                self._on_event(message["data"])

    def _on_event(self, data: bytes) -> None:
        hub = self._hub
        if hub is None:
            return
        head, _, rest = data.partition(b" ")
        header_text, _, payload = rest.partition(b"\n")
        seq = int(head)
        header = Header.parse(orjson.loads(header_text))
        kind, room = header.kind, header.room
        mine = header.node == self.node
        if mine and header.n:
            self._outbox.confirm(header.n)
        if kind in (EventKind.ORDER, EventKind.WHO, EventKind.SOCKETS):
            self._orders.on_event(header, mine, payload)
            return
        if kind is EventKind.MESSAGE:
            keep = header.keep
            if keep and self._buffer is not None:
                self._buffer.append((seq, header, payload))
                keep = False
            post = readable(payload)
            if post is not None:
                hub.deliver(room, Envelope(post, header.to, keep and seq > self._base))
            return
        if kind in (EventKind.CLAIMED, EventKind.FREED) and not (mine and header.quiet):
            if kind is EventKind.CLAIMED and mine:
                hub.claim_settled(room, header.key, header.nickname)
            post = readable(payload, header.freed_at)
            if post is not None:
                hub.deliver(room, Envelope(post))
        if kind is EventKind.GONE and mine:
            if not self._stopping:
                self._fail(NodeReaped("Redis took this node for dead; registering again"))
            return
        if mine:
            return
        if self._buffer is not None:
            self._buffer.append((seq, header, payload))
        elif seq > self._base:
            self._mirror.apply(header, hub)
