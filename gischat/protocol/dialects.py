"""The two dialects of the chat, and a message written once for both.

One conversation is served over two routes. `/room/{r}/ws` speaks the 2.x dialect (QTribu
1.1/1.2): `{"type", keys...}`. `/channel/{c}/ws` speaks the 3.x dialect (QChat 1.x, the QField
plugin): `{"type", "id", "timestamp", keys..., ["in_reply_to_id"]}`, and knows three more types
(position, model, script). Clients of both build frozen dataclasses from each frame, so every
frame carries exactly its dialect's keys.

A `Post` is one message as the server accepted it: its type, the server's id and timestamp,
and its keys serialised once as JSON text. Each dialect's frame is a concatenation around that
text, made at most once per post and dialect (never per recipient), and only for a dialect
some recipient speaks. Brokers carry a post in `encode()`'s form, so every node renders the
same id and timestamp for its own sockets.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any, TypeAlias, cast

from gischat.protocol import channel_messages as channel_models
from gischat.protocol import messages as models
from gischat.protocol import parsing
from gischat.protocol.frames import Outgoing


class Dialect(StrEnum):
    """Which wire a socket speaks, chosen by the route it opened."""

    ROOM = "room"  # 2.x: /room/{r}/ws
    CHANNEL = "channel"  # 3.x: /channel/{c}/ws


# What each dialect's clients may send. Position, model and script exist on channels only; a
# room socket sending them gets the unknown-type refusal it always got.
ROOM_TYPES: dict[str, type[models.WireMessage]] = dict(models.CLIENT_MODELS)
CHANNEL_TYPES: dict[str, type[models.WireMessage]] = {
    **models.CLIENT_MODELS,
    "position": channel_models.PositionMessage,
    "model": channel_models.ModelMessage,
    "script": channel_models.ScriptMessage,
}
CHANNEL_ONLY_TYPES = frozenset(CHANNEL_TYPES) - frozenset(ROOM_TYPES)
# What people say (as opposed to bookkeeping): what a reply may point to.
AUTHORED_TYPES = frozenset({"text", "image", "geojson", "crs", "bbox", "position", "model", "script"})
# The QField plugin says `exiter` itself before it closes: dropped without a word on channels
# (the server announces departures), still refused on rooms as a server-only type.
IGNORED_TYPES: dict[Dialect, frozenset[str]] = {
    Dialect.ROOM: frozenset(),
    Dialect.CHANNEL: frozenset({"exiter"}),
}
CLIENT_TYPES: dict[Dialect, dict[str, type[models.WireMessage]]] = {
    Dialect.ROOM: ROOM_TYPES,
    Dialect.CHANNEL: CHANNEL_TYPES,
}


# Every message a client of either dialect may send.
AnyClientMessage: TypeAlias = (
    models.ClientMessage
    | channel_models.PositionMessage
    | channel_models.ModelMessage
    | channel_models.ScriptMessage
)


def parse_frame(text: str, limits: models.Limits, dialect: Dialect) -> AnyClientMessage:
    """One frame of a socket of `dialect` as a validated message (see `parsing.parse_frame`)."""
    message = parsing.parse_frame(text, limits, CLIENT_TYPES[dialect], IGNORED_TYPES[dialect])
    return cast(AnyClientMessage, message)


def parse_object(data: Any, limits: models.Limits, dialect: Dialect) -> AnyClientMessage:
    message = parsing.parse_object(data, limits, CLIENT_TYPES[dialect], IGNORED_TYPES[dialect])
    return cast(AnyClientMessage, message)


def new_id() -> str:
    """A message id as the 3.x dialect writes it: a lowercase hyphenated UUID4."""
    return str(uuid.uuid4())


def is_message_id(value: Any) -> bool:
    """Whether `value` is an id this server could have given (a canonical UUID string)."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


class Post:
    """One message as accepted: type, id, timestamp, and its keys written once.

    `body` is the JSON text of the keys after `type` without braces (`"author":"a",...`),
    identical in both dialects. `style` is a layer's `,"style":...` tail (the 2.x dialect drops
    it when GEOJSON_STYLE is off) and `reply` the id a 3.x reply points to (REPLY_THREADS).
    """

    __slots__ = ("_channel", "_room", "body", "id", "kind", "reply", "style", "timestamp")

    def __init__(
        self,
        kind: str,
        body: str,
        style: str | None = None,
        reply: str | None = None,
        *,
        id: str | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.kind = kind
        self.body = body
        self.style = style
        self.reply = reply
        self.id = new_id() if id is None else id
        self.timestamp = int(time.time()) if timestamp is None else timestamp
        self._room: Outgoing | None = None
        self._channel: Outgoing | None = None

    @classmethod
    def of(cls, message: models.WireMessage, reply: str | None = None) -> Post:
        """A validated message, accepted now: it gets its id and timestamp here."""
        body, style = message.body()
        return cls(str(getattr(message, "type")), body, style, reply)  # noqa: B009

    @property
    def size(self) -> int:
        """Characters this post holds (what history budgets count)."""
        return len(self.body) + (len(self.style) if self.style is not None else 0)

    def frame(self, dialect: Dialect, send_style: bool = True) -> Outgoing | None:
        """The frame for sockets of `dialect`, built on first use; None: the dialect lacks the type.

        `send_style` is the instance's GEOJSON_STYLE, constant for a process: the 2.x frame is
        cached with the first value asked for.
        """
        if dialect is Dialect.CHANNEL:
            frame = self._channel
            if frame is None:
                frame = self._channel = Outgoing.of(self.channel_text())
            return frame
        frame = self._room
        if frame is None:
            if self.kind in CHANNEL_ONLY_TYPES:
                return None
            frame = self._room = Outgoing.of(self.room_text(send_style))
        return frame

    def room_text(self, send_style: bool = True) -> str:
        style = self.style if send_style and self.style is not None else ""
        return f'{{"type":"{self.kind}",{self.body}{style}}}'

    def channel_text(self) -> str:
        style = self.style if self.style is not None else ""
        reply = f',"in_reply_to_id":"{self.reply}"' if self.reply is not None else ""
        return (
            f'{{"type":"{self.kind}","id":"{self.id}","timestamp":{self.timestamp},'
            f"{self.body}{style}{reply}}}"
        )

    def encode(self) -> str:
        """The post as one string for a broker: a short header line, then the JSON text as is."""
        style = -1 if self.style is None else len(self.style)
        head = f"{self.kind} {self.id} {self.timestamp} {style} {self.reply or '-'}"
        return f"{head}\n{self.body}{self.style or ''}"

    @classmethod
    def decode(cls, text: str, timestamp: int | None = None) -> Post:
        """Back from `encode()`; `timestamp` overrides the stored one (a departure Redis announced
        for a dead node carries the time it was announced, not the time of the claim).

        Raises ValueError for a text `encode()` did not write."""
        head, _, rest = text.partition("\n")
        try:
            kind, id_, stamp, style_length, reply = head.split(" ")
            cut = len(rest) - max(int(style_length), 0)
        except ValueError:
            # Not written by `encode()`: history a gischat 2.x node left in Redis, say.
            raise ValueError(f"not a stored post: {head[:40]!r}") from None
        return cls(
            kind,
            rest[:cut],
            rest[cut:] if int(style_length) >= 0 else None,
            None if reply == "-" else reply,
            id=id_,
            timestamp=int(stamp) if timestamp is None else timestamp,
        )


def uncompliant(reason: str) -> Post:
    return Post.of(models.UncompliantMessage(reason=reason))


def nb_users(count: int) -> Post:
    return Post("nb_users", f'"nb_users":{count}')


def newcomer(nickname: str) -> Post:
    return Post.of(models.NewcomerMessage.model_construct(newcomer=nickname))


def exiter(nickname: str) -> Post:
    return Post.of(models.ExiterMessage(exiter=nickname))
