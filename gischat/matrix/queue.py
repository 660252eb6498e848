"""A portal's ordered, bounded queue of work, and the one task that works through it.

Each direction of each portal has one: what gischat users said goes to Matrix in the order they
said it, what Matrix users said reaches the room in theirs. The queue is bounded by count and by
characters; what does not fit is dropped, counted, and logged once per overflow, and nobody who
put work in ever waits. A job that fails for a reason that may pass (the homeserver is down or
slow, or asks us to slow down) is tried again after a growing pause, and the queue waits behind
it; a job the homeserver refuses for good is dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

import aiohttp
from mautrix.errors import IntentError, MatrixConnectionError, MatrixRequestError

logger = logging.getLogger("gischat.matrix")
J = TypeVar("J")
# Pauses between attempts of a job that may succeed later: doubling, up to the last.
FIRST_PAUSE = 0.5
LONGEST_PAUSE = 30.0
# Characters a queue holds at most, whatever its count (a few large layers must not pin memory).
MAX_QUEUE_CHARS = 64 * 1024 * 1024


class Link(StrEnum):
    """How the homeserver answered lately, as /status tells it."""

    STARTING = "starting"
    UP = "up"
    DOWN = "down"


def transient(exc: BaseException) -> bool:
    """Whether trying again later may succeed: the homeserver is away, overloaded or rate-limiting."""
    if isinstance(exc, IntentError) and exc.__cause__ is not None:
        return transient(exc.__cause__)
    if isinstance(exc, MatrixRequestError):
        status = getattr(exc, "http_status", 0)
        return status == 429 or status >= 500 or getattr(exc, "errcode", None) == "M_LIMIT_EXCEEDED"
    return isinstance(exc, aiohttp.ClientError | MatrixConnectionError | TimeoutError | OSError)


def describe(exc: BaseException) -> str:
    """An error as one short line: its type and the homeserver's error code, never a payload."""
    if isinstance(exc, IntentError) and exc.__cause__ is not None:
        return describe(exc.__cause__)
    code = getattr(exc, "errcode", None)
    status = getattr(exc, "http_status", None)
    return " ".join(str(part) for part in (type(exc).__name__, status, code) if part)


@dataclass
class Stats:
    """What a queue did, for /status and /metrics."""

    done: int = 0
    overflowed: int = 0
    failed: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class Entry(Generic[J]):
    job: J
    size: int
    queued_at: float = field(default_factory=time.monotonic)


class WorkQueue(Generic[J]):
    """One direction of one portal: jobs done in order by a single task, never blocking a sender."""

    def __init__(self, name: str, capacity: int, work: Callable[[J], Awaitable[None]]) -> None:
        self.name = name
        self.capacity = capacity
        self._work = work
        self._entries: deque[Entry[J]] = deque()
        self._chars = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._overflowing = False
        self.link = Link.STARTING
        self.stats = Stats()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"matrix {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def put(self, job: J, size: int = 0) -> bool:
        """Queue a job; False (counted, logged once per overflow) when the queue is full."""
        if len(self._entries) >= self.capacity or self._chars + size > MAX_QUEUE_CHARS:
            self.stats.overflowed += 1
            if not self._overflowing:
                self._overflowing = True
                logger.warning(
                    "matrix: %s queue full (%d waiting, homeserver %s): dropping what comes until it drains",
                    self.name,
                    len(self._entries),
                    self.link,
                )
            return False
        self._entries.append(Entry(job, size))
        self._chars += size
        self._idle.clear()
        self._wake.set()
        return True

    @property
    def waiting(self) -> int:
        return len(self._entries)

    @property
    def lag(self) -> float:
        """Seconds the oldest waiting job has waited."""
        return time.monotonic() - self._entries[0].queued_at if self._entries else 0.0

    async def drained(self) -> None:
        """Until the queue is empty and its last job done."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            if not self._entries:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            entry = self._entries[0]
            await self._attempt(entry.job)
            self._entries.popleft()
            self._chars -= entry.size
            if self._overflowing and len(self._entries) <= self.capacity // 2:
                self._overflowing = False
                logger.info("matrix: %s queue drained (%d dropped so far)", self.name, self.stats.overflowed)

    async def _attempt(self, job: J) -> None:
        pause = FIRST_PAUSE
        while True:
            try:
                await self._work(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.last_error = describe(exc)
                if transient(exc):
                    if self.link is not Link.DOWN:
                        logger.warning(
                            "matrix: homeserver unavailable (%s), %s waits", describe(exc), self.name
                        )
                    self.link = Link.DOWN
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, LONGEST_PAUSE)
                    continue
                self.stats.failed += 1
                logger.warning(
                    "matrix: %s: a job was refused by the homeserver: %s", self.name, describe(exc)
                )
                return
            else:
                if self.link is not Link.UP:
                    if self.link is Link.DOWN:
                        logger.info("matrix: homeserver answers again, %s resumes", self.name)
                    self.link = Link.UP
                self.stats.done += 1
                return
