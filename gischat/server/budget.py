"""Read budgets: how fast a websocket peer is read, and how much it may make the server hold.

Two limits apply below the app, per connection and per client address (the real one behind a
trusted proxy), so that no client, and no crowd behind one address, can make the server read,
hold or decode more than its share:

- a rate (a `TokenBucket` that may go into debt): bytes per second with a burst. A peer that sends faster is not refused, it is
  read slower: reading pauses until its allowance has grown back (TCP backpressure does the
  rest). A classroom behind one NAT address sending photos only ever waits a moment.
- a held-bytes cap per address (`Share`): a large frame reserves its declared length when its
  header arrives, before any of its payload is read, and gives it back once the app has taken
  the message. A frame that does not fit waits (reading paused) until earlier ones are done, so
  twenty uploads from one address hold at most the cap, not twenty frames' worth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gischat.limits import TokenBucket


@dataclass(frozen=True, slots=True)
class ReadSettings:
    """The read budgets; a rate of 0 turns that rate off."""

    read_rate: int
    read_burst: int
    read_rate_per_ip: int
    read_burst_per_ip: int
    max_held_bytes_per_ip: int


class Share:
    """One client address: its read pace, the bytes its connections hold, who waits for room."""

    __slots__ = ("cap", "held", "pace", "sockets", "waiters")

    def __init__(self, settings: ReadSettings, now: float) -> None:
        self.pace = TokenBucket(settings.read_rate_per_ip, settings.read_burst_per_ip, now)
        self.cap = settings.max_held_bytes_per_ip
        self.held = 0
        self.sockets = 0
        # Connections waiting for room, in arrival order: each is called back when bytes are freed.
        self.waiters: list[Callable[[], None]] = []

    def reserve(self, size: int, waiter: Callable[[], None]) -> bool:
        """Hold `size` bytes for a frame, or queue `waiter` to be called when some are freed.

        A frame larger than the cap still goes through alone (nothing else held), so a frame
        within MAX_FRAME_SIZE is never refused here, only made to wait its turn.
        """
        if self.held + size <= self.cap or self.held == 0:
            self.held += size
            return True
        if waiter not in self.waiters:
            self.waiters.append(waiter)
        return False

    def release(self, size: int) -> list[Callable[[], None]]:
        """Give back `size` bytes; the waiters to call back (in order), who may now fit."""
        self.held -= size
        waiters, self.waiters = self.waiters, []
        return waiters


class Shares:
    """The shares of the addresses with open websockets, made on their first and gone with their last."""

    def __init__(self, settings: ReadSettings) -> None:
        self.settings = settings
        self.by_address: dict[str, Share] = {}

    def join(self, address: str, now: float) -> Share:
        share = self.by_address.get(address)
        if share is None:
            share = self.by_address[address] = Share(self.settings, now)
        share.sockets += 1
        return share

    def leave(self, address: str, share: Share, waiter: Callable[[], None]) -> None:
        if waiter in share.waiters:
            share.waiters.remove(waiter)
        share.sockets -= 1
        if share.sockets <= 0:
            self.by_address.pop(address, None)
