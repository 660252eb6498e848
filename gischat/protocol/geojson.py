"""Screening a GeoJSON layer before (and instead of) the expensive validation.

A layer's positions are counted from list lengths alone, and a feature pydantic would refuse is cut
just after its first bad coordinate before validation, so that a million junk positions cost one
error's worth of work instead of a minute of a worker's time.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

from geojson_pydantic import Feature
from geojson_pydantic.types import Position
from pydantic import TypeAdapter, ValidationError

from gischat.protocol.refusals import Uncompliant, first_problem


def check_feature(index: int, feature: Any) -> None:
    """Validate one feature of a layer, naming it in the reason.

    pydantic reports every bad element of a list, and building an error costs ~60 times
    validating a good position: a million junk positions would keep a worker busy for a
    minute. So the feature is screened first, at C speed, and when something pydantic would
    refuse shows up, a copy cut just after it is validated instead: same first error, one
    error's cost.
    """
    cut = _cut_at_first_refusal(feature)
    try:
        if cut is not None:
            Feature.model_validate(cut)
        Feature.model_validate(feature)  # also when the screen was stricter than pydantic
    except ValidationError as exc:
        problem = first_problem(exc)
        where = f"features.{index}" if problem.startswith("message:") else f"features.{index}.{problem}"
        raise Uncompliant(f"geojson: not a valid FeatureCollection ({where.removesuffix('.')})") from None


# For each geometry type, the shortest list geojson-pydantic accepts at each level of
# `coordinates`, outermost first; the items of the innermost level are positions.
COORDINATE_LEVELS: dict[str, tuple[int, ...]] = {
    "Point": (),
    "MultiPoint": (0,),
    "LineString": (2,),
    "MultiLineString": (0, 2),
    "Polygon": (0, 4),
    "MultiPolygon": (0, 0, 4),
}
GEOMETRY_TYPES = frozenset({*COORDINATE_LEVELS, "GeometryCollection"})
_NUMBER_TYPES = frozenset({float, int})
_POSITION_LENGTHS = frozenset({2, 3})
_POSITION: TypeAdapter[Any] = TypeAdapter(Position)
# A JSON number's first character, all made one; and the white space JSON allows between tokens.
_NUMBER_START = bytes.maketrans(b"-+.0123456789", b"0" * 13)
_WHITE_SPACE = b" \t\n\r"
_ZERO = ord("0")
_BRACKET = ord("[")


def check_vertices(geojson: dict[str, Any], maximum: int) -> None:
    """Refuse a layer with more than `maximum` positions, before any expensive validation."""
    count = count_vertices(geojson)
    if count > maximum:
        raise Uncompliant(f"geojson: too many vertices ({count}, max {maximum})")


def brackets(text: str | bytes) -> int:
    """How many '[' a frame holds, whether it is text or its UTF-8 bytes."""
    return text.count(b"[") if isinstance(text, bytes) else text.count("[")


def check_raw_vertices(text: str | bytes, maximum: int) -> None:
    """Refuse a layer frame whose text holds more than `maximum` positions, before any parse.

    Every position opens one bracket, so a text with at most `maximum` brackets passes at the
    cost of one scan (about 1 ms per MB). Beyond that, the positions are counted (`PositionCount`)
    at about 3 ms per MB, against ten times that in time, and far more in memory, for a parse.
    """
    if brackets(text) <= maximum:
        return
    count = PositionCount(maximum)
    count.feed(text if isinstance(text, bytes) else text.encode())
    if count.positions > maximum:
        raise Uncompliant(f"geojson: too many vertices ({count.positions}, max {maximum})")


class PositionCount:
    """The positions in a layer frame's UTF-8 bytes, fed whole or in consecutive pieces.

    A position is a bracket followed by a number: each piece's bytes with every number's first
    character made "0" and white space dropped (one `translate`), then one count of "[0", plus
    one when a piece ends in "[" and the next starts with a number. It never misses a position,
    and it is the same whether the text comes in one piece or many. It is exact unless something
    outside the coordinates opens a bracket before a number, each adding one: a numeric array (a
    `bbox` member, a property), a string holding "[" and a digit (a property, a WKT2 `BBOX[...]`
    in `crs_wkt`, a style): a few per feature in real layers, against a budget of a million (a
    million numeric arrays hidden in properties are refused like positions, which their parse
    would cost as much as; the property tests check both sides). Fed piece by piece while a large
    frame is written out (`work.handoff`), it refuses a layer far over the budget as soon as the
    budget is passed, without the rest of the frame being counted.
    """

    __slots__ = ("_bracket_open", "maximum", "positions")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.positions = 0
        self._bracket_open = False  # the last piece ended in "[" (white space aside)

    def feed(self, piece: bytes) -> None:
        squeezed = piece.translate(_NUMBER_START, _WHITE_SPACE)
        if not squeezed:
            return
        found = squeezed.count(b"[0")
        if self._bracket_open and squeezed[0] == _ZERO:
            found += 1
        self._bracket_open = squeezed[-1] == _BRACKET
        self.positions += found

    def inspect(self, piece: bytes) -> None:
        """Feed a piece, and refuse the layer once what was fed holds more than the budget."""
        self.feed(piece)
        if self.positions > self.maximum:
            raise Uncompliant(f"geojson: too many vertices (at least {self.positions}, max {self.maximum})")


def count_vertices(geojson: dict[str, Any]) -> int:
    """The positions of a layer, from list lengths alone: the walk visits lists of positions,
    never the positions themselves, so a 2-million-point MultiPoint costs one `len`.

    Whatever is malformed counts for nothing here; validation refuses it later, and
    `check_feature` makes sure that refusal is cheap.
    """
    features = geojson.get("features")
    if not isinstance(features, list):
        return 0
    return sum(
        _geometry_vertices(feature.get("geometry")) for feature in features if isinstance(feature, dict)
    )


def _geometry_vertices(geometry: Any) -> int:
    if not isinstance(geometry, dict):
        return 0
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        members = geometry.get("geometries")
        return sum(map(_geometry_vertices, members)) if isinstance(members, list) else 0
    if not isinstance(kind, str) or kind not in COORDINATE_LEVELS:
        return 0
    return _positions(geometry.get("coordinates"), len(COORDINATE_LEVELS[kind]))


def _positions(coordinates: Any, depth: int) -> int:
    """Positions in `coordinates`, `depth` levels of lists above them."""
    if depth == 0:
        return 1
    if not isinstance(coordinates, list):
        return 0
    if depth == 1:
        return len(coordinates)
    return sum(_positions(item, depth - 1) for item in coordinates)


def _cut_at_first_refusal(feature: Any) -> Any:
    """A copy of `feature` ending just after the first coordinate pydantic would refuse, or None.

    Elements before the cut are valid, so validating the copy yields the same first error
    as validating the whole feature.
    """
    if not isinstance(feature, dict):
        return None
    geometry = _cut_geometry(feature.get("geometry"))
    return None if geometry is None else {**feature, "geometry": geometry}


def _cut_geometry(geometry: Any) -> Any:
    if not isinstance(geometry, dict):
        return None
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        members = geometry.get("geometries")
        if not isinstance(members, list):
            return None
        for index, member in enumerate(members):
            member_kind = member.get("type") if isinstance(member, dict) else None
            if not isinstance(member_kind, str) or member_kind not in GEOMETRY_TYPES:
                return {**geometry, "geometries": members[: index + 1]}
            cut = _cut_geometry(member)
            if cut is not None:
                return {**geometry, "geometries": [*members[:index], cut]}
        return None
    levels = COORDINATE_LEVELS.get(kind) if isinstance(kind, str) else None
    if not levels:  # an unknown type or a Point: pydantic reports a handful of errors at most
        return None
    cut = _cut_coordinates(geometry.get("coordinates"), levels[1:])
    return None if cut is None else {**geometry, "coordinates": cut}


def _cut_coordinates(coordinates: Any, inner: tuple[int, ...]) -> Any:
    """Cut a list whose items are lists (of at least `inner[0]` items) down to its first refusal.

    With `inner` empty its items are positions. Anything but a list costs pydantic a single
    error, so it is left alone.
    """
    if not isinstance(coordinates, list):
        return None
    if not inner:
        if _plain_positions(coordinates):
            return None
        for index, item in enumerate(coordinates):
            if not _plain_positions([item]) and not _position_accepted(item):
                return coordinates[: index + 1]
        return None
    shortest = inner[0]
    last_level = len(inner) == 1
    if (
        last_level
        and _plain_lists(coordinates, shortest)
        and _plain_positions(list(chain.from_iterable(coordinates)))
    ):
        return None
    for index, item in enumerate(coordinates):
        if not isinstance(item, list) or len(item) < shortest:
            return coordinates[: index + 1]
        cut = _cut_coordinates(item, inner[1:])
        if cut is not None:
            return [*coordinates[:index], cut]
    return None


def _plain_lists(items: list[Any], shortest: int) -> bool:
    """Every item is a list of at least `shortest` items (map and set: no Python loop)."""
    return set(map(type, items)) <= {list} and (not items or min(map(len, items)) >= shortest)


def _plain_positions(items: list[Any]) -> bool:
    """Every item is a list of 2 or 3 ints or floats, checked without a Python-level loop.

    JSON gives lists, dicts, strings and scalars: an item of length 2 or 3 whose members are
    all numbers can only be a list of numbers.
    """
    try:
        lengths = set(map(len, items))
    except TypeError:  # a number or null where a position belongs
        return False
    return lengths <= _POSITION_LENGTHS and set(map(type, chain.from_iterable(items))) <= _NUMBER_TYPES


def _position_accepted(item: Any) -> bool:
    """pydantic is lax: it takes ["1", "2"], [true, false] and {"longitude": 1, "latitude": 2}."""
    try:
        _POSITION.validate_python(item)
    except ValidationError:
        return False
    return True
