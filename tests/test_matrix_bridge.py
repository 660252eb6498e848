"""The Matrix bridge against a real Synapse: Matrix users and gischat sockets of both dialects,
on two gischat nodes sharing a real Redis, hold one conversation.

Synapse pushes the portals' events to node A (the registration's URL is the session's relay, which
this module points at node A); node B hears Matrix through Redis, and relays what its own sockets
say to Matrix itself. Every wait is on an event: a frame, a Matrix timeline event, a status.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image
from redis_nodes import Cluster, GischatNode, RedisServer
from synapse_homeserver import HS_TOKEN, MatrixUser, MatrixUserFactory, SynapseServer
from test_dialects import CRS, layer, position
from websockets.asyncio.client import connect

from conftest import TIMEOUT, Client, text, wait_for
from wire import wait_channel_type, wait_type

pytestmark = pytest.mark.anyio

MATRIX_TIMEOUT = 20.0


def photo(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Bridged:
    """Two bridged gischat nodes on one Redis, node A behind the homeserver's relay."""

    a: GischatNode
    b: GischatNode
    synapse: SynapseServer

    def alias(self, room: str) -> str:
        slug = room.lower().replace(" ", "-")
        return f"#gischat_{slug}:{self.synapse.server_name}"


def bridge_env(synapse: SynapseServer) -> dict[str, Any]:
    return {
        "MATRIX_HOMESERVER_URL": synapse.url,
        "MATRIX_SERVER_NAME": synapse.server_name,
        "MATRIX_AS_TOKEN": synapse.as_token,
        "MATRIX_HS_TOKEN": synapse.hs_token,
        "MAX_STORED_MESSAGES": "20",
        "ADMIN_TOKENS": "ops:" + "s" * 40,
    }


@pytest.fixture(scope="module")
def bridged(
    synapse: SynapseServer, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridged]:
    cluster = Cluster(redis_server, tmp_path_factory.mktemp("bridged"), f"m{uuid.uuid4().hex[:8]}")
    env = bridge_env(synapse)
    try:
        a, b = cluster.node(**env), cluster.node(**env)
        synapse.relay.target = a.port
        yield Bridged(a, b, synapse)
    finally:
        synapse.relay.target = None
        cluster.stop()


@asynccontextmanager
async def channel(node: GischatNode, nickname: str, room: str = "QGIS") -> AsyncIterator[Client]:
    async with connect(node.channel_url(room), open_timeout=TIMEOUT, max_size=None) as ws:
        client = Client(ws)
        await client.register(nickname)
        yield client


@asynccontextmanager
async def qtribu(node: GischatNode, nickname: str, room: str = "QGIS") -> AsyncIterator[Client]:
    async with connect(node.ws_url(room), open_timeout=TIMEOUT, max_size=None) as ws:
        client = Client(ws)
        await client.register(nickname)
        yield client


async def join_portal(user: MatrixUser, bridged: Bridged, room: str = "QGIS") -> str:
    return await user.join(bridged.alias(room))


def nickname_of(user: MatrixUser, display: str) -> str:
    return f"{display}-matrix"


async def test_a_portal_per_room_named_with_the_rules(bridged: Bridged, matrix_users: MatrixUserFactory) -> None:
    user = await matrix_users("portal", "Porter")
    room_id = await join_portal(user, bridged, "Field and mobile")
    assert bridged.alias("Field and mobile") == "#gischat_field-and-mobile:gischat.test"
    answer = await user.request("GET", f"/_matrix/client/v3/rooms/{room_id}/state")
    state = answer["body"] if isinstance(answer, dict) else answer
    assert isinstance(state, list)
    by_type = {event["type"]: event["content"] for event in state if event.get("state_key") == ""}
    assert by_type["m.room.name"]["name"] == "Field and mobile"
    assert by_type["m.room.topic"]["topic"] == "Be kind and nice to this wonderful world"
    assert by_type["m.room.join_rules"]["join_rule"] == "public"


async def test_text_both_ways_across_nodes_and_dialects(
    bridged: Bridged, matrix_users: MatrixUserFactory
) -> None:
    jane = await matrix_users("jane", "Jane Doe")
    room_id = await join_portal(jane, bridged)
    async with channel(bridged.a, "alice") as alice, qtribu(bridged.b, "bob") as bob:
        # The virtual users join the portal as their sockets register.
        await jane.wait_for(room_id, lambda e: _member(e, "@gischat_alice:gischat.test", "join"))
        await jane.wait_for(room_id, lambda e: _member(e, "@gischat_bob:gischat.test", "join"))
        await alice.send(text("alice", "hello from QChat"))
        await bob.send(text("bob", "hello from QTribu"))
        for sender, body in (("alice", "hello from QChat"), ("bob", "hello from QTribu")):
            event = await jane.wait_for(room_id, lambda e, b=body: _body(e) == b, MATRIX_TIMEOUT)
            assert event["sender"] == f"@gischat_{sender}:gischat.test"
            assert event["content"] == {"msgtype": "m.text", "body": body}
        members = await jane.members(room_id)
        assert members["@gischat_alice:gischat.test"] == "alice"

        await jane.send_text(room_id, "hello from Matrix")
        on_a = await wait_channel_type(alice, "text", text="hello from Matrix")
        on_b = await wait_type(bob, "text", text="hello from Matrix")
        assert on_a["author"] == on_b["author"] == "Jane_Doe-matrix"
        assert on_a["avatar"] is None
        # Exactly once, everywhere: a marker behind, and nothing twice before it.
        await jane.send_text(room_id, "marker one")
        for client in (alice, bob):
            seen = await _texts_until(client, "marker one")
            assert "hello from Matrix" not in seen
        events = await jane.messages(room_id)
        bodies = [_body(e) for e in events]
        assert bodies.count("hello from QChat") == 1
        assert bodies.count("hello from QTribu") == 1
        assert bodies.count("hello from Matrix") == 1


async def _texts_until(client: Client, marker: str) -> list[str]:
    seen: list[str] = []
    while True:
        message = await client.recv(MATRIX_TIMEOUT)
        if message.get("type") == "text":
            if message["text"] == marker:
                return seen
            seen.append(message["text"])


def _body(event: dict[str, Any]) -> str | None:
    content = event.get("content") or {}
    body = content.get("body")
    return body if event.get("type") == "m.room.message" and isinstance(body, str) else None


def _member(event: dict[str, Any], user_id: str, membership: str) -> bool:
    return (
        event.get("type") == "m.room.member"
        and event.get("state_key") == user_id
        and (event.get("content") or {}).get("membership") == membership
    )
