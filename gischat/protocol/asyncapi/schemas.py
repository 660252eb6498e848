"""The payload schemas: each model's, and the 3.x channel shapes derived from it.

Every message schema comes from `model_json_schema` of the pydantic model the server validates
that message with, so the document cannot drift from the code: a field added to a model shows up
here on the next start. `model_schemas` adds what pydantic cannot see (the notes of
`gischat.protocol.asyncapi.notes`, the rules of `gischat.protocol.asyncapi.rules`) and speaks
draft-07, AsyncAPI's dialect of JSON Schema.

On `/channel/{channel}/ws` clients send the 2.x shapes and the server sends every frame in the
3.x envelope, so each type has two schemas there, both derived from the model's:

- `ChannelClient<Model>` (`client_schema`): the model's schema, `in_reply_to_id` as the optional
  last key of the types that may answer a message;
- `ChannelServer<Model>` (`server_schema`): `type`, `id`, `timestamp`, then every key of the type
  in wire order, always all present and nothing else; `in_reply_to_id` last on a reply, when the
  instance has REPLY_THREADS on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic.json_schema import models_json_schema

from gischat.protocol.asyncapi.notes import FIELD_NOTES, SERVER_FIELD_NOTES
from gischat.protocol.asyncapi.rules import REPLY_KEY, UUID4_JSON_PATTERN, DocumentSettings, field_rules
from gischat.protocol.dialects import CHANNEL_TYPES
from gischat.protocol.messages import (
    ExiterMessage,
    Limits,
    NbUsersMessage,
    UncompliantMessage,
    WireMessage,
)

SCHEMA_REF = "#/components/schemas/{model}"

# The models of what only the server sends; the clients' are `CHANNEL_TYPES`.
SERVER_MODELS: tuple[type[WireMessage], ...] = (NbUsersMessage, ExiterMessage, UncompliantMessage)

# The two directions of a channel message, in its key (`client.text`) and schema name.
CLIENT = "client"
SERVER = "server"

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


def model_schemas(models: Mapping[str, type[WireMessage]], limits: Limits) -> dict[str, Any]:
    """Each model's schema by model name, its fields noted and ruled, nested definitions beside it.

    `in_reply_to_id` is still there: each socket's part decides where it goes, if anywhere.
    """
    _, top = models_json_schema([(model, "validation") for model in models.values()], ref_template=SCHEMA_REF)
    schemas: dict[str, Any] = draft07(top.get("$defs", {}))
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


def draft07(schema: Any) -> Any:
    """pydantic writes JSON Schema 2020-12; AsyncAPI's schema object is draft-07.

    Tuples (`prefixItems`) become draft-07 tuples (`items` as a list) and OpenAPI-style
    `discriminator` objects become the property name AsyncAPI expects.
    """
    if isinstance(schema, list):
        return [draft07(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: draft07(value) for key, value in schema.items()}
    if "prefixItems" in converted:
        rest = converted.pop("items", None)
        converted["items"] = converted.pop("prefixItems")
        if rest is not None:
            converted["additionalItems"] = rest
    discriminator = converted.get("discriminator")
    if isinstance(discriminator, dict):
        converted["discriminator"] = discriminator.get("propertyName", "type")
    return converted


def wire_fields(model: type[WireMessage]) -> list[str]:
    """The model's keys as it writes them: `in_reply_to_id` is accepted, never written with them
    (rooms never receive it, channel frames append it after them)."""
    return [name for name, field in model.model_fields.items() if not field.exclude]


def takes_replies(model: type[WireMessage]) -> bool:
    """Whether a message of this model may answer another (it has `in_reply_to_id`)."""
    return REPLY_KEY in model.model_fields


def schema_name(direction: str, model: type[WireMessage]) -> str:
    """The key of a channel schema in `components.schemas`: `ChannelClientTextMessage`."""
    return f"Channel{direction.capitalize()}{model.__name__}"


def client_schema(
    schema: dict[str, Any], model: type[WireMessage], settings: DocumentSettings
) -> dict[str, Any]:
    """What a channel client sends: the model's schema, `in_reply_to_id` last where it may be given."""
    properties = {name: prop for name, prop in schema["properties"].items() if name != REPLY_KEY}
    if takes_replies(model):
        properties[REPLY_KEY] = reply_schema(settings, from_client=True)
    return {**schema, "title": schema_name(CLIENT, model), "properties": properties}


def server_schema(
    schema: dict[str, Any], model: type[WireMessage], settings: DocumentSettings
) -> dict[str, Any]:
    """What channel sockets receive: the envelope, then every key of the type, all present."""
    properties: dict[str, Any] = {"type": schema["properties"]["type"], "id": ID_SCHEMA}
    properties["timestamp"] = TIMESTAMP_SCHEMA
    for name, prop in schema["properties"].items():
        if name not in (REPLY_KEY, "type"):
            properties[name] = {**prop, "description": SERVER_FIELD_NOTES.get(name, prop.get("description"))}
    required = list(properties)
    if settings.reply_threads and takes_replies(model):
        properties[REPLY_KEY] = reply_schema(settings, from_client=False)
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


def reply_schema(settings: DocumentSettings, *, from_client: bool) -> dict[str, Any]:
    """`in_reply_to_id` as a client may send it, or as channel sockets receive it; its meaning
    depends on whether the instance threads replies (REPLY_THREADS)."""
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
