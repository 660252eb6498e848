"""The read path of an open websocket: frame heads judged, frames parsed, messages for the app.

`websockets` parses what it is fed and buffers a frame until it is whole; only then would a limit
see it. So the meter (`server.meter`) reads each frame's header a step ahead of the parser, and
the reader judges the frame before one byte of its payload is fed: too large for MAX_FRAME_SIZE
is refused at once (1009), a ping over the ping rate is refused before it is answered (1008),
and a large frame reserves its length in its address's held-bytes budget (`server.budget`) or
waits, with the rest of the read, until there is room (reading paused, `server.flow`). A read of
256 KiB can hold thousands of small frames: past MAX_MESSAGES_PER_FEED messages the rest waits
until the app has read them. What passes is fed to the public sans-I/O parser of `websockets`,
and each whole message goes to the app's inbox (`server.inbox`).

What only the protocol (`server.websocket`) may act on, a refusal, a pong, the peer's close
frame, comes back to it as `Stops`, once the read is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from gischat.protocol.frames import RAW_TEXT_KEY
from gischat.protocol.refusals import CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, InvalidText
from gischat.protocol.utf8 import decode_text
from gischat.server.budget import ReadBudget
from gischat.server.flow import Pause, ReadFlow
from gischat.server.inbox import Inbox
from gischat.server.meter import DATA_OPCODES, OP_PING, Head, Meter, read_head
from gischat.server.timers import Timers
from gischat.work.heap import trim_heap_soon

# Messages parsed from one read at most: the rest waits, unparsed and with reading paused, until
# the app has read these.
MAX_MESSAGES_PER_FEED = 64
# Bookkeeping cost of one received fragment of a fragmented message, counted with its data so
# that a flood of one-byte fragments cannot hold much more memory than the budget says.
FRAGMENT_OVERHEAD = 64
# A read at least this large means the peer is streaming a big message: reading from it stops
# until the loop has served everybody else once. Left alone, the event loop (libuv) reads up to
# 32 chunks in a row from each ready socket, and a crowd uploading at once stalls every room
# (docs/benchmarks.md, hostile clients).
BULK_READ = 64 * 1024
CLOSE_TOO_BIG = 1009


@dataclass(frozen=True, slots=True)
class Refusal:
    """The peer is refused: the code and reason of our close frame."""

    code: int
    reason: str


@dataclass(slots=True)
class Stops:
    """What a read brought that the protocol acts on, in this order."""

    invalid: Refusal | None = None  # a text message that is not UTF-8 (later ones were dropped)
    pongs: list[bytes] = field(default_factory=list)
    peer_closed: bool = False  # the peer's close frame (nothing comes after it)
    refused: Refusal | None = None  # the frame the heads were judged up to: nothing of it was fed


class PingAllowance:
    """A connection's ping rate as one number (GCRA): the time at which its allowance would be
    full again. A ping costs `interval` seconds of credit; `tolerance` seconds of them may be
    spent at once."""

    __slots__ = ("full_at", "interval", "rate", "tolerance")

    def __init__(self, rate: float, interval: float, tolerance: float) -> None:
        self.rate = rate
        self.interval = interval
        self.tolerance = tolerance
        self.full_at = 0.0

    def take(self, now: float) -> Refusal | None:
        """Count a ping received at `now`; a refusal when it is one too many."""
        full_at = max(self.full_at, now) + self.interval
        if full_at - now > self.tolerance:
            return Refusal(CLOSE_POLICY_VIOLATION, f"ping flood: more than {self.rate:g} pings per second")
        self.full_at = full_at
        return None


class Reader:
    """What one websocket reads, from the bytes of the transport to the messages of the app."""

    __slots__ = (
        "budget", "conn", "flow", "frames", "inbox", "max_size", "meter", "ping", "raw_from",
        "stash", "text", "timers",
    )  # fmt: skip

    def __init__(
        self,
        conn: ServerProtocol,
        budget: ReadBudget,
        flow: ReadFlow,
        inbox: Inbox,
        timers: Timers,
        *,
        max_size: int,
    ) -> None:
        # The connection's parts, shared with the protocol.
        self.conn, self.budget, self.flow, self.inbox, self.timers = conn, budget, flow, inbox, timers
        self.max_size = max_size  # MAX_FRAME_SIZE (0: no limit), for a whole message
        self.meter = Meter()
        self.ping: PingAllowance | None = None  # under a guard with a ping rate
        self.stash = b""  # read but held back: past a frame that waits, or past enough messages
        self.frames: list[bytes] = []  # of the data message being assembled
        self.text = False  # whether that message is text
        self.raw_from = 0  # text messages of at least this many bytes go to the app undecoded (0: none)

    def read(self, data: bytes, open_: bool) -> Stops | None:
        """Take `data` as far as its frames may go now; what the protocol must act on, if anything.
        Messages go to the app only while the connection is `open_`."""
        feed, stops = self._admit(data)
        if feed:
            self.conn.receive_data(feed)
        for event in self.conn.events_received():
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                if opcode is not Opcode.CONT:
                    self.text = opcode is Opcode.TEXT
                payload = bytes(event.data)
                # The parser keeps its last frame until the next one comes: without its payload,
                # an idle socket (or a closed one, until a collection finds it) holds no message.
                event.data = b""
                self.budget.delivered(len(payload))
                self.frames.append(payload)
                if event.fin and (invalid := self._message(open_)) is not None:
                    open_ = False
                    stops = stops or Stops()
                    stops.invalid = invalid
            elif opcode is Opcode.PONG:
                stops = stops or Stops()
                stops.pongs.append(bytes(event.data))
            elif opcode is Opcode.CLOSE:
                stops = stops or Stops()
                stops.peer_closed = True
        return stops

    def take_stash(self) -> bytes:
        """What was held back, for the next try; the stash is empty after."""
        stash, self.stash = self.stash, b""
        return stash

    def forget(self) -> None:
        """Nothing more the peer sends will be delivered: let go of what it held."""
        self.frames, self.stash = [], b""

    def end(self) -> None:
        """The connection is gone: what the parser held of an unfinished frame goes too (the end
        of the stream discards it), as does what we held, at once rather than whenever the
        collector finds the closed connection's cycles (up to MAX_FRAME_SIZE each)."""
        self.forget()
        self.conn.receive_eof()

    def unfinished(self) -> int:
        """Bytes the peer makes us hold for a message it has not finished: what of it was fed
        (its parsed frames counted with their bookkeeping), a header cut in two, and what waits
        in the stash."""
        meter = self.meter
        return meter.fed() + FRAGMENT_OVERHEAD * len(self.frames) + len(meter.part) + len(self.stash)

    def throttle(self, size: int) -> None:
        """After a read of `size` bytes, under a guard: the byte rates, and after a big read a
        turn for every other socket first."""
        flow, loop = self.flow, self.timers.loop
        wait = self.budget.spend(loop.time(), size)
        if wait > 0 and not flow.paused_for(Pause.PACE):
            flow.pause(Pause.PACE)
            self.timers.start("pace", wait, flow.resume, Pause.PACE)
        if size >= BULK_READ:
            if not flow.paused_for(Pause.TURN):
                flow.pause(Pause.TURN)
                loop.call_soon(flow.resume, Pause.TURN)
            trim_heap_soon()  # big buffers will be let go soon: hand the heap back once they stop

    # Frame heads, judged before their payloads are fed.

    def _admit(self, data: bytes) -> tuple[bytes, Stops | None]:
        """What of `data` the parser may have: up to the first frame that must wait (the rest is
        stashed, reading paused) or be refused."""
        meter, size, pos, messages = self.meter, len(data), 0, 0
        while pos < size:
            if meter.skip:
                step = min(meter.skip, size - pos)
                meter.skip -= step
                pos += step
                continue
            part = meter.part
            head = read_head(part + data[pos : pos + 14], 0) if part else read_head(data, pos)
            if head is None:
                meter.part = part + data[pos:]
                break
            if head.fin and head.opcode in DATA_OPCODES:
                if messages == MAX_MESSAGES_PER_FEED:
                    return self._hold(data, pos, Pause.APP), None
                messages += 1
            verdict = self._judge(head)
            if isinstance(verdict, Refusal):
                return data[:pos], Stops(refused=verdict)
            if verdict is not None:  # the rest, this frame's header included, waits for room
                return self._hold(data, pos, verdict), None
            pos += meter.step(head)
        return data, None

    def _hold(self, data: bytes, pos: int, wait: Pause) -> bytes:
        self.stash = data[pos:]
        self.flow.pause(wait)
        return data[:pos]

    def _judge(self, head: Head) -> Pause | Refusal | None:
        """None: read the frame; `Pause.BUDGET`: it waits for room; a `Refusal`: refuse the peer."""
        opcode = head.opcode
        if opcode == OP_PING:
            return self.ping.take(self.timers.loop.time()) if self.ping is not None else None
        if opcode not in DATA_OPCODES:
            return None
        total = self.meter.total(head)
        if self.max_size and total > self.max_size:
            return Refusal(CLOSE_TOO_BIG, f"message too big: {total} bytes (max {self.max_size})")
        if not self.budget.reserve(head.length):
            return Pause.BUDGET
        self.meter.enter(head)
        return None

    # Whole messages, for the app.

    def _message(self, open_: bool) -> Refusal | None:
        """A whole message arrived: to the app (it holds its reservation until read); a refusal
        when it is text and not UTF-8."""
        frames, self.frames = self.frames, []
        held = self.budget.take_message()
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if not open_:
            self.budget.release(held)
            return None
        if not self.text:
            self._to_app({"type": "websocket.receive", "bytes": data}, held)
            return None
        if self.raw_from and len(data) >= self.raw_from:
            # The app asked for it (`receive_raw_text`) and checks the UTF-8 as it goes.
            self._to_app({"type": "websocket.receive", "text": None, RAW_TEXT_KEY: data}, held)
            return None
        try:
            text = decode_text(data)
        except InvalidText as exc:
            self.budget.release(held)
            return Refusal(CLOSE_INVALID_DATA, exc.reason)
        self._to_app({"type": "websocket.receive", "text": text}, held)
        return None

    def _to_app(self, event: dict[str, Any], held: int) -> None:
        """Reading pauses until the app has taken the message."""
        if self.inbox.put(event, held):
            self.flow.pause(Pause.APP)
