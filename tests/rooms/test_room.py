"""A room owns its members: joins, leaves, claims, nicknames and counts, as units (no server).

Connections here are real `Connection`s over a real Starlette `WebSocket` whose ASGI channel is an
in-memory list: what a socket would have been sent is what the list holds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from starlette.types import Message
from starlette.websockets import WebSocket

from gischat.broker import Envelope, MemoryBroker
from gischat.observability.metrics import Metrics
from gischat.protocol import dialects
from gischat.protocol.dialects import Dialect, Post
from gischat.protocol.messages import TextMessage, nickname_key
from gischat.rooms.connection import Connection
from gischat.rooms.history import History
from gischat.rooms.hub import Hub, RoomSettings
from gischat.rooms.room import Departure, Room

pytestmark = pytest.mark.anyio


class Wire:
    """The ASGI channel of one socket: what the app sent, in order."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._connected = False

    async def receive(self) -> Message:
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        await asyncio.Event().wait()  # nothing more from this client
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        if message["type"] == "websocket.send":
            self.sent.append(orjson.loads(message["text"]))


async def connection(room: str = "QGIS", dialect: Dialect = Dialect.ROOM) -> tuple[Connection, Wire]:
    wire = Wire()
    scope = {
        "type": "websocket",
        "path": f"/{dialect}/{room}/ws",
        "client": ("192.0.2.7", 5000),
        "headers": [],
    }
    websocket = WebSocket(scope, wire.receive, wire.send)
    await websocket.accept()
    conn = Connection(
        websocket, room, dialect, max_messages=16, max_bytes=1 << 20, on_overflow=lambda c, cause: None
    )
    return conn, wire


async def settled(wire: Wire, count: int, counts: bool = False) -> list[dict[str, Any]]:
    """What the socket got once `count` frames are there (its writer is a task of the loop); the
    room's coalesced `nb_users` are left out unless `counts`."""
    for _ in range(1000):
        frames = [frame for frame in wire.sent if counts or frame["type"] != "nb_users"]
        if len(frames) >= count:
            return frames
        await asyncio.sleep(0)
    raise AssertionError(f"got {wire.sent}, expected {count} frames")


def make_room(history: int = 0) -> Room:
    return Room("QGIS", 0.0, History(history, 1 << 20), Metrics())


async def test_a_room_counts_its_members_and_forgets_a_leaver() -> None:
    room = make_room()
    first, _ = await connection()
    second, _ = await connection(dialect=Dialect.CHANNEL)
    room.join(first)
    room.join(second)
    assert len(room) == room.total() == 2
    assert first in room
    assert set(room.members) == {first, second}
    assert room.leave(first) == Departure(None)
    assert room.leave(first) is None, "leaving twice is nothing"
    assert first not in room
    assert len(room) == 1
    room.close()


async def test_a_nickname_is_claimed_granted_and_freed_by_leaving() -> None:
    room = make_room()
    conn, _ = await connection()
    room.join(conn)
    key = nickname_key("Alice")
    assert not room.taken(key)
    room.claim(key, conn)
    assert room.taken(key), "a claim in flight already holds the name"
    assert room.grant(key, "Alice")
    room.release_claim(key)
    assert room.holder(nickname_key("ALICE")) is conn
    assert room.nicknames() == [(key, "Alice")]
    assert not room.grant(key, "Alice"), "it holds one already"
    assert room.leave(conn) == Departure("Alice")
    assert not room.taken(key)
    room.close()


async def test_a_leaver_is_never_granted_the_name_it_claimed() -> None:
    room = make_room()
    conn, _ = await connection()
    room.join(conn)
    key = nickname_key("Bob")
    room.claim(key, conn)
    room.leave(conn)
    assert not room.grant(key, "Bob")
    assert conn.nickname is None
    room.close()


async def test_a_revoked_nickname_leaves_the_member_in_the_room() -> None:
    room = make_room()
    conn, _ = await connection()
    room.join(conn)
    key = nickname_key("carol")
    assert room.grant(key, "carol", conn)
    assert room.revoke(key) is conn
    assert conn.nickname is None
    assert conn in room
    assert room.revoke(key) is None
    assert room.leave(conn) == Departure(None)
    room.close()


async def test_delivery_reaches_each_dialect_in_its_shape_and_a_like_only_its_target() -> None:
    room = make_room(history=5)
    tribu, tribu_wire = await connection()
    qchat, qchat_wire = await connection(dialect=Dialect.CHANNEL)
    room.join(tribu)
    room.join(qchat)
    room.grant(nickname_key("qchat"), "qchat", qchat)
    post = Post.of(TextMessage(author="someone", text="hi"))
    room.deliver(Envelope(post, keep=True))
    assert (await settled(tribu_wire, 1))[-1] == {
        "type": "text",
        "author": "someone",
        "avatar": None,
        "text": "hi",
    }
    channel_frame = (await settled(qchat_wire, 1))[-1]
    assert channel_frame["id"] == post.id
    room.deliver(Envelope(dialects.newcomer("x"), to="QCHAT"))
    assert (await settled(qchat_wire, 2))[-1]["type"] == "newcomer"
    assert len(await settled(tribu_wire, 1)) == 1, "a message to one nickname reaches its holder only"
    # A newcomer gets a count, then the history, before anything live.
    late, late_wire = await connection()
    room.join(late)
    replay = await settled(late_wire, 2, counts=True)
    assert [frame["type"] for frame in replay[:2]] == ["nb_users", "text"]
    assert replay[0]["nb_users"] == 3
    room.close()


async def test_the_hub_asks_its_broker_and_the_room_keeps_the_books() -> None:
    """Hub and room together on the single-process broker: a join, a registration, a leave."""
    hub = Hub(RoomSettings(["QGIS"], 0.0, 0, 1 << 20, True, False, 16, 1 << 20), MemoryBroker())
    await hub.start()
    told: list[tuple[str, str]] = []
    hub.outlets.append(lambda room, post, to: told.append((room, post.kind)))
    conn, _ = await connection()
    scope_ws = conn.websocket
    joined = hub.join(scope_ws, "QGIS", Dialect.ROOM)
    await hub.register(joined, "Dana", dialects.newcomer("Dana"))
    assert hub.users("QGIS") == ["Dana"]
    assert hub.taken("QGIS", "dana")
    assert hub.node_name == "local"
    hub.evict(joined)
    assert hub.users("QGIS") == []
    assert told == [("QGIS", "newcomer"), ("QGIS", "exiter")]
    await hub.stop()
