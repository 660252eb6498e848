"""Properties of the checks made on raw bytes, and of the streaming ones, however the bytes are split.

- GeoJSON screening (`protocol/geojson.py`): `PositionCount` fed a frame in arbitrary pieces counts
  what it counts in one piece, and on a layer's text it counts the layer's positions (exactly when
  no numeric array or "[digit" sits outside the coordinates, never fewer otherwise); the cheap
  checks (`count_vertices`, `check_vertices`, `check_raw_vertices`, `check_feature`) take any JSON
  and answer with a count or a refusal, `check_feature` the very refusal pydantic gives.
- UTF-8 by pieces (`protocol/utf8.py`, and `work/handoff.py` which feeds it): any bytes in any
  pieces get the verdict of a whole-buffer decode, the same invalid byte named.
"""

from __future__ import annotations

from functools import partial
from itertools import pairwise
from typing import Any
from unittest import mock

import orjson
import pytest
from geojson_pydantic import Feature
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gischat.protocol import geojson
from gischat.protocol.refusals import InvalidText, first_problem
from gischat.protocol.utf8 import Utf8Check, decode_text
from gischat.work import handoff

from properties_profile import examples
from strategies import (
    COLLECTIONS,
    GEOMETRIES,
    JSON,
    PLAIN_TEXT,
    collections,
    features,
    json_values,
    reason_of,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` in consecutive pieces, cut at `cuts` (any integers: taken modulo the length)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[start:end] for start, end in pairwise(bounds)]


CUTS = st.lists(st.integers(0, 1 << 16), max_size=12)
# Bytes that look like layers: brackets, numbers, white space, and anything else.
LAYERISH = st.lists(
    st.sampled_from([b"[", b"]", b"[1", b"-", b"0", b"7.5", b" ", b"\n", b",", b'"', b"e", b"x"])
    | st.binary(max_size=4),
    max_size=60,
).map(b"".join)


# --------------------------------------------------------------------------- GeoJSON screening


def positions_in(data: bytes, pieces: list[bytes] | None = None) -> int:
    count = geojson.PositionCount(1 << 62)
    for piece in pieces if pieces is not None else [data]:
        count.feed(piece)
    return count.positions


@examples(500)
@given(data=LAYERISH | st.binary(max_size=200), cuts=CUTS)
def test_position_count_is_the_same_however_the_bytes_are_split(data: bytes, cuts: list[int]) -> None:
    assert positions_in(data, split(data, cuts)) == positions_in(data)


@examples(300)
@given(collection=COLLECTIONS, cuts=CUTS, pretty=st.booleans())
def test_position_count_of_a_layer_is_its_vertex_count(
    collection: dict[str, Any], cuts: list[int], pretty: bool
) -> None:
    """Properties without arrays or "[digit": the raw count is exact, in any layout, in any pieces."""
    text = orjson.dumps(collection, option=orjson.OPT_INDENT_2 if pretty else 0)
    exact = geojson.count_vertices(collection)
    assert positions_in(text) == exact
    assert positions_in(text, split(text, cuts)) == exact


ANY_PROPERTIES = collections(properties=json_values(2))


@examples(200)
@given(collection=ANY_PROPERTIES)
def test_position_count_never_misses_a_position(collection: dict[str, Any]) -> None:
    """Any properties: a numeric array there counts as a position too (an upper bound, never below)."""
    text = orjson.dumps(collection)
    assert positions_in(text) >= geojson.count_vertices(collection)


@examples(300)
@given(data=LAYERISH, maximum=st.integers(0, 12), cuts=CUTS)
def test_raw_vertex_checks_refuse_what_the_count_exceeds(data: bytes, maximum: int, cuts: list[int]) -> None:
    """The whole-frame check (bytes or text) and the piece-by-piece one agree with the count."""
    over = positions_in(data) > maximum
    replaced = data.decode(errors="replace")
    frames: list[str | bytes] = [data, replaced.encode(), replaced]
    for frame in frames:
        refused = reason_of(partial(geojson.check_raw_vertices, frame, maximum))
        raw = frame.encode() if isinstance(frame, str) else frame
        if positions_in(raw) > maximum:
            assert refused is not None
            assert refused.startswith("geojson: too many vertices (")
        else:
            assert refused is None
    count = geojson.PositionCount(maximum)

    def inspected() -> None:
        for piece in split(data, cuts):
            count.inspect(piece)

    refused = reason_of(inspected)
    if over:
        assert refused is not None
        assert refused.startswith("geojson: too many vertices (at least ")
    else:
        assert refused is None


@examples(300)
@given(value=JSON | COLLECTIONS | st.builds(lambda f: {"features": f}, st.lists(JSON | features())))
def test_vertex_counts_take_any_json(value: Any) -> None:
    count = geojson.count_vertices(value) if isinstance(value, dict) else 0
    assert count >= 0
    refused = reason_of(lambda: geojson.check_vertices(value if isinstance(value, dict) else {}, 3))
    assert refused == (f"geojson: too many vertices ({count}, max 3)" if count > 3 else None)


def broken(value: Any) -> st.SearchStrategy[Any]:
    """`value` with one member somewhere inside replaced by any JSON value."""
    if isinstance(value, dict) and value:
        return st.sampled_from(sorted(value)).flatmap(
            lambda key: st.one_of(JSON, broken(value[key])).map(lambda new: {**value, key: new})
        )
    if isinstance(value, list) and value:
        return st.integers(0, len(value) - 1).flatmap(
            lambda at: st.one_of(JSON, broken(value[at])).map(
                lambda new: [*value[:at], new, *value[at + 1 :]]
            )
        )
    return JSON


FEATURES = features(properties=st.none() | st.dictionaries(PLAIN_TEXT, JSON, max_size=2))
BROKEN_FEATURES = FEATURES.flatmap(broken) | st.builds(
    lambda geometry: {"type": "Feature", "geometry": geometry, "properties": None},
    GEOMETRIES.flatmap(broken),
)


@pytest.mark.filterwarnings("ignore:GeometryCollection should not be used:UserWarning")
@examples(400)
@given(feature=FEATURES | BROKEN_FEATURES | JSON, index=st.integers(0, 999))
def test_a_screened_feature_gets_the_refusal_pydantic_gives(feature: Any, index: int) -> None:
    """The screen (`_cut_at_first_refusal`) only makes the refusal cheaper, never another one."""
    try:
        Feature.model_validate(feature)
    except ValidationError as exc:
        problem = first_problem(exc)
        where = f"features.{index}" if problem.startswith("message:") else f"features.{index}.{problem}"
        expected: str | None = f"geojson: not a valid FeatureCollection ({where.removesuffix('.')})"
    else:
        expected = None
    assert reason_of(lambda: geojson.check_feature(index, feature)) == expected


# --------------------------------------------------------------------------- UTF-8 by pieces


def utf8_verdict(data: bytes) -> int | None:
    """Where a whole-buffer decode fails (the first byte that cannot be UTF-8), None if it does not."""
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return exc.start
    return None


def invalid_at(reason: str | None) -> int | None:
    """The byte a refusal names (None: no refusal)."""
    if reason is None:
        return None
    prefix = "invalid UTF-8 in a text message at byte "
    assert reason.startswith(prefix)
    return int(reason.removeprefix(prefix))


def fed(pieces: list[bytes]) -> None:
    """`pieces` fed to one `Utf8Check`, the last one as final."""
    check = Utf8Check()
    for number, piece in enumerate(pieces, 1):
        check.feed(piece, final=number == len(pieces))
    if not pieces:
        check.feed(b"", final=True)


# Mostly valid UTF-8 with a little damage: cut characters, stray continuation bytes, overlongs,
# surrogates and code points past U+10FFFF, where the pieces' boundaries matter.
UTF8ISH = st.lists(
    st.text(max_size=8).map(str.encode)
    | st.sampled_from(
        [b"\x80", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff", b"\xf0\x9f"]
    ),
    max_size=12,
).map(b"".join)


@examples(500)
@given(data=UTF8ISH | st.binary(max_size=64), cuts=CUTS)
def test_utf8_checked_by_pieces_is_a_whole_buffer_decode(data: bytes, cuts: list[int]) -> None:
    expected = utf8_verdict(data)
    assert invalid_at(reason_of(lambda: fed(split(data, cuts)), InvalidText)) == expected
    decoded: list[str] = []
    assert invalid_at(reason_of(lambda: decoded.append(decode_text(data)), InvalidText)) == expected
    if expected is None:
        assert decoded == [data.decode()]


@examples(300)
@given(data=UTF8ISH | st.binary(max_size=64), piece=st.integers(1, 9))
def test_handed_over_bytes_are_checked_as_they_are_written(data: bytes, piece: int) -> None:
    """`handoff` writes an undecoded message a piece at a time, checking its UTF-8 on the way:
    the bytes written are the message's, and it stops at the byte a whole decode names."""
    expected = utf8_verdict(data)
    written: list[bytes] = []
    with mock.patch.object(handoff, "PIECE", piece):
        refused = reason_of(lambda: written.extend(handoff._pieces(data)), InvalidText)
    assert invalid_at(refused) == expected
    if refused is not None:
        assert data.startswith(b"".join(written))  # the file is removed with what it holds
        return
    assert b"".join(written) == data
    text = data.decode()
    with mock.patch.object(handoff, "PIECE", piece):
        assert b"".join(handoff._pieces(text)) == data


@pytest.mark.parametrize(
    ("pieces", "at"),
    [
        ([b"ab\xe2\x82", b"\xac!"], None),  # a euro sign cut in two
        ([b"ab\xe2\x82", b"A"], 2),  # a character left unfinished by the next piece
        ([b"ab\xe2", b"\x82"], 2),  # ... or by the end of the message
        ([b"\xed", b"\xa0\x80"], 0),  # a surrogate, across pieces
    ],
)
def test_utf8_across_pieces_examples(pieces: list[bytes], at: int | None) -> None:
    assert invalid_at(reason_of(lambda: fed(pieces), InvalidText)) == at
