"""What a websocket writes: the frames of one loop turn in one call, and the transport's end.

A socket that keeps up does not write each frame at once: it collects the frames of the turn
(references to shared frame bytes, no copy) and the server's write batch (`server.batch`) writes
them with one call per socket when the turn ends. When the transport's buffer is over its
high-water mark the peer is behind: the app's own sends wait (`drained`) and broadcasts are
declined (`offer`), so that the app queues them for the peer instead.
"""

from __future__ import annotations

import asyncio

from websockets.exceptions import InvalidState
from websockets.server import ServerProtocol

from gischat.protocol.frames import Outgoing
from gischat.server.batch import WriteBatch
from gischat.server.timers import Timers


class Writer:
    """The write side of one websocket: its transport, and the framing of `websockets` when the
    frame is not ready-made (`server.batch.Flushable`)."""

    __slots__ = ("batch", "conn", "deflate", "drain", "loop", "out", "paused", "timers", "transport")

    def __init__(
        self, transport: asyncio.Transport, conn: ServerProtocol, timers: Timers, *, deflate: bool
    ) -> None:
        self.transport = transport
        self.conn = conn  # the connection's sans-I/O protocol, which frames what is not ready-made
        self.timers = timers  # the connection's, for the abort at the end
        self.loop = timers.loop
        self.deflate = deflate  # compressed per connection: a shared frame cannot be used
        self.paused = False  # the transport's buffer is over its high-water mark
        self.drain: asyncio.Future[None] | None = None  # resolved when it is no longer
        self.batch: WriteBatch | None = None  # under a guard, frames are written once per loop turn
        self.out: list[bytes] | None = None  # frames collected this turn

    def offer(self, item: Outgoing) -> bool:
        """Write a broadcast frame now, or say no: the peer is behind."""
        if self.paused:
            return False
        if self.deflate:
            self.conn.send_text(item.data)
            self.flush()
        else:
            self.queue(item.wire)
        return True

    def deliver(self, item: Outgoing) -> None:
        """Write a broadcast frame that waited for the peer, after what this turn collected."""
        self.flush_out()
        if self.deflate:
            self.conn.send_text(item.data)
            self.flush()
        else:
            self.transport.write(item.wire)

    def send(self, data: bytes | None, text: str | None) -> None:
        """The app's own `websocket.send`, framed by `websockets`."""
        try:
            if data is not None:
                self.conn.send_binary(data)
            elif text is not None:
                self.conn.send_text(text.encode())
        except InvalidState:
            raise ConnectionResetError("websocket closed") from None
        self.flush()

    def queue(self, data: bytes) -> None:
        """Write `data` with the rest of this loop turn's frames: one call for all."""
        out = self.out
        if out is not None:
            out.append(data)
        elif self.batch is not None:
            self.out = [data]
            self.batch.add(self)
        else:
            self.transport.write(data)

    def flush_out(self) -> None:
        """Write the frames collected this loop turn, in one call."""
        out, self.out = self.out, None
        if out and not self.transport.is_closing():
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)

    def flush(self) -> None:
        """Write what the sans-I/O protocol has to send, after the frames collected before it."""
        if self.out:
            self.flush_out()
        out = self.conn.data_to_send()
        if out:
            data = b"".join(out)
            if data and not self.transport.is_closing():
                self.transport.write(data)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wake()

    async def drained(self) -> None:
        """Until the buffer is below its low-water mark again, or the connection is lost."""
        if self.drain is None or self.drain.done():
            self.drain = self.loop.create_future()
        await self.drain

    def end(self, grace: float) -> None:
        """Close the transport: what is buffered (our close frame last) goes out first, unless
        the peer has not read it within `grace` seconds; then the connection is aborted."""
        transport = self.transport
        if not transport.is_closing():
            transport.close()
        if transport.get_write_buffer_size() and "abort" not in self.timers:
            self.timers.start("abort", grace, transport.abort)

    def stop(self) -> None:
        """The connection is lost: nobody waits any longer, and nothing more is written."""
        self._wake()
        self.out = None

    def _wake(self) -> None:
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)
