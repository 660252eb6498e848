"""Limits enforced at the transport, below the ASGI app: uvicorn protocols that refuse abuse early.

uvicorn accepts protocol classes for `http=` and `ws=`; the two classes here subclass its httptools
and sans-I/O websockets protocols and add what one hostile client must not be able to do to
everybody else:

- a global connection cap (503) and a cap per peer address (429; trusted proxies exempt), both
  answered before anything is parsed, so the server never runs out of file descriptors;
- a deadline (408) and a size limit (431) on every request head, websocket handshakes included;
- on websockets: reading stops while the peer does not read what we send (pongs included), a
  ping flood is closed (1008), an unfinished message must keep receiving data (1008), and the
  unfinished messages of all connections share one memory budget (1013);
- once we sent a close frame, what the peer still sends is not parsed (past a little for its
  close reply) and the connection ends within a second, not uvicorn's 10 s of parsing a flood;
- peers uploading big messages take turns: one read each per loop iteration.

The shared counters live in a `TransportGuard` that the app's lifespan publishes in its state under
`STATE_KEY`; uvicorn hands that state to every protocol it creates. Without a guard the classes
behave exactly like uvicorn's own. Deadlines are checked by one periodic sweep over ordered maps:
no timer, task or object exists for an idle connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, cast

import orjson
from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.exceptions import InvalidState
from websockets.frames import Frame

from gischat.settings import Settings
from gischat.work.pool import trim_heap_soon

logger = logging.getLogger("gischat.transport")

# Where the app's lifespan state holds the guard.
STATE_KEY = "gischat.transport"
# The ASGI `websocket.send` key with `text` already encoded to UTF-8 (once per broadcast).
BYTES_KEY = "gischat.bytes"

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

CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013

# `TransportGuard.incomplete` entries: [deadline, bytes held, peak since last progress, fragments].
_DEADLINE, _HELD, _PEAK, _FRAGMENTS = range(4)
_PROGRESS = float("-inf")  # a peak that any size beats: progress was just made

# GuardedHttpProtocol._head_bytes when no request head is being received.
_HEAD_DONE = -1
_REFUSED = -2


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


def http_refusal(status: int, detail: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete HTTP/1.1 response with a JSON `detail`, closing the connection."""
    body = orjson.dumps({"detail": detail})
    parts = [STATUS_LINE[status]]
    for name, value in default_headers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
    if status in (429, 503):
        parts.append(b"retry-after: %d\r\n" % RETRY_AFTER)
    parts += [b"connection: close\r\n\r\n", body]
    return b"".join(parts)


class TransportGuard:
    """Connection counts, deadlines and the unfinished-data budget shared by all connections."""

    def __init__(self, settings: Settings, nofile: int | None = None) -> None:
        self.requested_max_connections = settings.max_connections
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
        self.trusted = _TrustedHosts(settings.forwarded_allow_ips)

        # Open transport connections (HTTP or websocket), in all and per untrusted peer address.
        self.connections = 0
        self.per_ip: dict[str, int] = {}
        # Bytes held by unfinished websocket messages, all connections together.
        self.incomplete_bytes = 0
        # Ordered by deadline: a refreshed deadline moves its entry to the end.
        self.heads: OrderedDict[GuardedHttpProtocol, float] = OrderedDict()
        self.lingering: OrderedDict[GuardedHttpProtocol, float] = OrderedDict()
        self.incomplete: OrderedDict[GuardedWebSocketProtocol, list[float]] = OrderedDict()
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

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule()

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
            if entry[_DEADLINE] > now:
                break
            if ws.transport.is_closing():
                self.forget(ws)
            elif not ws.transport.is_reading():
                # We are not reading (the app is busy with its previous message, or the peer
                # does not read our answers): the peer cannot make progress, do not blame it.
                entry[_DEADLINE] = now + self.frame_timeout
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

    def _track(self, ws: GuardedWebSocketProtocol, now: float) -> list[float]:
        entry = [now + self.frame_timeout, 0, _PROGRESS, 0]
        self.incomplete[ws] = entry
        return entry

    def fragment(self, ws: GuardedWebSocketProtocol, size: int, first: bool) -> None:
        """A data frame arrived: the message goes on (fragments held) or is complete."""
        entry = self.incomplete.get(ws)
        if ws.frames:
            if entry is None:
                entry = self._track(ws, time.monotonic())
            entry[_FRAGMENTS] = (0 if first else entry[_FRAGMENTS]) + size + FRAGMENT_OVERHEAD
            entry[_PEAK] = _PROGRESS
        elif entry is not None:
            entry[_FRAGMENTS] = 0
            entry[_PEAK] = _PROGRESS

    def update(self, ws: GuardedWebSocketProtocol) -> None:
        """Account for what `ws` holds after receiving data; refuse it if over the budget."""
        entry = self.incomplete.get(ws)
        if ws.close_sent or ws.transport.is_closing():
            if entry is not None:
                self.forget(ws)
            return
        held = len(ws.conn.reader.buffer) + (int(entry[_FRAGMENTS]) if entry is not None else 0)
        if held == 0:
            if entry is not None:
                self.forget(ws)
            return
        now = time.monotonic()
        if entry is None:
            entry = self._track(ws, now)
        grown = held - int(entry[_HELD])
        entry[_HELD] = held
        self.incomplete_bytes += grown
        if held > entry[_PEAK] + CONTROL_FRAME_MAX:
            entry[_DEADLINE] = now + self.frame_timeout
            entry[_PEAK] = held
            self.incomplete.move_to_end(ws)
        if grown > 0 and self.incomplete_bytes > self.max_incomplete_bytes and held > self.large_share:
            ws.fail(CLOSE_TRY_AGAIN_LATER, "server busy: too much unfinished data, try again later")

    def touch(self, ws: GuardedWebSocketProtocol) -> None:
        """Reading resumed: the peer gets a whole FRAME_TIMEOUT from now."""
        entry = self.incomplete.get(ws)
        if entry is not None:
            entry[_DEADLINE] = time.monotonic() + self.frame_timeout
            self.incomplete.move_to_end(ws)

    def forget(self, ws: GuardedWebSocketProtocol) -> None:
        entry = self.incomplete.pop(ws, None)
        if entry is not None:
            self.incomplete_bytes -= int(entry[_HELD])

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


def _peer(client: tuple[str, int] | None) -> str:
    return client[0] if client else ""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with connection caps and request-head limits."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard: TransportGuard | None = app_state.get(STATE_KEY)
        self._slot: str | None = None  # the peer address whose connection slot we hold
        # Bytes received for the request head in progress, or _HEAD_DONE, or _REFUSED.
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self._guard
        if guard is None:
            return
        ip = _peer(self.client)
        refusal = guard.acquire(ip)
        if refusal is not None:
            self.refuse(*refusal)
            return
        self._slot = ip
        guard.heads[self] = time.monotonic() + guard.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        guard = self._guard
        if guard is not None:
            guard.heads.pop(self, None)
            guard.lingering.pop(self, None)
            if self._slot is not None:
                guard.release(self._slot)
                self._slot = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        guard = self._guard
        if guard is None:
            super().data_received(data)
            return
        while data:
            if self._head_bytes == _REFUSED:
                return  # our answer is out; what the peer still sends is dropped
            if self._head_bytes == _HEAD_DONE:  # a body, or the next request of a pipeline
                super().data_received(data)
                return
            room = guard.max_header_bytes - self._head_bytes
            if room <= 0:
                self.refuse(431, f"request head larger than {guard.max_header_bytes} bytes")
                return
            # Never hand the parser more head than allowed: a huge header costs nothing.
            chunk, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            self._head_bytes += len(chunk)
            super().data_received(chunk)
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # answered and closed, or upgraded to a websocket

    def on_message_begin(self) -> None:
        super().on_message_begin()
        guard = self._guard
        if guard is not None and self._head_bytes != _REFUSED and self not in guard.heads:
            # The next request on a kept-alive connection: its head has HEADER_TIMEOUT too.
            guard.heads[self] = time.monotonic() + guard.header_timeout

    def on_headers_complete(self) -> None:
        guard = self._guard
        if guard is not None:
            self._head_bytes = _HEAD_DONE
            guard.heads.pop(self, None)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._guard is not None and self._head_bytes == _HEAD_DONE:
            self._head_bytes = 0

    def handle_websocket_upgrade(self) -> None:
        guard, slot = self._guard, self._slot
        super().handle_websocket_upgrade()
        if guard is None or slot is None:
            return
        guard.heads.pop(self, None)
        protocol = self.transport.get_protocol()
        if protocol is self:
            return
        # The websocket protocol now owns the connection and its slot: our connection_lost
        # will never be called.
        self._slot = None
        if isinstance(protocol, GuardedWebSocketProtocol):
            protocol.adopt(guard)
        else:
            guard.release(slot)  # a foreign class would never give it back

    def head_expired(self, now: float) -> None:
        """Called by the sweep when the request head did not arrive within HEADER_TIMEOUT."""
        guard = self._guard
        if guard is None or self.transport.is_closing() or self._head_bytes == _REFUSED:
            return
        if not self.transport.is_reading():  # we paused reading (a pipeline): not the peer's fault
            guard.heads[self] = now + guard.header_timeout
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: no room for another one
            return
        self.refuse(408, f"request head not received within {guard.header_timeout:g} s")

    def refuse(self, status: int, detail: str) -> None:
        """Answer `status` with a JSON detail and close, parsing nothing more."""
        guard = self._guard
        assert guard is not None
        self._head_bytes = _REFUSED
        guard.heads.pop(self, None)
        guard.refused(str(status), _peer(self.client), detail)
        if self.transport.is_closing():
            return
        self.transport.write(http_refusal(status, detail, self.server_state.default_headers))
        if len(guard.lingering) < MAX_LINGERING and self.transport.can_write_eof():
            # Half-close and keep reading (discarding) until the peer closes or a short time
            # passes: closing with unread input would reset the connection under our answer.
            self.transport.write_eof()
            self.transport.resume_reading()
            guard.lingering[self] = time.monotonic() + LINGER_SECONDS
        else:
            self.transport.close()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol with read backpressure, ping and frame limits.

    Per connection this adds one attribute, set when the HTTP protocol hands the connection
    over; the ping allowance is added on the first ping, unfinished-message state lives in the
    guard only while a message is unfinished. Idle sockets stay as small as uvicorn's.
    """

    # Class-level defaults, shadowed per instance only when needed.
    _guard: TransportGuard | None = None
    _ping_full_at = 0.0
    # Bytes the peer may still have parsed after our close frame (set when it is sent).
    _closing_budget = CLOSING_READ_BYTES
    _reaper: asyncio.TimerHandle | None = None

    def adopt(self, guard: TransportGuard) -> None:
        """Take over a connection slot of `guard` from the HTTP protocol that upgraded."""
        self._guard = guard
        self.close_timeout = CLOSE_TIMEOUT

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        guard = self._guard
        if guard is not None:
            self._guard = None
            guard.forget(self)
            guard.release(_peer(self.client))
            self._drop_buffers()

    def _drop_buffers(self) -> None:
        """Free what an unfinished message held, now that nobody will read it."""
        self.frames = []
        self.conn.reader.buffer = bytearray()

    # Reading stops while the peer does not read what we write.

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._guard is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        guard = self._guard
        if guard is not None and not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()
            guard.touch(self)

    async def receive(self) -> ASGIReceiveEvent:
        if self._guard is None:
            return await super().receive()
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            guard = self._guard  # may be gone: the connection was lost while we waited
            if self.writable.is_set() and not self.transport.is_closing():
                self.transport.resume_reading()
                if guard is not None:
                    guard.touch(self)
        return message

    # Incoming data: unfinished messages and pings.

    def data_received(self, data: bytes) -> None:
        guard = self._guard
        if guard is not None and self.close_sent and self.handshake_complete:
            self._data_after_close(len(data))
            if self._closing_budget < 0:
                return  # discarded unparsed: a peer we are closing costs no work per frame
        super().data_received(data)
        if guard is not None:
            guard.update(self)
            if len(data) >= BULK_READ:
                self._take_turns()
                # Big buffers will be let go soon: hand the heap back once they stop coming.
                trim_heap_soon()

    def _take_turns(self) -> None:
        """Stop reading until the next loop iteration, so that every socket gets its turn."""
        transport = self.transport
        if transport.is_closing() or not transport.is_reading():
            return
        transport.pause_reading()
        self.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        transport = self.transport
        if self.read_paused or not self.writable.is_set() or self.disconnected:
            return  # someone else paused reading; whoever resumes it will
        if not transport.is_closing():
            transport.resume_reading()

    def _data_after_close(self, size: int) -> None:
        """We sent our close frame: parse a little more (the peer's close reply), then nothing."""
        if self._closing_budget < 0:
            return
        self._closing_budget -= size
        if self._closing_budget >= 0:
            return
        # The peer keeps sending instead of answering our close: stop reading it, free what it
        # held, and end the connection once our close frame is out (at most CLOSE_TIMEOUT on).
        self._drop_buffers()
        if self._guard is not None:
            self._guard.forget(self)
        self._end_transport()

    def _end_transport(self) -> None:
        """Close now; abort if what we still have to write has not gone out within CLOSE_TIMEOUT."""
        transport = self.transport
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        transport.close()  # reads no more; writes what is buffered (our close frame), then closes
        if transport.get_write_buffer_size() and self._reaper is None:
            self._reaper = self.loop.call_later(CLOSE_TIMEOUT, transport.abort)

    def handle_text(self, event: Frame) -> None:
        super().handle_text(event)
        if self._guard is not None:
            self._guard.fragment(self, len(event.data), first=True)

    def handle_bytes(self, event: Frame) -> None:
        super().handle_bytes(event)
        if self._guard is not None:
            self._guard.fragment(self, len(event.data), first=True)

    def handle_cont(self, event: Frame) -> None:
        super().handle_cont(event)
        if self._guard is not None:
            self._guard.fragment(self, len(event.data), first=False)

    def handle_ping(self) -> None:
        guard = self._guard
        if guard is not None:
            if self.close_sent or self.transport.is_closing():
                return
            if guard.ping_interval:
                now = time.monotonic()
                full_at = max(self._ping_full_at, now) + guard.ping_interval
                if full_at - now > guard.ping_tolerance:
                    self.fail(
                        CLOSE_POLICY_VIOLATION, f"ping flood: more than {guard.ping_rate:g} pings per second"
                    )
                    return
                self._ping_full_at = full_at
        super().handle_ping()

    def fail(self, code: int, reason: str) -> None:
        """Close with `code` and `reason` at once, tell the app, and free what the peer sent."""
        guard = self._guard
        if not self.close_sent and not self.transport.is_closing():
            self.conn.fail(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            if guard is not None:
                guard.refused(str(code), _peer(self.client), reason)
            if self.writable.is_set():
                self.transport.close()
            else:  # the peer does not read: it will not read our close frame either
                self.transport.abort()
        if guard is not None:
            guard.forget(self)
        self._drop_buffers()

    def _close_unread(self, code: int, reason: str) -> None:
        """The app closes a peer that does not read: our close frame joins what it has not read,
        the app hears at once that the peer is gone, and nothing it sends is parsed any more.

        The connection ends when the peer has read everything (or after UNREAD_CLOSE_TIMEOUT).
        """
        with contextlib.suppress(InvalidState):
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._closing_budget = -1
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self._guard is not None:
            self._guard.forget(self)
        self._drop_buffers()
        self.transport.close()
        if self._reaper is None:
            self._reaper = self.loop.call_later(UNREAD_CLOSE_TIMEOUT, self.transport.abort)

    # Outgoing messages.

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "websocket.send":
            encoded = cast(Mapping[str, Any], message).get(BYTES_KEY)
            if encoded is not None and message.get("bytes") is None:
                await self.writable.wait()
                if (
                    self.handshake_complete
                    and not self.close_sent
                    and not self.disconnected
                    and self.initial_response is None
                ):
                    try:
                        self.conn.send_text(encoded)
                    except InvalidState:
                        raise ClientDisconnected() from None
                    self.transport.write(b"".join(self.conn.data_to_send()))
                    return
        if self._guard is not None and self.handshake_complete:
            if self.close_sent:
                # We failed the connection (or it is closing): for the app the peer is gone.
                if message["type"] == "websocket.close":
                    return
                if message["type"] == "websocket.send":
                    raise ClientDisconnected()
            elif (
                message["type"] == "websocket.close"
                and not self.writable.is_set()
                and self.initial_response is None
                and not self.disconnected
            ):
                # The peer does not read what we send: uvicorn would wait (without end) for room
                # to write our close frame, reading and parsing whatever the peer sends meanwhile.
                self._close_unread(message.get("code", 1000), message.get("reason") or "")
                return
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            # A handshake refused with an HTTP answer (403, 429) is a complete handshake too;
            # uvicorn would otherwise log an error for every refusal.
            self.handshake_complete = True


__all__ = [
    "BYTES_KEY",
    "STATE_KEY",
    "GuardedHttpProtocol",
    "GuardedWebSocketProtocol",
    "TransportGuard",
    "effective_max_connections",
    "raise_nofile_limit",
]
