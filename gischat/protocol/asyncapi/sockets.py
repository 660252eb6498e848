"""The document's two channels, one per dialect of the conversation (`gischat.dialects`).

`/room/{room}/ws` speaks 2.x: one message per type, the same shape both ways, its schema the
model's. `/channel/{channel}/ws` speaks 3.x: clients send the 2.x shapes and the server sends
every frame in the 3.x envelope, so each type has two messages there, `client.<type>` and
`server.<type>`, with schemas derived from the model's (a field added to a model shows up in
all of them):

- `ChannelClient<Model>`: the model's schema, `in_reply_to_id` as the optional last key of the
  types that may answer a message;
- `ChannelServer<Model>`: `type`, `id`, `timestamp`, then every key of the type in wire order,
  always all present and nothing else; `in_reply_to_id` last on a reply, when the instance has
  REPLY_THREADS on.

Channel frames in examples are written by `dialects.Post`, the code that writes the real
frames, with fixed ids and timestamps. `gischat.asyncapi` owns the catalogue (notes, rules,
examples; the channel-only types' entries are here) and the document: it hands each socket the
models' schemas and the validated examples, and gets back schemas and `Part`s to describe.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from gischat.protocol.dialects import (
    CHANNEL_ONLY_TYPES,
    CHANNEL_TYPES,
    CLIENT_TYPES,
    IGNORED_TYPES,
    ROOM_TYPES,
    Dialect,
    Post,
    parse_object,
)
from gischat.protocol.messages import SERVER_ONLY_TYPES, Limits, WireMessage
from gischat.protocol.refusals import REPLY_REASON, Uncompliant
from gischat.settings import Settings

ROOM = str(Dialect.ROOM)
CHANNEL = str(Dialect.CHANNEL)
ADDRESSES = {Dialect.ROOM: "/room/{room}/ws", Dialect.CHANNEL: "/channel/{channel}/ws"}
CLIENT = "client"
SERVER = "server"
REPLY_KEY = "in_reply_to_id"
# Who gets each type when the server sends it; any other type goes to the whole conversation.
TO_LIKED_AUTHOR = "like"
TO_SENDER = "uncompliant"

# What `dialects.new_id` writes (`str(uuid.uuid4())`): lowercase, hyphenated, version 4.
UUID4_JSON_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
# Examples carry fixed times, so the document is the same on every start.
EXAMPLE_TIMESTAMP = 1795702339
REPLY_DELAY = 42

# The channel-only types in the shared catalogue (see `asyncapi.TYPE_NOTES` and the rest).
TYPE_NOTES: dict[str, tuple[str, str]] = {
    "position": (
        "Position",
        "Where the author stands (QField's GNSS position), in a CRS. Client → server, then broadcast to "
        "the channel sockets of the conversation, sender included; room sockets never see it.",
    ),
    "model": (
        "Processing model",
        "A QGIS Processing graphical model (a `.model3` XML document). Client → server, then broadcast to "
        "the channel sockets of the conversation, sender included; room sockets never see it.",
    ),
    "script": (
        "Processing script",
        "A QGIS Processing Python script: code the receiving QGIS saves among its scripts and may run, so "
        "refused unless the instance sets ALLOW_SCRIPTS. Client → server, then broadcast to the channel "
        "sockets of the conversation, sender included; room sockets never see it.",
    ),
}
FILE_NAME_NOTE = "clients save the file under it: no '/', '\\', control character, not '.' or '..'"
FIELD_NOTES: dict[str, str] = {
    "x": "The x coordinate (easting or longitude), in the CRS's units.",
    "y": "The y coordinate (northing or latitude), in the CRS's units.",
    "model_name": f"The model's name ({FILE_NAME_NOTE}).",
    "model_group": "The model's group in the Processing toolbox, or null.",
    "raw_xml": "The model, as the `.model3` XML document QGIS saves.",
    "name": f"The script's name ({FILE_NAME_NOTE}).",
    "raw_pycode": "The script's Python source.",
}
# Keys whose meaning on a channel frame is more precise than in the model's schema.
SERVER_FIELD_NOTES: dict[str, str] = {
    "style": "The layer's QGIS style (a QML document), relayed byte for byte; always present, null when none.",
    "model_group": "The model's group in the Processing toolbox; always present, null when none.",
}
WGS84_WKT2 = (
    'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563]],'
    'CS[ellipsoidal,2],AXIS["latitude",north],AXIS["longitude",east],ANGLEUNIT["degree",0.0174532925199433],'
    'ID["EPSG",4326]]'
)
MODEL_XML = (
    '<!DOCTYPE model>\n<Option type="Map">\n'
    '  <Option type="QString" name="model_group" value="Field work"/>\n'
    '  <Option type="QString" name="model_name" value="buffer_wells"/>\n'
    "</Option>\n"
)
SCRIPT_CODE = (
    "from qgis.core import QgsProcessingAlgorithm\n\n\n"
    "class CountFeatures(QgsProcessingAlgorithm):\n"
    "    def name(self):\n"
    '        return "count_features"\n'
)
CLIENT_EXAMPLES: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "position": [
        (
            "gnss-fix",
            "A GNSS position in WGS 84",
            {
                "type": "position",
                "author": "Jane-GIS",
                "avatar": None,
                "crs_wkt": WGS84_WKT2,
                "crs_authid": "EPSG:4326",
                "x": 2.3522,
                "y": 48.8566,
            },
        )
    ],
    "model": [
        (
            "buffer-wells",
            "A Processing model, in a group",
            {
                "type": "model",
                "author": "Jane-GIS",
                "avatar": None,
                "model_name": "buffer_wells",
                "model_group": "Field work",
                "raw_xml": MODEL_XML,
            },
        )
    ],
    "script": [
        (
            "count-features",
            "A Processing script",
            {
                "type": "script",
                "author": "Jane-GIS",
                "avatar": None,
                "name": "count_features",
                "raw_pycode": SCRIPT_CODE,
            },
        )
    ],
}

ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "uuid",
    "pattern": UUID4_JSON_PATTERN,
    "description": (
        "The message's id, given by the server when it accepted the message: a UUID4, lowercase and "
        "hyphenated; the same on every socket and in the history."
    ),
}
TIMESTAMP_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "minimum": 0,
    "description": "When the server accepted the message, in whole seconds since the Unix epoch (UTC).",
}

# An example: its name, summary and validated message.
Shown = tuple[str, str, WireMessage]
# A refusal to show: name, summary, and an attempt that raises `Uncompliant`.
Case = tuple[str, str, Callable[[], object]]


class Part(NamedTuple):
    """One message of a socket, for `asyncapi` to describe."""

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


def wire_fields(model: type[WireMessage]) -> list[str]:
    """The model's keys as it writes them: `in_reply_to_id` is accepted, never written with them
    (rooms never receive it, channel frames append it after them)."""
    return [name for name, field in model.model_fields.items() if not field.exclude]


def takes_replies(model: type[WireMessage]) -> bool:
    """Whether a message of this model may answer another (it has `in_reply_to_id`)."""
    return REPLY_KEY in model.model_fields


def message_key(dialect: Dialect, direction: str, kind: str) -> str:
    """The message's key in its channel's `messages`: rooms have one per type (`text`), channels
    one per type and direction (`client.text`, `server.text`)."""
    return kind if dialect is Dialect.ROOM else f"{direction}.{kind}"


def schema_name(direction: str, model: type[WireMessage]) -> str:
    return f"Channel{direction.capitalize()}{model.__name__}"


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
    settings: Settings,
) -> tuple[dict[str, Any], list[Part]]:
    """The channel's schemas and messages, from each model's schema (`schemas`, by model name), each
    type's description and its examples: accepted client ones, or what the server sends."""
    replies = _replies(shown.get("text", ()), limits, settings)
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
                examples += [example(n, s, sent) for n, s, sent, _ in replies.get(kind, [])]
            else:
                schema = server_schema(schemas[model.__name__], model, settings)
                description = (
                    f"{descriptions[kind]} As channel sockets receive it: `type`, `id` and `timestamp` first."
                )
                examples = [example(n, s, frame(message, n)) for n, s, message in shown[kind]]
                examples += [example(n, s, received) for n, s, _, received in replies.get(kind, [])]
            channel_schemas[name] = {**schema, "description": description}
            local = message_key(Dialect.CHANNEL, direction, kind)
            parts.append(Part(Dialect.CHANNEL, local, kind, name, direction == CLIENT, examples))
    return channel_schemas, parts


def client_schema(schema: dict[str, Any], model: type[WireMessage], settings: Settings) -> dict[str, Any]:
    """What a channel client sends: the model's schema, `in_reply_to_id` last where it may be given."""
    properties = {name: prop for name, prop in schema["properties"].items() if name != REPLY_KEY}
    if takes_replies(model):
        properties[REPLY_KEY] = _reply_schema(settings, from_client=True)
    return {**schema, "title": schema_name(CLIENT, model), "properties": properties}


def server_schema(schema: dict[str, Any], model: type[WireMessage], settings: Settings) -> dict[str, Any]:
    """What channel sockets receive: the envelope, then every key of the type, all present."""
    properties: dict[str, Any] = {"type": schema["properties"]["type"], "id": ID_SCHEMA}
    properties["timestamp"] = TIMESTAMP_SCHEMA
    for name, prop in schema["properties"].items():
        if name not in (REPLY_KEY, "type"):
            properties[name] = {**prop, "description": SERVER_FIELD_NOTES.get(name, prop.get("description"))}
    required = list(properties)
    if settings.reply_threads and takes_replies(model):
        properties[REPLY_KEY] = _reply_schema(settings, from_client=False)
    return {
        **schema,
        "title": schema_name(SERVER, model),
        # A frame always carries the key: a default would only mislead.
        "properties": {
            name: {k: v for k, v in prop.items() if k != "default"} for name, prop in properties.items()
        },
        "required": required,
        "additionalProperties": False,
    }


def _reply_schema(settings: Settings, *, from_client: bool) -> dict[str, Any]:
    if not from_client:
        description = (
            "Only on a reply: the `id` of the message this one answers, always the last key (the instance "
            "has REPLY_THREADS on)."
        )
    elif settings.reply_threads:
        description = (
            "Optional, last: the `id` of a recent message of this conversation that this one answers "
            "(QChat 1.7 threads); any other value is refused, null means no reply. Channel sockets "
            "receive it as the message's last key, room sockets never."
        )
    else:
        description = (
            "Optional: the `id` of the message this one answers (QChat 1.7). Accepted and ignored on this "
            "instance (REPLY_THREADS is off): the message is relayed as a plain one."
        )
    kind: str | list[str] = ["string", "null"] if from_client else "string"
    return {"type": kind, "pattern": UUID4_JSON_PATTERN, "description": description}


def example_id(kind: str, name: str) -> str:
    """A fixed UUID4 for the example `name` of `kind`."""
    digest = hashlib.sha256(f"gischat-example/{kind}/{name}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def frame(
    message: WireMessage, name: str, reply: str | None = None, timestamp: int = EXAMPLE_TIMESTAMP
) -> dict[str, Any]:
    """`message` exactly as channel sockets receive it, written by the code that writes real frames."""
    kind = str(type(message).model_fields["type"].default)
    body, style = message.body()
    post = Post(kind, body, style, reply, id=example_id(kind, name), timestamp=timestamp)
    return _loads(post.channel_text())


def _replies(
    texts: Sequence[Shown], limits: Limits, settings: Settings
) -> dict[str, list[tuple[str, str, dict[str, Any], dict[str, Any]]]]:
    """With REPLY_THREADS on, an answer to the first text example: name, summary, as sent, as received."""
    if not settings.reply_threads or not texts:
        return {}
    name, _, first = texts[0]
    sent = {**wire(first), "avatar": None, "text": "Thanks!", REPLY_KEY: example_id("text", name)}
    try:
        reply = parse_object(sent, limits, Dialect.CHANNEL)
    except Uncompliant:
        return {}  # this instance's rules refuse it: do not show it
    received = frame(reply, "reply", sent[REPLY_KEY], EXAMPLE_TIMESTAMP + REPLY_DELAY)
    return {"text": [("reply", f"An answer to the '{name}' example", sent, received)]}


def refusal_cases(limits: Limits, author: str) -> list[Case]:
    """Refusals only a channel client meets, by the real validation code."""
    model = {"type": "model", "author": author, "model_name": "../buffer_wells", "raw_xml": MODEL_XML}
    cases: list[Case] = [
        (
            "bad-model-name",
            "A model whose name is a path",
            lambda: parse_object(model, limits, Dialect.CHANNEL),
        )
    ]
    if not limits.allow_scripts:
        script = {"type": "script", "author": author, "name": "count_features", "raw_pycode": SCRIPT_CODE}
        cases.append(
            (
                "scripts-off",
                "A script, on an instance that accepts none (ALLOW_SCRIPTS off)",
                lambda: parse_object(script, limits, Dialect.CHANNEL),
            )
        )
    return cases


def fixed_refusals(settings: Settings) -> list[tuple[str, str, str]]:
    """Refusals decided on the conversation's state, after validation: name, summary, reason."""
    if not settings.reply_threads:
        return []
    return [("bad-reply", "A reply to a message that is not a recent one of this conversation", REPLY_REASON)]


def room_object(settings: Settings, parts: list[Part]) -> dict[str, Any]:
    history = (
        f"Right after its first `nb_users`, a new socket receives the room's last "
        f"{settings.max_stored_messages} messages (history), oldest first, as they were broadcast."
        if settings.max_stored_messages
        else "This instance keeps no history."
    )
    return {
        "address": ADDRESSES[Dialect.ROOM],
        "title": "A chat room",
        "description": (
            f"One websocket per room. An unknown room refuses the handshake (HTTP 403). {history} A frame "
            f"above {settings.max_frame_size} bytes closes the socket (1009), a text frame that is not "
            "valid UTF-8 too (1007); every other refused frame gets an `uncompliant` answer and the "
            "socket stays open."
        ),
        "parameters": {
            ROOM: {
                "description": "The room's name, percent-encoded (`Field%20and%20mobile`).",
                "enum": list(settings.rooms),
                "default": settings.rooms[0],
            }
        },
        "messages": _messages(parts),
        "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
    }


def channel_object(settings: Settings, parts: list[Part]) -> dict[str, Any]:
    ignored = ", ".join(f"`{kind}`" for kind in sorted(IGNORED_TYPES[Dialect.CHANNEL]))
    only = ", ".join(f"`{kind}`" for kind in CHANNEL_TYPES if kind in CHANNEL_ONLY_TYPES)
    reply = (
        "A reply (a message sent with `in_reply_to_id`) carries it as its last key (REPLY_THREADS is on)."
        if settings.reply_threads
        else "This instance sends no `in_reply_to_id` (REPLY_THREADS is off)."
    )
    scripts = (
        f"Scripts are accepted, up to {settings.max_script_length} characters of code."
        if settings.allow_scripts
        else "Scripts are refused (ALLOW_SCRIPTS is off): they run code on the receiver's machine."
    )
    history = (
        f"Right after its first `nb_users`, a new socket receives the conversation's last "
        f"{settings.max_stored_messages} messages (history), oldest first, as channel sockets received "
        "them (same ids and timestamps)."
        if settings.max_stored_messages
        else "This instance keeps no history."
    )
    return {
        "address": ADDRESSES[Dialect.CHANNEL],
        "title": "A chat channel (3.x dialect)",
        "description": (
            "One websocket per channel, for 3.x clients (QChat, the QField plugin). Channel X is room X: "
            "the same conversation, with the same sockets, nicknames, count and history; only the wire "
            "differs. An unknown channel refuses the handshake (HTTP 403).\n\n"
            "Every frame the server sends starts with `type`, `id` (the message's id, a lowercase "
            "hyphenated UUID4) and `timestamp` (integer seconds since the epoch, when the server accepted "
            f"it), then every key of its type in a fixed order, present even when null. {reply} Clients "
            f"send the 2.x shapes; an `id` or `timestamp` they add is ignored. {ignored} from a client is "
            f"dropped without an answer (QField sends it before closing). {only} exist on channels only. "
            f"{scripts}\n\n{history} A frame above {settings.max_frame_size} bytes closes the socket "
            "(1009), a text frame that is not valid UTF-8 too (1007); every other refused frame gets an "
            "`uncompliant` answer and the socket stays open."
        ),
        "parameters": {
            CHANNEL: {
                "description": "The channel's name, percent-encoded (`Field%20and%20mobile`): a room's name.",
                "enum": list(settings.rooms),
                "default": settings.rooms[0],
            }
        },
        "messages": _messages(parts),
        "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
    }


def _messages(parts: list[Part]) -> dict[str, Any]:
    return {part.local: {"$ref": f"#/components/messages/{part.key}"} for part in parts}


def operations(dialect: Dialect) -> dict[str, Any]:
    """What the server receives and sends on the socket of `dialect`."""
    channel = str(dialect)
    channel_ref = {"$ref": f"#/channels/{channel}"}
    prefix = "" if dialect is Dialect.ROOM else "Channel"
    clients = CLIENT_TYPES[dialect]

    def refs(direction: str, kinds: Sequence[str]) -> list[dict[str, str]]:
        return [
            {"$ref": f"#/channels/{channel}/messages/{message_key(dialect, direction, k)}"} for k in kinds
        ]

    broadcasts = [kind for kind in [*clients, *SERVER_ONLY_TYPES] if kind not in (TO_LIKED_AUTHOR, TO_SENDER)]
    shape = (
        ""
        if dialect is Dialect.ROOM
        else " (in the 2.x shape; `exiter` is dropped without a word, `id` and `timestamp` are ignored)"
    )
    return {
        f"receive{prefix}ClientMessage": {
            "action": "receive",
            "channel": channel_ref,
            "title": f"{prefix} client messages".strip().capitalize(),
            "summary": "What clients send; a refused message is answered with `uncompliant`.",
            "description": (
                f"Every message a client may send{shape}. A message that breaks a rule (not JSON, not an "
                "object, a missing, unknown or server-only `type`, a binary frame, a field out of "
                "bounds, a nickname taken or not the sender's) is not relayed: the server replies "
                "to the sender only with an `uncompliant` message naming the field and the problem."
            ),
            "messages": refs(CLIENT, list(clients)),
            "reply": {"channel": channel_ref, "messages": refs(SERVER, [TO_SENDER])},
        },
        f"sendTo{channel.capitalize()}": {
            "action": "send",
            "channel": channel_ref,
            "title": f"{prefix} broadcasts".strip().capitalize(),
            "summary": f"What every socket of the {channel} receives, the sender's included.",
            "messages": refs(SERVER, broadcasts),
        },
        f"send{prefix}Like": {
            "action": "send",
            "channel": channel_ref,
            "title": f"{prefix} likes".strip().capitalize(),
            "summary": "A like, to the socket registered as `liked_author` only.",
            "messages": refs(SERVER, [TO_LIKED_AUTHOR]),
        },
        f"send{prefix}Uncompliant": {
            "action": "send",
            "channel": channel_ref,
            "title": f"{prefix} refusals".strip().capitalize(),
            "summary": "The answer to a refused message, to its sender only.",
            "messages": refs(SERVER, [TO_SENDER]),
        },
    }


def example(name: str, summary: str, payload: dict[str, Any]) -> dict[str, Any]:
    """An example object of a message: its name, summary (if any) and payload."""
    return {"name": name, **({"summary": summary} if summary else {}), "payload": payload}


def wire(message: WireMessage) -> dict[str, Any]:
    """A message as the 2.x dialect writes it (what clients send, and rooms receive)."""
    return _loads(message.to_wire())


def _loads(text: str) -> dict[str, Any]:
    data = orjson.loads(text)
    assert isinstance(data, dict)
    return data
