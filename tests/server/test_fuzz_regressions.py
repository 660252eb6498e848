"""What `bench/fuzz.py` found against a running server, kept as tests of a real server.

The property tests (test_properties_*.py) keep what they found next to the property that found
it; these needed the whole server: sockets, the app, the worker pool.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os

import httpx
import pytest
from PIL import Image

from gischat.server.inflation import INFLATE_FLOOR

from conftest import ServerFactory, closing, text, wait_for, ws_client

pytestmark = pytest.mark.anyio


def noisy_png(size: int) -> str:
    """A photo-like PNG that takes a worker a while to resize (noise does not compress)."""
    image = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=0)
    return base64.b64encode(out.getvalue()).decode()


SMALL_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mOwbnIDAAH/AQTX7nkhAAAAAElFTkSuQmCC"


@pytest.mark.parametrize("ending", ["reset", "close"])
async def test_a_client_gone_while_its_photo_is_processed_leaves_the_room(
    server_factory: ServerFactory, ending: str
) -> None:
    """The disconnect of a socket whose app was busy (its photo waiting for a worker) was dropped
    with the messages it had not read: the app waited forever for a next event, the socket stayed
    in the room (`nb_users`, `/users`), its nickname taken and its address's count held. Under the
    fuzzer every handshake from its address was refused 429 after a minute.

    One worker, kept busy by another photo (half a second), so that the leaver's is still waiting
    when it goes."""
    server = server_factory(processing_workers=1)

    async def connected() -> int:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            rooms = (await http.get("/status")).json()["rooms"]
        return int(next(room["nb_connected_users"] for room in rooms if room["name"] == "QGIS"))

    async def alone() -> bool:
        return await connected() == 2

    async with ws_client(server) as watcher, ws_client(server) as busy:
        await watcher.register("watcher")
        await busy.send({"type": "image", "author": "busy1", "avatar": None, "image_data": noisy_png(1500)})
        await asyncio.sleep(0.3)  # received and handed to the one worker
        async with ws_client(server) as leaver:
            await leaver.register("leaver")
            await leaver.send({"type": "image", "author": "leaver", "avatar": None, "image_data": SMALL_PNG})
            await asyncio.sleep(0.1)  # received: its app waits for the worker
            if ending == "reset":
                leaver.ws.transport.abort()
            else:
                leaver.ws.transport.close()
        await watcher.expect("exiter", exiter="leaver", timeout=10.0)
        await wait_for(alone)
        async with ws_client(server) as again:
            await again.register("leaver")  # the nickname is free again


@pytest.mark.parametrize("deflate", [False, True], ids=["gischat's handshake", "permessage-deflate"])
async def test_a_request_pipelined_before_an_upgrade_is_refused_400(
    server_factory: ServerFactory, deflate: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """`GET /status` and an upgrade in one write. gischat's own handshake read them as one upgrade
    to both targets run together (found by the property tests); with permessage-deflate,
    `websockets` read the second as frames, failed the connection, then asserted when asked to
    answer: a traceback ("Fatal error on transport") per such request (found by bench/fuzz.py)."""
    server = server_factory(ws_per_message_deflate=deflate)
    upgrade = (
        "GET /room/QGIS/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with caplog.at_level(logging.WARNING):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /status HTTP/1.1\r\nHost: a\r\n\r\n{upgrade}".encode())
        answer = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
    assert answer.endswith(b"a request was sent before the upgrade request without waiting.\n")
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_deflate_bomb_is_refused_before_it_inflates_far(server_factory: ServerFactory) -> None:
    """With permessage-deflate, `websockets` inflated a message on the event loop up to
    MAX_FRAME_SIZE: bench/fuzz.py's bomb, 20 kB of deflated text, became 16 MiB, 30 to 40 ms during
    which no other socket was served (innocents' round trips under a few bombs a second: 5 ms at
    the 99th percentile went to 50), and under that size the whole text went on to the app. A
    message now inflates to at most INFLATE_RATIO times its size on the wire or INFLATE_FLOOR:
    2 MiB of one letter is refused 1009, while a layer of points all alike (under the floor)
    and an image (over it, 1.3 times) pass. The websockets client deflates what it sends."""
    server = server_factory(ws_per_message_deflate=True)
    alike = {"type": "MultiPoint", "coordinates": [[2.35, 48.85]] * (INFLATE_FLOOR // 16)}  # 12 bytes each
    features = [{"type": "Feature", "geometry": alike, "properties": {}}]
    layer = {
        "type": "geojson",
        "author": "alice",
        "avatar": None,
        "layer_name": "alike",
        "crs_wkt": "",
        "crs_authid": "EPSG:4326",
        "geojson": {"type": "FeatureCollection", "features": features},
    }
    async with ws_client(server) as client:
        assert client.ws.response is not None
        assert client.ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        await client.register("alice")
        await client.send(layer)
        await client.expect("geojson", author="alice", layer_name="alike")
        await client.send({"type": "image", "author": "alice", "avatar": None, "image_data": noisy_png(200)})
        await client.expect("image", author="alice")
        await client.send(text("alice", "a" * 2 * 1024 * 1024))
        closed = await closing(client)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1009
