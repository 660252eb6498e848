"""The trail moderators leave: one log line, one count and one entry per action.

Moderation is power over other people's conversation, so every use of it is written down three
ways: a log line on the `gischat.moderation` logger (with LOG_FORMAT=json its moderator, action,
room, target and reason are JSON fields, for whatever collects the logs of every node), a
`gischat_moderation_actions` count by action in `/metrics`, and an entry in a bounded list
`GET /admin/audit` returns, newest first. The list is this process's only and is lost on
restart: the logs are the record; the list is for a moderator asking "who did what just now".
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from gischat.rooms.bans import utc_iso

logger = logging.getLogger("gischat.moderation")

# Actions remembered by `GET /admin/audit`: far more than a moderator reads back, a few hundred kB.
MAX_ACTIONS = 1000


@dataclass(frozen=True, slots=True)
class Action:
    """One moderator's action: when, who (the token's label), what, where, to whom, why."""

    at: float
    moderator: str
    action: str
    room: str | None
    target: str | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": utc_iso(self.at),
            "moderator": self.moderator,
            "action": self.action,
            "room": self.room,
            "target": self.target,
            "reason": self.reason,
        }


class AuditTrail:
    """The last `size` actions of this process, each also logged and counted."""

    def __init__(
        self, counter: Counter, size: int = MAX_ACTIONS, clock: Callable[[], float] = time.time
    ) -> None:
        self._counter = counter
        self._actions: deque[Action] = deque(maxlen=size)
        self.clock = clock

    def record(
        self,
        moderator: str,
        action: str,
        room: str | None,
        target: str | None = None,
        reason: str | None = None,
    ) -> Action:
        entry = Action(self.clock(), moderator, action, room, target, reason)
        self._actions.append(entry)
        self._counter.labels(action).inc()
        fields = {"moderator": moderator, "action": action, "room": room, "target": target, "reason": reason}
        logger.info(
            "moderation: %s by %s in %s on %s%s",
            action,
            moderator,
            repr(room) if room is not None else "every room",
            repr(target) if target is not None else "-",
            f" ({reason})" if reason else "",
            extra={key: value for key, value in fields.items() if value is not None},
        )
        return entry

    def actions(self) -> list[Action]:
        """Newest first."""
        return list(reversed(self._actions))
