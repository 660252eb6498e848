"""Where a node stands with the shared service, and the commands that tell Redis what it holds.

Apart from the session (`session.py`), which decides when: these say what a state is and what a
registration or a count change writes, from the hub's own books.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gischat.broker.base import Node
from gischat.broker.redis.commands import counts_command, sync_command
from gischat.broker.redis.keys import NodeKeys
from gischat.broker.redis.outbox import Command
from gischat.protocol.refusals import SPLIT_REASON


class NodeState(StrEnum):
    """Where this node stands with the shared service (shown in `/status`)."""

    CONNECTING = "connecting"  # the first attempt to reach Redis
    SYNCING = "syncing"  # registered again, loading the others' state
    UP = "up"  # part of the shared service
    DOWN = "down"  # Redis is away: serving this node's sockets alone, retrying
    STOPPED = "stopped"


class NodeReaped(Exception):
    """Redis no longer lists this node (it was taken for dead): it must register again."""


@dataclass(frozen=True, slots=True)
class NodeCommands:
    """The node's registration and counts as commands, numbered `n` in its outbox."""

    hub: Node
    keys: NodeKeys
    node: str
    n: int

    def sync(self, rooms: list[str], reached: Callable[[int], None]) -> Command:
        """Register (again), rewrite the counts, free what was given up and claim what was taken."""
        hub = self.hub
        counts = {room: hub.local_count(room) for room in rooms}
        held = hub.local_nicknames()

        def lost(room: str, key: str, nickname: str) -> None:
            hub.revoke(room, key, SPLIT_REASON.format(nickname=nickname))

        k = self.keys
        command_keys = [k.nodes, k.seq, k.channel, k.counts, k.index]
        return sync_command(k.home, self.node, self.n, command_keys, counts, held, lost, reached)

    def counts(self, rooms: set[str]) -> Command:
        """The absolute socket counts of the rooms that changed, as one command."""
        counts = {room: self.hub.local_count(room) for room in sorted(rooms)}
        k = self.keys
        return counts_command(self.node, self.n, [k.nodes, k.seq, k.channel, k.counts], counts)
