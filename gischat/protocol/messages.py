"""The wire protocol: every message a client may send or receive, and how frames become them.

The models mirror the wire exactly. Clients in the field (QTribu builds a frozen dataclass
with `Cls(**message)`) break on an extra or a missing key, so each model's fields are the
message's keys, in order, and nothing else is ever serialised. Limits that depend on the
instance (author length, message length, feature count) come in through the validation
context, so one set of models serves apps built with different settings.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Annotated, Any, Literal, Self

import orjson
from geojson_pydantic import Feature, FeatureCollection
from geojson_pydantic.types import Position
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from gischat.settings import Settings

# Bounds on the free-form fields: generous for real use (a WKT2 string of a compound CRS
# runs to a few kB), small enough that nobody stuffs a payload into them.
MAX_AVATAR_LENGTH = 512
MAX_LAYER_NAME_LENGTH = 1024
MAX_CRS_WKT_LENGTH = 65_536
MAX_CRS_AUTHID_LENGTH = 128

NICKNAME_PATTERN = re.compile(r"[\w-]+")

SERVER_ONLY_TYPES = ("nb_users", "exiter", "uncompliant")


MAX_REASON_LENGTH = 200


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


@dataclass(frozen=True, slots=True)
class Limits:
    """The instance's message rules, handed to validators as the pydantic context."""

    min_author_length: int = 3
    max_author_length: int = 32
    max_message_length: int = 255
    max_geojson_features: int = 500
    max_geojson_vertices: int = 1_000_000
    max_style_length: int = 2 * 1024 * 1024
    # The 3.x dialect's Processing attachments: scripts run code on the receiver's machine.
    allow_scripts: bool = False
    max_script_length: int = 1024 * 1024
    max_model_length: int = 1024 * 1024
    max_image_length: int = 16 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            max_style_length=settings.max_style_length,
            allow_scripts=settings.allow_scripts,
            max_script_length=settings.max_script_length,
            max_model_length=settings.max_model_length,
            max_image_length=settings.max_image_length,
            min_author_length=settings.min_author_length,
            max_author_length=settings.max_author_length,
            max_message_length=settings.max_message_length,
            max_geojson_features=settings.max_geojson_features,
            max_geojson_vertices=settings.max_geojson_vertices,
        )


def check_nickname(value: str, limits: Limits, field: str) -> str:
    """Nicknames are shown in every client's UI: a short run of letters, digits, `_`, `-`."""
    if not limits.min_author_length <= len(value) <= limits.max_author_length:
        raise Uncompliant(
            f"{field}: must be {limits.min_author_length} to {limits.max_author_length} characters long "
            f"(got {len(value)})"
        )
    if not NICKNAME_PATTERN.fullmatch(value):
        raise Uncompliant(f"{field}: only letters, digits, '_' and '-' are allowed")
    return value


def check_length(value: str, maximum: int, field: str) -> str:
    if len(value) > maximum:
        raise Uncompliant(f"{field}: too long ({len(value)} characters, max {maximum})")
    return value


def check_file_name(value: str, field: str) -> str:
    """Names a client may turn into a file name (QChat saves scripts, models and layers under
    them): no path separator, no `..` segment, no control character."""
    if "/" in value or "\\" in value:
        raise Uncompliant(f"{field}: must not contain '/' or '\\'")
    if value.strip() in (".", ".."):
        raise Uncompliant(f"{field}: must not be '.' or '..'")
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise Uncompliant(f"{field}: must not contain control characters")
    return value


def limits_of(info: ValidationInfo) -> Limits:
    context = info.context
    return context if isinstance(context, Limits) else Limits()


Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class WireMessage(BaseModel):
    """Base of all messages: unknown incoming keys are ignored, never echoed."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_wire(self) -> str:
        """The message as the 2.x dialect writes it (`{"type": ..., keys...}`)."""
        return self.model_dump_json()

    def body(self) -> tuple[str, str | None]:
        """The keys after `type`, as JSON text without braces, and the `style` tail of a layer.

        Both dialects write the same keys in the same order after their own envelope, so a
        broadcast is serialised once here and each dialect's frame is a concatenation.
        """
        wire = self.to_wire()
        return wire[wire.index('",', 9) + 2 : -1], None  # after '{"type":"<type>",'


Avatar = Annotated[str, Field(max_length=MAX_AVATAR_LENGTH)] | None


class AuthoredMessage(WireMessage):
    """A message shown under an author's name. Subclasses declare the fields in wire order.

    `in_reply_to_id` is what QChat 1.7 sends on a reply: accepted on input, never serialised
    with the message's keys (QChat 1.0-1.6 lose a frame that carries it); the chat service
    checks it and, with REPLY_THREADS on, appends it to the 3.x rendering.
    """

    in_reply_to_id: SkipJsonSchema[Any] = Field(default=None, exclude=True)

    @field_validator("author", check_fields=False)
    @classmethod
    def _check_author(cls, value: str, info: ValidationInfo) -> str:
        return check_nickname(value, limits_of(info), "author")


class TextMessage(AuthoredMessage):
    type: Literal["text"] = "text"
    author: str
    avatar: Avatar = None
    text: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"type": "text", "author": "Jane-GIS", "avatar": "mGeoPackage.svg", "text": "Hi all!"}
            ]
        }
    )

    @field_validator("text")
    @classmethod
    def _check_text(cls, value: str, info: ValidationInfo) -> str:
        return check_length(value, limits_of(info).max_message_length, "text")


class ImageMessage(AuthoredMessage):
    type: Literal["image"] = "image"
    author: str
    avatar: Avatar = None
    image_data: str

    @field_validator("image_data")
    @classmethod
    def _check_image_data(cls, value: str, info: ValidationInfo) -> str:
        return check_length(value, limits_of(info).max_image_length, "image_data")


class NewcomerMessage(WireMessage):
    type: Literal["newcomer"] = "newcomer"
    newcomer: str

    @field_validator("newcomer")
    @classmethod
    def _check_newcomer(cls, value: str, info: ValidationInfo) -> str:
        return check_nickname(value, limits_of(info), "newcomer")


class LikeMessage(WireMessage):
    type: Literal["like"] = "like"
    liker_author: str
    liked_author: str
    message: str

    @field_validator("liker_author", "liked_author")
    @classmethod
    def _check_authors(cls, value: str, info: ValidationInfo) -> str:
        return check_nickname(value, limits_of(info), str(info.field_name))

    @field_validator("message")
    @classmethod
    def _check_message(cls, value: str, info: ValidationInfo) -> str:
        return check_length(value, limits_of(info).max_message_length, "message")


class CrsMessage(AuthoredMessage):
    type: Literal["crs"] = "crs"
    author: str
    avatar: Avatar = None
    crs_wkt: Annotated[str, Field(max_length=MAX_CRS_WKT_LENGTH)]
    crs_authid: Annotated[str, Field(max_length=MAX_CRS_AUTHID_LENGTH)]


class GeojsonMessage(AuthoredMessage):
    """A vector layer; `geojson` is forwarded with every member the client sent.

    Validation is split: the collection itself is checked here, its features one by one by
    `check_feature`, so the caller can let the event loop breathe between features of a
    large layer instead of validating megabytes in one go.
    """

    type: Literal["geojson"] = "geojson"
    author: str
    avatar: Avatar = None
    layer_name: Annotated[str, Field(max_length=MAX_LAYER_NAME_LENGTH)]
    crs_wkt: Annotated[str, Field(max_length=MAX_CRS_WKT_LENGTH)]
    crs_authid: Annotated[str, Field(max_length=MAX_CRS_AUTHID_LENGTH)]
    geojson: dict[str, Any]
    # The layer's QGIS style (a QML document), null when the sender shared none. QTribu 1.2
    # and QChat send it and require it on every layer they receive.
    style: str | None = None

    @field_validator("style")
    @classmethod
    def _check_style(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_length(value, limits_of(info).max_style_length, "style")

    @field_validator("layer_name")
    @classmethod
    def _check_layer_name(cls, value: str) -> str:
        return check_file_name(value, "layer_name")

    @field_validator("geojson")
    @classmethod
    def _check_geojson(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        features = value.get("features")
        maximum = limits_of(info).max_geojson_features
        # Counted before anything else so an oversized layer costs almost nothing.
        if isinstance(features, list) and len(features) > maximum:
            raise Uncompliant(f"Too many geojson features : {len(features)} vs max {maximum} allowed")
        try:
            FeatureCollection.model_validate({**value, "features": []})
        except ValidationError as exc:
            raise Uncompliant(f"geojson: not a valid FeatureCollection ({_first_problem(exc)})") from None
        if not isinstance(features, list):
            raise Uncompliant("geojson: not a valid FeatureCollection (features: must be a list)")
        return value

    @property
    def features(self) -> list[Any]:
        features = self.geojson["features"]
        assert isinstance(features, list)
        return features

    def to_wire(self) -> str:
        body, style = self.body()
        return f'{{"type":"geojson",{body}{style}}}'

    def body(self) -> tuple[str, str | None]:
        """orjson writes a large layer many times faster than pydantic's serialiser of `Any`.

        `style` comes apart, as the tail: the 2.x dialect leaves it out when GEOJSON_STYLE is
        off (QTribu 1.1.x refuses the key), the 3.x dialect always sends it.
        """
        fields = dict(self)
        del fields["type"], fields["in_reply_to_id"]
        style = fields.pop("style")
        try:
            body = orjson.dumps(fields).decode()
        except orjson.JSONEncodeError:  # orjson refuses nesting deeper than 255 levels
            raise Uncompliant("geojson: nested too deeply") from None
        return body[1:-1], ',"style":' + orjson.dumps(style).decode()


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
        problem = _first_problem(exc)
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


def check_vertices(geojson: dict[str, Any], maximum: int) -> None:
    """Refuse a layer with more than `maximum` positions, before any expensive validation."""
    count = count_vertices(geojson)
    if count > maximum:
        raise Uncompliant(f"geojson: too many vertices ({count}, max {maximum})")


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


class BboxMessage(AuthoredMessage):
    type: Literal["bbox"] = "bbox"
    author: str
    avatar: Avatar = None
    crs_wkt: Annotated[str, Field(max_length=MAX_CRS_WKT_LENGTH)]
    crs_authid: Annotated[str, Field(max_length=MAX_CRS_AUTHID_LENGTH)]
    xmin: Number
    xmax: Number
    ymin: Number
    ymax: Number


class NbUsersMessage(WireMessage):
    type: Literal["nb_users"] = "nb_users"
    nb_users: int


class ExiterMessage(WireMessage):
    type: Literal["exiter"] = "exiter"
    exiter: str


class UncompliantMessage(WireMessage):
    type: Literal["uncompliant"] = "uncompliant"
    reason: str


ClientMessage = (
    TextMessage | ImageMessage | NewcomerMessage | LikeMessage | GeojsonMessage | CrsMessage | BboxMessage
)

CLIENT_MODELS: dict[str, type[WireMessage]] = {
    "text": TextMessage,
    "image": ImageMessage,
    "newcomer": NewcomerMessage,
    "like": LikeMessage,
    "geojson": GeojsonMessage,
    "crs": CrsMessage,
    "bbox": BboxMessage,
}


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
    if kind in ignored:
        raise Ignored(kind)
    if kind in SERVER_ONLY_TYPES:
        raise Uncompliant(f"type: '{kind}' messages are sent by the server only")
    if not isinstance(kind, str) or kind not in types:
        raise Uncompliant(f"type: unknown message type {_short(kind)}")
    model = types[kind]
    try:
        message = model.model_validate(data, context=limits)
    except ValidationError as exc:
        raise Uncompliant(_first_problem(exc)) from None
    return message


def _first_problem(exc: ValidationError) -> str:
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


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def uncompliant(reason: str) -> str:
    return UncompliantMessage(reason=reason).to_wire()


def nb_users(count: int) -> str:
    return NbUsersMessage(nb_users=count).to_wire()


def exiter(nickname: str) -> str:
    return ExiterMessage(exiter=nickname).to_wire()
