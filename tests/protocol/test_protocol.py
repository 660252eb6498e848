"""The websocket protocol as a client sees it: wire shapes, fan-out, rooms, validation.

Every frame read through `next_frame` is parsed strictly (one JSON object, no duplicate
keys, no NaN/Infinity) and checked against the exact key set of its type, so each test
also checks the wire contract of whatever else it happens to receive.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus

from conftest import Client, LiveServer, ServerFactory, text, ws_client
from wire import WIRE_KEYS, next_frame, parse_strict, refused, wait_type

pytestmark = pytest.mark.anyio

WKT = 'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984"],CS[ellipsoidal,2],ID["EPSG",4326]]'


# --- helpers -------------------------------------------------------------------------------------


async def still_open(client: Client, author: str = "survivor") -> None:
    """Prove the socket is alive and served: a valid message comes back as a broadcast."""
    marker = text(author, "still here")
    await client.send(marker)
    assert await next_frame(client) == marker


def typed(value: Any) -> Any:
    """A value with the JSON type of every leaf made explicit: 1 and 1.0 compare different."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


def png_base64(size: tuple[int, int] = (4, 3)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def point_feature(x: float = 1.0, y: float = 2.0, **properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [x, y]},
        "properties": properties,
    }


def geojson_message(geojson: Any, author: str = "mapper") -> dict[str, Any]:
    return {
        "type": "geojson",
        "author": author,
        "avatar": None,
        "layer_name": "roads",
        "crs_wkt": WKT,
        "crs_authid": "EPSG:4326",
        "geojson": geojson,
        "style": None,  # as QTribu 1.2 sends it; test_style.py covers a layer without the key
    }


def collection(n: int) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [point_feature(i, i) for i in range(n)]}


def bbox_message(**values: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "bbox",
        "author": "viewer",
        "avatar": None,
        "crs_wkt": WKT,
        "crs_authid": "EPSG:4326",
        "xmin": -1.5,
        "xmax": 2.5,
        "ymin": 43.0,
        "ymax": 48.25,
    }
    message.update(values)
    return message


def crs_message() -> dict[str, Any]:
    return {
        "type": "crs",
        "author": "proj-fan",
        "avatar": "mIconCrs.svg",
        "crs_wkt": WKT,
        "crs_authid": "EPSG:4326",
    }


RICH_GEOJSON: dict[str, Any] = {
    "type": "FeatureCollection",
    "id": "layer-42",
    "name": "Sentiers",
    "bbox": [-10.0, -5.5, 20.0, 45.0],
    "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}},
    "x-custom": {"nested": [[1, 2], [3, [4, 5.5]], [], {}], "flag": True, "nothing": None},
    "features": [
        {
            "type": "Feature",
            "id": 1,
            "bbox": [0.0, 0.0, 1.0, 1.0],
            "geometry": {"type": "Point", "coordinates": [0.1, 0.2]},
            "properties": {
                "name": "Fontaine à l'eau ☕",
                "height": 12,
                "ratio": 0.30000000000000004,
                "tiny": 1e-7,
                "big": 9007199254740993,
                "u64_max": 18446744073709551615,
                "i64_min": -9223372036854775808,
                "subnormal": 5e-324,
                "huge": 1.7976931348623157e308,
                "exponent": 1e22,
                "control_and_emoji": "tab\t nul\u0000 line-sep\u2028 😀",
                "negative_zero": -0.0,
                "tags": ["a", "b", ["c", {"d": None}]],
                "empty_list": [],
                "empty_object": {},
                "visited": False,
                "note": None,
            },
            "foreign": {"deep": {"deeper": [1, "2", 3.0]}},
        },
        {
            "type": "Feature",
            "id": "way/123",
            "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1.5], [2, 0, 100]]},
            "properties": None,
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]],
                    [[2, 2], [3, 2], [3, 3], [2, 2]],
                ],
            },
            "properties": {"kind": "park with a hole"},
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "GeometryCollection",
                "geometries": [
                    {"type": "Point", "coordinates": [5, 5]},
                    {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]},
                ],
            },
            "properties": {},
        },
        {"type": "Feature", "geometry": None, "properties": {"only": "attributes"}},
    ],
}


# --- wire shapes ---------------------------------------------------------------------------------


BROADCAST_SAMPLES: dict[str, dict[str, Any]] = {
    "text": text("Jane-GIS", "Hi all!", avatar="mGeoPackage.svg"),
    "geojson": geojson_message(collection(2)),
    "crs": crs_message(),
    "bbox": bbox_message(),
}


@pytest.mark.parametrize("kind", sorted(BROADCAST_SAMPLES))
async def test_broadcast_types_have_exact_shape_and_reach_everyone(server: LiveServer, kind: str) -> None:
    sent = BROADCAST_SAMPLES[kind]
    async with ws_client(server) as a, ws_client(server) as b:
        await a.send(sent)
        for client in (a, b):
            received = await next_frame(client)
            assert received == sent
            assert set(received) == WIRE_KEYS[kind]


async def test_image_has_exact_shape_and_reaches_everyone(server: LiveServer) -> None:
    async with ws_client(server) as a, ws_client(server) as b:
        await a.send({"type": "image", "author": "photog", "avatar": "cam.svg", "image_data": png_base64()})
        for client in (a, b):
            received = await next_frame(client)
            assert set(received) == WIRE_KEYS["image"]
            assert received["type"] == "image"
            assert received["author"] == "photog"
            assert received["avatar"] == "cam.svg"
            image = Image.open(io.BytesIO(base64.b64decode(received["image_data"], validate=True)))
            assert image.size == (4, 3)


async def test_raw_frame_is_one_json_object_without_duplicate_keys(server: LiveServer) -> None:
    async with ws_client(server) as a:
        await a.send(text("rawcheck", "raw"))
        raw = await a.recv_raw()
        while parse_strict(raw)["type"] == "nb_users":
            raw = await a.recv_raw()
        # the strict parse above already refuses duplicate keys and trailing data
        assert raw.lstrip().startswith("{")
        assert raw.rstrip().endswith("}")
        assert parse_strict(raw) == text("rawcheck", "raw")


async def test_nb_users_shape_on_connect(server: LiveServer) -> None:
    async with ws_client(server, "Living room") as a:
        message = await wait_type(a, "nb_users")
        assert message == {"type": "nb_users", "nb_users": 1}


async def test_newcomer_shape(server: LiveServer) -> None:
    async with ws_client(server) as a, ws_client(server) as b:
        await a.send({"type": "newcomer", "newcomer": "Shaper", "avatar": "x.svg"})
        for client in (a, b):
            assert await next_frame(client) == {"type": "newcomer", "newcomer": "Shaper"}


async def test_exiter_shape(server: LiveServer) -> None:
    async with ws_client(server) as watcher:
        async with ws_client(server) as leaver:
            await leaver.register("leaver")
            await watcher.expect("newcomer", newcomer="leaver")
        assert await next_frame(watcher) == {"type": "exiter", "exiter": "leaver"}


async def test_like_shape(server: LiveServer) -> None:
    async with ws_client(server) as liker, ws_client(server) as liked:
        await liked.register("liked")
        await liker.send(
            {"type": "like", "liker_author": "liker", "liked_author": "liked", "message": "nice map", "x": 1}
        )
        assert await next_frame(liked) == {
            "type": "like",
            "liker_author": "liker",
            "liked_author": "liked",
            "message": "nice map",
        }


async def test_uncompliant_shape(server: LiveServer) -> None:
    async with ws_client(server) as a:
        await a.send("{")
        assert await next_frame(a) == {"type": "uncompliant", "reason": "message is not valid JSON"}


async def test_missing_avatar_is_null(server: LiveServer) -> None:
    async with ws_client(server) as a:
        samples = [
            {"type": "text", "author": "noface", "text": "hi"},
            {key: value for key, value in crs_message().items() if key != "avatar"},
            {key: value for key, value in bbox_message().items() if key != "avatar"},
            {key: value for key, value in geojson_message(collection(1)).items() if key != "avatar"},
        ]
        for sample in samples:
            await a.send(sample)
            received = await next_frame(a)
            assert received == {**sample, "avatar": None}
        await a.send({"type": "image", "author": "noface", "image_data": png_base64()})
        received = await next_frame(a)
        assert received["type"] == "image"
        assert received["avatar"] is None


EXTRA_KEY_SAMPLES: dict[str, dict[str, Any]] = {
    "text": text("extra", "x"),
    "image": {"type": "image", "author": "extra", "avatar": None, "image_data": png_base64()},
    "newcomer": {"type": "newcomer", "newcomer": "extra"},
    "geojson": geojson_message(collection(1)),
    "crs": crs_message(),
    "bbox": bbox_message(),
}


@pytest.mark.parametrize("kind", sorted(EXTRA_KEY_SAMPLES))
async def test_unknown_keys_from_clients_are_not_echoed(server: LiveServer, kind: str) -> None:
    extras = {"id": 7, "timestamp": "2024-01-01", "reason": "sneaky", "nb_users": 99, "geojson_extra": {}}
    async with ws_client(server) as a:
        await a.send({**EXTRA_KEY_SAMPLES[kind], **extras})
        received = await next_frame(a)
        assert received["type"] == kind
        assert set(received) == WIRE_KEYS[kind]


# --- fan-out and rooms ---------------------------------------------------------------------------


async def test_broadcast_includes_sender_and_stays_in_its_room(server: LiveServer) -> None:
    async with (
        ws_client(server) as a,
        ws_client(server) as b,
        ws_client(server, "Living room") as other,
        ws_client(server, "Field and mobile") as third,
    ):
        samples = [*BROADCAST_SAMPLES.values()]
        for sample in samples:
            await a.send(sample)
        for client in (a, b):
            for sample in samples:
                assert await next_frame(client) == sample
        # the other rooms' clients got nothing of it: their own message is the next thing they see
        for client, author in ((other, "other-room"), (third, "third-room")):
            marker = text(author, "marker")
            await client.send(marker)
            assert await next_frame(client) == marker


async def test_unknown_room_is_refused_with_403(server: LiveServer) -> None:
    for room in ("Nowhere", "qgis", "QGIS ", "Field%20and%20mobile"):
        with pytest.raises(InvalidStatus) as info:
            async with ws_client(server, room):
                pass
        assert info.value.response.status_code == 403, room
        assert info.value.response.body == f'{{"detail":"room {room!r} not found"}}'.encode()


async def test_room_name_with_spaces_works_percent_encoded(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    room = "Field and mobile"
    assert "%20" in server.ws_url(room)
    async with ws_client(server, room) as a, ws_client(server, room) as b:
        await wait_type(a, "nb_users", nb_users=2)
        await a.register("fielder")
        await b.expect("newcomer", newcomer="fielder")
        await a.send(text("fielder", "from the field"))
        assert await next_frame(b) == text("fielder", "from the field")
        response = await http.get(f"/room/{quote(room, safe='')}/users")
        assert response.status_code == 200
        assert response.json() == ["fielder"]


async def test_nb_users_on_connect_and_disconnect_reaches_latest_count(server: LiveServer) -> None:
    room = "Living room"
    async with ws_client(server, room) as first:
        assert await wait_type(first, "nb_users", nb_users=1) == {"type": "nb_users", "nb_users": 1}
        async with ws_client(server, room), ws_client(server, room), ws_client(server, room):
            await wait_type(first, "nb_users", nb_users=4)
            async with ws_client(server, room) as fifth:
                await wait_type(first, "nb_users", nb_users=5)
                await wait_type(fifth, "nb_users", nb_users=5)
            await wait_type(first, "nb_users", nb_users=4)
        await wait_type(first, "nb_users", nb_users=1)


async def test_nb_users_counts_only_its_room(server: LiveServer) -> None:
    async with ws_client(server, "Living room") as a:
        await wait_type(a, "nb_users", nb_users=1)
        async with ws_client(server, "QGIS"), ws_client(server, "QGIS") as q:
            await wait_type(q, "nb_users", nb_users=2)
            marker = text("living", "marker")
            await a.send(marker)
            assert await next_frame(a) == marker


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("author", "fragment"),
    [
        ("ab", "3 to 32"),
        ("", "3 to 32"),
        ("a" * 33, "3 to 32"),
        ("bad author", "letters"),
        ("bad.author", "letters"),
        ("bad@author", "letters"),
        ("bad/author", "letters"),
        ("bad\nauthor", "letters"),
        ("<script>", "letters"),
    ],
)
async def test_bad_author_is_uncompliant(server: LiveServer, author: str, fragment: str) -> None:
    async with ws_client(server) as a:
        reason = await refused(a, text(author, "hello"))
        assert reason.startswith("author")
        assert fragment in reason
        await still_open(a)


@pytest.mark.parametrize("author", ["abc", "a" * 32, "Jane_GIS-2", "---", "___", "123"])
async def test_good_author_at_the_limits_is_accepted(server: LiveServer, author: str) -> None:
    async with ws_client(server) as a:
        await a.send(text(author, "ok"))
        assert await next_frame(a) == text(author, "ok")


async def test_author_length_limits_follow_settings(server_factory: ServerFactory) -> None:
    live = server_factory(min_author_length=5, max_author_length=6)
    async with ws_client(live) as a:
        reason = await refused(a, text("abcd", "x"))
        assert "5 to 6" in reason
        reason = await refused(a, text("abcdefg", "x"))
        assert "5 to 6" in reason
        for author in ("abcde", "abcdef"):
            await a.send(text(author, "x"))
            assert await next_frame(a) == text(author, "x")


async def test_text_length_limit(server: LiveServer) -> None:
    async with ws_client(server) as a:
        reason = await refused(a, text("writer", "x" * 256))
        assert reason.startswith("text")
        assert "256" in reason
        assert "255" in reason
        await a.send(text("writer", "é" * 255))
        assert await next_frame(a) == text("writer", "é" * 255)
        await a.send(text("writer", "x" * 255))
        assert await next_frame(a) == text("writer", "x" * 255)
        await a.send(text("writer", ""))
        assert await next_frame(a) == text("writer", "")


async def test_text_length_limit_follows_settings(server_factory: ServerFactory) -> None:
    live = server_factory(max_message_length=10)
    async with ws_client(live) as a:
        reason = await refused(a, text("writer", "x" * 11))
        assert reason.startswith("text")
        await a.send(text("writer", "x" * 10))
        assert await next_frame(a) == text("writer", "x" * 10)


async def test_like_message_length_limit(server: LiveServer) -> None:
    async with ws_client(server) as liker, ws_client(server) as liked:
        await liked.register("likedone")
        await liker.expect("newcomer", newcomer="likedone")
        like = {"type": "like", "liker_author": "liker", "liked_author": "likedone"}
        reason = await refused(liker, {**like, "message": "m" * 256})
        assert reason.startswith("message")
        assert "256" in reason
        await liker.send({**like, "message": "m" * 255})
        assert await next_frame(liked) == {**like, "type": "like", "message": "m" * 255}
        await still_open(liker)


@pytest.mark.parametrize(
    "bad",
    ["1.0", "", True, False, None, [1.0], {"v": 1.0}],
    ids=["numeric-string", "empty-string", "true", "false", "null", "list", "object"],
)
@pytest.mark.parametrize("field", ["xmin", "xmax", "ymin", "ymax"])
async def test_bbox_values_must_be_numbers(server: LiveServer, field: str, bad: Any) -> None:
    async with ws_client(server) as a:
        reason = await refused(a, bbox_message(**{field: bad}))
        assert reason.startswith(field)
        await still_open(a)


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"bbox","author":"viewer","crs_wkt":"w","crs_authid":"a","xmin":NaN,"xmax":1,"ymin":0,"ymax":1}',
        '{"type":"bbox","author":"viewer","crs_wkt":"w","crs_authid":"a","xmin":Infinity,"xmax":1,"ymin":0,"ymax":1}',
        '{"type":"bbox","author":"viewer","crs_wkt":"w","crs_authid":"a","xmin":-Infinity,"xmax":1,"ymin":0,"ymax":1}',
        '{"type":"bbox","author":"viewer","crs_wkt":"w","crs_authid":"a","xmin":1e999,"xmax":1,"ymin":0,"ymax":1}',
        '{"type":"text","author":"viewer","text":NaN}',
    ],
    ids=["nan", "infinity", "minus-infinity", "overflow", "nan-in-text"],
)
async def test_non_finite_json_literals_are_not_valid_json(server: LiveServer, frame: str) -> None:
    async with ws_client(server) as a:
        assert await refused(a, frame) == "message is not valid JSON"
        await still_open(a)


async def test_bbox_accepts_large_finite_and_integer_values(server: LiveServer) -> None:
    async with ws_client(server) as a:
        sent = bbox_message(xmin=-1.7976931348623157e308, xmax=1.7976931348623157e308, ymin=-90, ymax=1e-300)
        await a.send(sent)
        received = await next_frame(a)
        assert received == sent
        for key in ("xmin", "xmax", "ymin", "ymax"):
            assert isinstance(received[key], int | float)
            assert not isinstance(received[key], bool)


@pytest.mark.parametrize(
    ("field", "value"),
    [("liker_author", "ab"), ("liked_author", "ab"), ("liked_author", "bad name"), ("liker_author", 5)],
)
async def test_like_nicknames_are_validated(server: LiveServer, field: str, value: Any) -> None:
    async with ws_client(server) as a:
        frame = {
            "type": "like",
            "liker_author": "liker",
            "liked_author": "liked",
            "message": "m",
            field: value,
        }
        reason = await refused(a, frame)
        assert reason.startswith(field)
        await still_open(a)


@pytest.mark.parametrize("image_data", ["", "not base64 at all!", base64.b64encode(b"GIF89a no").decode()])
async def test_invalid_image_is_uncompliant_naming_image_data(server: LiveServer, image_data: str) -> None:
    async with ws_client(server) as a, ws_client(server) as b:
        await wait_type(b, "nb_users", nb_users=2)
        reason = await refused(a, {"type": "image", "author": "photog", "image_data": image_data})
        assert reason.startswith("image_data")
        await still_open(a)
        assert await next_frame(b) == text("survivor", "still here")


async def test_too_many_geojson_features_with_default_limit(server: LiveServer) -> None:
    async with ws_client(server) as a:
        reason = await refused(a, geojson_message(collection(601)))
        assert reason == "Too many geojson features : 601 vs max 500 allowed"
        await a.send(geojson_message(collection(500)))
        received = await next_frame(a)
        assert received["type"] == "geojson"
        assert len(received["geojson"]["features"]) == 500


async def test_too_many_geojson_features_follows_settings(server_factory: ServerFactory) -> None:
    live = server_factory(max_geojson_features=3)
    async with ws_client(live) as a:
        assert (
            await refused(a, geojson_message(collection(4)))
            == "Too many geojson features : 4 vs max 3 allowed"
        )
        assert (
            await refused(a, geojson_message(collection(600)))
            == "Too many geojson features : 600 vs max 3 allowed"
        )
        await a.send(geojson_message(collection(3)))
        assert await next_frame(a) == geojson_message(collection(3))


async def test_too_many_geojson_features_600_vs_500(server: LiveServer) -> None:
    async with ws_client(server) as a:
        reason = await refused(a, geojson_message(collection(600)))
        assert reason == "Too many geojson features : 600 vs max 500 allowed"
        await still_open(a)


INVALID_GEOJSON: dict[str, Any] = {
    "feature-not-collection": point_feature(),
    "point-not-collection": {"type": "Point", "coordinates": [1, 2]},
    "wrong-type": {"type": "featurecollection", "features": []},
    "missing-features": {"type": "FeatureCollection"},
    "features-not-list": {"type": "FeatureCollection", "features": {"0": point_feature()}},
    "point-one-coordinate": {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1]}, "properties": {}}
        ],
    },
    "point-string-coordinates": {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": ["a", "b"]}, "properties": {}}
        ],
    },
    "unclosed-polygon": {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
                "properties": {},
            }
        ],
    },
    "unknown-geometry": {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "geometry": {"type": "Circle", "radius": 3}, "properties": {}}],
    },
    "feature-without-type": {
        "type": "FeatureCollection",
        "features": [{"geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}],
    },
}


@pytest.mark.parametrize("name", sorted(INVALID_GEOJSON))
async def test_invalid_geojson_is_uncompliant_naming_geojson(server: LiveServer, name: str) -> None:
    async with ws_client(server) as a:
        reason = await refused(a, geojson_message(INVALID_GEOJSON[name]))
        assert reason.startswith("geojson")
        await still_open(a)


@pytest.mark.parametrize(
    "value", [[], "FeatureCollection", 3, None], ids=["list", "string", "number", "null"]
)
async def test_geojson_that_is_not_an_object_is_uncompliant(server: LiveServer, value: Any) -> None:
    async with ws_client(server) as a:
        reason = await refused(a, geojson_message(value))
        assert reason.startswith("geojson")
        await still_open(a)


async def test_geojson_is_forwarded_exactly_as_received(server: LiveServer) -> None:
    async with ws_client(server) as a, ws_client(server) as b:
        sent = geojson_message(RICH_GEOJSON)
        await a.send(sent)
        for client in (a, b):
            received = await next_frame(client)
            assert received == sent
            assert typed(received["geojson"]) == typed(RICH_GEOJSON)


async def test_empty_feature_collection_round_trips(server: LiveServer) -> None:
    async with ws_client(server) as a:
        sent = geojson_message({"type": "FeatureCollection", "features": []})
        await a.send(sent)
        received = await next_frame(a)
        assert typed(received) == typed(sent)


# --- bad frames ----------------------------------------------------------------------------------


BAD_FRAMES: dict[str, str | bytes] = {
    "not-json": "hello there",
    "truncated-json": '{"type": "text", "author": "abc"',
    "empty-frame": "",
    "two-objects": '{"type":"text","author":"abc","text":"x"}{"type":"text"}',
    "list": '[{"type": "text", "author": "abc", "text": "x"}]',
    "number": "42",
    "string": '"text"',
    "null": "null",
    "true": "true",
    "missing-type": '{"author": "abc", "text": "x"}',
    "null-type": '{"type": null, "author": "abc", "text": "x"}',
    "unknown-type": '{"type": "shout", "author": "abc", "text": "x"}',
    "type-wrong-case": '{"type": "Text", "author": "abc", "text": "x"}',
    "type-number": '{"type": 1, "author": "abc", "text": "x"}',
    "type-list": '{"type": ["text"], "author": "abc", "text": "x"}',
    "type-object": '{"type": {"text": 1}, "author": "abc", "text": "x"}',
    "type-bool": '{"type": true, "author": "abc", "text": "x"}',
    "server-nb_users": '{"type": "nb_users", "nb_users": 3}',
    "server-exiter": '{"type": "exiter", "exiter": "abc"}',
    "server-uncompliant": '{"type": "uncompliant", "reason": "forged"}',
    "text-missing-text": '{"type": "text", "author": "abc"}',
    "text-missing-author": '{"type": "text", "text": "x"}',
    "text-not-string": '{"type": "text", "author": "abc", "text": 12}',
    "author-not-string": '{"type": "text", "author": 123, "text": "x"}',
    "avatar-not-string": '{"type": "text", "author": "abc", "avatar": 5, "text": "x"}',
    "binary": b"\x00\x01\x02\xff",
    "binary-json": b'{"type": "text", "author": "abc", "text": "x"}',
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
async def test_bad_frame_is_uncompliant_and_socket_survives(server: LiveServer, name: str) -> None:
    async with ws_client(server) as a, ws_client(server) as b:
        await wait_type(b, "nb_users", nb_users=2)
        await refused(a, BAD_FRAMES[name])
        await still_open(a)
        # the other client saw only the follow-up broadcast: the refusal went to the sender only
        assert await next_frame(b) == text("survivor", "still here")


async def test_specific_bad_frame_reasons(server: LiveServer) -> None:
    async with ws_client(server) as a:
        assert await refused(a, "not json") == "message is not valid JSON"
        for frame in ("[]", "1", '"s"', "null"):
            assert "JSON object" in await refused(a, frame)
        assert "type" in await refused(a, "{}")
        assert "shout" in await refused(a, '{"type": "shout"}')
        for server_type in ("nb_users", "exiter", "uncompliant"):
            reason = await refused(a, {"type": server_type})
            assert server_type in reason
            assert "server" in reason
        assert "binary" in await refused(a, b"{}")
        await still_open(a)


async def test_many_bad_frames_in_a_row_then_valid(server: LiveServer) -> None:
    async with ws_client(server) as a:
        for frame in BAD_FRAMES.values():
            await a.send(frame)
        for _ in BAD_FRAMES:
            assert (await next_frame(a))["type"] == "uncompliant"
        await still_open(a)


async def test_reasons_quoting_client_input_are_capped(server: LiveServer) -> None:
    bad_geometry = {"type": "X" * 100_000, "coordinates": [1, 2]}
    layer = collection(1)
    layer["features"][0]["geometry"] = bad_geometry
    async with ws_client(server) as client:
        reason = await refused(client, geojson_message(layer))
        assert reason.startswith("geojson: ")
        assert len(reason) <= 200
        reason = await refused(client, {"type": "Y" * 100_000})
        assert len(reason) <= 200


async def test_too_deeply_nested_geojson_is_uncompliant(server: LiveServer) -> None:
    deep: dict[str, Any] = {}
    level = deep
    for _ in range(300):
        level["a"] = {}
        level = level["a"]
    layer = collection(1)
    layer["features"][0]["properties"] = deep
    async with ws_client(server) as client:
        assert await refused(client, json.dumps(geojson_message(layer))) == "geojson: nested too deeply"
        await still_open(client)
