"""Logging that a flood cannot turn into a flood of log lines.

Two layers. `RefusalLog` decides at the call site: each connection gets its first few refusal
lines logged, and every line of all connections together comes out of one bucket, so one
client cannot spend everybody's share. `FloodFilter` sits on the log handlers and caps every
line (uvicorn's access and handshake lines included) at a rate. Whatever either of them holds
back is counted and reported in one summary line per interval.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from typing import ClassVar

from gischat.limits import TokenBucket

SUMMARY_INTERVAL = 10.0
# Refusal lines logged per connection before it is only counted.
LINES_PER_CONNECTION = 3


class RefusalLog:
    """Refusals worth a line: the first few per connection, at most `rate` per second overall."""

    def __init__(self, logger: logging.Logger, rate: float) -> None:
        self.logger = logger
        self._bucket = TokenBucket(rate, max(rate * 3, 1.0), time.monotonic())
        self._held: Counter[str] = Counter()

    def refused(self, peer: str, room: str, reason: str, seen: int) -> None:
        """Log (or count) the `seen`-th refusal of one connection."""
        if seen <= LINES_PER_CONNECTION and self._bucket.take(time.monotonic()):
            self.logger.info("%s in %r: uncompliant: %s", peer, room, reason)
        else:
            self._held[reason.split(":", 1)[0]] += 1

    def flush(self) -> None:
        """One line for everything held back since the last flush."""
        if not self._held:
            return
        total = sum(self._held.values())
        common = ", ".join(f"{kind} x{count}" for kind, count in self._held.most_common(3))
        self._held.clear()
        self.logger.warning("%d refusals not logged in the last %.0f s (%s)", total, SUMMARY_INTERVAL, common)


class FloodFilter(logging.Filter):
    """A handler filter letting at most `rate` lines per second through (bursts of 5 s worth).

    Summary lines of what was dropped come out through `flush_all`, which the app calls
    periodically; they pass the filter unconditionally.
    """

    _instances: ClassVar[weakref.WeakSet[FloodFilter]] = weakref.WeakSet()

    def __init__(self, rate: float = 10.0) -> None:
        super().__init__()
        self._bucket = TokenBucket(rate, max(rate * 5, 1.0), time.monotonic())
        self._dropped = 0
        self._handlers: weakref.WeakSet[logging.Handler] = weakref.WeakSet()
        FloodFilter._instances.add(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "flood_summary", False) or self._bucket.take(time.monotonic()):
            return True
        self._dropped += 1
        return False

    def attach(self, handler: logging.Handler) -> None:
        self._handlers.add(handler)

    def flush(self) -> None:
        if not self._dropped:
            return
        record = logging.LogRecord(
            "gischat.logs", logging.WARNING, __file__, 0,
            "%d log lines dropped in the last %.0f s (LOG_RATE)", (self._dropped, SUMMARY_INTERVAL), None,
        )  # fmt: skip
        record.flood_summary = True
        self._dropped = 0
        for handler in list(self._handlers):
            handler.handle(record)

    @classmethod
    def flush_all(cls) -> None:
        for instance in list(cls._instances):
            instance.flush()


def install_flood_filter(rate: float, logger_names: tuple[str, ...] = ("gischat", "uvicorn")) -> None:
    """Put one `FloodFilter` on every handler of these loggers (and their children), once."""
    handlers: set[logging.Handler] = set()
    manager = logging.Logger.manager
    names = [name for name in manager.loggerDict if name.split(".")[0] in logger_names]
    for name in [*logger_names, *names]:
        handlers.update(logging.getLogger(name).handlers)
    for handler in handlers:
        if any(isinstance(existing, FloodFilter) for existing in handler.filters):
            continue
        flood = FloodFilter(rate)
        flood.attach(handler)
        handler.addFilter(flood)
