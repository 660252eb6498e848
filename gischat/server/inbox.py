"""What the app has not read yet: the ASGI `receive` side of a websocket.

Each message keeps the bytes it reserved in its address's budget (`server.budget`) until the app
is done with it, so the inbox holds them side by side. The protocol (`server.websocket`) decides
when reading pauses for an unread message; the inbox only hands messages over, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple


class Received(NamedTuple):
    """An ASGI event for the app, and the bytes of the budget it holds (0 for most)."""

    event: dict[str, Any]
    held: int


class Inbox:
    """Events the app has not taken yet, and the app waiting for the next one, if it is."""

    __slots__ = ("events", "loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: list[Received] = []
        self.waiter: asyncio.Future[Received] | None = None

    def put(self, event: dict[str, Any], held: int = 0) -> bool:
        """Hand `event` to the app: at once if it is waiting for one; else queued, and True."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            waiter.set_result(Received(event, held))
            return False
        self.events.append(Received(event, held))
        return True

    def pop(self) -> Received:
        """The oldest event queued (there is one)."""
        return self.events.pop(0)

    def wait(self) -> asyncio.Future[Received]:
        """The next event, for an app that found none queued."""
        waiter = self.waiter = self.loop.create_future()
        return waiter

    def clear(self) -> None:
        self.events = []
