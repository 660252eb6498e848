"""Fan-out between server processes, behind one small interface.

A room's messages are published to the broker and come back to every process (node) that
holds sockets of that room, which then hands them to its local sockets. With the default
`memory://` broker there is one node and "coming back" is a plain function call, so a
message reaches local sockets in the same event-loop step it was published in.

`publish` never waits: it hands the envelope over in call order, and that order is the
order everyone sees (one sender's messages, or an `exiter` before the next `newcomer` of
the same nickname). The Redis broker (`gischat.broker.redis`) keeps the same promise by
appending to one ordered outgoing queue that a single task drains, and adds what a shared
service needs: nickname claims decided in Redis, and a mirror of the other nodes' sockets
and nicknames, so that counts, user lists and identity checks are global without a round
trip per message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from gischat.broker.ledger import Ledger
from gischat.protocol.dialects import Post


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Which broker (`memory://`, `redis://...`) and how a shared one behaves."""

    broker_url: str
    redis_key_prefix: str
    node_timeout: float
    redis_reconnect_max_delay: float
    rooms: list[str]
    max_stored_messages: int
    max_stored_bytes: int
    # While Redis is away: what a node keeps of its users' messages for when it is back.
    outage_buffer_messages: int = 1000
    outage_buffer_seconds: float = 60.0
    # How long a node keeps reading a room's messages after its last socket there left.
    redis_room_linger: float = 30.0


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message for a conversation; `to` narrows delivery to one nickname (likes).

    `keep` marks what people said (as opposed to the room's bookkeeping): it goes into the
    room's history as well.
    """

    post: Post
    to: str | None = None
    keep: bool = False


class OrderKind(StrEnum):
    """What a moderator asks of every node."""

    KICK = "kick"  # close the sockets registered as args["nickname"] in `room`
    BAN = "ban"  # args: the ban (a dict, see gischat.rooms.bans); kept by a shared service
    LIFT = "lift"  # args["id"]: the ban to lift
    DELETE = "delete"  # args["id"]: the message to remove from `room`'s history


@dataclass(frozen=True, slots=True)
class Order:
    """A moderator's action, carried out by every node on its own sockets and history.

    `args` holds JSON values only: a shared broker sends commands to the other nodes as JSON.
    """

    kind: OrderKind
    room: str | None
    args: dict[str, Any] = field(default_factory=dict)


class Node(Protocol):
    """What a broker needs from the rooms of its process (the hub)."""

    def deliver(self, room: str, envelope: Envelope) -> None:
        """Hand an envelope to the local sockets of `room`."""

    def claim_settled(self, room: str, key: str, nickname: str) -> None:
        """This node's claim of a nickname was decided in its favour, at this point of the stream."""

    def remote_changed(self, room: str) -> None:
        """Other nodes' sockets in `room` changed: the room's count is due again."""

    def local_count(self, room: str) -> int:
        """Open sockets of `room` on this node."""

    def local_nicknames(self) -> list[tuple[str, str, str]]:
        """(room, nickname key, nickname) of every nickname registered on this node."""

    def revoke(self, room: str, key: str, reason: str) -> None:
        """A local socket loses its nickname (another node holds it): tell it why."""

    def reset_history(self, room: str, posts: list[Post]) -> None:
        """Replace a room's history with the shared one."""

    def obey(self, order: Order) -> None:
        """Carry out a moderator's command on this node's sockets and history."""

    def describe(self, room: str) -> list[dict[str, Any]]:
        """This node's sockets of `room`, for a moderator (JSON values only)."""


class Membership(Protocol):
    """The node in the shared service: joining and leaving it, and how it stands there."""

    @property
    def shared(self) -> bool:
        """Whether other nodes may serve the same rooms (counts, nicknames and history then add theirs)."""

    @property
    def node_name(self) -> str:
        """This node's name in a moderator's listing (`local` for a single process)."""

    @property
    def healthy(self) -> bool:
        """Whether this node is part of the shared service right now."""

    async def start(self, node: Node) -> None:
        """Begin handing published envelopes to `node.deliver(room, envelope)`."""

    async def stop(self) -> None:
        """Leave the service (others see this node's users go) and release connections."""

    def status(self) -> dict[str, Any] | None:
        """The broker's state for `/status` (None: a single process, nothing to say)."""


class Fanout(Protocol):
    """A room's messages to every node that serves the room."""

    def publish(self, room: str, envelope: Envelope) -> None:
        """Send an envelope to every node that serves `room`, this one included, in call order."""


class Routing(Protocol):
    """Which rooms' messages reach this node: an engine may carry to each node only the rooms it
    serves, so a room is attended before its history is read or a socket joins it."""

    async def attend(self, room: str) -> None:
        """Return once this node receives `room`'s messages and holds its current history. The
        node keeps receiving them while it has sockets there (`Presence.count_changed` tells),
        and a while after."""


class Presence(Protocol):
    """How many sockets each room has on the other nodes."""

    def count_changed(self, room: str) -> None:
        """The number of this node's sockets in `room` changed."""

    def remote_count(self, room: str) -> int:
        """Sockets of `room` on the other nodes."""


class Nicknames(Protocol):
    """The nickname registry of every room, first come first served across the nodes."""

    async def claim(self, room: str, key: str, nickname: str, payload: Post) -> bool:
        """Register `nickname` for this node, first come first served across nodes; on success
        `payload` (the `newcomer`) is published, ordered after everything published before."""

    def release(self, room: str, key: str, nickname: str, payload: Post) -> None:
        """This node's socket registered as `nickname` left: free it and publish `payload` (`exiter`)."""

    def remote_owner(self, room: str, key: str) -> str | None:
        """The nickname registered under `key` in `room` on another node, if any."""

    def remote_users(self, room: str) -> list[str]:
        """Nicknames registered in `room` on the other nodes."""


class Control(Protocol):
    """Moderators' orders, carried out by every node: the control channel between nodes."""

    def order(self, order: Order) -> None:
        """Have every node, this one included, carry out `order` (`Node.obey`), in call order
        with what is published. A shared broker also keeps bans (BAN, LIFT) for nodes to come."""

    async def load_bans(self) -> list[dict[str, Any]]:
        """The bans the shared service keeps (memory: none outlive the process)."""

    async def gather(self, room: str) -> list[dict[str, Any]]:
        """The other nodes' sockets of `room` (`Node.describe` on each), as far as they answer."""


class Broker(Membership, Fanout, Routing, Presence, Nicknames, Control, Protocol):
    """Every role of an engine, over its one connection: each part of the server is handed the
    roles it uses (the hub most of them, moderation `Control`, the Matrix bridge `Ledger` and
    `Control`), and asks; none tests which engine it got."""

    @property
    def ledger(self) -> Ledger:
        """What must happen once across the nodes (see `gischat.broker.ledger`)."""
