"""What each socket carries: its messages, their schemas and their examples.

`/room/{room}/ws` speaks 2.x: one message per type, the same shape both ways, its schema the
model's. `/channel/{channel}/ws` speaks 3.x: clients send the 2.x shapes and the server sends
every frame in the 3.x envelope, so each type has two messages there, `client.<type>` and
`server.<type>`, with the schemas of `gischat.protocol.asyncapi.schemas`.

The document hands each socket the models' schemas, the types' descriptions and the validated
examples; each socket gives back its schemas and a `Part` per message, which the document turns
into `components.messages` (`message_object`) and the channels into their `messages`
(`gischat.protocol.asyncapi.channels`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from gischat.protocol.asyncapi.examples import Shown, example, frame, replies, wire
from gischat.protocol.asyncapi.notes import type_notes
from gischat.protocol.asyncapi.rules import DocumentSettings
from gischat.protocol.asyncapi.schemas import (
    CLIENT,
    SCHEMA_REF,
    SERVER,
    client_schema,
    schema_name,
    server_schema,
    wire_fields,
)
from gischat.protocol.dialects import CHANNEL_TYPES, ROOM_TYPES, Dialect
from gischat.protocol.messages import SERVER_ONLY_TYPES, Limits, WireMessage

# Each socket's key in the document's `channels` (and its parameter's name).
ROOM = str(Dialect.ROOM)
CHANNEL = str(Dialect.CHANNEL)


class Part(NamedTuple):
    """One message of a socket, for the document to describe."""

    dialect: Dialect
    local: str  # the key in the channel's `messages`
    kind: str
    schema: str  # the key in `components.schemas`
    to_server: bool
    examples: list[dict[str, Any]]

    @property
    def key(self) -> str:
        """The key in `components.messages`: `text` for rooms, `channel.client.text` for channels."""
        return self.local if self.dialect is Dialect.ROOM else f"{CHANNEL}.{self.local}"


def message_key(dialect: Dialect, direction: str, kind: str) -> str:
    """The message's key in its channel's `messages`: rooms have one per type (`text`), channels
    one per type and direction (`client.text`, `server.text`)."""
    return kind if dialect is Dialect.ROOM else f"{direction}.{kind}"


def room_components(
    models: Mapping[str, type[WireMessage]],
    schemas: Mapping[str, Any],
    descriptions: Mapping[str, str],
    shown: Mapping[str, Sequence[Shown]],
) -> tuple[dict[str, Any], list[Part]]:
    """The room's schemas and messages: one per type, the model's keys as it writes them."""
    room_schemas: dict[str, Any] = {}
    parts: list[Part] = []
    for kind in [*ROOM_TYPES, *SERVER_ONLY_TYPES]:
        model = models[kind]
        schema = schemas[model.__name__]
        properties = {name: schema["properties"][name] for name in wire_fields(model)}
        room_schemas[model.__name__] = {**schema, "properties": properties, "description": descriptions[kind]}
        examples = [example(n, s, wire(message)) for n, s, message in shown[kind]]
        parts.append(Part(Dialect.ROOM, kind, kind, model.__name__, kind in ROOM_TYPES, examples))
    return room_schemas, parts


def channel_components(
    models: Mapping[str, type[WireMessage]],
    schemas: Mapping[str, Any],
    descriptions: Mapping[str, str],
    shown: Mapping[str, Sequence[Shown]],
    limits: Limits,
    settings: DocumentSettings,
) -> tuple[dict[str, Any], list[Part]]:
    """The channel's schemas and messages, from each model's schema (`schemas`, by model name), each
    type's description and its examples: accepted client ones, or what the server sends."""
    answers = replies(shown.get("text", ()), limits, settings)
    channel_schemas: dict[str, Any] = {}
    parts: list[Part] = []
    for direction, kinds in ((CLIENT, list(CHANNEL_TYPES)), (SERVER, [*CHANNEL_TYPES, *SERVER_ONLY_TYPES])):
        for kind in kinds:
            model = models[kind]
            name = schema_name(direction, model)
            if direction == CLIENT:
                schema = client_schema(schemas[model.__name__], model, settings)
                description = descriptions[kind]
                examples = [example(n, s, wire(message)) for n, s, message in shown[kind]]
                examples += [example(n, s, sent) for n, s, sent, _ in answers.get(kind, [])]
            else:
                schema = server_schema(schemas[model.__name__], model, settings)
                description = (
                    f"{descriptions[kind]} As channel sockets receive it: `type`, `id` and `timestamp` first."
                )
                examples = [example(n, s, frame(message, n)) for n, s, message in shown[kind]]
                examples += [example(n, s, received) for n, s, _, received in answers.get(kind, [])]
            channel_schemas[name] = {**schema, "description": description}
            local = message_key(Dialect.CHANNEL, direction, kind)
            parts.append(Part(Dialect.CHANNEL, local, kind, name, direction == CLIENT, examples))
    return channel_schemas, parts


def message_object(part: Part, model: type[WireMessage]) -> dict[str, Any]:
    """`part` as an AsyncAPI message object, for `components.messages`."""
    title, description = type_notes(part.kind, model, part.dialect)
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
