"""Rooms: who is connected, who has registered which nickname, and local delivery.

The hub owns every room of the instance. Outgoing room messages go through the broker and
come back through `deliver`, which pushes one frame per dialect (built once per broadcast) to
each local socket's queue. Membership changes are synchronous, so the counts and the user list never include
a socket that is gone, whichever way it went. With several nodes (a shared broker) the
rooms hold this node's sockets and nicknames; the broker mirrors the other nodes', and
counts, user lists and identity checks add both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket

from gischat.broker import Broker, Envelope
from gischat.broker.base import Order, OrderKind
from gischat.observability.logs import ChurnLog
from gischat.observability.metrics import Metrics
from gischat.protocol import dialects
from gischat.protocol.dialects import Dialect, Post
from gischat.protocol.messages import nickname_key
from gischat.protocol.refusals import CLOSE_POLICY_VIOLATION, KICKED_REASON, Uncompliant, close_reason
from gischat.rooms.bans import Ban, BanList, Banned, covers, utc_iso
from gischat.rooms.connection import Connection
from gischat.rooms.history import History
from gischat.rooms.room import Room

logger = logging.getLogger("gischat.rooms")


class Reserved(Uncompliant):
    """A client tried to register, or speak as, the nickname moderators announce under."""


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
    # LOG_RATE: the most join, leave and nickname lines a second (`ChurnLog`).
    log_rate: float = 10.0
    # ANNOUNCER_NAME while moderation is on (ADMIN_TOKENS): no client may register or use it.
    announcer_name: str | None = None
    # The end of the Matrix bridge's nicknames while it runs: no client may register or use one.
    reserved_suffix: str | None = None


class Hub:
    """Every room of the instance, and the path from a sender to the recipients."""

    def __init__(self, settings: RoomSettings, broker: Broker, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.broker = broker
        self.metrics = metrics if metrics is not None else Metrics()
        self.churn = ChurnLog(logger, settings.log_rate)
        remote = broker.remote_count if broker.shared else None
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
        # Told of what this node's people put into a room (said, liked, arrived, left), as posted:
        # the Matrix bridge relays it from the node that heard it, so once across the nodes.
        self.outlets: list[Callable[[str, Post, str | None], None]] = []
        # Told of every moderator's order this node carries out (the bridge redacts deleted messages).
        self.order_outlets: list[Callable[[Order], None]] = []
        self.bans = BanList()
        announcer = settings.announcer_name
        self.reserved = nickname_key(announcer) if announcer is not None else None
        suffix = settings.reserved_suffix
        self.reserved_suffix = nickname_key(suffix) if suffix else None
        self.node_name = broker.node_name

    async def start(self) -> None:
        await self.broker.start(self)
        for data in await self.broker.load_bans():
            try:
                self.bans.add(Ban.from_json(data))
            except ValueError as exc:
                logger.warning("a stored ban was skipped: %s", exc)

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
        target.grant(key, nickname)

    def remote_changed(self, room: str) -> None:
        target = self.rooms.get(room)
        if target is not None:
            target.count_changed()

    def local_count(self, room: str) -> int:
        target = self.rooms.get(room)
        return len(target) if target is not None else 0

    def local_nicknames(self) -> list[tuple[str, str, str]]:
        return [
            (room.name, key, nickname) for room in self.rooms.values() for key, nickname in room.nicknames()
        ]

    def revoke(self, room: str, key: str, reason: str) -> None:
        target = self.rooms.get(room)
        conn = target.holder(key) if target is not None else None
        if target is None or conn is None:
            return
        logger.warning("%s in %r: nickname %r lost to another node", conn.peer, room, conn.nickname)
        target.revoke(key)
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

    def obey(self, order: Order) -> None:
        """A moderator's order, carried out on this node's sockets and history."""
        try:
            if order.kind is OrderKind.KICK and order.room in self.rooms:
                self._kick(order.room, str(order.args["nickname"]), str(order.args.get("reason") or ""))
            elif order.kind is OrderKind.BAN:
                ban = Ban.from_json(order.args)
                self.bans.add(ban)
                self._close(
                    self._rooms(ban.room), lambda c: covers(ban, c.nickname, c.address), ban.close_reason()
                )
            elif order.kind is OrderKind.LIFT:
                self.bans.lift(str(order.args["id"]))
            elif order.kind is OrderKind.DELETE and order.room in self.rooms:
                self.rooms[order.room].history.remove(str(order.args["id"]))
        except (KeyError, ValueError) as exc:  # another node's order this one cannot read
            logger.warning("moderator's %s order ignored: %r", order.kind, exc)
            return
        for outlet in self.order_outlets:
            outlet(order)

    def _kick(self, room: str, nickname: str, reason: str) -> None:
        key = nickname_key(nickname)
        conn = self.rooms[room].holder(key)
        if conn is not None:
            self._close([self.rooms[room]], lambda other: other is conn, self.kicked(reason))

    @staticmethod
    def kicked(reason: str) -> str:
        """A kicked socket's close reason: `kicked by a moderator: <reason>` (trimmed to fit)."""
        return f"{KICKED_REASON}: {reason}" if reason else KICKED_REASON

    def _rooms(self, name: str | None) -> Iterable[Room]:
        if name is None:
            return list(self.rooms.values())
        return [self.rooms[name]] if name in self.rooms else []

    def _close(self, rooms: Iterable[Room], chosen: Callable[[Connection], bool], reason: str) -> None:
        """Close the chosen sockets with 1008: each leaves its room as any departing socket does."""
        for room in rooms:
            for conn in [conn for conn in room.members if chosen(conn)]:
                logger.info("%s in %r: closed by a moderator", conn.peer, room.name)
                conn.drop(CLOSE_POLICY_VIOLATION, close_reason(reason), "moderator")

    def describe(self, room: str) -> list[dict[str, Any]]:
        target = self.rooms.get(room)
        if target is None:
            return []
        return [
            {
                "nickname": conn.nickname,
                "address": conn.address,
                "dialect": str(conn.dialect),
                "connected_since": utc_iso(conn.connected_since),
                "messages_sent": conn.messages_sent,
                "node": self.node_name,
            }
            for conn in sorted(target.members, key=lambda conn: conn.connected_since)
        ]

    # What the chat service calls.

    def check_nickname(self, room: str, nickname: str, field: str) -> None:
        """Refuse the announcer's nickname and banned ones (as `field`: newcomer, author...)."""
        key = nickname_key(nickname)
        if self.reserved is not None and key == self.reserved:
            raise Reserved(f"{field}: '{nickname}' is reserved for the moderators' announcements")
        if self.reserved_suffix is not None and key.endswith(self.reserved_suffix):
            raise Reserved(
                f"{field}: nicknames ending in '{self.settings.reserved_suffix}' are Matrix users'"
            )
        ban = self.bans.for_nickname(room, nickname)
        if ban is not None:
            raise Banned(field, ban)

    def publish(self, room: str, post: Post, to: str | None = None, keep: bool = False) -> None:
        self.broker.publish(room, Envelope(post, to, keep))
        self._tell(room, post, to)

    def _tell(self, room: str, post: Post, to: str | None = None) -> None:
        for outlet in self.outlets:
            outlet(room, post, to)

    def _release(self, room: str, key: str, nickname: str) -> None:
        exiter = dialects.exiter(nickname)
        self.broker.release(room, key, nickname, exiter)
        self._tell(room, exiter)

    def count(self, room: str) -> int:
        """Open sockets of a room, all nodes together."""
        return self.rooms[room].total()

    def users(self, room: str) -> list[str]:
        """Registered nicknames of a room on every node, sorted case-insensitively."""
        target = self.rooms[room]
        names = [nickname for _, nickname in target.nicknames()]
        names.extend(self.broker.remote_users(room))
        return sorted(names, key=lambda name: (name.casefold(), name))

    def taken(self, room: str, nickname: str) -> bool:
        """Whether a socket (of any node) registered this nickname in the room, or is registering it."""
        key = nickname_key(nickname)
        target = self.rooms[room]
        return target.taken(key) or self.broker.remote_owner(room, key) is not None

    async def attend(self, room: str) -> None:
        """Return once this node receives the room's messages and holds its current history
        (with several nodes, each receives only the rooms it has sockets in: `Routing`)."""
        await self.broker.attend(room)

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
        target.join(conn)
        self.broker.count_changed(room)
        if self.churn.allows("joins"):
            logger.info(
                "%s joined %r over the %s route (%d connected)",
                conn.peer,
                room,
                dialect,
                len(target),
            )
        return conn

    def _dropped(self, conn: Connection, cause: str) -> None:
        self.metrics.dropped.labels(cause).inc()
        self.evict(conn)

    def evict(self, conn: Connection) -> None:
        """Take a socket out of its room now; tell the room if it had a nickname."""
        room = self.rooms[conn.room]
        departure = room.leave(conn)
        if departure is None:
            return
        self.broker.count_changed(room.name)
        if departure.nickname is not None:
            self._release(room.name, nickname_key(departure.nickname), departure.nickname)
        if self.churn.allows("leaves"):
            logger.info("%s left %r (%d connected)", conn.peer, room.name, len(room))

    async def register(self, conn: Connection, nickname: str, payload: Post) -> None:
        """Give a socket its nickname in its room, first come first served, and announce it.

        With the memory broker this completes in the calling loop step. With a shared broker
        the claim is decided in Redis, ordered after everything this node published before it.
        """
        room = self.rooms[conn.room]
        if conn.nickname is not None:
            raise Uncompliant(f"newcomer: this connection is already registered as '{conn.nickname}'")
        self.check_nickname(room.name, nickname, "newcomer")
        if self.taken(room.name, nickname):
            raise Uncompliant(f"newcomer: '{nickname}' is already taken in this room")
        key = nickname_key(nickname)
        room.claim(key, conn)
        try:
            won = await self.broker.claim(room.name, key, nickname, payload)
        finally:
            room.release_claim(key)
        if not won:
            raise Uncompliant(f"newcomer: '{nickname}' is already taken in this room")
        self._tell(room.name, payload)
        if conn.nickname == nickname:
            return  # settled already by the broker's event (`claim_settled`)
        if not room.grant(key, nickname, conn):
            # It went while the claim was on its way: give the nickname back at once.
            self._release(room.name, key, nickname)
            return
        if self.churn.allows("nicknames"):
            logger.info("%s registered as %r in %r", conn.peer, nickname, room.name)

    def check_author(self, conn: Connection | None, room: str, author: str, field: str = "author") -> None:
        """Nobody speaks under a nickname another socket registered; registered sockets keep theirs."""
        if conn is not None and conn.nickname is not None:
            if author != conn.nickname:
                raise Uncompliant(f"{field}: this connection is registered as '{conn.nickname}'")
            return
        self.check_nickname(room, author, field)
        if self.taken(room, author):
            raise Uncompliant(f"{field}: '{author}' is registered by another user in this room")
