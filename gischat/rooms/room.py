"""One conversation's sockets on this node: room X and channel X, their nicknames, history and count.

The hub (`gischat.rooms.hub`) owns one `Room` per conversation, and a room owns its members: a
socket joins and leaves, claims a nickname, holds it or loses it, through the room's methods
only, so the sets that say who is here (all sockets, the same by dialect, nicknames, claims in
flight) always agree. A room delivers a broadcast to its local sockets, one frame per dialect
built once, keeps the history and the ids replies may point to, and coalesces its `nb_users`
broadcasts so that a join storm does not cost a broadcast per join.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Departure:
    """A socket left its room: the nickname it freed, if it held one."""

    nickname: str | None


class Room:
    """The local sockets of one conversation (room X and channel X) and the nicknames they registered."""

    __slots__ = (
        "_claims",
        "_count_timer",
        "_members",
        "_metrics",
        "_names",
        "_sockets",
        "count_pace",
        "history",
        "name",
        "remote",
        "replies",
        "send_style",
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
        self._members: set[Connection] = set()
        # The same sockets by dialect: a broadcast renders each dialect once, for its own set.
        self._sockets: dict[Dialect, set[Connection]] = {dialect: set() for dialect in Dialect}
        # GEOJSON_STYLE: whether layers sent to 2.x sockets carry `style`.
        self.send_style = send_style
        # Ids of recent messages (insertion-ordered, oldest first), kept with REPLY_THREADS only.
        self.replies: dict[str, None] | None = {} if reply_threads else None
        self.history = history
        # nickname_key(nickname) -> the socket that registered it: nicknames are unique
        # regardless of case and width, so "Alice" and "alice" cannot both be in one room.
        self._names: dict[str, Connection] = {}
        # Nickname keys this node is claiming from the shared registry, and the socket claiming each.
        self._claims: dict[str, Connection] = {}
        self.count_pace = CountPace(count_interval)
        self._count_timer: asyncio.TimerHandle | None = None

    def total(self) -> int:
        """Open sockets of the room on every node."""
        return len(self._members) + (self.remote(self.name) if self.remote is not None else 0)

    # Who is here: the members and their nicknames, changed through these methods only.

    def __contains__(self, conn: object) -> bool:
        return conn in self._members

    def __len__(self) -> int:
        """Open sockets of the room on this node."""
        return len(self._members)

    @property
    def members(self) -> tuple[Connection, ...]:
        """This node's sockets of the room, as a snapshot (closing one while walking it is safe)."""
        return tuple(self._members)

    def leave(self, conn: Connection) -> Departure | None:
        """Take a socket out of the room (None: it was not here) and free the nickname it held."""
        if conn not in self._members:
            return None
        self._members.discard(conn)
        self._sockets[conn.dialect].discard(conn)
        self.count_changed()
        nickname = conn.nickname
        if nickname is not None and self._names.get(nickname_key(nickname)) is conn:
            del self._names[nickname_key(nickname)]
            return Departure(nickname)
        return Departure(None)

    def holder(self, key: str) -> Connection | None:
        """The socket that registered the nickname with this key here."""
        return self._names.get(key)

    def taken(self, key: str) -> bool:
        """Whether a socket here holds this nickname or is claiming it."""
        return key in self._names or key in self._claims

    def claim(self, key: str, conn: Connection) -> None:
        """A socket starts claiming a nickname from the shared registry (`release_claim` ends it)."""
        self._claims[key] = conn

    def release_claim(self, key: str) -> None:
        self._claims.pop(key, None)

    def grant(self, key: str, nickname: str, conn: Connection | None = None) -> bool:
        """Give a member (by default the one claiming `key`) its nickname; False when it has left,
        or holds one already."""
        conn = self._claims.get(key) if conn is None else conn
        if conn is None or conn.nickname is not None or conn not in self._members:
            return False
        conn.nickname = nickname
        self._names[key] = conn
        return True

    def revoke(self, key: str) -> Connection | None:
        """A member loses its nickname without leaving (another node holds it); that member."""
        conn = self._names.pop(key, None)
        if conn is not None:
            conn.nickname = None
        return conn

    def nicknames(self) -> list[tuple[str, str]]:
        """(key, nickname) of every nickname registered here."""
        return [(key, conn.nickname) for key, conn in self._names.items() if conn.nickname is not None]

    def deliver(self, envelope: Envelope) -> None:
        post = envelope.post
        if envelope.to is None:
            if envelope.keep:
                self.history.add(post)
            if self.replies is not None and post.kind in AUTHORED_TYPES:
                self.remember_id(post.id)
            for dialect, members in self._sockets.items():
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
        target = self._names.get(nickname_key(envelope.to))
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

    def join(self, conn: Connection) -> None:
        """A socket joined: it gets the count, then what was said before it came.

        The history goes to the newcomer at once, behind a count of its own, so nothing said
        after it joined can arrive before (or twice, inside) the replay; the room's coalesced
        count follows as for every join.
        """
        self._members.add(conn)
        self._sockets[conn.dialect].add(conn)
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
            due = self.count_pace.due(len(self._members))
            self._count_timer = loop.call_later(max(0.0, due - now), self._count_due)

    def _count_due(self) -> None:
        """The timer: the count goes now, unless changes since it was set put it off (a storm)."""
        loop = asyncio.get_running_loop()
        wait = self.count_pace.due(len(self._members)) - loop.time()
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
