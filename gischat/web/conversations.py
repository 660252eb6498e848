"""The routes of one conversation, in each dialect: `/room/{room}/...` (2.x), `/channel/{channel}/...` (3.x).

Room X and channel X are the same conversation: the same sockets, nicknames, counts and
history. Only the wire differs, so each route renders what it returns in its own dialect.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from gischat.chat.service import ChatService, NicknameTaken, Refused
from gischat.protocol.dialects import Dialect
from gischat.protocol.messages import TextMessage
from gischat.protocol.refusals import Uncompliant
from gischat.rooms.connection import client_address
from gischat.settings import Settings
from gischat.web.schemas import ChannelTextResponse, ErrorResponse

TEXT_BODY_EXAMPLE = {
    "type": "text",
    "author": "curl-bot",
    "avatar": "mActionRun.svg",
    "text": "Deploy finished",
}
CHANNEL_TEXT_EXAMPLE = {
    "type": "text",
    "id": "3f1c2b9e-5a7d-4e0b-9c61-2d8f4a6b7c10",
    "timestamp": 1795702339,
    **{key: value for key, value in TEXT_BODY_EXAMPLE.items() if key != "type"},
}
EXAMPLES = {Dialect.ROOM: TEXT_BODY_EXAMPLE, Dialect.CHANNEL: CHANNEL_TEXT_EXAMPLE}
PUT_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {
        "model": ErrorResponse,
        "description": "A browser page from an origin not allowed, or a banned address or author",
    },
    409: {
        "model": ErrorResponse,
        "description": "The author is a nickname registered in the conversation, or the announcer's",
    },
    413: {"model": ErrorResponse, "description": "Body above MAX_FRAME_SIZE"},
    422: {"model": ErrorResponse, "description": "The message breaks a rule"},
    429: {"model": ErrorResponse, "description": "Too many messages from this address (PUT_RATE)"},
}


def add_conversation_routes(
    router: APIRouter, settings: Settings, chat: ChatService, dialect: Dialect
) -> WebSocketRoute:
    """`GET .../users`, `GET .../last`, `PUT .../text` and `WS .../ws` under `/{dialect}/{name}`;
    returns the websocket route, which the app also serves ahead of its middleware (`ChatApp`)."""
    prefix = f"/{dialect}/{{{dialect}}}"
    noun = str(dialect)
    not_found: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorResponse, "description": f"Unknown {noun}"}
    }

    def require(name: str) -> None:
        if name not in chat.hub.rooms:
            raise HTTPException(status_code=404, detail=f"{noun} {name!r} not found")

    async def users(request: Request) -> list[str]:
        name = request.path_params[noun]
        require(name)
        return chat.hub.users(name)

    async def last(request: Request) -> Response:
        name = request.path_params[noun]
        require(name)
        await chat.hub.attend(name)  # its current history, whether or not anyone is here
        history = chat.hub.rooms[name].history
        return Response(history.as_json(dialect, settings.geojson_style), media_type="application/json")

    async def put_text(request: Request) -> Response:
        name = request.path_params[noun]
        require(name)
        try:
            chat.check_post(
                name,
                client_address(request.client),
                request.headers.get("origin"),
                request.headers.get("host"),
            )
        except Refused as exc:
            return refused(exc)
        body = await read_json_body(request, settings.max_frame_size)
        try:
            post = await chat.post_text(name, body)
        except Refused as exc:
            return refused(exc)
        except Uncompliant as exc:
            return JSONResponse(status_code=422, content={"detail": exc.reason})
        except NicknameTaken as exc:
            return JSONResponse(status_code=409, content={"detail": str(exc)})
        frame = post.frame(dialect, settings.geojson_style)
        assert frame is not None  # a text exists in both dialects
        return Response(frame.data, media_type="application/json")

    users.__doc__ = f"Nicknames registered in the {noun}, sorted case-insensitively."
    last.__doc__ = (
        f"The {noun}'s last messages (MAX_STORED_MESSAGES), oldest first, exactly as they were sent "
        f"to {noun} sockets. History lives in memory (or Redis) only."
    )
    put_text.__doc__ = (
        f"Send a text message to a {noun} (bots, scripts, curl); it is echoed back as broadcast"
        + (", with its id and timestamp." if dialect is Dialect.CHANNEL else ".")
    )
    router.add_api_route(
        f"{prefix}/users",
        users,
        methods=["GET"],
        response_model=list[str],
        name=f"{noun}_users",
        responses={
            **not_found,
            200: {"content": {"application/json": {"example": ["alice", "Bob", "carol"]}}},
        },
        openapi_extra=path_parameter(noun),
    )
    router.add_api_route(
        f"{prefix}/last",
        last,
        methods=["GET"],
        response_model=list[dict[str, Any]],
        name=f"{noun}_last",
        responses={**not_found, 200: {"content": {"application/json": {"example": [EXAMPLES[dialect]]}}}},
        openapi_extra=path_parameter(noun),
    )
    router.add_api_route(
        f"{prefix}/text",
        put_text,
        methods=["PUT"],
        response_model=TextMessage if dialect is Dialect.ROOM else ChannelTextResponse,
        name=f"{noun}_text",
        responses={
            **not_found,
            **PUT_ERRORS,
            200: {"content": {"application/json": {"example": EXAMPLES[dialect]}}},
        },
        openapi_extra={
            **path_parameter(noun),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": TextMessage.model_json_schema(),
                        "example": TEXT_BODY_EXAMPLE,
                    }
                },
            },
        },
    )

    async def socket(websocket: WebSocket) -> None:
        await chat.serve(websocket, websocket.path_params[noun], dialect)

    # A plain Starlette route: FastAPI's websocket wrapper (dependency solving, exit stacks)
    # would stay alive for the whole connection and cost ~5 kB per idle socket.
    route = WebSocketRoute(f"{prefix}/ws", socket)
    router.routes.append(route)
    return route


def refused(exc: Refused) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 429 else None
    return JSONResponse(status_code=exc.status, content={"detail": exc.detail}, headers=headers)


def path_parameter(noun: str) -> dict[str, Any]:
    """The path parameter as /docs shows it (the routes read it from the request directly)."""
    return {
        "parameters": [
            {
                "name": noun,
                "in": "path",
                "required": True,
                "description": f"{noun.capitalize()} name, percent-encoded in the URL",
                "schema": {"type": "string"},
                "example": "QGIS",
            }
        ]
    }


async def read_json_body(request: Request, limit: int) -> Any:
    """Read at most `limit` bytes of JSON; a larger or broken body is the client's error."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status_code=413, detail=f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status_code=413, detail=f"body larger than {limit} bytes")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise HTTPException(status_code=422, detail="body is not valid JSON") from None
