"""The transport's shared state: connection caps, deadlines and the unfinished-data budget.

gischat's uvicorn protocols (`server.http`, `server.websocket`) refuse abuse below the ASGI app;
what they count together lives in one `TransportGuard` per server and process (`server.registry`
finds it). The guard sees a protocol only through the small interface its deadlines need
(`HeadAwaited`, `MessageAwaited`), so it imports neither. Without a guard the protocols behave
exactly like uvicorn's own. Deadlines are checked by one periodic sweep over ordered maps: no
timer, task or object exists for an idle connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from gischat.networks import Networks
from gischat.protocol.refusals import CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER
from gischat.server.batch import WriteBatch
from gischat.server.budget import ReadSettings, Shares
from gischat.server.descriptors import effective_max_connections, nofile_limit

logger = logging.getLogger("gischat.transport")


# A connection over the global budget of unfinished data is closed only if it holds more than
# this (or a quarter of the budget, if smaller): everybody's ordinary frames never are.
LARGE_SHARE = 1024 * 1024
# The largest control frame (125 bytes of payload, masked): a peer growing its unfinished data
# by no more than this (interleaving pieces of pings, say) is not making progress.
CONTROL_FRAME_MAX = 131

_PROGRESS = float("-inf")  # a peak that any size beats: progress was just made


class HeadAwaited(Protocol):
    """An HTTP connection as the guard sees it (`server.http`): a request head on a deadline, or a
    refused connection lingering until its answer is read."""

    @property
    def transport(self) -> asyncio.Transport: ...

    def head_expired(self, now: float) -> None:
        """The request head did not arrive in time."""


class MessageAwaited(Protocol):
    """A websocket as the guard sees it (`server.websocket`): an unfinished message on a deadline."""

    @property
    def transport(self) -> asyncio.Transport: ...

    def fail(self, code: int, reason: str) -> None:
        """Refuse the peer with a close frame of `code` and `reason`."""


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """The transport's limits: connection caps, request heads, unfinished messages, pings, logs."""

    forwarded_allow_ips: str
    max_connections: int
    max_connections_per_ip: int
    header_timeout: float
    max_header_bytes: int
    frame_timeout: float
    max_incomplete_bytes: int
    ping_rate: float
    ping_burst: int
    log_rate: float
    read_rate: int
    read_burst: int
    read_rate_per_ip: int
    read_burst_per_ip: int
    max_held_bytes_per_ip: int


class Unfinished:
    """A websocket message still being received: what it holds, and until when it may take."""

    __slots__ = ("deadline", "held", "peak")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # data must arrive before this (monotonic seconds)
        self.held = 0  # bytes it holds: its frames' payload so far, with their bookkeeping
        self.peak = _PROGRESS  # `held` at the last progress


class TransportGuard:
    """Connection counts, deadlines and the unfinished-data budget shared by all connections."""

    def __init__(self, settings: GuardSettings, nofile: int | None = None) -> None:
        self.max_connections = effective_max_connections(
            settings.max_connections, nofile if nofile is not None else nofile_limit()
        )
        self.max_connections_per_ip = settings.max_connections_per_ip
        self.header_timeout = settings.header_timeout
        self.max_header_bytes = settings.max_header_bytes
        self.frame_timeout = settings.frame_timeout
        self.max_incomplete_bytes = settings.max_incomplete_bytes
        self.large_share = min(LARGE_SHARE, settings.max_incomplete_bytes // 4)
        # Pings are limited with a single number per connection (GCRA): the time at which its
        # bucket would be full again; a ping costs `ping_interval` seconds of credit.
        self.ping_rate = settings.ping_rate
        self.ping_interval = 1 / settings.ping_rate if settings.ping_rate > 0 else 0.0
        self.ping_tolerance = settings.ping_burst * self.ping_interval
        self.trusted = Networks(settings.forwarded_allow_ips)
        # Read budgets: per connection (its pace) and per client address (`shares`).
        self.read = ReadSettings(
            settings.read_rate,
            settings.read_burst,
            settings.read_rate_per_ip,
            settings.read_burst_per_ip,
            settings.max_held_bytes_per_ip,
        )
        self.shares = Shares(self.read)
        self._batch: WriteBatch | None = None

        # Open transport connections (HTTP or websocket), in all and per untrusted peer address.
        self.connections = 0
        self.per_ip: dict[str, int] = {}
        # Bytes held by unfinished websocket messages, all connections together.
        self.incomplete_bytes = 0
        # Ordered by deadline: a refreshed deadline moves its entry to the end.
        self.heads: OrderedDict[HeadAwaited, float] = OrderedDict()
        self.lingering: OrderedDict[HeadAwaited, float] = OrderedDict()
        self.incomplete: OrderedDict[MessageAwaited, Unfinished] = OrderedDict()
        # Refusals so far, by kind ("503", "1013", ...), for logs and tests.
        self.refusals: dict[str, int] = {}

        self.sweep_interval = max(0.05, min(0.5, self.header_timeout / 4, self.frame_timeout / 4))
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Refusal lines are rate limited (LOG_RATE per second); the others are counted.
        self._log_interval = 1 / settings.log_rate
        self._log_next = 0.0
        self._log_suppressed = 0

    # Life cycle: one periodic sweep while the server runs.

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Begin the periodic sweep on `loop` (the running one by default)."""
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._schedule()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """A connection of the server's loop arrived: sweep there, from the first one on."""
        if self._loop is None:
            self.start(loop)

    def batch(self, loop: asyncio.AbstractEventLoop) -> WriteBatch:
        """The server's write batch (`server.batch`): one per loop, shared by its websockets."""
        if self._batch is None or self._batch.loop is not loop:
            self._batch = WriteBatch(loop)
        return self._batch

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def _schedule(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._timer = self._loop.call_later(self.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        try:
            self.sweep(time.monotonic())
        except Exception:  # a bug here must not end the sweeps
            logger.exception("transport sweep failed")
        self._schedule()

    def sweep(self, now: float) -> None:
        """Act on every deadline that has passed."""
        while self.heads:
            http, deadline = next(iter(self.heads.items()))
            if deadline > now:
                break
            del self.heads[http]
            http.head_expired(now)
        while self.lingering:
            http, deadline = next(iter(self.lingering.items()))
            if deadline > now:
                break
            del self.lingering[http]
            http.transport.close()
        while self.incomplete:
            ws, entry = next(iter(self.incomplete.items()))
            if entry.deadline > now:
                break
            if ws.transport.is_closing():
                self.forget(ws)
            elif not ws.transport.is_reading():
                # We are not reading (the app is busy with its previous message, or the peer
                # does not read our answers): the peer cannot make progress, do not blame it.
                entry.deadline = now + self.frame_timeout
                self.incomplete.move_to_end(ws)
            else:
                ws.fail(CLOSE_POLICY_VIOLATION, f"message incomplete: no data for {self.frame_timeout:g} s")

    # Connection slots.

    def acquire(self, ip: str) -> tuple[int, str] | None:
        """Take a slot for a new connection from `ip`, or say why not (status, detail)."""
        if self.connections >= self.max_connections:
            return 503, f"server busy: too many connections ({self.max_connections}), try again later"
        # No peer address (a unix socket): only a proxy connects that way, like a trusted one.
        if ip and ip not in self.trusted:
            count = self.per_ip.get(ip, 0)
            if count >= self.max_connections_per_ip:
                return 429, (
                    f"too many connections from your address ({self.max_connections_per_ip}), try again later"
                )
            self.per_ip[ip] = count + 1
        self.connections += 1
        return None

    def release(self, ip: str) -> None:
        self.connections -= 1
        count = self.per_ip.get(ip)  # trusted addresses are never counted per address
        if count is not None:
            if count <= 1:
                del self.per_ip[ip]
            else:
                self.per_ip[ip] = count - 1

    # Unfinished websocket messages.

    def _track(self, ws: MessageAwaited, now: float) -> Unfinished:
        entry = Unfinished(now + self.frame_timeout)
        self.incomplete[ws] = entry
        return entry

    def update(self, ws: MessageAwaited, held: int) -> None:
        """`ws` holds `held` bytes of an unfinished message after a read: refuse it when over budget.

        `held` is what the protocol's frame meter counts: the fed part of the message's frames
        and a header cut in two, exactly, from the frame headers.
        """
        entry = self.incomplete.get(ws)
        if held == 0:
            if entry is not None:
                self.forget(ws)
            return
        now = time.monotonic()
        if entry is None:
            entry = self._track(ws, now)
        grown = held - entry.held
        entry.held = held
        self.incomplete_bytes += grown
        if held > entry.peak + CONTROL_FRAME_MAX:
            entry.deadline = now + self.frame_timeout
            entry.peak = held
            self.incomplete.move_to_end(ws)
        if grown > 0 and self.incomplete_bytes > self.max_incomplete_bytes and held > self.large_share:
            ws.fail(CLOSE_TRY_AGAIN_LATER, "server busy: too much unfinished data, try again later")

    def touch(self, ws: MessageAwaited) -> None:
        """Reading resumed: the peer gets a whole FRAME_TIMEOUT from now."""
        entry = self.incomplete.get(ws)
        if entry is not None:
            entry.deadline = time.monotonic() + self.frame_timeout
            self.incomplete.move_to_end(ws)

    def forget(self, ws: MessageAwaited) -> None:
        entry = self.incomplete.pop(ws, None)
        if entry is not None:
            self.incomplete_bytes -= entry.held

    # Logging.

    def refused(self, kind: str, peer: str, detail: str) -> None:
        self.refusals[kind] = self.refusals.get(kind, 0) + 1
        now = time.monotonic()
        if now < self._log_next:
            self._log_suppressed += 1
            return
        self._log_next = now + self._log_interval
        suppressed, self._log_suppressed = self._log_suppressed, 0
        more = f" ({suppressed} more refusals not logged)" if suppressed else ""
        logger.warning("%s refused (%s): %s%s", peer, kind, detail, more)
