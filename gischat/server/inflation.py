"""permessage-deflate with a bound on what a message may inflate to, for its size on the wire.

`websockets` inflates a compressed frame on the event loop, in one go, up to what MAX_FRAME_SIZE
leaves of the message: 20 kB of deflated text becomes 16 MiB, 30 to 40 ms of one core during
which no other socket is served, before the message is refused 1009 anyway (bench/fuzz.py's
bomb; innocents' round trips went from 5 to 50 ms at the 99th percentile under a few bombs a
second). Every other limit counts bytes on the wire, so a bomb costs its sender almost nothing.

Here a message may inflate to at most INFLATE_RATIO times the bytes its frames took on the wire
so far, or INFLATE_FLOOR bytes, whichever is more; past that it is refused 1009 like a message
over MAX_FRAME_SIZE, and zlib stops at the bound, so that the loop's work stays in proportion to
what the peer sent. What clients share stays well within: a photo in base64 deflates 1.3 times, a
layer 2 to 8 times, a regular grid of points with the same properties about 60 times; only
runs of one character go past (zlib's best is about 1000).

The bound wraps the extension `websockets` negotiates (`ServerExtensionFactory` and `Extension`,
its public bases for extensions): the negotiation and the compression of what we send are left
to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from websockets.extensions import Extension, ServerExtensionFactory
from websockets.frames import Frame, Opcode
from websockets.typing import ExtensionParameter

# A message of any ratio may inflate to this much (the text of a chat message that repeats
# itself, a short frame that refers to the last one's words): 64 messages of one read
# (reading.MAX_MESSAGES_PER_FEED) then inflate to 4 MiB at most.
INFLATE_FLOOR = 64 * 1024
# Past the floor, a message may inflate to this many times its size on the wire.
INFLATE_RATIO = 64


class BoundedInflation(Extension):
    """The negotiated permessage-deflate, each message's inflation bounded by its wire size."""

    def __init__(self, inner: Extension) -> None:
        self.inner = inner
        self.name = inner.name
        self.wire = 0  # bytes of the current message's frames on the wire (their payloads)
        self.inflated = 0  # bytes they inflated to

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        opcode = frame.opcode
        if opcode is not Opcode.TEXT and opcode is not Opcode.BINARY and opcode is not Opcode.CONT:
            return self.inner.decode(frame, max_size=max_size)
        if opcode is not Opcode.CONT:  # a new message
            self.wire = self.inflated = 0
        self.wire += len(frame.data)
        # At least 1: `websockets` reads a limit of 0 as none.
        allowed = max(max(INFLATE_FLOOR, INFLATE_RATIO * self.wire) - self.inflated, 1)
        decoded = self.inner.decode(frame, max_size=allowed if max_size is None else min(max_size, allowed))
        self.inflated += len(decoded.data)
        return decoded

    def encode(self, frame: Frame) -> Frame:
        return self.inner.encode(frame)


class BoundedInflationFactory(ServerExtensionFactory):
    """Negotiates as `inner` does; the extension it accepts comes bounded."""

    def __init__(self, inner: ServerExtensionFactory) -> None:
        self.inner = inner
        self.name = inner.name

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], Extension]:
        response, extension = self.inner.process_request_params(params, accepted_extensions)
        return response, BoundedInflation(extension)
