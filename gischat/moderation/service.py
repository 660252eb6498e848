"""What a moderator can do: list, kick, ban, lift, delete, announce; each checked, ordered, written down.

The routes (`gischat.web.moderation`) stay thin: they know who the moderator is (a token's
label) and hand the request here. Every action that changes something is an `Order` given to
the broker, which has every node (this one included) carry it out on its own sockets and
history (`Hub.obey`): the same path with one process or many. What can be checked before the
order goes out is checked here, on this node's view, which includes what the broker mirrors of
the others: the room exists, somebody holds the nickname, the message is in the history, the
ban is active.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gischat.broker.base import Control, Order, OrderKind
from gischat.chat.service import ChatService
from gischat.moderation.audit import Action, AuditTrail
from gischat.moderation.tokens import Gate, ModerationSettings
from gischat.protocol.dialects import Post
from gischat.protocol.messages import TextMessage
from gischat.protocol.refusals import first_problem
from gischat.rooms.bans import Ban, parse_address, utc_iso

# Longest ban: a year, in minutes.
MAX_BAN_MINUTES = 525_600
# Longest reason a moderator gives (it ends up in close frames, refusals and logs).
MAX_REASON_LENGTH = 200


class NotFound(Exception):
    """What the action names does not exist (404)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Invalid(Exception):
    """The action is not one that can be carried out as asked (422)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def ban_json(ban: Ban) -> dict[str, Any]:
    """A ban as the REST API shows it: times in ISO 8601 (UTC)."""
    return {**ban.to_json(), "until": utc_iso(ban.until), "created": utc_iso(ban.created)}


class ModerationService:
    """The moderators' actions on one instance, over the chat service's hub and broker."""

    def __init__(self, chat: ChatService, settings: ModerationSettings, control: Control) -> None:
        self.chat = chat
        self.hub = chat.hub
        self.control = control  # the broker's control channel: orders for every node
        self.settings = settings
        self.gate = Gate(settings)
        self.trail = AuditTrail(chat.metrics.moderation)

    def _room(self, room: str) -> None:
        if room not in self.hub.rooms:
            raise NotFound(f"room {room!r} not found")

    def _order(self, kind: OrderKind, room: str | None, args: dict[str, Any]) -> None:
        self.control.order(Order(kind, room, args))

    async def connections(self, room: str) -> list[dict[str, Any]]:
        """Every socket of the room: this node's, then the other nodes' that answered."""
        self._room(room)
        return self.hub.describe(room) + await self.control.gather(room)

    def kick(self, moderator: str, room: str, nickname: str, reason: str) -> None:
        self._room(room)
        if not self.hub.taken(room, nickname):
            raise NotFound(f"nobody is registered as {nickname!r} in room {room!r}")
        self._order(OrderKind.KICK, room, {"nickname": nickname, "reason": reason})
        self.trail.record(moderator, "kick", room, nickname, reason or None)

    def ban(
        self,
        moderator: str,
        *,
        nickname: str | None,
        address: str | None,
        room: str | None,
        minutes: int,
        reason: str,
    ) -> Ban:
        """Ban a nickname or an address (IP or CIDR) in one room or all; its sockets are closed at once."""
        if (nickname is None) == (address is None):
            raise Invalid("give exactly one of nickname and address")
        if address is not None:
            try:
                address = parse_address(address)
            except ValueError:
                raise Invalid(
                    f"address: {address[:60]!r} is not an IP address or network like 192.0.2.7 "
                    "or 198.51.100.0/24"
                ) from None
        if room is not None and room not in self.hub.rooms:
            raise Invalid(f"room: {room!r} is not a room of this instance")
        ban = Ban.make(
            nickname=nickname,
            address=address,
            room=room,
            seconds=minutes * 60,
            reason=reason,
            by=moderator,
            now=self.hub.bans.clock(),
        )
        self._order(OrderKind.BAN, room, ban.to_json())
        self.trail.record(moderator, "ban", room, nickname or address, reason or None)
        return ban

    def bans(self) -> list[Ban]:
        """The bans in force, oldest first."""
        return self.hub.bans.active()

    def lift(self, moderator: str, ban_id: str) -> Ban:
        ban = self.hub.bans.get(ban_id)
        if ban is None:
            raise NotFound(f"no active ban {ban_id[:64]!r}")
        self._order(OrderKind.LIFT, ban.room, {"id": ban.id})
        self.trail.record(moderator, "lift", ban.room, ban.nickname or ban.address)
        return ban

    async def delete(self, moderator: str, room: str, message_id: str) -> None:
        """Remove a message from the room's history (every node's): no newcomer or `/last` sees it again."""
        self._room(room)
        await self.hub.attend(room)  # the room's current history, whether or not anyone is here
        if message_id not in self.hub.rooms[room].history:
            raise NotFound(f"no message {message_id[:64]!r} in the history of room {room!r}")
        self._order(OrderKind.DELETE, room, {"id": message_id})
        self.trail.record(moderator, "delete", room, message_id)

    def announce(self, moderator: str, room: str, text: str) -> Post:
        """A text to the room from ANNOUNCER_NAME, sent and kept like anybody's."""
        self._room(room)
        if not text.strip():
            raise Invalid("text: must not be empty")
        body = {"author": self.settings.announcer_name, "avatar": None, "text": text}
        try:
            message = TextMessage.model_validate(body, context=self.chat.limits)
        except ValidationError as exc:
            raise Invalid(first_problem(exc)) from None
        post = Post.of(message)
        self.hub.publish(room, post, keep=True)
        self.trail.record(moderator, "announce", room, post.id)
        return post

    def audit(self) -> list[Action]:
        """This process's last actions, newest first."""
        return self.trail.actions()
