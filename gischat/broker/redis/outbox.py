"""This node's commands to Redis, in call order: queued, sent in pipelined batches by one task,
confirmed when their own event comes back through the channel.

`publish` never waits, and the order of calls is the order every node sees; so every command goes
through this one queue, which a single task drains. Commands whose event has not come back yet
are kept: if Redis goes away, what they would have delivered to this node's sockets is delivered
locally instead, so nobody here misses what was said while Redis was leaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError, ReadOnlyError

from gischat.broker.base import Envelope
from gischat.broker.redis.connection import Client

logger = logging.getLogger("gischat.broker")


@dataclass(slots=True, eq=False)  # compared by identity: the outbox takes out the very one
class Command:
    """One script call in the outgoing queue, with what to deliver locally if its fate is unknown."""

    script: str
    keys: list[str]
    args: list[Any]
    future: asyncio.Future[Any] | None = None
    local: tuple[str, Envelope] | None = None  # what this node's sockets would have got
    n: int = 0
    channel: str = ""  # the channel its event comes back on (its own node confirms it there)
    on_result: Any = field(default=None)
    # Writes the event's header as the command is sent (`Outbox.drain`): how far this node has
    # read, and what it has published, then (`barrier.py`).
    stamp: Callable[[Command], None] | None = None
    seq: int = 0  # a message: its number in its room's sequence, once Redis ran it
    # Whether its event comes back to this node (a message to a room it does not read does not:
    # Redis's answer confirms it instead).
    echo: bool = True


class Outbox:
    """The ordered queue of one node's commands, and the rooms whose counts are due."""

    def __init__(self) -> None:
        self.queued: list[Command] = []
        self.inflight: list[Command] = []
        # Channel -> the commands whose event has not come back on it yet, in the order sent
        # (one channel's events come back in that order; several channels' may not, on a cluster).
        self.unconfirmed: dict[str, deque[Command]] = {}
        self.dirty: set[str] = set()  # rooms whose socket count changed since the last counts
        # Room channel -> the last number Redis gave one of this node's messages there.
        self.published: dict[str, int] = {}
        # This node's messages confirmed in the last LATELY seconds, with when (`lately`).
        self._lately: deque[tuple[float, Command]] = deque()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()  # the drainer has nothing left to send
        self.n = 0  # this node's commands, numbered

    def number(self) -> int:
        """The number of the next command of this node (it comes back in its event's header)."""
        self.n += 1
        return self.n

    def send(self, command: Command) -> None:
        self.queued.append(command)
        if command.local is not None:
            self.unconfirmed.setdefault(command.channel, deque()).append(command)
        self.wake.set()

    def send_first(self, command: Command) -> None:
        """Ahead of everything queued (the command that registers the node again)."""
        self.queued.insert(0, command)
        self.dirty.clear()

    def counts_changed(self, room: str) -> None:
        self.dirty.add(room)
        self.wake.set()

    def confirm(self, channel: str, n: int) -> None:
        """This node's command `n` came back on `channel`: so did all before it sent there."""
        waiting = self.unconfirmed.get(channel)
        while waiting and waiting[0].n <= n:
            self._confirmed(waiting.popleft())

    def _confirmed(self, command: Command) -> None:
        if command.script != "emit":
            return
        now = time.monotonic()
        lately = self._lately
        lately.append((now, command))
        while lately and lately[0][0] < now - LATELY:
            lately.popleft()

    def lately(self) -> list[Command]:
        """This node's messages confirmed in the last LATELY seconds."""
        now = time.monotonic()
        found = [command for at, command in self._lately if at >= now - LATELY]
        self._lately.clear()
        return found

    def covered(self, channel: str, seq: int) -> None:
        """A room's history was loaded as of `seq`: this node's messages Redis ran by then are
        there, and their events, sent before this node heard the room, never come back to it."""
        waiting = self.unconfirmed.get(channel)
        if waiting:
            kept = [command for command in waiting if not 0 < command.seq <= seq]
            waiting.clear()
            waiting.extend(kept)

    def let_go(self, channel: str) -> None:
        """This node stopped reading `channel`: its messages there are confirmed by Redis's
        answer from now on (those it answered already are)."""
        waiting = self.unconfirmed.get(channel)
        if waiting:
            for command in waiting:
                command.echo = False
            kept = [command for command in waiting if command.seq == 0]
            waiting.clear()
            waiting.extend(kept)

    def pending(self) -> list[Command]:
        """The commands whose event has not come back, in the order they were sent."""
        return sorted((command for waiting in self.unconfirmed.values() for command in waiting), key=_number)

    def abandon(self) -> list[tuple[str, Envelope]]:
        """Redis is away: answer every waiting caller with None, drop the queue, and return what
        this node's sockets were owed by commands whose event never came back."""
        owed = [command.local for command in self.pending() if command.local is not None]
        self.unconfirmed.clear()
        for command in [*self.inflight, *self.queued]:
            if command.future is not None and not command.future.done():
                command.future.set_result(None)
        self.inflight = []
        self.queued = []
        self.dirty.clear()
        return owed

    async def drain(
        self,
        client: Client,
        sha: dict[str, str],
        counts_command: Callable[[set[str]], Command],
        describe: Callable[[BaseException], str],
    ) -> None:
        """The one task that talks to Redis for this node: whatever is queued, in order, pipelined."""
        while True:
            while not self.queued and not self.dirty:
                self.idle.set()
                self.wake.clear()
                await self.wake.wait()
            self.idle.clear()
            if self.dirty:
                rooms, self.dirty = self.dirty, set()
                self.queued.append(counts_command(rooms))
            batch = self._next_batch()
            self.inflight = batch
            pipe = client.pipeline(transaction=False)
            for command in batch:
                if command.stamp is not None:
                    command.stamp(command)
                pipe.evalsha(sha[command.script], len(command.keys), *command.keys, *command.args)
            results = await pipe.execute(raise_on_error=False)
            self.inflight = []
            for command, result in zip(batch, results, strict=True):
                if isinstance(result, NoScriptError | ReadOnlyError):
                    # Redis lost its scripts (restarted, flushed), or is a primary no longer (a
                    # failover behind one address): start over, wherever the primary now is.
                    raise result
                if isinstance(result, Exception):
                    logger.error("broker: %s failed: %s", command.script, describe(result))
                    result = 0
                else:
                    self._answered(command, result)
                settle(command, result)

    def _next_batch(self) -> list[Command]:
        """What is queued, up to a command that presence hangs on (a claim, a release, a
        registration): that one goes alone, once Redis answered everything before it, and what
        comes after it once it is answered. On a cluster the commands of one batch run on their
        shards at once; these ones must follow what this node said before them (their `newcomer`
        or `exiter` after its messages), and what it says after them must follow them."""
        queued = self.queued
        end = len(queued)
        for i, command in enumerate(queued):
            if command.script in SEQUENCED:
                end = i if i > 0 else 1
                break
        batch, self.queued = queued[:end], queued[end:]
        if self.queued:
            self.wake.set()
        return batch

    def _answered(self, command: Command, result: Any) -> None:
        if command.script == "emit" and isinstance(result, int) and result > 0:
            command.seq = result
            if result > self.published.get(command.channel, 0):
                self.published[command.channel] = result
        if not command.echo and command.local is not None:
            self._ran(command)

    def _ran(self, command: Command) -> None:
        """Redis ran a command whose event this node will not see: it is confirmed."""
        with contextlib.suppress(ValueError, KeyError):
            self.unconfirmed[command.channel].remove(command)
            self._confirmed(command)


# Seconds a message confirmed by Redis is still published again if the session ends: a primary
# that fails over may have confirmed it without passing it on to the replica that replaces it.
LATELY = 2.0

# The scripts whose event others order a room's messages by (`barrier.py`).
SEQUENCED = frozenset({"claim", "release", "sync"})


def _number(command: Command) -> int:
    return command.n


def settle(command: Command, result: Any) -> None:
    """A command's answer: to its callback and its waiting caller."""
    if command.script in ("claim", "release") and result in (0, -1, -2):
        command.local = None  # nothing was published: nothing to make up for
    if command.on_result is not None:
        command.on_result(result)
    if command.future is not None and not command.future.done():
        command.future.set_result(result)
