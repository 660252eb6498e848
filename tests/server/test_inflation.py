"""The bound on what a deflated message may inflate to (`gischat.server.inflation`), frame by frame:
the whole message counts, however it is cut. (A real server refusing a bomb is in
test_fuzz_regressions.py.)"""

from __future__ import annotations

import base64
import os

import pytest
from websockets.exceptions import PayloadTooBig
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from gischat.server.inflation import INFLATE_FLOOR, INFLATE_RATIO, BoundedInflation


def pair() -> tuple[PerMessageDeflate, BoundedInflation]:
    """A client's compressor and the server's bounded decompressor, as negotiated (12-bit windows)."""
    return PerMessageDeflate(False, False, 12, 12), BoundedInflation(PerMessageDeflate(False, False, 12, 12))


def test_fragments_each_under_the_floor_are_bounded_as_one_message() -> None:
    client, server = pair()
    piece = b"a" * (INFLATE_FLOOR - 1000)
    first = client.encode(Frame(Opcode.TEXT, piece, fin=False))
    assert len(first.data) * INFLATE_RATIO < INFLATE_FLOOR  # each alone would pass on the floor
    assert server.decode(first, max_size=16 * 1024 * 1024).data == piece
    with pytest.raises(PayloadTooBig):
        server.decode(client.encode(Frame(Opcode.CONT, piece, fin=False)), max_size=16 * 1024 * 1024)


def test_each_message_starts_its_own_count() -> None:
    client, server = pair()
    piece = b"a" * (INFLATE_FLOOR - 1000)
    for _ in range(5):
        assert server.decode(client.encode(Frame(Opcode.TEXT, piece)), max_size=None).data == piece


def test_a_message_may_inflate_to_the_ratio_past_the_floor() -> None:
    client, server = pair()
    text = base64.b64encode(os.urandom(1_500_000))  # 2 MB that deflates 1.3 times, as a photo does
    sent = client.encode(Frame(Opcode.TEXT, text))
    assert len(text) > INFLATE_FLOOR
    assert server.decode(sent, max_size=16 * 1024 * 1024).data == text
    assert server.decode(client.encode(Frame(Opcode.PING, b"ping")), max_size=125).data == b"ping"
