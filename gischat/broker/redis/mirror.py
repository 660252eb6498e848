"""This node's picture of the other nodes: their nicknames and socket counts, kept from events.

Loaded from a snapshot, then kept current from the ordered event stream (an event is applied
exactly once, whether it arrived before or after the snapshot), so that identity checks, user
lists and counts never wait on Redis.
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

from gischat.broker.base import Node
from gischat.broker.redis.events import EventKind, Header
from gischat.protocol.dialects import Post

logger = logging.getLogger("gischat.broker")

# An event received while the snapshot was on its way: (sequence number, header, payload).
Buffered: TypeAlias = tuple[int, Header, bytes]


class Mirror:
    """The other nodes' nicknames (room -> key -> (nickname, node)) and counts (node -> room -> n)."""

    def __init__(self, node: str, rooms: list[str]) -> None:
        self.node = node
        self.rooms = rooms
        self.nicks: dict[str, dict[str, tuple[str, str]]] = {room: {} for room in rooms}
        self.counts: dict[str, dict[str, int]] = {}

    def clear(self) -> None:
        """Redis is away: this node knows of no other."""
        self.nicks = {room: {} for room in self.rooms}
        self.counts = {}

    def nodes(self) -> int:
        """Other nodes this node has heard of."""
        return len(self.counts)

    def remote_count(self, room: str) -> int:
        return sum(counts.get(room, 0) for counts in self.counts.values())

    def remote_owner(self, room: str, key: str) -> str | None:
        entry = self.nicks.get(room, {}).get(key)
        return entry[0] if entry is not None else None

    def remote_users(self, room: str) -> list[str]:
        return [nickname for nickname, _ in self.nicks.get(room, {}).values()]

    def apply(self, header: Header, hub: Node) -> None:
        """An event about another node (a claim, a release, counts, a departure), in the mirror."""
        room, node = header.room, header.node
        if header.kind is EventKind.CLAIMED:
            if room in self.nicks:
                self.nicks[room][header.key] = (header.nickname, node)
        elif header.kind is EventKind.FREED:
            entries = self.nicks.get(room)
            if entries is not None and entries.get(header.key, ("", ""))[1] == node:
                del entries[header.key]
        elif header.kind is EventKind.COUNTS:
            counts = self.counts.setdefault(node, {})
            for name, count in header.counts.items():
                counts[name] = count
                if name in self.nicks:
                    hub.remote_changed(name)
        elif header.kind is EventKind.GONE:
            self.counts.pop(node, None)
            for name, entries in self.nicks.items():
                for key in [key for key, (_, owner) in entries.items() if owner == node]:
                    del entries[key]
                hub.remote_changed(name)

    def load(self, snapshot: list[Any], buffered: list[Buffered], hub: Node) -> int:
        """The state of every other node, as of the snapshot; then the events that arrived
        meanwhile (`buffered`). Returns the snapshot's sequence number."""
        seq_raw, nodes, counts, nicks = snapshot
        base = int(seq_raw)
        self.counts = {}
        for node_raw, flat in zip(nodes, counts, strict=True):
            node = node_raw.decode()
            if node == self.node:
                continue
            self.counts[node] = {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        self.nicks = {}
        for room, flat in zip(self.rooms, nicks, strict=True):
            entries: dict[str, tuple[str, str]] = {}
            for i in range(0, len(flat), 2):
                owner, _, nickname = flat[i + 1].decode().partition("\0")
                if owner != self.node:
                    entries[flat[i].decode()] = (nickname, owner)
            self.nicks[room] = entries
        for seq, header, _ in buffered:
            if seq > base:
                self.apply(header, hub)
        for room in self.rooms:
            hub.remote_changed(room)
        return base


def readable(payload: bytes, timestamp: int | None = None) -> Post | None:
    """A post from Redis, or None for one this version cannot read (a 2.x node's wire text)."""
    try:
        return Post.decode(payload.decode(), timestamp)
    except ValueError:
        return None
