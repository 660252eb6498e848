"""A connection's named timers: at most one of each name, all cancelled together when it ends.

A websocket has no task of its own: its keepalive ping, the wait for a pong, for the peer's close
reply, for its last bytes to drain, and the end of a pause for its byte rate are loop timers,
each replaced when set again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

TimerName = Literal["ping", "pong", "close", "abort", "pace"]


class Timers:
    """The timers running for one connection, by name."""

    __slots__ = ("handles", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.handles: dict[TimerName, asyncio.TimerHandle] = {}

    def start(self, name: TimerName, delay: float, callback: Callable[..., object], *args: object) -> None:
        """Call `callback(*args)` in `delay` seconds, instead of what the timer `name` would have."""
        self.cancel(name)
        self.handles[name] = self.loop.call_later(delay, self._fire, name, callback, args)

    def _fire(self, name: TimerName, callback: Callable[..., object], args: tuple[object, ...]) -> None:
        self.handles.pop(name, None)
        callback(*args)

    def cancel(self, name: TimerName) -> bool:
        """Stop the timer `name`; whether it was running."""
        handle = self.handles.pop(name, None)
        if handle is None:
            return False
        handle.cancel()
        return True

    def __contains__(self, name: TimerName) -> bool:
        return name in self.handles

    def cancel_all(self) -> None:
        for handle in self.handles.values():
            handle.cancel()
        self.handles.clear()
