"""This node's life on Redis: sessions one after another, each one connect, register, snapshot,
heartbeat and serve, until the connection fails; between them, degraded mode and backoff.

Kept apart from the `Broker` interface (`broker.py`) because the two change for different reasons:
the interface is what the hub asks of the node, and never waits on Redis; this is what keeps the
node honest with Redis (registered, beating, its mirror loaded from the right sequence number) and
what makes up for Redis going away. The broker composes one `Session` and asks it only whether
commands go to Redis (`online`), to whom events are delivered (`hub`), and to start, stop or give
up the current session (`fail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from gischat.broker.base import BrokerSettings, Envelope, Node
from gischat.broker.redis.bus import Bus
from gischat.broker.redis.commands import Retention
from gischat.broker.redis.connection import Client, RedisTarget, describe
from gischat.broker.redis.events import EventKind, Header, parse_event
from gischat.broker.redis.keys import NodeKeys
from gischat.broker.redis.mirror import Buffered, Mirror, readable
from gischat.broker.redis.orders import NodeOrders
from gischat.broker.redis.outage import SEEN_IDS, OutageBuffer, Seen, kept_commands, unconfirmed_messages
from gischat.broker.redis.outbox import Command, Outbox
from gischat.broker.redis.routes import Routes
from gischat.broker.redis.scripts import CARRY_OVER, load_scripts
from gischat.broker.redis.state import NodeCommands, NodeReaped, NodeState

logger = logging.getLogger("gischat.broker")

FIRST_RETRY = 0.1  # seconds before the first reconnection attempt, doubled up to the maximum


class Session:
    """One node's connection to Redis across reconnections, and what rides on it: the outbox's
    drainer, the event reader, the heartbeat, and the mirror loaded from each new snapshot."""

    def __init__(
        self,
        settings: BrokerSettings,
        node: str,
        keys: NodeKeys,
        outbox: Outbox,
        mirror: Mirror,
        orders: NodeOrders,
    ) -> None:
        # Where Redis is (shown with the primary, with Sentinel): a connection attempt lasts up to 5 s.
        self.where = RedisTarget(settings.broker_url, node, min(5.0, max(1.0, settings.node_timeout)))
        self._secrets = self.where.secrets
        self.node = node
        self.keys = keys
        self.rooms = list(settings.rooms)
        self.node_timeout = settings.node_timeout
        # Several heartbeats per timeout, so one late beat does not get a live node reaped.
        self.beat_interval = max(0.05, settings.node_timeout / 5)
        self.max_delay = settings.redis_reconnect_max_delay
        self._outbox = outbox
        self._mirror = mirror
        self._orders = orders  # moderators' orders: their events, and bans reloaded on return
        self._state = NodeState.CONNECTING
        self._online = False  # commands go to Redis (else: everything stays on this node)
        self._hub: Node | None = None
        self._runner: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self._sha: dict[str, str] = {}
        self._settled = asyncio.Event()  # the first connection attempt is over, either way
        self._sessions = 0  # times this node got up on Redis
        self._reloading: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._base = 0  # sequence number of the snapshot the mirror was loaded from
        self._buffer: list[Buffered] | None = None
        self._stopping = False
        self._down_since_logged = False
        # What this node's users said while Redis was away, published on return (`outage.py`).
        self.outage = OutageBuffer(settings.outage_buffer_messages, settings.outage_buffer_seconds)
        self._retention = Retention.of(settings)
        # Enough to hold every post the rooms' history and recent events hold, and what this node
        # kept, so that a return delivers only what is new.
        per_room = self._retention.recent_messages + 2 * settings.max_stored_messages
        seen = Seen(max(SEEN_IDS, len(self.rooms) * per_room + settings.outage_buffer_messages))
        self._seen = seen
        # The rooms whose messages this node reads (`routes.py`).
        self.routes = Routes(node, keys, settings.redis_room_linger, seen, settings.node_timeout, outbox)
        self._own = 0  # the node-wide sequence number of this node's last claim, this session
        self._flushed: asyncio.Future[Any] | None = None  # the kept messages are in Redis
        self._unreadable_at = -60.0  # when an unreadable event was last logged

    # --- what the broker sees -------------------------------------------------------------------

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def online(self) -> bool:
        return self._online

    @property
    def hub(self) -> Node | None:
        return self._hub

    def reach(self) -> int:
        """The node-wide sequence number this node has reached: read on the channel, or its own
        claims' and registration's (a message it sends now is delivered after those: `barrier.py`)."""
        return max(self.routes.barrier.reached, self._own)

    def claimed(self, seq: int) -> None:
        """This node's claim (or registration) was published as event `seq`."""
        self._own = max(self._own, seq)

    async def settled_client(self) -> Client | None:
        """The connection once the first attempt to connect is over (None: Redis is away)."""
        await self._settled.wait()
        return self._client

    async def start(self, hub: Node) -> None:
        self._hub = hub
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
                    await self._leave(client)
            except Exception as exc:
                logger.warning("broker: could not leave %s cleanly: %s", self.where, self._describe(exc))
        self._online = False
        self._state = NodeState.STOPPED
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        self._hub = None

    def fail(self, exc: BaseException) -> None:
        """End the current session with `exc` (the node reconnects and registers again)."""
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(exc)

    def deliver_local(self, room: str, envelope: Envelope) -> None:
        if self._hub is not None:
            self._seen.first(envelope.post.id)  # delivered here: not again when Redis is back
            self._hub.deliver(room, envelope)

    # --- the connection's life ------------------------------------------------------------------

    async def _leave(self, client: Client) -> None:
        """Send what is queued, then leave at once: the other nodes drop this one's users now,
        not after a timeout."""
        self._outbox.wake.set()
        await self._outbox.idle.wait()
        keys = self.keys
        await client.evalsha(
            self._sha["reap"], 3, keys.nodes, keys.seq, keys.channel, keys.home, 0, self.node
        )

    async def _run(self) -> None:
        delay = FIRST_RETRY
        while not self._stopping:
            reached = False
            try:
                reached = await self._serve()
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
            # Between half the delay and all of it: the nodes that lost Redis together (a restart,
            # a failover) do not all come back at the same instant. Sooner if the sentinels name a
            # new primary.
            await self.where.pause(delay * (0.5 + random.random() / 2))  # noqa: S311 (not a secret)
            delay = min(delay * 2, self.max_delay)

    async def _serve(self) -> bool:
        """One session: connect, register, load the mirror, then serve until the connection fails."""
        client = self.where.client()
        self._client = client
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = [loop.create_task(self.where.watch())]  # the primary moved
        bus = Bus(self.where, client, self._on_event)
        try:
            await self._subscribe(client, bus)
            tasks += self._go_online(client, bus)
            await self._load_mirror(client, tasks)
            self._come_up()
            tasks.append(loop.create_task(self._beat()))
            self._sessions += 1
            if self._sessions > 1:  # bans made while this node was away apply here too
                self._reloading = loop.create_task(self._orders.reload_bans())
            assert self._lost is not None
            watched: list[asyncio.Future[Any]] = [self._lost, *tasks]
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for future in watched:
                error = future.exception() if future.done() else None
                if error is not None:
                    raise error
            return True
        finally:
            await self._close(client, bus, tasks)

    async def _subscribe(self, client: Client, bus: Bus) -> None:
        """Reach Redis, load the scripts (on every primary of a cluster), and listen to the
        event channels before registering."""
        async with asyncio.timeout(max(2.0, self.node_timeout)):
            await client.ping()
            self._sha = await load_scripts(client, self.where.sharded)
            if not self.where.sharded:  # history and bans an earlier version kept, under their new names
                pairs = [key for pair in self.keys.former(self.rooms) for key in pair]
                await client.eval(CARRY_OVER, len(pairs), *pairs)
            await bus.subscribe(*self.routes.channels())

    def _go_online(self, client: Client, bus: Bus) -> list[asyncio.Task[Any]]:
        """From here on, this node's commands go to Redis, behind the one that registers it;
        events are buffered until the snapshot is loaded. Returns the reader and the drainer."""
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        self._buffer = []
        self._online = True
        self._state = NodeState.SYNCING
        self._own = 0
        self.routes.barrier.reset(0)
        self._outbox.published.clear()  # the rooms' sequences as of this session (Redis may be new)
        assert self._hub is not None
        # Registered first, then what was said here while Redis was away, then anything newer.
        self._flushed = loop.create_future()
        self.routes.begin(self._hub, client, bus, self._sha, self.fail, self._flushed)
        kept = kept_commands(
            self.outage, self.keys, self.node, self._outbox.number, self._retention, self.reach
        )
        commands = [self._sync_command(), *kept]
        commands[-1].future = self._flushed
        for command in reversed(commands):
            self._outbox.send_first(command)
        return [
            loop.create_task(bus.failed()),
            loop.create_task(bus.watch(self.beat_interval, self.node_timeout)),
            loop.create_task(self._outbox.drain(client, self._sha, self._counts_command, self._describe)),
        ]

    async def _load_mirror(self, client: Client, tasks: list[asyncio.Task[Any]]) -> None:
        """The others' state as of a snapshot, then the events buffered meanwhile; the session
        fails if its reader or drainer does first."""
        loop = asyncio.get_running_loop()
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
        self.routes.barrier.advance(self._base)
        # Then the rooms this node reads: their history, and what their sockets missed.
        async with asyncio.timeout(max(2.0, self.node_timeout)):
            await self.routes.load()

    def _come_up(self) -> None:
        self._state = NodeState.UP
        self._settled.set()
        if self._down_since_logged:
            logger.warning("broker: back on %s as node %s; presence restored", self.where, self.node)
        else:
            logger.info("broker: connected to %s as node %s", self.where, self.node)
        self._down_since_logged = False

    async def _close(self, client: Client, bus: Bus, tasks: list[asyncio.Task[Any]]) -> None:
        self.routes.end()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await bus.close()
        self._client = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await self.where.close(client)

    async def _snapshot(self, client: Client) -> list[Any]:
        if self._flushed is not None:
            # After the kept messages: the snapshot's history and sequence number include them.
            await self._flushed
        keys = self.keys
        result = await client.evalsha(self._sha["snapshot"], 2, keys.seq, keys.nodes, keys.home, *self.rooms)
        assert isinstance(result, list)
        return result

    def _sync_command(self) -> Command:
        """Register (again), rewrite the counts, free what was given up and claim what was taken."""
        assert self._hub is not None
        return NodeCommands(self._hub, self.keys, self.node, self._outbox.number()).sync(
            self.rooms, self.claimed
        )

    def _counts_command(self, rooms: set[str]) -> Command:
        """The absolute socket counts of the rooms that changed, as one command."""
        assert self._hub is not None
        return NodeCommands(self._hub, self.keys, self.node, self._outbox.number()).counts(rooms)

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        timeout_ms = int(self.node_timeout * 1000)
        k = self.keys
        reap_from = loop.time() + self.node_timeout  # the others had as long to come back (a failover)
        while True:
            await asyncio.sleep(self.beat_interval)
            future: asyncio.Future[Any] = loop.create_future()
            self._outbox.send(Command("heartbeat", [k.nodes], [self.node], future=future))
            if loop.time() >= reap_from:
                self._outbox.send(Command("reap", [k.nodes, k.seq, k.channel], [k.home, timeout_ms, ""]))
            try:
                async with asyncio.timeout(self.node_timeout):
                    alive = await future
            except TimeoutError:
                raise ConnectionError(f"Redis did not answer within {self.node_timeout:g} s") from None
            if alive == 0:
                raise NodeReaped("Redis took this node for dead; registering again")

    def _go_down(self, reason: str) -> None:
        """Redis is away: serve this node's sockets alone, and make up for what was in flight."""
        was = self._state
        self._online = False
        self._state = NodeState.DOWN
        self._settled.set()
        self._buffer = None
        # Messages whose event never came back are kept for the return too (a node that got
        # one already skips the repeat by its id).
        unsure = unconfirmed_messages(self._outbox)
        for room, envelope in self._outbox.abandon():
            self.deliver_local(room, envelope)
        for room, envelope in unsure:
            self.outage.keep(room, envelope, unsure=True)
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

    # --- what comes back ------------------------------------------------------------------------

    def _on_event(self, channel: str, data: bytes) -> None:
        """An event from the node-wide channel, or from a room's."""
        hub = self._hub
        if hub is None or not self._online:
            return  # before this session registered: its snapshot covers it
        event = parse_event(data)
        if event is None:  # another version's, on the same prefix: said once a minute at most
            now = asyncio.get_running_loop().time()
            if now - self._unreadable_at > 60:
                self._unreadable_at = now
                logger.warning("broker: an event this version cannot read was skipped (another version?)")
            return
        seq, header, payload = event
        if header.node == self.node and header.n:
            self._outbox.confirm(channel, header.n)
        if channel != self.keys.channel:
            self.routes.on_room_event(seq, header, payload)
            return
        self._on_node_event(hub, seq, header, payload)
        self.routes.barrier.advance(seq)

    def _on_node_event(self, hub: Node, seq: int, header: Header, payload: bytes) -> None:
        """Presence, counts, nodes, orders and questions: the node-wide channel."""
        kind, room = header.kind, header.room
        mine = header.node == self.node
        if kind in (EventKind.ORDER, EventKind.WHO, EventKind.SOCKETS):
            self._orders.on_event(header, mine, payload)
            return
        if kind in (EventKind.CLAIMED, EventKind.FREED) and not (mine and header.quiet):
            if kind is EventKind.CLAIMED and mine:
                hub.claim_settled(room, header.key, header.nickname)
            post = None if self.routes.presence(seq, header, payload) else readable(payload, header.freed_at)
            if post is not None:
                hub.deliver(room, Envelope(post))
        if kind is EventKind.GONE and mine:
            if not self._stopping:
                self.fail(NodeReaped("Redis took this node for dead; registering again"))
            return
        if mine:
            return
        if self._buffer is not None:
            self._buffer.append((seq, header, payload))
        elif seq > self._base:
            self._mirror.apply(header, hub)
