"""gischat's hands in Matrix: the bridge bot, one virtual user per nickname, and the portals.

Built on mautrix's application-service client (`AppServiceAPI`, `IntentAPI`), which registers a
virtual user the first time it acts and joins it to a room before it speaks there. Membership is
cached per process; what another node (or a Matrix moderator) changed is found out by the
homeserver's refusal and mended once (`Homeserver.as_puppet`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import aiohttp
from mautrix.appservice import AppServiceAPI, ASStateStore, IntentAPI
from mautrix.client.state_store import MemoryStateStore
from mautrix.errors import MatrixRequestError, MForbidden, MNotFound, MRoomInUse
from mautrix.types import (
    ContentURI,
    EventType,
    RoomAlias,
    RoomCreatePreset,
    RoomDirectoryVisibility,
    RoomID,
    UserID,
)

from gischat.matrix.config import MatrixSettings
from gischat.matrix.names import slug

logger = logging.getLogger("gischat.matrix")
EVENT_TYPES = {kind: EventType.find(kind) for kind in ("m.room.message", "m.reaction")}
T = TypeVar("T")
# The longest one request to the homeserver may take (an upload of a large layer included).
REQUEST_TIMEOUT = 60.0
# Virtual users whose intents a process keeps (the least recent go first).
MAX_INTENTS = 10_000


class DownloadRefused(Exception):
    """A file a Matrix user shared is not fetched: too large, missing, not ours to read."""


class MemoryStore(ASStateStore, MemoryStateStore):
    """mautrix's per-process memory of who is registered and joined where."""

    def __init__(self) -> None:
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)


class Homeserver:
    """The client side of the bridge: everything gischat asks of the homeserver goes through here."""

    def __init__(self, settings: MatrixSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._api: AppServiceAPI | None = None
        self._names: dict[str, str] = {}  # virtual user -> the display name it was given
        # mautrix builds an intent anew on each ask (wrapping a dozen methods): one per user, kept.
        self._intents: OrderedDict[str, IntentAPI] = OrderedDict()
        self.store = MemoryStore()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        self._api = AppServiceAPI(
            base_url=self.settings.matrix_homeserver_url,
            bot_mxid=UserID(self.settings.bot),
            token=self.settings.matrix_as_token.get_secret_value(),
            log=logging.getLogger("gischat.matrix.mautrix"),  # type: ignore[arg-type]
            state_store=self.store,
            client_session=self._session,
            default_retry_count=0,  # the bridge's queues retry, in order
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def api(self) -> AppServiceAPI:
        assert self._api is not None, "Homeserver.start() first"
        return self._api

    @property
    def bot(self) -> IntentAPI:
        return cast(IntentAPI, self.api.bot_intent())

    def intent(self, mxid: str) -> IntentAPI:
        intent = self._intents.get(mxid)
        if intent is None:
            intent = self._intents[mxid] = cast(IntentAPI, self.api.intent(UserID(mxid)))
            if len(self._intents) > MAX_INTENTS:
                self._intents.popitem(last=False)
        self._intents.move_to_end(mxid)
        return intent

    async def puppet(self, nickname: str) -> IntentAPI:
        """The virtual user of a nickname, with the nickname as its display name."""
        mxid = self.settings.puppet(nickname)
        intent = self.intent(mxid)
        if self._names.get(mxid) != nickname:
            await intent.ensure_registered()
            await intent.set_displayname(nickname)
            self._names[mxid] = nickname
        return intent

    async def as_puppet(self, nickname: str, room_id: str, act: Callable[[IntentAPI], Awaitable[T]]) -> T:
        """Act as a nickname's virtual user in a room, joining it first; once more after a join
        if the homeserver says it is not in the room (it left through another node)."""
        intent = await self.puppet(nickname)
        await intent.ensure_joined(RoomID(room_id), bot=self.bot)
        try:
            return await act(intent)
        except MForbidden:
            await intent.ensure_joined(RoomID(room_id), ignore_cache=True, bot=self.bot)
            return await act(intent)

    async def leave(self, mxid: str, room_id: str) -> None:
        """A virtual user leaves a room (if it is there: maybe it joined through another node)."""
        intent = self.intent(mxid)
        if await self.store.is_joined(RoomID(room_id), intent.mxid):
            await intent.leave_room(RoomID(room_id))
            return
        # Maybe joined through another node: ask the homeserver, not this process's memory.
        with contextlib.suppress(MForbidden, MNotFound):
            await intent.leave_room(RoomID(room_id))

    async def portal(self, room: str) -> str:
        """The Matrix room of a gischat room: the one named in MATRIX_ROOM_IDS, joined by the bot,
        or the portal behind its alias, created (public, named, the rules as topic) if missing."""
        existing = self.settings.matrix_room_ids.get(room)
        if existing is not None:
            await self.bot.ensure_joined(RoomID(existing))
            return existing
        alias = RoomAlias(self.settings.alias(room))
        try:
            return str((await self.bot.resolve_room_alias(alias)).room_id)
        except MNotFound:
            pass
        try:
            room_id = await self.create_portal(room)
        except MRoomInUse:  # another node created it first
            return str((await self.bot.resolve_room_alias(alias)).room_id)
        return room_id

    async def create_portal(self, room: str) -> str:
        room_id = await self.bot.create_room(
            alias_localpart=self.settings.matrix_prefix + slug(room),
            visibility=RoomDirectoryVisibility.PUBLIC,
            preset=RoomCreatePreset.PUBLIC,
            name=room,
            topic=self.settings.rules,
        )
        logger.info("matrix: portal of %r created: %s", room, self.settings.alias(room))
        return str(room_id)

    async def display_name(self, room_id: str, mxid: str) -> str | None:
        """A Matrix user's display name in a room, as the room's member state says (None: unknown)."""
        try:
            content = await self.bot.get_state_event(RoomID(room_id), EventType.ROOM_MEMBER, mxid)
        except MatrixRequestError:
            return None
        name = content.get("displayname") if hasattr(content, "get") else None
        return name if isinstance(name, str) else None

    async def download(self, mxc: str, limit: int) -> bytes:
        """A file of the media repository (authenticated media), refused past `limit` bytes before
        more than that is read."""
        if not mxc.startswith("mxc://") or mxc.count("/") != 3:
            raise DownloadRefused("not an mxc:// URI")
        assert self._session is not None
        url = self.api.get_download_url(ContentURI(mxc), authenticated=True)
        headers = {"Authorization": f"Bearer {self.settings.matrix_as_token.get_secret_value()}"}
        async with self._session.get(url, headers=headers, allow_redirects=False) as response:
            if response.status != 200:
                raise DownloadRefused(f"the media repository answered {response.status}")
            if response.content_length is not None and response.content_length > limit:
                raise DownloadRefused(f"file too large ({response.content_length} bytes, max {limit})")
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > limit:
                    raise DownloadRefused(f"file too large (over {limit} bytes)")
            return bytes(data)

    async def send(
        self, intent: IntentAPI, room_id: str, event_type: str, content: dict[str, Any], txn: str
    ) -> str:
        kind = EVENT_TYPES.get(event_type) or EventType.find(event_type)
        return str(await intent.send_message_event(RoomID(room_id), kind, cast(Any, content), txn_id=txn))
