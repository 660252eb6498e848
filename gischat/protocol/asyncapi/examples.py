"""The document's examples, validated by the code that validates real messages.

Examples are validated when the document is built, with the instance's limits: client examples
(`gischat.protocol.asyncapi.payloads`) go through the same parsing as a websocket frame and are
shown exactly as the server broadcasts them; an example the instance would refuse (say, a
nickname shorter than `MIN_AUTHOR_LENGTH`) is left out rather than shown, so the document never
shows what its own server refuses.

On channels, examples are shown as the client sends them and as the server's frame: frames are
written by `gischat.protocol.dialects.Post`, the code that writes the real frames, with ids and
timestamps fixed so the document is the same on every start.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from gischat.protocol.asyncapi.payloads import CLIENT_EXAMPLES
from gischat.protocol.asyncapi.rules import REPLY_KEY, DocumentSettings
from gischat.protocol.dialects import Dialect, Post, parse_object
from gischat.protocol.geojson import check_feature
from gischat.protocol.messages import ExiterMessage, GeojsonMessage, Limits, NbUsersMessage, WireMessage
from gischat.protocol.parsing import parse_object as parse_one
from gischat.protocol.refusals import Uncompliant

# An example: its name, summary and validated message.
Shown = tuple[str, str, WireMessage]
# An answer to an example: name, summary, as the client sends it, as channel sockets receive it.
Reply = tuple[str, str, dict[str, Any], dict[str, Any]]

# Examples carry fixed times, so the document is the same on every start.
EXAMPLE_TIMESTAMP = 1795702339
REPLY_DELAY = 42


def accepted(kind: str, model: type[WireMessage], limits: Limits) -> list[Shown]:
    """The client examples of `kind` this instance accepts, validated as a frame would be.

    Models may add their own through `json_schema_extra={"examples": [...]}`; they come after the
    catalogue's, and an example written the same as an earlier one is shown once.
    """
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


def server_examples(refusals: list[Shown]) -> dict[str, list[Shown]]:
    """What the server says of its own, by type: counts, departures, and `refusals`."""
    return {
        "nb_users": [("count", "12 sockets open", NbUsersMessage(nb_users=12))],
        "exiter": [("left", "Bob left", ExiterMessage(exiter="Bob"))],
        "uncompliant": refusals,
    }


def fitting_nickname(nickname: str, limits: Limits) -> str:
    """`nickname`, padded or cut to the instance's length rules."""
    padded = nickname + "_" * max(0, limits.min_author_length - len(nickname))
    return padded[: limits.max_author_length]


def replies(texts: Sequence[Shown], limits: Limits, settings: DocumentSettings) -> dict[str, list[Reply]]:
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


def example(name: str, summary: str, payload: dict[str, Any]) -> dict[str, Any]:
    """An example object of a message: its name, summary (if any) and payload."""
    return {"name": name, **({"summary": summary} if summary else {}), "payload": payload}


def wire(message: WireMessage) -> dict[str, Any]:
    """A message as the 2.x dialect writes it (what clients send, and rooms receive)."""
    return _loads(message.to_wire())


def frame(
    message: WireMessage, name: str, reply: str | None = None, timestamp: int = EXAMPLE_TIMESTAMP
) -> dict[str, Any]:
    """`message` exactly as channel sockets receive it, written by the code that writes real frames."""
    kind = str(type(message).model_fields["type"].default)
    body, style = message.body()
    post = Post(kind, body, style, reply, id=example_id(kind, name), timestamp=timestamp)
    return _loads(post.channel_text())


def example_id(kind: str, name: str) -> str:
    """A fixed UUID4 for the example `name` of `kind`, so the document is the same on every start."""
    digest = hashlib.sha256(f"gischat-example/{kind}/{name}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _loads(text: str) -> dict[str, Any]:
    data = orjson.loads(text)
    assert isinstance(data, dict)
    return data
