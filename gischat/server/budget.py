"""Read budgets: how fast a websocket peer is read, and how much it may make the server hold.

Two limits apply below the app, per connection and per client address (the real one behind a
trusted proxy), so that no client, and no crowd behind one address, can make the server read,
hold or decode more than its share:

- a rate (a `TokenBucket` that may go into debt): bytes per second with a burst. A peer that
  sends faster is not refused, it is read slower: reading pauses until its allowance has grown
  back (TCP backpressure does the rest). A classroom behind one NAT address sending photos only
  ever waits a moment.
- a held-bytes cap per address (`Share`): a large frame reserves its declared length when its
  header arrives, before any of its payload is read, and gives it back once the app has taken
  the message. A frame that does not fit waits (reading paused) until earlier ones are done, so
  twenty uploads from one address hold at most the cap, not twenty frames' worth.

`Shares` are the addresses with open websockets; `ReadBudget` is one connection's side of both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from gischat.limits import TokenBucket

# Frames at least this large reserve their length in their address's held-bytes budget.
RESERVE_MIN = 64 * 1024


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


class ReadBudget:
    """One connection's side of the read budgets: its byte rate, and what it holds of its address's.

    A large frame reserves its length when its header is judged, before its payload is read
    (`reserve`). The reservation moves with the frame into the message being assembled
    (`delivered`), goes with the whole message to the app (`take_message`), and stays while the
    app works on it (`work_on`), until the app asks for the next message (`finish_work`).
    """

    __slots__ = ("assembling", "held", "loop", "pace", "pending", "reserving", "share", "waiter", "working")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, waiter: Callable[[], None], *, reserving: bool
    ) -> None:
        self.loop = loop
        # Called back when bytes of the share are freed: a frame that waited for room may fit now.
        self.waiter = waiter
        # With permessage-deflate the parser delivers frames inflated: their sizes cannot be matched
        # with the lengths their headers declared, so nothing is reserved.
        self.reserving = reserving
        self.pace: TokenBucket | None = None  # this connection's byte rate, under a guard that sets one
        self.share: Share | None = None  # its client address's, once the handshake named the address
        self.held = 0  # bytes reserved in the share, in all
        self.pending: list[int] = []  # reservations of frames the parser has not delivered yet
        self.assembling = 0  # bytes reserved by the frames of the message being assembled
        self.working = 0  # bytes reserved by the large message the app is working on

    def join(self, shares: Shares, address: str, now: float) -> None:
        """Count this connection's reads against its client address from now on."""
        self.share = shares.join(address, now)

    def leave(self, shares: Shares, address: str) -> None:
        """The connection is gone: give back everything it held, and leave its address's share."""
        if self.share is not None:
            self.release(self.held)
            shares.leave(address, self.share, self.waiter)

    def spend(self, now: float, size: int) -> float:
        """Charge a read of `size` bytes to both byte rates: how long reading should wait (0: not)."""
        wait = self.pace.spend(now, size) if self.pace is not None else 0.0
        if self.share is not None:
            wait = max(wait, self.share.pace.spend(now, size))
        return wait

    def reserve(self, length: int) -> bool:
        """Reserve a frame of `length` bytes whose header was just read; False: no room, it waits
        (the waiter is called back when some is freed)."""
        share = self.share
        if length < RESERVE_MIN or share is None or not self.reserving:
            return True
        if not share.reserve(length, self.waiter):
            return False
        self.held += length
        self.pending.append(length)
        return True

    def delivered(self, size: int) -> None:
        """The parser delivered a data frame of `size` bytes: a reserved one joins its message."""
        if self.pending and size >= RESERVE_MIN:
            self.assembling += self.pending.pop(0)

    def take_message(self) -> int:
        """The message is whole: the bytes its frames reserved, which now go with it."""
        held, self.assembling = self.assembling, 0
        return held

    def work_on(self, held: int) -> None:
        """The app took a message holding `held` bytes and works on it until it asks for the next."""
        self.working = held

    def finish_work(self) -> None:
        """The app asks for its next message: the one it worked on gives its bytes back."""
        if self.working:
            done, self.working = self.working, 0
            self.release(done)

    def release(self, size: int) -> None:
        """Give `size` reserved bytes back; connections waiting for room try again on the next turn."""
        if not size or self.share is None:
            return
        self.held -= size
        for waiter in self.share.release(size):
            self.loop.call_soon(waiter)
