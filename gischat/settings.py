"""Instance settings, read from the environment and an optional `.env` file.

Settings are only read when someone calls `load_settings()` (the app factory and the
`gischat` command do), never at import time: tests build several apps with different
settings in one process, and a bad variable must surface as one readable line at start-up
rather than as a traceback from deep inside an import.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_ROOMS = ("QGIS", "Field and mobile", "GIS tribe", "Living room", "Kitchen", "Garden")
MAX_ROOM_NAME_LENGTH = 100
DEFAULT_TILE_URL = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
DEFAULT_TILE_ATTRIBUTION = (
    '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors'
)


class SettingsError(Exception):
    """A setting is invalid; the message is one line that names the variable."""


class Settings(BaseSettings):
    """Everything an operator can tune, with the defaults of a public instance."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    # What the instance offers.
    rooms: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_ROOMS))
    rules: str = "Be kind and nice to this wonderful world"
    main_lang: str = Field(default="en", validation_alias=AliasChoices("MAIN_LANG", "MAIN_LANGUAGE"))
    environment: str = "production"

    # Message rules, published by GET /rules and enforced on every message.
    min_author_length: int = Field(default=3, ge=1)
    max_author_length: int = Field(default=32, ge=1, le=256)
    max_message_length: int = Field(default=255, ge=1)
    max_image_size: int = Field(default=800, ge=16, le=10_000)
    max_geojson_features: int = Field(default=500, ge=1)

    # Protection against hostile or broken clients.
    max_frame_size: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    send_queue_size: int = Field(default=256, ge=1)
    send_queue_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    image_workers: int = Field(default=2, ge=1, le=64)

    # Liveness: how often nb_users goes out during join storms, websocket keepalive.
    nb_users_interval: float = Field(default=0.2, ge=0, le=60)
    ws_ping_interval: float = Field(default=20.0, ge=0)
    ws_ping_timeout: float = Field(default=20.0, gt=0)
    ws_per_message_deflate: bool = False
    # A peer that acknowledges nothing we send for this long (dead, or a zero TCP window) is
    # aborted by the kernel; this is what finally frees a slow client after it was dropped.
    tcp_user_timeout: float = Field(default=60.0, ge=0, le=3600)

    # The web client's basemap: an XYZ tile URL template (empty: no basemap) and its
    # attribution, which Leaflet shows as HTML (the operator's text, never a user's).
    map_tile_url: str = DEFAULT_TILE_URL
    map_tile_attribution: str = DEFAULT_TILE_ATTRIBUTION

    # Process.
    broker_url: str = "memory://"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    forwarded_allow_ips: str = "127.0.0.1"
    log_config: str | None = None

    @field_validator("rooms", mode="before")
    @classmethod
    def _split_rooms(cls, value: Any) -> Any:
        """`ROOMS` is a comma-separated list; names keep their inner spaces."""
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("rooms")
    @classmethod
    def _check_rooms(cls, rooms: list[str]) -> list[str]:
        if not rooms:
            raise ValueError("at least one room name is required")
        seen: set[str] = set()
        for name in rooms:
            if len(name) > MAX_ROOM_NAME_LENGTH:
                raise ValueError(f"room name longer than {MAX_ROOM_NAME_LENGTH} characters: {name[:20]!r}…")
            if "/" in name:
                raise ValueError(f"room name {name!r} contains '/'")
            if name.casefold() in seen:
                raise ValueError(f"room {name!r} is listed twice")
            seen.add(name.casefold())
        return rooms

    @field_validator("map_tile_url")
    @classmethod
    def _check_tile_url(cls, url: str) -> str:
        url = url.strip()
        if not url:
            return url
        if not url.startswith(("https://", "http://")):
            raise ValueError(
                "must be an http(s) URL template such as https://tile.example.org/{z}/{x}/{y}.png"
            )
        missing = [part for part in ("{z}", "{x}", "{y}") if part not in url]
        if missing:
            raise ValueError(f"must contain {{z}}, {{x}} and {{y}} (missing {', '.join(missing)})")
        return url

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, url: str) -> str:
        if not url.startswith("memory://"):
            raise ValueError(f"unsupported broker {url.split(':', 1)[0]!r}; this release supports memory://")
        return url

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.min_author_length > self.max_author_length:
            raise ValueError(
                f"MIN_AUTHOR_LENGTH ({self.min_author_length}) is above MAX_AUTHOR_LENGTH "
                f"({self.max_author_length})"
            )
        if self.workers > 1 and self.broker_url.startswith("memory://"):
            raise ValueError(
                "WORKERS above 1 needs a shared broker: with BROKER_URL=memory:// each worker "
                "would hold its own copy of every room"
            )
        return self


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation error into a one-line `SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_error(exc)) from None


def describe_error(exc: ValidationError) -> str:
    """Name the environment variable and the problem, in one line."""
    error = exc.errors(include_url=False)[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["loc"]:
        variable = "MAIN_LANG" if error["loc"][0] == "MAIN_LANGUAGE" else str(error["loc"][0]).upper()
        value = error.get("input")
        secret = variable.endswith("_URL")  # broker URLs may carry a password
        plain = isinstance(value, str | int | float) and not secret and error["type"] != "missing"
        shown = f" (got {value!r})" if plain else ""
        return f"invalid setting {variable}: {message}{shown}"
    return f"invalid settings: {message}"
