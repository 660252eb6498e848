"""What a socket holds once it is done with a large message: nothing of it.

A socket that sent a large message and went quiet, and one that went away in the middle of one,
must not keep the message's bytes: not the parser's last frame, not the receive loop's last
event, not the unfinished frame of a closed connection (whose objects form cycles that only a
collection, maybe far away on a quiet server, would find). The collector is off during these
tests: what they see freed was freed by the server itself.
"""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
from collections.abc import Iterator

import pytest
from test_transport import BINARY, RawSocket, frame, frame_header, guard_of
from test_transport_reads import refusal

from gischat.protocol.refusals import BINARY_REASON

from conftest import ServerFactory, wait_for

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


@pytest.fixture
def traced() -> Iterator[None]:
    """Allocations traced, the cyclic collector off."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()
        gc.enable()


async def nothing_held() -> None:
    """Until no allocation site of the server holds a mebibyte (bounded): else the sites."""
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: not held_by_server(), timeout=5)
    assert held_by_server() == []


def held_by_server(at_least: int = MiB) -> list[str]:
    """Allocation sites outside the tests still holding `at_least` bytes, with their sizes."""
    snapshot = tracemalloc.take_snapshot()
    return [
        f"{stat.size / MiB:.1f} MiB at {stat.traceback}"
        for stat in snapshot.statistics("traceback")
        if stat.size >= at_least and not any("/tests/" in frame.filename for frame in stat.traceback)
    ]


async def test_a_quiet_socket_keeps_nothing_of_its_last_large_message(
    server_factory: ServerFactory, traced: None
) -> None:
    server = server_factory()
    sock = RawSocket(server, "127.0.0.2")
    # Parsed whole by the transport, handed to the app, refused there: then the socket idles.
    sock.send(frame(BINARY, b"x" * 3 * MiB))
    assert refusal(sock) == BINARY_REASON
    await nothing_held()
    sock.close()


async def test_a_socket_gone_mid_frame_leaves_nothing_behind(
    server_factory: ServerFactory, traced: None
) -> None:
    server = server_factory()
    guard = guard_of(server)
    sock = RawSocket(server, "127.0.0.3")
    sock.send(frame_header(BINARY, 4 * MiB) + b"y" * (3 * MiB))
    await wait_for(lambda: guard.incomplete_bytes >= 3 * MiB)
    sock.close()
    await wait_for(lambda: guard.connections == 0)
    await nothing_held()
