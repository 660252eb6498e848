"""Properties of both dialects' parsing: any input is a valid message or a refusal with its reason.

`dialects.parse_frame` and `parsing.parse_object` see whatever a client sends: arbitrary text,
arbitrary JSON, and valid frames of every type with members dropped, replaced or retyped. Each
either gives a model of a type its dialect accepts, or raises `Uncompliant` with a short
one-line reason (QField's `exiter` on a channel: `Ignored`), never another exception. A message
that is accepted renders, in each dialect, a frame with exactly that dialect's keys and the
values that were accepted, and crosses a broker unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from gischat.protocol import parsing
from gischat.protocol.dialects import (
    CHANNEL_ONLY_TYPES,
    CLIENT_TYPES,
    Dialect,
    Post,
    parse_frame,
    parse_object,
)
from gischat.protocol.messages import Limits, WireMessage
from gischat.protocol.refusals import MAX_REASON_LENGTH, REFUSAL_KINDS, Uncompliant, refusal_kind

from properties_profile import examples
from strategies import FRAMES, JSON, TEXT, VALID_FRAMES, mutated_frames, reason_of, text_mutations
from wire import check_channel_shape, check_shape, parse_strict

DIALECTS = st.sampled_from(Dialect)
# The instance's rules: the defaults, and the same with scripts allowed (refused before anything
# else otherwise).
LIMITS = st.sampled_from([Limits(), Limits(allow_scripts=True), Limits(max_message_length=10)])


def judged(dialect: Dialect, data: Any, parse: Any) -> WireMessage | str | None:
    """What `parse()` made of `data`: the message, the refusal's reason, or None when ignored."""
    try:
        message = parse()
    except Uncompliant as exc:
        reason = exc.reason
        assert 0 < len(reason) <= MAX_REASON_LENGTH
        assert "\n" not in reason, "a reason is one log line"
        assert "\r" not in reason, "a reason is one log line"
        assert refusal_kind(reason) in REFUSAL_KINDS | {"other"}
        event(f"refused: {refusal_kind(reason)}")
        return reason
    except parsing.Ignored:
        assert dialect is Dialect.CHANNEL
        assert isinstance(data, dict)
        assert data.get("type") == "exiter"
        return None
    assert isinstance(message, WireMessage)
    kind = getattr(message, "type")  # noqa: B009
    assert type(message) is CLIENT_TYPES[dialect][kind], f"{kind} accepted on a {dialect} socket"
    event(f"accepted: {kind}")
    return message


def rendered(message: WireMessage) -> None:
    """An accepted message's frames carry exactly their dialect's keys and the accepted values."""
    kind = getattr(message, "type")  # noqa: B009
    posts: list[Post] = []
    refused = reason_of(lambda: posts.append(Post.of(message)))
    if refused is not None:  # a layer nested deeper than orjson writes
        assert kind == "geojson"
        assert refused == "geojson: nested too deeply"
        return
    post = posts[0]
    expected = message.model_dump()
    for dialect in Dialect:
        frame = post.frame(dialect)
        if frame is None:
            assert dialect is Dialect.ROOM
            assert kind in CHANNEL_ONLY_TYPES
            continue
        data = parse_strict(frame.data.decode())
        if dialect is Dialect.ROOM:
            check_shape(data)
        else:
            check_channel_shape(data)
            del data["id"], data["timestamp"]
        assert data == expected
    again = Post.decode(post.encode())
    assert again.room_text() == post.room_text()
    assert again.channel_text() == post.channel_text()


@examples(300)
@given(text=TEXT | st.text(), dialect=DIALECTS)
def test_any_text_is_a_message_or_a_refusal(text: str, dialect: Dialect) -> None:
    judged(dialect, text, lambda: parse_frame(text, Limits(), dialect))


@examples(300)
@given(value=JSON, dialect=DIALECTS, limits=LIMITS)
def test_any_json_value_is_a_message_or_a_refusal(value: Any, dialect: Dialect, limits: Limits) -> None:
    """As text (the loop's path) and as a decoded value (a worker's path): one verdict."""
    from_text = judged(dialect, value, lambda: parse_frame(orjson.dumps(value).decode(), limits, dialect))
    from_value = judged(dialect, value, lambda: parse_object(value, limits, dialect))
    assert from_text == from_value


@examples(200)
@given(value=JSON, kind=st.sampled_from(sorted(FRAMES)) | JSON, dialect=DIALECTS)
def test_any_object_of_any_type_is_a_message_or_a_refusal(value: Any, kind: Any, dialect: Dialect) -> None:
    data = {"type": kind, "author": "Jane-GIS", "value": value}
    judged(dialect, data, lambda: parse_object(data, Limits(allow_scripts=True), dialect))


@examples(200)
@given(frame=VALID_FRAMES, dialect=DIALECTS)
def test_valid_frames_of_every_type_are_accepted_where_their_dialect_has_them(
    frame: dict[str, Any], dialect: Dialect
) -> None:
    limits = Limits(allow_scripts=True)
    outcome = judged(dialect, frame, lambda: parse_frame(orjson.dumps(frame).decode(), limits, dialect))
    if frame["type"] in CLIENT_TYPES[dialect]:
        assert isinstance(outcome, WireMessage), outcome
        rendered(outcome)
    else:
        assert outcome == f"type: unknown message type {frame['type']!r}"


@examples(400)
@given(frame=mutated_frames(), dialect=DIALECTS, limits=LIMITS)
def test_mutated_frames_are_messages_or_refusals(
    frame: dict[str, Any], dialect: Dialect, limits: Limits
) -> None:
    outcome = judged(dialect, frame, lambda: parse_object(frame, limits, dialect))
    if isinstance(outcome, WireMessage):
        rendered(outcome)


@examples(300)
@given(data=st.data(), frame=VALID_FRAMES, dialect=DIALECTS)
def test_mutated_frame_texts_are_messages_or_refusals(
    data: st.DataObject, frame: dict[str, Any], dialect: Dialect
) -> None:
    text = data.draw(text_mutations(orjson.dumps(frame).decode()))
    outcome = judged(dialect, text, lambda: parse_frame(text, Limits(allow_scripts=True), dialect))
    if isinstance(outcome, WireMessage):
        rendered(outcome)


@examples(200)
@given(text=TEXT | st.text() | st.binary().map(lambda raw: raw.decode(errors="replace")), cut=st.booleans())
def test_sniffing_a_frame_type_never_fails(text: str, cut: bool) -> None:
    """A large frame's type is guessed from its first bytes, whatever they are, text or UTF-8."""
    raw = text.encode()
    sniffed = parsing.sniff_type(raw[: parsing.SNIFF_SPAN - 1] if cut else raw)
    assert sniffed is None or (sniffed.isidentifier() or sniffed.isalnum() or "_" in sniffed)
    assert parsing.sniff_type(text) is None or isinstance(parsing.sniff_type(text), str)


# --------------------------------------------------------------------------- found by the properties


@pytest.mark.parametrize("kind", [[], {}, ["exiter"], {"exiter": 1}], ids=repr)
@pytest.mark.parametrize("dialect", list(Dialect))
def test_a_type_that_is_a_list_or_an_object_is_refused(kind: Any, dialect: Dialect) -> None:
    """`{"type": []}` used to raise TypeError (unhashable, looked up in a set): a traceback in the
    log and a "server error" answer, from any client, for a frame that is simply not a message."""
    data = {"type": kind, "author": "Jane-GIS"}
    expected = f"type: unknown message type {kind!r}"
    with pytest.raises(Uncompliant) as refused:
        parse_object(data, Limits(), dialect)
    assert refused.value.reason == expected
    with pytest.raises(Uncompliant) as refused:
        parse_frame(orjson.dumps(data).decode(), Limits(), dialect)
    assert refused.value.reason == expected
