"""Rooms: who is connected, who has registered which nickname, and local delivery.

The hub owns every room of the instance. Outgoing room messages go through the broker and
come back through `deliver`, which pushes one frame per dialect (built once per broadcast) to
each local socket's queue. Membership changes are synchronous, so the counts and the user list never include
a socket that is gone, whichever way it went. With several nodes (a shared broker) the
rooms hold this node's sockets and nicknames; the broker mirrors the other nodes', and
counts, user lists and identity checks add both.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from starlette.websockets import WebSocket

from gischat.broker import Broker, Envelope, MemoryBroker
from gischat.observability.metrics import Metrics
from gischat.protocol import dialects
from gischat.protocol.dialects import AUTHORED_TYPES, Dialect, Post
from gischat.protocol.refusals import Uncompliant
from gischat.rooms.connection import Connection
from gischat.rooms.history import History

logger = logging.getLogger("gischat.rooms")


def nickname_key(nickname: str) -> str:
    """Registry key: "Alice", "alice" and the fullwidth form of "Alice" are one nickname."""
    return unicodedata.normalize("NFKC", nickname).casefold()


# Ids of a conversation's recent messages a reply may point to (REPLY_THREADS): far more than
# anyone scrolls back to, a few hundred kB per room at most.
MAX_REPLY_TARGETS = 4096
# The least time between two `nb_users` broadcasts per socket of the room: a write costs ~10 µs,
# so a join storm spends at most about 5 % of the loop on counts, whatever the room's size.
COUNT_SECONDS_PER_SOCKET = 0.0002


class Room:
    """The local sockets of one conversation (room X and channel X) and the nicknames they registered."""

    __slots__ = (
        "_count_timer",
        "_last_count_sent",
        "_metrics",
        "connections",
        "count_interval",
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
        self.count_interval = count_interval
        self._count_timer: asyncio.TimerHandle | None = None
        self._last_count_sent = float("-inf")

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
        """Schedule an `nb_users` broadcast, at most one per `count_interval`.

        A burst of joins would otherwise cost a broadcast to the whole room per join
        (1,000 joins, half a million sends). The first change after a quiet spell goes out
        on the next loop turn; changes within the interval share one trailing broadcast that
        carries the latest count. The interval is NB_USERS_INTERVAL, or longer in a room so
        large that one broadcast costs more than a small share of it (2 s at 10,000 sockets).
        """
        if self._count_timer is not None:
            return
        loop = asyncio.get_running_loop()
        # A broadcast costs about a write per socket: in a large room the interval grows with it,
        # so that counts take a small share of the loop however many sockets join at once.
        interval = max(self.count_interval, len(self.connections) * COUNT_SECONDS_PER_SOCKET)
        delay = max(0.0, self._last_count_sent + interval - loop.time())
        self._count_timer = loop.call_later(delay, self._send_count)

    def _send_count(self) -> None:
        self._count_timer = None
        self._last_count_sent = asyncio.get_running_loop().time()
        self.deliver(Envelope(dialects.nb_users(self.total())))

    def close(self) -> None:
        if self._count_timer is not None:
            self._count_timer.cancel()
            self._count_timer = None


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """What the rooms of an instance are and how they behave."""

    rooms: list[str]
    nb_users_interval: float
    max_stored_messages: int
    max_stored_bytes: int
    geojson_style: bool
    reply_threads: bool
    send_queue_size: int
    send_queue_bytes: int


class Hub:
    """Every room of the instance, and the path from a sender to the recipients."""

    def __init__(self, settings: RoomSettings, broker: Broker, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.broker = broker
        self.metrics = metrics if metrics is not None else Metrics()
        remote = None if isinstance(broker, MemoryBroker) else broker.remote_count
        self.rooms = {
            name: Room(
                name,
                settings.nb_users_interval,
                History(settings.max_stored_messages, settings.max_stored_bytes),
                self.metrics,
                remote,
                send_style=settings.geojson_style,
                reply_threads=settings.reply_threads,
            )
            for name in settings.rooms
        }
        # Called when a socket loses its nickname without leaving (see `revoke`).
        self.on_nickname_lost: Callable[[Connection], None] | None = None

    async def start(self) -> None:
        await self.broker.start(self)

    async def stop(self) -> None:
        for room in self.rooms.values():
            room.close()
        await self.broker.stop()

    # What the broker calls (gischat.broker.Node).

    def deliver(self, room: str, envelope: Envelope) -> None:
        target = self.rooms.get(room)
        if target is not None:
            target.deliver(envelope)

    def claim_settled(self, room: str, key: str, nickname: str) -> None:
        """This node's claim won, as the ordered event stream says: the nickname is the socket's
        from this point of the stream on, so a like right behind the `newcomer` finds it even
        before the answer to the claim itself comes back on the command connection."""
        target = self.rooms.get(room)
        if target is None:
            return
        conn = target.pending.get(key)
        if conn is not None and conn.nickname is None and conn in target.connections:
            conn.nickname = nickname
            target.nicknames[key] = conn

    def remote_changed(self, room: str) -> None:
        target = self.rooms.get(room)
        if target is not None:
            target.count_changed()

    def local_count(self, room: str) -> int:
        target = self.rooms.get(room)
        return len(target.connections) if target is not None else 0

    def local_nicknames(self) -> list[tuple[str, str, str]]:
        return [
            (room.name, key, conn.nickname)
            for room in self.rooms.values()
            for key, conn in room.nicknames.items()
            if conn.nickname is not None
        ]

    def revoke(self, room: str, key: str, reason: str) -> None:
        target = self.rooms.get(room)
        conn = target.nicknames.pop(key, None) if target is not None else None
        if conn is None:
            return
        logger.warning("%s in %r: nickname %r lost to another node", conn.peer, room, conn.nickname)
        conn.nickname = None
        if self.on_nickname_lost is not None:
            self.on_nickname_lost(conn)
        conn.refuse(reason)

    def reset_history(self, room: str, posts: list[Post]) -> None:
        target = self.rooms.get(room)
        if target is not None:
            target.history.clear()
            for post in posts:
                target.history.add(post)
                if target.replies is not None:
                    target.remember_id(post.id)

    # What the chat service calls.

    def publish(self, room: str, post: Post, to: str | None = None, keep: bool = False) -> None:
        self.broker.publish(room, Envelope(post, to, keep))

    def count(self, room: str) -> int:
        """Open sockets of a room, all nodes together."""
        return self.rooms[room].total()

    def users(self, room: str) -> list[str]:
        """Registered nicknames of a room on every node, sorted case-insensitively."""
        target = self.rooms[room]
        names = [conn.nickname for conn in target.nicknames.values() if conn.nickname is not None]
        names.extend(self.broker.remote_users(room))
        return sorted(names, key=lambda name: (name.casefold(), name))

    def taken(self, room: str, nickname: str) -> bool:
        """Whether a socket (of any node) registered this nickname in the room, or is registering it."""
        key = nickname_key(nickname)
        target = self.rooms[room]
        return (
            key in target.nicknames
            or key in target.pending
            or self.broker.remote_owner(room, key) is not None
        )

    def join(self, websocket: WebSocket, room: str, dialect: Dialect) -> Connection:
        conn = Connection(
            websocket,
            room,
            dialect,
            max_messages=self.settings.send_queue_size,
            max_bytes=self.settings.send_queue_bytes,
            on_overflow=self._dropped,
        )
        target = self.rooms[room]
        target.welcome(conn)
        self.broker.count_changed(room)
        logger.info(
            "%s joined %r over the %s route (%d connected)", conn.peer, room, dialect, len(target.connections)
        )
        return conn

    def _dropped(self, conn: Connection, cause: str) -> None:
        self.metrics.dropped.labels(cause).inc()
        self.evict(conn)

    def evict(self, conn: Connection) -> None:
        """Take a socket out of its room now; tell the room if it had a nickname."""
        room = self.rooms[conn.room]
        if conn not in room.connections:
            return
        room.connections.discard(conn)
        room.sockets[conn.dialect].discard(conn)
        room.count_changed()
        self.broker.count_changed(room.name)
        nickname = conn.nickname
        if nickname is not None:
            key = nickname_key(nickname)
            if room.nicknames.get(key) is conn:
                del room.nicknames[key]
                self.broker.release(room.name, key, nickname, dialects.exiter(nickname))
        logger.info("%s left %r (%d connected)", conn.peer, room.name, len(room.connections))

    async def register(self, conn: Connection, nickname: str, payload: Post) -> None:
        """Give a socket its nickname in its room, first come first served, and announce it.

        With the memory broker this completes in the calling loop step. With a shared broker
        the claim is decided in Redis, ordered after everything this node published before it.
        """
        room = self.rooms[conn.room]
        if conn.nickname is not None:
            raise Uncompliant(f"newcomer: this connection is already registered as '{conn.nickname}'")
        if self.taken(room.name, nickname):
            raise Uncompliant(f"newcomer: '{nickname}' is already taken in this room")
        key = nickname_key(nickname)
        room.pending[key] = conn
        try:
            won = await self.broker.claim(room.name, key, nickname, payload)
        finally:
            room.pending.pop(key, None)
        if not won:
            raise Uncompliant(f"newcomer: '{nickname}' is already taken in this room")
        if conn.nickname == nickname:
            return  # settled already by the broker's event (`claim_settled`)
        if conn not in room.connections:
            # It went while the claim was on its way: give the nickname back at once.
            self.broker.release(room.name, key, nickname, dialects.exiter(nickname))
            return
        conn.nickname = nickname
        room.nicknames[key] = conn
        logger.info("%s registered as %r in %r", conn.peer, nickname, room.name)

    def check_author(self, conn: Connection | None, room: str, author: str, field: str = "author") -> None:
        """Nobody speaks under a nickname another socket registered; registered sockets keep theirs."""
        if conn is not None and conn.nickname is not None:
            if author != conn.nickname:
                raise Uncompliant(f"{field}: this connection is registered as '{conn.nickname}'")
            return
        if self.taken(room, author):
            raise Uncompliant(f"{field}: '{author}' is registered by another user in this room")
