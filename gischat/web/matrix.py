"""The application service API the homeserver calls (`/_matrix/app/v1/...`), present only while the
Matrix bridge runs.

Every request must carry the homeserver token of the registration (`Authorization: Bearer`),
compared in constant time: without one, 401 `M_UNAUTHORIZED`; with another, 403 `M_FORBIDDEN`.
Answers are the spec's JSON (`{}` or `{"errcode", "error"}`), never FastAPI's `detail`.

Transactions come once per event, most of them the bridge's own messages coming back: they are
served by `Transactions`, a plain ASGI endpoint the app calls ahead of its middleware and router
(as it does for the chat's websockets), since all those layers would add to every one of them is
their cost. The other calls are rare and go through FastAPI's router.
"""

from __future__ import annotations

import hmac
import logging

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gischat.matrix.bridge import Bridge
from gischat.rooms.connection import client_address
from gischat.web.conversations import read_json_body

logger = logging.getLogger("gischat.matrix")
PREFIX = "/_matrix/app/v1"
# A transaction's body at most (events carry files as mxc:// URIs, not as data).
MAX_TRANSACTION_BYTES = 16 * 1024 * 1024


def matrix_error(status: int, errcode: str, error: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"errcode": errcode, "error": error})


def check_token(request: Request, expected: bytes) -> JSONResponse | None:
    """None when the request carries the homeserver token, else the spec's 401 or 403."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        token = request.query_params.get("access_token", "")  # the spec's older way
    if not token:
        return matrix_error(401, "M_UNAUTHORIZED", "missing the homeserver token")
    if not hmac.compare_digest(token.encode(), expected):
        logger.warning(
            "matrix: %s: appservice call with a wrong token refused", client_address(request.client)
        )
        return matrix_error(403, "M_FORBIDDEN", "wrong homeserver token")
    return None


EMPTY = orjson.dumps({})


class Transactions:
    """`PUT /_matrix/app/v1/transactions/{txnId}` as a plain ASGI endpoint (see the module's docstring)."""

    PATH = PREFIX + "/transactions/"

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.expected = bridge.settings.matrix_hs_token.get_secret_value().encode()

    def serves(self, scope: Scope) -> bool:
        """Whether a request is a transaction: `/_matrix/app/v1/transactions/` and one more segment."""
        if scope["type"] != "http":
            return False
        path: str = scope["path"]
        return path.startswith(self.PATH) and len(path) > len(self.PATH) and "/" not in path[len(self.PATH) :]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self.answer(request, scope["path"][len(self.PATH) :])
        await response(scope, receive, send)

    async def answer(self, request: Request, txn_id: str) -> Response:
        if request.method != "PUT":
            return matrix_error(405, "M_UNRECOGNIZED", "a transaction is PUT")
        if (denied := check_token(request, self.expected)) is not None:
            return denied
        try:
            body = await read_json_body(request, MAX_TRANSACTION_BYTES)
        except HTTPException as exc:
            if exc.status_code == 422:  # not JSON at all: the spec's 400 M_NOT_JSON
                return matrix_error(400, "M_NOT_JSON", str(exc.detail))
            return matrix_error(exc.status_code, "M_TOO_LARGE", str(exc.detail))
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            return matrix_error(400, "M_BAD_JSON", 'a transaction is {"events": [...]}')
        await self.bridge.inbound.transaction(txn_id, events)
        return Response(EMPTY, media_type="application/json")


def build_appservice_router(bridge: Bridge) -> APIRouter:
    """The calls a homeserver makes of an application service, but transactions (`Transactions`)."""
    expected = bridge.settings.matrix_hs_token.get_secret_value().encode()
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def refusal(request: Request) -> JSONResponse | None:
        return check_token(request, expected)

    @router.get("/users/{user_id}")
    async def user_query(request: Request, user_id: str) -> Response:
        # Virtual users exist for nicknames people hold, and are registered when they first act.
        return refusal(request) or matrix_error(404, "M_NOT_FOUND", "no such user")

    @router.get("/rooms/{alias}")
    async def alias_query(request: Request, alias: str) -> Response:
        if (denied := refusal(request)) is not None:
            return denied
        try:
            found = await bridge.alias_queried(alias)
        except Exception as exc:
            logger.warning("matrix: the portal of %s could not be created: %s", alias, type(exc).__name__)
            return matrix_error(502, "M_UNKNOWN", "the portal could not be created")
        if not found:
            return matrix_error(404, "M_NOT_FOUND", "no such portal")
        return JSONResponse({})

    @router.post("/ping")
    async def ping(request: Request) -> Response:
        return refusal(request) or JSONResponse({})

    return router
