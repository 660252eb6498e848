"""gischat -> Matrix: what this node's people say, relayed by this node, once.

The hub tells the bridge of everything this node puts into a room (`Hub.outlets`): an authored
message, a like, an arrival, a departure. Each becomes a job in its portal's queue, done by the
author's virtual user: so a message reaches Matrix once whichever node heard it, in its author's
order, and its `txnId` (the post's id) makes a retried send land once. What the bridge itself
brought in from Matrix (a nickname of the Matrix namespace) never goes back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import StrEnum

from mautrix.appservice import IntentAPI
from mautrix.types import EventID, RoomID

from gischat.broker.base import Order, OrderKind
from gischat.broker.ledger import Ledger
from gischat.matrix import convert
from gischat.matrix.homeserver import Homeserver
from gischat.matrix.names import is_matrix_nickname
from gischat.matrix.portals import Portals
from gischat.matrix.queue import WorkQueue
from gischat.protocol.dialects import AUTHORED_TYPES, Post

logger = logging.getLogger("gischat.matrix")
# How long the ledger remembers which Matrix event shows which gischat message (likes, redactions).
EVENT_MEMORY = 7 * 24 * 3600.0


class Action(StrEnum):
    SAY = "say"
    LIKE = "like"
    JOIN = "join"
    LEAVE = "leave"
    NOTICE = "notice"  # the bot tells a Matrix user their message was not relayed
    REDACT = "redact"  # a moderator deleted a message: the bot redacts what showed it in Matrix


@dataclass(frozen=True, slots=True)
class Job:
    action: Action
    room: str
    nickname: str  # whose virtual user acts (the bot for a notice)
    post: Post | None = None
    # A like: the liked author; a notice: the event it answers; a leave: the virtual user (the sweep's).
    target: str | None = None
    text: str | None = None  # a like: the liked text; a notice: what it says


def job_of(room: str, post: Post, to: str | None) -> Job | None:
    """The job a post of this node's becomes, None for what Matrix does not see."""
    if post.kind == "newcomer":
        nickname = _field(post, "newcomer")
        return None if is_matrix_nickname(nickname) else Job(Action.JOIN, room, nickname)
    if post.kind == "exiter":
        nickname = _field(post, "exiter")
        return None if is_matrix_nickname(nickname) else Job(Action.LEAVE, room, nickname)
    if post.kind == "like" and to is not None:
        fields = convert.post_fields(post.kind, post.body)
        liker = str(fields["liker_author"])
        if is_matrix_nickname(liker):
            return None
        return Job(
            Action.LIKE, room, liker, post, target=str(fields["liked_author"]), text=str(fields["message"])
        )
    if post.kind in AUTHORED_TYPES and to is None:
        author = _author(post)
        return None if author is None or is_matrix_nickname(author) else Job(Action.SAY, room, author, post)
    return None


def _field(post: Post, key: str) -> str:
    return str(convert.post_fields(post.kind, post.body)[key])


def _author(post: Post) -> str | None:
    """A post's author, read from the start of its body (always its first key) without parsing it all."""
    head = post.body[: 16 + 4 * 256]
    if not head.startswith('"author":"'):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(head, len('"author":'))
    except ValueError:
        return None
    return value if isinstance(value, str) else None


class Outbound:
    """The gischat -> Matrix half of the bridge: jobs per portal, done as the authors' virtual users."""

    def __init__(self, homeserver: Homeserver, ledger: Ledger, portals: Portals, capacity: int) -> None:
        self.homeserver = homeserver
        self.ledger = ledger
        self.portals = portals
        self.queues: dict[str, WorkQueue[Job]] = {}
        self.capacity = capacity

    def queue(self, room: str) -> WorkQueue[Job]:
        queue = self.queues.get(room)
        if queue is None:
            queue = self.queues[room] = WorkQueue(f"to Matrix from {room!r}", self.capacity, self.perform)
        return queue

    def outlet(self, room: str, post: Post, to: str | None) -> None:
        """What the hub calls for each post of this node: queue it, never wait, never raise."""
        if room not in self.queues:
            return  # not a bridged room
        job = job_of(room, post, to)
        if job is not None:
            self.queues[room].put(job, post.size)

    def notify(self, room: str, event_id: str, reason: str) -> None:
        """Tell a Matrix user, as the bot, why their message did not reach gischat."""
        self.queue(room).put(Job(Action.NOTICE, room, "", target=event_id, text=reason))

    async def perform(self, job: Job) -> None:
        room_id = await self.portals.room_id(job.room)
        if job.action is Action.SAY:
            await self._say(job, room_id)
        elif job.action is Action.LIKE:
            await self._like(job, room_id)
        elif job.action is Action.JOIN:
            await self.homeserver.as_puppet(job.nickname, room_id, _nothing)
        elif job.action is Action.LEAVE:
            await self.homeserver.leave(job.target or self.homeserver.settings.puppet(job.nickname), room_id)
        elif job.action is Action.REDACT:
            await self._redact(job, room_id)
        elif job.action is Action.NOTICE:
            content = {
                "msgtype": "m.notice",
                "body": f"Not relayed to gischat: {job.text}",
                "m.relates_to": {"m.in_reply_to": {"event_id": job.target}},
            }
            await self.homeserver.send(
                self.homeserver.bot, room_id, "m.room.message", content, f"notice-{job.target}"
            )

    async def _say(self, job: Job, room_id: str) -> None:
        post = job.post
        assert post is not None
        message = convert.message_event(post.kind, post.body, post.style)
        if message is None:
            return

        async def say(intent: IntentAPI) -> str:
            content = dict(message.content)
            if message.upload is not None:
                upload = message.upload
                mxc = await intent.upload_media(
                    upload.data, upload.mimetype, upload.filename, len(upload.data)
                )
                content["url"] = str(mxc)
            return await self.homeserver.send(
                intent, room_id, message.event_type, content, f"gischat-{post.id}"
            )

        event_id = await self.homeserver.as_puppet(job.nickname, room_id, say)
        await self.remember(job.room, event_id, post.id, job.nickname, message.text)

    async def remember(self, room: str, event_id: str, post_id: str, author: str, text: str | None) -> None:
        """Which Matrix event shows which gischat message, both ways, for likes and redactions."""
        record = json.dumps({"room": room, "post": post_id, "author": author, "text": text})
        await self.ledger.put(f"event:{event_id}", record, EVENT_MEMORY)
        await self.ledger.put(f"post:{post_id}", event_id, EVENT_MEMORY)
        if text is not None:
            await self.ledger.put(convert.said_key(room, author, text), event_id, EVENT_MEMORY)

    def order(self, order: Order) -> None:
        """What the hub calls for each moderator's order this node carries out (every node does):
        a deleted message is redacted in Matrix by one node, the first to claim it."""
        if order.kind is OrderKind.DELETE and order.room in self.queues:
            self.queues[order.room].put(Job(Action.REDACT, order.room, "", target=str(order.args.get("id"))))

    async def _redact(self, job: Job, room_id: str) -> None:
        event_id = await self.ledger.get(f"post:{job.target}")
        if event_id is None or not await self.ledger.first(f"redacted:{job.target}", EVENT_MEMORY):
            return  # it never went through Matrix, or another node redacts it
        await self.homeserver.bot.redact(
            RoomID(room_id), EventID(event_id), reason="deleted by a gischat moderator"
        )
        logger.info("matrix: a message deleted by a moderator was redacted in %r's portal", job.room)

    async def _like(self, job: Job, room_id: str) -> None:
        if job.post is None or job.target is None or job.text is None:
            return
        event_id = await self.ledger.get(convert.said_key(job.room, job.target, job.text))
        if event_id is None:
            return  # the liked message never went through Matrix (or long ago): nothing to react to
        post_id = job.post.id

        async def react(intent: IntentAPI) -> str:
            return await self.homeserver.send(
                intent, room_id, "m.reaction", convert.reaction(event_id), f"gischat-{post_id}"
            )

        await self.homeserver.as_puppet(job.nickname, room_id, react)


async def _nothing(intent: IntentAPI) -> None:
    """A join alone: `Homeserver.as_puppet` has joined the room before calling this."""
