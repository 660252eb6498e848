"""The picows reference server for `bench/run.py`: gischat's room fan-out on a bare picows server.

    python bench/picows_server.py --host 127.0.0.1 --port 8002

It does the naive server's job (bench/naive_server.py) and nothing more, in the fastest
straightforward picows way: no ASGI, no framework, frames handed to a Cython-parsed callback.
A set of transports per room; every received text is parsed (`orjson.loads`; a frame that
is not JSON closes the socket with 1003, as the naive server's `json.loads` ends its handler)
and serialised once, and the same bytes go to each member with `transport.send`, which frames
and writes them at once without awaiting anything (the kernel's socket buffer, then the
transport's, absorb a slow reader). A join and a leave send `nb_users` to the whole room the
same way. GET /status answers like gischat's, so the bench polls every server alike.

What the naive server costs and this one does not is therefore the framework: uvicorn's ASGI
machinery, Starlette's routing and one awaited `send_text` coroutine per delivery. Both run on
uvloop, one thread.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from urllib.parse import unquote

import orjson
import uvloop

# CI type-checks bench/ with only the test and dev extras installed, i.e. without picows.
from picows import (  # type: ignore[import-not-found, unused-ignore]
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

MAX_FRAME = 64 * 1024 * 1024  # as harness.MAX_FRAME: the bench's photos fit
rooms: defaultdict[str, set[WSTransport]] = defaultdict(set)


def broadcast(members: set[WSTransport], payload: bytes) -> None:
    """The same bytes to every member; `send` only copies them into the socket's write buffer."""
    for transport in members:
        transport.send(WSMsgType.TEXT, payload)


def nb_users(members: set[WSTransport]) -> bytes:
    return orjson.dumps({"type": "nb_users", "nb_users": len(members)})


class Member(WSListener):  # type: ignore[misc, unused-ignore]  # WSListener is Any without picows
    """One socket of a room."""

    def __init__(self, room: str) -> None:
        super().__init__()
        self.members = rooms[room]

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.members.add(transport)
        broadcast(self.members, nb_users(self.members))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT and frame.fin:
            try:
                message = orjson.loads(frame.get_payload_as_memoryview())
            except orjson.JSONDecodeError:
                transport.send_close(WSCloseCode.UNSUPPORTED_DATA)
                transport.disconnect()
                return
            broadcast(self.members, orjson.dumps(message))
        elif msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif msg_type != WSMsgType.PING:  # picows answers pings itself (enable_auto_pong)
            # Binary and fragmented messages: the bench sends neither, and this server stays minimal.
            transport.send_close(WSCloseCode.UNSUPPORTED_DATA)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.members.discard(transport)
        broadcast(self.members, nb_users(self.members))


def status() -> WSUpgradeResponseWithListener:
    """Same shape as gischat's /status, answered on the same port as the websockets."""
    counts = [{"name": name, "nb_connected_users": len(members)} for name, members in rooms.items()]
    body = orjson.dumps({"status": "ok", "healthy": True, "rooms": counts})
    response = WSUpgradeResponse.create_ok_response(body, {"Content-Type": "application/json"})
    return WSUpgradeResponseWithListener(response, None)


def route(request: WSUpgradeRequest) -> Member | WSUpgradeResponseWithListener | None:
    """/room/{room}/ws opens a socket in the room, /status answers; None: picows answers 404."""
    path = request.path.split(b"?", 1)[0]
    if path == b"/status":
        return status()
    parts = path.split(b"/")
    if len(parts) == 4 and parts[0] == b"" and parts[1] == b"room" and parts[2] and parts[3] == b"ws":
        return Member(unquote(parts[2].decode("ascii", "replace")))
    return None


async def serve(host: str, port: int) -> None:
    server = await ws_create_server(route, host, port, max_frame_size=MAX_FRAME)
    print(f"picows reference server on http://{host}:{port}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
