"""The bridge, put together: the homeserver client, the portals, both directions, their state.

Started and stopped with the app. Nothing here ever blocks a room: the hub hands posts to the
outbound queues and returns, the appservice routes hand transactions to the inbound queues and
answer. The portals are opened at start in the background, and again while the homeserver is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from mautrix.types import RoomID
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gischat.broker.base import Control
from gischat.broker.ledger import Ledger
from gischat.chat.service import ChatService
from gischat.matrix.config import MatrixSettings
from gischat.matrix.homeserver import Homeserver
from gischat.matrix.inbound import Inbound
from gischat.matrix.outbound import Action, Job, Outbound
from gischat.matrix.portals import Portals
from gischat.matrix.queue import FIRST_PAUSE, LONGEST_PAUSE, Link, WorkQueue, describe, transient
from gischat.protocol.messages import Limits

logger = logging.getLogger("gischat.matrix")


class Bridge:
    """gischat's rooms and their Matrix portals as one conversation."""

    def __init__(
        self, settings: MatrixSettings, chat: ChatService, limits: Limits, ledger: Ledger, control: Control
    ) -> None:
        """`ledger` and `control` are the broker's roles the bridge uses: what must happen once across
        the nodes, and the orders every node carries out (a redaction's delete)."""
        self.settings = settings
        self.homeserver = Homeserver(settings)
        self.portals = Portals(settings, self.homeserver)
        self.outbound = Outbound(self.homeserver, ledger, self.portals, settings.matrix_queue_size)
        self.inbound = Inbound(
            settings, self.homeserver, self.portals, ledger, control, chat, limits, self.outbound
        )
        for room in settings.bridged:
            self.outbound.queue(room)
            self.inbound.queue(room)
        self._opening: asyncio.Task[None] | None = None
        self._unreachable = False  # the portals could not be opened yet: the homeserver is away
        self.chat = chat
        self._sweeping: asyncio.Task[None] | None = None
        chat.hub.outlets.append(self.outbound.outlet)
        chat.hub.order_outlets.append(self.outbound.order)
        chat.metrics.watch(self._collect)

    @property
    def queues(self) -> list[WorkQueue[Any]]:
        return [*self.outbound.queues.values(), *self.inbound.queues.values()]

    async def start(self) -> None:
        await self.homeserver.start()
        for queue in self.queues:
            queue.start()
        loop = asyncio.get_running_loop()
        self._opening = loop.create_task(self._open_portals(), name="matrix portals")
        self._sweeping = loop.create_task(self._sweep(), name="matrix sweep")
        logger.info(
            "matrix: bridging %s to %s as %s",
            ", ".join(repr(room) for room in self.settings.bridged),
            self.settings.matrix_homeserver_url,
            self.settings.bot,
        )

    async def stop(self) -> None:
        for task in (self._opening, self._sweeping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for queue in self.queues:
            await queue.stop()
        await self.homeserver.stop()

    async def _open_portals(self) -> None:
        """Every bridged room's portal found or created, trying again while the homeserver is away."""
        for room in self.settings.bridged:
            pause = FIRST_PAUSE
            while True:
                try:
                    await self.portals.room_id(room)
                    self._unreachable = False
                    break
                except Exception as exc:
                    if not transient(exc):
                        logger.warning("matrix: no portal for %r: %s", room, describe(exc))
                        break
                    if not self._unreachable:
                        logger.warning("matrix: homeserver unavailable (%s), portals wait", describe(exc))
                    self._unreachable = True
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, LONGEST_PAUSE)

    async def _sweep(self) -> None:
        """Every MATRIX_SWEEP_INTERVAL, one node (the first to claim the round) makes the virtual
        users of nicknames nobody holds any more leave each portal: a node killed without a goodbye
        leaves its users' virtual users behind, and nobody else heard them go."""
        interval = self.settings.matrix_sweep_interval
        while True:
            await asyncio.sleep(interval)
            for room in self.settings.bridged:
                try:
                    if await self.outbound.ledger.first(f"sweep:{room}", interval * 0.9):
                        await self._sweep_room(room)
                except Exception as exc:  # the homeserver away: the next round tries again
                    logger.info("matrix: the sweep of %r waits for the next round: %s", room, describe(exc))

    async def _sweep_room(self, room: str) -> None:
        room_id = await self.portals.room_id(room)
        members = await self.homeserver.bot.get_joined_members(RoomID(room_id))
        held = {self.settings.puppet(nickname) for nickname in self.chat.hub.users(room)}
        for mxid in members:
            if self.settings.ours(mxid) and mxid != self.settings.bot and mxid not in held:
                self.outbound.queue(room).put(Job(Action.LEAVE, room, "", target=mxid))

    async def alias_queried(self, alias: str) -> bool:
        """The homeserver asks whether one of our aliases exists: a portal's is created now."""
        room = self.portals.room_of_alias(alias)
        if room is None or room in self.settings.matrix_room_ids:
            return False  # a room bridged onto an existing Matrix room has no portal alias
        await self.portals.create(room)
        return True

    @property
    def link(self) -> Link:
        links = {queue.link for queue in self.queues}
        if Link.DOWN in links or self._unreachable:
            return Link.DOWN
        return Link.UP if Link.UP in links or self.portals.found else Link.STARTING

    def status(self) -> dict[str, Any]:
        outbound = self.outbound.queues.values()
        return {
            "homeserver": self.link.value,
            "portals": self.portals.found,
            "queued": sum(queue.waiting for queue in outbound),
            "lag_seconds": round(max((queue.lag for queue in outbound), default=0.0), 3),
            "dropped": sum(queue.stats.overflowed for queue in self.queues),
        }

    def _collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "gischat_matrix_up", "1 while the homeserver answers the bridge", value=int(self.link is Link.UP)
        )
        waiting = GaugeMetricFamily(
            "gischat_matrix_queue", "Bridge jobs waiting, by direction", labels=["direction"]
        )
        lag = GaugeMetricFamily(
            "gischat_matrix_lag_seconds", "Wait of the oldest bridge job, by direction", labels=["direction"]
        )
        done = CounterMetricFamily(
            "gischat_matrix_jobs", "Bridge jobs done, by direction", labels=["direction"]
        )
        dropped = CounterMetricFamily(
            "gischat_matrix_dropped",
            "Bridge jobs dropped, by direction and cause (overflow: queue full; refused: by the homeserver)",
            labels=["direction", "cause"],
        )
        sides: list[tuple[str, list[WorkQueue[Any]]]] = [
            ("to_matrix", list(self.outbound.queues.values())),
            ("from_matrix", list(self.inbound.queues.values())),
        ]
        for direction, values in sides:
            waiting.add_metric([direction], sum(queue.waiting for queue in values))
            lag.add_metric([direction], max((queue.lag for queue in values), default=0.0))
            done.add_metric([direction], sum(queue.stats.done for queue in values))
            dropped.add_metric([direction, "overflow"], sum(queue.stats.overflowed for queue in values))
            dropped.add_metric([direction, "refused"], sum(queue.stats.failed for queue in values))
        yield from (waiting, lag, done, dropped)
