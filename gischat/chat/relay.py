"""Messages from participants without a socket of ours (the Matrix bridge's users), under the rules
every gischat user follows: their own rates, bans on their nickname, and the same worker path for
images and layers; then into the room as any message."""

from __future__ import annotations

import asyncio

from gischat.chat.charges import charge, pay
from gischat.chat.service import ChatService
from gischat.limits import ConnectionLimits
from gischat.protocol.dialects import AnyClientMessage, Dialect, Post
from gischat.protocol.messages import GeojsonMessage, ImageMessage, TextMessage
from gischat.protocol.refusals import Uncompliant
from gischat.rooms.bans import Banned
from gischat.rooms.history import worth_keeping
from gischat.work.pool import Prepared


class Relay:
    """The way into the rooms for participants elsewhere, over the chat service's parts."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    def limits(self) -> ConnectionLimits:
        """Buckets for one participant (kept by the caller, as a socket keeps its own)."""
        return ConnectionLimits(self.chat.rates, asyncio.get_running_loop().time())

    async def relay(
        self,
        room: str,
        author: str,
        message: AnyClientMessage | str | bytes,
        buckets: ConnectionLimits,
        size: int,
        to: str | None = None,
    ) -> Post:
        """Say `message` in `room` as `author`, who pays into `buckets` for `size` characters.

        A `str` or `bytes` is a layer's frame, parsed by a worker, which must come out a layer by
        `author`. The caller chose `author` in its own namespace, so it is not checked against the
        sockets' registry; bans on it are. `to`: a like, for that nickname only. Raises
        Uncompliant (SlowDown, Banned)."""
        chat = self.chat
        now = asyncio.get_running_loop().time()
        pay(buckets, chat.rates, size, now)
        ban = chat.hub.bans.for_nickname(room, author)
        if ban is not None:
            raise Banned("author", ban)
        if isinstance(message, str | bytes):
            charge(buckets, chat.rates, "geojson", now)
            with chat.metrics.processing.labels("geojson").time():
                outcome = await chat.processor.process_frame(message, Dialect.CHANNEL)
            if not isinstance(outcome, Prepared) or outcome.kind != "geojson" or outcome.author != author:
                raise Uncompliant("geojson: not a GeoJSON layer")
            post = Post(outcome.kind, outcome.body, outcome.style)
        elif isinstance(message, GeojsonMessage | ImageMessage):
            charge(buckets, chat.rates, message.type, now)
            with chat.metrics.processing.labels(message.type).time():
                prepared = await chat.processor.process_message(message)
            post = Post(prepared.kind, prepared.body, prepared.style)
        else:
            post = Post.of(message)
        chat.metrics.received.labels(post.kind).inc()
        said = message.text if isinstance(message, TextMessage) else None
        chat.hub.publish(room, post, to=to, keep=to is None and worth_keeping(post.kind, said))
        return post
