"""The transport's shared state: connection caps, deadlines and the unfinished-data budget.

gischat's uvicorn protocols (`server.http`, `server.websocket`) refuse abuse below the ASGI app;
what they count together lives in one `TransportGuard` per server. The process runner builds
the protocols bound to a `GuardSpec` (the settings and a token, cheap to pickle for worker
processes); the first connection of a process creates that spec's guard and starts its sweep.
Without a guard the protocols behave exactly like uvicorn's own. Deadlines are checked by one
periodic sweep over ordered maps: no timer, task or object exists for an idle connection.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import orjson

from gischat.networks import Networks
from gischat.protocol.refusals import CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER
from gischat.server.batch import WriteBatch
from gischat.server.budget import ReadSettings, Shares
from gischat.server.upgrade import http_answer

if TYPE_CHECKING:
    from gischat.server.http import GuardedHttpProtocol
    from gischat.server.reading import WebSocketReading

logger = logging.getLogger("gischat.transport")


# File descriptors kept out of the connection cap for the server's own files, pipes and
# workers, and for refused connections while their answer goes out.
RESERVED_FDS = 128
# Refused connections kept open briefly so the answer arrives before the socket closes
# (closing with unread input makes the kernel reset the connection); beyond this many at
# once, refused connections are closed at once.
MAX_LINGERING = 64
LINGER_SECONDS = 1.0
# A connection over the global budget of unfinished data is closed only if it holds more than
# this (or a quarter of the budget, if smaller): everybody's ordinary frames never are.
LARGE_SHARE = 1024 * 1024
# Bookkeeping cost of one received fragment of a fragmented message, counted with its data so
# that a flood of one-byte fragments cannot hold much more memory than the budget says.
FRAGMENT_OVERHEAD = 64
# The largest control frame (125 bytes of payload, masked): a peer growing its unfinished data
# by no more than this (interleaving pieces of pings, say) is not making progress.
CONTROL_FRAME_MAX = 131
# Seconds a client is asked to wait after a 503 or a 429.
RETRY_AFTER = 5
# Once we sent a close frame, the peer's reply is awaited this long (uvicorn: 10 s), and the
# frames it still sends are parsed only up to this many bytes: enough for a polite peer's close
# reply behind a message in flight, while a flood after our close costs no parsing at all.
CLOSE_TIMEOUT = 1.0
# A peer closed while it does not read gets this long to read what is left, our close frame last.
UNREAD_CLOSE_TIMEOUT = 10.0
CLOSING_READ_BYTES = 64 * 1024
# A read at least this large means the peer is streaming a big message: reading from it stops
# until the loop has served everybody else once. Left alone, the event loop (libuv) reads up to
# 32 chunks in a row from each ready socket: with a hundred peers uploading at once, one loop
# iteration copied gigabytes and stalled every room for a quarter of a second.
BULK_READ = 64 * 1024


_PROGRESS = float("-inf")  # a peak that any size beats: progress was just made


class HeadState(IntEnum):
    """`GuardedHttpProtocol._head_bytes` when no request head is being received (else the bytes
    counted towards it)."""

    DONE = -1  # the head is complete: a body, or nothing yet of the next request
    REFUSED = -2  # the connection was refused: nothing more is parsed


def nofile_limit() -> int:
    """The soft limit on open file descriptors of this process (sys.maxsize when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return sys.maxsize if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows; return the soft limit then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return nofile_limit()
    for candidate in (target, 1 << 20, 65536):  # the kernel may cap below an infinite hard limit
        if soft < candidate <= target:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (candidate, hard))
            except (ValueError, OSError):
                continue
            break
    return nofile_limit()


def effective_max_connections(requested: int, nofile: int) -> int:
    """`MAX_CONNECTIONS`, lowered to what `nofile` descriptors allow with some kept in reserve."""
    return max(1, min(requested, nofile - RESERVED_FDS))


def http_refusal(status: int, detail: str) -> bytes:
    """A complete HTTP/1.1 response with a JSON `detail`, closing the connection.

    Written before any request reached the app, so it carries only what a refusal needs: its
    own `date` (no `server` header, as the runner configures uvicorn).
    """
    headers = [(b"content-type", b"application/json")]
    if status in (429, 503):
        headers.append((b"retry-after", b"%d" % RETRY_AFTER))
    return http_answer(status, headers, orjson.dumps({"detail": detail}))


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
        self.heads: OrderedDict[GuardedHttpProtocol, float] = OrderedDict()
        self.lingering: OrderedDict[GuardedHttpProtocol, float] = OrderedDict()
        self.incomplete: OrderedDict[WebSocketReading, Unfinished] = OrderedDict()
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

    def _track(self, ws: WebSocketReading, now: float) -> Unfinished:
        entry = Unfinished(now + self.frame_timeout)
        self.incomplete[ws] = entry
        return entry

    def update(self, ws: WebSocketReading, held: int) -> None:
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

    def touch(self, ws: WebSocketReading) -> None:
        """Reading resumed: the peer gets a whole FRAME_TIMEOUT from now."""
        entry = self.incomplete.get(ws)
        if entry is not None:
            entry.deadline = time.monotonic() + self.frame_timeout
            self.incomplete.move_to_end(ws)

    def forget(self, ws: WebSocketReading) -> None:
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


def address_of(transport_info: Any) -> tuple[str, int] | None:
    """(host, port) of a socket address from `get_extra_info("peername"/"sockname")`; None for a
    unix socket or none at all."""
    if isinstance(transport_info, tuple | list) and len(transport_info) >= 2:
        return str(transport_info[0]), int(transport_info[1])
    return None


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The peer's IP address, or "" when it has none (a unix socket): whom a connection slot counts."""
    address = address_of(transport.get_extra_info("peername"))
    return address[0] if address is not None else ""


class GuardSpec:
    """What a process needs to build a server's guard: its settings and a token naming the server."""

    __slots__ = ("settings", "token")

    def __init__(self, settings: GuardSettings, token: str) -> None:
        self.settings = settings
        self.token = token

    def __reduce__(self) -> tuple[type[GuardSpec], tuple[GuardSettings, str]]:
        return (GuardSpec, (self.settings, self.token))


# The guards of this process, by server token: one per server the runner set up.
_GUARDS: dict[str, TransportGuard] = {}


def guard_for(spec: GuardSpec) -> TransportGuard:
    """This process's guard for the server `spec` names, built on first use; its sweep starts on
    the loop of the first connection (`attach`)."""
    guard = _GUARDS.get(spec.token)
    if guard is None:
        guard = _GUARDS[spec.token] = TransportGuard(spec.settings)
    return guard


def forget_guard(token: str) -> None:
    """The server named `token` stopped: stop its guard's sweep and let it go."""
    guard = _GUARDS.pop(token, None)
    if guard is not None:
        guard.stop()
