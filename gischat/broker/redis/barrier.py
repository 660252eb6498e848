"""Messages held until this node has read what their sender had read: the newcomer before the
first thing it says.

A room's messages travel on the room's channel, numbered by the room's sequence; presence
(`newcomer`, `exiter`) and the rest on the node-wide channel, numbered by the node-wide one. On one
Redis both reach a node on one connection, in the order Redis ran them. On a Redis Cluster they
live on different shards and reach it on different connections, which nothing orders: a user's
first message could overtake the `newcomer` announcing them, on another node.

So each message carries `after`, the node-wide sequence number its node had reached when it sent
it (at least that of its sender's `newcomer`, which the claim's answer gives), and a node hands it
on only once it has read that far on the node-wide channel. Messages wait in one queue, in the
order they came, so a room's order is kept (a deletion waits behind the message it deletes). The
other way round, a `newcomer` or an `exiter` carries `sent`, the room's sequence number of its
node's last message there, and waits until this node has read the room that far (`routes.py`): a
user's last words before their `exiter`. Until it is handed on, this node has not reached it, and
the messages sent after it wait too. On one Redis nothing ever waits. If the events do not come (a shard lost mid-way, whose loss
soon ends the session), what waited goes on after `patience` seconds: late, never lost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class Barrier:
    """The node-wide sequence number this node has read to, and the messages waiting for it."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self.reached = 0
        self._read = 0  # the last node-wide event read
        self._blocked: set[int] = set()  # node-wide events read but not handed on yet (`block`)
        self._waiting: deque[tuple[int, Callable[[], None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def reset(self, base: int) -> None:
        """A new session, whose snapshot was taken at `base`: what waited goes on first."""
        self.release()
        self._blocked.clear()
        self.reached = self._read = base

    def pass_on(self, after: int, deliver: Callable[[], None]) -> None:
        """`deliver` now if this node has read to `after` and nothing waits, else in turn."""
        if not self._waiting and after <= self.reached:
            deliver()
            return
        self._waiting.append((after, deliver))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.patience, self.release)

    def block(self, seq: int) -> None:
        """Node-wide event `seq` (a `newcomer`, an `exiter`) waits for a message its node sent
        before it: this node has not reached it until it is handed on (`unblock`)."""
        self._blocked.add(seq)
        self.advance(self._read)

    def unblock(self, seq: int) -> None:
        self._blocked.discard(seq)
        self.advance(self._read)

    def advance(self, seq: int) -> None:
        """This node read the node-wide event numbered `seq`."""
        self._read = max(self._read, seq)
        reached = min(self._read, min(self._blocked) - 1) if self._blocked else self._read
        if reached > self.reached:
            self.reached = reached
        waiting = self._waiting
        while waiting and waiting[0][0] <= self.reached:
            waiting.popleft()[1]()
        if not waiting:
            self._stop_timer()

    def release(self) -> None:
        """Everything that waits goes on, in order."""
        self._stop_timer()
        waiting, self._waiting = self._waiting, deque()
        for _, deliver in waiting:
            deliver()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
