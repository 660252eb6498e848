"""Matrix -> gischat: the homeserver's transactions, turned into messages of the rooms.

A transaction is handed over once across the nodes (its id is claimed in the broker's ledger), and
its events are queued per portal so that what a Matrix user said reaches the room in order even
when an image before it takes a while to fetch and resize. Each Matrix user speaks under a
nickname of the bridge's namespace, the same on every node, and under the rules every gischat
user follows (`ChatService.relay`): a refusal is answered in Matrix by the bot, in reply.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import OrderedDict
from typing import Any

import orjson

from gischat.broker.base import Control, Order, OrderKind
from gischat.broker.ledger import Ledger
from gischat.chat.relay import Relay
from gischat.chat.service import ChatService
from gischat.limits import ConnectionLimits
from gischat.matrix import names
from gischat.matrix.config import MatrixSettings
from gischat.matrix.homeserver import DownloadRefused, Homeserver
from gischat.matrix.outbound import EVENT_MEMORY, Outbound
from gischat.matrix.portals import Portals
from gischat.matrix.queue import WorkQueue
from gischat.protocol import dialects
from gischat.protocol.dialects import AnyClientMessage, Dialect
from gischat.protocol.messages import Limits, TextMessage, nickname_key
from gischat.protocol.refusals import Uncompliant

logger = logging.getLogger("gischat.matrix")
# A transaction id is remembered this long: the homeserver retries well within it.
TXN_MEMORY = 24 * 3600.0
# A Matrix user keeps their nickname in a room this long after it was given.
NICKNAME_MEMORY = 30 * 24 * 3600.0
# Numbers tried after a nickname's base before giving up (`Jane-matrix`, `Jane2-matrix`...).
MAX_NICKNAME_TRIES = 50
# Matrix users whose rate buckets a process keeps (the least recent go first).
MAX_PARTICIPANTS = 10_000
# At most one "not relayed" notice per Matrix user per this many seconds.
NOTICE_INTERVAL = 10.0
WGS84_WKT = (
    'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563]],'
    'CS[ellipsoidal,2],AXIS["geodetic latitude (Lat)",north],AXIS["geodetic longitude (Lon)",east],'
    'UNIT["degree",0.0174532925199433],ID["EPSG",4326]]'
)
TEXT_TYPES = frozenset({"m.text", "m.notice", "m.emote"})
GEOJSON_TYPES = frozenset({"application/geo+json", "application/vnd.geo+json"})


class Inbound:
    """The Matrix -> gischat half of the bridge."""

    def __init__(
        self,
        settings: MatrixSettings,
        homeserver: Homeserver,
        portals: Portals,
        ledger: Ledger,
        control: Control,
        chat: ChatService,
        limits: Limits,
        outbound: Outbound,
    ) -> None:
        self.settings = settings
        self.homeserver = homeserver
        self.portals = portals
        self.ledger = ledger
        self.control = control
        self.chat = chat
        self.relay = Relay(chat)
        self.limits = limits
        self.outbound = outbound
        self.queues: dict[str, WorkQueue[dict[str, Any]]] = {}
        self._buckets: OrderedDict[str, ConnectionLimits] = OrderedDict()
        self._noticed: dict[str, float] = {}
        self.received = 0

    def queue(self, room: str) -> WorkQueue[dict[str, Any]]:
        queue = self.queues.get(room)
        if queue is None:
            name = f"from Matrix to {room!r}"
            queue = self.queues[room] = WorkQueue(name, self.settings.matrix_queue_size, self.perform)
        return queue

    async def transaction(self, txn_id: str, events: list[Any]) -> None:
        """A transaction the homeserver pushed: its events queued, once across the nodes.

        Most transactions hold only the bridge's own events coming back: those are sorted out
        first, and cost no claim in the ledger."""
        wanted = [(room, event) for event in events if (room := self.room_for(event)) is not None]
        if not wanted or not await self.ledger.first(f"txn:{txn_id}", TXN_MEMORY):
            return  # nothing for us, or retried after we answered, or handed to another node already
        for room, event in wanted:
            self.queue(room).put(event, _size(event))

    def room_for(self, event: Any) -> str | None:
        """The bridged room an event is for, None for what the bridge leaves alone: its own
        events (never echoed), other rooms' and other types."""
        if not isinstance(event, dict):
            return None
        room_id, sender, kind = event.get("room_id"), event.get("sender"), event.get("type")
        if not (isinstance(room_id, str) and isinstance(sender, str) and isinstance(kind, str)):
            return None
        if kind == "m.room.member" and event.get("state_key") == self.settings.bot:
            return self._invited(room_id, event)
        if self.settings.ours(sender):
            return None
        room = self.portals.room_of(room_id)
        if room is None or kind not in ("m.room.message", "m.reaction", "m.room.redaction"):
            return None
        if not isinstance(event.get("content"), dict) or not isinstance(event.get("event_id"), str):
            return None
        return room

    def _invited(self, room_id: str, event: dict[str, Any]) -> str | None:
        """The bot invited into a room MATRIX_ROOM_IDS names: that room (its queue makes the bot
        join); other invitations are left alone."""
        content = event.get("content")
        if not isinstance(content, dict) or content.get("membership") != "invite":
            return None
        return next(
            (room for room, mapped in self.settings.matrix_room_ids.items() if mapped == room_id), None
        )

    async def perform(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        room_id = event["room_id"]
        room = self.portals.room_of(room_id)
        if room is None:
            return
        if kind == "m.room.member":  # the bot's invitation (`_invited`): it joins
            await self.portals.room_id(room)
            return
        if kind == "m.room.redaction":
            await self._redact(room, event)
            return
        self.received += 1
        sender = event["sender"]
        nickname = await self.nickname(room, room_id, sender)
        try:
            message, to = await self._message(room, nickname, event)
            if message is None:
                return
            post = await self.relay.relay(room, nickname, message, self._limits(sender), _size(event), to)
        except (Uncompliant, DownloadRefused) as exc:
            reason = exc.reason if isinstance(exc, Uncompliant) else str(exc)
            self._refused(room, sender, event["event_id"], reason)
            return
        text = event["content"].get("body") if isinstance(message, TextMessage) else None
        await self.outbound.remember(room, event["event_id"], post.id, nickname, text)

    async def _message(
        self, room: str, nickname: str, event: dict[str, Any]
    ) -> tuple[AnyClientMessage | bytes | None, str | None]:
        """The gischat message an event says, and whom it goes to (a like), None: nothing to say."""
        content = event["content"]
        if event["type"] == "m.reaction":
            return await self._like(room, nickname, content)
        msgtype = content.get("msgtype")
        if content.get("m.new_content") is not None or not isinstance(content.get("body"), str):
            return None, None  # edits are not relayed: gischat messages cannot change
        if not isinstance(msgtype, str):
            # Any JSON may come from a Matrix client: a list here was a TypeError (unhashable, in
            # the set lookups below), counted by the portal's queue as a refusal of the homeserver.
            return None, None
        if msgtype in TEXT_TYPES:
            data = {"type": "text", "author": nickname, "avatar": None, "text": content["body"]}
            return dialects.parse_object(data, self.limits, Dialect.CHANNEL), None
        if msgtype == "m.location":
            return self._position(nickname, content), None
        if msgtype == "m.image":
            raw = await self.homeserver.download(
                str(content.get("url")), self.limits.max_image_length * 3 // 4
            )
            image = {
                "type": "image",
                "author": nickname,
                "avatar": None,
                "image_data": base64.b64encode(raw).decode(),
            }
            return dialects.parse_object(image, self.limits, Dialect.CHANNEL), None
        if msgtype == "m.file" and _is_geojson(content):
            return await self._layer(nickname, content), None
        return None, None

    def _position(self, nickname: str, content: dict[str, Any]) -> AnyClientMessage:
        uri = content.get("geo_uri")
        parts = uri[4:].split(";", 1)[0].split(",") if isinstance(uri, str) and uri.startswith("geo:") else []
        try:
            latitude, longitude = float(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            raise Uncompliant("m.location: not a geo: URI") from None
        data = {
            "type": "position",
            "author": nickname,
            "avatar": None,
            "crs_wkt": WGS84_WKT,
            "crs_authid": "EPSG:4326",
            "x": longitude,
            "y": latitude,
        }
        return dialects.parse_object(data, self.limits, Dialect.CHANNEL)

    async def _layer(self, nickname: str, content: dict[str, Any]) -> bytes:
        """A GeoJSON file as a layer's frame, for a worker to parse and check as any layer."""
        name = str(content.get("filename") or content.get("body") or "layer")
        for extension in (".geojson", ".json"):
            name = name.removesuffix(extension)
        data = await self.homeserver.download(str(content.get("url")), self.settings.max_frame_size)
        head = orjson.dumps(
            {
                "type": "geojson",
                "author": nickname,
                "avatar": None,
                "layer_name": name[:200] or "layer",
                "crs_wkt": WGS84_WKT,
                "crs_authid": "EPSG:4326",
            }
        )
        return head[:-1] + b',"geojson":' + data + b"}"

    async def _like(
        self, room: str, nickname: str, content: dict[str, Any]
    ) -> tuple[AnyClientMessage | None, str | None]:
        relation = content.get("m.relates_to")
        if not isinstance(relation, dict) or relation.get("rel_type") != "m.annotation":
            return None, None
        record = await self._record(relation.get("event_id"))
        if record is None or record.get("room") != room or not isinstance(record.get("text"), str):
            return None, None
        data = {
            "type": "like",
            "liker_author": nickname,
            "liked_author": record["author"],
            "message": record["text"],
        }
        return dialects.parse_object(data, self.limits, Dialect.CHANNEL), str(record["author"])

    async def _record(self, event_id: Any) -> dict[str, Any] | None:
        if not isinstance(event_id, str):
            return None
        stored = await self.ledger.get(f"event:{event_id}")
        record = json.loads(stored) if stored else None
        return record if isinstance(record, dict) else None

    async def _redact(self, room: str, event: dict[str, Any]) -> None:
        """A redaction (allowed by the homeserver's own rules) removes the message from the room's
        history, as a moderator's delete does, on every node."""
        redacts = event.get("redacts") or event["content"].get("redacts")
        record = await self._record(redacts)
        if record is None or record.get("room") != room:
            return
        post_id = str(record["post"])
        await self.ledger.put(f"redacted:{post_id}", "1", EVENT_MEMORY)  # already gone from Matrix
        self.control.order(Order(OrderKind.DELETE, room, {"id": post_id}))
        logger.info("matrix: a redaction removed a message from %r's history", room)

    async def nickname(self, room: str, room_id: str, mxid: str) -> str:
        """The nickname a Matrix user speaks under in a room: derived from their display name once,
        unique among Matrix users of the room, the same on every node."""
        known = await self.ledger.get(f"nickname:{room}:{mxid}")
        if known is not None:
            return known
        display = await self.homeserver.display_name(room_id, mxid)
        base = names.nickname_base(display, mxid, self.limits.max_author_length)
        for number in range(1, MAX_NICKNAME_TRIES + 1):
            candidate = names.matrix_nickname(base, number)
            holder = f"holder:{room}:{nickname_key(candidate)}"
            if (
                await self.ledger.first(holder, NICKNAME_MEMORY, mxid)
                or await self.ledger.get(holder) == mxid
            ):
                await self.ledger.put(f"nickname:{room}:{mxid}", candidate, NICKNAME_MEMORY)
                return candidate
        raise Uncompliant("author: no free nickname for this Matrix user")

    def _limits(self, mxid: str) -> ConnectionLimits:
        buckets = self._buckets.get(mxid)
        if buckets is None:
            buckets = self._buckets[mxid] = self.relay.limits()
            if len(self._buckets) > MAX_PARTICIPANTS:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(mxid)
        return buckets

    def _refused(self, room: str, mxid: str, event_id: str, reason: str) -> None:
        """One log line (within the refusal log's rate) and, at most every few seconds, a notice."""
        self.chat.metrics.refused(reason)
        self.chat.refusal_log.refused(mxid, room, reason, 1)
        now = time.monotonic()
        if now - self._noticed.get(mxid, -NOTICE_INTERVAL) >= NOTICE_INTERVAL:
            self._noticed[mxid] = now
            if len(self._noticed) > MAX_PARTICIPANTS:
                self._noticed.pop(next(iter(self._noticed)))
            self.outbound.notify(room, event_id, reason)


def _is_geojson(content: dict[str, Any]) -> bool:
    info = content.get("info")
    mimetype = info.get("mimetype") if isinstance(info, dict) else None
    name = str(content.get("filename") or content.get("body") or "").lower()
    # Looked up only when it is a string: a list or an object is unhashable (a TypeError).
    return (isinstance(mimetype, str) and mimetype in GEOJSON_TYPES) or name.endswith(".geojson")


def _size(event: dict[str, Any]) -> int:
    """What an event costs against its sender's byte rate: its content's size, a file's declared size."""
    content = event.get("content")
    if not isinstance(content, dict):
        return 0
    info = content.get("info")
    declared = info.get("size") if isinstance(info, dict) else None
    body = content.get("body")
    return (declared if isinstance(declared, int) and declared > 0 else 0) + (
        len(body) if isinstance(body, str) else 0
    )
