"""What `bench/fuzz.py` found against a running server, kept as tests of a real server.

The property tests (test_properties_*.py) keep what they found next to the property that found
it; these needed the whole server: sockets, the app, the worker pool.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os

import httpx
import pytest
from PIL import Image

from conftest import ServerFactory, wait_for, ws_client

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
