"""The rules pydantic's schemas cannot show, as JSON Schema keywords.

The validators that enforce nickname and message lengths, the nickname alphabet, file names and
the feature count read their limits from the validation context (`Limits`), so the schemas
pydantic writes know nothing of them. `field_rules` writes this instance's limits into the
schemas of the fields they guard; the patterns are here because JSON Schema speaks ECMA-262, not
Python's `re`, and each needs saying once, next to why it matches what the Python code accepts.

This module depends on nothing else of the package: every other module may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gischat.protocol.messages import Limits
from gischat.protocol.refusals import MAX_REASON_LENGTH

# A nickname: letters (any script), digits, `_` and `-`, as Python's `[\w-]+` in
# `gischat.protocol.messages.NICKNAME_PATTERN`. JSON Schema patterns are ECMA-262 regular
# expressions, where `\w` is ASCII only; `\p{L}`/`\p{N}` (Unicode mode, the default of validators
# such as ajv) is the same alphabet.
NICKNAME_JSON_PATTERN = r"^[\p{L}\p{N}_-]+$"
# A name clients may save a file under (`gischat.protocol.messages.check_file_name`): no '/' or
# '\', no control character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F), not '.' or '..'
# (spaces around ignored). The same expression in ECMA-262 and Python.
FILE_NAME_JSON_PATTERN = r"^(?!\s*\.{1,2}\s*$)[^/\\\u0000-\u001F\u007F-\u009F]*$"
# What `gischat.protocol.dialects.new_id` writes (`str(uuid.uuid4())`): lowercase, hyphenated,
# version 4.
UUID4_JSON_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"

# The field a channel message answers another with: accepted from clients, never written among
# the model's keys (rooms never receive it, channel frames append it last).
REPLY_KEY = "in_reply_to_id"


def field_rules(limits: Limits) -> dict[str, dict[str, Any]]:
    """JSON Schema keywords for the fields whose validators pydantic's schema cannot show.

    Keyed by field name, applied to that field in every model that has it. Every field a
    model guards with a `field_validator` must be here (tests/protocol/test_asyncapi.py checks it).
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


@dataclass(frozen=True, slots=True)
class DocumentSettings:
    """What the document tells of the instance: its rooms, address, switches and limits."""

    rooms: list[str]
    host: str
    port: int
    reply_threads: bool
    allow_scripts: bool
    max_frame_size: int
    max_script_length: int
    max_stored_messages: int
    limits: Limits
