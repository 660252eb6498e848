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
    """Where the stream stands between frames: payload bytes still to skip, a header cut in two."""

    __slots__ = ("part", "skip")

    def __init__(self) -> None:
        self.skip = 0  # payload bytes of the current frame not yet seen
        self.part = b""  # the start of a header whose end has not arrived
