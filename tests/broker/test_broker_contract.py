"""The broker contract: what every `Broker` promises the hub, tested against each implementation.

The hub (`gischat.rooms.hub.Hub`) is written against the `Broker` protocol only, so every
implementation must behave the same wherever the hub can tell. These tests drive the brokers
directly, without websockets or the hub: each broker is built by `create_broker(settings)`,
exactly as the app builds it, and started with a `RecordingNode`, a fake hub that records every
call the broker makes, in order, and lets a test wait for a call (never for a fixed time).

Most contracts are parametrized over `memory://` and a real Redis (or valkey) server, started
once for the module; every test gets its own key prefix, so tests never see each other's
nodes, nicknames or history. The contracts about several nodes exist only where there can be
several nodes: their tests start two Redis brokers on one prefix, are named `test_redis_...`
and sit in the last section of this file. Without a Redis server the Redis cases skip, except
under CI (`CI=true`), where they fail (see `redis_nodes.require_redis`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import orjson
import pytest
from cluster_nodes import ClusterServers
from redis.asyncio import Redis
from redis_nodes import RedisServer

from gischat.broker import Broker, BrokerSettings, Envelope, Node, create_broker
from gischat.broker.base import Order, OrderKind
from gischat.protocol import dialects
from gischat.protocol.dialects import Post
from gischat.settings import project

from conftest import TIMEOUT, make_settings, wait_for

pytestmark = pytest.mark.anyio

ROOM = "QGIS"
OTHER_ROOM = "Living room"  # a room name with a space: it travels in headers and keys as well
QUIET_ROOM = "Field and mobile"  # nothing is ever published there

# Everything a recipient can tell about a delivered envelope: its room, the post's kind, id,
# timestamp, body, style and reply, and the envelope's `to` and `keep`.
Shape: TypeAlias = tuple[str, str, str, int, str, str | None, str | None, str | None, bool]


def shape(room: str, envelope: Envelope) -> Shape:
    post = envelope.post
    return (
        room,
        post.kind,
        post.id,
        post.timestamp,
        post.body,
        post.style,
        post.reply,
        envelope.to,
        envelope.keep,
    )


def post_shape(post: Post) -> tuple[str, str, int, str, str | None, str | None]:
    return (post.kind, post.id, post.timestamp, post.body, post.style, post.reply)


def sample(i: int, author: str = "alice", keep: bool | None = None) -> Envelope:
    """The `i`-th of a varied series: plain texts, a layer with a style, replies, likes for one
    nickname; non-ASCII text and an escaped newline in the body; a timestamp of its own (so a
    broker that stamps posts again is caught)."""
    kind = ("text", "geojson", "text", "like")[i % 4]
    body = f'"author":"{author}","avatar":null,"text":"n° {i}: héllo wörld 🌍\\nsecond line"'
    style = ',"style":{"fill":"#ff0000","stroke":null}' if kind == "geojson" else None
    reply = str(uuid.uuid4()) if i % 4 == 2 else None
    to = "bob" if kind == "like" else None
    kept = (kind != "like" and i % 3 != 0) if keep is None else keep
    post = Post(kind, body, style, reply, id=str(uuid.uuid4()), timestamp=1_700_000_000 + i)
    return Envelope(post, to, kept)


def marker(name: str) -> Envelope:
    """A message whose arrival proves that everything published before it has been handled."""
    return Envelope(Post("text", f'"author":"marker","avatar":null,"text":"{name}"'))


class RecordingNode:
    """A `Node` that records every call of its broker, in order, and lets a test wait for one.

    `counts` and `nicknames` are what it reports about "its own sockets" (`local_count`,
    `local_nicknames`): a test sets them, as the hub's rooms would change.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: dict[str, int] = {}
        self.nicknames: list[tuple[str, str, str]] = []
        self.deliveries: list[tuple[str, Envelope]] = []
        self.settled: list[tuple[str, str, str]] = []
        self.remote_changes: list[str] = []
        self.revoked: list[tuple[str, str, str]] = []
        self.histories: dict[str, list[Post]] = {}
        self.orders: list[Order] = []
        # Every call, in order: ("deliver", post id), ("settled", key), ("remote", room)...
        self.log: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def _record(self, call: str, detail: str) -> None:
        self.log.append((call, detail))
        self._changed.set()

    # The Node protocol.

    def deliver(self, room: str, envelope: Envelope) -> None:
        self.deliveries.append((room, envelope))
        self._record("deliver", envelope.post.id)

    def claim_settled(self, room: str, key: str, nickname: str) -> None:
        self.settled.append((room, key, nickname))
        self._record("settled", key)

    def remote_changed(self, room: str) -> None:
        self.remote_changes.append(room)
        self._record("remote", room)

    def local_count(self, room: str) -> int:
        return self.counts.get(room, 0)

    def local_nicknames(self) -> list[tuple[str, str, str]]:
        return list(self.nicknames)

    def revoke(self, room: str, key: str, reason: str) -> None:
        self.revoked.append((room, key, reason))
        self._record("revoke", key)

    def reset_history(self, room: str, posts: list[Post]) -> None:
        self.histories[room] = list(posts)
        self._record("history", room)

    def obey(self, order: Order) -> None:
        self.orders.append(order)
        self._record("order", order.kind)

    def describe(self, room: str) -> list[dict[str, Any]]:
        return [{"node": self.name, "room": room}] if self.counts.get(room) else []

    # What tests look at.

    def shapes(self, room: str | None = None) -> list[Shape]:
        return [shape(r, e) for r, e in self.deliveries if room is None or r == room]

    def ids(self) -> list[str]:
        return [envelope.post.id for _, envelope in self.deliveries]

    def index(self, post: Post) -> int:
        """Where `post` is in the order of deliveries (it must have been delivered exactly once)."""
        ids = self.ids()
        assert ids.count(post.id) == 1, f"{self.name}: {post.kind} {post.id} delivered {ids.count(post.id)}x"
        return ids.index(post.id)

    def delivered(self, post: Post) -> Envelope:
        return self.deliveries[self.index(post)][1]

    async def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        """Wait until `predicate()` holds, checking again after every call the broker makes.

        Everything a broker learns from elsewhere comes with a call to its node (a delivery, a
        `remote_changed`), so waking up on calls is enough: no polling, no sleeping.
        """
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            calls = self.log[-8:]
            raise AssertionError(f"{self.name}: {what} not seen in {timeout:g} s (last: {calls})") from None

    async def received(self, *posts: Post) -> None:
        """Wait until every one of `posts` has been delivered."""
        wanted = {post.id for post in posts}
        await self.wait_until(lambda: wanted <= set(self.ids()), f"delivery of {len(wanted)} posts")


if __debug__:  # mypy --strict checks that the fake implements the whole protocol
    _node: Node = RecordingNode("type check")


@dataclass
class Nodes:
    """Brokers on one URL and key prefix, each with its own recording node; stopped after the test."""

    url: str
    prefix: str = field(default_factory=lambda: f"contract-{uuid.uuid4().hex[:12]}")
    started: list[Broker] = field(default_factory=list)

    @property
    def redis(self) -> bool:
        return not self.url.startswith("memory://")

    @property
    def sharded(self) -> bool:
        """A Redis Cluster: rooms on different shards, each in its own order."""
        return self.url.startswith("redis+cluster://")

    async def start(
        self, name: str, attend: tuple[str, ...] = (ROOM, OTHER_ROOM, QUIET_ROOM), **settings: Any
    ) -> tuple[Broker, RecordingNode]:
        """A broker started with its recording node, attending `attend` (as the hub attends a room
        before a socket joins it: an engine may carry a node only the rooms it attends)."""
        node = RecordingNode(name)
        broker = create_broker(
            project(
                BrokerSettings, make_settings(broker_url=self.url, redis_key_prefix=self.prefix, **settings)
            )
        )
        await broker.start(node)
        self.started.append(broker)
        # `start` returns once the broker serves; with a reachable Redis, as part of the service.
        assert broker.healthy, f"{name} did not join the service: {broker.status()}"
        for room in attend:
            await broker.attend(room)
        return broker, node

    async def stop(self) -> None:
        for broker in reversed(self.started):
            await broker.stop()  # stopping twice is harmless: some tests stop a node themselves


def engine_url(request: pytest.FixtureRequest, engine: str) -> str:
    """The broker URL of an engine; its server is started only for the tests that need it."""
    if engine == "memory":
        return "memory://"
    if engine == "cluster":
        servers = request.getfixturevalue("redis_cluster")
        assert isinstance(servers, ClusterServers)
        return servers.url
    server = request.getfixturevalue("redis_server")
    assert isinstance(server, RedisServer)
    return server.url


@pytest.fixture(params=["memory", "redis", "cluster"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each implementation in turn: memory, one Redis, a Redis Cluster."""
    return engine_url(request, request.param)


@pytest.fixture
async def nodes(broker_url: str) -> AsyncIterator[Nodes]:
    started = Nodes(broker_url)
    yield started
    await started.stop()


@pytest.fixture(params=["redis", "cluster"])
async def redis_nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    """Several nodes on one Redis, then on a Redis Cluster."""
    started = Nodes(engine_url(request, request.param))
    yield started
    await started.stop()


async def settle(broker: Broker, node: RecordingNode, name: str = "settle") -> None:
    """Publish a marker and wait for it: whatever the broker had queued before has been handled."""
    flag = marker(name)
    broker.publish(ROOM, flag)
    await node.received(flag.post)


# --- every broker ------------------------------------------------------------------------------


async def test_publish_order_and_content(nodes: Nodes) -> None:
    """Envelopes published in a row come back to `deliver`, in the room they were published to,
    in the order they were published, each exactly once and unchanged: the post's kind, id,
    timestamp, body, style and reply, the envelope's `to` and `keep`.

    Why: one sender's messages must read in the order they were written, and every node renders
    a post from what the broker carried (the 3.x dialect shows its id and timestamp, replies
    point to ids, likes go to `to` only, `keep` decides what enters history)."""
    broker, node = await nodes.start("only")
    sent = [(ROOM if i % 3 else OTHER_ROOM, sample(i)) for i in range(40)]
    for room, envelope in sent:
        broker.publish(room, envelope)  # never awaited: publishing must not wait

    await node.received(*(envelope.post for _, envelope in sent))
    for room in (ROOM, OTHER_ROOM):
        assert node.shapes(room) == [shape(to, envelope) for to, envelope in sent if to == room]
    if not nodes.sharded:  # on a cluster each room has its own order, on its own shard
        assert node.shapes() == [shape(room, envelope) for room, envelope in sent]
    assert node.shapes(QUIET_ROOM) == []


async def test_keep_is_carried_both_ways(nodes: Nodes) -> None:
    """`keep` arrives as it was published, True as well as False, for any kind.

    Why: the hub adds exactly the kept envelopes to its room's history; a broker that drops or
    invents `keep` would leave what people said out of history, or put bookkeeping in it."""
    broker, node = await nodes.start("only")
    sent = [sample(i, keep=i % 2 == 0) for i in range(8)]
    for envelope in sent:
        broker.publish(ROOM, envelope)

    await node.received(*(envelope.post for envelope in sent))
    assert [node.delivered(envelope.post).keep for envelope in sent] == [envelope.keep for envelope in sent]


async def test_first_claim_wins_and_announces_after_what_came_before(nodes: Nodes) -> None:
    """A first claim of a nickname key wins (True) and its payload, the `newcomer`, is delivered
    once, unchanged, as bookkeeping (no `to`, not kept), after everything published before the
    claim and before everything published after it returned.

    Why: the hub tells a socket it is registered once `claim` returns True, and the room must
    see the `newcomer` where it happened, not ahead of that socket's earlier messages."""
    broker, node = await nodes.start("only")
    before = [sample(i, keep=True) for i in range(3)]
    for envelope in before:
        broker.publish(ROOM, envelope)
    newcomer = dialects.newcomer("Alice")

    assert await broker.claim(ROOM, "alice", "Alice", newcomer) is True
    after = marker("after")
    broker.publish(ROOM, after)

    await node.received(newcomer, after.post)
    assert node.ids() == [*(envelope.post.id for envelope in before), newcomer.id, after.post.id]
    assert shape(ROOM, node.delivered(newcomer)) == shape(ROOM, Envelope(newcomer))


async def test_release_announces_exiter_and_frees_the_nickname(nodes: Nodes) -> None:
    """`release` delivers its payload, the `exiter`, unchanged and as bookkeeping; the nickname
    can then be claimed again at once, and that claim's `newcomer` comes after the `exiter`.

    Why: a person who leaves and comes back (a reconnecting client, at once) must get their
    nickname back, and the room must read "left, joined", never "joined, left"."""
    broker, node = await nodes.start("only")
    first, exiter, second = dialects.newcomer("Alice"), dialects.exiter("Alice"), dialects.newcomer("alice")
    assert await broker.claim(ROOM, "alice", "Alice", first) is True

    broker.release(ROOM, "alice", "Alice", exiter)
    assert await broker.claim(ROOM, "alice", "alice", second) is True  # not waiting for the exiter

    await node.received(first, exiter, second)
    assert node.index(first) < node.index(exiter) < node.index(second)
    assert shape(ROOM, node.delivered(exiter)) == shape(ROOM, Envelope(exiter))


async def test_claim_settled_only_for_won_claims_and_before_their_newcomer(nodes: Nodes) -> None:
    """If a broker calls `claim_settled`, it is for this node's own won claim, with its room, key
    and nickname, once, and before that claim's `newcomer` is delivered.

    Why: the hub gives the nickname to the claiming socket there, so that a like right behind
    the `newcomer` finds it. (The memory broker never calls it: its claim is decided in the
    calling step and the hub registers the nickname on the return of `claim`.)"""
    broker, node = await nodes.start("only")
    newcomer = dialects.newcomer("Alice")
    assert await broker.claim(OTHER_ROOM, "alice", "Alice", newcomer) is True
    await node.received(newcomer)

    assert node.settled in ([], [(OTHER_ROOM, "alice", "Alice")])
    if nodes.redis:
        assert node.settled, "a shared broker must settle the claim in the stream"
    if node.settled:
        assert node.log.index(("settled", "alice")) < node.log.index(("deliver", newcomer.id))


async def test_own_claims_are_not_remote(nodes: Nodes) -> None:
    """`remote_owner` and `remote_users` never report this node's own nicknames.

    Why: the hub lists and checks its own nicknames itself and adds the remote ones: a broker
    that mirrored its own node would list every local user twice, and lock people out of the
    nickname they hold."""
    broker, node = await nodes.start("only")
    newcomer = dialects.newcomer("Alice")
    assert await broker.claim(ROOM, "alice", "Alice", newcomer) is True
    await node.received(newcomer)
    await settle(broker, node)

    assert broker.remote_owner(ROOM, "alice") is None
    assert broker.remote_users(ROOM) == []
    assert broker.remote_users(QUIET_ROOM) == []


async def test_own_count_is_not_remote(nodes: Nodes) -> None:
    """`count_changed` with sockets on this node leaves this node's `remote_count` at 0.

    Why: a room's count is the local sockets plus `remote_count`; counting one's own sockets as
    remote would double every count. With the memory broker there are no other nodes at all."""
    broker, node = await nodes.start("only")
    node.counts[ROOM] = 3
    broker.count_changed(ROOM)
    await settle(broker, node)

    assert broker.remote_count(ROOM) == 0
    assert broker.remote_count(QUIET_ROOM) == 0


async def test_status_and_health(nodes: Nodes) -> None:
    """`status()` is None for the single-process memory broker (nothing to add to `/status`) and a
    dict for Redis (its state and this node's id); both are `healthy` once started, and a
    stopped Redis node is not part of the service any more.

    Why: `/status` and the readiness check report these as they are; a load balancer takes a
    node that says it is unhealthy out of rotation."""
    broker, _ = await nodes.start("only")
    assert broker.healthy is True
    status = broker.status()
    if not nodes.redis:
        assert status is None
    else:
        assert isinstance(status, dict)
        assert status["state"] == "up"
        assert isinstance(status["node"], str)
        assert status["node"]
        assert status["nodes"] == 1
        assert "@" not in str(status["url"])  # where it is, never credentials

    await broker.stop()
    if nodes.redis:
        assert broker.healthy is False


async def test_stopped_broker_calls_its_node_no_more(nodes: Nodes) -> None:
    """After `stop()`, publishing, claiming and releasing neither fail nor reach the node.

    Why: the hub stops its broker while the last sockets are going away and may still publish
    their departures; the stopped node must neither crash nor deliver into closed rooms."""
    broker, node = await nodes.start("only")
    await broker.stop()
    calls = list(node.log)

    broker.publish(ROOM, sample(0))
    broker.release(ROOM, "alice", "Alice", dialects.exiter("Alice"))
    broker.count_changed(ROOM)
    assert node.log == calls


async def test_memory_delivers_in_the_publishing_step() -> None:
    """Memory only: publishing is delivering, in the same step, so a message reaches the local
    sockets before `publish` returns and a claim's `newcomer` before `claim` returns.

    Why: with one process nothing needs to travel, and the hub relies on it: a socket
    registered through the memory broker is registered when `claim` returns."""
    broker = create_broker(project(BrokerSettings, make_settings(broker_url="memory://")))
    node = RecordingNode("only")
    await broker.start(node)
    envelope = sample(0)

    broker.publish(ROOM, envelope)
    assert node.shapes() == [shape(ROOM, envelope)]
    newcomer = dialects.newcomer("Alice")
    assert await broker.claim(ROOM, "alice", "Alice", newcomer) is True
    assert node.ids()[-1] == newcomer.id
    assert broker.remote_owner(ROOM, "alice") is None
    assert broker.remote_users(ROOM) == []
    assert node.histories == {}  # history stays in the hub: nothing shared to reset it from
    await broker.stop()


# --- several nodes: Redis only ------------------------------------------------------------------


async def test_redis_one_order_for_every_node(redis_nodes: Nodes) -> None:
    """Redis only: two nodes publishing at once see one and the same order, each node's own
    messages in the order it published them, all content unchanged.

    Why: a conversation reads the same on every node; replies and likes refer to ids that must
    mean the same post everywhere."""
    one, first = await redis_nodes.start("one")
    two, second = await redis_nodes.start("two")
    mine = [sample(i, "alice") for i in range(30)]
    theirs = [sample(i, "bob") for i in range(30)]
    for a, b in zip(mine, theirs, strict=True):
        one.publish(ROOM, a)
        two.publish(ROOM, b)

    everything = [envelope.post for envelope in (*mine, *theirs)]
    await first.received(*everything)
    await second.received(*everything)
    assert first.shapes() == second.shapes()
    assert len(first.shapes()) == len(everything)
    for sent in (mine, theirs):
        ids = {envelope.post.id for envelope in sent}
        assert [s for s in first.shapes() if s[2] in ids] == [shape(ROOM, e) for e in sent]


async def test_redis_one_winner_per_nickname(redis_nodes: Nodes) -> None:
    """Redis only: when two nodes claim the same nickname key at once, exactly one claim wins;
    only the winner's `newcomer` is delivered (on both nodes) and only the winner's node is
    told `claim_settled`. A later claim of a held key loses, even from a node whose mirror has
    not caught up, and publishes nothing.

    Why: a nickname is one person's in the whole service, whichever node each socket reached."""
    one, first = await redis_nodes.start("one")
    two, second = await redis_nodes.start("two")
    keys = [f"nick{i}" for i in range(6)]
    ours = {key: dialects.newcomer(key.upper()) for key in keys}
    others = {key: dialects.newcomer(key.capitalize()) for key in keys}

    results = await asyncio.gather(
        *(one.claim(ROOM, key, key.upper(), ours[key]) for key in keys),
        *(two.claim(ROOM, key, key.capitalize(), others[key]) for key in keys),
    )
    won_one, won_two = results[: len(keys)], results[len(keys) :]
    late = dialects.newcomer("NICK0")
    assert await two.claim(ROOM, "nick0", "NICK0", late) is False  # whoever holds it, it is held
    # Anything the losing claims published would be in the stream before these markers.
    flags = [marker("one"), marker("two")]
    one.publish(ROOM, flags[0])
    two.publish(ROOM, flags[1])
    for node in (first, second):
        await node.received(*(flag.post for flag in flags))

    for key, a, b in zip(keys, won_one, won_two, strict=True):
        assert [a, b].count(True) == 1, f"{key}: {a=} {b=}"
        winner, loser = (ours[key], others[key]) if a else (others[key], ours[key])
        for node in (first, second):
            node.index(winner)
            assert loser.id not in node.ids(), f"{node.name} got the losing newcomer for {key}"
        settled_on, idle = (first, second) if a else (second, first)
        assert settled_on.settled.count((ROOM, key, winner_name(winner))) == 1
        assert all(k != key for _, k, _ in idle.settled)
    for node in (first, second):
        assert late.id not in node.ids()


def winner_name(newcomer: Post) -> str:
    """The nickname a `newcomer` post announces."""
    prefix = '"newcomer":"'
    start = newcomer.body.index(prefix) + len(prefix)
    return newcomer.body[start : newcomer.body.index('"', start)]


async def test_redis_exiter_precedes_next_claim_across_nodes(redis_nodes: Nodes) -> None:
    """Redis only: a nickname released on one node can be claimed on the other, and every node
    reads the `exiter` before the new `newcomer`.

    Why: the second node decides the nickname is free from its mirror (as the hub does through
    `remote_owner`); the stream must agree with that decision on every node."""
    one, first = await redis_nodes.start("one")
    two, second = await redis_nodes.start("two")
    newcomer, exiter = dialects.newcomer("Alice"), dialects.exiter("Alice")
    assert await one.claim(ROOM, "alice", "Alice", newcomer) is True
    await second.wait_until(lambda: two.remote_owner(ROOM, "alice") == "Alice", "Alice held on node one")

    one.release(ROOM, "alice", "Alice", exiter)
    await second.wait_until(lambda: two.remote_owner(ROOM, "alice") is None, "Alice freed")
    again = dialects.newcomer("alice")
    assert await two.claim(ROOM, "alice", "alice", again) is True

    for node in (first, second):
        await node.received(newcomer, exiter, again)
        assert node.index(newcomer) < node.index(exiter) < node.index(again)
        assert shape(ROOM, node.delivered(exiter)) == shape(ROOM, Envelope(exiter))
    await first.wait_until(lambda: one.remote_owner(ROOM, "alice") == "alice", "alice held on node two")


async def test_redis_counts_cross_nodes(redis_nodes: Nodes) -> None:
    """Redis only: after `count_changed`, the node's `local_count` becomes the other nodes'
    `remote_count` (absolute numbers, the latest one wins), and they are told `remote_changed`;
    both nodes add up to the same room total.

    Why: `nb_users` counts every socket of a room, on every node."""
    one, first = await redis_nodes.start("one")
    two, second = await redis_nodes.start("two")
    first.counts = {ROOM: 3, OTHER_ROOM: 1}
    one.count_changed(ROOM)
    one.count_changed(OTHER_ROOM)
    await second.wait_until(
        lambda: (two.remote_count(ROOM), two.remote_count(OTHER_ROOM)) == (3, 1), "node one's counts"
    )
    assert {ROOM, OTHER_ROOM} <= set(second.remote_changes)
    assert two.remote_count(QUIET_ROOM) == 0

    first.counts[ROOM] = 1
    one.count_changed(ROOM)
    second.counts[ROOM] = 2
    two.count_changed(ROOM)
    await second.wait_until(lambda: two.remote_count(ROOM) == 1, "node one's new count")
    await first.wait_until(lambda: one.remote_count(ROOM) == 2, "node two's count")
    assert one.remote_count(ROOM) + first.counts[ROOM] == two.remote_count(ROOM) + second.counts[ROOM]


async def test_redis_remote_nicknames(redis_nodes: Nodes) -> None:
    """Redis only: `remote_owner` and `remote_users` show the other node's nicknames, per room,
    under the nickname key, with the nickname as registered; they go when released.

    Why: the hub refuses a nickname held elsewhere and lists every user of the room without
    asking Redis, from this mirror."""
    one, _ = await redis_nodes.start("one")
    two, second = await redis_nodes.start("two")
    assert await one.claim(ROOM, "alice", "Alice", dialects.newcomer("Alice")) is True
    assert await one.claim(OTHER_ROOM, "bob", "Bob", dialects.newcomer("Bob")) is True

    await second.wait_until(
        lambda: two.remote_owner(ROOM, "alice") == "Alice" and two.remote_owner(OTHER_ROOM, "bob") == "Bob",
        "node one's nicknames",
    )
    assert two.remote_users(ROOM) == ["Alice"]
    assert two.remote_users(OTHER_ROOM) == ["Bob"]
    assert two.remote_owner(ROOM, "bob") is None
    assert two.remote_users(QUIET_ROOM) == []

    one.release(ROOM, "alice", "Alice", dialects.exiter("Alice"))
    await second.wait_until(lambda: two.remote_owner(ROOM, "alice") is None, "Alice released")
    assert two.remote_users(ROOM) == []
    assert two.remote_users(OTHER_ROOM) == ["Bob"]


async def test_redis_history_for_a_later_node(redis_nodes: Nodes) -> None:
    """Redis only: kept envelopes are shared history; a node started later gets, through
    `reset_history`, the last MAX_STORED_MESSAGES kept posts of each room, in order and
    unchanged, and nothing that was not kept (bookkeeping, `newcomer`s). The first node of a
    fresh service is reset to empty rooms.

    Why: a socket that joins on any node is welcomed with the same recent conversation."""
    one, first = await redis_nodes.start("one", max_stored_messages=3)
    assert first.histories == {room: [] for room in (ROOM, OTHER_ROOM, QUIET_ROOM)}
    sent = [sample(i, keep=i not in (2, 5)) for i in range(8)]
    newcomer = dialects.newcomer("Alice")
    for envelope in sent[:4]:
        one.publish(ROOM, envelope)
    assert await one.claim(ROOM, "alice", "Alice", newcomer) is True
    for envelope in sent[4:]:
        one.publish(ROOM, envelope)
    elsewhere = sample(100, keep=True)
    one.publish(OTHER_ROOM, elsewhere)
    await first.received(*(envelope.post for envelope in sent), elsewhere.post)

    _, second = await redis_nodes.start("two", max_stored_messages=3)
    kept = [envelope.post for envelope in sent if envelope.keep]
    assert [post_shape(post) for post in second.histories[ROOM]] == [post_shape(post) for post in kept[-3:]]
    assert [post_shape(post) for post in second.histories[OTHER_ROOM]] == [post_shape(elsewhere.post)]
    assert second.histories[QUIET_ROOM] == []
    assert second.deliveries == []  # history comes through reset_history, not as live messages


async def test_redis_a_node_receives_only_the_rooms_it_attends(redis_nodes: Nodes) -> None:
    """Redis only: a node receives the messages of the rooms it attends, not the others'; it
    keeps receiving a room while it has sockets there, stops a linger after the last one left,
    and attending again brings the room's history as it is by then. Presence (counts,
    nicknames) reaches every node whatever it attends.

    Why: a node pays only for the rooms it serves, so that adding nodes adds capacity."""
    one, first = await redis_nodes.start("one", attend=(ROOM,), redis_room_linger=0.2, max_stored_messages=10)
    two, second = await redis_nodes.start("two", max_stored_messages=10)
    first.counts[ROOM] = 1  # a socket of its own there: it reads ROOM for as long
    one.count_changed(ROOM)
    elsewhere = [sample(i, keep=True) for i in range(3)]
    here = [sample(i) for i in range(3, 6)]
    for a, b in zip(elsewhere, here, strict=True):
        two.publish(OTHER_ROOM, a)
        two.publish(ROOM, b)
    await second.received(*(e.post for e in (*elsewhere, *here)))
    await first.received(*(e.post for e in here))
    assert first.shapes(OTHER_ROOM) == []
    status = one.status()
    assert status is not None
    assert status["reading"] == [ROOM]
    # Presence is node-wide: a claim in a room it does not read is known to it.
    assert await two.claim(OTHER_ROOM, "carol", "Carol", dialects.newcomer("Carol")) is True
    await first.wait_until(lambda: one.remote_owner(OTHER_ROOM, "carol") == "Carol", "Carol's claim")

    # Its socket gone, the linger passes: ROOM is no longer read.
    first.counts[ROOM] = 0
    one.count_changed(ROOM)
    await wait_for(lambda: (one.status() or {})["reading"] == [], 5)  # nothing tells the node
    later = sample(8, keep=True)
    two.publish(ROOM, later)
    await settle(two, second)
    # Attending again: ROOM's history as it is now, including what was said meanwhile.
    await one.attend(ROOM)
    assert later.post.id in [post.id for post in first.histories[ROOM]]
    assert later.post.id not in first.ids()  # history comes through reset_history, not as live
    after = sample(9)
    two.publish(ROOM, after)
    await first.received(after.post)


async def test_redis_attending_while_messages_flow_misses_nothing(redis_nodes: Nodes) -> None:
    """Redis only: a node that starts reading a room while another node publishes into it
    has each message once, either in the history it is given or delivered after it.

    Why: a socket that joins while its node subscribes must miss nothing."""
    one, first = await redis_nodes.start("one", attend=(), max_stored_messages=1000)
    two, second = await redis_nodes.start("two", max_stored_messages=1000)
    sent = [sample(i, keep=True) for i in range(200)]

    async def publish() -> None:
        for envelope in sent:
            two.publish(ROOM, envelope)
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(publish())
    await asyncio.sleep(0)
    await one.attend(ROOM)
    await task
    history = [post.id for post in first.histories[ROOM]]
    await second.received(*(envelope.post for envelope in sent))
    await first.wait_until(
        lambda: len(set(history) | set(first.ids())) == len(sent), "every message, one way or the other"
    )
    assert not set(history) & set(first.ids()), "a message both in the history and delivered"
    assert history + first.ids() == [envelope.post.id for envelope in sent], "in order"


async def test_redis_stop_releases_nicknames_and_counts(redis_nodes: Nodes) -> None:
    """Redis only: when a node stops, the others see its users go at once (not after
    NODE_TIMEOUT): an `exiter` for each of its nicknames, its nicknames free to claim, its
    sockets out of `remote_count`, one node less in `status()`; and what the stopped node
    publishes afterwards reaches nobody.

    Why: a restart or a scale-down must not lock people out of their nicknames nor leave ghost
    users in the counts."""
    one, first = await redis_nodes.start("one")
    two, second = await redis_nodes.start("two")
    first.counts[ROOM] = 2
    one.count_changed(ROOM)
    assert await one.claim(ROOM, "alice", "Alice", dialects.newcomer("Alice")) is True
    await second.wait_until(
        lambda: two.remote_owner(ROOM, "alice") == "Alice" and two.remote_count(ROOM) == 2, "node one"
    )
    status = two.status()
    assert status is not None
    assert status["nodes"] == 2

    await one.stop()
    await second.wait_until(
        lambda: two.remote_owner(ROOM, "alice") is None and two.remote_count(ROOM) == 0, "node one gone"
    )
    exits = [e for _, e in second.deliveries if e.post.kind == "exiter" and '"exiter":"Alice"' in e.post.body]
    assert len(exits) == 1
    assert (exits[0].to, exits[0].keep) == (None, False)
    assert two.remote_users(ROOM) == []
    status = two.status()
    assert status is not None
    assert status["nodes"] == 1

    ghost = sample(0)
    one.publish(ROOM, ghost)
    assert await two.claim(ROOM, "alice", "alice", dialects.newcomer("alice")) is True
    await settle(two, second)
    assert ghost.post.id not in second.ids()


# --- moderators' orders -------------------------------------------------------------------------


def ban(ban_id: str, until: float) -> dict[str, Any]:
    return {"id": ban_id, "nickname": "troll", "address": None, "room": None, "until": until, "reason": "x"}


async def test_orders_reach_every_node_in_order_with_messages(nodes: Nodes) -> None:
    """An order comes back to `obey` on every node, this one included, between the messages
    published around it: a kick lands after what the kicked person said before it."""
    broker, node = await nodes.start("first")
    others = [await nodes.start("second")] if nodes.redis else []
    before, after = sample(1), sample(2)
    broker.publish(ROOM, before)
    broker.order(Order(OrderKind.KICK, ROOM, {"nickname": "troll", "reason": "spam"}))
    broker.publish(ROOM, after)
    for each in [node, *(other for _, other in others)]:
        await each.received(before.post, after.post)
        calls = [call for call in each.log if call[0] in ("deliver", "order")]
        assert calls == [("deliver", before.post.id), ("order", "kick"), ("deliver", after.post.id)]
        assert each.orders == [Order(OrderKind.KICK, ROOM, {"nickname": "troll", "reason": "spam"})]


async def test_redis_keeps_bans_for_nodes_to_come_until_they_end(redis_nodes: Nodes) -> None:
    broker, node = await redis_nodes.start("first")
    broker.order(Order(OrderKind.BAN, None, ban("kept", time.time() + 600)))
    broker.order(Order(OrderKind.BAN, None, ban("ended", time.time() - 1)))
    broker.order(Order(OrderKind.BAN, None, ban("lifted", time.time() + 600)))
    broker.order(Order(OrderKind.LIFT, None, {"id": "lifted"}))
    await settle(broker, node)
    later, _ = await redis_nodes.start("later")
    assert [item["id"] for item in await later.load_bans()] == ["kept"]


async def test_redis_gathers_every_nodes_sockets(redis_nodes: Nodes) -> None:
    first, first_node = await redis_nodes.start("first")
    second, second_node = await redis_nodes.start("second")
    second_node.counts[ROOM] = 1
    second.count_changed(ROOM)
    await first_node.wait_until(lambda: first.remote_count(ROOM) == 1, "the second node's count")
    assert await first.gather(ROOM) == [{"node": "second", "room": ROOM}]
    assert await first.gather(QUIET_ROOM) == []


async def test_redis_carries_over_what_an_earlier_version_kept(redis_server: RedisServer) -> None:
    """On one Redis, a room's history and the bans an earlier gischat kept under names with no
    hash tag are the service's after the upgrade, and Redis holds them under the new names only.

    Why: an operator upgrading must not lose the conversation or let banned people back in."""
    nodes = Nodes(redis_server.url)
    client = Redis.from_url(redis_server.url)
    said = sample(1, keep=True).post
    kept_ban = ban("kept", time.time() + 600)
    try:
        await client.rpush(f"{nodes.prefix}:history:{ROOM}", said.encode())
        await client.hset(
            f"{nodes.prefix}:bans", "kept", orjson.dumps({"kind": "ban", "room": None, "args": kept_ban})
        )
        broker, node = await nodes.start("upgraded", max_stored_messages=10)
        assert [post.id for post in node.histories[ROOM]] == [said.id]
        assert await broker.load_bans() == [kept_ban]
        assert await client.exists(f"{nodes.prefix}:history:{ROOM}", f"{nodes.prefix}:bans") == 0
    finally:
        await nodes.stop()
        await client.aclose()
