"""What bench/fuzz.py sends: real frames of both dialects mutated, raw frames, upgrade heads.

Pure functions of a seeded `random.Random` (and of `os.urandom` for masking keys), apart from
the fuzzer's connections in bench/fuzz.py, so that a case is read, and changed, in one place:
`fuzz_frames` (uncompressed cases), `deflate_frames` (for a connection that negotiated
permessage-deflate) and `garbage_head` (a damaged upgrade request), each naming its case for
the end table.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct
import zlib
from typing import Any

import orjson
from harness import HOST
from rawws import CLOSE, PING, TEXT, mask, upgrade_lines

CONT, BINARY, PONG = 0x0, 0x2, 0xA
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mOwbnIDAAH/AQTX7nkhAAAAAElFTkSuQmCC"


def valid_message(rng: random.Random, author: str) -> dict[str, Any]:
    """A frame of either dialect the server accepts (channel-only types included)."""
    point = [rng.uniform(-180, 180), rng.uniform(-90, 90)]
    layer = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": point}, "properties": {"n": 1}}
        ],
    }
    crs = {"crs_wkt": 'GEOGCRS["WGS 84"]', "crs_authid": "EPSG:4326"}
    return rng.choice(
        [
            {"type": "text", "author": author, "avatar": None, "text": "fuzz"},
            {"type": "newcomer", "newcomer": author},
            {"type": "like", "liker_author": author, "liked_author": "someone", "message": "fuzz"},
            {"type": "image", "author": author, "avatar": None, "image_data": PNG},
            {"type": "geojson", "author": author, "avatar": None, "layer_name": "l", **crs, "geojson": layer},
            {"type": "crs", "author": author, "avatar": None, **crs},
            {
                "type": "bbox",
                "author": author,
                "avatar": None,
                **crs,
                "xmin": 0,
                "xmax": 1,
                "ymin": 0,
                "ymax": 1,
            },
            {"type": "position", "author": author, "avatar": None, **crs, "x": 2.35, "y": 48.85},
            {
                "type": "model",
                "author": author,
                "avatar": None,
                "model_name": "m",
                "model_group": None,
                "raw_xml": "<x/>",
            },
            {"type": "script", "author": author, "avatar": None, "name": "s", "raw_pycode": "print(1)"},
            {"type": "exiter", "exiter": author},
            {"type": "nb_users", "nb_users": 1},
        ]
    )


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(10 if depth < 3 else 7)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 2**63 - 1, 2**64 - 1, -(2**63), 10**30])
    if choice == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, 3.14])
    if choice in (4, 5, 6):
        return rng.choice(["", "x", "a" * 300, "é☃🌍", "\u0000", "../../etc", "text", "geojson", "[1,2]"])
    if choice in (7, 8):
        return [junk_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["type", "features", "a", "coordinates"]): junk_value(rng, depth + 1)}


def mutated_message(rng: random.Random, author: str) -> bytes:
    """A valid frame's JSON with members dropped, replaced, added or retyped, or its text damaged."""
    message = valid_message(rng, author)
    for _ in range(rng.randrange(1, 4)):
        action = rng.randrange(5)
        keys = sorted(message)
        if action == 0 and keys:
            del message[rng.choice(keys)]
        elif action == 1 and keys:
            message[rng.choice(keys)] = junk_value(rng)
        elif action == 2:
            message[rng.choice(["type", "in_reply_to_id", "extra", "geojson"])] = junk_value(rng)
        elif action == 3:
            message["type"] = rng.choice(["text", "image", "geojson", "position", "unknown", "", "exiter"])
        else:
            message["author"] = rng.choice(["ab", "x" * 40, "a b", "Jane/../", author.upper(), "\uff26ull"])
    text = json.dumps(message, ensure_ascii=False).encode()  # orjson refuses integers past 64 bits
    if rng.random() < 0.3:  # the text itself damaged: cut, or a byte changed
        at = rng.randrange(len(text))
        text = (
            text[:at] if rng.random() < 0.5 else text[:at] + bytes([rng.randrange(32, 127)]) + text[at + 1 :]
        )
    return text or b"{"


def large_layer(rng: random.Random, author: str, size: int) -> bytes:
    """A layer of about `size` bytes: a MultiPoint of many positions (its vertex count checked)."""
    count = size // 24
    coordinates = ",".join(f"[{rng.uniform(-180, 180):.6f},{rng.uniform(-90, 90):.6f}]" for _ in range(count))
    return (
        f'{{"type":"geojson","author":"{author}","avatar":null,"layer_name":"big",'
        f'"crs_wkt":"","crs_authid":"EPSG:4326","geojson":{{"type":"FeatureCollection","features":'
        f'[{{"type":"Feature","geometry":{{"type":"MultiPoint","coordinates":[{coordinates}]}},'
        f'"properties":null}}]}}}}'
    ).encode()


def header(opcode: int, length: int, *, fin: bool = True, key: bytes | None = b"", rsv: int = 0) -> bytes:
    """A frame header; `key` b"": a fresh masking key, None: unmasked."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    masked = 0 if key is None else 0x80
    if length < 126:
        start = struct.pack("!BB", first, masked | length)
    elif length < 1 << 16:
        start = struct.pack("!BBH", first, masked | 126, length)
    else:
        start = struct.pack("!BBQ", first, masked | 127, length)
    return start + (b"" if key is None else key)


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    key = os.urandom(4) if masked else None
    body = mask(payload, key) if key is not None else payload
    return header(opcode, len(payload), fin=fin, key=key, rsv=rsv) + body


INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
CLOSE_CODES = [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011, 1015, 999, 2999, 3000, 4999, 5000, 65535]


def fuzz_frames(rng: random.Random, author: str) -> tuple[str, list[bytes]]:
    """One fuzz case: its name, and the chunks to write (each written, then a short pause)."""
    case = rng.choices(
        [
            "json", "valid", "bitflip", "truncate", "bogus_length", "unmasked", "fragmented",
            "bad_fragments", "huge", "utf8", "control", "reserved", "binary", "large",
        ],
        weights=[30, 10, 8, 5, 4, 3, 6, 4, 3, 5, 8, 3, 3, 2],
    )[0]  # fmt: skip
    message = mutated_message(rng, author)
    if case == "json":
        return case, [frame(TEXT, message)]
    if case == "valid":
        return case, [frame(TEXT, orjson.dumps(valid_message(rng, author)))]
    if case == "bitflip":
        flipped = bytearray(frame(TEXT, message))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(min(len(flipped), 20) if rng.random() < 0.5 else len(flipped))
            flipped[at] ^= 1 << rng.randrange(8)
        return case, [bytes(flipped)]
    if case == "truncate":
        whole = frame(TEXT, message)
        return case, [
            whole[: rng.randrange(1, len(whole))],
            frame(TEXT, orjson.dumps(valid_message(rng, author))),
        ]
    if case == "bogus_length":
        declared = max(0, len(message) + rng.choice([-5, -1, 1, 7, 200, 70_000]))
        return case, [header(TEXT, declared, key=os.urandom(4)) + message]
    if case == "unmasked":
        return case, [frame(TEXT, message, masked=False)]
    if case == "fragmented":  # valid: pieces in order, control frames between them
        cuts = sorted(rng.sample(range(1, len(message)), min(len(message) - 1, rng.randrange(1, 5))))
        pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=False)]
        chunks = []
        for index, piece in enumerate(pieces):
            opcode = TEXT if index == 0 else CONT
            chunks.append(frame(opcode, piece, fin=index == len(pieces) - 1))
            if rng.random() < 0.3:
                chunks.append(frame(PING, b"p"))
        return case, chunks
    if case == "bad_fragments":
        return (
            case,
            rng.choice(
                [
                    [frame(CONT, message)],  # a continuation with nothing to continue
                    [
                        frame(TEXT, message[:5], fin=False),
                        frame(TEXT, message[5:]),
                    ],  # a new message inside one
                    [frame(PING, b"x", fin=False)],  # a fragmented control frame
                    [frame(TEXT, message[:5], fin=False), frame(BINARY, b"\x00", fin=True)],
                    [frame(TEXT, b"", fin=False)] * 50 + [frame(CONT, b"{}")],  # many empty fragments
                ]
            ),
        )
    if case == "huge":
        length = rng.choice([17 * 1024 * 1024, 2**31, 2**63 - 1, 2**64 - 1])
        return case, [header(rng.choice([TEXT, BINARY, CONT]), length, key=os.urandom(4)) + message]
    if case == "utf8":
        bad = rng.choice(INVALID_UTF8)
        at = rng.randrange(len(message))
        payload = message[:at] + bad + message[at:]
        if rng.random() < 0.2:  # a large message: checked by pieces on its way to a worker
            payload = large_layer(rng, author, 1_200_000)
            at = rng.randrange(len(payload))
            payload = payload[:at] + bad + payload[at:]
        if rng.random() < 0.3:  # across fragments
            return case, [frame(TEXT, payload[: at + 1], fin=False), frame(CONT, payload[at + 1 :])]
        return case, [frame(TEXT, payload)]
    if case == "control":
        code = rng.choice(CLOSE_CODES)
        return case, [
            rng.choice(
                [
                    frame(PING, os.urandom(rng.randrange(126))),
                    frame(PING, os.urandom(126 + rng.randrange(200))),  # too long for a control frame
                    frame(PONG, os.urandom(rng.randrange(20))),
                    frame(
                        CLOSE, struct.pack("!H", code) + rng.choice([b"", b"bye", b"\xff\xfe", b"x" * 123])
                    ),
                    frame(CLOSE, b"\x03"),  # a one-byte close payload
                ]
            )
        ]
    if case == "reserved":
        return case, [frame(rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xF]), b"x")] if rng.random() < 0.5 else [
            frame(TEXT, message, rsv=rng.randrange(1, 8))
        ]
    if case == "binary":
        return case, [frame(BINARY, message)]
    size = rng.choice([70_000, 300_000, 1_200_000])  # a worker's frame, a handed-over one
    return case, [frame(TEXT, large_layer(rng, author, size))]


DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
_BOMB: list[bytes] = []


def deflated(payload: bytes) -> bytes:
    """`payload` compressed as permessage-deflate wants it (RFC 7692: raw deflate, a window the
    server allows, the final empty block's 00 00 ff ff taken off)."""
    compressor = zlib.compressobj(wbits=-12)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def deflate_frames(rng: random.Random, author: str) -> tuple[str, list[bytes]]:
    """Compressed frames, for a connection that negotiated permessage-deflate: valid ones, data that
    does not inflate, a bomb (20 MB of text in 20 kB), the compression bit on a control frame."""
    case = rng.choice(["deflate", "deflate_garbage", "deflate_bomb", "deflate_control"])
    if case == "deflate":
        return case, [frame(TEXT, deflated(mutated_message(rng, author)), rsv=4)]
    if case == "deflate_garbage":
        return case, [frame(TEXT, os.urandom(rng.randrange(1, 64)), rsv=4)]
    if case == "deflate_bomb":
        if not _BOMB:
            _BOMB.append(deflated(b'{"type":"text","author":"x","text":"' + b"a" * 20_000_000 + b'"}'))
        return case, [frame(TEXT, _BOMB[0], rsv=4)]
    return case, [frame(PING, deflated(b"ping"), rsv=4)]


def garbage_head(rng: random.Random, path: str) -> bytes:
    """A damaged or hostile upgrade request (or no HTTP at all)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = upgrade_lines(HOST, path, key)
    action = rng.randrange(9)
    if action == 0:
        return os.urandom(rng.randrange(1, 200))
    if action == 1:
        del lines[rng.randrange(1, len(lines))]
    elif action == 2:
        lines[rng.randrange(1, len(lines))] += rng.choice([", x", "\x00", " \t", "é"])
    elif action == 3:
        lines[0] = (
            rng.choice(["POST", "GET", "get", "PRI"])
            + f" {path} "
            + rng.choice(["HTTP/1.0", "HTTP/2", "HTTP/1.1"])
        )
    elif action == 4:
        lines.insert(1, "X-Big: " + "a" * rng.choice([1000, 70_000]))
    elif action == 5:
        lines[4] = "Sec-WebSocket-Key: " + rng.choice(["", "short", key + "=", key[:-2]])
    elif action == 6:
        lines.insert(rng.randrange(1, len(lines)), lines[rng.randrange(1, len(lines))])  # a header twice
    elif action == 7:
        return (
            f"GET /status HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
            + "\r\n".join(lines).encode()
            + b"\r\n\r\n"
        )
    else:
        lines[0] = (
            f"GET /{rng.choice(['room', 'channel'])}/{'%ff%00' if rng.random() < 0.5 else 'nowhere'}/ws HTTP/1.1"
        )
    head = "\r\n".join(lines).encode(errors="surrogateescape") + b"\r\n\r\n"
    if rng.random() < 0.2:
        head = head[: rng.randrange(len(head))]
    return head
