"""Both dialects in one conversation: QTribu on `/room/QGIS/ws`, QChat and QField on `/channel/QGIS/ws`.

Every frame is read strictly and checked against its own dialect's exact key list, in order.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from test_images import b64, photo
from websockets.exceptions import InvalidStatus

from gischat.settings import load_settings
from gischat.upstream import ignored_upstream_settings

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
from wire import (
    CHANNEL_KEYS,
    ENVELOPE,
    GEOJSON_ORDER,
    check_channel_shape,
    next_channel_frame,
    next_frame,
    parse_strict,
    wait_channel_type,
    wait_type,
)

pytestmark = pytest.mark.anyio

CRS = {"crs_wkt": 'GEOGCRS["WGS 84"]', "crs_authid": "EPSG:4326"}
POINT = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.35, 48.85]}, "properties": {}}
MODEL_XML = (
    '<!DOCTYPE model><Option type="Map"><Option name="model_name" value="buffer" type="QString"/></Option>'
)
SCRIPT_CODE = "from qgis.core import QgsProcessingAlgorithm\n"


def layer(author: str, name: str = "wells", style: str | None = None) -> dict[str, Any]:
    return {
        "type": "geojson",
        "author": author,
        "avatar": None,
        "layer_name": name,
        **CRS,
        "geojson": {"type": "FeatureCollection", "features": [POINT]},
        "style": style,
    }


def position(author: str) -> dict[str, Any]:
    return {"type": "position", "author": author, "avatar": None, **CRS, "x": 2.35, "y": 48.85}


def model(author: str, name: str = "buffer") -> dict[str, Any]:
    return {"type": "model", "author": author, "avatar": None, "model_name": name, "raw_xml": MODEL_XML}


def script(author: str, name: str = "hello") -> dict[str, Any]:
    return {"type": "script", "author": author, "avatar": None, "name": name, "raw_pycode": SCRIPT_CODE}


def shared_messages(author: str) -> list[dict[str, Any]]:
    """One message of each type both dialects have, as a client sends it."""
    return [
        text(author, "hi both"),
        {"type": "image", "author": author, "avatar": "cam.svg", "image_data": b64(photo((40, 30)))},
        layer(author, style="<qgis/>"),
        {"type": "crs", "author": author, "avatar": None, **CRS},
        {"type": "bbox", "author": author, "avatar": None, **CRS, "xmin": 1, "xmax": 2, "ymin": 3, "ymax": 4},
    ]


async def channel_refused(client: Client, frame: dict[str, Any] | str) -> str:
    """Send a bad frame on a channel socket; the next relevant frame is a 3.x `uncompliant`."""
    await client.send(frame)
    message = await next_channel_frame(client)
    assert message["type"] == "uncompliant", f"expected uncompliant, got {message}"
    assert list(message) == [*ENVELOPE, "reason"]
    reason = message["reason"]
    assert isinstance(reason, str)
    return reason


@asynccontextmanager
async def conversation(server: LiveServer) -> AsyncIterator[tuple[Client, Client, Client]]:
    """QTribu (room), QChat and QField (channel), registered in one conversation."""
    async with AsyncExitStack() as stack:
        qtribu = await stack.enter_async_context(ws_client(server, "QGIS"))
        qchat = await stack.enter_async_context(channel_client(server, "QGIS"))
        qfield = await stack.enter_async_context(channel_client(server, "QGIS"))
        for client, name in ((qtribu, "tribu"), (qchat, "qchatter"), (qfield, "fielder")):
            await client.register(name)
        # Each socket has seen every registration before the test speaks.
        await wait_type(qtribu, "newcomer", newcomer="fielder")
        await wait_channel_type(qchat, "newcomer", newcomer="fielder")
        yield qtribu, qchat, qfield


async def test_channel_routes_list_the_rooms(http: httpx.AsyncClient) -> None:
    rooms = (await http.get("/rooms")).json()
    assert (await http.get("/channels")).json() == rooms
    status = (await http.get("/status")).json()
    assert status["channels"] == status["rooms"]
    for route in ("/channel/Attic/users", "/channel/Attic/last"):
        response = await http.get(route)
        assert response.status_code == 404
        assert response.json() == {"detail": "channel 'Attic' not found"}
    response = await http.put("/channel/Attic/text", json=text("abc"))
    assert response.status_code == 404


async def test_unknown_channel_is_refused_at_the_handshake(server: LiveServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with channel_client(server, "Attic"):
            pass
    assert refused.value.response.status_code == 403
    assert orjson.loads(refused.value.response.body or b"{}") == {"detail": "channel 'Attic' not found"}


async def test_every_shared_type_reaches_both_dialects_in_its_own_shape(server: LiveServer) -> None:
    async with conversation(server) as (qtribu, qchat, qfield):
        for sender in (qtribu, qchat):
            author = "tribu" if sender is qtribu else "qchatter"
            for message in shared_messages(author):
                await sender.send(message)
                room_frame = await next_frame(qtribu)  # 2.x keys, strictly
                channel_frames = [await next_channel_frame(c) for c in (qchat, qfield)]
                assert room_frame["type"] == message["type"]
                assert room_frame["author"] == author
                assert channel_frames[0] == channel_frames[1], "one id, one timestamp for every recipient"
                channel = channel_frames[0]
                assert list(channel) == ENVELOPE + CHANNEL_KEYS[message["type"]]
                # The same keys and values after the envelope.
                assert {k: v for k, v in channel.items() if k not in ("id", "timestamp")} == room_frame
                if message["type"] == "geojson":
                    assert list(room_frame) == GEOJSON_ORDER
                    assert channel["style"] == "<qgis/>"


async def test_layer_style_switch_is_for_rooms_only(server_factory: ServerFactory) -> None:
    server = server_factory(geojson_style=False)
    async with conversation(server) as (qtribu, qchat, _):
        await qchat.send(layer("qchatter"))
        room_frame = parse_strict(await qtribu.recv_raw())
        while room_frame["type"] == "nb_users":
            room_frame = parse_strict(await qtribu.recv_raw())
        assert list(room_frame) == GEOJSON_ORDER[:-1]  # QTribu 1.1.x refuses `style`
        channel = await next_channel_frame(qchat)
        assert channel["style"] is None  # always present on 3.x


async def test_ids_are_the_servers_fresh_for_each_message_and_shared_with_history(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(max_stored_messages=10)
    async with conversation(server) as (_, qchat, qfield):
        spoofed = {**text("qchatter", "first"), "id": "not-mine", "timestamp": 1}
        await qchat.send(spoofed)
        await qchat.send({**text("qchatter", "second"), "id": "00000000-0000-4000-8000-000000000000"})
        before = int(time.time())
        first, second = await next_channel_frame(qfield), await next_channel_frame(qfield)
        assert (first["text"], second["text"]) == ("first", "second")
        assert first["id"] != second["id"]
        assert "00000000-0000-4000-8000-000000000000" not in (first["id"], second["id"])
        assert abs(first["timestamp"] - before) <= 2
        assert [await next_channel_frame(qchat) for _ in range(2)] == [first, second]
        async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as http:
            last = (await http.get("/channel/QGIS/last")).json()
            assert last[-2:] == [first, second]
            room_last = (await http.get("/room/QGIS/last")).json()
            assert room_last[-2:] == [
                {k: v for k, v in m.items() if k not in ("id", "timestamp")} for m in last[-2:]
            ]


async def test_channel_only_types_go_to_channels_only(server: LiveServer) -> None:
    async with conversation(server) as (qtribu, qchat, qfield):
        await qfield.send(position("fielder"))
        await qchat.send(model("qchatter"))
        await qtribu.send(text("tribu", "after"))
        for client in (qchat, qfield):
            got = [await next_channel_frame(client) for _ in range(3)]
            assert [m["type"] for m in got] == ["position", "model", "text"]
            assert got[1]["model_group"] is None
        # QTribu never sees a type its dataclasses lack: its next frame is the text.
        assert (await next_frame(qtribu))["text"] == "after"
        reason = await refused_on_room(qtribu, position("tribu"))
        assert reason == "type: unknown message type 'position'"


async def refused_on_room(client: Client, frame: dict[str, Any]) -> str:
    await client.send(frame)
    message = await next_frame(client)
    assert message["type"] == "uncompliant"
    assert list(message) == ["type", "reason"]
    reason = message["reason"]
    assert isinstance(reason, str)
    return reason


async def test_scripts_are_refused_unless_allowed(server_factory: ServerFactory) -> None:
    closed = server_factory()
    async with channel_client(closed) as qchat:
        await qchat.register("qchatter")
        reason = await channel_refused(qchat, script("qchatter"))
        assert reason.startswith("script: scripts are not accepted on this instance")
    opened = server_factory(allow_scripts=True, max_script_length=100)
    async with channel_client(opened) as qchat, ws_client(opened) as qtribu:
        await qchat.register("qchatter")
        await qchat.send(script("qchatter"))
        got = await wait_channel_type(qchat, "script")
        assert (got["name"], got["raw_pycode"]) == ("hello", SCRIPT_CODE)
        too_long = {**script("qchatter"), "raw_pycode": "#" * 101}
        assert await channel_refused(qchat, too_long) == "raw_pycode: too long (101 characters, max 100)"
        await qtribu.send(text("tribu", "no script here"))
        # Every 2.x frame is shape-checked on the way: a script would fail as an unknown type.
        await wait_type(qtribu, "text", text="no script here")


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "..", "bell\x07", "line\nbreak"])
async def test_names_that_could_become_paths_are_refused_in_both_dialects(
    server_factory: ServerFactory, name: str
) -> None:
    server = server_factory(allow_scripts=True)
    async with channel_client(server) as qchat, ws_client(server) as qtribu:
        await qchat.register("qchatter")
        await qtribu.register("tribu")
        await wait_channel_type(qchat, "newcomer", newcomer="tribu")
        assert (await channel_refused(qchat, script("qchatter", name))).startswith("name: must not")
        assert (await channel_refused(qchat, model("qchatter", name))).startswith("model_name: must not")
        assert (await channel_refused(qchat, layer("qchatter", name))).startswith("layer_name: must not")
        assert (await refused_on_room(qtribu, layer("tribu", name))).startswith("layer_name: must not")


async def test_refusals_come_in_each_sockets_dialect(server: LiveServer) -> None:
    async with channel_client(server) as qchat, ws_client(server) as qtribu:
        assert await channel_refused(qchat, "{nope") == "message is not valid JSON"
        assert await refused_on_room(qtribu, {"type": "nb_users", "nb_users": 3}) == (
            "type: 'nb_users' messages are sent by the server only"
        )


async def test_likes_cross_dialects_to_the_liked_author_only(server: LiveServer) -> None:
    async with conversation(server) as (qtribu, qchat, qfield):
        like = {"type": "like", "liker_author": "tribu", "liked_author": "qchatter", "message": "hi both"}
        await qtribu.send(like)
        got = await next_channel_frame(qchat)
        assert list(got) == [*ENVELOPE, "liker_author", "liked_author", "message"]
        assert got["liker_author"] == "tribu"
        await qchat.send(
            {"type": "like", "liker_author": "qchatter", "liked_author": "tribu", "message": "x"}
        )
        assert (await next_frame(qtribu)) == {
            "type": "like",
            "liker_author": "qchatter",
            "liked_author": "tribu",
            "message": "x",
        }
        # QField was liked by nobody: its next frame is the next broadcast.
        await qtribu.send(text("tribu", "marker"))
        assert (await next_channel_frame(qfield))["text"] == "marker"


async def test_departures_are_announced_in_both_dialects(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with conversation(server) as (qtribu, qchat, qfield):
        await qfield.close()
        assert (await next_frame(qtribu)) == {"type": "exiter", "exiter": "fielder"}
        exiter = await next_channel_frame(qchat)
        assert (exiter["type"], exiter["exiter"]) == ("exiter", "fielder")
        assert (await next_channel_frame(qchat, skip=()))["type"] == "nb_users"
        await qtribu.close()
        assert (await next_channel_frame(qchat))["exiter"] == "tribu"
        assert await qchat_users(http) == ["qchatter"]


async def qchat_users(http: httpx.AsyncClient) -> list[str]:
    users = (await http.get("/channel/QGIS/users")).json()
    assert users == (await http.get("/room/QGIS/users")).json()
    assert isinstance(users, list)
    return users


async def test_qfields_own_exiter_is_ignored_on_channels_and_refused_on_rooms(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    async with conversation(server) as (qtribu, qchat, qfield):
        await qfield.send({"type": "exiter", "exiter": "fielder"})
        await qfield.send(text("fielder", "still here"))
        # No refusal, nothing relayed: the next frame everyone gets is the text.
        assert (await next_channel_frame(qfield))["text"] == "still here"
        assert (await next_channel_frame(qchat))["text"] == "still here"
        assert (await next_frame(qtribu))["text"] == "still here"
        assert "fielder" in await qchat_users(http)
        reason = await refused_on_room(qtribu, {"type": "exiter", "exiter": "tribu"})
        assert reason == "type: 'exiter' messages are sent by the server only"


async def test_nicknames_are_unique_across_dialects(server: LiveServer) -> None:
    async with ws_client(server) as qtribu, channel_client(server) as qchat:
        await qtribu.register("Alice")
        await wait_channel_type(qchat, "newcomer", newcomer="Alice")
        assert await channel_refused(qchat, {"type": "newcomer", "newcomer": "alice"}) == (
            "newcomer: 'alice' is already taken in this room"
        )
        assert (await channel_refused(qchat, text("ALICE"))).startswith("author: 'ALICE' is registered")


async def test_replies_are_accepted_and_never_sent_by_default(server: LiveServer) -> None:
    async with conversation(server) as (qtribu, qchat, _):
        await qchat.send({**text("qchatter", "question"), "in_reply_to_id": None})
        question = await next_channel_frame(qchat)
        await qchat.send({**text("qchatter", "answer"), "in_reply_to_id": question["id"]})
        answer = await next_channel_frame(qchat)
        assert "in_reply_to_id" not in answer  # QChat 1.0-1.6 would lose the message
        await qchat.send({**text("qchatter", "odd"), "in_reply_to_id": "whatever"})
        assert "in_reply_to_id" not in await next_channel_frame(qchat)
        assert [(await next_frame(qtribu))["text"] for _ in range(3)] == ["question", "answer", "odd"]


async def test_reply_threads_point_to_messages_of_the_conversation(server_factory: ServerFactory) -> None:
    server = server_factory(reply_threads=True)
    async with conversation(server) as (qtribu, qchat, qfield):
        await qtribu.send(text("tribu", "question"))
        question = await next_channel_frame(qchat)
        await next_channel_frame(qfield)
        await next_frame(qtribu)
        for reply in (text("qchatter", "answer"), position("qchatter")):
            await qchat.send({**reply, "in_reply_to_id": question["id"]})
            answer = await next_channel_frame(qfield)
            assert list(answer)[-1] == "in_reply_to_id"
            assert answer["in_reply_to_id"] == question["id"]
            assert answer == await next_channel_frame(qchat)
        assert "in_reply_to_id" not in await next_frame(qtribu)  # the 2.x dialect has no replies
        unknown = "00000000-0000-4000-8000-000000000000"
        for bad in (unknown, "not an id", 42, question["id"].upper()):
            reason = await channel_refused(qchat, {**text("qchatter", "lost"), "in_reply_to_id": bad})
            assert reason == "in_reply_to_id: not the id of a recent message of this conversation"
        await qchat.send({**text("qchatter", "plain"), "in_reply_to_id": None})
        assert "in_reply_to_id" not in await next_channel_frame(qchat)


async def test_history_replays_in_each_dialect_with_the_live_ids(server_factory: ServerFactory) -> None:
    server = server_factory(max_stored_messages=10)
    async with channel_client(server) as qfield:
        await qfield.register("fielder")
        await qfield.send(position("fielder"))
        await qfield.send(text("fielder", "over here"))
        live = [await next_channel_frame(qfield) for _ in range(2)]
    async with channel_client(server) as late_channel, ws_client(server) as late_room:
        replay = [await next_channel_frame(late_channel) for _ in range(2)]
        assert replay == live
        assert (await next_frame(late_room))["text"] == "over here"  # the position is skipped
    async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as http:
        assert (await http.get("/channel/QGIS/last")).json() == live
        assert [m["type"] for m in (await http.get("/room/QGIS/last")).json()] == ["text"]


async def test_put_on_a_channel_echoes_the_channel_frame(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server) as qtribu, channel_client(server) as qchat:
        response = await http.put("/channel/QGIS/text", json={"author": "curl-bot", "text": "deployed"})
        assert response.status_code == 200
        echoed = parse_strict(response.text)
        check_channel_shape(echoed)
        assert echoed == await next_channel_frame(qchat)
        assert (await next_frame(qtribu)) == {k: v for k, v in echoed.items() if k not in ("id", "timestamp")}
        room_put = await http.put("/room/QGIS/text", json={"author": "curl-bot", "text": "again"})
        assert list(room_put.json()) == ["type", "author", "avatar", "text"]
        assert (await next_channel_frame(qchat))["text"] == "again"


async def test_large_layer_reaches_both_dialects(server: LiveServer) -> None:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [i / 1000, 1.0]},
            "properties": {"n": i},
        }
        for i in range(450)
    ]
    big = {**layer("qchatter", style="<qgis>" + "s" * 70_000 + "</qgis>")}
    big["geojson"] = {"type": "FeatureCollection", "features": features}
    async with conversation(server) as (qtribu, qchat, _):
        await qchat.send(big)  # above 64 KiB: parsed and prepared in a worker process
        channel = await next_channel_frame(qchat)
        room = await next_frame(qtribu)
        assert list(room) == GEOJSON_ORDER
        assert {k: v for k, v in channel.items() if k not in ("id", "timestamp")} == room
        assert len(room["geojson"]["features"]) == 450


async def test_closing_a_channel_socket_frees_its_nickname(server: LiveServer) -> None:
    async with channel_client(server) as first:
        await first.register("mobile")
    async with channel_client(server) as second:
        await second.register("mobile")


async def test_a_dropped_channel_socket_is_closed_like_a_room_one(server_factory: ServerFactory) -> None:
    server = server_factory(message_rate=1, message_burst=1, rate_strikes_per_minute=1)
    async with channel_client(server) as flooder:
        for index in range(4):
            await flooder.send(text("flood", str(index)))
        closed = await closing(flooder)
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1008


def test_upstream_setting_names_are_understood(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "CHANNELS": "QGIS,Geotribu",
        "NB_UVICORN_WORKERS": "3",
        "REDIS_HOST": "redis",
        "REDIS_PORT": "6380",
        "INSTANCE_ID": "abcdefghijklmnopqrstuvwxyz",
        "MAX_IMAGE_RAW_LENGTH": "5000000",
        "MAX_MODEL_RAW_LENGTH": "1000",
        "MAX_SCRIPT_RAW_LENGTH": "2000",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_env_file=None)
    assert settings.rooms == ["QGIS", "Geotribu"]
    assert settings.workers == 3
    assert settings.broker_url == "redis://redis:6380"
    assert settings.redis_key_prefix == "abcdefghijklmnopqrstuvwxyz"
    assert (settings.max_image_length, settings.max_model_length, settings.max_script_length) == (
        5_000_000,
        1000,
        2000,
    )
    monkeypatch.setenv("BROKER_URL", "redis://elsewhere:6379/1")
    assert load_settings(_env_file=None).broker_url == "redis://elsewhere:6379/1"  # BROKER_URL wins


def test_ignored_upstream_settings_are_named_with_their_reason(tmp_path: Any) -> None:
    assert ignored_upstream_settings({"ROOMS": "x"}, env_file=None) is None
    env_file = tmp_path / ".env"
    env_file.write_text("SENTRY_DSN=https://key@sentry.example.org/1\n")
    line = ignored_upstream_settings(
        {"MATRIX_CHAT_ENABLED": "true", "MATRIX_PING_TOKEN": "s3cret"}, str(env_file)
    )
    assert line is not None
    assert "MATRIX_CHAT_ENABLED, MATRIX_PING_TOKEN" in line
    assert "replaced by the Matrix application service bridge" in line
    assert "docs/matrix.md" in line
    assert "SENTRY_DSN" in line
    assert "s3cret" not in line
    assert "sentry.example.org" not in line
    assert "\n" not in line


async def test_counts_include_both_dialects(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server), channel_client(server), channel_client(server, "Living room"):

        async def settled() -> bool:
            status = (await http.get("/status")).json()
            return {r["name"]: r["nb_connected_users"] for r in status["channels"]} == {
                "QGIS": 2,
                "Field and mobile": 0,
                "Living room": 1,
            }

        await wait_for(settled)
