"""gischat messages as Matrix events and back: pure functions, no I/O.

Outbound, a post is read from the JSON text the server itself wrote once (`Post.body`); a layer's
body is cut rather than parsed, since it may be megabytes and its layout is ours. What a Matrix
client shows as a file (layers, models, scripts, images) comes with the bytes to upload.
Inbound, an event's content is read as untrusted input: anything unexpected is None (ignored).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

# The layer's own members end where the text of its `geojson` key starts (orjson writes no spaces,
# and a quote inside a string is always escaped, so the first match is the key).
GEOJSON_KEY = ',"geojson":'
# Below this, a layer's text is parsed to count its features for the summary line.
COUNT_FEATURES_BELOW = 256 * 1024
# What a like becomes: a reaction, with this key.
LIKE_REACTION = "👍"
# CRSs whose coordinates are longitude, latitude in degrees (a `geo:` URI is latitude first).
WGS84 = frozenset({"EPSG:4326", "OGC:CRS84", "EPSG:4979", "CRS84"})
WKT_NAME = re.compile(r'^\s*[A-Z0-9_]+\[\s*"([^"]{1,200})"')
IMAGE_TYPES = (
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"GIF8", "image/gif", "gif"),
    (b"RIFF", "image/webp", "webp"),
    (b"BM", "image/bmp", "bmp"),
)


@dataclass(frozen=True, slots=True)
class Upload:
    """A file to put in the media repository before its event goes out."""

    data: bytes
    mimetype: str
    filename: str


@dataclass(frozen=True, slots=True)
class MatrixMessage:
    """One message event for Matrix: its content, and the file it points to (`url` set on upload)."""

    event_type: str
    content: dict[str, Any]
    upload: Upload | None = None
    # What a like may later point to: the author and text of a gischat text message.
    text: str | None = None


def said_key(room: str, author: str, text: str) -> str:
    """The ledger key of a text said in a room: what a like names (author and text)."""
    digest = hashlib.sha256(f"{room}\0{author.casefold()}\0{text}".encode()).hexdigest()[:32]
    return f"said:{digest}"


def post_fields(kind: str, body: str) -> dict[str, Any]:
    """The keys of a post other than a layer's, from the JSON text the server wrote."""
    fields = orjson.loads("{" + body + "}")
    assert isinstance(fields, dict)
    return fields


def message_event(kind: str, body: str, style: str | None) -> MatrixMessage | None:
    """A post said by a gischat user as the Matrix event that shows it; None: nothing to show."""
    if kind == "geojson":
        return layer_event(body, style)
    fields = post_fields(kind, body)
    if kind == "text":
        text = str(fields["text"])
        return MatrixMessage("m.room.message", {"msgtype": "m.text", "body": text}, text=text)
    if kind == "crs":
        return _emote(f"shares a CRS: {crs_label(fields)}")
    if kind == "bbox":
        corners = [_number(fields[key]) for key in ("xmin", "ymin", "xmax", "ymax")]
        return _emote(
            f"shares an extent: {corners[0]}, {corners[1]} to {corners[2]}, {corners[3]} ({crs_label(fields)})"
        )
    if kind == "position":
        return position_event(fields)
    if kind == "image":
        return image_event(str(fields["image_data"]))
    if kind == "model":
        name = f"{fields['model_name']}.model3"
        xml = str(fields["raw_xml"]).encode()
        return _file_event(Upload(xml, "application/xml", name), f"shares a Processing model: {name}")
    if kind == "script":
        name = f"{fields['name']}.py"
        code = str(fields["raw_pycode"]).encode()
        return _file_event(Upload(code, "text/x-python", name), f"shares a Processing script: {name}")
    return None


def _emote(text: str) -> MatrixMessage:
    return MatrixMessage("m.room.message", {"msgtype": "m.emote", "body": text})


def crs_label(fields: dict[str, Any]) -> str:
    """`EPSG:2154 (RGF93 v1 / Lambert-93)`: the authority id, and the name the WKT starts with."""
    authid = str(fields.get("crs_authid") or "").strip()
    match = WKT_NAME.match(str(fields.get("crs_wkt") or ""))
    name = match.group(1) if match else ""
    if authid and name:
        return f"{authid} ({name})"
    return authid or name or "unnamed CRS"


def position_event(fields: dict[str, Any]) -> MatrixMessage:
    """A position in WGS 84 as `m.location`; in another CRS, as text (no reprojection here)."""
    x, y = fields["x"], fields["y"]
    authid = str(fields.get("crs_authid") or "").upper()
    if authid in WGS84 and -90 <= y <= 90 and -180 <= x <= 180:
        uri = f"geo:{y},{x}"
        return MatrixMessage(
            "m.room.message", {"msgtype": "m.location", "body": f"Position {uri}", "geo_uri": uri}
        )
    return _emote(f"is at {_number(x)}, {_number(y)} ({crs_label(fields)})")


def _number(value: Any) -> str:
    """A coordinate as people write it: `2` rather than `2.0`, every digit kept otherwise."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def image_event(image_data: str) -> MatrixMessage | None:
    """An image as `m.image`: the server's own resized image, uploaded as it is."""
    try:
        data = base64.b64decode(image_data, validate=True)
    except (binascii.Error, ValueError):
        return None
    mimetype, extension = next(
        ((mime, ext) for magic, mime, ext in IMAGE_TYPES if data.startswith(magic)),
        ("application/octet-stream", "bin"),
    )
    name = f"image.{extension}"
    content = {
        "msgtype": "m.image",
        "body": name,
        "filename": name,
        "info": {"mimetype": mimetype, "size": len(data)},
    }
    return MatrixMessage("m.room.message", content, Upload(data, mimetype, name))


def layer_event(body: str, style: str | None) -> MatrixMessage:
    """A layer as an `application/geo+json` file, its QML style kept as the collection's `style`
    member, with a one-line summary as the event's caption."""
    cut = body.index(GEOJSON_KEY)
    head = post_fields("geojson", body[:cut])
    collection = body[cut + len(GEOJSON_KEY) :]
    style_tail = style if style and style != ',"style":null' else ""
    text = collection[:-1] + style_tail + "}" if style_tail and collection.endswith("}") else collection
    data = text.encode()
    name = f"{head.get('layer_name') or 'layer'}.geojson"
    features = ""
    if len(collection) < COUNT_FEATURES_BELOW:
        parsed = orjson.loads(collection)
        count = len(parsed.get("features") or []) if isinstance(parsed, dict) else 0
        features = f", {count} feature{'s' if count != 1 else ''}"
    summary = f"shares a layer: {head.get('layer_name')}{features} ({crs_label(head)})"
    return _file_event(Upload(data, "application/geo+json", name), summary)


def _file_event(upload: Upload, summary: str) -> MatrixMessage:
    content = {
        "msgtype": "m.file",
        "body": summary,
        "filename": upload.filename,
        "info": {"mimetype": upload.mimetype, "size": len(upload.data)},
    }
    return MatrixMessage("m.room.message", content, upload)


def reaction(event_id: str) -> dict[str, Any]:
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": LIKE_REACTION}}
