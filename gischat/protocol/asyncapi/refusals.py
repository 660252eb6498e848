"""The `uncompliant` examples: refusals with the reasons the real validation code gives.

A refusal's reason is written by the code that refuses (the parsing behind
`gischat.protocol.dialects.parse_frame`, and the models' validators), with the instance's limits,
so a reason in the document is one a client can meet on this instance, word for word. Each case is an attempt
that must raise `Uncompliant`; one that does not (the instance's limits allow it) is left out.
Refusals decided outside validation (a binary frame, a reply to an unknown message) cannot be
provoked here and carry their fixed reason from `gischat.protocol.refusals`.

Not to be confused with `gischat.protocol.refusals`, which says what a refusal is; this module
only shows some.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gischat.protocol.asyncapi.examples import Shown
from gischat.protocol.asyncapi.payloads import MODEL_XML, SCRIPT_CODE, WGS84_WKT
from gischat.protocol.asyncapi.rules import DocumentSettings
from gischat.protocol.dialects import Dialect, parse_frame, parse_object
from gischat.protocol.messages import Limits, UncompliantMessage
from gischat.protocol.refusals import BINARY_REASON, REPLY_REASON, Uncompliant

# A refusal to show: name, summary, and an attempt that raises `Uncompliant`.
Case = tuple[str, str, Callable[[], object]]
# A refusal decided after validation: name, summary, reason.
Fixed = tuple[str, str, str]

# Building a refusal example costs a list of this many items at most.
MAX_EXAMPLE_ITEMS = 100_000


def refusals(
    limits: Limits,
    author: str,
    dialect: Dialect,
    extra: list[Case] | None = None,
    fixed: list[Fixed] | None = None,
) -> list[Shown]:
    """Refusals on a socket of `dialect`, with the reasons the validation code gives on this instance.

    `extra` and `fixed` are the socket's own cases (`channel_cases`, `channel_fixed`), shown after
    the ones every socket meets.
    """

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
    shown: list[Shown] = []
    for name, summary, attempt in [*cases, *(extra or [])]:
        try:
            attempt()
        except Uncompliant as exc:
            shown.append((name, summary, UncompliantMessage(reason=exc.reason)))
    for name, summary, reason in [("binary-frame", "A binary frame", BINARY_REASON), *(fixed or [])]:
        shown.append((name, summary, UncompliantMessage(reason=reason)))
    return shown


def channel_cases(limits: Limits, author: str) -> list[Case]:
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


def channel_fixed(settings: DocumentSettings) -> list[Fixed]:
    """Refusals a channel client meets that are decided on the conversation's state, after validation."""
    if not settings.reply_threads:
        return []
    return [("bad-reply", "A reply to a message that is not a recent one of this conversation", REPLY_REASON)]
