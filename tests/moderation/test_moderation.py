"""Moderation on one node: who may moderate (tokens, networks, failures), each action's effect on
clients of both dialects over real sockets, bans and their end, and the trail every action leaves."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import orjson
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gischat.observability.logs import JsonFormatter
from gischat.rooms.bans import BanList
from gischat.settings import SettingsError, load_settings

from conftest import (
    TIMEOUT,
    Client,
    LiveServer,
    ServerFactory,
    channel_client,
    closing,
    text,
    wait_for,
    ws_client,
)
from wire import next_channel_frame, next_frame, wait_channel_type, wait_type

pytestmark = pytest.mark.anyio

SECRET = "alice-secret-0123456789abcdefghijklmnop"
OTHER_SECRET = "bob-secret-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123"
TOKENS = f"alice:{SECRET},bob:{OTHER_SECRET}"
AUTH = {"Authorization": f"Bearer {SECRET}"}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
# Not a trusted proxy (127.0.0.1 is): the address a socket from here has is its own.
OUTSIDER = "127.0.0.2"
FULLWIDTH = "".join(chr(ord(char) + 0xFEE0) for char in "herald")  # one nickname with "herald"


def moderated(server_factory: ServerFactory, **overrides: Any) -> LiveServer:
    return server_factory(admin_tokens=TOKENS, **overrides)


@asynccontextmanager
async def admin(
    server: LiveServer, secret: str | None = SECRET, local_address: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    transport = httpx.AsyncHTTPTransport(local_address=local_address) if local_address else None
    async with httpx.AsyncClient(
        base_url=server.http_url, headers=headers, timeout=TIMEOUT, transport=transport
    ) as client:
        yield client


def bans_of(server: LiveServer) -> BanList:
    app = cast(FastAPI, server.server.config.app)
    bans = app.state.chat.hub.bans
    assert isinstance(bans, BanList)
    return bans


async def refused_handshake(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, open_timeout=TIMEOUT, **kwargs):
            pass
    response = refused.value.response
    return response.status_code, orjson.loads(response.body or b"{}")


async def refusal(client: Client, message: dict[str, Any]) -> str:
    await client.send(message)
    reason = (await client.expect("uncompliant"))["reason"]
    assert isinstance(reason, str)
    return reason


# Who may moderate.


async def test_without_tokens_the_admin_routes_do_not_exist(server: LiveServer) -> None:
    async with admin(server) as http:
        unknown = await http.get("/no/such/route")
        for method, route in [
            ("GET", "/admin/bans"),
            ("GET", "/admin/audit"),
            ("GET", "/admin/rooms/QGIS/connections"),
            ("POST", "/admin/rooms/QGIS/kick"),
            ("DELETE", "/admin/bans/abc"),
        ]:
            response = await http.request(method, route, json={})
            assert (response.status_code, response.json()) == (404, unknown.json())
        assert "/admin/bans" not in (await http.get("/openapi.json")).json()["paths"]
    async with ws_client(server) as client:
        await client.register("moderator")  # reserved only where there are moderators


async def test_a_missing_or_wrong_token_is_401(server_factory: ServerFactory) -> None:
    server = moderated(server_factory)
    async with admin(server, secret=None) as http:
        for headers in ({}, {"Authorization": f"Basic {SECRET}"}, {"Authorization": "Bearer"}):
            response = await http.get("/admin/bans", headers=headers)
            assert response.status_code == 401
            assert response.json() == {"detail": "a moderator's bearer token is required"}
            assert response.headers["WWW-Authenticate"] == "Bearer"
        response = await http.get("/admin/bans", headers={"Authorization": f"Bearer {SECRET[:-1]}"})
        assert response.status_code == 401
        assert response.json() == {"detail": "a moderator's bearer token is required: wrong token"}
        assert response.headers["WWW-Authenticate"] == "Bearer"
    for secret in (SECRET, OTHER_SECRET):
        async with admin(server, secret) as http:
            assert (await http.get("/admin/bans")).json() == {"bans": []}


async def test_failed_attempts_are_limited_per_client_address(server_factory: ServerFactory) -> None:
    server = moderated(server_factory, admin_failures_per_minute=3)
    async with admin(server, secret="x" * 40) as http:
        for _ in range(3):
            assert (await http.get("/admin/audit")).status_code == 401
        locked = await http.get("/admin/audit")
        assert locked.status_code == 429
        assert "too many failed moderator sign-ins" in locked.json()["detail"]
        assert 1 <= int(locked.headers["Retry-After"]) <= 60
        # While locked, even the right secret gets no answer about itself.
        assert (await http.get("/admin/audit", headers=AUTH)).status_code == 429
        # Another client address behind the trusted proxy is another count.
        elsewhere = await http.get("/admin/audit", headers={**AUTH, "X-Forwarded-For": "203.0.113.5"})
        assert elsewhere.status_code == 200


async def test_moderation_from_outside_admin_networks_is_403(server_factory: ServerFactory) -> None:
    server = moderated(server_factory, admin_networks=["10.0.0.0/8", "2001:db8::/32"])
    forbidden = {"detail": "moderation is not allowed from your address"}
    async with admin(server) as http:
        response = await http.get("/admin/bans")
        assert (response.status_code, response.json()) == (403, forbidden)
        # Behind the trusted proxy (127.0.0.1) the real client address decides.
        assert (await http.get("/admin/bans", headers={"X-Forwarded-For": "10.1.2.3"})).status_code == 200
        assert (await http.get("/admin/bans", headers={"X-Forwarded-For": "2001:db8::7"})).status_code == 200
    async with admin(server, local_address=OUTSIDER) as http:
        # Not a trusted proxy: its X-Forwarded-For is not believed.
        response = await http.get("/admin/bans", headers={"X-Forwarded-For": "10.1.2.3"})
        assert (response.status_code, response.json()) == (403, forbidden)


def test_a_short_secret_stops_the_server_naming_the_setting_only(monkeypatch: pytest.MonkeyPatch) -> None:
    short = "tiny-secret-value"
    for tokens in (
        f"alice:{short}",
        f"alice:{SECRET},bob:{short}",
        short * 3,
        f"alice:{SECRET},alice:{SECRET}",
    ):
        monkeypatch.setenv("ADMIN_TOKENS", tokens)
        with pytest.raises(SettingsError) as info:
            load_settings(_env_file=None)
        message = str(info.value)
        assert message.startswith("invalid setting ADMIN_TOKENS: "), message
        assert "\n" not in message
        assert short not in message
        assert SECRET not in message
    monkeypatch.setenv("ADMIN_TOKENS", TOKENS)
    settings = load_settings(_env_file=None)
    assert list(settings.admin_tokens) == ["alice", "bob"]
    assert SECRET not in repr(settings)
    monkeypatch.setenv("ANNOUNCER_NAME", "the moderators")
    with pytest.raises(SettingsError, match="ANNOUNCER_NAME"):
        load_settings(_env_file=None)
    monkeypatch.delenv("ADMIN_TOKENS")  # no moderators: the announcer never speaks
    assert load_settings(_env_file=None).announcer_name == "the moderators"


async def test_openapi_shows_the_bearer_scheme_on_every_admin_route(server_factory: ServerFactory) -> None:
    server = moderated(server_factory)
    async with admin(server, secret=None) as http:
        document = (await http.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["moderator"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A moderator's secret from ADMIN_TOKENS (`label:secret`: the secret part)",
    }
    operations = [
        operation
        for path, item in document["paths"].items()
        if path.startswith("/admin/")
        for operation in item.values()
    ]
    assert len(operations) == 8
    for operation in operations:
        assert operation["security"] == [{"moderator": []}]
        assert {"401", "403", "429"} <= set(operation["responses"])


# Kick.


async def test_kick_closes_the_socket_and_the_room_sees_a_departure(server_factory: ServerFactory) -> None:
    server = moderated(server_factory)
    async with (
        ws_client(server) as troll,
        channel_client(server) as watcher,
        ws_client(server) as witness,
        admin(server) as http,
    ):
        await troll.register("troll")
        await watcher.register("watcher")  # after the troll's newcomer
        await wait_type(witness, "newcomer", newcomer="watcher")
        response = await http.post("/admin/rooms/QGIS/kick", json={"nickname": "TROLL", "reason": "spam"})
        assert (response.status_code, response.json()) == (
            200,
            {"room": "QGIS", "nickname": "TROLL", "reason": "spam"},
        )
        closed = await closing(troll)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "kicked by a moderator: spam")
        await wait_channel_type(watcher, "exiter", exiter="troll")
        assert (await wait_channel_type(watcher, "nb_users"))["nb_users"] == 2
        await wait_type(witness, "exiter", exiter="troll")
        assert (await http.get("/room/QGIS/users")).json() == ["watcher"]
        # A channel socket, with a reason longer than a close frame holds.
        response = await http.post(
            "/admin/rooms/QGIS/kick", json={"nickname": "watcher", "reason": "é" * 200}
        )
        assert response.status_code == 200
        closed = await closing(watcher)
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1008
        assert closed.rcvd.reason.startswith("kicked by a moderator: éé")
        assert len(closed.rcvd.reason.encode()) <= 123
        await wait_type(witness, "exiter", exiter="watcher")


async def test_kick_answers_404_when_nobody_holds_the_nickname(server_factory: ServerFactory) -> None:
    server = moderated(server_factory)
    async with ws_client(server, "Living room") as elsewhere, admin(server) as http:
        await elsewhere.register("ghost")
        response = await http.post("/admin/rooms/QGIS/kick", json={"nickname": "ghost"})
        assert (response.status_code, response.json()) == (
            404,
            {"detail": "nobody is registered as 'ghost' in room 'QGIS'"},
        )
        response = await http.post("/admin/rooms/Attic/kick", json={"nickname": "ghost"})
        assert (response.status_code, response.json()) == (404, {"detail": "room 'Attic' not found"})
        response = await http.post("/admin/rooms/QGIS/kick", json={"nickname": "ghost", "reason": "x" * 201})
        assert response.status_code == 422
        assert response.json()["detail"].startswith("reason: ")


# Bans.


async def test_a_nickname_ban_closes_refuses_and_holds_in_its_room_only(
    server_factory: ServerFactory,
) -> None:
    server = moderated(server_factory)
    async with ws_client(server) as troll, ws_client(server, "Living room") as away, admin(server) as http:
        await troll.register("troll")
        response = await http.post(
            "/admin/bans", json={"nickname": "Troll", "room": "QGIS", "minutes": 60, "reason": "flood"}
        )
        assert response.status_code == 201
        ban = response.json()
        assert list(ban) == ["id", "nickname", "address", "room", "until", "reason", "by", "created"]
        assert re.fullmatch(r"[0-9a-f]{32}", ban["id"])
        assert (ban["nickname"], ban["address"], ban["room"], ban["reason"], ban["by"]) == (
            "Troll",
            None,
            "QGIS",
            "flood",
            "alice",
        )
        assert ISO.fullmatch(ban["until"])
        assert ISO.fullmatch(ban["created"])
        closed = await closing(troll)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (
            1008,
            f"banned by a moderator until {ban['until']}: flood",
        )
        refused = f"newcomer: banned until {ban['until']}: flood"
        async with ws_client(server) as again, channel_client(server) as channel:
            assert await refusal(again, {"type": "newcomer", "newcomer": "TROLL"}) == refused
            assert await refusal(channel, {"type": "newcomer", "newcomer": "troll"}) == refused
            # Nor may an unregistered socket speak under it.
            assert await refusal(again, text("troll")) == f"author: banned until {ban['until']}: flood"
        put = await http.put("/room/QGIS/text", json=text("troll"))
        assert (put.status_code, put.json()) == (
            403,
            {"detail": f"author: banned until {ban['until']}: flood"},
        )
        put = await http.put("/channel/QGIS/text", json=text("troll"))
        assert put.status_code == 403
        # Another room is not concerned.
        await away.register("troll")
        assert (await http.put("/room/Living%20room/text", json=text("trolly"))).status_code == 200


async def test_a_global_address_ban_closes_every_room_and_refuses_the_handshake(
    server_factory: ServerFactory,
) -> None:
    server = moderated(server_factory)
    source: dict[str, Any] = {"local_addr": (OUTSIDER, 0)}
    async with (
        ws_client(server, **source) as first,
        channel_client(server, "Living room", **source) as second,
        ws_client(server) as bystander,
        admin(server) as http,
    ):
        await first.register("first")
        await bystander.register("bystander")
        connections = (await http.get("/admin/rooms/QGIS/connections")).json()["connections"]
        assert {entry["address"] for entry in connections} == {OUTSIDER, "127.0.0.1"}
        response = await http.post("/admin/bans", json={"address": OUTSIDER, "minutes": 5, "reason": "abuse"})
        ban = response.json()
        assert (response.status_code, ban["address"], ban["room"]) == (201, OUTSIDER, None)
        for client in (first, second):
            closed = await closing(client)
            assert closed.rcvd is not None
            assert (closed.rcvd.code, closed.rcvd.reason) == (
                1008,
                f"banned by a moderator until {ban['until']}: abuse",
            )
        await wait_type(bystander, "exiter", exiter="first")
        detail = {"detail": f"banned until {ban['until']}: abuse"}
        for url in (server.ws_url("QGIS"), server.channel_url("Living room")):
            assert await refused_handshake(url, **source) == (403, detail)
        put = await http.put("/room/QGIS/text", json=text("sender"), headers={"X-Forwarded-For": OUTSIDER})
        assert (put.status_code, put.json()) == (403, detail)
        await bystander.send(text("bystander", "still here"))
        await wait_type(bystander, "text", text="still here")


async def test_a_cidr_ban_in_one_room(server_factory: ServerFactory) -> None:
    server = moderated(server_factory)
    async with admin(server) as http:
        for address in ("198.51.100.77/24", "2001:db8::/32"):
            response = await http.post("/admin/bans", json={"address": address, "room": "QGIS", "minutes": 5})
            assert response.status_code == 201
        assert [ban["address"] for ban in (await http.get("/admin/bans")).json()["bans"]] == [
            "198.51.100.0/24",
            "2001:db8::/32",
        ]
        for client in ("198.51.100.7", "2001:db8::1", "::ffff:198.51.100.9"):
            behind = {"additional_headers": {"X-Forwarded-For": client}}
            status, body = await refused_handshake(server.ws_url("QGIS"), **behind)
            assert status == 403
            assert body["detail"].startswith("banned until ")
            async with ws_client(server, "Living room", **behind) as elsewhere:
                await elsewhere.register("elsewhere")
        async with ws_client(server, additional_headers={"X-Forwarded-For": "198.51.101.1"}) as neighbour:
            await neighbour.register("neighbour")


async def test_bans_end_by_themselves_and_can_be_lifted(server_factory: ServerFactory) -> None:
    server = moderated(server_factory)
    bans = bans_of(server)
    async with admin(server) as http, ws_client(server) as client:
        short = (await http.post("/admin/bans", json={"nickname": "brief", "minutes": 1})).json()
        long = (await http.post("/admin/bans", json={"nickname": "lasting", "minutes": 120})).json()
        assert [ban["id"] for ban in (await http.get("/admin/bans")).json()["bans"]] == [
            short["id"],
            long["id"],
        ]
        assert await refusal(client, {"type": "newcomer", "newcomer": "brief"}) == (
            f"newcomer: banned until {short['until']}"
        )
        real = bans.clock
        bans.clock = lambda: real() + 61  # a minute later
        assert [ban["id"] for ban in (await http.get("/admin/bans")).json()["bans"]] == [long["id"]]
        await client.register("brief")
        lifted = await http.delete(f"/admin/bans/{long['id']}")
        assert (lifted.status_code, lifted.json()) == (200, long)
        assert (await http.get("/admin/bans")).json() == {"bans": []}
        async with ws_client(server) as other:
            await other.register("lasting")
        for gone in (long["id"], short["id"], "nothing"):
            response = await http.delete(f"/admin/bans/{gone}")
            assert (response.status_code, response.json()) == (404, {"detail": f"no active ban {gone!r}"})


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"nickname": "a", "address": "192.0.2.1", "minutes": 5}, "give exactly one of nickname and address"),
        ({"minutes": 5}, "give exactly one of nickname and address"),
        ({"address": "example.org", "minutes": 5}, "address: 'example.org' is not an IP address or network"),
        ({"address": "10.0.0.0/33", "minutes": 5}, "address: '10.0.0.0/33' is not an IP address or network"),
        ({"nickname": "abc", "minutes": 0}, "minutes: "),
        ({"nickname": "abc", "minutes": 525_601}, "minutes: "),
        ({"nickname": "abc"}, "minutes: missing"),
        ({"nickname": "abc", "minutes": 5, "room": "Attic"}, "room: 'Attic' is not a room of this instance"),
        ({"nickname": "abc", "minutes": 5, "reason": "x" * 201}, "reason: "),
        ({"nickname": "abc", "minutes": 5, "nick": "typo"}, "nick: "),
    ],
)
async def test_a_ban_that_cannot_be_made_is_422(
    server_factory: ServerFactory, body: dict[str, Any], detail: str
) -> None:
    server = moderated(server_factory)
    async with admin(server) as http:
        response = await http.post("/admin/bans", json=body)
        assert response.status_code == 422
        assert response.json()["detail"].startswith(detail), response.json()
        assert (await http.get("/admin/bans")).json() == {"bans": []}


# Delete from history.


async def test_a_deleted_message_leaves_the_history_everywhere(server_factory: ServerFactory) -> None:
    server = moderated(server_factory, max_stored_messages=5)
    async with channel_client(server) as sender, admin(server) as http:
        await sender.register("sender")
        for word in ("first", "second", "third"):
            await sender.send(text("sender", word))
        ids = {}
        for _ in range(3):
            frame = await next_channel_frame(sender, skip=("nb_users", "newcomer"))
            ids[frame["text"]] = frame["id"]
        response = await http.delete(f"/admin/rooms/QGIS/messages/{ids['second']}")
        assert (response.status_code, response.json()) == (200, {"room": "QGIS", "id": ids["second"]})
        assert [m["text"] for m in (await http.get("/room/QGIS/last")).json()] == ["first", "third"]
        assert [m["id"] for m in (await http.get("/channel/QGIS/last")).json()] == [
            ids["first"],
            ids["third"],
        ]
        async with ws_client(server) as newcomer, channel_client(server) as channel:
            assert [(await next_frame(newcomer))["text"] for _ in range(2)] == ["first", "third"]
            assert [(await next_channel_frame(channel))["id"] for _ in range(2)] == [
                ids["first"],
                ids["third"],
            ]
        again = await http.delete(f"/admin/rooms/QGIS/messages/{ids['second']}")
        assert (again.status_code, again.json()) == (
            404,
            {"detail": f"no message {ids['second']!r} in the history of room 'QGIS'"},
        )
        elsewhere = await http.delete(f"/admin/rooms/Living%20room/messages/{ids['first']}")
        assert elsewhere.status_code == 404
        unknown = await http.delete(f"/admin/rooms/Attic/messages/{ids['first']}")
        assert (unknown.status_code, unknown.json()) == (404, {"detail": "room 'Attic' not found"})


# Announce.


async def test_an_announcement_reaches_both_dialects_from_the_announcer(
    server_factory: ServerFactory,
) -> None:
    server = moderated(server_factory, max_stored_messages=5)
    async with ws_client(server) as room, channel_client(server) as channel, admin(server) as http:
        response = await http.post("/admin/rooms/QGIS/announce", json={"text": "Maintenance at 18:00"})
        assert response.status_code == 201
        answer = response.json()
        assert list(answer) == ["room", "id", "timestamp"]
        assert await next_frame(room) == {
            "type": "text",
            "author": "moderator",
            "avatar": None,
            "text": "Maintenance at 18:00",
        }
        frame = await next_channel_frame(channel)
        assert (frame["author"], frame["id"], frame["timestamp"]) == (
            "moderator",
            answer["id"],
            answer["timestamp"],
        )
        assert (await http.get("/channel/QGIS/last")).json() == [frame]
        for body in ({"text": ""}, {"text": "x" * 256}, {}):
            assert (await http.post("/admin/rooms/QGIS/announce", json=body)).status_code == 422
        assert (await http.post("/admin/rooms/Attic/announce", json={"text": "hi"})).status_code == 404


async def test_nobody_may_take_the_announcers_name(server_factory: ServerFactory) -> None:
    server = moderated(server_factory, announcer_name="Herald")
    reserved = "'{}' is reserved for the moderators' announcements"
    async with ws_client(server) as room, channel_client(server) as channel, admin(server) as http:
        for client, name in ((room, "herald"), (channel, "HERALD"), (room, FULLWIDTH)):
            assert await refusal(
                client, {"type": "newcomer", "newcomer": name}
            ) == "newcomer: " + reserved.format(name)
        assert await refusal(channel, text("Herald")) == "author: " + reserved.format("Herald")
        for route in ("/room/QGIS/text", "/channel/QGIS/text"):
            response = await http.put(route, json=text("herald"))
            assert (response.status_code, response.json()) == (
                409,
                {"detail": "author: " + reserved.format("herald")},
            )
        assert (await http.post("/admin/rooms/QGIS/announce", json={"text": "hello"})).status_code == 201
        assert (await next_frame(room))["author"] == "Herald"


# What moderators see.


async def test_connections_list_every_socket_of_the_room(server_factory: ServerFactory) -> None:
    server = moderated(server_factory)
    async with (
        ws_client(server) as talker,
        channel_client(server, additional_headers={"X-Forwarded-For": "192.0.2.44"}) as lurker,
        ws_client(server, "Living room"),
        admin(server) as http,
    ):
        await talker.register("talker")
        await talker.send(text("talker", "one"))
        await talker.send(text("talker", "two"))
        await wait_type(talker, "text", text="two")
        await wait_channel_type(lurker, "text", text="two")
        listing = (await http.get("/admin/rooms/QGIS/connections")).json()
        assert listing["room"] == "QGIS"
        entries = {entry["dialect"]: entry for entry in listing["connections"]}
        assert set(entries) == {"room", "channel"}
        assert entries["room"] == {
            "nickname": "talker",
            "address": "127.0.0.1",
            "dialect": "room",
            "connected_since": entries["room"]["connected_since"],
            "messages_sent": 3,  # the newcomer and two texts
            "node": "local",
        }
        assert (entries["channel"]["nickname"], entries["channel"]["address"]) == (None, "192.0.2.44")
        assert entries["channel"]["messages_sent"] == 0
        for entry in entries.values():
            assert ISO.fullmatch(entry["connected_since"])
        response = await http.get("/admin/rooms/Attic/connections")
        assert (response.status_code, response.json()) == (404, {"detail": "room 'Attic' not found"})


async def test_every_action_is_in_the_trail_the_log_and_the_metrics(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = moderated(server_factory, max_stored_messages=5)
    async with ws_client(server) as troll, admin(server) as http, admin(server, OTHER_SECRET) as bob:
        await troll.register("troll")
        await http.post("/admin/rooms/QGIS/kick", json={"nickname": "troll", "reason": "spam"})
        await closing(troll)
        ban = (await bob.post("/admin/bans", json={"address": "203.0.113.0/24", "minutes": 5})).json()
        await bob.delete(f"/admin/bans/{ban['id']}")
        said = (await http.post("/admin/rooms/QGIS/announce", json={"text": "behave"})).json()
        await http.delete(f"/admin/rooms/QGIS/messages/{said['id']}")
        actions = (await bob.get("/admin/audit")).json()["actions"]
        metrics = (await http.get("/metrics")).text
    for entry in actions:
        assert ISO.fullmatch(entry.pop("at"))
    assert actions == [
        {"moderator": "alice", "action": "delete", "room": "QGIS", "target": said["id"], "reason": None},
        {"moderator": "alice", "action": "announce", "room": "QGIS", "target": said["id"], "reason": None},
        {"moderator": "bob", "action": "lift", "room": None, "target": "203.0.113.0/24", "reason": None},
        {"moderator": "bob", "action": "ban", "room": None, "target": "203.0.113.0/24", "reason": None},
        {"moderator": "alice", "action": "kick", "room": "QGIS", "target": "troll", "reason": "spam"},
    ]
    lines = [record for record in caplog.records if record.name == "gischat.moderation"]
    assert [record.__dict__["action"] for record in lines] == ["kick", "ban", "lift", "announce", "delete"]
    kick = json.loads(JsonFormatter().format(lines[0]))
    assert {key: kick[key] for key in ("logger", "moderator", "action", "room", "target", "reason")} == {
        "logger": "gischat.moderation",
        "moderator": "alice",
        "action": "kick",
        "room": "QGIS",
        "target": "troll",
        "reason": "spam",
    }
    for action in ("kick", "ban", "lift", "announce", "delete"):
        assert f'gischat_moderation_actions_total{{action="{action}"}} 1.0' in metrics
    assert 'gischat_connections_dropped_total{cause="moderator"} 1.0' in metrics


async def test_no_secret_reaches_a_log_line_or_a_metric(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = moderated(server_factory, admin_failures_per_minute=2)
    async with admin(server) as http:
        await http.get("/admin/bans")
        await http.post("/admin/bans", json={"nickname": "abc", "minutes": 5, "reason": "test"})
        metrics = (await http.get("/metrics")).text
    async with admin(server, secret=SECRET + "x") as wrong:
        for _ in range(3):
            await wrong.get("/admin/audit")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, admin_tokens=f"alice:{SECRET[:20]}")
    captured = caplog.text + "".join(repr(record.__dict__) for record in caplog.records)
    for secret in (SECRET, OTHER_SECRET, SECRET[:20]):
        assert secret not in captured
        assert secret not in metrics
        assert secret not in str(info.value)
    assert any(record.name == "gischat.moderation" for record in caplog.records)


async def test_a_kick_without_reason_says_so_briefly(server_factory: ServerFactory) -> None:
    """The close reason is the bare "kicked by a moderator"; the departure shows in the users list."""
    server = moderated(server_factory)
    async with ws_client(server) as troll, admin(server) as http:
        await troll.register("troll")
        await http.post("/admin/rooms/QGIS/kick", json={"nickname": "troll"})
        closed = await closing(troll)
        assert closed.rcvd is not None
        assert closed.rcvd.reason == "kicked by a moderator"

        async def gone() -> bool:
            return bool((await http.get("/room/QGIS/users")).json() == [])

        await wait_for(gone)
