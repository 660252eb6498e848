"""The moderation routes, `/admin/...`: served only when ADMIN_TOKENS is set (else 404, as for any
unknown route), each behind a moderator's bearer secret.

Bodies are read and validated here, so that a broken one gets the one-line `{"detail": ...}`
every other route of the instance answers with (FastAPI's own 422 is a list of error
objects); /docs still shows each body's schema and the bearer scheme on every route. The
actions themselves, and what may be asked of them, are `gischat.moderation.service`'s.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gischat.moderation.service import (
    MAX_BAN_MINUTES,
    MAX_REASON_LENGTH,
    Invalid,
    ModerationService,
    NotFound,
    ban_json,
)
from gischat.moderation.tokens import Denied
from gischat.protocol.refusals import first_problem
from gischat.rooms.connection import client_address
from gischat.web.conversations import read_json_body
from gischat.web.schemas import (
    AnnouncedResponse,
    AuditResponse,
    BanResponse,
    BansResponse,
    ConnectionsResponse,
    DeletedResponse,
    ErrorResponse,
    KickResponse,
)

# A moderation request's body: a few short strings.
MAX_BODY_BYTES = 64 * 1024
# Any nickname a client could register fits (MAX_AUTHOR_LENGTH is at most 256).
MAX_NICKNAME_LENGTH = 256

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="moderator",
    description="A moderator's secret from ADMIN_TOKENS (`label:secret`: the secret part)",
)


async def moderator(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> str:
    """The label of the moderator making the request; 401, 403 or 429 otherwise."""
    service: ModerationService = request.app.state.moderation
    secret = credentials.credentials if credentials is not None else None
    try:
        return service.gate.admit(client_address(request.client), secret)
    except Denied as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        raise HTTPException(exc.status, exc.detail, headers=headers or None) from None


Moderator = Annotated[str, Security(moderator)]


class KickRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"nickname": "troll-42", "reason": "spam"}]}
    )

    nickname: str = Field(min_length=1, max_length=MAX_NICKNAME_LENGTH)
    reason: str = Field(default="", max_length=MAX_REASON_LENGTH)


class BanRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"address": "203.0.113.0/24", "room": None, "minutes": 60, "reason": "spam"}]
        },
    )

    nickname: str | None = Field(default=None, min_length=1, max_length=MAX_NICKNAME_LENGTH)
    address: str | None = Field(default=None, min_length=1, max_length=64)
    room: str | None = None
    minutes: int = Field(ge=1, le=MAX_BAN_MINUTES)
    reason: str = Field(default="", max_length=MAX_REASON_LENGTH)


class AnnounceRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "Maintenance at 18:00 UTC"}]}
    )

    text: str = Field(min_length=1)


RequestT = TypeVar("RequestT", bound=BaseModel)


async def read_body(request: Request, model: type[RequestT]) -> RequestT:
    try:
        return model.model_validate(await read_json_body(request, MAX_BODY_BYTES))
    except ValidationError as exc:
        raise HTTPException(422, first_problem(exc)) from None


def body_of(model: type[BaseModel]) -> dict[str, Any]:
    """The request body as /docs shows it (the route reads it itself)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    meanings = {
        401: "No bearer token, or a wrong one (`WWW-Authenticate: Bearer`)",
        403: "The client address is outside ADMIN_NETWORKS",
        404: "What the route names does not exist",
        422: "The body breaks a rule",
        429: "Too many failed sign-ins from this address (ADMIN_FAILURES_PER_MINUTE), with `Retry-After`",
    }
    return {
        status: {"model": ErrorResponse, "description": meanings[status]}
        for status in (401, 403, 429, *statuses)
    }


def answer(exc: NotFound | Invalid) -> HTTPException:
    return HTTPException(404 if isinstance(exc, NotFound) else 422, exc.detail)


def build_moderation_router(service: ModerationService) -> APIRouter:
    """`/admin/...`; every route needs a moderator (see `moderator`)."""
    router = APIRouter(prefix="/admin", tags=["moderation"])

    @router.get("/rooms/{room}/connections", response_model=ConnectionsResponse, responses=errors(404))
    async def connections(room: str, who: Moderator) -> dict[str, Any]:
        """Every socket of the room, on every node: nickname (null until registered), client address,
        dialect (`room` or `channel` route), connected since, frames sent, node."""
        try:
            return {"room": room, "connections": await service.connections(room)}
        except NotFound as exc:
            raise answer(exc) from None

    @router.post(
        "/rooms/{room}/kick",
        response_model=KickResponse,
        responses=errors(404, 422),
        openapi_extra=body_of(KickRequest),
    )
    async def kick(room: str, request: Request, who: Moderator) -> dict[str, Any]:
        """Close the socket registered under `nickname` (1008, `kicked by a moderator: <reason>`);
        the room gets the `exiter` and `nb_users` as for any departure."""
        body = await read_body(request, KickRequest)
        try:
            service.kick(who, room, body.nickname, body.reason)
        except NotFound as exc:
            raise answer(exc) from None
        return {"room": room, "nickname": body.nickname, "reason": body.reason}

    @router.post(
        "/bans",
        status_code=201,
        response_model=BanResponse,
        responses=errors(422),
        openapi_extra=body_of(BanRequest),
    )
    async def ban(request: Request, who: Moderator) -> dict[str, Any]:
        """Ban a nickname or an address (an IP or a CIDR network) from one room or all (`room`:
        null) for `minutes`; the sockets it matches are closed at once, on every node."""
        body = await read_body(request, BanRequest)
        try:
            made = service.ban(
                who,
                nickname=body.nickname,
                address=body.address,
                room=body.room,
                minutes=body.minutes,
                reason=body.reason,
            )
        except Invalid as exc:
            raise answer(exc) from None
        return ban_json(made)

    @router.get("/bans", response_model=BansResponse, responses=errors())
    async def bans(who: Moderator) -> dict[str, Any]:
        """The bans in force, oldest first (ended ones are gone by themselves)."""
        return {"bans": [ban_json(ban) for ban in service.bans()]}

    @router.delete("/bans/{ban_id}", response_model=BanResponse, responses=errors(404))
    async def lift(ban_id: str, who: Moderator) -> dict[str, Any]:
        """Lift a ban before its end; the answer is the ban that was lifted."""
        try:
            return ban_json(service.lift(who, ban_id))
        except NotFound as exc:
            raise answer(exc) from None

    @router.delete(
        "/rooms/{room}/messages/{message_id}", response_model=DeletedResponse, responses=errors(404)
    )
    async def delete(room: str, message_id: str, who: Moderator) -> dict[str, Any]:
        """Remove a message (by the `id` the channel routes show) from the room's history on every
        node: no newcomer and no `/last` sees it again. Clients that got it keep it."""
        try:
            await service.delete(who, room, message_id)
        except NotFound as exc:
            raise answer(exc) from None
        return {"room": room, "id": message_id}

    @router.post(
        "/rooms/{room}/announce",
        status_code=201,
        response_model=AnnouncedResponse,
        responses=errors(404, 422),
        openapi_extra=body_of(AnnounceRequest),
    )
    async def announce(room: str, request: Request, who: Moderator) -> dict[str, Any]:
        """A text to the room (both dialects, kept in history) from ANNOUNCER_NAME."""
        body = await read_body(request, AnnounceRequest)
        try:
            post = service.announce(who, room, body.text)
        except (NotFound, Invalid) as exc:
            raise answer(exc) from None
        return {"room": room, "id": post.id, "timestamp": post.timestamp}

    @router.get("/audit", response_model=AuditResponse, responses=errors())
    async def audit(who: Moderator) -> dict[str, Any]:
        """This process's last moderation actions (at most 1000), newest first."""
        return {"actions": [action.to_json() for action in service.audit()]}

    return router
