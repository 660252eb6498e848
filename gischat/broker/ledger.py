"""The ledger: a little memory shared by every node, for what must happen once across them.

The Matrix bridge is its user: a homeserver transaction retried on another node is handed to the
rooms once, a Matrix participant keeps one nickname whichever node hears them, and the Matrix id
of a message relayed by one node is known to the node that later needs it (a reaction, a
redaction). Entries expire: the ledger remembers what is recent, it is not a database.

`MemoryLedger` is the single-process engine, and what a shared engine falls back on while its
service is away (each node then remembers alone, and the chat goes on).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

# Entries a process keeps at most; the oldest go first (a bound, not a working set).
MAX_ENTRIES = 100_000


class Ledger(Protocol):
    """Keys and values shared by every node of an instance, each kept for `ttl` seconds."""

    async def first(self, key: str, ttl: float, value: str = "1") -> bool:
        """Set `key` unless it is set: True for exactly one caller across the nodes."""

    async def put(self, key: str, value: str, ttl: float) -> None:
        """Set `key`, whatever it held."""

    async def get(self, key: str) -> str | None:
        """What `key` holds, None when unset or expired."""


class MemoryLedger:
    """One process's ledger: a dictionary with deadlines, bounded in size."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._max = max_entries

    async def first(self, key: str, ttl: float, value: str = "1") -> bool:
        if self._live(key) is not None:
            return False
        self._set(key, value, ttl)
        return True

    async def put(self, key: str, value: str, ttl: float) -> None:
        self._set(key, value, ttl)

    async def get(self, key: str) -> str | None:
        return self._live(key)

    def _live(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._entries[key]
            return None
        return entry[0]

    def _set(self, key: str, value: str, ttl: float) -> None:
        self._entries[key] = (value, time.monotonic() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
