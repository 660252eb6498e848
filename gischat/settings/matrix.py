"""The Matrix bridge's settings (docs/matrix.md): its fields and their checks, a part of `Settings`.

All of them or none: with MATRIX_HOMESERVER_URL unset there is no bridge. Names the bridge will make
(portal aliases, Matrix participants' nicknames) are checked here too, with the same rules
(`gischat.naming`), so that a setting the bridge could not work with stops the server at start.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode

from gischat.naming import MATRIX_SUFFIX, slug

# The Matrix bridge: its shortest secrets, the characters of a localpart, and a server name.
MIN_MATRIX_TOKEN_LENGTH = 32
MATRIX_PREFIX_PATTERN = re.compile(r"[a-z0-9._=-]{1,32}")
# At most 170 characters: a Matrix id holds 255, and a virtual user's localpart takes up to 74 of
# them (a 32-character prefix and a 42-character digest of a long nickname).
MATRIX_SERVER_NAME_PATTERN = re.compile(
    r"[A-Za-z0-9.-]{1,164}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?"
)


class MatrixFields(BaseSettings):
    """The MATRIX_* settings; `Settings` has them among its own."""

    # The Matrix bridge (docs/matrix.md), an application service of the homeserver at
    # MATRIX_HOMESERVER_URL; nothing set, no bridge. MATRIX_ROOMS: the bridged rooms (empty: all),
    # MATRIX_ROOM_IDS: `Room=!id,...`, rooms bridged onto existing Matrix rooms instead of
    # portals; MATRIX_QUEUE_SIZE: events per portal waiting for a slow or absent homeserver.
    matrix_homeserver_url: str | None = None
    matrix_server_name: str | None = None
    matrix_as_token: SecretStr | None = None
    matrix_hs_token: SecretStr | None = None
    matrix_prefix: str = "gischat_"
    matrix_rooms: Annotated[list[str], NoDecode] = Field(default_factory=list)
    matrix_room_ids: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    matrix_queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    # How often one node checks each portal's virtual users against who is in the room (a node
    # killed without a goodbye leaves its users' virtual users behind until then).
    matrix_sweep_interval: float = Field(default=60.0, ge=0.5, le=86_400)

    @field_validator("matrix_room_ids", mode="before")
    @classmethod
    def _split_matrix_room_ids(cls, value: Any) -> Any:
        """`Room=!id,Room=!id`: gischat rooms bridged onto existing Matrix rooms."""
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for number, entry in enumerate((item.strip() for item in value.split(",")), 1):
            if not entry:
                continue
            name, _, room_id = entry.rpartition("=")
            # Room ids are opaque: `!id:server` before room version 12, `!id` since.
            if not name.strip() or not re.fullmatch(r"![^\s,]{1,254}", room_id.strip()):
                raise ValueError(f"entry {number} is not Room=!id")
            pairs[name.strip()] = room_id.strip()
        return pairs

    @field_validator("matrix_homeserver_url")
    @classmethod
    def _check_homeserver_url(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        url = url.strip().rstrip("/")
        try:
            parsed = urlsplit(url)
            parsed.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            raise ValueError("not a valid http(s) URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be the homeserver's client API base URL: http(s)://host[:port]")
        if parsed.username or parsed.password or parsed.query or parsed.fragment:
            raise ValueError("must hold no credentials, query or fragment")
        return url

    @field_validator("matrix_server_name")
    @classmethod
    def _check_server_name(cls, name: str | None) -> str | None:
        if name is None or not name.strip():
            return None
        if not MATRIX_SERVER_NAME_PATTERN.fullmatch(name.strip()):
            raise ValueError("must be a Matrix server name such as example.org or matrix.example.org:8448")
        return name.strip()

    @field_validator("matrix_as_token", "matrix_hs_token")
    @classmethod
    def _check_matrix_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None or not token.get_secret_value():
            return None
        secret = token.get_secret_value()
        if len(secret) < MIN_MATRIX_TOKEN_LENGTH or any(char.isspace() for char in secret):
            raise ValueError(f"must be at least {MIN_MATRIX_TOKEN_LENGTH} characters, with no white space")
        return token

    @field_validator("matrix_prefix")
    @classmethod
    def _check_matrix_prefix(cls, prefix: str) -> str:
        if not MATRIX_PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError(
                "must be 1 to 32 of a-z, 0-9, '.', '_', '=', '-' (the start of a Matrix localpart)"
            )
        return prefix

    @property
    def matrix_enabled(self) -> bool:
        """Whether the Matrix bridge runs: its homeserver is set (the rest then must be)."""
        return self.matrix_homeserver_url is not None


def check_matrix(settings: MatrixFields, rooms: list[str], max_author_length: int) -> None:
    """All of the bridge's settings or none; the rooms it names must be this instance's."""
    required = {
        "MATRIX_HOMESERVER_URL": settings.matrix_homeserver_url,
        "MATRIX_SERVER_NAME": settings.matrix_server_name,
        "MATRIX_AS_TOKEN": settings.matrix_as_token,
        "MATRIX_HS_TOKEN": settings.matrix_hs_token,
    }
    given = [name for name, value in required.items() if value is not None]
    if given and len(given) < len(required):
        missing = next(name for name, value in required.items() if value is None)
        raise ValueError(f"{missing} is required by the Matrix bridge ({given[0]} is set)")
    if (
        settings.matrix_as_token is not None
        and settings.matrix_hs_token is not None
        and settings.matrix_as_token.get_secret_value() == settings.matrix_hs_token.get_secret_value()
    ):
        raise ValueError("MATRIX_AS_TOKEN and MATRIX_HS_TOKEN must differ")
    known = {name.casefold(): name for name in rooms}
    for variable, names in (
        ("MATRIX_ROOMS", settings.matrix_rooms),
        ("MATRIX_ROOM_IDS", settings.matrix_room_ids),
    ):
        for name in names:
            if name.casefold() not in known:
                raise ValueError(f"{variable} names {name!r}, which is not one of ROOMS")
    settings.matrix_rooms = [known[name.casefold()] for name in settings.matrix_rooms]
    room_ids: dict[str, str] = {}
    for name, room_id in settings.matrix_room_ids.items():
        if known[name.casefold()] in room_ids or room_id in room_ids.values():
            raise ValueError(f"MATRIX_ROOM_IDS names {name!r} or {room_id!r} twice")
        room_ids[known[name.casefold()]] = room_id
    settings.matrix_room_ids = room_ids
    if settings.matrix_enabled:
        _check_names(settings, rooms, max_author_length)


def _check_names(settings: MatrixFields, rooms: list[str], max_author_length: int) -> None:
    """Every portal has an alias of its own, and every Matrix participant can get a nickname."""
    portals: dict[str, str] = {}
    bridged = settings.matrix_rooms or rooms
    for room in (room for room in bridged if room not in settings.matrix_room_ids):
        alias = slug(room)
        if not alias:
            raise ValueError(f"MATRIX_ROOMS: room {room!r} has no letter or digit for its Matrix alias")
        if alias in portals:
            raise ValueError(
                f"MATRIX_ROOMS: rooms {portals[alias]!r} and {room!r} would share one Matrix alias"
            )
        portals[alias] = room
    # A character, the number that makes a Matrix nickname unique (the bridge tries up to 50:
    # two digits) and the suffix; one less left the 10th and later Matrix users of a base with a
    # nickname one character too long, whose every message was refused.
    shortest = len(MATRIX_SUFFIX) + 3
    if max_author_length < shortest:
        raise ValueError(
            f"MAX_AUTHOR_LENGTH ({max_author_length}) leaves no room for Matrix nicknames "
            f"(at least {shortest})"
        )
