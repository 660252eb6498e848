"""Reads budgeted at the socket (gischat.server.reading): frames judged by their header before
their payload is read, held bytes per address, byte rates, and refusals that log one line.

Real servers on free ports, hand-made frames over raw sockets from their own loopback addresses.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest
from test_metrics import scrape, value
from test_transport import BINARY, PING, PONG, TEXT, RawSocket, all_released, frame, frame_header, guard_of

from gischat.protocol.geojson import PositionCount, check_raw_vertices
from gischat.protocol.refusals import Uncompliant

from conftest import TEST_ROOMS, ServerFactory, wait_for, ws_client

pytestmark = pytest.mark.anyio

KiB = 1024


def refusal(sock: RawSocket) -> str:
    """The reason of the next `uncompliant` the server sends this socket (room news skipped)."""
    while True:
        opcode, payload = sock.read_frame()
        if opcode == TEXT:
            loaded = orjson.loads(payload)
            if loaded["type"] == "uncompliant":
                return str(loaded["reason"])


async def test_a_frame_that_can_never_fit_is_refused_from_its_header(server_factory: ServerFactory) -> None:
    server = server_factory(max_frame_size=64 * KiB)
    sock = RawSocket(server, "127.0.0.2")
    sock.send(frame_header(TEXT, 10 * 1024 * KiB))  # ten megabytes announced, not one sent
    assert sock.read_close() == (1009, f"message too big: {10 * 1024 * KiB} bytes (max {64 * KiB})")
    sock.close()
    # A fragmented message is judged on its total so far.
    sock = RawSocket(server, "127.0.0.2")
    sock.send(frame(TEXT, b"x" * 40 * KiB, fin=False) + frame_header(0x0, 40 * KiB))
    assert sock.read_close() == (1009, f"message too big: {80 * KiB} bytes (max {64 * KiB})")
    sock.close()
    assert guard_of(server).refusals == {"1009": 2}
    await all_released(server)


async def test_pings_are_counted_before_any_is_answered(server_factory: ServerFactory) -> None:
    server = server_factory(ping_rate=2, ping_burst=5)
    sock = RawSocket(server, "127.0.0.2")
    sock.send(frame(PING, b"x") * 200)  # one write: the server reads them all at once
    pongs = 0
    while True:
        opcode, _ = sock.read_frame()
        if opcode == TEXT:
            continue  # the room's own news (nb_users)
        if opcode != PONG:
            break
        pongs += 1
    assert opcode == 0x8  # the close frame always goes out, after at most the burst of pongs
    assert pongs <= 6
    sock.close()
    await all_released(server)


async def test_invalid_utf8_is_one_log_line_and_no_traceback(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_factory()
    caplog.set_level(logging.INFO)
    sock = RawSocket(server, "127.0.0.2")
    sock.send(frame(TEXT, b'{"type": "text", "text": "\xff\xfe"}'))
    assert sock.read_close() == (1007, "invalid UTF-8 in a text message at byte 26")
    sock.close()
    await all_released(server)
    refusals = [record for record in caplog.records if "refused (1007)" in record.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].levelno == logging.WARNING
    assert not [record for record in caplog.records if record.exc_info]


async def test_a_large_text_message_that_is_not_utf8_fails_the_connection_without_a_decode(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Over HANDOFF_MIN: the transport hands it over undecoded and the app checks it piece by
    # piece as it writes it out; the outcome is the transport's own for a small message.
    server = server_factory()
    caplog.set_level(logging.INFO)
    head = b'{"type": "text", "author": "x", "avatar": null, "text": "' + "é".encode() * 300 * KiB
    bad = len(head) + 500 * KiB
    payload = head + b"a" * 500 * KiB + b"\xe9t\xe9" + b"b" * 400 * KiB + b'"}'
    async with ws_client(server, TEST_ROOMS[1]) as other:
        sock = RawSocket(server, "127.0.0.2")
        port = sock.sock.getsockname()[1]
        await asyncio.to_thread(sock.send, frame(TEXT, payload))
        assert await asyncio.to_thread(sock.read_close) == (
            1007,
            f"invalid UTF-8 in a text message at byte {bad}",
        )
        sock.close()
        await other.send({"type": "text", "author": "bystander", "avatar": None, "text": "still here"})
        await other.expect("text", text="still here")
    await all_released(server)
    assert value(await scrape(server), "gischat_connections_dropped_total", cause="invalid_text") == 1
    lines = [record.getMessage() for record in caplog.records if "invalid UTF-8" in record.getMessage()]
    assert lines == [
        f"127.0.0.2:{port} in 'QGIS': closed (1007): invalid UTF-8 in a text message at byte {bad}"
    ]
    assert not [record for record in caplog.records if record.exc_info]


async def test_large_frames_of_one_address_wait_for_room_in_its_budget(server_factory: ServerFactory) -> None:
    server = server_factory(max_held_bytes_per_ip=300 * KiB)
    guard = guard_of(server)
    first, second = RawSocket(server, "127.0.0.5"), RawSocket(server, "127.0.0.5")
    payload = b"x" * 200 * KiB
    # The first holds 200 KiB as soon as its header arrives, half of its payload sent.
    first.send(frame_header(BINARY, len(payload)) + payload[: len(payload) // 2])
    share = guard.shares.by_address["127.0.0.5"]
    await wait_for(lambda: share.held == len(payload))
    # The second does not fit beside it: its frame is not read, it waits its turn.
    second.send(frame(BINARY, payload))
    await wait_for(lambda: len(share.waiters) == 1)
    assert share.held == len(payload)
    # Another address is not affected at all.
    async with ws_client(server, local_addr=("127.0.0.6", 0)) as bystander:
        await bystander.send({"type": "newcomer", "newcomer": "bystander"})
        await bystander.expect("newcomer", newcomer="bystander")
    first.send(payload[len(payload) // 2 :])
    assert refusal(first)  # the chat refuses binary frames: the message reached it
    assert refusal(second)  # ... and then the second was read
    await wait_for(lambda: share.held == 0)
    first.close()
    second.close()
    await all_released(server)
    assert not guard.shares.by_address


async def test_a_connection_gone_mid_frame_gives_its_bytes_back(server_factory: ServerFactory) -> None:
    server = server_factory(max_held_bytes_per_ip=300 * KiB)
    guard = guard_of(server)
    sock = RawSocket(server, "127.0.0.5")
    sock.send(frame_header(BINARY, 250 * KiB) + b"x" * KiB)
    await wait_for(lambda: guard.shares.by_address["127.0.0.5"].held == 250 * KiB)
    sock.close()
    await all_released(server)
    assert not guard.shares.by_address


@pytest.mark.parametrize("setting", ["read_rate", "read_rate_per_ip"])
async def test_a_fast_sender_is_read_slower_not_refused(server_factory: ServerFactory, setting: str) -> None:
    burst = setting.replace("rate", "burst")
    server = server_factory(**{setting: 256 * KiB, burst: 64 * KiB})
    sock = RawSocket(server, "127.0.0.7")
    started = time.monotonic()
    await asyncio.to_thread(sock.send, frame(BINARY, b"x" * 512 * KiB))
    assert refusal(sock)
    # 448 KiB beyond the burst at 256 KiB/s, less one read of up to 256 KiB that may overshoot
    # the allowance: the server cannot have read it in less (unpaced, it takes milliseconds).
    assert time.monotonic() - started >= (512 - 64 - 256) / 256
    sock.close()
    assert guard_of(server).refusals == {}
    await all_released(server)


def test_raw_vertex_count_is_exact_for_compact_and_pretty_text() -> None:
    points = [[i * 0.5, -i * 0.25] for i in range(120)]
    layer = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": points}, "properties": {"tags": ["a"]}}]}  # fmt: skip
    compact = orjson.dumps({"type": "geojson", "geojson": layer}).decode()
    check_raw_vertices(compact, 120)  # exactly at the budget: nested lists are not positions
    with pytest.raises(Uncompliant) as refused:
        check_raw_vertices(compact, 119)
    assert refused.value.reason == "geojson: too many vertices (120, max 119)"
    pretty = orjson.dumps({"type": "geojson", "geojson": layer}, option=orjson.OPT_INDENT_2).decode()
    check_raw_vertices(pretty, 120)
    with pytest.raises(Uncompliant):
        check_raw_vertices(pretty, 119)
    nested = '{"coordinates":[[[0,0],[1,0],[1,1],[0,0]]]}'  # one polygon, four positions
    check_raw_vertices(nested, 4)
    with pytest.raises(Uncompliant):
        check_raw_vertices(nested, 3)


def test_positions_counted_in_pieces_match_the_whole_at_every_cut() -> None:
    # White space between a bracket and its number, and brackets that open nested lists, on
    # both sides of every cut: the pieces' counts add up to the whole text's, never more.
    text = b'{"coordinates":[ [\n 0.5 ,-1],[[ -2,3]],[\t+4, 5e1] ,[ ],"[x"]}'
    whole = PositionCount(100)
    whole.feed(text)
    assert whole.positions == 3  # "[ -2" inside "[[": nested lists are not positions
    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1):
            pieces = PositionCount(100)
            for piece in (text[:first], text[first:second], text[second:]):
                pieces.feed(piece)
            assert pieces.positions == 3, (first, second)


def test_positions_inspected_in_pieces_refuse_once_past_the_budget() -> None:
    count = PositionCount(4)
    count.inspect(b"[[0,0],[1,0],")
    count.inspect(b"[2,0],[3,0]")
    with pytest.raises(Uncompliant) as refused:
        count.inspect(b",[4,0],[5,0]]")
    assert refused.value.reason == "geojson: too many vertices (at least 6, max 4)"


async def test_a_read_full_of_messages_is_parsed_a_share_at_a_time_and_nothing_is_lost(
    server_factory: ServerFactory,
) -> None:
    """300 texts in one write: the transport parses at most a share of them per read, the rest
    after the chat has read those; every one arrives, in order."""
    server = server_factory()
    sock = RawSocket(server, "127.0.0.2")
    sock.send(frame(TEXT, orjson.dumps({"type": "newcomer", "newcomer": "burst"})))
    burst = b"".join(
        frame(TEXT, orjson.dumps({"type": "text", "author": "burst", "avatar": None, "text": str(i)}))
        for i in range(300)
    )
    sock.send(burst)
    seen: list[str] = []
    while len(seen) < 300:
        opcode, payload = sock.read_frame()
        if opcode == TEXT:
            message = orjson.loads(payload)
            if message["type"] == "text":
                seen.append(message["text"])
    assert seen == [str(i) for i in range(300)]
    sock.close()
    await all_released(server)


async def test_a_large_message_stays_counted_until_the_app_asks_for_the_next(
    server_factory: ServerFactory,
) -> None:
    """Handed to the app is not done with: a layer a worker is preparing still holds its bytes,
    so another large frame of the same address stays unread until the app asks for the next."""
    server = server_factory(max_held_bytes_per_ip=1024)  # one large frame at a time
    guard = guard_of(server)
    geometry = {"type": "MultiPoint", "coordinates": [[1.5, 2.5]] * 300_000}  # about a second's work
    layer = orjson.dumps(
        {
            "type": "geojson",
            "author": "alice",
            "avatar": None,
            "layer_name": "wells",
            "crs_wkt": "GEOGCRS[]",
            "crs_authid": "EPSG:4326",
            "geojson": {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "geometry": geometry, "properties": {}}],
            },
        }
    ).decode()
    async with ws_client(server, local_addr=("127.0.0.5", 0)) as alice:
        await alice.register("alice")
        other = RawSocket(server, "127.0.0.5")
        await alice.send(layer)
        share = guard.shares.by_address["127.0.0.5"]
        await wait_for(lambda: share.held == len(layer))
        other.send(frame(BINARY, b"x" * 100 * KiB))
        await wait_for(lambda: len(share.waiters) == 1)  # its header read, its payload not
        assert share.held == len(layer)
        echo = await alice.expect("geojson")
        assert echo["layer_name"] == "wells"
        assert "binary" in refusal(other)  # read only once the layer was done with
        await wait_for(lambda: share.held == 0)
        other.close()
    await all_released(server)
