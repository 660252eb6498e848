"""Which Matrix room each bridged gischat room is, found once per process and remembered."""

from __future__ import annotations

import asyncio

from gischat.matrix.config import MatrixSettings
from gischat.matrix.homeserver import Homeserver


class Portals:
    """gischat room <-> Matrix room id, for the rooms the bridge serves."""

    def __init__(self, settings: MatrixSettings, homeserver: Homeserver) -> None:
        self.settings = settings
        self.homeserver = homeserver
        self._ids: dict[str, str] = {}
        self._rooms: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def room_id(self, room: str) -> str:
        """The Matrix room of `room`, created on first need (raises what the homeserver raises)."""
        known = self._ids.get(room)
        if known is not None:
            return known
        async with self._lock:  # one creation at a time: two would race for the alias
            known = self._ids.get(room)
            if known is None:
                known = await self.homeserver.portal(room)
                self._ids[room] = known
                self._rooms[known] = room
            return known

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
