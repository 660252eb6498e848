"""What a node's users said while Redis was away, kept to be published once it is back.

While Redis is unreachable a node keeps its own sockets chatting (they get each other's messages
at once), but the other nodes hear nothing of it. So every message published meanwhile is also
kept here, in call order, and when the node is back on Redis it goes out, before anything newer,
with its original id and timestamp: the other nodes' sockets get it once, in each sender's order,
and it lands in the shared history. The node's own sockets had it already: it travels marked as
such (`quiet`) and the node does not deliver it again.

The keeping is bounded, by count and by age (OUTAGE_BUFFER_MESSAGES, OUTAGE_BUFFER_SECONDS): a
long outage must not grow a node's memory without end, and a message from long ago is no longer
worth breaking into the conversation with. What the bound drops is the oldest, counted (`/status`,
`gischat_broker_outage_dropped_total`) and logged once per outage.

A message is let go only once Redis answered for it: if Redis leaves again while they are going
out, the rest wait for the next return. Events carry the post's id, and each node skips a message
whose id it has just delivered (`Seen`), so one that went out twice (Redis ran it, then the answer
was lost) still reaches every socket once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from gischat.broker.base import Envelope
from gischat.broker.redis.commands import Retention, emit_command
from gischat.broker.redis.keys import NodeKeys
from gischat.broker.redis.outbox import Command, Outbox

logger = logging.getLogger("gischat.broker")

# Post ids remembered per node to deliver a message once, whatever went out twice.
SEEN_IDS = 4096


@dataclass(slots=True)
class Kept:
    """One message published while Redis was away."""

    room: str
    envelope: Envelope
    at: float  # monotonic time it was published
    # Perhaps in Redis already (it ran, its fate unknown, or a primary that then failed over ran
    # it): published again only if the room's recent events do not hold it.
    unsure: bool = False


class OutageBuffer:
    """The messages of this node's users waiting for Redis, oldest first, within the bounds."""

    def __init__(self, limit: int, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.max_age = max_age
        self.clock = clock
        self.kept: deque[Kept] = deque()
        self.dropped = 0  # in all, since the node started
        self._warned = False  # the drops of this outage are logged once

    def __len__(self) -> int:
        return len(self.kept)

    def keep(self, room: str, envelope: Envelope, unsure: bool = False) -> None:
        if self.limit <= 0 or self.max_age <= 0:
            self._drop(1)
            return
        self.kept.append(Kept(room, envelope, self.clock(), unsure))
        self._expire()
        if len(self.kept) > self.limit:
            excess = len(self.kept) - self.limit
            for _ in range(excess):
                self.kept.popleft()
            self._drop(excess)

    def pending(self) -> list[Kept]:
        """What is to go out now that Redis is back (too old ones dropped), still kept until sent."""
        self._expire()
        self._warned = False
        return list(self.kept)

    def sent(self, item: Kept) -> None:
        """Redis ran the script that published `item`: it is let go."""
        if self.kept and self.kept[0] is item:
            self.kept.popleft()
        else:
            with contextlib.suppress(ValueError):
                self.kept.remove(item)

    def _expire(self) -> None:
        oldest = self.clock() - self.max_age
        expired = 0
        while self.kept and self.kept[0].at < oldest:
            self.kept.popleft()
            expired += 1
        if expired:
            self._drop(expired)

    def _drop(self, count: int) -> None:
        self.dropped += count
        if not self._warned:
            self._warned = True
            logger.warning(
                "broker: Redis is away for longer than this node keeps messages for "
                "(OUTAGE_BUFFER_MESSAGES=%d, OUTAGE_BUFFER_SECONDS=%g): the oldest are dropped, "
                "and will not reach the other nodes (counted in gischat_broker_outage_dropped_total)",
                self.limit,
                self.max_age,
            )


class Seen:
    """The ids of the posts this node delivered lately, to deliver each one once."""

    def __init__(self, size: int = SEEN_IDS) -> None:
        self.size = size
        self.ids: OrderedDict[str, None] = OrderedDict()

    def first(self, post_id: str) -> bool:
        """True the first time `post_id` is seen (lately); False for a repeat."""
        if post_id in self.ids:
            return False
        self.ids[post_id] = None
        if len(self.ids) > self.size:
            self.ids.popitem(last=False)
        return True


def kept_commands(
    buffer: OutageBuffer,
    keys: NodeKeys,
    node: str,
    number: Callable[[], int],
    retention: Retention,
    reached: Callable[[], int],
) -> list[Command]:
    """The messages kept during the outage, as the node's next commands: marked quiet (its own
    sockets have them), each let go once Redis ran it."""
    commands = []
    for item in buffer.pending():
        command = emit_command(
            keys, node, number(), item.room, item.envelope, retention, True, reached, unsure=item.unsure
        )
        command.on_result = _letting_go(buffer, item)
        commands.append(command)
    return commands


def _letting_go(buffer: OutageBuffer, item: Kept) -> Callable[[object], None]:
    return lambda _: buffer.sent(item)


def unconfirmed_messages(outbox: Outbox) -> list[tuple[str, Envelope]]:
    """Messages whose event never came back when Redis left, and those confirmed in the last
    moments: the first may never have reached Redis, the others may be on a primary whose replica
    takes over without them (replication is asynchronous). Each is published again unless the
    room's recent events hold it."""
    unsure = [command for command in outbox.pending() if command.script == "emit"]
    return [command.local for command in [*outbox.lately(), *unsure] if command.local is not None]
