"""Nicknames: registration, uniqueness, identity checks, leaving, user lists and likes.

"Nothing arrives" is proven with markers, never with timeouts: after the action that must
reach nobody, someone sends a valid message, and the next relevant frame each client sees
must be that message.
"""

from __future__ import annotations

import base64
import io
import socket
import struct
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from PIL import Image

from conftest import Client, LiveServer, text, wait_for, ws_client
from wire import next_frame, refused, wait_type

pytestmark = pytest.mark.anyio


# --- helpers -------------------------------------------------------------------------------------


async def marker_is_next(sender: Client, author: str, *watchers: Client, body: str = "marker") -> None:
    """`sender` broadcasts a marker; it must be the next relevant frame of sender and every watcher."""
    marker = text(author, body)
    await sender.send(marker)
    for client in (sender, *watchers):
        assert await next_frame(client) == marker


def like(liker: str, liked: str, message: str = "great layer!") -> dict[str, Any]:
    return {"type": "like", "liker_author": liker, "liked_author": liked, "message": message}


def users_url(room: str) -> str:
    return f"/room/{quote(room, safe='')}/users"


async def users(http: httpx.AsyncClient, room: str = "QGIS") -> list[str]:
    response = await http.get(users_url(room))
    assert response.status_code == 200
    data = response.json()
    assert isinstance(data, list)
    return data


def reset_connection(client: Client) -> None:
    """Drop the TCP connection with an RST, no closing handshake: a crashed client or lost network."""
    sock = client.ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.ws.transport.abort()


# --- registration --------------------------------------------------------------------------------


async def test_newcomer_is_broadcast_to_everyone_including_sender(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    async with ws_client(server) as a, ws_client(server) as b, ws_client(server, "Living room") as other:
        await a.send({"type": "newcomer", "newcomer": "alice"})
        for client in (a, b):
            assert await next_frame(client) == {"type": "newcomer", "newcomer": "alice"}
        assert await users(http) == ["alice"]
        assert await users(http, "Living room") == []
        await marker_is_next(other, "someone-else")


@pytest.mark.parametrize("duplicate", ["alice", "ALICE", "Alice", "aLiCe"])
async def test_duplicate_nickname_is_refused_to_requester_only(
    server: LiveServer, http: httpx.AsyncClient, duplicate: str
) -> None:
    async with ws_client(server) as a, ws_client(server) as b, ws_client(server) as c:
        await a.register("alice")
        await b.expect("newcomer", newcomer="alice")
        await c.expect("newcomer", newcomer="alice")
        reason = await refused(b, {"type": "newcomer", "newcomer": duplicate})
        assert reason.startswith("newcomer")
        # nobody else heard of the attempt: the marker is the next thing a and c see
        await marker_is_next(b, "marker-b", a, c)
        assert await users(http) == ["alice"]
        # b is still unregistered and may still pick a free nickname
        await b.register("bobby")
        assert await users(http) == ["alice", "bobby"]


async def test_same_nickname_allowed_in_another_room(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server) as a, ws_client(server, "Field and mobile") as b:
        await a.register("alice")
        await b.register("Alice")
        assert await users(http) == ["alice"]
        assert await users(http, "Field and mobile") == ["Alice"]
        await marker_is_next(a, "alice")
        await marker_is_next(b, "Alice")


async def test_re_registering_a_registered_socket_is_refused(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    async with ws_client(server) as a, ws_client(server) as b:
        await a.register("alice")
        await b.expect("newcomer", newcomer="alice")
        reason = await refused(a, {"type": "newcomer", "newcomer": "alice2"})
        assert reason.startswith("newcomer")
        assert await refused(a, {"type": "newcomer", "newcomer": "alice"})
        await marker_is_next(a, "alice", b)
        assert await users(http) == ["alice"]
        # the refused name was not reserved, the socket kept its first nickname
        await b.register("alice2")
        await a.expect("newcomer", newcomer="alice2")
        assert await users(http) == ["alice", "alice2"]
        assert await refused(a, text("alice2", "I am alice2"))


async def test_simultaneous_registration_of_one_nickname_has_one_winner(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    async with ws_client(server) as a, ws_client(server) as b, ws_client(server) as referee:
        await wait_type(referee, "nb_users", nb_users=3)
        await a.send({"type": "newcomer", "newcomer": "twin"})
        await b.send({"type": "newcomer", "newcomer": "Twin"})
        first = await next_frame(referee)
        assert first["type"] == "newcomer"
        assert first["newcomer"] in ("twin", "Twin")
        marker = text("referee", "marker")
        await referee.send(marker)
        assert await next_frame(referee) == marker
        seen: dict[str, list[str]] = {}
        for name, client in (("a", a), ("b", b)):
            frames = []
            while (frame := await next_frame(client)) != marker:
                frames.append(frame["type"])
            seen[name] = frames
        assert sorted(seen.values()) == [["newcomer"], ["newcomer", "uncompliant"]]
        assert await users(http) == [first["newcomer"]]


@pytest.mark.parametrize("nickname", ["ab", "a" * 33, "bad name", "bad.name", ""])
async def test_invalid_nickname_is_refused(
    server: LiveServer, http: httpx.AsyncClient, nickname: str
) -> None:
    async with ws_client(server) as a:
        reason = await refused(a, {"type": "newcomer", "newcomer": nickname})
        assert reason.startswith("newcomer")
        assert await users(http) == []
        await a.register("valid-name")


async def test_users_list_is_sorted_case_insensitively(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server) as a, ws_client(server) as b, ws_client(server) as c:
        await a.register("bob")
        await b.register("Alice")
        await c.register("carol")
        assert await users(http) == ["Alice", "bob", "carol"]


async def test_users_of_unknown_room_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get(users_url("Nowhere"))
    assert response.status_code == 404


# --- identity ------------------------------------------------------------------------------------


SPOOFABLE: list[dict[str, Any]] = [
    text("bob", "I am bob"),
    {"type": "image", "author": "bob", "avatar": None, "image_data": "aW1hZ2U="},
    {"type": "crs", "author": "bob", "avatar": None, "crs_wkt": "w", "crs_authid": "EPSG:4326"},
    {
        "type": "bbox",
        "author": "bob",
        "avatar": None,
        "crs_wkt": "w",
        "crs_authid": "EPSG:4326",
        "xmin": 0,
        "xmax": 1,
        "ymin": 0,
        "ymax": 1,
    },
    {
        "type": "geojson",
        "author": "bob",
        "avatar": None,
        "layer_name": "l",
        "crs_wkt": "w",
        "crs_authid": "EPSG:4326",
        "geojson": {"type": "FeatureCollection", "features": []},
    },
]


@pytest.mark.parametrize("sample", SPOOFABLE, ids=[s["type"] for s in SPOOFABLE])
async def test_registered_socket_cannot_speak_as_someone_else(
    server: LiveServer, sample: dict[str, Any]
) -> None:
    async with ws_client(server) as a, ws_client(server) as b:
        await a.register("alice")
        await b.register("bob")
        await a.expect("newcomer", newcomer="bob")
        # as a registered user (bob) or as a free nickname: both are someone else
        for author in ("bob", "nobody-here"):
            reason = await refused(a, {**sample, "author": author})
            assert reason.startswith("author")
        await marker_is_next(a, "alice", b)


@pytest.mark.parametrize("spoofed", ["alice", "ALICE", "Alice"])
async def test_unregistered_socket_cannot_use_a_registered_nickname(server: LiveServer, spoofed: str) -> None:
    async with ws_client(server) as a, ws_client(server) as b:
        await a.register("alice")
        await b.expect("newcomer", newcomer="alice")
        for sample in SPOOFABLE:
            reason = await refused(b, {**sample, "author": spoofed})
            assert reason.startswith("author")
        reason = await refused(b, like(spoofed, "alice"))
        assert reason.startswith("liker_author")
        # alice saw none of it
        await marker_is_next(b, "free-nick", a)


async def test_unregistered_socket_may_use_a_free_nickname(server: LiveServer) -> None:
    async with ws_client(server) as a, ws_client(server) as b:
        await a.register("alice")
        await b.expect("newcomer", newcomer="alice")
        await marker_is_next(b, "anonymous", a, body="hi")
        await marker_is_next(b, "someone-else", a, body="hi again")


async def test_like_with_spoofed_liker_is_refused(server: LiveServer) -> None:
    async with ws_client(server) as alice, ws_client(server) as bob, ws_client(server) as carol:
        await alice.register("alice")
        await bob.register("bob")
        await carol.register("carol")
        for client in (alice, bob):
            await client.expect("newcomer", newcomer="carol")
        reason = await refused(alice, like("carol", "bob"))
        assert reason.startswith("liker_author")
        reason = await refused(alice, like("free-name", "bob"))
        assert reason.startswith("liker_author")
        # bob got no like: the marker is the next thing he sees
        await marker_is_next(alice, "alice", bob, carol)


# --- leaving -------------------------------------------------------------------------------------


async def test_exiter_on_clean_close(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server) as watcher:
        async with ws_client(server) as leaver:
            await leaver.register("leaver")
            await watcher.expect("newcomer", newcomer="leaver")
            await wait_type(watcher, "nb_users", nb_users=2)
            assert await users(http) == ["leaver"]
        assert await next_frame(watcher) == {"type": "exiter", "exiter": "leaver"}
        assert await users(http) == []
        await wait_type(watcher, "nb_users", nb_users=1)


async def test_unregistered_socket_leaves_without_exiter(server: LiveServer) -> None:
    async with ws_client(server) as watcher:
        await watcher.register("watcher")
        async with ws_client(server):
            await wait_type(watcher, "nb_users", nb_users=2)
        await wait_type(watcher, "nb_users", nb_users=1)
        await marker_is_next(watcher, "watcher")


async def test_exiter_after_tcp_reset(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server) as watcher, ws_client(server) as crasher:
        await crasher.register("crasher")
        await watcher.expect("newcomer", newcomer="crasher")
        await wait_type(watcher, "nb_users", nb_users=2)
        reset_connection(crasher)
        assert await wait_type(watcher, "exiter") == {"type": "exiter", "exiter": "crasher"}
        assert await users(http) == []
        await wait_type(watcher, "nb_users", nb_users=1)


async def test_exiter_after_tcp_shutdown_without_close_frame(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    async with ws_client(server) as watcher, ws_client(server) as crasher:
        await crasher.register("crasher")
        await watcher.expect("newcomer", newcomer="crasher")
        # FIN without a websocket closing handshake, as when a client process is killed
        crasher.ws.transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        assert await wait_type(watcher, "exiter") == {"type": "exiter", "exiter": "crasher"}
        assert await users(http) == []
        await wait_type(watcher, "nb_users", nb_users=1)


async def test_status_count_drops_after_tcp_reset(server: LiveServer, http: httpx.AsyncClient) -> None:
    async def qgis_count() -> int:
        response = await http.get("/status")
        rooms = {room["name"]: room["nb_connected_users"] for room in response.json()["rooms"]}
        return int(rooms["QGIS"])

    async with ws_client(server) as crasher:
        await crasher.register("crasher")
        assert await qgis_count() == 1
        reset_connection(crasher)

        async def gone() -> bool:
            return await qgis_count() == 0 and await users(http) == []

        await wait_for(gone)


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_nickname_is_free_again_after_leaving(
    server: LiveServer, http: httpx.AsyncClient, how: str
) -> None:
    async with ws_client(server) as watcher:
        async with ws_client(server) as first:
            await first.register("phoenix")
            await watcher.expect("newcomer", newcomer="phoenix")
            if how == "reset":
                reset_connection(first)
            else:
                await first.close()
            await wait_type(watcher, "exiter", exiter="phoenix")
        async with ws_client(server) as second:
            await second.register("PHOENIX")
            await watcher.expect("newcomer", newcomer="PHOENIX")
            assert await users(http) == ["PHOENIX"]
            await marker_is_next(second, "PHOENIX", watcher)
            # an unregistered socket may no longer use the old spelling either
            assert await refused(watcher, text("phoenix", "me?"))


# --- likes ---------------------------------------------------------------------------------------


async def test_like_reaches_only_the_liked_socket_of_the_room(server: LiveServer) -> None:
    async with (
        ws_client(server) as liker,
        ws_client(server) as liked,
        ws_client(server) as bystander,
        ws_client(server, "Living room") as namesake,
    ):
        await liker.register("liker")
        await liked.register("bob")
        await bystander.register("bystander")
        await namesake.register("bob")
        for client in (liker, liked):
            await client.expect("newcomer", newcomer="bystander")
        sent = like("liker", "bob", "love your layer")
        await liker.send({**sent, "avatar": "nope", "extra": 1})
        assert await next_frame(liked) == sent
        # the like was delivered by now; whoever else should have had it, had it before these markers
        await marker_is_next(liker, "liker", liked, bystander)
        await marker_is_next(namesake, "bob")


async def test_like_is_delivered_case_insensitively(server: LiveServer) -> None:
    async with ws_client(server) as liker, ws_client(server) as liked:
        await liked.register("Bob")
        await liker.expect("newcomer", newcomer="Bob")
        await liker.send(like("liker", "bob"))
        assert await next_frame(liked) == like("liker", "bob")
        await marker_is_next(liker, "liker", liked)


async def test_like_to_nobody_is_dropped_silently(server: LiveServer) -> None:
    async with (
        ws_client(server) as liker,
        ws_client(server) as other,
        ws_client(server, "Living room") as away,
    ):
        await liker.register("liker")
        await other.register("other")
        await away.register("ghost")
        await liker.expect("newcomer", newcomer="other")
        await liker.send(like("liker", "ghost"))
        # no uncompliant, no like, for anyone
        await marker_is_next(liker, "liker", other)
        await marker_is_next(away, "ghost")


async def test_like_after_liked_user_left_is_dropped(server: LiveServer) -> None:
    async with ws_client(server) as liker:
        async with ws_client(server) as gone:
            await gone.register("gone")
            await liker.expect("newcomer", newcomer="gone")
        await wait_type(liker, "exiter", exiter="gone")
        await liker.send(like("liker", "gone"))
        await marker_is_next(liker, "liker")


# --- REST ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("author", ["alice", "ALICE"])
async def test_put_text_with_registered_nickname_is_409(
    server: LiveServer, http: httpx.AsyncClient, author: str
) -> None:
    async with ws_client(server, "Field and mobile") as a:
        await a.register("alice")
        url = f"/room/{quote('Field and mobile', safe='')}/text"
        response = await http.put(url, json={"author": author, "text": "spoof"})
        assert response.status_code == 409
        # nothing was broadcast
        await marker_is_next(a, "alice")
        response = await http.put(url, json={"author": "a-bot", "text": "deploy done"})
        assert response.status_code == 200
        assert response.json() == {"type": "text", "author": "a-bot", "avatar": None, "text": "deploy done"}
        assert await next_frame(a) == text("a-bot", "deploy done")


async def test_put_text_with_nickname_registered_in_another_room_is_accepted(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    async with ws_client(server, "Living room") as elsewhere, ws_client(server) as here:
        await elsewhere.register("alice")
        response = await http.put("/room/QGIS/text", json={"author": "alice", "text": "from a script"})
        assert response.status_code == 200
        assert await next_frame(here) == text("alice", "from a script")
        await marker_is_next(elsewhere, "alice")


# --- races and look-alikes -----------------------------------------------------------------------


async def test_fullwidth_form_of_a_registered_nickname_is_taken(server: LiveServer) -> None:
    async with ws_client(server) as alice, ws_client(server) as mallory:
        await alice.register("Alice")
        await wait_type(mallory, "newcomer", newcomer="Alice")
        fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in "Alice")
        reason = await refused(mallory, {"type": "newcomer", "newcomer": fullwidth})
        assert "already taken" in reason


async def test_exiter_comes_before_the_same_nickname_registered_again(server: LiveServer) -> None:
    """A client reconnecting after a crash: its old socket's exiter must not follow the new newcomer."""
    async with ws_client(server) as watcher, ws_client(server) as old, ws_client(server) as new:
        await old.register("Bob0")
        await wait_type(watcher, "newcomer", newcomer="Bob0")
        await wait_type(new, "newcomer", newcomer="Bob0")
        reset_connection(old)
        while True:  # the server may see the new socket's newcomer before the old one's reset
            await new.send({"type": "newcomer", "newcomer": "Bob0"})
            reply = await next_frame(new, skip=("nb_users", "exiter"))
            if reply["type"] == "newcomer":
                break
            assert reply["type"] == "uncompliant"
        seen = [await next_frame(watcher) for _ in range(2)]
        assert seen == [{"type": "exiter", "exiter": "Bob0"}, {"type": "newcomer", "newcomer": "Bob0"}]


async def test_image_author_is_checked_again_after_resizing(server: LiveServer) -> None:
    """A nickname registered while an image was resized cannot be spoofed by that image."""
    buf = io.BytesIO()
    Image.effect_noise((3000, 3000), 64).save(buf, "PNG")  # a few hundred ms to resize
    image = {
        "type": "image",
        "author": "Alice",
        "avatar": None,
        "image_data": base64.b64encode(buf.getvalue()).decode(),
    }
    async with ws_client(server) as watcher, ws_client(server) as spoofer, ws_client(server) as alice:
        await spoofer.send(image)
        await alice.register("Alice")
        reply = await next_frame(spoofer, skip=("nb_users", "newcomer"))
        if reply["type"] == "image":  # the resize won the race: sent before Alice registered
            assert (await next_frame(watcher))["type"] == "image"
            return
        assert reply == {
            "type": "uncompliant",
            "reason": "author: 'Alice' is registered by another user in this room",
        }
        await wait_type(watcher, "newcomer", newcomer="Alice")
        await marker_is_next(alice, "Alice", watcher, body="after the image")
