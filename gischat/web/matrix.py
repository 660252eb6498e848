"""The application service API the homeserver calls (`/_matrix/app/v1/...`), present only while the
Matrix bridge runs.

Every request must carry the homeserver token of the registration (`Authorization: Bearer`),
compared in constant time: without one, 401 `M_UNAUTHORIZED`; with another, 403 `M_FORBIDDEN`.
Answers are the spec's JSON (`{}` or `{"errcode", "error"}`), never FastAPI's `detail`.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from gischat.matrix.bridge import Bridge
from gischat.rooms.connection import client_address
from gischat.web.conversations import read_json_body

logger = logging.getLogger("gischat.matrix")
PREFIX = "/_matrix/app/v1"
# A transaction's body at most (events carry files as mxc:// URIs, not as data).
MAX_TRANSACTION_BYTES = 16 * 1024 * 1024


def matrix_error(status: int, errcode: str, error: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"errcode": errcode, "error": error})


def build_appservice_router(bridge: Bridge) -> APIRouter:
    """The four calls a homeserver makes of an application service."""
    expected = bridge.settings.matrix_hs_token.get_secret_value().encode()
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def refusal(request: Request) -> JSONResponse | None:
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

    @router.put("/transactions/{txn_id}")
    async def transaction(request: Request, txn_id: str) -> Response:
        if (denied := refusal(request)) is not None:
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
        await bridge.inbound.transaction(txn_id, events)
        return JSONResponse({})

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
