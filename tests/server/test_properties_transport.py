"""Properties of what the transport reads before the app sees anything: upgrade heads, frame heads.

- The opening handshake (`server/upgrade.py`): any bytes given as an upgrade request's head are
  either an `Upgrade` (of the one request they hold, with the right accept value, and one the HTTP
  gate hands to the websocket protocol) or a `HandshakeRefused` whose answer is a complete HTTP
  response; `wants_websocket` takes any bytes.
- A refused handshake's access line is one printable line, whatever its path decodes to.
- Frame heads (`server/meter.py`): `read_head` reads any bytes at any position (nothing, or a head
  that fits in what is there), reads every header a client can write exactly, and a stream of
  frames metered the way the reading half meters it gives the same heads however it is split.
- The read path (`server/reading.py`, its meter, judge and parser together) gives the app the
  same messages and ends the same way however a client's bytes arrive.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
from typing import Any, cast
from urllib.parse import quote_from_bytes, unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from gischat.server.budget import ReadBudget
from gischat.server.flow import ReadFlow
from gischat.server.handshake import access_logger, log_access
from gischat.server.inbox import Inbox
from gischat.server.meter import Head, Meter, read_head
from gischat.server.reading import Reader
from gischat.server.timers import Timers
from gischat.server.upgrade import (
    HandshakeRefused,
    Upgrade,
    accept_value,
    read_upgrade,
    refusal,
    switching_protocols,
    wants_websocket,
)

from properties_profile import examples

# --------------------------------------------------------------------------- upgrade heads

KEYS = st.binary(min_size=16, max_size=16).map(base64.b64encode)
TARGETS = st.sampled_from(
    [b"/room/QGIS/ws", b"/channel/Field%20and%20mobile/ws", b"/room/x/ws?a=1", b"*", b"/"]
)
TOKEN = st.from_regex(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", fullmatch=True)
# Header values as RFC 9110 writes them (visible characters, inner spaces), and any bytes.
FIELD_VALUE = st.from_regex(rb"[\x21-\x7e]([\x20-\x7e]{0,20}[\x21-\x7e])?", fullmatch=True)


@st.composite
def upgrade_heads(draw: st.DrawFn) -> bytes:
    """A valid upgrade request's head, its header lines in any order, with extra headers."""
    lines = [
        (b"Host", b"127.0.0.1:8000"),
        (b"Upgrade", draw(st.sampled_from([b"websocket", b"WebSocket", b"h2c, websocket"]))),
        (b"Connection", draw(st.sampled_from([b"Upgrade", b"keep-alive, Upgrade", b"upgrade"]))),
        (b"Sec-WebSocket-Key", draw(KEYS)),
        (b"Sec-WebSocket-Version", b"13"),
        *draw(st.lists(st.tuples(TOKEN, FIELD_VALUE), max_size=3)),
    ]
    lines = draw(st.permutations(lines))
    target = draw(TARGETS)
    head = (
        b"GET "
        + target
        + b" HTTP/1.1\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in lines)
    )
    return head + b"\r\n"


@st.composite
def mutated_heads(draw: st.DrawFn) -> bytes:
    """A valid head, then lines dropped, doubled or rewritten, bytes flipped, cut or added."""
    head = draw(upgrade_heads())
    for _ in range(draw(st.integers(1, 3))):
        lines = head.split(b"\r\n")
        action = draw(
            st.sampled_from(
                ["drop", "double", "value", "name", "line", "flip", "cut", "splice", "pipeline", "case"]
            )
        )
        at = draw(st.integers(0, len(lines) - 1))
        if action == "drop":
            del lines[at]
        elif action == "double":
            lines.insert(at, lines[at])
        elif action == "value":
            name = lines[at].partition(b":")[0]
            lines[at] = name + b": " + draw(FIELD_VALUE | st.binary(max_size=8))
        elif action == "name":
            lines[at] = draw(st.binary(max_size=12)) + b":" + lines[at].partition(b":")[2]
        elif action == "line":
            method = draw(st.sampled_from([b"POST", b"get", b"GET", b"PRI", b""]))
            version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2", b"HTTP/1.1 x"]))
            lines[0] = method + b" " + draw(st.binary(max_size=10)) + b" " + version
        elif action == "case":
            lines[at] = lines[at].swapcase()
        joined = b"\r\n".join(lines)
        if action == "flip" and joined:
            spot = draw(st.integers(0, len(joined) - 1))
            joined = (
                joined[:spot] + bytes([joined[spot] ^ (1 << draw(st.integers(0, 7)))]) + joined[spot + 1 :]
            )
        elif action == "cut":
            joined = joined[: draw(st.integers(0, len(joined)))]
        elif action == "splice":
            spot = draw(st.integers(0, len(joined)))
            joined = joined[:spot] + draw(st.binary(max_size=8)) + joined[spot:]
        elif action == "pipeline":
            joined = b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n" + joined
        head = joined
    return head


def request_target(head: bytes) -> bytes:
    """The target on a head's request line (empty lines before it are allowed, RFC 9112 2.2)."""
    line = head.lstrip(b"\r\n").split(b"\r\n", 1)[0]
    return line.split(b" ")[1]


def read(head: bytes) -> Upgrade | HandshakeRefused:
    try:
        return read_upgrade(head)
    except HandshakeRefused as exc:
        return exc


def checked(head: bytes) -> Upgrade | HandshakeRefused:
    upgrade = read(head)
    if isinstance(upgrade, HandshakeRefused):
        assert upgrade.status in (400, 405, 426)
        answer = refusal(upgrade)
        assert answer.startswith(b"HTTP/1.1 %d " % upgrade.status)
        answer_head, _, body = answer.partition(b"\r\n\r\n")
        assert b"\r\ncontent-length: %d\r\n" % len(body) in answer_head.lower() + b"\r\n"
        return upgrade
    assert upgrade.target == request_target(head)
    keys = [value for name, value in upgrade.headers if name == b"sec-websocket-key"]
    assert len(keys) == 1
    assert upgrade.accept == accept_value(keys[0])
    assert wants_websocket(head), "a valid upgrade the gate would not hand to the websocket protocol"
    assert switching_protocols(upgrade.accept, []).endswith(b"\r\n\r\n")
    return upgrade


@examples(200)
@given(head=upgrade_heads())
def test_valid_upgrade_heads_are_accepted(head: bytes) -> None:
    assert isinstance(checked(head), Upgrade)


@examples(500)
@given(head=mutated_heads())
def test_mutated_upgrade_heads_are_upgrades_or_refusals(head: bytes) -> None:
    checked(head)


@examples(300)
@given(head=st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_any_bytes_as_an_upgrade_head_are_refused_or_read(head: bytes) -> None:
    checked(head)
    assert isinstance(wants_websocket(head), bool)


def test_a_request_pipelined_before_an_upgrade_is_refused() -> None:
    """Found by the properties: `GET /status` then an upgrade, in one read, came out as one
    upgrade to `/status/room/QGIS/ws` with both requests' headers (the first one unanswered)."""
    upgrade = (
        b"GET /room/QGIS/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert read_upgrade(upgrade).target == b"/room/QGIS/ws"
    with pytest.raises(HandshakeRefused) as refused:
        read_upgrade(b"GET /status HTTP/1.1\r\nHost: a\r\nOrigin: https://evil.example\r\n\r\n" + upgrade)
    assert refused.value.status == 400


class Lines(logging.Handler):
    """The access lines written while it is attached, as a log file would hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def access_line(raw_path: bytes, query: bytes) -> str:
    lines, level = Lines(), access_logger.level
    access_logger.addHandler(lines)
    access_logger.setLevel(logging.INFO)
    try:
        scope = {
            "client": ("127.0.0.1", 1),
            "path": unquote(raw_path.decode("latin-1")),
            "query_string": query,
        }
        log_access(scope, "403")
    finally:
        access_logger.removeHandler(lines)
        access_logger.setLevel(level)
    assert len(lines.lines) == 1
    return lines.lines[0]


# A request target as httptools lets it through: visible ASCII, anything else percent-encoded.
ESCAPED = st.binary(max_size=30).map(lambda raw: quote_from_bytes(raw, safe="/%").encode())
QUERY = st.from_regex(rb"[!-~]{0,12}", fullmatch=True).map(lambda raw: raw.replace(b"#", b""))


@examples(300)
@given(raw_path=ESCAPED.map(lambda escaped: b"/room/" + escaped), query=QUERY)
def test_a_refused_handshake_is_one_printable_access_line(raw_path: bytes, query: bytes) -> None:
    """Whatever the path's percent-escapes decode to (the scope's `path` is decoded)."""
    line = access_line(raw_path, query)
    assert line.isprintable(), line


def test_a_path_cannot_forge_a_log_line() -> None:
    """Found by bench/fuzz.py: `/room/%ff%00/ws` wrote a NUL into the server's log, and
    `%0d%0a` a line break, after which a client could write any line it liked."""
    line = access_line(b"/room/%0d%0a2026-12-07 INFO gischat.rooms: x banned%00/ws", b"a=%0d%0a")
    assert "\n" not in line
    assert "\r" not in line
    assert "\x00" not in line
    assert line == (
        '127.0.0.1:1 - "WebSocket /room/%0D%0A2026-12-07%20INFO%20gischat.rooms%3A%20x%20banned%00/ws?a=%0d%0a" 403'
    )


# --------------------------------------------------------------------------- frame heads


def header(opcode: int, length: int, fin: bool, key: bytes | None, rsv: int = 0) -> bytes:
    """A frame header as a client (masked) or anybody (unmasked) may write it, any length."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    masked = 0x80 if key is not None else 0
    if length < 126:
        start = struct.pack("!BB", first, masked | length)
    elif length < 1 << 16:
        start = struct.pack("!BBH", first, masked | 126, length)
    else:
        start = struct.pack("!BBQ", first, masked | 127, length)
    return start + (key or b"")


FRAME_HEADS = st.builds(
    lambda opcode, length, fin, key, rsv: (
        header(opcode, length, fin, key, rsv),
        Head(opcode, fin, length, 0),
    ),
    st.integers(0, 15),
    st.integers(0, 125) | st.integers(126, 1 << 16) | st.integers(0, (1 << 64) - 1),
    st.booleans(),
    st.none() | st.binary(min_size=4, max_size=4),
    st.integers(0, 7),
)


@examples(500)
@given(data=st.binary(max_size=32), pos=st.integers(0, 40))
def test_read_head_takes_any_bytes_at_any_position(data: bytes, pos: int) -> None:
    head = read_head(data, pos)
    if head is None:
        return
    assert 2 <= head.size <= 14
    assert pos + head.size <= len(data)
    assert 0 <= head.opcode <= 15
    assert 0 <= head.length < 1 << 64


@examples(300)
@given(frame=FRAME_HEADS, before=st.binary(max_size=8), after=st.binary(max_size=8))
def test_read_head_reads_every_header_exactly(frame: tuple[bytes, Head], before: bytes, after: bytes) -> None:
    raw, expected = frame
    assert read_head(before + raw + after, len(before)) == expected._replace(size=len(raw))
    for end in range(len(raw)):  # a header cut anywhere is not read until it is whole
        assert read_head(before + raw[:end], len(before)) is None


def metered(pieces: list[bytes]) -> list[Head]:
    """The heads a `Meter` meets in a stream, piece by piece, walked as `Reader._admit` walks it:
    payloads skipped by arithmetic, a header cut between reads kept in `Meter.part`."""
    meter, heads = Meter(), []
    for data in pieces:
        pos, size = 0, len(data)
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
            heads.append(head)
            pos += meter.step(head)
    return heads


SMALL_FRAMES = st.lists(
    st.tuples(
        st.integers(0, 15),
        st.booleans(),
        st.none() | st.binary(min_size=4, max_size=4),
        st.binary(max_size=40) | st.integers(126, 300).map(bytes),
    ),
    max_size=8,
)


@examples(400)
@given(
    frames=SMALL_FRAMES, cuts=st.lists(st.integers(0, 1 << 12), max_size=10), garbage=st.binary(max_size=30)
)
def test_metered_heads_are_the_same_however_the_stream_is_split(
    frames: list[tuple[int, bool, bytes | None, bytes]], cuts: list[int], garbage: bytes
) -> None:
    stream = b"".join(
        header(opcode, len(payload), fin, key) + payload for opcode, fin, key, payload in frames
    )
    expected = [
        Head(opcode, fin, len(payload), len(header(opcode, len(payload), fin, key)))
        for opcode, fin, key, payload in frames
    ]
    data = stream + garbage  # whatever follows, the frames before it are read the same
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = [data[start:end] for start, end in zip([0, *points], [*points, len(data)], strict=False)]
    whole = metered([data])
    assert whole[: len(expected)] == expected
    assert metered(pieces) == whole


# --------------------------------------------------------------------------- the read path


class Transport:
    """All a `ReadFlow` asks of its transport."""

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def read_path(pieces: list[bytes], max_size: int) -> tuple[list[Any], Any]:
    """What the read path (`server/reading.py`: meter, judge, parser) makes of a client's bytes read
    in `pieces`: the app's events in order, and how it stopped (the close code of a refusal, of
    text that is not UTF-8 or of a protocol error; the peer's close frame), the app taking every
    message as it comes.

    The code, not the reason: a frame too big whose header is cut between its length and its
    masking key is refused by `websockets`' parser (it has the same MAX_FRAME_SIZE, for
    permessage-deflate) before the meter has the whole header: 1009 all the same, in its words."""
    loop = asyncio.new_event_loop()
    try:
        conn = ServerProtocol(state=State.OPEN, max_size=max_size or None)
        inbox = Inbox(loop)
        budget = ReadBudget(loop, lambda: None, reserving=True)
        reader = Reader(
            conn,
            budget,
            ReadFlow(cast(asyncio.Transport, Transport())),
            inbox,
            Timers(loop),
            max_size=max_size,
        )
        events: list[Any] = []
        for piece in pieces:
            data = reader.take_stash() + piece
            while True:
                stops = reader.read(data, True)
                events += [received.event for received in inbox.events]
                inbox.clear()
                # In the order the protocol acts on them (`GuardedWebSocketProtocol._take`).
                if stops is not None and stops.invalid is not None:
                    return events, stops.invalid.code
                if stops is not None and stops.peer_closed:
                    return events, "peer closed"
                if conn.close_sent is not None:  # the parser failed the connection
                    return events, int(conn.close_sent.code)
                if stops is not None and stops.refused is not None:
                    return events, stops.refused.code
                data = reader.take_stash()  # held back past enough messages: the app read them
                if not data:
                    break
        return events, None
    finally:
        loop.close()


KEY = b"\x5a\xa5\x0f\xf0"


def client_frame(opcode: int, fin: bool, payload: bytes, masked: bool) -> bytes:
    """A whole frame, masked as a client must (or not, which the parser refuses)."""
    key = KEY if masked else None
    return header(opcode, len(payload), fin, key) + (apply_mask(payload, KEY) if masked else payload)


CLIENT_FRAMES = st.lists(
    st.tuples(
        st.sampled_from([0x1, 0x1, 0x1, 0x0, 0x2, 0x9, 0xA, 0x8, 0x3]),
        st.booleans() | st.just(True),
        st.text(max_size=20).map(str.encode)
        | st.binary(max_size=20)
        | st.integers(126, 400).map(lambda n: b"x" * n),
        st.booleans() | st.just(True) | st.just(True),  # masked, mostly
    ),
    max_size=80,
)


@examples(300)
@given(
    frames=CLIENT_FRAMES,
    cuts=st.lists(st.integers(0, 1 << 14), max_size=8),
    max_size=st.sampled_from([0, 64, 1000]),
)
def test_the_read_path_is_the_same_however_the_bytes_are_split(
    frames: list[tuple[int, bool, bytes, bool]], cuts: list[int], max_size: int
) -> None:
    """Same messages, in the same order, and the same end, whatever the reads (more than
    MAX_MESSAGES_PER_FEED messages in one read included).

    An unmasked frame too big is two faults at once: the meter refuses its size once it has the
    whole header (1009), the parser its mask bit from its second byte on (1002), so which one a
    client hears depends on where its read was cut. Refused either way; the code is compared
    when every frame is masked."""
    stream = b"".join(client_frame(*frame) for frame in frames)
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    pieces = [stream[start:end] for start, end in zip([0, *points], [*points, len(stream)], strict=False)]
    split, whole = read_path(pieces, max_size), read_path([stream], max_size)
    if not all(masked for *_, masked in frames):
        split, whole = [
            (events, "refused" if isinstance(end, int) else end) for events, end in (split, whole)
        ]
    assert split == whole
