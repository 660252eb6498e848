"""Hypothesis strategies for the property tests: JSON values, nicknames, layers and valid frames.

Every valid frame is built from the wire tables of docs/protocol.md (one builder per type a client
may send, in either dialect), so that mutations start from something the server accepts and reach
the rules behind the first one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from gischat.protocol.refusals import InvalidText, Uncompliant


def reason_of(call: Callable[[], object], error: type[Uncompliant | InvalidText] = Uncompliant) -> str | None:
    """The reason `call()` was refused with (`error`), None when it returned."""
    try:
        call()
    except error as exc:
        return exc.reason
    return None


# JSON text as a client may send it: any character but a lone surrogate (not UTF-8 at all).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
# Scalars as orjson decodes them: 64-bit integers, finite floats.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)


def json_values(depth: int = 3) -> st.SearchStrategy[Any]:
    """Any JSON value orjson could have decoded, lists and objects nested `depth` levels at most.

    Built level by level rather than with `st.recursive`, whose leaf budget made generation
    inconsistent between runs (FlakyStrategyDefinition) when drawn several times in one example.
    """
    if depth == 0:
        return SCALARS
    inner = json_values(depth - 1)
    return SCALARS | st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3)


JSON = json_values()
# Nicknames as gischat takes them (Unicode letters and digits, `_`, `-`), and their ASCII subset.
NICKNAMES = st.from_regex(r"[\w-]{3,32}", fullmatch=True)
ASCII_NICKNAMES = st.from_regex(r"[A-Za-z0-9_-]{3,32}", fullmatch=True)
FILE_NAMES = st.text(st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="/\\"), max_size=30)
AVATARS = st.none() | st.text(max_size=20)
NUMBERS = st.floats(allow_nan=False, allow_infinity=False, width=64)
COORDINATE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False) | st.integers(-1000, 1000)
CRS_WKT = st.sampled_from(
    [
        'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984"]]',
        'PROJCRS["RGF93 v1 / Lambert-93",ID["EPSG",2154]]',
        "",
    ]
)
CRS_AUTHID = st.sampled_from(["EPSG:4326", "EPSG:2154", "OGC:CRS84", "", "USER:100000"])


# --------------------------------------------------------------------------- layers


def positions(min_size: int = 0, max_size: int = 5) -> st.SearchStrategy[list[list[float | int]]]:
    return st.lists(st.lists(COORDINATE, min_size=2, max_size=3), min_size=min_size, max_size=max_size)


@st.composite
def rings(draw: st.DrawFn) -> list[list[float | int]]:
    """A closed linear ring (four positions or more, the last one the first)."""
    ring = draw(positions(min_size=3, max_size=6))
    return [*ring, list(ring[0])]


def geometries(depth: int = 1) -> st.SearchStrategy[dict[str, Any]]:
    """Valid GeoJSON geometries of every type, GeometryCollections `depth` levels deep at most."""
    simple = st.one_of(
        st.builds(
            lambda c: {"type": "Point", "coordinates": c}, st.lists(COORDINATE, min_size=2, max_size=3)
        ),
        st.builds(lambda c: {"type": "MultiPoint", "coordinates": c}, positions()),
        st.builds(lambda c: {"type": "LineString", "coordinates": c}, positions(min_size=2)),
        st.builds(
            lambda c: {"type": "MultiLineString", "coordinates": c},
            st.lists(positions(min_size=2), max_size=3),
        ),
        st.builds(lambda c: {"type": "Polygon", "coordinates": c}, st.lists(rings(), max_size=2)),
        st.builds(
            lambda c: {"type": "MultiPolygon", "coordinates": c},
            st.lists(st.lists(rings(), max_size=2), max_size=2),
        ),
    )
    if depth == 0:
        return simple
    return simple | st.builds(
        lambda members: {"type": "GeometryCollection", "geometries": members},
        st.lists(geometries(depth - 1), max_size=3),
    )


GEOMETRIES = geometries()
# Properties as QGIS writes them; `plain` ones hold no list and no '[' in any string (then a
# layer's raw text has exactly one "[number" per position, see protocol/geojson.py).
PLAIN_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="["), max_size=12)
PLAIN_PROPERTIES = st.none() | st.dictionaries(
    PLAIN_TEXT,
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | NUMBERS | PLAIN_TEXT,
    max_size=3,
)


@st.composite
def features(draw: st.DrawFn, properties: st.SearchStrategy[Any] = PLAIN_PROPERTIES) -> dict[str, Any]:
    feature: dict[str, Any] = {
        "type": "Feature",
        "geometry": draw(st.none() | GEOMETRIES),
        "properties": draw(properties),
    }
    if draw(st.booleans()):
        feature["id"] = draw(st.integers(0, 10**6) | PLAIN_TEXT)
    return feature


def collections(properties: st.SearchStrategy[Any] = PLAIN_PROPERTIES) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda items: {"type": "FeatureCollection", "features": items},
        st.lists(features(properties), max_size=3),
    )


COLLECTIONS = collections()


# --------------------------------------------------------------------------- frames


def authored(kind: str, **keys: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.just(kind), "author": ASCII_NICKNAMES, "avatar": AVATARS, **keys}
    )


# A valid frame of every type a client may send (the channel-only ones included), by type.
FRAMES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "text": authored("text", text=st.text(max_size=60)),
    "image": authored(
        "image",
        image_data=st.sampled_from(
            [
                "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mOwbnIDAAH/AQTX7nkhAAAAAElFTkSuQmCC",
                "AAAA",
            ]
        ),
    ),
    "geojson": authored(
        "geojson",
        layer_name=FILE_NAMES.filter(lambda name: name.strip() not in (".", "..")),
        crs_wkt=CRS_WKT,
        crs_authid=CRS_AUTHID,
        geojson=COLLECTIONS,
        style=st.none() | st.text(max_size=30),
    ),
    "crs": authored("crs", crs_wkt=CRS_WKT, crs_authid=CRS_AUTHID),
    "bbox": authored(
        "bbox", crs_wkt=CRS_WKT, crs_authid=CRS_AUTHID, xmin=NUMBERS, xmax=NUMBERS, ymin=NUMBERS, ymax=NUMBERS
    ),
    "newcomer": st.fixed_dictionaries({"type": st.just("newcomer"), "newcomer": ASCII_NICKNAMES}),
    "like": st.fixed_dictionaries(
        {
            "type": st.just("like"),
            "liker_author": ASCII_NICKNAMES,
            "liked_author": ASCII_NICKNAMES,
            "message": st.text(max_size=60),
        }
    ),
    "position": authored("position", crs_wkt=CRS_WKT, crs_authid=CRS_AUTHID, x=NUMBERS, y=NUMBERS),
    "model": authored(
        "model",
        model_name=FILE_NAMES.filter(lambda name: name.strip() not in ("", ".", "..")),
        model_group=st.none() | st.text(max_size=20),
        raw_xml=st.text(max_size=60),
    ),
    "script": authored(
        "script",
        name=FILE_NAMES.filter(lambda name: name.strip() not in ("", ".", "..")),
        raw_pycode=st.text(max_size=60),
    ),
}
SERVER_TYPES = ("nb_users", "exiter", "uncompliant")
ALL_TYPES = (*FRAMES, *SERVER_TYPES)
VALID_FRAMES = st.one_of(*FRAMES.values())


@st.composite
def mutated_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame of any type with a few of its members dropped, replaced, added or retyped."""
    frame = dict(draw(VALID_FRAMES))
    for _ in range(draw(st.integers(1, 3))):
        keys = sorted(frame)
        action = draw(st.sampled_from(["drop", "replace", "add", "retype", "nickname", "reply"]))
        if action == "drop" and keys:
            del frame[draw(st.sampled_from(keys))]
        elif action == "replace" and keys:
            frame[draw(st.sampled_from(keys))] = draw(JSON)
        elif action == "add":
            frame[draw(TEXT)] = draw(JSON)
        elif action == "retype":
            frame["type"] = draw(st.sampled_from(ALL_TYPES) | JSON)
        elif action == "nickname":
            key = draw(st.sampled_from(["author", "newcomer", "liker_author", "liked_author"]))
            frame[key] = draw(TEXT)
        else:
            frame["in_reply_to_id"] = draw(JSON | st.uuids().map(str))
    return frame


@st.composite
def text_mutations(draw: st.DrawFn, text: str) -> str:
    """`text` cut, with a character flipped, or with a piece of garbage spliced in."""
    action = draw(st.sampled_from(["cut", "flip", "splice"]))
    if not text:
        return draw(TEXT)
    at = draw(st.integers(0, len(text) - 1))
    if action == "cut":
        return text[:at]
    if action == "flip":
        return text[:at] + chr(ord(text[at]) ^ (1 << draw(st.integers(0, 6)))) + text[at + 1 :]
    return text[:at] + draw(TEXT) + text[at:]
