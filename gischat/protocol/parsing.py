"""From a text frame to a validated message of the socket's dialect, or a refusal with a short reason."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from gischat.protocol.messages import CLIENT_MODELS, SERVER_ONLY_TYPES, Limits, WireMessage
from gischat.protocol.refusals import Uncompliant, first_problem, short

# A frame's type, from its first bytes: clients put "type" first (a guess, never a verdict).
_SNIFF_TYPE = re.compile(r'"type"\s*:\s*"(\w+)"')
SNIFF_SPAN = 256


def sniff_type(text: str | bytes) -> str | None:
    """The type a large frame announces in its first bytes, before it is parsed, if it does
    (its text, or its UTF-8 bytes: a character cut at the end of the span is ignored)."""
    if isinstance(text, bytes):
        text = text[:SNIFF_SPAN].decode(errors="ignore")
    found = _SNIFF_TYPE.search(text, 0, SNIFF_SPAN)
    return found.group(1) if found else None


class Ignored(Exception):
    """A frame the dialect expects from its clients and drops without a word (QField's `exiter`)."""


def parse_frame(
    text: str,
    limits: Limits,
    types: Mapping[str, type[WireMessage]] = CLIENT_MODELS,
    ignored: frozenset[str] = frozenset(),
) -> Any:
    """Turn one text frame into a validated message, or raise `Uncompliant` with a short reason."""
    try:
        # orjson is strict JSON: NaN and Infinity are refused here rather than re-emitted.
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise Uncompliant("message is not valid JSON") from None
    return parse_object(data, limits, types, ignored)


def parse_object(
    data: Any,
    limits: Limits,
    types: Mapping[str, type[WireMessage]] = CLIENT_MODELS,
    ignored: frozenset[str] = frozenset(),
) -> Any:
    """Validate an already decoded JSON value against the model its `type` names in `types`
    (the client types of the socket's dialect); a type in `ignored` raises `Ignored`."""
    if not isinstance(data, dict):
        raise Uncompliant("message must be a JSON object")
    kind = data.get("type")
    if kind is None:
        raise Uncompliant("type: missing")
    # Before any set lookup: a list or an object as the type is unhashable (a TypeError, that
    # is a traceback and a "server error" answer, for what is only a frame that is no message).
    if not isinstance(kind, str):
        raise Uncompliant(f"type: unknown message type {short(kind)}")
    if kind in ignored:
        raise Ignored(kind)
    if kind in SERVER_ONLY_TYPES:
        raise Uncompliant(f"type: '{kind}' messages are sent by the server only")
    if kind not in types:
        raise Uncompliant(f"type: unknown message type {short(kind)}")
    model = types[kind]
    try:
        message = model.model_validate(data, context=limits)
    except ValidationError as exc:
        raise Uncompliant(first_problem(exc)) from None
    return message
