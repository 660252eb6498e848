"""The websocket protocol as an AsyncAPI 3.0 document, built from the wire models.

Two channels, one per dialect of the same conversation (`gischat.protocol.dialects`):
`/room/{room}/ws` (2.x) and `/channel/{channel}/ws` (3.x), each with its own messages, schemas
and examples. This module only assembles the document and says what it is; its parts each have
a module of their own, one direction of dependency between them, this one on top:

- `rules`: the JSON Schema keywords for what pydantic's schemas cannot show (limits, patterns);
- `notes`: the catalogue's words for humans, by type and by field;
- `payloads`: the client examples' payloads;
- `schemas`: each model's schema, and the 3.x channel shapes derived from it;
- `examples`: the examples, validated by the code that validates real messages;
- `refusals`: the `uncompliant` examples, with reasons from the real validation code;
- `sockets`: each socket's messages (`Part`s) and schemas;
- `channels`: the channel objects and the operations.

Every message schema comes from `model_json_schema` of the pydantic model the server
validates that message with, so the document cannot drift from the code: a field added to
a model shows up here on the next start. What pydantic cannot see is added explicitly from
the instance's settings (`rules.field_rules`).

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

from gischat.protocol.asyncapi import channels, sockets
from gischat.protocol.asyncapi.examples import accepted, fitting_nickname, server_examples
from gischat.protocol.asyncapi.notes import descriptions
from gischat.protocol.asyncapi.refusals import channel_cases, channel_fixed, refusals
from gischat.protocol.asyncapi.rules import DocumentSettings
from gischat.protocol.asyncapi.schemas import message_models, model_schemas
from gischat.protocol.asyncapi.sockets import message_object
from gischat.protocol.dialects import CHANNEL_TYPES, Dialect

ASYNCAPI_VERSION = "3.0.0"


def package_version() -> str:
    """The installed gischat's version, the document's `info.version`."""
    try:
        return version("gischat")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def build_document(settings: DocumentSettings, package: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of this instance's websocket protocol."""
    limits = settings.limits
    models = message_models()
    schemas = model_schemas(models, limits)
    shown = {kind: accepted(kind, model, limits) for kind, model in CHANNEL_TYPES.items()}
    author = fitting_nickname("Jane-GIS", limits)
    room_refusals = refusals(limits, author, Dialect.ROOM)
    channel_refusals = refusals(
        limits,
        author,
        Dialect.CHANNEL,
        channel_cases(limits, author),
        channel_fixed(settings),
    )
    room_schemas, room = sockets.room_components(
        models, schemas, descriptions(models, Dialect.ROOM), {**shown, **server_examples(room_refusals)}
    )
    channel_schemas, channel = sockets.channel_components(
        models,
        schemas,
        descriptions(models, Dialect.CHANNEL),
        {**shown, **server_examples(channel_refusals)},
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
                "url": "https://github.com/geotribu/gischat/blob/main/docs/protocol.md",
            },
        },
        "defaultContentType": "application/json",
        "servers": _servers(settings),
        "channels": {
            sockets.ROOM: channels.room_object(settings, room),
            sockets.CHANNEL: channels.channel_object(settings, channel),
        },
        "operations": {**channels.operations(Dialect.ROOM), **channels.operations(Dialect.CHANNEL)},
        "components": {
            "schemas": {**room_schemas, **channel_schemas},
            "messages": {part.key: message_object(part, models[part.kind]) for part in [*room, *channel]},
        },
    }


def document_json(settings: DocumentSettings, package: str | None = None) -> bytes:
    """`build_document` as the bytes `/asyncapi.json` serves."""
    return orjson.dumps(build_document(settings, package))


def _servers(settings: DocumentSettings) -> dict[str, Any]:
    """Where clients reach the instance: as it listens, and behind a TLS-terminating proxy."""
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
