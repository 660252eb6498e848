"""Redis away and back, with nothing lost: what a node's users say meanwhile reaches the others.

Real gischat processes on a real Redis that is killed and started again. While it is away each
node keeps its own sockets chatting and keeps what its users send (OUTAGE_BUFFER_MESSAGES,
OUTAGE_BUFFER_SECONDS); back, those messages reach the other nodes' sockets once, in each sender's
order, with their ids and timestamps, and the shared history. What the bound drops is counted
(`/status`, `/metrics`) and logged once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis_nodes import Cluster, GischatNode, RedisServer
from tcp_gate import TcpGate
from websockets.asyncio.client import connect

from gischat.broker.redis.keys import NodeKeys

from conftest import TIMEOUT, Client, text, wait_for
from wire import next_channel_frame, next_frame

pytestmark = pytest.mark.anyio

ROOM = "QGIS"


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(redis_server, tmp_path, f"o{uuid.uuid4().hex[:8]}")
    yield started
    started.stop()


@asynccontextmanager
async def socket(node: GischatNode, dialect: str) -> AsyncIterator[Client]:
    url = node.ws_url(ROOM) if dialect == "room" else node.channel_url(ROOM)
    async with connect(url, open_timeout=TIMEOUT, max_size=None) as ws:
        yield Client(ws)


async def states_are(nodes: list[GischatNode], state: str) -> None:
    async def check() -> bool:
        return all([(await node.broker())["state"] == state for node in nodes])

    await wait_for(check, 15)


async def history(node: GischatNode) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as http:
        data = (await http.get(f"/channel/{ROOM}/last")).json()
    assert isinstance(data, list)
    return data


async def texts(client: Client, count: int, channel: bool) -> list[dict[str, Any]]:
    skip = ("nb_users", "newcomer", "exiter")
    read = [
        await (next_channel_frame(client, skip) if channel else next_frame(client, skip))
        for _ in range(count)
    ]
    assert all(message["type"] == "text" for message in read), read
    return read


async def test_messages_said_while_redis_was_away_reach_the_other_node_once_in_order(
    cluster: Cluster,
) -> None:
    a_node = cluster.node(MAX_STORED_MESSAGES="50")
    b_node = cluster.node(MAX_STORED_MESSAGES="50")
    async with (
        socket(a_node, "room") as alice,
        socket(a_node, "channel") as a_watch,
        socket(b_node, "channel") as bob,
        socket(b_node, "room") as b_watch,
    ):
        await alice.register("alice")
        await bob.register("bob")
        await alice.expect("newcomer", newcomer="bob")
        await b_watch.expect("newcomer", newcomer="bob")
        await a_watch.expect("newcomer", newcomer="bob")
        cluster.redis.kill()
        try:
            await states_are([a_node, b_node], "down")
            for i in range(5):
                await alice.send(text("alice", f"a{i}"))
                await bob.send(text("bob", f"b{i}"))
            # Each node's own sockets chat on: a_watch sees alice's (with their ids), not bob's.
            seen_on_a = await texts(a_watch, 5, channel=True)
            assert [m["text"] for m in seen_on_a] == [f"a{i}" for i in range(5)]
            seen_on_b = await texts(b_watch, 5, channel=False)
            assert [m["text"] for m in seen_on_b] == [f"b{i}" for i in range(5)]
            assert [m["text"] for m in await texts(bob, 5, channel=True)] == [f"b{i}" for i in range(5)]
            assert (await a_node.broker())["kept"] == 5
        finally:
            cluster.redis.start()
        await states_are([a_node, b_node], "up")
        # Back: each node's messages reach the other's sockets, in order, with their ids and
        # timestamps; then one more message from each, and nothing in between (no repeats).
        await alice.send(text("alice", "a-after"))
        await bob.send(text("bob", "b-after"))
        on_b = await texts(bob, 7, channel=True)
        from_alice = [m for m in on_b if m["author"] == "alice"]
        assert from_alice[:5] == seen_on_a, "the same posts, ids and timestamps, in order"
        assert [m["text"] for m in from_alice] == [*(f"a{i}" for i in range(5)), "a-after"]
        assert [m["text"] for m in on_b if m["author"] == "bob"] == ["b-after"]
        on_a = await texts(a_watch, 7, channel=True)
        assert [m["text"] for m in on_a if m["author"] == "bob"] == [*(f"b{i}" for i in range(5)), "b-after"]
        assert [m["text"] for m in on_a if m["author"] == "alice"] == ["a-after"]
        assert (await a_node.broker())["kept"] == 0
        # And the shared history, on both nodes and for whoever joins next.
        for node in (a_node, b_node):
            said = [m["text"] for m in await history(node)]
            assert [t for t in said if t.startswith("a")] == [*(f"a{i}" for i in range(5)), "a-after"]
            assert [t for t in said if t.startswith("b")] == [*(f"b{i}" for i in range(5)), "b-after"]
        assert (await a_node.broker())["dropped"] == 0


async def test_what_the_bound_drops_is_counted_and_logged_once(cluster: Cluster) -> None:
    a_node = cluster.node(OUTAGE_BUFFER_MESSAGES="3", MAX_STORED_MESSAGES="50")
    b_node = cluster.node(MAX_STORED_MESSAGES="50")
    async with socket(a_node, "room") as alice, socket(b_node, "channel") as bob:
        await alice.register("alice")
        await bob.expect("newcomer", newcomer="alice")
        cluster.redis.kill()
        try:
            await states_are([a_node, b_node], "down")
            for i in range(5):
                await alice.send(text("alice", f"a{i}"))
            await texts(alice, 5, channel=False)
            status = await a_node.broker()
            assert (status["kept"], status["dropped"]) == (3, 2)
        finally:
            cluster.redis.start()
        await states_are([a_node, b_node], "up")
        await alice.send(text("alice", "a-after"))
        assert [m["text"] for m in await texts(bob, 4, channel=True)] == ["a2", "a3", "a4", "a-after"]
    async with httpx.AsyncClient(base_url=a_node.http_url, timeout=TIMEOUT) as http:
        metrics = (await http.get("/metrics")).text
    assert "gischat_broker_outage_dropped_total 2.0" in metrics
    assert a_node.output().count("OUTAGE_BUFFER_MESSAGES=3") == 1


async def test_a_node_cut_off_alone_gets_everything_said_meanwhile_beyond_the_history(
    cluster: Cluster,
) -> None:
    """One node loses Redis while the others keep it: back, its sockets get every message said
    meanwhile on the others (more than the room's history holds), once and in order, and the
    others get what its users said; the same when nodes come back one after another."""
    gate = await TcpGate(cluster.redis.port).start()
    try:
        a_node = cluster.node(MAX_STORED_MESSAGES="3")
        # Started aside: the gate relays on this loop while the node comes up.
        b_node = await asyncio.to_thread(
            cluster.node, MAX_STORED_MESSAGES="3", BROKER_URL=f"redis://127.0.0.1:{gate.port}/0"
        )
        async with socket(a_node, "room") as alice, socket(b_node, "channel") as bob:
            await alice.register("alice")
            await bob.register("bob")
            await alice.expect("newcomer", newcomer="bob")
            gate.close()
            await states_are([b_node], "down")
            await states_are([a_node], "up")
            for i in range(8):
                await alice.send(text("alice", f"a{i}"))
            for i in range(4):
                await bob.send(text("bob", f"b{i}"))
            assert [m["text"] for m in await texts(alice, 8, channel=False)] == [f"a{i}" for i in range(8)]
            assert [m["text"] for m in await texts(bob, 4, channel=True)] == [f"b{i}" for i in range(4)]
            gate.open()
            await states_are([b_node], "up")
            await alice.send(text("alice", "a-after"))
            await bob.send(text("bob", "b-after"))
            on_b = [m["text"] for m in await texts(bob, 10, channel=True)]
            assert on_b == [*(f"a{i}" for i in range(8)), "a-after", "b-after"] or (
                [t for t in on_b if t.startswith("a")] == [*(f"a{i}" for i in range(8)), "a-after"]
                and [t for t in on_b if t.startswith("b")] == ["b-after"]
            ), on_b
            on_a = [m["text"] for m in await texts(alice, 6, channel=False)]
            assert [t for t in on_a if t.startswith("b")] == [*(f"b{i}" for i in range(4)), "b-after"]
            assert [t for t in on_a if t.startswith("a")] == ["a-after"]
            # Nothing more: a repeat would be the next frame.
            await bob.send(text("bob", "last"))
            assert [m["text"] for m in await texts(bob, 1, channel=True)] == ["last"]
            assert [m["text"] for m in await texts(alice, 1, channel=False)] == ["last"]
    finally:
        await gate.stop()


async def recent_events(cluster: Cluster) -> tuple[list[str], int, int]:
    """The room's recent events as Redis holds them, the size it counts for them, and their TTL."""
    redis = Redis.from_url(cluster.redis.url)
    try:
        keys = NodeKeys.of(cluster.prefix, "")
        key = keys.recent(ROOM)
        raw = [fields[b"e"] for _, fields in await redis.xrange(key) or [] if fields]
        events = [event.decode() if isinstance(event, bytes) else event for event in raw]
        size = int(await redis.get(keys.recent_bytes(ROOM)) or 0)
        return events, size, int(await redis.pttl(key))
    finally:
        await redis.aclose()


async def test_the_recent_events_redis_keeps_are_bounded_by_count_and_age(cluster: Cluster) -> None:
    """What a node catches up from on its return costs Redis no more than the outage bounds."""
    node = cluster.node(OUTAGE_BUFFER_MESSAGES="4", OUTAGE_BUFFER_SECONDS="30")
    async with socket(node, "room") as alice:
        await alice.register("alice")
        for i in range(10):
            await alice.send(text("alice", f"a{i}"))
        await texts(alice, 10, channel=False)
    events, size, ttl = await recent_events(cluster)
    said = [f"a{i}" for i in range(6, 10)]  # the last four, oldest first
    assert len(events) == 4
    assert all(text in event for text, event in zip(said, events, strict=True))
    assert size == sum(len(event.encode()) for event in events)
    assert 0 < ttl <= 30_000


async def test_the_recent_events_redis_keeps_are_bounded_by_bytes(cluster: Cluster) -> None:
    """And by MAX_STORED_BYTES in all, as the history is: the oldest go first; a message larger
    than the bound alone is not logged (nor kept in the history)."""
    node = cluster.node(MAX_STORED_BYTES="1500", MAX_MESSAGE_LENGTH="2000")
    async with socket(node, "room") as alice:
        await alice.register("alice")
        for i in range(8):
            await alice.send(text("alice", f"a{i} " + "x" * 400))
        await alice.send(text("alice", "huge " + "y" * 1800))
        await texts(alice, 9, channel=False)
    events, size, _ = await recent_events(cluster)
    assert 0 < size <= 1500
    assert size == sum(len(event.encode()) for event in events)
    assert "a7 " in events[-1]  # the newest that fits; the huge one is not there
    assert not any("a0 " in event for event in events)


async def test_an_event_this_version_cannot_read_is_skipped(cluster: Cluster) -> None:
    """Events in another format (another version of gischat on the same prefix) on the node-wide
    channel and on a room's are skipped, said once, and the conversation goes on."""
    a_node, b_node = cluster.node(), cluster.node()
    async with socket(a_node, "room") as alice, socket(b_node, "channel") as bob:
        await alice.register("alice")
        await bob.expect("newcomer", newcomer="alice")
        redis = Redis.from_url(cluster.redis.url)
        try:
            keys = NodeKeys.of(cluster.prefix, "")
            for channel in (keys.channel, keys.room_channel(ROOM)):
                for garbage in (b"not an event", b'12 ["zz", "QGIS"]\npayload', b'x ["m"]\n'):
                    await redis.publish(channel, garbage)
        finally:
            await redis.aclose()
        await alice.send(text("alice", "still here"))
        assert [m["text"] for m in await texts(bob, 1, channel=True)] == ["still here"]
    assert (await b_node.broker())["state"] == "up"
    assert b_node.output().count("an event this version cannot read was skipped") == 1
