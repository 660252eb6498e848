"""Strict reading of server frames, shared by the protocol tests.

Every frame read through `next_frame` is parsed strictly (one JSON object, no duplicate
keys, no NaN/Infinity) and checked against the exact key set of its type, so each test
also checks the wire contract of whatever else it happens to receive.
"""

from __future__ import annotations

import json
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
