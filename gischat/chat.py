"""What happens to each message: validation, identity checks, then fan-out.

Routes stay thin and call into `ChatService`; the websocket session loop lives here too,
so the same rules apply to a message whether it came over a websocket or `PUT`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.websockets import WebSocket

from gischat import models
from gischat.connection import Connection
from gischat.images import ImageRejected, process_image
from gischat.models import (
    ClientMessage,
    GeojsonMessage,
    ImageMessage,
    LikeMessage,
    Limits,
    NewcomerMessage,
    TextMessage,
    Uncompliant,
)
from gischat.rooms import Hub
from gischat.settings import Settings

logger = logging.getLogger("gischat.chat")

BINARY_REASON = "binary frames are not supported: send JSON text frames"
SWITCH_INTERVAL = 0.001
# Seconds of feature validation between two yields to the event loop.
VALIDATION_SLICE = 0.005
# Frames handled back to back before the receive loop lets other tasks run.
YIELD_EVERY = 16
INTERNAL_ERROR_REASON = "server error while handling this message; it was not delivered"


async def check_layer(message: GeojsonMessage) -> None:
    """Validate a layer's features, yielding to the event loop every few milliseconds.

    A layer of hundreds of detailed features takes a noticeable time to validate; other
    rooms should not wait for it.
    """
    loop = asyncio.get_running_loop()
    resume_at = loop.time() + VALIDATION_SLICE
    for index, feature in enumerate(message.features):
        models.check_feature(index, feature)
        if loop.time() >= resume_at:
            await asyncio.sleep(0)
            resume_at = loop.time() + VALIDATION_SLICE


class NicknameTaken(Exception):
    """A REST author used a nickname that a websocket registered in that room."""


class ChatService:
    """The instance's chat logic, shared by the websocket and REST routes."""

    def __init__(self, settings: Settings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self.limits = Limits.from_settings(settings)
        # Images are resized in threads: Pillow releases the GIL while it decodes and
        # resamples, so other rooms keep chatting while a photo is processed.
        self.images = ThreadPoolExecutor(
            max_workers=settings.image_workers, thread_name_prefix="gischat-image"
        )

    async def start(self) -> None:
        # Image threads and the event loop share the GIL. With the default 5 ms switch interval
        # a resizing photo can hold the loop off for several intervals in a row; 1 ms keeps
        # other rooms' round trips short at a small cost in throughput while images are busy.
        sys.setswitchinterval(SWITCH_INTERVAL)
        await self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()
        self.images.shutdown(wait=False, cancel_futures=True)

    async def serve(self, websocket: WebSocket, room: str) -> None:
        """Run one websocket from handshake to goodbye."""
        if room not in self.hub.rooms:
            # Closing before accepting refuses the handshake: the client gets HTTP 403.
            await websocket.close(code=1008)
            return
        await websocket.accept()
        conn = self.hub.join(websocket, room)
        try:
            await self._receive_loop(conn)
        finally:
            self.hub.evict(conn)
            await conn.stop()

    async def _receive_loop(self, conn: Connection) -> None:
        receive = conn.websocket.receive
        handled = 0
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            if conn.closing:
                continue  # dropped for being too slow: its words no longer count
            text = event.get("text")
            if text is None:
                self._refuse(conn, BINARY_REASON)
                continue
            try:
                await self.handle(conn, models.parse_frame(text, self.limits))
            except Uncompliant as exc:
                self._refuse(conn, exc.reason)
            except Exception:
                # A bug must cost one message, not the socket, and never the room.
                logger.exception("%s in %r: error while handling a message", conn.peer, conn.room)
                conn.push(models.uncompliant(INTERNAL_ERROR_REASON))
            handled += 1
            if handled % YIELD_EVERY == 0:
                # Frames that arrived together are handled without waiting; yield now and then
                # so the recipients' writers drain their queues and other sockets get a turn.
                await asyncio.sleep(0)

    def _refuse(self, conn: Connection, reason: str) -> None:
        logger.info("%s in %r: uncompliant: %s", conn.peer, conn.room, reason)
        conn.push(models.uncompliant(reason))

    async def handle(self, conn: Connection, message: ClientMessage) -> None:
        """Act on one valid message from a websocket."""
        if isinstance(message, NewcomerMessage):
            self.hub.register(conn, message.newcomer)
            self.hub.publish(conn.room, message.to_wire())
        elif isinstance(message, LikeMessage):
            self.hub.check_author(conn, conn.room, message.liker_author, "liker_author")
            # Only the liked author hears of it; nobody registered under that name, no delivery.
            self.hub.publish(conn.room, message.to_wire(), to=message.liked_author)
        else:
            self.hub.check_author(conn, conn.room, message.author)
            if isinstance(message, GeojsonMessage | ImageMessage):
                if isinstance(message, GeojsonMessage):
                    await check_layer(message)
                else:
                    message = await self._resize(message)
                # The world moved on while the layer was checked or the image resized: the
                # socket may have been dropped, or its author's nickname registered by another.
                if conn.closing or conn not in self.hub.rooms[conn.room].connections:
                    return
                self.hub.check_author(conn, conn.room, message.author)
            self.hub.publish(conn.room, message.to_wire())

    async def _resize(self, message: ImageMessage) -> ImageMessage:
        job = functools.partial(
            process_image,
            message.image_data,
            max_size=self.settings.max_image_size,
            max_pixels=self.settings.max_image_pixels,
        )
        try:
            data = await asyncio.get_running_loop().run_in_executor(self.images, job)
        except ImageRejected as exc:
            raise Uncompliant(str(exc)) from None
        return message.model_copy(update={"image_data": data})

    async def post_text(self, room: str, body: Any) -> TextMessage:
        """A text message from REST: same rules as a websocket's, author not registered by anyone."""
        if isinstance(body, dict):
            body = {"type": "text", **body}
            if body["type"] != "text":
                raise Uncompliant("type: only 'text' messages can be sent here")
        message = models.parse_object(body, self.limits)
        assert isinstance(message, TextMessage)
        if self.hub.rooms[room].owner(message.author) is not None:
            raise NicknameTaken(f"author '{message.author}' is registered by a user of room '{room}'")
        self.hub.publish(room, message.to_wire())
        logger.info("text posted over HTTP to %r by %r", room, message.author)
        return message
