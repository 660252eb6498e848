"""Which Matrix room each bridged gischat room is, found once per process and remembered.

No lock is held while the homeserver is asked: looking an alias of our namespace up makes the
homeserver ask gischat about it (the alias query) before it answers, and that query creates the
portal. Two creations racing for one alias end with one room: the loser looks the alias up.
"""

from __future__ import annotations

import contextlib

from mautrix.errors import MRoomInUse

from gischat.matrix.config import MatrixSettings
from gischat.matrix.homeserver import Homeserver


class Portals:
    """gischat room <-> Matrix room id, for the rooms the bridge serves."""

    def __init__(self, settings: MatrixSettings, homeserver: Homeserver) -> None:
        self.settings = settings
        self.homeserver = homeserver
        self._ids: dict[str, str] = {}
        self._rooms: dict[str, str] = {}

    async def room_id(self, room: str) -> str:
        """The Matrix room of `room`, created on first need (raises what the homeserver raises)."""
        known = self._ids.get(room)
        if known is None:
            known = await self.homeserver.portal(room)
            self._found(room, known)
        return known

    async def create(self, room: str) -> None:
        """The homeserver asked about a portal's alias: the portal is created now (or was just now)."""
        # MRoomInUse: created meanwhile (another node, or our own lookup): the alias answers now.
        with contextlib.suppress(MRoomInUse):
            self._found(room, await self.homeserver.create_portal(room))

    def _found(self, room: str, room_id: str) -> None:
        self._ids[room] = room_id
        self._rooms[room_id] = room

    def room_of(self, room_id: str) -> str | None:
        """The gischat room a Matrix room is the portal of (None: not one of ours)."""
        room = self._rooms.get(room_id)
        if room is not None:
            return room
        return next(
            (name for name, mapped in self.settings.matrix_room_ids.items() if mapped == room_id), None
        )

    def room_of_alias(self, alias: str) -> str | None:
        """The gischat room whose portal alias this is (the homeserver's alias query)."""
        return next((room for room in self.settings.bridged if self.settings.alias(room) == alias), None)

    @property
    def found(self) -> int:
        return len(self._ids)
