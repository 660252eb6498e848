"""Refusals: the reasons a message is refused, and the bounded label each one is counted under.

A refusal goes back to its sender only, as an `uncompliant` in the socket's dialect, and is
counted in `/metrics` by the rule it broke (the reason's head, up to its first colon), never by
its text: client input may end up in a reason, so labels come from the fixed set below.
Reasons that do not come from a field rule are spelled here once, for every module that
refuses and for the AsyncAPI document that shows them.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

MAX_REASON_LENGTH = 200


class InvalidText(ValueError):
    """A text message that is not UTF-8: RFC 6455 has the connection failed (1007), not the
    message refused. Raised where a large message's bytes are checked (`protocol.utf8`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Uncompliant(ValueError):
    """A message broke a rule; `reason` goes back verbatim to the sender only.

    Reasons are logged too, so they are capped: client input that ends up in one (a bad
    type name, a pydantic message quoting a value) can neither flood the log nor bounce
    a megabyte back.
    """

    def __init__(self, reason: str) -> None:
        if len(reason) > MAX_REASON_LENGTH:
            reason = reason[: MAX_REASON_LENGTH - 3] + "..."
        super().__init__(reason)
        self.reason = reason


# Reasons spelled once, whoever refuses.
BINARY_REASON = "binary frames are not supported: send JSON text frames"
NOT_JSON_REASON = "message is not valid JSON"
INTERNAL_ERROR_REASON = "server error while handling this message; it was not delivered"
CRASH_REASON = INTERNAL_ERROR_REASON  # a worker process died on the message
BUSY_REASON = "server busy: too many images and layers being processed, try again shortly"
MEMORY_REASON = "message too large to process: it needs more memory than a worker may use"
REPLY_REASON = "in_reply_to_id: not the id of a recent message of this conversation"
SCRIPTS_OFF_REASON = (
    "script: scripts are not accepted on this instance (they run code on the receiver's machine)"
)
ORIGIN_REASON = "origin not allowed: this page may not open a chat on this server"
SPLIT_REASON = (
    "newcomer: '{nickname}' was registered by another user while the server was split; "
    "register another nickname"
)
# Websocket close codes the server ends a connection with (RFC 6455, section 7.4.1).
CLOSE_INVALID_DATA = 1007  # a text message that is not UTF-8
CLOSE_POLICY_VIOLATION = 1008  # a client broke a rule (flood, too slow, abusive)
CLOSE_TRY_AGAIN_LATER = 1013  # the server is short of a shared resource

# Close reasons (the socket ends with 1008).
ABUSE_REASON = "too many messages refused for going too fast"
SLOW_CONSUMER_REASON = "too slow: outbound queue full"
KICKED_REASON = "kicked by a moderator"
BANNED_REASON = "banned by a moderator"
# A close frame's reason: at most 123 bytes of UTF-8 (RFC 6455, section 5.5).
MAX_CLOSE_REASON_BYTES = 123


def close_reason(text: str) -> str:
    """`text` cut to fit a close frame (a moderator's reason may be longer), at a character boundary."""
    data = text.encode()
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return text
    return data[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


# What a refusal reason starts with, up to its first colon: the rule that was broken.
REFUSAL_KINDS = frozenset(
    {
        "author",
        "avatar",
        "bbox",
        "crs_authid",
        "crs_wkt",
        "geojson",
        "image_data",
        "layer_name",
        "liked_author",
        "liker_author",
        "message",
        "newcomer",
        "slow down",
        "server busy",
        "server error while handling this message; it was not delivered",
        "text",
        "type",
        "binary frames are not supported",
        "message is not valid JSON",
        "message must be a JSON object",
        "Too many geojson features ",
        "xmin",
        "xmax",
        "ymin",
        "ymax",
        # Fields of the 3.x dialect's own types and replies.
        "x",
        "y",
        "model_name",
        "model_group",
        "raw_xml",
        "name",
        "raw_pycode",
        "script",
        "in_reply_to_id",
    }
)


def refusal_kind(reason: str) -> str:
    """The bounded label a refusal reason is counted under."""
    head = reason.split(":", 1)[0]
    if head in REFUSAL_KINDS:
        return {"Too many geojson features ": "geojson"}.get(head, head)
    head = head.split(".", 1)[0]  # "features.3.geometry" style paths
    return head if head in REFUSAL_KINDS else "other"


def first_problem(exc: ValidationError) -> str:
    """One readable line from a pydantic error: the field, then what is wrong with it."""
    error = exc.errors(include_url=False)[0]
    original = (error.get("ctx") or {}).get("error")
    if isinstance(original, Uncompliant):
        return original.reason
    field = ".".join(str(part) for part in error["loc"]) or "message"
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"{field}: missing"
    if kind == "string_type":
        return f"{field}: must be a string"
    if kind == "string_too_long":
        return f"{field}: too long (max {ctx.get('max_length')} characters)"
    if kind in ("float_type", "float_parsing"):
        return f"{field}: must be a number"
    if kind == "finite_number":
        return f"{field}: must be a finite number"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{field}: must be a JSON object"
    if kind == "literal_error":
        return f"{field}: must be {ctx.get('expected')}"
    if kind.startswith("union_tag"):
        return f"{field}: unknown or missing type"
    message = str(error["msg"])
    return f"{field}: {message[:1].lower()}{message[1:]}"


def short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
