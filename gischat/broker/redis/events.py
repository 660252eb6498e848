"""The events the scripts publish (`scripts.py`), as a node reads them.

Events are "<seq> <header JSON>\\n<payload>"; the header is a JSON array:
  ["m", room, node, n, to, keep, q, after]  a message (payload: the post, `Post.encode()`;
                                           `after`: the node-wide sequence number its node had
                                           reached when it sent it, `barrier.py`)
  ["c", room, node, n, key, nickname, q[, null, sent]]  a nickname claimed (payload: the
                                           newcomer post; `sent`: the room's sequence number of
                                           the node's last message there, `barrier.py`)
  ["r", room, node, n, key, nickname, q[, t, sent]]  a nickname freed (payload: the exiter post;
                                           `t`: Redis's clock when a script freed it for a dead
                                           or split node, the exiter's timestamp on every node)
  ["n", "", node, n, {room: count}]       a node's socket counts
  ["g", "", node, 0]                      a node is gone
  ["o", room, node, n]                    a moderator's order (payload: {"kind", "args"} JSON);
                                           a kick or a deletion travels on the room's channel
  ["w", room, node, n, ask]               who is in `room`? (ask: the question's id)
  ["s", room, node, n, ask]               a node's answer (payload: its sockets, JSON)
Messages, kicks and deletions travel on their room's channel, numbered by the room's own sequence
(`NodeKeys.room_seq`): a room's keys share one hash tag, so on a Redis Cluster the room lives on
one shard. The rest travels on the node-wide channel, numbered by the node-wide sequence.
`n` numbers a node's own commands (0: written by a script on another node's behalf); `q`
(quiet) marks what the node's own sockets were already told while Redis was away (a message:
kept during the outage and published on return, `outage.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson


class EventKind(StrEnum):
    """The first element of an event's header."""

    MESSAGE = "m"
    CLAIMED = "c"
    FREED = "r"
    COUNTS = "n"
    GONE = "g"
    ORDER = "o"
    WHO = "w"
    SOCKETS = "s"


@dataclass(frozen=True, slots=True)
class Header:
    """An event's header, read by name: the JSON array above, as `publish` and the scripts write it."""

    kind: EventKind
    room: str
    node: str
    n: int  # the node's own command number (0: written by a script on another node's behalf)
    rest: tuple[Any, ...]  # the kind's own fields

    @classmethod
    def parse(cls, raw: list[Any]) -> Header:
        return cls(EventKind(raw[0]), raw[1], raw[2], int(raw[3]), tuple(raw[4:]))

    # A message: to whom (None: the whole room), and whether it goes into history.
    @property
    def to(self) -> str | None:
        to = self.rest[0]
        return None if to is None else str(to)

    @property
    def keep(self) -> bool:
        return bool(self.rest[1])

    # A claim or a release: the nickname's key, the nickname, whether the node's sockets were
    # told already (quiet, a message's too), and for a release by a script, Redis's clock then.
    @property
    def key(self) -> str:
        return str(self.rest[0])

    @property
    def nickname(self) -> str:
        return str(self.rest[1])

    @property
    def quiet(self) -> bool:
        return len(self.rest) > 2 and bool(self.rest[2])

    @property
    def after(self) -> int:
        """A message: the node-wide sequence number its node had reached when it sent it."""
        return int(self.rest[3]) if self.kind is EventKind.MESSAGE and len(self.rest) > 3 else 0

    @property
    def freed_at(self) -> int | None:
        if self.kind is not EventKind.FREED or len(self.rest) < 4 or self.rest[3] is None:
            return None
        return int(self.rest[3])

    @property
    def sent(self) -> int:
        """A claim or a release: the room's sequence number of its node's last message there
        when it was sent (it reaches a node after that message: `barrier.py`)."""
        return int(self.rest[4]) if len(self.rest) > 4 and self.kind is not EventKind.MESSAGE else 0

    # Counts: room -> this node's sockets there.
    @property
    def counts(self) -> dict[str, int]:
        return {str(room): int(count) for room, count in self.rest[0].items()}


def parse_event(data: bytes) -> tuple[int, Header, bytes] | None:
    """An event as published: its sequence number, its header and its payload; None for one this
    version cannot read (another version's, on the same prefix), which the caller skips."""
    head, _, rest = data.partition(b" ")
    header_text, _, payload = rest.partition(b"\n")
    try:
        return int(head), Header.parse(orjson.loads(header_text)), payload
    except (ValueError, TypeError, IndexError, KeyError):  # orjson's decode error is a ValueError
        return None
