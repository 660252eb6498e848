"""Frame heads read ahead of the parser: a frame is judged by its header before its payload is read.

`websockets` parses what it is fed and buffers a frame until it is whole; only then would a limit
see it. The meter walks the same byte stream a step ahead, reading only each frame's header
(2 to 14 bytes) and skipping its payload by arithmetic, so the protocol can refuse a frame that
can never fit, count a ping, or hold back a large frame until the budget has room, before one
byte of its payload is fed to the parser. Malformed headers are not its business: it passes
them on and the parser fails the connection as RFC 6455 says.
"""

from __future__ import annotations

from typing import NamedTuple

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_PING = 0x9
DATA_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY))


class Head(NamedTuple):
    """A frame header: its opcode, whether it ends its message, its payload length, its size."""

    opcode: int
    fin: bool
    length: int
    size: int


def read_head(buf: bytes, pos: int) -> Head | None:
    """The header starting at `buf[pos]`, or None when `buf` ends before it does."""
    available = len(buf) - pos
    if available < 2:
        return None
    first, second = buf[pos], buf[pos + 1]
    length = second & 0x7F
    size = 2
    if length == 126:
        size = 4
        if available < size:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
    elif length == 127:
        size = 10
        if available < size:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
    if second & 0x80:
        size += 4  # the masking key
    if available < size:
        return None
    return Head(first & 0x0F, bool(first & 0x80), length, size)


class Meter:
    """Where the stream stands: payload bytes still to skip, a header cut in two, and the sizes of
    the data message under way (what the unfinished-data budget counts, `fed`)."""

    __slots__ = ("before", "frame", "part", "skip", "through")

    def __init__(self) -> None:
        self.skip = 0  # payload bytes of the current frame not yet seen
        self.part = b""  # the start of a header whose end has not arrived
        self.through = 0  # bytes of the data message under way through its last frame read (0: none)
        self.frame = 0  # the payload length of that frame
        self.before = 0  # bytes of the message before that frame

    def total(self, head: Head) -> int:
        """The size of the data message `head` belongs to, through `head`'s frame."""
        return (self.through if head.opcode == OP_CONT else 0) + head.length

    def enter(self, head: Head) -> None:
        """`head`'s data frame is read: the message runs through it, or ends with it."""
        before = self.through if head.opcode == OP_CONT else 0
        self.through = 0 if head.fin else before + head.length
        self.frame = head.length
        self.before = before

    def step(self, head: Head) -> int:
        """Go past `head` (a header cut in two ends with it): its payload is to be skipped next.
        The bytes of the header that were not in `part`."""
        ahead = head.size - len(self.part)
        self.part, self.skip = b"", head.length
        return ahead

    def fed(self) -> int:
        """Bytes of the unfinished data message fed so far: the frame under way up to where it is."""
        return self.before + self.frame - self.skip if self.skip else self.through
