"""Room history: what a newcomer is shown, in which order and shape, and what is never kept."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from test_images import b64, photo

from gischat.protocol.dialects import Dialect, Post
from gischat.rooms.history import History, worth_keeping

from conftest import TIMEOUT, Client, ServerFactory, text, ws_client
from wire import check_shape, next_frame, parse_strict, wait_type

pytestmark = pytest.mark.anyio

CRS = {"crs_wkt": 'GEOGCRS["WGS 84"]', "crs_authid": "EPSG:4326"}


def layer(author: str) -> dict[str, Any]:
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.35, 48.85]}, "properties": {}}
    return {
        "type": "geojson",
        "author": author,
        "avatar": None,
        "layer_name": "wells",
        **CRS,
        "geojson": {"type": "FeatureCollection", "features": [point]},
    }


async def first_frames(client: Client, count: int) -> list[str]:
    """The raw frames a new socket receives, each shape-checked."""
    frames = [await client.recv_raw() for _ in range(count)]
    for raw in frames:
        check_shape(parse_strict(raw))
    return frames


def test_history_keeps_the_last_messages_within_count_and_bytes() -> None:
    history = History(max_messages=3, max_bytes=100)
    for index in range(5):
        history.add(Post("text", f'"text":"{index}"'))
    assert [post.body for post in history.items()] == ['"text":"2"', '"text":"3"', '"text":"4"']
    history.add(Post("text", '"text":"' + "x" * 53 + '"'))
    history.add(Post("text", '"text":"' + "y" * 23 + '"'))
    assert [post.size for post in history.items()] == [62, 32]  # 104 characters with "4": over
    history.add(Post("text", '"text":"' + "z" * 41 + '"'))
    assert [post.size for post in history.items()] == [32, 50]
    history.add(Post("text", '"text":"' + "w" * 200 + '"'))  # larger than the whole budget: not kept
    room_texts = [message["text"] for message in orjson.loads(history.as_json(Dialect.ROOM))]
    assert room_texts == ["y" * 23, "z" * 41]
    channel = orjson.loads(history.as_json(Dialect.CHANNEL))
    assert [list(message)[:3] for message in channel] == [["type", "id", "timestamp"]] * 2
    assert History(max_messages=0, max_bytes=100).as_json(Dialect.CHANNEL) == b"[]"


def test_history_replays_channel_only_types_to_channels_only() -> None:
    history = History(max_messages=5, max_bytes=10_000)
    history.add(Post("text", '"author":"abc","avatar":null,"text":"hi"'))
    history.add(
        Post("position", '"author":"abc","avatar":null,"crs_wkt":"w","crs_authid":"a","x":1.0,"y":2.0')
    )
    assert [message["type"] for message in orjson.loads(history.as_json(Dialect.ROOM))] == ["text"]
    channel = orjson.loads(history.as_json(Dialect.CHANNEL))
    assert [message["type"] for message in channel] == ["text", "position"]


@pytest.mark.parametrize(
    ("kind", "said", "kept"),
    [
        ("text", "hello", True),
        ("text", "givemesomecheese", False),
        ("text", " IAmARobot ", False),
        ("image", None, True),
        ("geojson", None, True),
        ("crs", None, True),
        ("bbox", None, True),
        ("like", None, False),
        ("newcomer", None, False),
        ("exiter", None, False),
        ("nb_users", None, False),
        ("uncompliant", None, False),
    ],
)
def test_what_is_worth_keeping(kind: str, said: str | None, kept: bool) -> None:
    assert worth_keeping(kind, said) is kept


async def test_newcomers_get_the_last_messages_right_after_nb_users(server_factory: ServerFactory) -> None:
    server = server_factory(max_stored_messages=5)
    bbox = {
        "type": "bbox",
        "author": "jane",
        "avatar": None,
        **CRS,
        "xmin": 1.0,
        "xmax": 2.0,
        "ymin": 3.0,
        "ymax": 4.0,
    }
    crs = {"type": "crs", "author": "jane", "avatar": "a.svg", **CRS}
    image = {"type": "image", "author": "jane", "avatar": None, "image_data": b64(photo((1200, 900)))}
    async with ws_client(server) as jane, ws_client(server, "Living room") as elsewhere:
        await jane.register("jane")
        sent = [
            text("jane", "first"),
            text("jane", "givemesomecheese"),
            crs,
            {"type": "like", "liker_author": "jane", "liked_author": "jane", "message": "first"},
            bbox,
            image,
            layer("jane"),
            text("jane", "last"),
        ]
        live: list[str] = []
        for message in sent:
            await jane.send(message)
            if message["type"] != "like":
                while True:  # the liked author is jane herself: skip the like she receives
                    raw = await jane.recv_raw()
                    kind = parse_strict(raw)["type"]
                    if kind == message["type"]:
                        live.append(raw)
                        break
        await elsewhere.send(text("other", "another room"))
        await wait_type(elsewhere, "text", text="another room")

        async with ws_client(server) as newcomer:
            frames = await first_frames(newcomer, 6)
            assert parse_strict(frames[0]) == {"type": "nb_users", "nb_users": 2}
            # crs, bbox, image, layer, last: the five latest kept, byte for byte as broadcast.
            assert frames[1:] == [live[2], live[3], live[4], live[5], live[6]]
            resized = parse_strict(frames[3])["image_data"]
            assert isinstance(resized, str)
            assert len(resized) < len(image["image_data"] or "")

            async with httpx.AsyncClient(timeout=TIMEOUT) as http:
                response = await http.get(f"{server.http_url}/room/QGIS/last")
                assert response.status_code == 200
                assert response.json() == [parse_strict(raw) for raw in frames[1:]]
                other = await http.get(f"{server.http_url}/room/Living%20room/last")
                assert other.json() == [text("other", "another room")]
                missing = await http.get(f"{server.http_url}/room/Attic/last")
                assert missing.status_code == 404
                assert missing.json() == {"detail": "room 'Attic' not found"}
            await newcomer.send(text("newbie", "live again"))
            assert (await next_frame(newcomer))["text"] == "live again"


async def test_texts_posted_over_http_are_kept_too(server_factory: ServerFactory) -> None:
    server = server_factory(max_stored_messages=2)
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        for body in ("one", "two", "three"):
            response = await http.put(f"{server.http_url}/room/QGIS/text", json=text("curl-bot", body))
            assert response.status_code == 200
        assert [m["text"] for m in (await http.get(f"{server.http_url}/room/QGIS/last")).json()] == [
            "two",
            "three",
        ]
    async with ws_client(server) as client:
        frames = [parse_strict(raw) for raw in await first_frames(client, 3)]
        assert [frame.get("text") for frame in frames] == [None, "two", "three"]


async def test_history_off(server_factory: ServerFactory) -> None:
    server = server_factory(max_stored_messages=0)
    async with ws_client(server) as speaker:
        await speaker.send(text("someone", "not kept"))
        await wait_type(speaker, "text")
        async with ws_client(server) as newcomer:
            await newcomer.send(text("newbie", "marker"))
            assert (await next_frame(newcomer))["text"] == "marker"  # nothing replayed before it
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            assert (await http.get(f"{server.http_url}/room/QGIS/last")).json() == []
