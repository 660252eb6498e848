"""How a websocket ends: a close frame out or in, the app told, the transport closed or aborted.

After our close frame the peer's reply is awaited a while, and what it still sends is parsed
only up to CLOSING_READ_BYTES: enough for a polite peer's reply behind a message in flight,
while a flood after our close costs no parsing at all. The transport closes once what is
buffered, our close frame last, is out; a peer that does not read it in time is aborted.
"""

from __future__ import annotations

import contextlib

from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from gischat.server.flow import ReadFlow
from gischat.server.inbox import Inbox
from gischat.server.keepalive import Keepalive
from gischat.server.reading import Reader
from gischat.server.timers import Timers
from gischat.server.writing import Writer

# Once we sent a close frame, the peer's reply is awaited this long (uvicorn: 10 s), and the
# frames it still sends are parsed only up to this many bytes.
CLOSE_TIMEOUT = 1.0
CLOSING_READ_BYTES = 64 * 1024
# A peer closed while it does not read gets this long to read what is left, our close frame last.
UNREAD_CLOSE_TIMEOUT = 10.0


class Closing:
    """The closing handshake of one websocket, whoever begins it. The protocol keeps the phase:
    these run once it has left the open one."""

    __slots__ = ("conn", "flow", "inbox", "keepalive", "readable", "reader", "timers", "writer")

    def __init__(
        self,
        conn: ServerProtocol,
        writer: Writer,
        reader: Reader,
        inbox: Inbox,
        flow: ReadFlow,
        keepalive: Keepalive,
        timers: Timers,
    ) -> None:
        self.conn, self.writer, self.reader, self.inbox = conn, writer, reader, inbox
        self.flow, self.keepalive, self.timers = flow, keepalive, timers
        self.readable = CLOSING_READ_BYTES  # what the peer may still send after our close

    def close(self, code: int, reason: str, *, wait: float) -> None:
        """The app closes: our close frame goes out, and the peer's reply is awaited `wait` s."""
        with contextlib.suppress(InvalidState):
            self.conn.send_close(code, reason)
        self.writer.flush()
        self.tell(code, reason)
        self.reader.forget()
        if self.writer.paused:
            # The peer does not read: our close frame waits behind what it has not read; it
            # gets a while to read it all, and nothing it sends meanwhile is parsed.
            self.end(UNREAD_CLOSE_TIMEOUT)
            return
        self.timers.start("close", wait, self.end, CLOSE_TIMEOUT)
        self.flow.release()

    def refused(self, code: int, reason: str) -> None:
        """We refused the peer (our close frame is out): nothing it sends counts any more."""
        self.tell(code, reason)
        self.reader.forget()
        self.end(CLOSE_TIMEOUT)

    def peer_closed(self) -> None:
        """The peer's close frame, on an open connection: the app is told its code and reason."""
        received = self.conn.close_rcvd
        self.tell(*((received.code, received.reason) if received is not None else (1005, "")))

    def reply(self) -> None:
        """The peer's close frame: our reply (the parser queued it) goes out, then the end."""
        self.writer.flush()
        self.end(CLOSE_TIMEOUT)

    def tell(self, code: int, reason: str) -> None:
        """A close frame went out or came in: the app is told, pings stop."""
        self.inbox.put({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.keepalive.stop()

    def read(self, data: bytes) -> None:
        """Our close frame is out: parse a little more (the peer's reply), then nothing."""
        self.readable -= len(data)
        if self.readable < 0:
            self.end(CLOSE_TIMEOUT)  # it keeps sending instead of answering: stop reading it
            return
        self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                self.end(CLOSE_TIMEOUT)  # the closing handshake is complete
        self.writer.flush()

    def end(self, grace: float) -> None:
        """Close the transport: what is buffered (our close frame last) goes out first, unless
        the peer has not read it within `grace` seconds; then the connection is aborted."""
        self.timers.cancel("close")
        self.writer.end(grace)

    @property
    def awaiting_reply(self) -> bool:
        """Whether our close frame is out and the peer's reply still awaited."""
        return "close" in self.timers
