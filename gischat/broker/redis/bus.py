"""The channels this node reads, and the connections that read them.

On one Redis (or the primary Sentinel names) one connection carries every channel, and Redis hands
it the events of all of them in the order it ran the scripts that published them. On a Redis
Cluster the channels are sharded channels (SSUBSCRIBE): each lives on the shard that serves its
hash slot, the shard of the keys it shares a tag with, and the node holds one connection per shard
it reads from. Each channel's events still come in order; across shards nothing orders them (the
node-wide channel and a room's: `barrier.py` makes up for that where it matters).

A connection that fails, or a shard that says it no longer serves a channel (it sends the node an
`sunsubscribe` of its own: the slot moved, in a failover or a resharding), ends the session: the
next one finds the shards again and reads everything afresh. That is the engine's answer to every
loss on Redis, and it keeps this module free of repairs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from gischat.broker.redis.connection import Client, RedisTarget


class ChannelLost(ConnectionError):
    """A shard stopped serving a channel this node reads (its slot moved)."""


@dataclass(slots=True)
class Shard:
    """One connection that reads channels: the only one on one Redis, a shard's on a cluster."""

    pubsub: PubSub
    client: Redis | None  # the connection of its own, on a cluster (closed with it)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # its commands, in call order
    reader: asyncio.Task[None] | None = None
    pongs: deque[asyncio.Future[None]] = field(default_factory=deque)  # its pings, unanswered


class Bus:
    """Subscriptions, confirmed: `subscribe` returns once Redis confirmed it, `failed` raises when
    any reading connection fails; every event goes to `on_event(channel, data)`."""

    def __init__(self, target: RedisTarget, client: Client, on_event: Callable[[str, bytes], None]) -> None:
        self._target = target
        self._client = client
        self._on_event = on_event
        self._sharded = target.sharded
        self._shards: dict[str, Shard] = {}
        # Channel -> the subscriptions waiting for Redis to confirm them, in the order they were
        # sent (a channel let go of and read again at once has two).
        self._confirms: dict[str, deque[asyncio.Future[None]]] = {}
        self._leaving: dict[str, int] = {}  # channel -> unsubscriptions not confirmed yet
        self._on: dict[str, Shard] = {}  # channel -> the connection it was subscribed on
        self._failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def subscribe(self, *channels: str) -> None:
        """Subscribe to `channels`; return once Redis confirmed every one."""
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[None]] = []
        for channel in channels:
            shard = self._on[channel] = self._shard(channel)
            confirm: asyncio.Future[None] = loop.create_future()
            self._confirms.setdefault(channel, deque()).append(confirm)
            waiting.append(confirm)
            async with shard.lock:
                if self._sharded:
                    await shard.pubsub.ssubscribe(channel)
                else:
                    await shard.pubsub.subscribe(channel)
            if shard.reader is None:
                shard.reader = loop.create_task(self._read(shard))
        await asyncio.gather(*waiting)

    async def unsubscribe(self, channel: str) -> None:
        shard = self._on.get(channel)
        if shard is None:
            return
        self._leaving[channel] = self._leaving.get(channel, 0) + 1
        async with shard.lock:
            if self._sharded:
                await shard.pubsub.sunsubscribe(channel)
            else:
                await shard.pubsub.unsubscribe(channel)

    async def failed(self) -> None:
        """Wait until a reading connection fails, and raise why."""
        await asyncio.shield(self._failed)

    async def watch(self, interval: float, patience: float) -> None:
        """Ping every reading connection each `interval`; raise if one does not answer within
        `patience` seconds. A shard's primary that freezes, or is cut off without a word, keeps its
        connections open: only its silence tells, and the cluster may have promoted a replica
        that this node would otherwise never hear from."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            pongs = []
            for shard in list(self._shards.values()):
                if shard.reader is None:
                    continue
                pong: asyncio.Future[None] = loop.create_future()
                shard.pongs.append(pong)
                pongs.append(pong)
                async with shard.lock:
                    await shard.pubsub.ping()
            try:
                async with asyncio.timeout(patience):
                    await asyncio.gather(*pongs)
            except TimeoutError:
                raise ConnectionError(
                    f"a connection reading channels did not answer within {patience:g} s"
                ) from None

    async def close(self) -> None:
        """Each connection closed on its own, each within a second (one that hangs keeps no other open)."""
        for shard in self._shards.values():
            if shard.reader is not None:
                shard.reader.cancel()
                with contextlib.suppress(BaseException):
                    await shard.reader
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await shard.pubsub.aclose()
            if shard.client is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1):
                        await shard.client.aclose()
        self._shards, self._on = {}, {}
        for waiting in self._confirms.values():
            for confirm in waiting:
                confirm.cancel()
        self._confirms = {}
        if not self._failed.done():
            self._failed.cancel()

    def _shard(self, channel: str) -> Shard:
        """The connection that reads `channel`: on a cluster, the one to the shard serving its slot."""
        client = self._client
        if not isinstance(client, RedisCluster):
            shard = self._shards.get("")
            if shard is None:
                shard = self._shards[""] = Shard(client.pubsub(), None)
            return shard
        node = client.get_node_from_key(channel)
        if node is None:
            raise ChannelLost(f"no shard of the cluster serves the slot of {channel!r}")
        shard = self._shards.get(node.name)
        if shard is None:
            own = self._target.shard_client(node.host, int(node.port))
            shard = self._shards[node.name] = Shard(own.pubsub(), own)
        return shard

    async def _read(self, shard: Shard) -> None:
        try:
            while True:
                message = await shard.pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "pong":
                    if shard.pongs:
                        pong = shard.pongs.popleft()
                        if not pong.done():
                            pong.set_result(None)
                    continue
                self._take(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._failed.done():
                self._failed.set_exception(exc)

    def _take(self, message: dict[str, object]) -> None:
        kind, raw = message["type"], message["channel"]
        channel = raw.decode() if isinstance(raw, bytes) else str(raw)
        if kind in ("message", "smessage"):
            data = message["data"]
            if isinstance(data, bytes):
                self._on_event(channel, data)
        elif kind in ("subscribe", "ssubscribe"):
            waiting = self._confirms.get(channel)
            if waiting:
                confirm = waiting.popleft()
                if not waiting:
                    del self._confirms[channel]
                if not confirm.done():
                    confirm.set_result(None)
        elif kind in ("unsubscribe", "sunsubscribe"):
            leaving = self._leaving.get(channel, 0)
            if leaving <= 0:
                raise ChannelLost(f"the cluster no longer serves {channel!r} where this node read it")
            if leaving == 1:
                del self._leaving[channel]
            else:
                self._leaving[channel] = leaving - 1
