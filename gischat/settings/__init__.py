"""Instance settings, read from the environment and an optional `.env` file.

Settings are only read when someone calls `load_settings()` (the app factory and the
`gischat` command do), never at import time: tests build several apps with different
settings in one process, and a bad variable must surface as one readable line at start-up
rather than as a traceback from deep inside an import.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gischat.settings.broker import check_broker_url
from gischat.settings.errors import SettingsError, describe_error, variable_name
from gischat.settings.matrix import MatrixFields, check_matrix

DEFAULT_ROOMS = ("QGIS", "Field and mobile", "GIS tribe", "Living room", "Kitchen", "Garden")
MAX_ROOM_NAME_LENGTH = 100
# Loopback and private ranges: where a Prometheus server sits, not the public.
PRIVATE_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
# ADMIN_TOKENS: a moderator's label (shown in the audit trail and logs) and the shortest secret.
ADMIN_LABEL_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_ADMIN_SECRET_LENGTH = 32
DEFAULT_TILE_URL = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
DEFAULT_TILE_ATTRIBUTION = (
    '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors'
)


class Settings(MatrixFields, BaseSettings):
    """Everything an operator can tune, with the defaults of a public instance."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    # What the instance offers.
    # ROOMS, or CHANNELS as upstream 3.x calls them: room X and channel X are one conversation.
    rooms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ROOMS), validation_alias=AliasChoices("ROOMS", "CHANNELS")
    )
    rules: str = "Be kind and nice to this wonderful world"
    main_lang: str = Field(default="en", validation_alias=AliasChoices("MAIN_LANG", "MAIN_LANGUAGE"))
    environment: str = "production"

    # Message rules, published by GET /rules and enforced on every message.
    min_author_length: int = Field(default=3, ge=1)
    max_author_length: int = Field(default=32, ge=1, le=256)
    max_message_length: int = Field(default=255, ge=1)
    max_image_size: int = Field(default=800, ge=16, le=10_000)
    max_geojson_features: int = Field(default=500, ge=1)
    # A layer's QML style travels with it: documents of a few hundred kB are normal.
    max_style_length: int = Field(default=2 * 1024 * 1024, ge=0)
    # Send `style` on layers to room sockets (QTribu 1.2 needs it, QTribu 1.1.x refuses it);
    # channel sockets (QChat, QField) always get it.
    geojson_style: bool = True
    # The 3.x dialect's attachments. A script is code the receiving QGIS saves among its
    # Processing scripts and may run: refused unless the operator allows them.
    allow_scripts: bool = False
    max_script_length: int = Field(
        default=2_000_000, ge=1, validation_alias=AliasChoices("MAX_SCRIPT_LENGTH", "MAX_SCRIPT_RAW_LENGTH")
    )
    max_model_length: int = Field(
        default=1_000_000, ge=1, validation_alias=AliasChoices("MAX_MODEL_LENGTH", "MAX_MODEL_RAW_LENGTH")
    )
    # Characters of an image's base64 data (before resizing), within MAX_FRAME_SIZE.
    max_image_length: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        validation_alias=AliasChoices("MAX_IMAGE_LENGTH", "MAX_IMAGE_RAW_LENGTH"),
    )
    # Send `in_reply_to_id` to channel sockets (QChat 1.7 threads replies; 1.0-1.6 lose any
    # message that carries the key, so it is off by default and only ever accepted).
    reply_threads: bool = False

    # Protection against hostile or broken clients.
    max_frame_size: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    send_queue_size: int = Field(default=256, ge=1)
    send_queue_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Image and layer processing runs in worker processes (the GIL makes threads useless for
    # validating a large layer); IMAGE_WORKERS is the name this setting had before layers moved there.
    processing_workers: int = Field(
        default=2, ge=1, le=64, validation_alias=AliasChoices("PROCESSING_WORKERS", "IMAGE_WORKERS")
    )
    # A worker process is replaced after this many jobs, handing its memory back to the system.
    processing_worker_max_tasks: int = Field(default=200, ge=1)
    # Images and layers queued or being processed at once, across all connections.
    max_processing_jobs: int = Field(default=16, ge=1)
    max_processing_bytes: int = Field(default=96 * 1024 * 1024, ge=1024)
    max_geojson_vertices: int = Field(default=1_000_000, ge=1)

    # Per-connection rate limits (token buckets): a sustained rate and a burst. A rate of 0 turns
    # that limit off.
    message_rate: float = Field(default=5.0, ge=0)
    message_burst: int = Field(default=40, ge=1)
    byte_rate: int = Field(default=1024 * 1024, ge=0)
    byte_burst: int = Field(default=32 * 1024 * 1024, ge=1024)
    images_per_minute: float = Field(default=12, ge=0)
    layers_per_minute: float = Field(default=12, ge=0)
    # "slow down" refusals a connection may collect per minute before it is closed (1008).
    rate_strikes_per_minute: int = Field(default=30, ge=1)
    # Keepalive pings a client may send: per second, with a burst; a flood is closed (1008).
    ping_rate: float = Field(default=2.0, ge=0)
    ping_burst: int = Field(default=20, ge=1)

    # Per client address (the real one from X-Forwarded-For when the peer is a trusted proxy).
    max_websockets_per_ip: int = Field(default=32, ge=1)
    max_nicknames_per_ip: int = Field(default=16, ge=1)
    registrations_per_minute: float = Field(default=30, ge=0)
    put_rate: float = Field(default=1.0, ge=0)
    put_burst: int = Field(default=20, ge=1)

    # Per server process, at the transport: a cap that answers 503 before running out of file
    # descriptors, a cap per peer address (trusted proxies exempt), and limits on the request head.
    max_connections: int = Field(default=10_000, ge=1)
    max_connections_per_ip: int = Field(default=256, ge=1)
    header_timeout: float = Field(default=10.0, gt=0, le=600)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # An unfinished websocket message must receive data at least this often, and all unfinished
    # messages of all connections together may hold at most this many bytes.
    frame_timeout: float = Field(default=20.0, gt=0, le=3600)
    max_incomplete_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # Read budgets at the socket: a peer sending faster than its byte rate (per connection and
    # per client address, with a burst) is read slower, never refused; a client address's large
    # frames (64 KiB and up) hold at most MAX_HELD_BYTES_PER_IP at once, the next one waits.
    read_rate: int = Field(default=8 * 1024 * 1024, ge=0)
    read_burst: int = Field(default=32 * 1024 * 1024, ge=1024)
    read_rate_per_ip: int = Field(default=32 * 1024 * 1024, ge=0)
    read_burst_per_ip: int = Field(default=128 * 1024 * 1024, ge=1024)
    max_held_bytes_per_ip: int = Field(default=64 * 1024 * 1024, ge=1024)

    # Browser pages allowed to open websockets and post: requests without an Origin (QGIS, curl,
    # scripts) and same-host pages always are; "*" allows every origin.
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Refusal and warning lines written per second at most; the rest are summed up periodically.
    log_rate: float = Field(default=10.0, gt=0)

    # Room history, replayed to every new socket and served by /room/{room}/last: memory only.
    max_stored_messages: int = Field(default=5, ge=0, le=1000)
    max_stored_bytes: int = Field(default=32 * 1024 * 1024, ge=0)

    # Liveness: how often nb_users goes out during join storms, websocket keepalive.
    nb_users_interval: float = Field(default=0.2, ge=0, le=60)
    ws_ping_interval: float = Field(default=20.0, ge=0)
    ws_ping_timeout: float = Field(default=20.0, gt=0)
    ws_per_message_deflate: bool = False
    # A peer that acknowledges nothing we send for this long (dead, or a zero TCP window) is
    # aborted by the kernel; this is what finally frees a slow client after it was dropped.
    tcp_user_timeout: float = Field(default=60.0, ge=0, le=3600)

    # GET /metrics (Prometheus): on or off, and the client networks allowed to scrape it.
    metrics_enabled: bool = True
    metrics_networks: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(PRIVATE_NETWORKS))
    # Moderation (docs/moderation.md): `label:secret` pairs (none: no /admin routes), the client
    # networks moderation may come from (empty: anywhere), the nickname announcements are made
    # under, and failed sign-ins per minute per client address before 429.
    admin_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    admin_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    announcer_name: str = "moderator"
    admin_failures_per_minute: int = Field(default=10, ge=1, le=10_000)
    # The web client's basemap: an XYZ tile URL template (empty: no basemap) and its
    # attribution, which Leaflet shows as HTML (the operator's text, never a user's).
    map_tile_url: str = DEFAULT_TILE_URL
    map_tile_attribution: str = DEFAULT_TILE_ATTRIBUTION

    # Process.
    # Fan-out and presence shared by several processes: memory:// (one process) or
    # redis://[user:password@]host[:port][/db], rediss:// for TLS, or a primary Sentinel replaces when
    # it fails: redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db], or a
    # Redis Cluster: redis+cluster://[[user]:password@]host[:port][,host[:port]...].
    broker_url: str = "memory://"
    # Prefix of every Redis key and channel: several instances may share one Redis.
    redis_key_prefix: str = Field(
        default="gischat",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        validation_alias=AliasChoices("REDIS_KEY_PREFIX", "INSTANCE_ID"),
    )
    # Upstream 3.x's way to name its Redis: BROKER_URL=redis://REDIS_HOST:REDIS_PORT unless
    # BROKER_URL itself is set.
    redis_host: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:\[\]-]{1,255}$")
    redis_port: int = Field(default=6379, ge=1, le=65535)
    # A node whose heartbeat is this old is dead: the others free its users and nicknames.
    node_timeout: float = Field(default=5.0, ge=0.2, le=60)
    # Longest wait between two attempts to reach Redis.
    redis_reconnect_max_delay: float = Field(default=5.0, gt=0, le=300)
    # While Redis is away, what a node keeps of its users' messages to publish when it is back:
    # at most this many, none older than this (0: keep nothing).
    outage_buffer_messages: int = Field(default=1000, ge=0, le=100_000)
    outage_buffer_seconds: float = Field(default=60.0, ge=0, le=3600)
    # A node reads a room's messages while it has sockets there, and this long after the last left.
    redis_room_linger: float = Field(default=30.0, ge=0, le=3600)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(
        default=1, ge=1, le=64, validation_alias=AliasChoices("WORKERS", "NB_UVICORN_WORKERS")
    )
    forwarded_allow_ips: str = "127.0.0.1"
    log_config: str | None = None
    # The built-in logging: readable lines ("text") or one JSON object per line ("json").
    log_format: Literal["text", "json"] = "text"
    # SIGTERM: longest wait for sockets and requests to finish before the app shuts down anyway
    # (a container's stop grace period must be longer).
    shutdown_timeout: float = Field(default=10.0, gt=0, le=300)

    @field_validator("rooms", "matrix_rooms", "metrics_networks", "admin_networks", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Comma-separated lists (`ROOMS=QGIS,Field and mobile`): items trimmed, inner spaces kept,
        empty ones dropped."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
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

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        """`ALLOWED_ORIGINS` is comma-separated: `https://maps.example.org,https://gis.example.org`."""
        if isinstance(value, str):
            return [origin.strip().rstrip("/").lower() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin like https://maps.example.org or *")
        return origins

    @field_validator("admin_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        """`label:secret,label:secret`; errors name the label, never the secret."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            return value
        tokens: dict[str, SecretStr] = {}
        for number, entry in enumerate((item.strip() for item in value.split(",")), 1):
            if not entry:
                continue
            label, colon, secret = entry.partition(":")
            if not colon or not ADMIN_LABEL_PATTERN.fullmatch(label):
                raise ValueError(
                    f"entry {number} is not label:secret with a label of 1 to 64 letters, digits, '_.-'"
                )
            if label in tokens:
                raise ValueError(f"label {label!r} is listed twice")
            if len(secret) < MIN_ADMIN_SECRET_LENGTH:
                raise ValueError(
                    f"the secret of {label!r} is shorter than {MIN_ADMIN_SECRET_LENGTH} characters"
                )
            tokens[label] = SecretStr(secret)
        return tokens

    @field_validator("metrics_networks", "admin_networks")
    @classmethod
    def _check_networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network like 10.0.0.0/8 or 192.0.2.7") from None
        return networks

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

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
        return check_broker_url(url)  # never echoing the URL: it may carry passwords

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.redis_host is not None and "broker_url" not in self.model_fields_set:
            host = f"[{self.redis_host}]" if ":" in self.redis_host else self.redis_host
            self.broker_url = f"redis://{host}:{self.redis_port}"
        if self.min_author_length > self.max_author_length:
            raise ValueError(
                f"MIN_AUTHOR_LENGTH ({self.min_author_length}) is above MAX_AUTHOR_LENGTH "
                f"({self.max_author_length})"
            )
        if self.byte_burst < self.max_frame_size:
            raise ValueError(
                f"BYTE_BURST ({self.byte_burst}) is below MAX_FRAME_SIZE ({self.max_frame_size}): "
                "a frame of the largest allowed size could never be sent"
            )
        # The announcer speaks only where there are moderators (a default that does not fit tight
        # author lengths must not stop an instance without moderation).
        if self.admin_tokens and not (
            self.min_author_length <= len(self.announcer_name) <= self.max_author_length
            and re.fullmatch(r"[\w-]+", self.announcer_name)
        ):
            raise ValueError(
                f"ANNOUNCER_NAME ({self.announcer_name!r}) is not a valid nickname: "
                f"{self.min_author_length} to {self.max_author_length} letters, digits, '_' or '-'"
            )
        check_matrix(self, self.rooms, self.max_author_length)
        if self.workers > 1 and self.broker_url.startswith("memory://"):
            raise ValueError(
                "WORKERS above 1 needs a shared broker: with BROKER_URL=memory:// each worker "
                "would hold its own copy of every room"
            )
        return self


ConfigT = TypeVar("ConfigT")


def project(config: type[ConfigT], settings: Settings, **parts: Any) -> ConfigT:
    """The part of `settings` a part of the server reads, as that part's own settings type.

    Each part declares a small frozen dataclass whose fields are named like the settings it needs
    (`RoomSettings`, `BrokerSettings`, ...); the app is put together from these, so no part below
    the top ever holds the whole `Settings`. `parts` fills fields that are not settings themselves.
    """
    assert dataclasses.is_dataclass(config)
    values = {
        field.name: getattr(settings, field.name)
        for field in dataclasses.fields(config)
        if field.name not in parts
    }
    return config(**values, **parts)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation error into a one-line `SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_error(exc, Settings)) from None


__all__ = ["Settings", "SettingsError", "describe_error", "load_settings", "project", "variable_name"]
