"""Fan-out between server processes, behind one small interface.

A room's messages are published to the broker and come back to every process that holds
sockets of that room, which then hands them to its local sockets. With the default
`memory://` broker there is one process and "coming back" is a plain function call, so a
message reaches local sockets in the same event-loop step it was published in.

`publish` never waits: it hands the envelope over in call order, and that order is the
order everyone sees (one sender's messages, or an `exiter` before the next `newcomer` of
the same nickname). A networked broker (Redis, in a later release) keeps the same promise
by appending to one ordered outgoing queue that a single task drains; it plugs in behind
the same three methods, chosen by URL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Envelope:
    """One serialised message for a room; `to` narrows delivery to one nickname (likes).

    `keep` marks what people said (as opposed to the room's bookkeeping): it goes into the
    room's history as well.
    """

    payload: str
    to: str | None = None
    keep: bool = False


Deliver = Callable[[str, Envelope], None]


class Broker(Protocol):
    """Where a room's messages go to reach every process that serves the room."""

    async def start(self, deliver: Deliver) -> None:
        """Begin handing published envelopes to `deliver(room, envelope)`."""

    async def stop(self) -> None:
        """Release connections; nothing is delivered afterwards."""

    def publish(self, room: str, envelope: Envelope) -> None:
        """Send an envelope to every process that serves `room`, this one included, in call order."""


class MemoryBroker:
    """Single-process broker: publishing is delivering."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def stop(self) -> None:
        self._deliver = None

    def publish(self, room: str, envelope: Envelope) -> None:
        if self._deliver is not None:
            self._deliver(room, envelope)


def create_broker(url: str) -> Broker:
    """Pick the broker implementation from its URL scheme."""
    scheme = url.split("://", 1)[0]
    if scheme != "memory":  # settings validation refuses other schemes first
        raise ValueError(f"unsupported broker URL scheme {scheme!r}")
    return MemoryBroker()
