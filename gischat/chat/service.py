"""What happens to each message: admission, validation, identity checks, then fan-out.

Routes stay thin and call into `ChatService`; the websocket session loop lives here too,
so the same rules apply to a message whether it came over a websocket or `PUT`. Every
message pays into its connection's rate buckets before anything else is done with it, and
anything whose cost grows with its size (images, layers, any large frame) is handed to the
worker processes of `gischat.work`, so the event loop only ever does a bounded amount of work
per frame.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from gischat.chat.charges import SlowDown, charge, pay
from gischat.chat.gauges import broker_state, live_state
from gischat.chat.origins import origin_allowed
from gischat.limits import AddressBook, ConnectionLimits, Rates, RateSettings
from gischat.observability.logs import (
    SUMMARY_INTERVAL,
    FloodFilter,
    RefusalLog,
    context,
)
from gischat.protocol import dialects, parsing
from gischat.protocol.dialects import AnyClientMessage, Dialect, Post, is_message_id
from gischat.protocol.frames import RAW_TEXT_KEY
from gischat.protocol.messages import (
    GeojsonMessage,
    ImageMessage,
    LikeMessage,
    Limits,
    NewcomerMessage,
    TextMessage,
)
from gischat.protocol.refusals import (
    ABUSE_REASON,
    BINARY_REASON,
    CLOSE_INVALID_DATA,
    CLOSE_POLICY_VIOLATION,
    INTERNAL_ERROR_REASON,
    ORIGIN_REASON,
    REPLY_REASON,
    InvalidText,
    Uncompliant,
)
from gischat.rooms.bans import Banned
from gischat.rooms.connection import Connection, client_address
from gischat.rooms.history import worth_keeping
from gischat.rooms.hub import Hub, Reserved
from gischat.work.handoff import HANDOFF_MIN
from gischat.work.pool import OFFLOAD_THRESHOLD, Prepared, Processor

logger = logging.getLogger("gischat.chat")

# Frames handled back to back before the receive loop lets other tasks run.
YIELD_EVERY = 16


class NicknameTaken(Exception):
    """A REST author used a nickname that a websocket registered in that room."""


class Refused(Exception):
    """A request is refused before it reaches a room: an HTTP status and a detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """Who may chat from where: browser origins, per-address caps, replies, the log's pace."""

    allowed_origins: list[str]
    log_rate: float
    max_nicknames_per_ip: int
    max_websockets_per_ip: int
    reply_threads: bool


class ChatService:
    """The instance's chat logic, shared by the websocket and REST routes."""

    def __init__(
        self, settings: ChatSettings, hub: Hub, limits: Limits, rates: RateSettings, processor: Processor
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.limits = limits
        self.rates = Rates.from_settings(rates)
        self.addresses = AddressBook(self.rates)
        self.processor = processor
        self.metrics = hub.metrics
        self.metrics.watch(live_state(hub, self.processor))
        if hub.broker.shared:
            self.metrics.watch(broker_state(hub.broker))
        # A socket whose nickname another node won (after a split) no longer holds one.
        hub.on_nickname_lost = lambda conn: self.addresses.drop_nickname(conn.address)
        self.refusal_log = RefusalLog(logger, settings.log_rate)
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.processor.start()
        await self.hub.start()
        self._housekeeping = asyncio.get_running_loop().create_task(self._summarise_logs())

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        await self.hub.stop()
        await self.processor.stop()
        self.refusal_log.flush()
        self.hub.churn.flush()

    async def _summarise_logs(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_INTERVAL)
            self.refusal_log.flush()
            self.hub.churn.flush()
            FloodFilter.flush_all()

    # Admission: who may open a websocket or post at all.

    def check_origin(self, origin: str | None, host: str | None) -> None:
        if not origin_allowed(origin, host, self.settings.allowed_origins):
            raise Refused(403, ORIGIN_REASON)

    async def serve(self, websocket: WebSocket, room: str, dialect: Dialect = Dialect.ROOM) -> None:
        """Run one websocket from handshake to goodbye; `dialect` is the route's (rooms or channels)."""
        address = client_address(websocket.client)
        try:
            if room not in self.hub.rooms:
                raise Refused(403, f"{dialect} {room!r} not found")
            self.check_origin(websocket.headers.get("origin"), websocket.headers.get("host"))
            self.check_address(room, address)
            limit = self.settings.max_websockets_per_ip
            if not self.addresses.open_websocket(address, limit):
                self.metrics.rate_limited.labels("websockets_per_ip").inc()
                raise Refused(429, f"too many connections from your address (max {limit})")
        except Refused as exc:
            logger.info(
                "%s: websocket to %r refused: %s",
                address,
                room,
                exc.detail,
                extra=context(address, room, exc.detail),
            )
            await deny(websocket, exc)
            return
        try:
            # Before the handshake ends: the history the socket is given is current, and nothing
            # said after the client sees its socket open is missed.
            await self.hub.attend(room)
            await websocket.accept()
            conn = self.hub.join(websocket, room, dialect)
            if conn.sink is not None:
                # Messages big enough for a file reach us undecoded (see `protocol.utf8`).
                conn.sink.receive_raw_text(HANDOFF_MIN)
            try:
                await self._receive_loop(conn)
            finally:
                self.hub.evict(conn)
                if conn.nickname is not None:
                    self.addresses.drop_nickname(address)
                await conn.stop()
        finally:
            self.addresses.close_websocket(address)

    async def _receive_loop(self, conn: Connection) -> None:
        handled = 0
        while True:
            if conn.backlogged:
                # It talks faster than it listens: stop reading it until it caught up.
                await conn.drained()
            # One message per call: nothing of it outlives the call, where a local of this loop
            # would keep the last one (up to MAX_FRAME_SIZE) for as long as the socket idles.
            if not await self._receive_one(conn):
                return
            handled += 1
            if handled % YIELD_EVERY == 0:
                # Frames that arrived together are handled without waiting; yield now and then
                # so the recipients' writers drain their queues and other sockets get a turn.
                await asyncio.sleep(0)

    async def _receive_one(self, conn: Connection) -> bool:
        """The socket's next message, handled; False once it is gone."""
        event = await conn.websocket.receive()
        if event["type"] == "websocket.disconnect":
            return False
        conn.messages_sent += 1  # what a moderator sees: every frame, refused ones too
        if conn.closing:
            return True  # dropped (too slow, abusive): its words no longer count
        text: str | bytes | None = event.get("text")
        if text is None:
            text = event.get(RAW_TEXT_KEY)  # a large text message, undecoded
        size = len(text) if text is not None else len(event.get("bytes") or b"")
        del event
        try:
            self._admit(conn, size)
            if text is None:
                raise Uncompliant(BINARY_REASON)
            # From here the frame is `_read`'s alone: one handed to a worker as a file is not
            # also kept by this call while the worker prepares it (up to MAX_FRAME_SIZE each).
            reading = self._read(conn, text)
            del text
            await self.handle(conn, await reading)
        except InvalidText as exc:
            self._invalid_text(conn, exc.reason)
        except parsing.Ignored:
            pass  # QField's own `exiter`: the server announces departures itself
        except SlowDown as exc:
            self.metrics.rate_limited.labels(exc.limit).inc()
            self._refuse(conn, exc.reason)
            self._strike(conn)
        except Uncompliant as exc:
            self._refuse(conn, exc.reason)
        except Exception:
            # A bug must cost one message, not the socket, and never the room.
            logger.exception(
                "%s in %r: error while handling a message",
                conn.peer,
                conn.room,
                extra=context(conn.peer, conn.room),
            )
            conn.refuse(INTERNAL_ERROR_REASON)
        return True

    def _buckets(self, conn: Connection) -> ConnectionLimits:
        if conn.limits is None:
            conn.limits = ConnectionLimits(self.rates, asyncio.get_running_loop().time())
        return conn.limits

    def _admit(self, conn: Connection, size: int) -> None:
        """Every frame, valid or not, pays for itself in messages and bytes."""
        self.metrics.bytes_received.inc(size)
        pay(self._buckets(conn), self.rates, size, asyncio.get_running_loop().time())

    def _charge(self, conn: Connection, kind: str | None) -> None:
        """Images and layers also pay per item; a large frame of unknown kind pays as a layer."""
        charge(self._buckets(conn), self.rates, kind, asyncio.get_running_loop().time())

    def _strike(self, conn: Connection) -> None:
        """Sustained abuse (refusal after refusal for going too fast) ends the connection."""
        if not self._buckets(conn).strikes.take(asyncio.get_running_loop().time()):
            logger.warning(
                "%s in %r: closed for sustained flooding",
                conn.peer,
                conn.room,
                extra=context(conn.peer, conn.room, ABUSE_REASON),
            )
            conn.drop(CLOSE_POLICY_VIOLATION, ABUSE_REASON, "abuse")

    def _invalid_text(self, conn: Connection, reason: str) -> None:
        """Not UTF-8: the connection is failed (RFC 6455), as the transport does for small ones."""
        self.refusal_log.refused(
            conn.peer, conn.room, reason, conn.refusals + 1, f"closed ({CLOSE_INVALID_DATA})"
        )
        conn.drop(CLOSE_INVALID_DATA, reason, "invalid_text")

    def _refuse(self, conn: Connection, reason: str) -> None:
        conn.refusals += 1
        self.metrics.refused(reason)
        self.refusal_log.refused(conn.peer, conn.room, reason, conn.refusals)
        conn.refuse(reason)

    async def _read(self, conn: Connection, text: str | bytes) -> AnyClientMessage | Prepared:
        """Parse a frame; large frames and heavy types are parsed and prepared off the loop.

        Undecoded ones (bytes) are all large: they go to a worker, their UTF-8 checked on the way."""
        if isinstance(text, bytes) or len(text) > OFFLOAD_THRESHOLD:
            # The type a large frame says it is, read in its first bytes only to pick the bucket it
            # pays into; the worker that parses it decides what it really is.
            kind = parsing.sniff_type(text)
            self._charge(conn, kind)
            with self.metrics.processing.labels("image" if kind == "image" else "geojson").time():
                processing = self.processor.process_frame(text, conn.dialect)
                del text  # the processor's alone (see `_receive_one`)
                return await processing
        message = dialects.parse_frame(text, self.limits, conn.dialect)
        if isinstance(message, GeojsonMessage | ImageMessage):
            # Cheap checks first: no worker time for a message that would be refused anyway.
            self.hub.check_author(conn, conn.room, message.author)
            self._charge(conn, message.type)
            with self.metrics.processing.labels(message.type).time():
                return await self.processor.process_message(message)
        return message

    async def handle(self, conn: Connection, message: AnyClientMessage | Prepared) -> None:
        """Act on one valid message from a websocket."""
        self.metrics.received.labels(message.kind if isinstance(message, Prepared) else message.type).inc()
        if isinstance(message, NewcomerMessage):
            await self._register(conn, message.newcomer, Post.of(message))
        elif isinstance(message, LikeMessage):
            self.hub.check_author(conn, conn.room, message.liker_author, "liker_author")
            # Only the liked author hears of it; nobody registered under that name, no delivery.
            self.hub.publish(conn.room, Post.of(message), to=message.liked_author)
        elif isinstance(message, Prepared):
            # The world moved on while a worker prepared it: the socket may have been dropped, or
            # its author's nickname registered by another.
            if conn.closing or conn not in self.hub.rooms[conn.room]:
                return
            self.hub.check_author(conn, conn.room, message.author)
            reply = self._reply_target(conn.room, message.reply)
            post = Post(message.kind, message.body, message.style, reply)
            self.hub.publish(conn.room, post, keep=worth_keeping(message.kind))
        else:
            self.hub.check_author(conn, conn.room, message.author)
            said = message.text if isinstance(message, TextMessage) else None
            post = Post.of(message, self._reply_target(conn.room, message.in_reply_to_id))
            self.hub.publish(conn.room, post, keep=worth_keeping(post.kind, said))

    def _reply_target(self, room: str, given: Any) -> str | None:
        """The id a reply points to, sent on (3.x, REPLY_THREADS) only when it names a recent message
        of this conversation; without REPLY_THREADS the key is accepted and forgotten."""
        if given is None or not self.settings.reply_threads:
            return None
        if not is_message_id(given) or not self.hub.rooms[room].replied_to(given):
            raise Uncompliant(REPLY_REASON)
        return str(given)

    async def _register(self, conn: Connection, nickname: str, payload: Post) -> None:
        """Per-address quotas on nicknames, then the room's own first-come rule (on every node)."""
        if not self.addresses.may_register(conn.address):
            raise SlowDown("registrations", self.rates.registrations.reason())
        limit = self.settings.max_nicknames_per_ip
        if conn.nickname is None and self.addresses.nicknames.get(conn.address, 0) >= limit:
            self.metrics.rate_limited.labels("nicknames_per_ip").inc()
            raise Uncompliant(f"newcomer: too many nicknames registered from your address (max {limit})")
        await self.hub.register(conn, nickname, payload)
        if conn.nickname is not None:  # it may have gone while the claim was decided
            self.addresses.add_nickname(conn.address)

    def check_address(self, room: str, address: str) -> None:
        """A banned client address (the real one, behind a trusted proxy) is refused with 403."""
        ban = self.hub.bans.for_address(room, address)
        if ban is not None:
            raise Refused(403, ban.refusal())

    def check_post(self, room: str, address: str, origin: str | None, host: str | None) -> None:
        """Whether this address may post a text to `room` now (origin, bans, then its rate)."""
        self.check_origin(origin, host)
        self.check_address(room, address)
        if not self.addresses.may_put(address):
            self.metrics.rate_limited.labels("put").inc()
            raise Refused(429, self.rates.puts.reason())

    async def post_text(self, room: str, body: Any) -> Post:
        """A text message from REST: same rules as a websocket's, author not registered by anyone.

        Returns the post as broadcast, for the route to echo in its own dialect."""
        if isinstance(body, dict):
            body = {"type": "text", **body}
            if body["type"] != "text":
                raise Uncompliant("type: only 'text' messages can be sent here")
        message = parsing.parse_object(body, self.limits)
        assert isinstance(message, TextMessage)
        try:
            self.hub.check_nickname(room, message.author, "author")
        except Banned as exc:
            raise Refused(403, exc.reason) from None
        except Reserved as exc:
            raise NicknameTaken(exc.reason) from None
        if self.hub.taken(room, message.author):
            raise NicknameTaken(f"author '{message.author}' is registered by a user of room '{room}'")
        if message.in_reply_to_id is not None and self.settings.reply_threads:
            # The room's recent messages, the reply's possible targets, whether or not anyone is here.
            await self.hub.attend(room)
        post = Post.of(message, self._reply_target(room, message.in_reply_to_id))
        self.hub.publish(room, post, keep=worth_keeping("text", message.text))
        logger.info("text posted over HTTP to %r by %r", room, message.author, extra=context(room=room))
        return post


async def deny(websocket: WebSocket, refusal: Refused) -> None:
    """Refuse a handshake with an HTTP status and a JSON detail, where the server allows it."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse({"detail": refusal.detail}, status_code=refusal.status)
        )
    else:
        await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=refusal.detail)
