"""Per-room routing on Redis: a room a node's socket is in is read, whatever happened to the
subscription meanwhile (a linger that passed during a handshake, a room attended while the node
was subscribing again after an outage, or let go of and attended again before Redis answered);
what comes while a room's history loads keeps Redis's order; an HTTP reply checks its target in
the room's current history.

Real brokers on a real Redis, driven with the contract's recording nodes (`test_broker_contract`);
one of them reaches Redis through a `TcpGate`, to be cut off alone and come back. The HTTP test
runs real `gischat` processes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis_nodes import Cluster, RedisServer
from tcp_gate import TcpGate
from test_broker_contract import OTHER_ROOM, ROOM, Nodes, sample

from gischat.broker import Broker
from gischat.broker.base import Order, OrderKind
from gischat.broker.redis.broker import RedisBroker
from gischat.protocol import dialects

from conftest import TIMEOUT, text, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def redis_nodes(redis_server: RedisServer) -> AsyncIterator[Nodes]:
    started = Nodes(redis_server.url)
    yield started
    await started.stop()


@pytest.fixture
async def gate(redis_server: RedisServer) -> AsyncIterator[TcpGate]:
    opened = await TcpGate(redis_server.port).start()
    yield opened
    await opened.stop()


async def cut_off_and_back(gate: TcpGate, broker: Broker) -> None:
    """The node behind `gate` loses Redis, then has it again (it subscribes anew)."""
    gate.close()
    await wait_for(lambda: not broker.healthy, 10)
    gate.open()
    await wait_for(lambda: broker.healthy, 10)


async def test_a_room_let_go_before_its_socket_joined_is_read_again(redis_nodes: Nodes) -> None:
    """A socket's node attends its room before the handshake ends, and counts the socket once it
    joins; a linger shorter than the handshake lets the room go in between. The socket's joining
    has the room read again: it gets what the other nodes say there, and its own messages.

    Why: a socket in a room its node does not read hears nobody, not even itself."""
    one, first = await redis_nodes.start("one", attend=(), redis_room_linger=0)
    two, second = await redis_nodes.start("two")
    await one.attend(ROOM)  # the handshake begins
    await wait_for(lambda: (one.status() or {})["reading"] == [], 5)  # the linger passes meanwhile
    first.counts[ROOM] = 1  # the socket joins
    one.count_changed(ROOM)

    elsewhere, own = sample(1), sample(2)
    two.publish(ROOM, elsewhere)
    await second.received(elsewhere.post)
    one.publish(ROOM, own)
    await first.received(elsewhere.post, own.post)
    assert (one.status() or {})["reading"] == [ROOM]


async def test_a_room_attended_while_the_node_subscribes_again_is_read(
    redis_server: RedisServer, gate: TcpGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back on Redis, a node subscribes to the rooms it reads; a socket that attends another room
    meanwhile (its node still away: `attend` returns at once) has that room read too, once the node
    is up: it gets what the other nodes say there, and its own messages.

    Why: a room attended between the node's choice of channels and its subscription to them would
    be taken for read for the whole session, and heard by nobody on this node."""
    gated = Nodes(f"redis://127.0.0.1:{gate.port}/0")
    direct = Nodes(redis_server.url, prefix=gated.prefix)
    try:
        one, first = await gated.start("one", attend=(ROOM,))
        two, second = await direct.start("two")
        assert isinstance(one, RedisBroker)
        routes = one._session.routes
        choose = routes.channels
        arrivals: list[asyncio.Task[None]] = []

        async def arrive() -> None:
            await one.attend(OTHER_ROOM)
            first.counts[OTHER_ROOM] = 1
            one.count_changed(OTHER_ROOM)

        def channels() -> list[str]:
            chosen = choose()
            if not arrivals:  # a socket reaches the node while it subscribes to these
                arrivals.append(asyncio.get_running_loop().create_task(arrive()))
            return chosen

        monkeypatch.setattr(routes, "channels", channels)
        await cut_off_and_back(gate, one)
        assert arrivals, "the node did not subscribe again"
        await arrivals[0]

        elsewhere, own = sample(1), sample(2)
        two.publish(OTHER_ROOM, elsewhere)
        await second.received(elsewhere.post)
        one.publish(OTHER_ROOM, own)
        await first.received(elsewhere.post, own.post)
        assert (one.status() or {})["reading"] == [OTHER_ROOM, ROOM]
    finally:
        await direct.stop()
        await gated.stop()


async def test_a_room_let_go_while_the_node_subscribes_again_is_unsubscribed(
    redis_server: RedisServer, gate: TcpGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back on Redis, a node subscribes to the rooms it reads; one whose linger passes meanwhile is
    unsubscribed from once the node is up.

    Why: a node pays for the rooms it serves only; a subscription nobody reads is traffic for nothing."""
    gated = Nodes(f"redis://127.0.0.1:{gate.port}/0")
    try:
        one, first = await gated.start("one", attend=(), redis_room_linger=0)
        assert isinstance(one, RedisBroker)
        first.counts[ROOM] = 1  # a socket there
        await one.attend(ROOM)
        one.count_changed(ROOM)
        routes = one._session.routes
        choose = routes.channels

        def channels() -> list[str]:
            chosen = choose()
            if first.counts[ROOM]:  # its socket leaves while the node subscribes to these
                first.counts[ROOM] = 0
                one.count_changed(ROOM)
            return chosen

        monkeypatch.setattr(routes, "channels", channels)
        await cut_off_and_back(gate, one)
        assert first.counts[ROOM] == 0, "the node did not subscribe again"
        channel = one.keys.room_channel(ROOM)
        async with Redis.from_url(redis_server.url) as redis:

            async def unsubscribed() -> bool:
                return dict(await redis.pubsub_numsub(channel)) == {channel.encode(): 0}

            await wait_for(unsubscribed, 5)
        assert (one.status() or {})["reading"] == []
    finally:
        await gated.stop()


async def test_what_comes_while_the_node_syncs_keeps_redis_order(
    redis_server: RedisServer, gate: TcpGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back on Redis, a node holds a room's messages until it has loaded the room's history; what
    comes meanwhile about that room (an `exiter` on the node-wide channel, a moderator's kick on
    the room's) is delivered in order with them: a user's last message before their `exiter`, what the
    kicked person said before the kick.

    Why: every socket of a room sees one order, the one Redis ran; "left" then "said" reads wrong."""
    gated = Nodes(f"redis://127.0.0.1:{gate.port}/0")
    direct = Nodes(redis_server.url, prefix=gated.prefix)
    try:
        one, first = await gated.start("one", attend=(ROOM,))
        two, second = await direct.start("two")
        first.counts[ROOM] = 1  # a socket of its own there
        one.count_changed(ROOM)
        newcomer, exiter = dialects.newcomer("Bob"), dialects.exiter("Bob")
        assert await two.claim(ROOM, "bob", "Bob", newcomer) is True
        await first.received(newcomer)
        assert isinstance(one, RedisBroker)
        routes = one._session.routes
        load = routes.load
        last, after = sample(1), sample(2)
        kick = Order(OrderKind.KICK, ROOM, {"nickname": "troll", "reason": "spam"})
        marker = Order(OrderKind.LIFT, None, {"id": "none"})  # about no room: obeyed at once

        async def load_later() -> None:
            # While node one syncs: Bob says something and leaves, a moderator kicks somebody.
            two.publish(ROOM, last)
            two.release(ROOM, "bob", "Bob", exiter)
            two.order(kick)
            two.order(marker)
            await second.received(last.post, exiter)
            await first.wait_until(lambda: marker in first.orders, "node one read them all")
            await load()

        monkeypatch.setattr(routes, "load", load_later)
        await cut_off_and_back(gate, one)
        two.publish(ROOM, after)
        await first.received(last.post, exiter, after.post)
        calls = [call for call in first.log if call in {("deliver", last.post.id), ("deliver", exiter.id)}]
        assert calls == [("deliver", last.post.id), ("deliver", exiter.id)]
        calls = [call for call in first.log if call in {("deliver", last.post.id), ("order", "kick")}]
        assert calls == [("deliver", last.post.id), ("order", "kick")]
    finally:
        await direct.stop()
        await gated.stop()


async def test_a_room_let_go_and_attended_again_before_redis_answered_is_read(
    redis_nodes: Nodes, redis_server: RedisServer
) -> None:
    """A room attended, let go of (its socket came and went, REDIS_ROOM_LINGER=0) and attended again
    before Redis confirmed the first subscription: each subscription is matched with its own
    confirmation (Redis confirms them in order), the room is read, and the node stays up.

    Why: the second subscription took the first one's confirmation for its own, and the first,
    never confirmed, ended the node's session (all its rooms resynchronized) after ATTEND_TIMEOUT."""
    one, first = await redis_nodes.start("one", attend=(), redis_room_linger=0)
    two, _ = await redis_nodes.start("two")
    assert isinstance(one, RedisBroker)
    routes = one._session.routes
    async with Redis.from_url(redis_server.url) as redis:
        await redis.client_pause(500, all=True)  # Redis answers nobody meanwhile
    attending = asyncio.get_running_loop().create_task(one.attend(ROOM))
    await wait_for(lambda: routes.receives(ROOM), 1)  # subscribing
    first.counts[ROOM] = 1  # a socket joins and leaves at once: the room is let go
    one.count_changed(ROOM)
    first.counts[ROOM] = 0
    one.count_changed(ROOM)
    await wait_for(lambda: not routes.receives(ROOM), 1)
    await attending
    await one.attend(ROOM)  # another socket, once Redis answers again; it joins
    first.counts[ROOM] = 1
    one.count_changed(ROOM)

    said = sample(1)
    two.publish(ROOM, said)
    await first.received(said.post)
    await wait_for(lambda: not routes._tasks, 3)  # both subscriptions confirmed, nothing waits
    assert one.healthy


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(redis_server, tmp_path, f"r{uuid.uuid4().hex[:8]}")
    yield started
    started.stop()


async def test_a_reply_posted_over_http_to_a_node_with_nobody_in_the_room(cluster: Cluster) -> None:
    """A text PUT over HTTP (REPLY_THREADS) may reply to a message of the room's history said on
    another node, though nobody is in the room on the node that takes the request.

    Why: the node checks the reply against the room's recent messages, which it has only if it
    reads the room (a 422 said the message was not of this conversation)."""
    one = cluster.node(REPLY_THREADS="true", MAX_STORED_MESSAGES="5")
    two = cluster.node(REPLY_THREADS="true", MAX_STORED_MESSAGES="5")
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        said = await http.put(f"{one.http_url}/channel/QGIS/text", json=text("asker", "a question"))
        assert said.status_code == 200, said.text
        reply = {**text("answerer", "an answer"), "in_reply_to_id": said.json()["id"]}
        answer = await http.put(f"{two.http_url}/channel/QGIS/text", json=reply)
    assert answer.status_code == 200, answer.text
    assert answer.json()["in_reply_to_id"] == said.json()["id"]


async def test_a_deletion_made_while_a_node_was_away_is_carried_out_on_its_return(
    redis_server: RedisServer, gate: TcpGate
) -> None:
    """A node cut off while a message is said and a moderator deletes it elsewhere: back, its
    sockets get the message from the room's recent events, then its deletion, in that order.

    Why: a deleted message must not linger on the nodes that were away when it was deleted."""
    gated = Nodes(f"redis://127.0.0.1:{gate.port}/0")
    direct = Nodes(redis_server.url, prefix=gated.prefix)
    try:
        one, first = await gated.start("one", attend=(ROOM,), max_stored_messages=10)
        two, second = await direct.start("two", max_stored_messages=10)
        first.counts[ROOM] = 1  # a socket of its own there
        one.count_changed(ROOM)
        said = sample(1, keep=True)
        deletion = Order(OrderKind.DELETE, ROOM, {"id": said.post.id})
        gate.close()
        await wait_for(lambda: not one.healthy, 10)
        two.publish(ROOM, said)
        two.order(deletion)
        await second.wait_until(lambda: deletion in second.orders, "the deletion, on node two")
        gate.open()
        await wait_for(lambda: one.healthy, 10)
        await first.wait_until(lambda: deletion in first.orders, "the deletion, on node one")
        calls = [call for call in first.log if call in {("deliver", said.post.id), ("order", "delete")}]
        assert calls == [("deliver", said.post.id), ("order", "delete")]
        assert said.post.id not in [post.id for post in first.histories[ROOM]]
    finally:
        await direct.stop()
        await gated.stop()
