"""Logging that a flood cannot turn into a flood of log lines.

Two layers. `RefusalLog` decides at the call site: each connection gets its first few refusal
lines logged, and every line of all connections together comes out of one bucket, so one
client cannot spend everybody's share. `FloodFilter` sits on the log handlers and caps every
line (uvicorn's access and handshake lines included) at a rate. Whatever either of them holds
back is counted and reported in one summary line per interval.

`JsonFormatter` writes each line as one JSON object (`LOG_FORMAT=json`), with the room, peer
and refusal reason a call site passes through `extra=context(...)`.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson

from gischat.limits import TokenBucket

SUMMARY_INTERVAL = 10.0
# Refusal lines logged per connection before it is only counted.
LINES_PER_CONNECTION = 3

# Record attributes a call site may set with `extra=` and `JsonFormatter` writes out when present
# (a moderator's action adds who did it, what and to whom: gischat.moderation.audit).
CONTEXT_KEYS = ("room", "peer", "reason", "moderator", "action", "target")


def context(peer: str | None = None, room: str | None = None, reason: str | None = None) -> dict[str, str]:
    """The `extra=` of a log call: what it is about, for `LOG_FORMAT=json` (text lines ignore it)."""
    values = {"peer": peer, "room": room, "reason": reason}
    return {key: value for key, value in values.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, and room, peer, reason (moderator,
    action, target for a moderator's action) when known.

    `time` is ISO 8601 in UTC with milliseconds; `event` is the formatted message, which call
    sites keep free of message contents. uvicorn's access lines also carry `peer` (the client
    address, the real one behind a trusted proxy), `request` (the request line) and `status`.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        line: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, http_version, status = record.args
            line["peer"] = client
            line["request"] = f"{method} {path} HTTP/{http_version}"
            line["status"] = status
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


class RefusalLog:
    """Refusals worth a line: the first few per connection, at most `rate` per second overall."""

    def __init__(self, logger: logging.Logger, rate: float) -> None:
        self.logger = logger
        self._bucket = TokenBucket(rate, max(rate * 3, 1.0), time.monotonic())
        self._held: Counter[str] = Counter()

    def refused(self, peer: str, room: str, reason: str, seen: int, outcome: str = "uncompliant") -> None:
        """Log (or count) the `seen`-th refusal of one connection (`outcome`: what it got)."""
        if seen <= LINES_PER_CONNECTION and self._bucket.take(time.monotonic()):
            self.logger.info(
                "%s in %r: %s: %s", peer, room, outcome, reason, extra=context(peer, room, reason)
            )
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


class ChurnLog:
    """Comings and goings (joins, leaves, nicknames): a line each at a human pace; in a storm, at
    most `rate` a second, the rest counted per kind in one summary line.

    Decided before the line is made: a join storm of 2,000 a second would otherwise have its
    records made, only for the `FloodFilter` to drop all but ten a second of them (that was 5 %
    of the server's time while 10,000 sockets joined), and the summary says what was held back.
    """

    def __init__(self, logger: logging.Logger, rate: float) -> None:
        self.logger = logger
        self._bucket = TokenBucket(rate, max(rate * 5, 1.0), time.monotonic())
        self._held: Counter[str] = Counter()

    def allows(self, kind: str) -> bool:
        """Whether a line of this kind ("joins", "leaves", ...) may be logged now; else it is counted."""
        if self._bucket.take(time.monotonic()):
            return True
        self._held[kind] += 1
        return False

    def flush(self) -> None:
        """One line for everything held back since the last flush."""
        if not self._held:
            return
        held = ", ".join(f"{count} {kind}" for kind, count in self._held.most_common())
        self._held.clear()
        self.logger.info("not logged in the last %.0f s: %s (LOG_RATE)", SUMMARY_INTERVAL, held)


def summary_record(dropped: int) -> logging.LogRecord:
    """The line that says how many lines a flood filter dropped; it passes every filter."""
    record = logging.LogRecord(
        "gischat.logs", logging.WARNING, __file__, 0,
        "%d log lines dropped in the last %.0f s (LOG_RATE)", (dropped, SUMMARY_INTERVAL), None,
    )  # fmt: skip
    record.flood_summary = True
    return record


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
        """One summary line of what was dropped, through the handler when it writes plain records;
        a handler with a format of its own (uvicorn's access lines take five fields, not a
        sentence) gets it through `gischat.logs` instead, so that the summary is never lost."""
        if not self._dropped:
            return
        dropped, self._dropped = self._dropped, 0
        for handler in list(self._handlers):
            record = summary_record(dropped)
            try:
                handler.format(record)
            except (TypeError, ValueError):  # not a sentence this handler can write
                logging.getLogger("gischat.logs").handle(summary_record(dropped))
                continue
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
