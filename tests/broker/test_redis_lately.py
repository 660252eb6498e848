"""A primary that confirms a message and then fails over to a replica it had not passed the message
on to (replication is asynchronous): the node publishes what it had confirmed in its last moments
again on the new primary, and once only where the primary had it after all.

Why: a failover must lose no room's messages, and a message published twice would show twice in
the history every newcomer is given."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis_nodes import RedisServer, require_redis
from tcp_gate import TcpGate
from test_broker_contract import ROOM, Nodes, sample

from gischat.protocol.dialects import Post

from conftest import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def replica() -> Iterator[RedisServer]:
    """A Redis that never had what the first one was told (a replica that lagged)."""
    server = RedisServer(require_redis())
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def gate(redis_server: RedisServer) -> AsyncIterator[TcpGate]:
    opened = await TcpGate(redis_server.port).start()
    yield opened
    await opened.stop()


async def stored(url: str, prefix: str, post_id: str) -> int:
    """How many times the room's history in that Redis holds the post."""
    client = Redis.from_url(url)
    try:
        items = await client.lrange(f"{{{prefix}:{ROOM}}}:history", 0, -1)
    finally:
        await client.aclose()
    return sum(post_id.encode() in item for item in items)


async def said_then_back(gate: TcpGate, target: int) -> tuple[Nodes, Post]:
    """A node behind `gate` says a kept message and has it confirmed; then its connection is cut
    and it comes back through the gate, now to the Redis on port `target`, and sends what it kept."""
    nodes = Nodes(f"redis://127.0.0.1:{gate.port}/0")
    one, first = await nodes.start("one", max_stored_messages=10)
    said = sample(1, keep=True)
    one.publish(ROOM, said)
    await first.received(said.post)  # confirmed: its event came back
    gate.target = target
    gate.close()
    gate.open()
    await wait_for(lambda: not one.healthy, 10)
    await wait_for(lambda: one.healthy, 10)
    await wait_for(lambda: (one.status() or {})["kept"] == 0, 10)
    assert first.ids().count(said.post.id) == 1, "its own sockets had it: not again"
    return nodes, said.post


async def test_a_message_confirmed_by_a_primary_that_lost_it_is_published_again(
    replica: RedisServer, gate: TcpGate
) -> None:
    """The failover: the replica, without the message, is the primary now."""
    nodes, said = await said_then_back(gate, replica.port)
    later = Nodes(replica.url, prefix=nodes.prefix)
    try:
        assert await stored(replica.url, nodes.prefix, said.id) == 1
        _, newcomer = await later.start("later", max_stored_messages=10)
        assert [post.id for post in newcomer.histories[ROOM]] == [said.id]
    finally:
        await later.stop()
        await nodes.stop()


async def test_a_message_the_primary_kept_is_not_published_twice(
    redis_server: RedisServer, gate: TcpGate
) -> None:
    """The connection lost, the same Redis back: it has the message already."""
    nodes, said = await said_then_back(gate, redis_server.port)
    try:
        assert await stored(redis_server.url, nodes.prefix, said.id) == 1
    finally:
        await nodes.stop()
