"""One conversation's sockets on this node: room X and channel X, their nicknames, history and count.

The hub (`gischat.rooms.hub`) owns one `Room` per conversation. A room delivers a broadcast to
its local sockets, one frame per dialect built once, keeps the history and the ids replies may
point to, and coalesces its `nb_users` broadcasts so that a join storm does not cost a
broadcast per join.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gischat.broker import Envelope
from gischat.observability.metrics import Metrics
from gischat.protocol import dialects
from gischat.protocol.dialects import AUTHORED_TYPES, Dialect
from gischat.protocol.messages import nickname_key
from gischat.rooms.connection import Connection
from gischat.rooms.history import History
from gischat.rooms.pace import CountPace

# Ids of a conversation's recent messages a reply may point to (REPLY_THREADS): far more than
# anyone scrolls back to, a few hundred kB per room at most.
MAX_REPLY_TARGETS = 4096
# Timers due within this much of now fire now: the loop's own clock granularity.
DUE_SLACK = 0.001


class Room:
    """The local sockets of one conversation (room X and channel X) and the nicknames they registered."""

    __slots__ = (
        "_count_timer",
        "_metrics",
        "connections",
        "count_pace",
        "history",
        "name",
        "nicknames",
        "pending",
        "remote",
        "replies",
        "send_style",
        "sockets",
    )

    def __init__(
        self,
        name: str,
        count_interval: float,
        history: History,
        metrics: Metrics,
        remote: Callable[[str], int] | None = None,
        *,
        send_style: bool = True,
        reply_threads: bool = False,
    ) -> None:
        self.name = name
        self._metrics = metrics
        # Sockets of this room on other nodes (none with the memory broker).
        self.remote = remote
        self.connections: set[Connection] = set()
        # The same sockets by dialect: a broadcast renders each dialect once, for its own set.
        self.sockets: dict[Dialect, set[Connection]] = {dialect: set() for dialect in Dialect}
        # GEOJSON_STYLE: whether layers sent to 2.x sockets carry `style`.
        self.send_style = send_style
        # Ids of recent messages (insertion-ordered, oldest first), kept with REPLY_THREADS only.
        self.replies: dict[str, None] | None = {} if reply_threads else None
        self.history = history
        # nickname_key(nickname) -> the socket that registered it: nicknames are unique
        # regardless of case and width, so "Alice" and "alice" cannot both be in one room.
        self.nicknames: dict[str, Connection] = {}
        # Nickname keys this node is claiming from the shared registry, and the socket claiming each.
        self.pending: dict[str, Connection] = {}
        self.count_pace = CountPace(count_interval)
        self._count_timer: asyncio.TimerHandle | None = None

    def total(self) -> int:
        """Open sockets of the room on every node."""
        return len(self.connections) + (self.remote(self.name) if self.remote is not None else 0)

    def deliver(self, envelope: Envelope) -> None:
        post = envelope.post
        if envelope.to is None:
            if envelope.keep:
                self.history.add(post)
            if self.replies is not None and post.kind in AUTHORED_TYPES:
                self.remember_id(post.id)
            for dialect, members in self.sockets.items():
                if not members:
                    continue
                item = post.frame(dialect, self.send_style)
                if item is None:
                    continue
                # A copy: a recipient found too slow is evicted from the set during this loop.
                recipients = tuple(members)
                for conn in recipients:
                    conn.push(item)
                self._metrics.sent(post.kind, item.size, len(recipients))
            return
        target = self.nicknames.get(nickname_key(envelope.to))
        if target is not None:
            item = post.frame(target.dialect, self.send_style)
            if item is not None:
                target.push(item)
                self._metrics.sent(post.kind, item.size, 1)

    def remember_id(self, message_id: str) -> None:
        replies = self.replies
        assert replies is not None
        replies[message_id] = None
        if len(replies) > MAX_REPLY_TARGETS:
            del replies[next(iter(replies))]

    def replied_to(self, message_id: str) -> bool:
        """Whether `message_id` names a recent message of this conversation (REPLY_THREADS)."""
        return self.replies is not None and message_id in self.replies

    def welcome(self, conn: Connection) -> None:
        """A socket joined: it gets the count, then what was said before it came.

        The history goes to the newcomer at once, behind a count of its own, so nothing said
        after it joined can arrive before (or twice, inside) the replay; the room's coalesced
        count follows as for every join.
        """
        self.connections.add(conn)
        self.sockets[conn.dialect].add(conn)
        self.count_changed()
        backlog = self.history.items()
        if backlog:
            conn.push_post(dialects.nb_users(self.total()))
            for post in backlog:
                conn.push_post(post, self.send_style)

    def count_changed(self) -> None:
        """Schedule an `nb_users` broadcast at the pace of `rooms.pace`.

        A burst of joins would otherwise cost a broadcast to the whole room per join
        (1,000 joins, half a million sends). Changes until the broadcast share it, and it
        carries the count when it goes.
        """
        loop = asyncio.get_running_loop()
        now = self.count_pace.last_change = loop.time()
        if self._count_timer is None:
            due = self.count_pace.due(len(self.connections))
            self._count_timer = loop.call_later(max(0.0, due - now), self._count_due)

    def _count_due(self) -> None:
        """The timer: the count goes now, unless changes since it was set put it off (a storm)."""
        loop = asyncio.get_running_loop()
        wait = self.count_pace.due(len(self.connections)) - loop.time()
        if wait > DUE_SLACK:
            self._count_timer = loop.call_later(wait, self._count_due)
            return
        self._count_timer = None
        self.count_pace.last_sent = loop.time()
        self.deliver(Envelope(dialects.nb_users(self.total())))

    def close(self) -> None:
        if self._count_timer is not None:
            self._count_timer.cancel()
            self._count_timer = None
