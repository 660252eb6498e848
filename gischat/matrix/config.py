"""What the bridge is told by the operator: its own small settings type, and the portals it serves."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from gischat.matrix import names

# The application service's id in the homeserver's registration (one bridge per instance).
REGISTRATION_ID = "gischat"


@dataclass(frozen=True, slots=True)
class MatrixSettings:
    """The MATRIX_* settings and the few others the bridge reads (see gischat.settings)."""

    matrix_homeserver_url: str
    matrix_server_name: str
    matrix_as_token: SecretStr
    matrix_hs_token: SecretStr
    matrix_prefix: str
    matrix_rooms: list[str]
    matrix_room_ids: dict[str, str]
    matrix_queue_size: int
    matrix_sweep_interval: float
    rooms: list[str]
    rules: str
    max_author_length: int
    max_frame_size: int

    @property
    def bridged(self) -> list[str]:
        """The gischat rooms bridged to Matrix (MATRIX_ROOMS, or every room), in ROOMS order."""
        chosen = set(self.matrix_rooms) if self.matrix_rooms else set(self.rooms)
        return [room for room in self.rooms if room in chosen or room in self.matrix_room_ids]

    def alias(self, room: str) -> str:
        return names.portal_alias(self.matrix_prefix, room, self.matrix_server_name)

    @property
    def bot(self) -> str:
        return names.user_id(names.bot_localpart(self.matrix_prefix), self.matrix_server_name)

    def puppet(self, nickname: str) -> str:
        """The virtual user who speaks for a gischat nickname (an id of at most 255 characters)."""
        room = names.MAX_USER_ID_LENGTH - len(self.matrix_server_name) - 2  # `@` and `:`
        return names.user_id(
            names.puppet_localpart(self.matrix_prefix, nickname, room), self.matrix_server_name
        )

    def ours(self, mxid: str) -> bool:
        return names.in_namespace(self.matrix_prefix, self.matrix_server_name, mxid)
