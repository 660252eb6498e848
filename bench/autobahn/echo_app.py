"""A bare ASGI websocket echo app for the Autobahn fuzzing client (bench/autobahn/run.py).

Every websocket is accepted on any path, and each message comes back as it came: text as text,
bytes as bytes, until the peer disconnects. HTTP requests get a 404; lifespan events are
acknowledged. The 16 MiB message limit is the server's (`ws_max_size`, see serve.py), not the app's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Autobahn's case 9 sends messages of up to 16 MiB (9.1.6, 9.2.6).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo every websocket message back to its sender."""
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send(
            {"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"websocket echo only\n"})
        return
    if scope["type"] != "websocket":
        return
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        if event["type"] != "websocket.receive":
            continue
        text = event.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": event.get("bytes") or b""})
