"""The FastAPI application: routes only, built by `create_app(settings)`.

Importing this module reads no setting: tests build as many apps with as many settings as they
like in one process. `gischat.app:app` is the app built from the environment, on first access.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import Match, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from gischat.broker import BrokerSettings, create_broker
from gischat.chat.service import ChatService, ChatSettings
from gischat.limits import RateSettings
from gischat.matrix.bridge import Bridge
from gischat.matrix.config import MatrixSettings
from gischat.matrix.names import MATRIX_SUFFIX
from gischat.moderation.service import ModerationService
from gischat.moderation.tokens import ModerationSettings
from gischat.networks import Networks
from gischat.protocol.asyncapi.document import document_json
from gischat.protocol.asyncapi.rules import DocumentSettings
from gischat.protocol.dialects import Dialect
from gischat.protocol.messages import Limits
from gischat.rooms.connection import client_address
from gischat.rooms.hub import Hub, RoomSettings
from gischat.settings import Settings, load_settings, project
from gischat.upstream import ignored_upstream_settings
from gischat.web import about as page
from gischat.web import client as webclient
from gischat.web.conversations import add_conversation_routes
from gischat.web.matrix import Transactions, build_appservice_router
from gischat.web.moderation import build_moderation_router
from gischat.web.schemas import RoomStatus, RulesResponse, StatusResponse, VersionResponse
from gischat.work.pool import PoolSettings, Processor

logger = logging.getLogger("gischat")


def package_version() -> str:
    try:
        return version("gischat")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


UNGUARDED_WARNING = (
    "running without gischat's transport guards (connection caps, request-head and frame deadlines, "
    "ping limits): start the server with the `gischat` command (or `python -m gischat`) instead"
)


class ChatApp(FastAPI):
    """FastAPI, with the chat's websockets served ahead of the middleware stack and the router.

    A websocket lives for hours and its handshake is all these layers would see of it, yet each
    join paid for all of them (error middlewares, exit stacks, included-router lookups, exception
    wrappers), a large share of a join's CPU (docs/benchmarks.md has the figures), and each idle
    socket kept their frames and closures alive. The chat sockets' own routes
    (`chat_sockets`, the same `WebSocketRoute`s the router lists) are matched first and their
    endpoint is called directly: it needs nothing from the layers it skips (it raises neither
    `HTTPException` nor `WebSocketException`, and the transport logs anything unexpected).
    Everything else, other websockets included, goes through FastAPI as usual.
    """

    chat_sockets: tuple[WebSocketRoute, ...] = ()
    # The Matrix bridge's transactions, served the same way (see gischat.web.matrix).
    transactions: Transactions | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transactions = self.transactions
        if transactions is not None and transactions.serves(scope):
            await transactions(scope, receive, send)
            return
        if scope["type"] == "websocket":
            for route in self.chat_sockets:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    await route.endpoint(WebSocket(scope, receive, send))
                    return
        await super().__call__(scope, receive, send)


def assemble(settings: Settings) -> ChatService:
    """The chat service and the parts below it, each given its own settings, not the whole set."""
    limits = project(Limits, settings)
    broker = create_broker(project(BrokerSettings, settings))
    # The announcer's nickname is reserved only where there are moderators to announce.
    announcer = settings.announcer_name if settings.admin_tokens else None
    # Nicknames of the Matrix namespace are the bridge's alone while it runs.
    suffix = MATRIX_SUFFIX if settings.matrix_enabled else None
    hub = Hub(project(RoomSettings, settings, announcer_name=announcer, reserved_suffix=suffix), broker)
    processor = Processor(project(PoolSettings, settings), limits)
    return ChatService(
        project(ChatSettings, settings), hub, limits, project(RateSettings, settings), processor
    )


def document_settings(settings: Settings) -> DocumentSettings:
    """What the AsyncAPI document tells of this instance."""
    return project(DocumentSettings, settings, limits=project(Limits, settings))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build an app for these settings (read from the environment when not given)."""
    settings = settings if settings is not None else load_settings()
    chat = assemble(settings)
    bridge = None
    if settings.matrix_enabled:  # nothing set: no bridge, no /_matrix routes
        broker = chat.hub.broker
        bridge = Bridge(
            project(MatrixSettings, settings), chat, project(Limits, settings), broker.ledger, broker
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await chat.start()
        if bridge is not None:
            await bridge.start()
        if not getattr(app.state, "transport_guarded", False):
            # Plain `uvicorn gischat.app:app`: the app works, but nothing below it caps connections,
            # times out request heads and unfinished frames, or limits pings.
            logger.warning(UNGUARDED_WARNING)
        logger.info("serving rooms %s (%s)", ", ".join(settings.rooms), settings.environment)
        ignored = ignored_upstream_settings(os.environ)
        if ignored is not None:
            logger.warning(ignored)
        try:
            yield {}
        finally:
            if bridge is not None:
                await bridge.stop()
            await chat.stop()

    app = ChatApp(
        title="gischat",
        summary="Real-time chat for GIS people: text, images, layers, CRS and extents",
        description=(
            "The REST API of a gischat instance. The chat itself is a websocket per room, "
            "`/room/{room}/ws`, described by this instance's "
            "[AsyncAPI document](asyncapi.json) (AsyncAPI 3.0)."
        ),
        version=package_version(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.chat = chat
    app.state.bridge = bridge
    router, app.chat_sockets = build_router(settings, chat, bridge)
    app.include_router(router)
    if bridge is not None:
        app.transactions = Transactions(bridge)
        app.include_router(build_appservice_router(bridge))
    if settings.admin_tokens:  # no tokens: /admin/... answers 404 like any unknown route
        moderation = ModerationService(chat, project(ModerationSettings, settings), chat.hub.broker)
        app.state.moderation = moderation
        app.include_router(build_moderation_router(moderation))
    webclient.install(app, settings, moderation=bool(settings.admin_tokens))
    return app


def build_router(
    settings: Settings, chat: ChatService, bridge: Bridge | None = None
) -> tuple[APIRouter, tuple[WebSocketRoute, ...]]:
    """The REST routes and the chat's websocket routes (also returned apart, for `ChatApp`)."""
    router = APIRouter()
    current_version = package_version()

    def room_counts() -> list[RoomStatus]:
        return [RoomStatus(name=name, nb_connected_users=chat.hub.count(name)) for name in chat.hub.rooms]

    @router.get("/about", response_class=HTMLResponse, include_in_schema=False)
    async def about() -> HTMLResponse:
        return HTMLResponse(
            page.render(settings, [(r.name, r.nb_connected_users) for r in room_counts()]),
            headers={"Content-Security-Policy": page.CONTENT_SECURITY_POLICY},
        )

    @router.get(
        "/rooms",
        response_model=list[str],
        responses={200: {"content": {"application/json": {"example": settings.rooms}}}},
    )
    async def rooms() -> list[str]:
        """Names of the rooms of this instance, in the configured order."""
        return list(settings.rooms)

    @router.get(
        "/channels",
        response_model=list[str],
        responses={200: {"content": {"application/json": {"example": settings.rooms}}}},
    )
    async def channels() -> list[str]:
        """Names of the channels (3.x dialect): the rooms, in the same order; channel X is room X."""
        return list(settings.rooms)

    @router.get("/rules", response_model=RulesResponse)
    async def rules() -> RulesResponse:
        """The rules every message is checked against."""
        return RulesResponse(
            rules=settings.rules,
            main_lang=settings.main_lang,
            min_author_length=settings.min_author_length,
            max_author_length=settings.max_author_length,
            max_message_length=settings.max_message_length,
            max_image_size=settings.max_image_size,
            max_geojson_features=settings.max_geojson_features,
        )

    @router.get("/status", response_model=StatusResponse, response_model_exclude_none=True)
    async def status() -> StatusResponse:
        """Health and the number of open websockets per room (on every node); `channels` lists
        the same conversations for 3.x clients.

        With a shared broker, `broker` tells its state; `healthy` is false while this node is
        cut off from it (it then serves its own sockets only). With the Matrix bridge, `matrix`
        tells whether the homeserver answers, the events waiting for it and the oldest one's wait."""
        broker = chat.hub.broker
        healthy = broker.healthy
        counts = room_counts()
        return StatusResponse(
            status="ok" if healthy else "degraded",
            healthy=healthy,
            rooms=counts,
            channels=counts,
            broker=broker.status(),
            matrix=bridge.status() if bridge is not None else None,
        )

    asyncapi = document_json(document_settings(settings), current_version)  # built once per app

    @router.get(
        "/asyncapi.json",
        response_model=dict[str, Any],
        responses={200: {"description": "An AsyncAPI 3.0.0 document"}},
    )
    async def asyncapi_document() -> Response:
        """The websocket protocol as an AsyncAPI 3.0 document: every message type in both
        directions with its JSON Schema (this instance's limits included) and examples."""
        return Response(asyncapi, media_type="application/json")

    @router.get("/version", response_model=VersionResponse)
    async def get_version() -> VersionResponse:
        return VersionResponse(version=current_version)

    if settings.metrics_enabled:
        networks = Networks(settings.metrics_networks)

        @router.get("/metrics", include_in_schema=False)
        async def metrics(request: Request) -> Response:
            """Prometheus metrics, for the networks in METRICS_NETWORKS only."""
            if client_address(request.client) not in networks:
                return JSONResponse(
                    status_code=403, content={"detail": "metrics are not served to your network"}
                )
            return Response(generate_latest(chat.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    sockets = tuple(
        add_conversation_routes(router, settings, chat, d) for d in (Dialect.ROOM, Dialect.CHANNEL)
    )
    return router, sockets
