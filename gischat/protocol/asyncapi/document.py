"""The websocket protocol as an AsyncAPI 3.0 document, built from the wire models.

Two channels, one per dialect of the same conversation (`gischat.dialects`): `/room/{room}/ws`
(2.x) and `/channel/{channel}/ws` (3.x), each with its own messages, schemas and examples. This
module holds what both share, written once for every type of either dialect: the catalogue
(notes, rules, client examples), the models' schemas, the validation of examples, the refusals,
and the document itself; `gischat.asyncapi_channels` makes each socket's messages out of them
(and holds the 3.x envelope).

Every message schema comes from `model_json_schema` of the pydantic model the server
validates that message with, so the document cannot drift from the code: a field added to
a model shows up here on the next start. What pydantic cannot see is added explicitly from
the instance's settings: the validators that enforce nickname and message lengths, the
nickname alphabet and the feature count read their limits from the validation context, so
`field_rules` writes those limits into the schemas of the fields they guard.

Perspective. AsyncAPI 3 describes one application, here the gischat server, and its
operations are what *that application* does on a channel:

- `action: receive` lists what the server receives, i.e. what clients send
  (`receiveClientMessage`, whose `reply` is the `uncompliant` answer to a refused message);
- `action: send` lists what the server sends, i.e. what clients receive
  (`sendToRoom`, `sendLike`, `sendUncompliant`);

and the same on the channel (`receiveChannelClientMessage`, `sendToChannel`, `sendChannelLike`,
`sendChannelUncompliant`).

A client implementation reads the document the other way round: it sends what the server
receives and receives what the server sends.

Examples are validated when the document is built, with the instance's limits: client
examples go through the same parsing as a websocket frame and are shown exactly as the
server broadcasts them (on channels: as the client sends them, and as the server's frame with
a fixed id and timestamp); an example the instance would refuse (say, a nickname shorter than
`MIN_AUTHOR_LENGTH`) is left out rather than shown. `uncompliant` examples carry reasons
produced by the real validation code.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from pydantic.json_schema import models_json_schema

from gischat.protocol.asyncapi import sockets as channels
from gischat.protocol.asyncapi.sockets import Case, Shown
from gischat.protocol.dialects import CHANNEL_TYPES, Dialect, parse_frame, parse_object
from gischat.protocol.geojson import check_feature
from gischat.protocol.messages import (
    ExiterMessage,
    GeojsonMessage,
    Limits,
    NbUsersMessage,
    UncompliantMessage,
    WireMessage,
)
from gischat.protocol.parsing import parse_object as parse_one
from gischat.protocol.refusals import BINARY_REASON, MAX_REASON_LENGTH, Uncompliant
from gischat.settings import Settings

ASYNCAPI_VERSION = "3.0.0"
SCHEMA_REF = "#/components/schemas/{model}"

SERVER_MODELS: tuple[type[WireMessage], ...] = (NbUsersMessage, ExiterMessage, UncompliantMessage)

# A nickname: letters (any script), digits, `_` and `-`, as Python's `[\w-]+` in
# `models.NICKNAME_PATTERN`. JSON Schema patterns are ECMA-262 regular expressions, where `\w`
# is ASCII only; `\p{L}`/`\p{N}` (Unicode mode, the default of validators such as ajv) is the
# same alphabet.
NICKNAME_JSON_PATTERN = r"^[\p{L}\p{N}_-]+$"
# A name clients may save a file under (`models.check_file_name`): no '/' or '\', no control
# character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F), not '.' or '..' (spaces around
# ignored). The same expression in ECMA-262 and Python.
FILE_NAME_JSON_PATTERN = r"^(?!\s*\.{1,2}\s*$)[^/\\\u0000-\u001F\u007F-\u009F]*$"

# One line per type for humans: title and what it is for, `{room}` standing for the socket's noun
# (room or channel). A type missing here still gets a message (titled by its type, described by
# its model's docstring). The channel-only types' entries are in `asyncapi_channels`, as are their
# fields' notes and their examples.
TYPE_NOTES: dict[str, tuple[str, str]] = {
    "text": ("Text", "A chat line. Client → server, then broadcast to the whole {room}, sender included."),
    "image": (
        "Image",
        "A picture as base64 (PNG, JPEG, GIF, WebP or BMP). Client → server, then broadcast to the whole "
        "{room}, fitted within MAX_IMAGE_SIZE pixels and stripped of its metadata (JPEG stays JPEG, "
        "everything else becomes PNG).",
    ),
    "geojson": (
        "GeoJSON layer",
        "A vector layer as a GeoJSON FeatureCollection. Client → server, then broadcast to the whole {room} "
        "with every member the client sent.",
    ),
    "crs": ("Coordinate reference system", "A CRS. Client → server, then broadcast to the whole {room}."),
    "bbox": (
        "Bounding box",
        "An extent in a CRS. Client → server, then broadcast to the whole {room}.",
    ),
    "newcomer": (
        "Nickname registration",
        "Registers the socket's nickname in its {room}, first come first served (compared after Unicode "
        "NFKC normalisation and case folding); a taken nickname or a second registration on the same "
        "socket is refused. Client → server, then broadcast to the whole {room}.",
    ),
    "like": (
        "Like",
        "A like of someone's message. Client → server, then delivered only to the socket registered as "
        "`liked_author` in the {room}; dropped without a word when there is none.",
    ),
    "nb_users": (
        "Number of users",
        "Server → whole {room}: the number of open websockets in the {room}, on joins and leaves (bursts "
        "coalesced to one per NB_USERS_INTERVAL).",
    ),
    "exiter": ("Exiter", "Server → whole {room}, when a socket with a registered nickname leaves."),
    "uncompliant": (
        "Refusal",
        "Server → the sender only: the answer to a refused message, naming the field and the problem. "
        "The socket stays open.",
    ),
    **channels.TYPE_NOTES,
}

FIELD_NOTES: dict[str, str] = {
    "type": "The message type; every frame carries it.",
    "author": "The sender's nickname.",
    "avatar": "The name of a QGIS icon shown next to the message, or null.",
    "text": "The message.",
    "image_data": "The image file, base64-encoded.",
    "layer_name": f"The layer's name ({channels.FILE_NAME_NOTE}).",
    "crs_wkt": "The CRS as WKT.",
    "crs_authid": "The CRS's authority identifier, e.g. EPSG:4326.",
    "geojson": "A GeoJSON FeatureCollection (RFC 7946).",
    "xmin": "Smallest x, in the CRS's units.",
    "xmax": "Largest x, in the CRS's units.",
    "ymin": "Smallest y, in the CRS's units.",
    "ymax": "Largest y, in the CRS's units.",
    "newcomer": "The nickname to register.",
    "liker_author": "Who likes the message: the sender's nickname.",
    "liked_author": "The nickname of the message's author, the only recipient.",
    "message": "The liked message's text.",
    "nb_users": "Open websockets in the conversation, room and channel sockets alike.",
    "exiter": "The nickname that left.",
    "reason": "What was wrong: the field, then the problem.",
    **channels.FIELD_NOTES,
}

TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mOwbnIDAAH/AQTX7nkhAAAAAElFTkSuQmCC"
WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]'
)
LAMBERT93_WKT = (
    'PROJCS["RGF93 v1 / Lambert-93",GEOGCS["RGF93 v1",DATUM["Reseau_Geodesique_Francais_1993_v1",'
    'SPHEROID["GRS 1980",6378137,298.257222101]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Conformal_Conic_2SP"],PARAMETER["latitude_of_origin",46.5],'
    'PARAMETER["central_meridian",3],PARAMETER["standard_parallel_1",49],PARAMETER["standard_parallel_2",44],'
    'PARAMETER["false_easting",700000],PARAMETER["false_northing",6600000],UNIT["metre",1],'
    'AUTHORITY["EPSG","2154"]]'
)
# What a client sends, by type: (name, summary, payload). Each one is checked against the
# instance's rules when the document is built; models may add their own through
# `json_schema_extra={"examples": [...]}`.
CLIENT_EXAMPLES: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "text": [
        (
            "hello",
            "A greeting, with an avatar",
            {"type": "text", "author": "Jane-GIS", "avatar": "mGeoPackage.svg", "text": "Hi all!"},
        )
    ],
    "image": [
        (
            "tiny-png",
            "A one-pixel PNG",
            {"type": "image", "author": "Jane-GIS", "avatar": None, "image_data": TINY_PNG},
        )
    ],
    "geojson": [
        (
            "wells",
            "A layer with one point",
            {
                "type": "geojson",
                "author": "Jane-GIS",
                "avatar": None,
                "layer_name": "wells",
                "crs_wkt": WGS84_WKT,
                "crs_authid": "EPSG:4326",
                "geojson": {
                    "type": "FeatureCollection",
                    "features": [
                        {
                            "type": "Feature",
                            "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
                            "properties": {"depth": 12},
                        }
                    ],
                },
            },
        )
    ],
    "crs": [
        (
            "lambert-93",
            "The French Lambert-93 projection",
            {
                "type": "crs",
                "author": "Jane-GIS",
                "avatar": None,
                "crs_wkt": LAMBERT93_WKT,
                "crs_authid": "EPSG:2154",
            },
        )
    ],
    "bbox": [
        (
            "paris-extent",
            "A 10 km square around Paris, in Lambert-93",
            {
                "type": "bbox",
                "author": "Jane-GIS",
                "avatar": None,
                "crs_wkt": LAMBERT93_WKT,
                "crs_authid": "EPSG:2154",
                "xmin": 650000.0,
                "xmax": 660000.0,
                "ymin": 6860000.0,
                "ymax": 6870000.0,
            },
        )
    ],
    "newcomer": [("register", "Registering a nickname", {"type": "newcomer", "newcomer": "Jane-GIS"})],
    "like": [
        (
            "like",
            "Bob likes Jane-GIS's message",
            {"type": "like", "liker_author": "Bob", "liked_author": "Jane-GIS", "message": "Hi all!"},
        )
    ],
    **channels.CLIENT_EXAMPLES,
}

# Building a refusal example costs a list of this many items at most.
MAX_EXAMPLE_ITEMS = 100_000


def package_version() -> str:
    try:
        return version("gischat")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def message_models() -> dict[str, type[WireMessage]]:
    """Every message type of either dialect, client ones first (as `CHANNEL_TYPES` lists them)."""
    models: dict[str, type[WireMessage]] = dict(CHANNEL_TYPES)
    for model in SERVER_MODELS:
        models[message_type(model)] = model
    return models


def message_type(model: type[WireMessage]) -> str:
    kind = model.model_fields["type"].default
    assert isinstance(kind, str), f"{model.__name__} has no default type"
    return kind


def field_rules(limits: Limits) -> dict[str, dict[str, Any]]:
    """JSON Schema keywords for the fields whose validators pydantic's schema cannot show.

    Keyed by field name, applied to that field in every model that has it. Every field a
    model guards with a `field_validator` must be here (tests/test_asyncapi.py checks it).
    """
    nickname = {
        "minLength": limits.min_author_length,
        "maxLength": limits.max_author_length,
        "pattern": NICKNAME_JSON_PATTERN,
    }
    message = {"maxLength": limits.max_message_length}
    file_name = {"pattern": FILE_NAME_JSON_PATTERN}
    return {
        "author": nickname,
        "newcomer": nickname,
        "liker_author": nickname,
        "liked_author": nickname,
        "text": message,
        "message": message,
        "geojson": {
            "required": ["type", "features"],
            "properties": {
                "type": {"const": "FeatureCollection"},
                "features": {
                    "type": "array",
                    "maxItems": limits.max_geojson_features,
                    "items": {"type": "object", "description": "A GeoJSON Feature (RFC 7946)."},
                },
            },
            "description": (
                f"A GeoJSON FeatureCollection (RFC 7946) of at most {limits.max_geojson_features} "
                f"features and {limits.max_geojson_vertices} coordinate positions in all, each feature "
                "a valid GeoJSON Feature. Relayed with every member sent, nothing added or dropped."
            ),
        },
        "style": {
            "maxLength": limits.max_style_length,
            "description": (
                "The layer's QGIS style (a QML document), or null. Relayed byte for byte; sent as null "
                "when the sender gave none (unless the instance leaves it out for QTribu 1.1.x clients)."
            ),
        },
        "layer_name": file_name,
        "model_name": file_name,
        "name": file_name,
        "image_data": {"contentEncoding": "base64", "maxLength": limits.max_image_length},
        "raw_xml": {"maxLength": limits.max_model_length},
        "raw_pycode": {"maxLength": limits.max_script_length},
        "reason": {"maxLength": MAX_REASON_LENGTH},
        "nb_users": {"minimum": 0},
    }


def build_document(settings: Settings, package: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of this instance's websocket protocol."""
    limits = Limits.from_settings(settings)
    models = message_models()
    schemas = _model_schemas(models, limits)
    accepted = {kind: _accepted(kind, model, limits) for kind, model in CHANNEL_TYPES.items()}
    author = _fitting_nickname("Jane-GIS", limits)
    room_refusals = _refusals(limits, author, Dialect.ROOM)
    channel_refusals = _refusals(
        limits,
        author,
        Dialect.CHANNEL,
        channels.refusal_cases(limits, author),
        channels.fixed_refusals(settings),
    )
    room_schemas, room = channels.room_components(
        models, schemas, _descriptions(models, Dialect.ROOM), {**accepted, **_server_examples(room_refusals)}
    )
    channel_schemas, channel = channels.channel_components(
        models,
        schemas,
        _descriptions(models, Dialect.CHANNEL),
        {**accepted, **_server_examples(channel_refusals)},
        limits,
        settings,
    )
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "gischat",
            "version": package if package is not None else package_version(),
            "description": (
                "Real-time chat for GIS people: text, images, GeoJSON layers, CRSs and extents, in "
                "rooms; positions and QGIS Processing models and scripts too on channels. This document "
                "describes the websocket protocol of this instance, with its rules; the REST API is "
                "described by `/openapi.json` (browsable at `/docs`).\n\n"
                "One conversation is served over two sockets: `/room/{room}/ws` speaks the 2.x dialect "
                "(QTribu), `/channel/{channel}/ws` the 3.x dialect (QChat, the QField plugin); room X and "
                "channel X are the same conversation. Every frame is a text frame holding one JSON object "
                "with a `type`. The server sends exactly the keys of each message, no more and no fewer "
                "(`avatar` is null when the sender gave none); on channels every frame also carries the "
                "message's `id` and `timestamp` right after `type`. Keys a client adds are ignored, never "
                "relayed. Operations are written from the server's side: it *receives* what clients send "
                "and *sends* what clients receive."
            ),
            "license": {"name": "GPL-2.0-or-later", "url": "https://spdx.org/licenses/GPL-2.0-or-later.html"},
            "externalDocs": {
                "description": "README: protocol, behaviour and settings",
                "url": "https://github.com/geotribu/gischat#websocket-protocol",
            },
        },
        "defaultContentType": "application/json",
        "servers": _servers(settings),
        "channels": {
            channels.ROOM: channels.room_object(settings, room),
            channels.CHANNEL: channels.channel_object(settings, channel),
        },
        "operations": {**channels.operations(Dialect.ROOM), **channels.operations(Dialect.CHANNEL)},
        "components": {
            "schemas": {**room_schemas, **channel_schemas},
            "messages": {part.key: _message(part, models[part.kind]) for part in [*room, *channel]},
        },
    }


def document_json(settings: Settings, package: str | None = None) -> bytes:
    return orjson.dumps(build_document(settings, package))


# --- shared --------------------------------------------------------------------------------------


def _servers(settings: Settings) -> dict[str, Any]:
    host = settings.host if settings.host not in ("", "0.0.0.0", "::") else "localhost"  # noqa: S104
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    default = f"{host}:{settings.port}" if settings.port else host
    variable = {
        "description": "The host name (and port) clients reach the instance at.",
        "default": default,
        "examples": ["gischat.example.org"],
    }
    return {
        "ws": {
            "host": "{host}",
            "protocol": "ws",
            "title": "Plain websocket",
            "description": "The instance as it listens (HOST:PORT by default).",
            "variables": {"host": dict(variable)},
        },
        "wss": {
            "host": "{host}",
            "protocol": "wss",
            "title": "Websocket over TLS",
            "description": "The instance behind a TLS-terminating proxy such as nginx.",
            "variables": {"host": dict(variable)},
        },
    }


def _model_schemas(models: dict[str, type[WireMessage]], limits: Limits) -> dict[str, Any]:
    """Each model's schema by model name, its fields noted and ruled, nested definitions beside it.

    `in_reply_to_id` is still there: each socket's part decides where it goes, if anywhere.
    """
    _, top = models_json_schema([(model, "validation") for model in models.values()], ref_template=SCHEMA_REF)
    schemas: dict[str, Any] = _draft07(top.get("$defs", {}))
    rules = field_rules(limits)
    for model in models.values():
        schema = schemas[model.__name__]
        schema.pop("examples", None)  # moved to the message's examples, checked there
        # `type` has a default in the models but `parse_object` requires it on the wire.
        schema["required"] = ["type", *(name for name in schema.get("required", []) if name != "type")]
        for name, prop in schema["properties"].items():
            if name in FIELD_NOTES:
                prop.setdefault("description", FIELD_NOTES[name])
            if name in rules:
                prop.update(rules[name])
    return schemas


def _draft07(schema: Any) -> Any:
    """pydantic writes JSON Schema 2020-12; AsyncAPI's schema object is draft-07.

    Tuples (`prefixItems`) become draft-07 tuples (`items` as a list) and OpenAPI-style
    `discriminator` objects become the property name AsyncAPI expects.
    """
    if isinstance(schema, list):
        return [_draft07(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: _draft07(value) for key, value in schema.items()}
    if "prefixItems" in converted:
        rest = converted.pop("items", None)
        converted["items"] = converted.pop("prefixItems")
        if rest is not None:
            converted["additionalItems"] = rest
    discriminator = converted.get("discriminator")
    if isinstance(discriminator, dict):
        converted["discriminator"] = discriminator.get("propertyName", "type")
    return converted


def _descriptions(models: dict[str, type[WireMessage]], dialect: Dialect) -> dict[str, str]:
    return {kind: _notes(kind, model, dialect)[1] for kind, model in models.items()}


def _notes(kind: str, model: type[WireMessage], dialect: Dialect) -> tuple[str, str]:
    """Title and description of `kind` on the socket of `dialect`."""
    title, description = TYPE_NOTES.get(kind, (kind, model.__doc__ or kind))
    return title, description.replace("{room}", str(dialect))


def _message(part: channels.Part, model: type[WireMessage]) -> dict[str, Any]:
    title, description = _notes(part.kind, model, part.dialect)
    return {
        "name": part.key,
        "title": title,
        "summary": description.split(". ")[0].rstrip(".") + ".",
        "description": description,
        "contentType": "application/json",
        "tags": [{"name": "client to server" if part.to_server else "server to client"}],
        "payload": {"$ref": SCHEMA_REF.format(model=part.schema)},
        "examples": part.examples,
    }


def _accepted(kind: str, model: type[WireMessage], limits: Limits) -> list[Shown]:
    """The client examples of `kind` this instance accepts, validated as a frame would be."""
    extra = model.model_config.get("json_schema_extra")
    listed = extra.get("examples") if isinstance(extra, dict) else None
    from_model: list[Any] = listed if isinstance(listed, list) else []
    candidates = [(f"{kind}-{index}", "", payload) for index, payload in enumerate(from_model, 1)]
    examples: list[Shown] = []
    seen: set[str] = set()
    for name, summary, payload in [*CLIENT_EXAMPLES.get(kind, []), *candidates]:
        try:
            message = parse_one(payload, limits, {kind: model})
            if isinstance(message, GeojsonMessage):
                for index, feature in enumerate(message.features):
                    check_feature(index, feature)
        except Uncompliant:
            continue  # this instance's rules refuse it: do not show it
        written = message.to_wire()
        if written not in seen:
            seen.add(written)
            examples.append((name, summary, message))
    return examples


def _server_examples(refusals: list[Shown]) -> dict[str, list[Shown]]:
    """What the server says of its own, by type: counts, departures, and `refusals`."""
    return {
        "nb_users": [("count", "12 sockets open", NbUsersMessage(nb_users=12))],
        "exiter": [("left", "Bob left", ExiterMessage(exiter="Bob"))],
        "uncompliant": refusals,
    }


def _refusals(
    limits: Limits,
    author: str,
    dialect: Dialect,
    extra: list[Case] | None = None,
    fixed: list[tuple[str, str, str]] | None = None,
) -> list[Shown]:
    """Refusals on a socket of `dialect`, with the reasons the validation code gives on this instance."""

    def parse(data: Any) -> object:
        return parse_object(data, limits, dialect)

    cases: list[Case] = [
        ("not-json", "A frame that is not JSON", lambda: parse_frame("Hi all!", limits, dialect)),
        (
            "server-only-type",
            "A client sending a type only the server sends",
            lambda: parse_frame('{"type": "nb_users", "nb_users": 3}', limits, dialect),
        ),
        (
            "bad-nickname",
            "A nickname with a space",
            lambda: parse({"type": "newcomer", "newcomer": "Jane GIS"}),
        ),
    ]
    layer = {"type": "geojson", "author": author, "crs_wkt": WGS84_WKT, "crs_authid": "EPSG:4326"}
    collection = {"type": "FeatureCollection", "features": []}
    cases.append(
        (
            "bad-layer-name",
            "A layer whose name is a path",
            lambda: parse({**layer, "layer_name": "../wells", "geojson": collection}),
        )
    )
    if limits.max_message_length < MAX_EXAMPLE_ITEMS:
        too_long = "x" * (limits.max_message_length + 45)
        cases.append(
            (
                "text-too-long",
                "A text longer than MAX_MESSAGE_LENGTH",
                lambda: parse({"type": "text", "author": author, "text": too_long}),
            )
        )
    if limits.max_geojson_features < MAX_EXAMPLE_ITEMS:
        features = {**collection, "features": [None] * (limits.max_geojson_features + 100)}
        cases.append(
            (
                "too-many-features",
                "A layer with more than MAX_GEOJSON_FEATURES features",
                lambda: parse({**layer, "layer_name": "wells", "geojson": features}),
            )
        )
    refusals: list[Shown] = []
    for name, summary, attempt in [*cases, *(extra or [])]:
        try:
            attempt()
        except Uncompliant as exc:
            refusals.append((name, summary, UncompliantMessage(reason=exc.reason)))
    for name, summary, reason in [("binary-frame", "A binary frame", BINARY_REASON), *(fixed or [])]:
        refusals.append((name, summary, UncompliantMessage(reason=reason)))
    return refusals


def _fitting_nickname(nickname: str, limits: Limits) -> str:
    """`nickname`, padded or cut to the instance's length rules."""
    padded = nickname + "_" * max(0, limits.min_author_length - len(nickname))
    return padded[: limits.max_author_length]
