"""Both dialects across two nodes on a real Redis: a post crosses once, with its id and timestamp,
and each node renders it for its own sockets of each dialect."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis_nodes import Cluster, GischatNode, RedisServer
from test_dialects import position, shared_messages
from websockets.asyncio.client import connect

from gischat.broker.redis.keys import NodeKeys

from conftest import TIMEOUT, Client, text, wait_for
from wire import CHANNEL_KEYS, ENVELOPE, next_channel_frame, next_frame, wait_channel_type, wait_type

pytestmark = pytest.mark.anyio


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(redis_server, tmp_path, f"d{uuid.uuid4().hex[:8]}")
    yield nodes
    nodes.stop()


@asynccontextmanager
async def channel(node: GischatNode, name: str = "QGIS") -> AsyncIterator[Client]:
    async with connect(node.channel_url(name), open_timeout=TIMEOUT, max_size=None) as ws:
        yield Client(ws)


@asynccontextmanager
async def room(node: GischatNode, name: str = "QGIS") -> AsyncIterator[Client]:
    async with connect(node.ws_url(name), open_timeout=TIMEOUT, max_size=None) as ws:
        yield Client(ws)


async def test_posts_cross_nodes_with_one_id_in_each_dialect(cluster: Cluster) -> None:
    first, second = cluster.node(MAX_STORED_MESSAGES="10"), cluster.node(MAX_STORED_MESSAGES="10")
    async with channel(first) as qchat, channel(second) as qfield, room(second) as qtribu:
        await qchat.register("qchatter")
        await wait_channel_type(qfield, "newcomer", newcomer="qchatter")
        await wait_type(qtribu, "newcomer", newcomer="qchatter")
        sent = [*shared_messages("qchatter"), position("qchatter")]
        for message in sent:
            await qchat.send(message)
        mine = [await next_channel_frame(qchat) for _ in sent]
        theirs = [await next_channel_frame(qfield) for _ in sent]
        assert theirs == mine, "the same ids and timestamps on every node"
        assert [list(m) for m in theirs] == [ENVELOPE + CHANNEL_KEYS[m["type"]] for m in sent]
        assert len({m["id"] for m in theirs}) == len(sent)
        # The 2.x socket on the other node: the shared types, in 2.x shape, no position.
        for expected in theirs[:-1]:
            assert await next_frame(qtribu) == {
                k: v for k, v in expected.items() if k not in ("id", "timestamp")
            }
        await qchat.send(text("qchatter", "after"))
        assert (await next_frame(qtribu))["text"] == "after"
        # History, replayed by the other node, shows the ids the live recipients saw.
        async with channel(second) as late:
            replay = [await next_channel_frame(late) for _ in range(len(sent) + 1)]
        assert replay[: len(sent)] == mine
        async with httpx.AsyncClient(base_url=second.http_url, timeout=TIMEOUT) as http:
            last = (await http.get("/channel/QGIS/last")).json()
            assert last[: len(sent)] == mine
            room_last = (await http.get("/room/QGIS/last")).json()
            assert "position" not in [m["type"] for m in room_last]


async def test_likes_and_departures_cross_nodes_and_dialects(cluster: Cluster) -> None:
    first, second = cluster.node(), cluster.node()
    async with channel(first) as qchat, room(second) as qtribu:
        await qchat.register("qchatter")
        await wait_type(qtribu, "newcomer", newcomer="qchatter")
        await qtribu.register("tribu")
        await wait_channel_type(qchat, "newcomer", newcomer="tribu")
        await qtribu.send(
            {"type": "like", "liker_author": "tribu", "liked_author": "qchatter", "message": "hi"}
        )
        like = await next_channel_frame(qchat)
        assert list(like) == [*ENVELOPE, "liker_author", "liked_author", "message"]
        async with channel(second) as qfield:
            await qfield.register("fielder")
            await wait_type(qtribu, "newcomer", newcomer="fielder")
            await qfield.send({"type": "exiter", "exiter": "fielder"})  # QField's own: ignored
            await qfield.send(text("fielder", "bye"))
            assert (await next_channel_frame(qchat, skip=("nb_users", "newcomer")))["text"] == "bye"
        assert await next_frame(qtribu, skip=("nb_users", "text")) == {"type": "exiter", "exiter": "fielder"}
        exiter = await next_channel_frame(qchat, skip=("nb_users", "text"))
        assert (exiter["type"], exiter["exiter"]) == ("exiter", "fielder")


async def test_a_dead_nodes_channel_users_leave_with_one_exiter_everywhere(cluster: Cluster) -> None:
    survivor, doomed = cluster.node(), cluster.node()
    async with channel(survivor) as watcher_a, channel(survivor) as watcher_b, room(survivor) as watcher_room:
        async with channel(doomed) as mobile:
            await mobile.register("mobile")
            await wait_channel_type(watcher_a, "newcomer", newcomer="mobile")
            await wait_channel_type(watcher_b, "newcomer", newcomer="mobile")
            await wait_type(watcher_room, "newcomer", newcomer="mobile")
            doomed.kill()
            gone_a = await wait_channel_type(watcher_a, "exiter", exiter="mobile")
            gone_b = await wait_channel_type(watcher_b, "exiter", exiter="mobile")
            assert gone_a == gone_b
            assert await wait_type(watcher_room, "exiter", exiter="mobile") == {
                "type": "exiter",
                "exiter": "mobile",
            }

        async def freed() -> bool:
            async with httpx.AsyncClient(base_url=survivor.http_url, timeout=TIMEOUT) as http:
                users: list[str] = (await http.get("/channel/QGIS/users")).json()
                return users == []

        await wait_for(freed)


async def test_history_left_by_a_2x_node_is_skipped_not_fatal(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    legacy = Redis.from_url(redis_server.url)
    try:
        await legacy.rpush(
            NodeKeys.of(cluster.prefix, "").history("QGIS"),
            '{"type":"text","author":"old","avatar":null,"text":"x"}',
        )
    finally:
        await legacy.aclose()
    node = cluster.node(MAX_STORED_MESSAGES="10")  # waits until the node reports itself healthy
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as http:
        assert (await http.get("/channel/QGIS/last")).json() == []
    assert "1 stored messages in another format skipped" in node.output()
