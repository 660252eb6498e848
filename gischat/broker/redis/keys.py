"""The names of everything a node keeps and hears in Redis, under two hash tags.

The node-wide keys (nodes, counts, nicknames, bans, the node-wide channel and its sequence) share
the tag `{prefix}`; each room's (its history, recent events, channel and sequence) the tag
`{prefix:room}`. On a Redis Cluster a script touches the keys of one tag only, so it runs on one
shard, and the rooms spread over the shards by their tags; on one Redis the braces are only part
of the names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """The Redis keys one node's scripts are given, named once, here, so that the node's interface,
    its life and its orders write to the same keys.

    Two hash tags share them out: the node-wide keys are under `{prefix}` (`home`), each room's
    under `{prefix:room}`. On a Redis Cluster a script touches the keys of one tag only, and a
    room's messages, history and recent events live on the shard of its tag; on one Redis the
    braces are only part of the names."""

    home: str  # "{prefix}": what the scripts build the node-wide keys from
    channel: str  # the node-wide event channel every node subscribes to (all but messages)
    seq: str  # the node-wide events' sequence number
    nodes: str  # the nodes alive, scored by their last heartbeat
    counts: str  # this node's socket count per room
    index: str  # the nicknames this node's sockets hold, across rooms
    bans: str  # the bans in force, by nickname or address

    @classmethod
    def of(cls, prefix: str, node: str) -> NodeKeys:
        home = "{" + prefix + "}"
        return cls(
            home=home,
            channel=f"{home}:events",
            seq=f"{home}:seq",
            nodes=f"{home}:nodes",
            counts=f"{home}:counts:{node}",
            index=f"{home}:nodenicks:{node}",
            bans=f"{home}:bans",
        )

    def nicks(self, room: str) -> str:
        """The room's nicknames: node-wide (the mirror of every node holds every room's)."""
        return f"{self.home}:nicks:{room}"

    @property
    def prefix(self) -> str:
        return self.home[1:-1]

    def _room(self, room: str) -> str:
        return "{" + self.prefix + ":" + room + "}"

    def room_seq(self, room: str) -> str:
        """The sequence number of the events on the room's channel."""
        return f"{self._room(room)}:seq"

    def history(self, room: str) -> str:
        return f"{self._room(room)}:history"

    def recent(self, room: str) -> str:
        return f"{self._room(room)}:recent"

    def recent_bytes(self, room: str) -> str:
        """The size of the room's recent events, kept beside them by the script that adds one."""
        return f"{self._room(room)}:recentbytes"

    def former(self, rooms: list[str]) -> list[tuple[str, str]]:
        """What an earlier gischat kept under names with no hash tag, worth carrying over on one
        Redis: the bans, and each room's history (former name, name now)."""
        prefix = self.prefix
        return [
            (f"{prefix}:bans", self.bans),
            *((f"{prefix}:history:{room}", self.history(room)) for room in rooms),
        ]

    def room_channel(self, room: str) -> str:
        """The channel of a room's messages, read by the nodes with sockets there (`routes.py`)."""
        return f"{self._room(room)}:events"
