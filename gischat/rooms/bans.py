"""Bans: who may not join or speak, by nickname or by client address, in one room or all, for a while.

A ban is made by a moderator (`gischat.moderation`) and reaches every node as an order
(`gischat.broker.base.Order`); each node keeps the active ones in its own `BanList`, checked
at the websocket handshake (addresses), at registration and for authors (nicknames), and on
`PUT`. A ban ends by itself: one whose `until` has passed is ignored and pruned on the next
look, so no timer runs for it. Bans are small and few (a troll at a time), so a look is a
plain scan, and it costs nothing while there are none.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gischat.protocol.messages import nickname_key
from gischat.protocol.refusals import Uncompliant

Clock = Callable[[], float]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def utc_iso(epoch: float) -> str:
    """`2026-11-26T16:20:00Z`: seconds since the epoch as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(int(epoch), tz=UTC).isoformat().replace("+00:00", "Z")


def parse_address(text: str) -> str:
    """An IP address or a CIDR network, written the canonical way; ValueError for anything else."""
    text = text.strip()
    if "/" in text:
        return str(ipaddress.ip_network(text, strict=False))
    return str(ipaddress.ip_address(text))


def network_of(address: str) -> Network:
    return ipaddress.ip_network(address, strict=False)


class Banned(Uncompliant):
    """A nickname or an address under a ban tried to register, speak or connect."""

    def __init__(self, field: str | None, ban: Ban) -> None:
        super().__init__(f"{field}: {ban.refusal()}" if field else ban.refusal())
        self.ban = ban


@dataclass(frozen=True, slots=True)
class Ban:
    """One ban: exactly one of `nickname` and `address` (an IP or a CIDR network); `room` None means
    every room; `until` and `created` are seconds since the epoch; `by` is the moderator's label."""

    id: str
    nickname: str | None
    address: str | None
    room: str | None
    until: float
    reason: str
    by: str
    created: float

    @classmethod
    def make(
        cls,
        *,
        nickname: str | None,
        address: str | None,
        room: str | None,
        seconds: float,
        reason: str,
        by: str,
        now: float,
    ) -> Ban:
        return cls(uuid.uuid4().hex, nickname, address, room, now + seconds, reason, by, now)

    def to_json(self) -> dict[str, Any]:
        """As orders and a shared broker carry it (JSON values only)."""
        return {
            "id": self.id,
            "nickname": self.nickname,
            "address": self.address,
            "room": self.room,
            "until": self.until,
            "reason": self.reason,
            "by": self.by,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: Any) -> Ban:
        """Back from `to_json()`; ValueError for anything else (another node's bug, a stale key)."""
        try:
            ban = cls(
                id=str(data["id"]),
                nickname=_optional(data.get("nickname")),
                address=_optional(data.get("address")),
                room=_optional(data.get("room")),
                until=float(data["until"]),
                reason=str(data.get("reason") or ""),
                by=str(data.get("by") or "?"),
                created=float(data.get("created") or 0.0),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a ban: {exc!r}") from None
        if (ban.nickname is None) == (ban.address is None):
            raise ValueError("a ban names exactly one of a nickname and an address")
        if ban.address is not None:
            network_of(ban.address)  # raises ValueError
        return ban

    def refusal(self) -> str:
        """What a refused client is told: `banned until <ISO>: <reason>`."""
        return f"banned until {utc_iso(self.until)}" + (f": {self.reason}" if self.reason else "")

    def close_reason(self) -> str:
        """What a socket this ban closes is told (before `close_reason` trims it to fit)."""
        return f"banned by a moderator until {utc_iso(self.until)}" + (
            f": {self.reason}" if self.reason else ""
        )

    def covers_room(self, room: str) -> bool:
        return self.room is None or self.room == room


def _optional(value: Any) -> str | None:
    return None if value is None else str(value)


class BanList:
    """This node's active bans, by id; `clock` (seconds since the epoch) is there for tests."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._bans: dict[str, Ban] = {}
        # Per ban: the nickname key or the network it matches, worked out once.
        self._keys: dict[str, str] = {}
        self._networks: dict[str, Network] = {}

    def __len__(self) -> int:
        return len(self.active())

    def add(self, ban: Ban) -> None:
        self._bans[ban.id] = ban
        if ban.nickname is not None:
            self._keys[ban.id] = nickname_key(ban.nickname)
        if ban.address is not None:
            self._networks[ban.id] = network_of(ban.address)

    def lift(self, ban_id: str) -> Ban | None:
        """Remove a ban; the ban, or None when there was no such active ban."""
        self.prune()
        ban = self._bans.pop(ban_id, None)
        self._keys.pop(ban_id, None)
        self._networks.pop(ban_id, None)
        return ban

    def get(self, ban_id: str) -> Ban | None:
        self.prune()
        return self._bans.get(ban_id)

    def active(self) -> list[Ban]:
        """Bans in force now, oldest first."""
        self.prune()
        return sorted(self._bans.values(), key=lambda ban: ban.created)

    def prune(self) -> None:
        if not self._bans:
            return
        now = self.clock()
        for ban_id in [ban_id for ban_id, ban in self._bans.items() if ban.until <= now]:
            del self._bans[ban_id]
            self._keys.pop(ban_id, None)
            self._networks.pop(ban_id, None)

    def for_nickname(self, room: str, nickname: str) -> Ban | None:
        """The ban in force on `nickname` in `room` (case- and width-insensitive), if any."""
        if not self._keys:
            return None
        self.prune()
        key = nickname_key(nickname)
        return next(
            (self._bans[i] for i, k in self._keys.items() if k == key and self._bans[i].covers_room(room)),
            None,
        )

    def for_address(self, room: str, address: str) -> Ban | None:
        """The ban in force on a client address (the real one, behind a trusted proxy) in `room`, if any."""
        if not self._networks:
            return None
        self.prune()
        ip = _ip(address)
        if ip is None:
            return None
        for ban_id, network in self._networks.items():
            ban = self._bans[ban_id]
            if ip.version == network.version and ip in network and ban.covers_room(room):
                return ban
        return None


def covers(ban: Ban, nickname: str | None, address: str) -> bool:
    """Whether a socket (its nickname, if registered, and its address) falls under `ban`, any room."""
    if ban.nickname is not None:
        return nickname is not None and nickname_key(nickname) == nickname_key(ban.nickname)
    ip = _ip(address)
    network = network_of(ban.address) if ban.address is not None else None
    return ip is not None and network is not None and ip.version == network.version and ip in network


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address as an IP (an IPv4-mapped IPv6 address as its IPv4 one); None for "?" and such."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
