"""A large text message's UTF-8, checked a piece at a time instead of decoded in one step.

gischat's transport hands the app text messages of a megabyte and more as their UTF-8 bytes,
undecoded (`frames.RAW_TEXT_KEY`): decoding 16 MB costs the loop 15 ms in one step on a small
virtual machine (most of it faulting in a fresh 16 MB string), and the string is never needed,
since such a message goes to a worker as bytes anyway (`work.handoff`). RFC 6455 still wants
the connection failed (1007) for a text message that is not UTF-8: `Utf8Check` checks the bytes
as they are written out, a piece per loop turn; a piece of ASCII (nearly all of GeoJSON)
costs one `isascii`.
"""

from __future__ import annotations

import codecs

from gischat.protocol.refusals import InvalidText


def invalid_at(position: int) -> InvalidText:
    return InvalidText(f"invalid UTF-8 in a text message at byte {position}")


class Utf8Check:
    """Consecutive pieces of one message's bytes, checked as one UTF-8 text."""

    __slots__ = ("_decoder", "_offset")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._offset = 0  # bytes fed before this piece

    def feed(self, piece: bytes, final: bool = False) -> None:
        """Raise `InvalidText` at the first byte that cannot be UTF-8 (at the end, when `final`,
        a character left unfinished)."""
        pending = len(self._decoder.getstate()[0])  # the unfinished character of the last piece
        if not pending and piece.isascii():
            self._offset += len(piece)
            return
        try:
            self._decoder.decode(piece, final)
        except UnicodeDecodeError as exc:
            raise invalid_at(self._offset - pending + exc.start) from None
        self._offset += len(piece)


def decode_text(data: bytes) -> str:
    """A whole text message's bytes as text, or `InvalidText`."""
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise invalid_at(exc.start) from None
