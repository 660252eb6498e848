"""The reading half of gischat's websocket protocol: frame heads judged before payloads are read.

Data from the peer goes through three steps. The meter (`server.meter`) reads each frame's
header a step ahead of the parser and judges the frame before any of its payload is fed:
too large for MAX_FRAME_SIZE is refused at once (1009), a ping over the ping rate is refused
before it is answered (1008), and a large frame reserves its length in its address's
held-bytes budget (`server.budget`) or waits, reading paused, until there is room. What passes
is fed to the public sans-I/O parser of `websockets`, whose frames become ASGI messages. After
each read, the byte rates (per connection and per address) may pause reading for a while.

Reading pauses for several reasons at once (`Pause` flags) and resumes only when none is left.
The protocol (`server.websocket`) supplies the closing and writing steps this half calls.
"""

from __future__ import annotations

import asyncio
import os
from enum import IntEnum, IntFlag
from typing import Any

from uvicorn.config import Config
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from gischat.limits import TokenBucket
from gischat.protocol.frames import RAW_TEXT_KEY
from gischat.protocol.refusals import CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, InvalidText
from gischat.protocol.utf8 import decode_text
from gischat.server.budget import Share
from gischat.server.guard import (
    BULK_READ,
    CLOSE_TIMEOUT,
    CLOSING_READ_BYTES,
    FRAGMENT_OVERHEAD,
    TransportGuard,
)
from gischat.server.meter import DATA_OPCODES, OP_CONT, OP_PING, Head, Meter, read_head
from gischat.work.heap import trim_heap_soon

# Frames at least this large reserve their length in their address's held-bytes budget.
RESERVE_MIN = 64 * 1024
# Messages parsed from one read at most: a read of 256 KiB can hold thousands of small frames,
# and the rest waits (unparsed, reading paused) until the app has read these.
MAX_MESSAGES_PER_FEED = 64
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011


class Phase(IntEnum):
    """Where the connection is: handshake, open, closing (a close frame went out), closed."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class Pause(IntFlag):
    """Why reading is paused; it resumes when no reason is left."""

    HANDSHAKE = 1  # the app has not answered the handshake yet
    APP = 2  # the app has an unread message
    PEER = 4  # the peer does not read what we write
    BUDGET = 8  # a large frame waits for room in its address's budget
    PACE = 16  # the byte rate asks to wait
    TURN = 32  # a big read: every other socket gets its turn first


class WebSocketReading(asyncio.Protocol):
    """Reading and the ASGI `receive` side of a websocket; `GuardedWebSocketProtocol` is the rest."""

    __slots__ = (
        "closing_budget", "config", "conn", "deflate", "frames", "guard", "held", "inbox", "loop",
        "meter", "msg", "msg_held", "pace", "paused", "pending", "phase", "ping_full_at",
        "ping_payload", "raw_from", "share", "stash", "text", "timers", "transport", "waiter",
        "working",
    )  # fmt: skip

    def __init__(self, config: Config, conn: ServerProtocol, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.conn = conn
        self.loop = loop
        self.deflate = config.ws_per_message_deflate
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.phase = Phase.CONNECTING
        self.paused = 0  # the `Pause` reasons in force, or-ed together
        self.guard: TransportGuard | None = None
        self.share: Share | None = None
        self.pace: TokenBucket | None = None  # this connection's byte rate
        self.meter = Meter()
        self.stash = b""  # read but held back: a large frame waits for room in the budget
        self.pending: list[int] = []  # reservations of frames the parser has not delivered yet
        self.held = 0  # bytes reserved in the share, in all
        self.msg = [0, 0, 0]  # current message: size of its finished frames, frame length, its start
        self.msg_held = 0  # bytes reserved by the frames of the message being assembled
        self.working = 0  # bytes reserved by the large message the app is working on
        self.ping_full_at = 0.0  # the ping allowance (GCRA): when it would be full again
        self.closing_budget = CLOSING_READ_BYTES  # what the peer may still send after our close
        self.ping_payload = b""  # of our keepalive ping awaiting its pong
        self.frames: list[bytes] = []
        self.text = False
        # Text messages of at least this many bytes go to the app undecoded (0: none do).
        self.raw_from = 0
        self.inbox: list[tuple[dict[str, Any], int]] = []
        self.waiter: asyncio.Future[tuple[dict[str, Any], int]] | None = None
        self.timers: dict[str, asyncio.TimerHandle] = {}

    # What the protocol provides.

    def fail(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def _handshake(self, data: bytes) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _closed_by_us(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def _peer_closed(self) -> None:
        raise NotImplementedError

    def _end(self, grace: float) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is Phase.CONNECTING:
            self._handshake(data)
            return
        if phase is Phase.CLOSED:
            return
        if phase is Phase.CLOSING:
            self._after_close(data)
            return
        if self.stash:
            data, self.stash = self.stash + data, b""
        self._take(data)
        if self.guard is not None and self.phase is Phase.OPEN:
            self._account(len(data))

    # Reading: frame heads judged first, then fed to the parser.

    def _take(self, data: bytes) -> None:
        """Feed `data` to the parser up to the first frame that must wait or be refused."""
        meter, size, pos, refusal, messages = self.meter, len(data), 0, None, 0
        while pos < size:
            if meter.skip:
                step = min(meter.skip, size - pos)
                meter.skip -= step
                pos += step
                continue
            part = meter.part
            head = read_head(part + data[pos : pos + 14], 0) if part else read_head(data, pos)
            if head is None:
                meter.part, pos = part + data[pos:], size
                break
            if head.fin and head.opcode in DATA_OPCODES:
                if messages == MAX_MESSAGES_PER_FEED:  # the rest waits until the app has read these
                    self.stash, size = data[pos:], pos
                    self._pause(Pause.APP)
                    break
                messages += 1
            verdict = self._judge(head)
            if verdict is not None:
                if verdict[0] == 0:  # wait for room: keep the rest, header and all, for later
                    self.stash = data[pos:]
                    self._pause(Pause.BUDGET)
                else:
                    refusal = verdict
                size = pos
                break
            meter.part, meter.skip = b"", head.length
            pos += head.size - len(part)
        self._feed(data if size == len(data) else data[:size])
        if refusal is not None and self.phase is Phase.OPEN:
            self.fail(*refusal)

    def _judge(self, head: Head) -> tuple[int, str] | None:
        """None: read the frame; (0, ""): wait for room; else (close code, reason) to refuse it."""
        opcode, msg = head.opcode, self.msg
        if opcode == OP_PING:
            return self._ping_allowed()
        if opcode not in DATA_OPCODES:
            return None
        base = msg[0] if opcode == OP_CONT else 0
        total = base + head.length
        limit = self.config.ws_max_size
        if limit and total > limit:
            return CLOSE_TOO_BIG, f"message too big: {total} bytes (max {limit})"
        share = self.share
        if head.length >= RESERVE_MIN and share is not None and not self.deflate:
            if not share.reserve(head.length, self._budget_freed):
                return 0, ""
            self.held += head.length
            self.pending.append(head.length)
        msg[0], msg[1], msg[2] = (0 if head.fin else total), head.length, base
        return None

    def _ping_allowed(self) -> tuple[int, str] | None:
        guard = self.guard
        if guard is None or not guard.ping_interval:
            return None
        now = self.loop.time()
        full_at = max(self.ping_full_at, now) + guard.ping_interval
        if full_at - now > guard.ping_tolerance:
            return CLOSE_POLICY_VIOLATION, f"ping flood: more than {guard.ping_rate:g} pings per second"
        self.ping_full_at = full_at
        return None

    def _feed(self, data: bytes) -> None:
        if data:
            self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, Frame):
                self._frame(event)
        self._flush()
        sent = self.conn.close_sent
        if sent is not None and self.phase is Phase.OPEN:
            # The parser failed the connection (a protocol error): its close frame is out.
            self._closed_by_us(sent.code, sent.reason or "protocol error")

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
            if opcode is not Opcode.CONT:
                self.text = opcode is Opcode.TEXT
            data = bytes(frame.data)
            if self.pending and len(data) >= RESERVE_MIN and not self.deflate:
                self.msg_held += self.pending.pop(0)
            self.frames.append(data)
            if frame.fin:
                self._message()
        elif opcode is Opcode.PONG:
            self._pong(bytes(frame.data))
        elif opcode is Opcode.CLOSE:
            self._peer_closed()

    def _message(self) -> None:
        """A whole message arrived: hand it to the app (it holds its reservation until read)."""
        frames, self.frames = self.frames, []
        held, self.msg_held = self.msg_held, 0
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self.phase is not Phase.OPEN:
            self._release(held)
            return
        if not self.text:
            self._put({"type": "websocket.receive", "bytes": data}, held)
            return
        if self.raw_from and len(data) >= self.raw_from:
            # The app asked for it (`receive_raw_text`) and checks the UTF-8 as it goes.
            self._put({"type": "websocket.receive", "text": None, RAW_TEXT_KEY: data}, held)
            return
        try:
            text = decode_text(data)
        except InvalidText as exc:
            self._release(held)
            self.fail(CLOSE_INVALID_DATA, exc.reason)
            return
        self._put({"type": "websocket.receive", "text": text}, held)

    def _after_close(self, data: bytes) -> None:
        """Our close frame is out: parse a little more (the peer's reply), then nothing."""
        self.closing_budget -= len(data)
        if self.closing_budget < 0:
            self._end(CLOSE_TIMEOUT)  # it keeps sending instead of answering: stop reading it
            return
        self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                self._end(CLOSE_TIMEOUT)  # the closing handshake is complete
        self._flush()

    def _account(self, size: int) -> None:
        """After a read: the unfinished-data budget, the byte rates, and a turn for the others."""
        guard, meter, msg = self.guard, self.meter, self.msg
        assert guard is not None
        unfinished = msg[2] + msg[1] - meter.skip if meter.skip else msg[0]
        fragments = FRAGMENT_OVERHEAD * len(self.frames)
        guard.update(self, unfinished + fragments + len(meter.part) + len(self.stash))
        now = self.loop.time()
        wait = self.pace.spend(now, size) if self.pace is not None else 0.0
        if self.share is not None:
            wait = max(wait, self.share.pace.spend(now, size))
        if wait > 0 and not self.paused & int(Pause.PACE):
            self._pause(Pause.PACE)
            self._later("pace", wait, self._resume, Pause.PACE)
        if size >= BULK_READ:
            if not self.paused & int(Pause.TURN):
                self._pause(Pause.TURN)
                self.loop.call_soon(self._resume, Pause.TURN)
            trim_heap_soon()  # big buffers will be let go soon: hand the heap back once they stop

    def _budget_freed(self) -> None:
        """Some bytes of our address's budget were given back: try the frame that waited."""
        if self.phase is not Phase.OPEN or not self.stash:
            return
        data, self.stash = self.stash, b""
        self._take(data)
        if not self.stash:
            self._resume(Pause.BUDGET)

    def _release(self, size: int) -> None:
        if not size or self.share is None:
            return
        self.held -= size
        for waiter in self.share.release(size):
            self.loop.call_soon(waiter)

    # `paused` holds the reasons as a plain int: the flags' own operators go through the enum
    # machinery (a microsecond or more each), and these run several times per message.

    def _pause(self, why: Pause) -> None:
        if not self.paused and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused = self.paused | int(why)

    def _resume(self, why: Pause) -> None:
        bit = int(why)
        if not self.paused & bit:
            return
        self.paused = self.paused & ~bit
        if not self.paused and self.phase is not Phase.CLOSED and not self.transport.is_closing():
            self.transport.resume_reading()
            if self.guard is not None:
                self.guard.touch(self)

    def _later(self, name: str, delay: float, callback: Any, *args: Any) -> None:
        old = self.timers.pop(name, None)
        if old is not None:
            old.cancel()
        self.timers[name] = self.loop.call_later(delay, self._fire, name, callback, args)

    def _fire(self, name: str, callback: Any, args: tuple[Any, ...]) -> None:
        self.timers.pop(name, None)
        callback(*args)

    # The app's side: ASGI receive.

    def _put(self, message: dict[str, Any], held: int = 0) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            waiter.set_result((message, held))
            return
        self.inbox.append((message, held))
        if message["type"] == "websocket.receive":
            self._pause(Pause.APP)

    async def receive(self) -> dict[str, Any]:
        """The next message. A large one (it reserved budget) stays counted, and reading stays
        paused, until the app asks for the next: the app works on it meanwhile (a worker parses
        it, say), so a peer has at most one large message in the server at a time; the next one
        waits in the kernel's buffers (TCP backpressure), not in ours."""
        if self.working:
            done, self.working = self.working, 0
            self._release(done)
        if not self.inbox and self.stash and not self.paused & int(Pause.BUDGET):
            data, self.stash = self.stash, b""
            self._take(data)  # the messages held back while the app had plenty to read
        if self.inbox:
            message, held = self.inbox.pop(0)
        else:
            self._resume(Pause.APP)  # nothing unread: the peer may send the next one
            waiter = self.waiter = self.loop.create_future()
            message, held = await waiter
        if held:
            self.working = held
            self._pause(Pause.APP)
        elif not self.inbox:
            self._resume(Pause.APP)
        return message

    # Keepalive pings.

    def _keepalive(self) -> None:
        interval = self.config.ws_ping_interval
        if interval:
            self._later("ping", interval, self._ping)

    def _ping(self) -> None:
        if self.phase is not Phase.OPEN:
            return
        payload = os.urandom(4)
        self.conn.send_ping(payload)
        self._flush()
        self.ping_payload = payload
        timeout = self.config.ws_ping_timeout
        if timeout:
            self._later("pong", timeout, self.fail, CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
        else:
            self._keepalive()

    def _pong(self, payload: bytes) -> None:
        if self.timers.get("pong") is None or payload != self.ping_payload:
            return  # unsolicited, or the answer to an older ping
        self.timers.pop("pong").cancel()
        self._keepalive()
