"""The wire models of the 2.x dialect: every message a client may send or receive, and their rules.

The models mirror the wire exactly. Clients in the field (QTribu builds a frozen dataclass
with `Cls(**message)`) break on an extra or a missing key, so each model's fields are the
message's keys, in order, and nothing else is ever serialised. Limits that depend on the
instance (author length, message length, feature count) come in through the validation
context, so one set of models serves apps built with different settings.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from geojson_pydantic import FeatureCollection
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from gischat.protocol.refusals import Uncompliant, first_problem

# Bounds on the free-form fields: generous for real use (a WKT2 string of a compound CRS
# runs to a few kB), small enough that nobody stuffs a payload into them.
MAX_AVATAR_LENGTH = 512
MAX_LAYER_NAME_LENGTH = 1024
MAX_CRS_WKT_LENGTH = 65_536
MAX_CRS_AUTHID_LENGTH = 128

NICKNAME_PATTERN = re.compile(r"[\w-]+")

SERVER_ONLY_TYPES = ("nb_users", "exiter", "uncompliant")


@dataclass(frozen=True, slots=True)
class Limits:
    """The instance's message rules, handed to validators as the pydantic context (fields named
    like the settings they come from)."""

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


def nickname_key(nickname: str) -> str:
    """Registry key: "Alice", "alice" and the fullwidth form of "Alice" are one nickname."""
    return unicodedata.normalize("NFKC", nickname).casefold()


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
            raise Uncompliant(f"geojson: not a valid FeatureCollection ({first_problem(exc)})") from None
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
