"""The commands a node sends to Redis, built from what the hub asks: a message (and what Redis
keeps of it), a node's counts, a node registering again.

Each is a call of one of the scripts in `scripts.py`, given the keys `NodeKeys` names and the
event header the script publishes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gischat.broker.base import BrokerSettings, Envelope
from gischat.broker.redis.events import EventKind
from gischat.broker.redis.keys import NodeKeys
from gischat.broker.redis.outbox import Command
from gischat.protocol import dialects

# The most recent events a room keeps for the nodes that come back (OUTAGE_BUFFER_MESSAGES may be
# larger: that many per node, this many per room), so that each node can remember every post id
# it delivered lately (`outage.Seen`) and skip them on its return.
MAX_RECENT_EVENTS = 10_000


@dataclass(frozen=True, slots=True)
class Retention:
    """What Redis keeps of a room's messages: the history every newcomer is given (at most
    `history_messages`, none over `history_bytes`), and the recent events a node that was not
    listening catches up from when it is back (at most `recent_messages`, none older than
    `recent_ms`: as much as a node keeps for the others while Redis is away; `history_bytes` in
    all)."""

    history_messages: int
    history_bytes: int
    recent_messages: int
    recent_ms: int

    @classmethod
    def of(cls, settings: BrokerSettings) -> Retention:
        return cls(
            settings.max_stored_messages,
            settings.max_stored_bytes,
            min(settings.outage_buffer_messages, MAX_RECENT_EVENTS),
            int(settings.outage_buffer_seconds * 1000),
        )


def emit_command(
    keys: NodeKeys,
    node: str,
    n: int,
    room: str,
    envelope: Envelope,
    retention: Retention,
    quiet: bool,
    reached: Callable[[], int],
    unsure: bool = False,
) -> Command:
    """EMIT: a message to every node (and the room's history when it is kept, and its recent
    events); `quiet` when this node's sockets have it already; `unsure` when Redis may hold it
    already (then it is published only if the room's recent events do not). Its header says, as it is sent,
    how far this node had `reached` on the node-wide channel (a node delivers the message once it
    has read as far: `barrier.py`)."""
    head: list[Any] = [EventKind.MESSAGE, room, node, n, envelope.to, envelope.keep, int(quiet)]

    def stamp(command: Command) -> None:
        command.args[0] = orjson.dumps([*head, reached()])

    channel = keys.room_channel(room)
    return Command(
        "emit",
        [keys.room_seq(room), channel, keys.history(room), keys.recent(room), keys.recent_bytes(room)],
        [
            b"",  # the header, written by `stamp`
            envelope.post.encode(),
            retention.history_messages if envelope.keep else 0,
            retention.history_bytes,
            retention.recent_messages,
            retention.recent_ms,
            envelope.post.id if unsure else "",
        ],
        local=None if quiet else (room, envelope),
        n=n,
        channel=channel,
        stamp=stamp,
    )


def presence_stamp(head: list[Any], published: Callable[[], int]) -> Callable[[Command], None]:
    """A claim's or a release's header (args[4]) as it is sent: with the room's sequence number of
    this node's last message there (the `newcomer` or `exiter` reaches a node after it)."""

    def stamp(command: Command) -> None:
        command.args[4] = orjson.dumps([*head, None, published()])

    return stamp


def counts_command(node: str, n: int, keys: list[str], counts: dict[str, int]) -> Command:
    """COUNTS: a node's absolute socket counts of some rooms."""
    header = orjson.dumps([EventKind.COUNTS, "", node, n, counts])
    args: list[Any] = [node, header]
    for room, count in counts.items():
        args += [room, count]
    return Command("counts", keys, args, n=n)


def sync_command(
    prefix: str,
    node: str,
    n: int,
    keys: list[str],
    counts: dict[str, int],
    held: list[tuple[str, str, str]],
    lost: Callable[[str, str, str], None],
    reached: Callable[[int], None],
) -> Command:
    """SYNC: register the node (again) with its counts and the nicknames its sockets hold
    (`held`: room, key, nickname); `lost` is told of each one another node took meanwhile,
    `reached` of the node-wide sequence number of its last event (what the node says next is
    delivered after its `newcomer`s: `barrier.py`)."""
    header = orjson.dumps([EventKind.COUNTS, "", node, n, counts])
    args: list[Any] = [prefix, node, header, len(counts)]
    for room, count in counts.items():
        args += [room, count]
    for room, key, nickname in held:
        claim_header = orjson.dumps([EventKind.CLAIMED, room, node, 0, key, nickname, 1])
        args += [room, key, nickname, claim_header, newcomer_wire(nickname), exiter_wire(nickname)]

    def settle(results: Any) -> None:
        if not isinstance(results, list) or not results:
            return
        for (room, key, nickname), result in zip(held, results[:-1], strict=False):
            if int(result) == 0:
                lost(room, key, nickname)
        reached(int(results[-1]))

    return Command("sync", keys, args, n=n, on_result=settle)


def newcomer_wire(nickname: str) -> str:
    return dialects.newcomer(nickname).encode()


def exiter_wire(nickname: str) -> str:
    """The exiter a script publishes when it frees the nickname for a node that cannot."""
    return dialects.exiter(nickname).encode()
