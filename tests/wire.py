"""Strict reading of server frames, shared by the protocol tests.

Every frame read through `next_frame` is parsed strictly (one JSON object, no duplicate
keys, no NaN/Infinity) and checked against the exact key set of its type, so each test
also checks the wire contract of whatever else it happens to receive.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from conftest import Client

# A layer's keys in the order the server writes them.
GEOJSON_ORDER = ["type", "author", "avatar", "layer_name", "crs_wkt", "crs_authid", "geojson", "style"]

WIRE_KEYS: dict[str, set[str]] = {
    "text": {"type", "author", "avatar", "text"},
    "image": {"type", "author", "avatar", "image_data"},
    "nb_users": {"type", "nb_users"},
    "newcomer": {"type", "newcomer"},
    "exiter": {"type", "exiter"},
    "like": {"type", "liker_author", "liked_author", "message"},
    "geojson": {"type", "author", "avatar", "layer_name", "crs_wkt", "crs_authid", "geojson", "style"},
    "crs": {"type", "author", "avatar", "crs_wkt", "crs_authid"},
    "bbox": {"type", "author", "avatar", "crs_wkt", "crs_authid", "xmin", "xmax", "ymin", "ymax"},
    "uncompliant": {"type", "reason"},
}


# The 3.x dialect (channel routes): the envelope, then each type's keys, in this order.
ENVELOPE = ["type", "id", "timestamp"]
CHANNEL_KEYS: dict[str, list[str]] = {
    "text": ["author", "avatar", "text"],
    "image": ["author", "avatar", "image_data"],
    "geojson": ["author", "avatar", "layer_name", "crs_wkt", "crs_authid", "geojson", "style"],
    "crs": ["author", "avatar", "crs_wkt", "crs_authid"],
    "bbox": ["author", "avatar", "crs_wkt", "crs_authid", "xmin", "xmax", "ymin", "ymax"],
    "position": ["author", "avatar", "crs_wkt", "crs_authid", "x", "y"],
    "model": ["author", "avatar", "model_name", "model_group", "raw_xml"],
    "script": ["author", "avatar", "name", "raw_pycode"],
    "newcomer": ["newcomer"],
    "exiter": ["exiter"],
    "nb_users": ["nb_users"],
    "like": ["liker_author", "liked_author", "message"],
    "uncompliant": ["reason"],
}
REPLYABLE = frozenset({"text", "image", "geojson", "crs", "bbox", "position", "model", "script"})
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def check_channel_shape(message: dict[str, Any]) -> None:
    """Exactly the 3.x keys of the type, in wire order; a reply may end with `in_reply_to_id`."""
    kind = message.get("type")
    assert kind in CHANNEL_KEYS, f"unknown type from the server: {message}"
    expected = ENVELOPE + CHANNEL_KEYS[kind]
    keys = list(message)
    if kind in REPLYABLE and keys[-1:] == ["in_reply_to_id"]:
        keys = keys[:-1]
    assert keys == expected, f"wrong keys for {kind}: {keys}"
    assert UUID4.fullmatch(message["id"]), f"id is not a lowercase UUID4: {message['id']!r}"
    assert type(message["timestamp"]) is int, "timestamp must be an integer (seconds)"
    assert abs(message["timestamp"] - time.time()) < 3600, "timestamp must be seconds since the epoch"


async def next_channel_frame(client: Client, skip: tuple[str, ...] = ("nb_users",)) -> dict[str, Any]:
    """The next 3.x message whose type is not in `skip`, parsed strictly and shape-checked."""
    while True:
        message = parse_strict(await client.recv_raw())
        check_channel_shape(message)
        if message["type"] not in skip:
            return message


async def wait_channel_type(client: Client, type_: str, **fields: Any) -> dict[str, Any]:
    """Skip 3.x frames (each shape-checked) until a `type_` one matching `fields`."""
    while True:
        message = await next_channel_frame(client, skip=())
        if message["type"] == type_ and all(message.get(k) == v for k, v in fields.items()):
            return message


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in a server frame: {keys}"
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"server sent a non-standard JSON constant {name}")


def parse_strict(raw: str) -> dict[str, Any]:
    """One JSON object (trailing data is an error), no duplicate keys anywhere, strict JSON."""
    data = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    assert isinstance(data, dict), f"server frame is not a JSON object: {raw[:80]}"
    return data


def check_shape(message: dict[str, Any]) -> None:
    kind = message.get("type")
    assert kind in WIRE_KEYS, f"unknown type from the server: {message}"
    assert set(message) == WIRE_KEYS[kind], f"wrong keys for {kind}: {sorted(message)}"


async def next_frame(client: Client, skip: tuple[str, ...] = ("nb_users",)) -> dict[str, Any]:
    """The next message whose type is not in `skip`, parsed strictly and shape-checked."""
    while True:
        message = parse_strict(await client.recv_raw())
        check_shape(message)
        if message["type"] not in skip:
            return message


async def wait_type(client: Client, type_: str, **fields: Any) -> dict[str, Any]:
    """Skip frames (still checking each one's shape) until a `type_` one matching `fields`."""
    while True:
        message = await next_frame(client, skip=())
        if message["type"] == type_ and all(message.get(k) == v for k, v in fields.items()):
            return message


async def refused(client: Client, frame: dict[str, Any] | str | bytes) -> str:
    """Send a bad frame, return the reason; the next relevant frame must be the uncompliant."""
    await client.send(frame)
    message = await next_frame(client)
    assert message["type"] == "uncompliant", f"expected uncompliant, got {message}"
    reason = message["reason"]
    assert isinstance(reason, str)
    assert reason
    return reason
