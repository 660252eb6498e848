"""Moderation across two nodes on a real Redis: every order reaches every node, bans are shared
and outlive a node's restart, a deleted message is gone from the shared history, and a room's
sockets are listed from every node."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_nodes import Cluster, GischatNode, RedisServer
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import TIMEOUT, Client, closing, text
from wire import wait_channel_type

pytestmark = pytest.mark.anyio

SECRET = "s" * 40
ADMIN = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(redis_server, tmp_path, f"m{uuid.uuid4().hex[:8]}")
    yield nodes
    nodes.stop()


def moderated(cluster: Cluster, **variables: Any) -> GischatNode:
    return cluster.node(ADMIN_TOKENS=f"ops:{SECRET}", MAX_STORED_MESSAGES="10", **variables)


@asynccontextmanager
async def channel(node: GischatNode, name: str = "QGIS") -> AsyncIterator[Client]:
    async with connect(node.channel_url(name), open_timeout=TIMEOUT, max_size=None) as ws:
        yield Client(ws)


async def admin(node: GischatNode, method: str, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
        return await client.request(method, path, json=body, headers=ADMIN)


async def listed(node: GischatNode, ban_id: str) -> None:
    """Wait until `node` enforces the ban (an order reaches the other nodes within milliseconds)."""

    async def bans() -> list[str]:
        return [item["id"] for item in (await admin(node, "GET", "/admin/bans")).json()["bans"]]

    ids: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while ban_id not in ids:
            ids = await bans()


async def test_kick_made_on_one_node_closes_the_socket_on_the_other(cluster: Cluster) -> None:
    first, second = moderated(cluster), moderated(cluster)
    async with channel(first) as watcher, channel(second) as troll:
        await troll.register("troll")
        await wait_channel_type(watcher, "newcomer", newcomer="troll")
        response = await admin(
            first, "POST", "/admin/rooms/QGIS/kick", {"nickname": "troll", "reason": "spam"}
        )
        assert response.status_code == 200, response.text
        closed = await closing(troll)
        assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "kicked by a moderator: spam")  # type: ignore[union-attr]
        await wait_channel_type(watcher, "exiter", exiter="troll")


async def test_a_ban_is_enforced_by_every_node_and_outlives_a_restart(cluster: Cluster) -> None:
    first, second = moderated(cluster), moderated(cluster)
    async with channel(second) as troll:
        await troll.register("troll")
        response = await admin(
            first, "POST", "/admin/bans", {"nickname": "Troll", "minutes": 30, "reason": "spam"}
        )
        assert response.status_code == 201, response.text
        ban = response.json()
        closed = await closing(troll)
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1008
        assert closed.rcvd.reason.startswith("banned by a moderator until ")
    # Enforced on the other node, and on a node started afterwards.
    third = moderated(cluster)
    for node in (second, third):
        await listed(node, ban["id"])
        async with channel(node) as again:
            await again.send({"type": "newcomer", "newcomer": "troll"})
            refusal = await wait_channel_type(again, "uncompliant")
            assert refusal["reason"].startswith("newcomer: banned until ")
        bans = (await admin(node, "GET", "/admin/bans")).json()["bans"]
        assert [item["id"] for item in bans] == [ban["id"]]
    # Lifted on one node: free everywhere.
    assert (await admin(third, "DELETE", f"/admin/bans/{ban['id']}")).status_code == 200
    async with channel(second) as back:
        await back.register("troll")
    assert (await admin(first, "GET", "/admin/bans")).json()["bans"] == []


async def test_an_address_ban_refuses_the_handshake_on_every_node(cluster: Cluster) -> None:
    first, second = moderated(cluster), moderated(cluster)
    # The nodes' clients come from 127.0.0.1, a trusted proxy: the forwarded address counts.
    response = await admin(
        first, "POST", "/admin/bans", {"address": "203.0.113.0/24", "minutes": 5, "reason": "x"}
    )
    assert response.status_code == 201, response.text
    await listed(second, response.json()["id"])
    headers = {"X-Forwarded-For": "203.0.113.7"}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(second.channel_url("QGIS"), additional_headers=headers, open_timeout=TIMEOUT):
            pass
    assert refused.value.response.status_code == 403


async def test_a_deleted_message_is_gone_from_the_shared_history(cluster: Cluster) -> None:
    first, second = moderated(cluster), moderated(cluster)
    async with channel(first) as author:
        await author.register("author")
        await author.send(text("author", "keep me"))
        kept = await wait_channel_type(author, "text")
        await author.send(text("author", "delete me"))
        doomed = await wait_channel_type(author, "text")
    response = await admin(second, "DELETE", f"/admin/rooms/QGIS/messages/{doomed['id']}")
    assert response.status_code == 200, response.text
    for node in (first, second, moderated(cluster)):
        async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as client:
            last = (await client.get("/channel/QGIS/last")).json()
        assert [item["id"] for item in last if item["type"] == "text"] == [kept["id"]]
    assert (await admin(first, "DELETE", f"/admin/rooms/QGIS/messages/{doomed['id']}")).status_code == 404


async def test_connections_are_listed_from_every_node(cluster: Cluster) -> None:
    first, second = moderated(cluster), moderated(cluster)
    async with channel(first) as here, channel(second) as there:
        await here.register("here")
        await there.register("there")
        await wait_channel_type(here, "newcomer", newcomer="there")
        response = await admin(first, "GET", "/admin/rooms/QGIS/connections")
        assert response.status_code == 200, response.text
        sockets = response.json()["connections"]
        assert sorted(item["nickname"] for item in sockets) == ["here", "there"]
        assert len({item["node"] for item in sockets}) == 2
