"""Server-to-client websocket frames, built once per broadcast, and where they are written.

A frame the server sends is never masked (RFC 6455, 5.1): the same bytes go to every recipient.
So a broadcast is framed once per dialect, header and payload together (`Outgoing`), and a
transport that knows how (gischat's own websocket protocol, `gischat.server.websocket`) offers
the app a `FrameSink` in the ASGI scope's `extensions` under `SINK_EXTENSION`: the app writes the
ready bytes straight to the socket, with no task, no ASGI event and no framing per recipient.
Under any other ASGI server there is no sink and the app sends `Outgoing.event` the usual way.

The sink also lets the app take large text messages undecoded (`FrameSink.receive_raw_text`):
they arrive as `{"type": "websocket.receive", "text": None, RAW_TEXT_KEY: <UTF-8 bytes>}`,
their UTF-8 unchecked, for the app to check as it writes them out (`protocol.utf8`).
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

# The ASGI scope extension under which gischat's websocket protocol offers its FrameSink.
SINK_EXTENSION = "gischat.frames"
# The key of a `websocket.receive` event holding a large text message's bytes, once asked for.
RAW_TEXT_KEY = "gischat.utf8"

# First header byte of a final text frame: FIN and opcode 0x1.
_FIN_TEXT = 0x81


def text_frame_header(size: int) -> bytes:
    """The header of a final, unmasked text frame whose payload has `size` bytes."""
    if size < 126:
        return bytes((_FIN_TEXT, size))
    if size < 1 << 16:
        return struct.pack("!BBH", _FIN_TEXT, 126, size)
    return struct.pack("!BBQ", _FIN_TEXT, 127, size)


class Outgoing:
    """One text message on its way to many sockets: framed once, written as is to each.

    `wire` is the whole frame (header, then the UTF-8 payload); `data` is the payload alone (a
    copy: for REST answers and history, not for the fan-out). The ASGI event for servers
    without a sink is made on first use only.
    """

    __slots__ = ("_event", "offset", "size", "wire")

    def __init__(self, wire: bytes, offset: int) -> None:
        self.wire = wire
        self.offset = offset
        self.size = len(wire) - offset
        self._event: dict[str, Any] | None = None

    @classmethod
    def of(cls, text: str) -> Outgoing:
        data = text.encode()
        header = text_frame_header(len(data))
        return cls(header + data, len(header))

    @property
    def data(self) -> bytes:
        return self.wire[self.offset :]

    @property
    def event(self) -> dict[str, Any]:
        """The ASGI `websocket.send` event, for a server that offers no sink."""
        if self._event is None:
            self._event = {"type": "websocket.send", "text": str(self.data, "utf-8")}
        return self._event


class FrameSink(Protocol):
    """A socket the app may write ready frames to (gischat's websocket protocol implements it)."""

    def offer(self, item: Outgoing) -> bool:
        """Write `item` now if the socket can take it at once; False: nothing was written (the
        peer is behind, or the socket is not open), the caller queues it and uses `deliver`."""
        ...

    async def deliver(self, item: Outgoing) -> None:
        """Write `item` once the peer has read enough of what came before.

        Raises ConnectionError when the socket is closed or closing: nothing more goes out."""
        ...

    def receive_raw_text(self, minimum: int) -> None:
        """From now on, text messages of at least `minimum` bytes reach the app undecoded,
        under `RAW_TEXT_KEY`: checking their UTF-8 (RFC 6455 fails the connection with 1007
        when they are not) is then the app's job."""
        ...
