"""Response bodies of the REST routes, with the examples shown in /docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class RulesResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "rules": "Be kind and nice to this wonderful world",
                    "main_lang": "en",
                    "min_author_length": 3,
                    "max_author_length": 32,
                    "max_message_length": 255,
                    "max_image_size": 800,
                    "max_geojson_features": 500,
                }
            ]
        }
    )

    rules: str
    main_lang: str
    min_author_length: int
    max_author_length: int
    max_message_length: int
    max_image_size: int
    max_geojson_features: int


class RoomStatus(BaseModel):
    name: str
    nb_connected_users: int


class StatusResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "healthy": True,
                    "rooms": [
                        {"name": "QGIS", "nb_connected_users": 12},
                        {"name": "Kitchen", "nb_connected_users": 0},
                    ],
                    "channels": [
                        {"name": "QGIS", "nb_connected_users": 12},
                        {"name": "Kitchen", "nb_connected_users": 0},
                    ],
                }
            ]
        }
    )

    status: str
    healthy: bool
    rooms: list[RoomStatus]
    # The same conversations under the 3.x dialect's name (QChat reads `channels`).
    channels: list[RoomStatus]
    # Only with a shared broker (BROKER_URL=redis://...): its state as this node sees it.
    broker: dict[str, Any] | None = None
    # Only with the Matrix bridge: the homeserver's state (up, down), portals, queued events, lag.
    matrix: dict[str, Any] | None = None


class VersionResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"version": "1.0.0"}]})

    version: str


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "room 'Attic' not found"}]})

    detail: str


class ChannelTextResponse(BaseModel):
    """A text as channel sockets received it: the 3.x envelope (server id and timestamp) first."""

    type: str
    id: str
    timestamp: int
    author: str
    avatar: str | None
    text: str


# The moderation routes (/admin/..., with ADMIN_TOKENS): see docs/moderation.md.


class ConnectionEntry(BaseModel):
    nickname: str | None
    address: str
    dialect: str
    connected_since: str
    messages_sent: int
    node: str


class ConnectionsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "room": "QGIS",
                    "connections": [
                        {
                            "nickname": "troll-42",
                            "address": "203.0.113.9",
                            "dialect": "channel",
                            "connected_since": "2026-11-26T16:20:00Z",
                            "messages_sent": 118,
                            "node": "local",
                        }
                    ],
                }
            ]
        }
    )

    room: str
    connections: list[ConnectionEntry]


class KickResponse(BaseModel):
    room: str
    nickname: str
    reason: str


class BanResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "5f0c3a9e1b2d4c6f8a7e9d1c3b5a7f90",
                    "nickname": None,
                    "address": "203.0.113.0/24",
                    "room": None,
                    "until": "2026-11-26T17:20:00Z",
                    "reason": "spam",
                    "by": "alice",
                    "created": "2026-11-26T16:20:00Z",
                }
            ]
        }
    )

    id: str
    nickname: str | None
    address: str | None
    room: str | None
    until: str
    reason: str
    by: str
    created: str


class BansResponse(BaseModel):
    bans: list[BanResponse]


class DeletedResponse(BaseModel):
    room: str
    id: str


class AnnouncedResponse(BaseModel):
    room: str
    id: str
    timestamp: int


class AuditEntry(BaseModel):
    at: str
    moderator: str
    action: str
    room: str | None
    target: str | None
    reason: str | None


class AuditResponse(BaseModel):
    actions: list[AuditEntry]
