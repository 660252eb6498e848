"""The naive reference server for `bench/run.py`.

A bare Starlette app, no FastAPI and no validation models: a list of sockets per room,
and for every received text frame `json.loads` + `json.dumps` and an `await send_text`
to each socket of the room in turn (the classic loop from countless tutorials). Joins
send `nb_users` to everyone, one send per socket, no coalescing.

It runs under uvicorn with exactly the options gischat uses (`gischat.cli.uvicorn_options`:
websockets-sansio protocol, no per-message deflate, same loop and HTTP implementations,
same logging), so the comparison measures the application and nothing else.

    python bench/naive_server.py --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections import defaultdict

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gischat.server.runner import uvicorn_options
from gischat.settings import Settings

rooms: defaultdict[str, list[WebSocket]] = defaultdict(list)


async def broadcast(sockets: list[WebSocket], text: str) -> None:
    """The classic loop: one awaited send per socket, in turn."""
    for socket in list(sockets):
        # A socket that went away meanwhile raises; its own handler removes it from the list.
        with contextlib.suppress(Exception):
            await socket.send_text(text)


async def room_socket(websocket: WebSocket) -> None:
    room = websocket.path_params["room"]
    await websocket.accept()
    sockets = rooms[room]
    sockets.append(websocket)
    try:
        await broadcast(sockets, json.dumps({"type": "nb_users", "nb_users": len(sockets)}))
        while True:
            text = await websocket.receive_text()
            message = json.loads(text)
            await broadcast(sockets, json.dumps(message))
    except WebSocketDisconnect:
        pass
    finally:
        sockets.remove(websocket)
        await broadcast(sockets, json.dumps({"type": "nb_users", "nb_users": len(sockets)}))


async def status(_: Request) -> JSONResponse:
    """Same shape as gischat's /status, so the bench polls both the same way."""
    counts = [{"name": name, "nb_connected_users": len(sockets)} for name, sockets in rooms.items()]
    return JSONResponse({"status": "ok", "healthy": True, "rooms": counts})


app = Starlette(
    routes=[
        Route("/status", status),
        WebSocketRoute("/room/{room}/ws", room_socket),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # gischat's own translation of its settings into uvicorn options, defaults everywhere.
    settings = Settings(host=args.host, port=args.port, _env_file=None)
    uvicorn.run(app, **uvicorn_options(settings))


if __name__ == "__main__":
    main()
