"""Which rooms' messages this node reads, and how it starts reading one without missing anything.

Messages travel on a channel per room (`NodeKeys.room_channel`); presence, counts, nicknames and
moderators' orders on the node-wide channel every node reads. Those are few (one per join, leave or
order, none per message), while messages are the traffic: a node pays only for the rooms it serves.
It reads a room while it has sockets there, and for `REDIS_ROOM_LINGER` seconds after the last one
left (a socket that comes and goes does not subscribe and unsubscribe each time); an HTTP request
that reads the room's history has it read for as long.

Starting to read a room: subscribe, wait until Redis confirms the subscription, then load in one
script the room's history and recent events with the sequence number they are as of. Every message
numbered after it comes on the subscription; every one before is in what was loaded. Messages that
come meanwhile are held, and delivered once the history is in place. A socket joins a room only once
its node reads it (`attend`), so the history it is given is the room's, not a stale copy.

A room's channel carries its messages and deletions, numbered by the room's own sequence; the
node-wide channel the rest. A message waits at the `Barrier` until this node has read the
node-wide events its sender had (a `newcomer` before that newcomer's first message, on a Redis
Cluster too, where the two channels live on different shards).

Back on Redis after an outage, the rooms this node reads are read again the same way, and what their
recent events hold that this node's sockets never got (said elsewhere while it was not listening) is
delivered to them then, once (`Seen`), in the order Redis ran it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

from gischat.broker.base import Envelope, Node
from gischat.broker.redis.barrier import Barrier
from gischat.broker.redis.bus import Bus
from gischat.broker.redis.connection import Client
from gischat.broker.redis.events import EventKind, Header, parse_event
from gischat.broker.redis.keys import NodeKeys
from gischat.broker.redis.mirror import Buffered, readable
from gischat.broker.redis.orders import read_order
from gischat.broker.redis.outage import Seen
from gischat.broker.redis.outbox import Outbox
from gischat.protocol.dialects import Post

logger = logging.getLogger("gischat.broker")

# How long `attend` waits for a room to be read before it lets the socket in anyway (on a
# connection this slow the session fails soon after, and the room is read again when it is back).
ATTEND_TIMEOUT = 5.0


class Reading(Enum):
    """Where this node is with one room's channel, in the current session."""

    SUBSCRIBING = auto()  # subscribed (or about to be); the history on its way, its events held
    READING = auto()  # history in place, messages delivered as they come


@dataclass(slots=True)
class Route:
    """One room this node reads in the current session."""

    ready: asyncio.Future[None]  # done once READING (or the session ended)
    state: Reading = Reading.SUBSCRIBING
    base: int = 0  # the room's sequence number the history was loaded at
    held: list[Buffered] = field(default_factory=list)  # its channel's events meanwhile
    notes: list[Buffered] = field(default_factory=list)  # node-wide events about it meanwhile (`hold`)
    received: int = 0  # the room's events read: up to this number
    # Presence waiting for the message its node sent before it (`presence`), in node-wide order.
    waiting: deque[Buffered] = field(default_factory=deque)


class Routes:
    """The rooms this node reads: wanted across sessions, subscribed within one."""

    def __init__(
        self, node: str, keys: NodeKeys, linger: float, seen: Seen, patience: float, outbox: Outbox
    ) -> None:
        self.node = node
        self.outbox = outbox  # this node's messages, confirmed by what a room's history holds
        self.keys = keys
        self.linger = linger
        self.seen = seen
        self.barrier = Barrier(patience)
        self.wanted: set[str] = set()  # rooms read now, or as soon as Redis is back
        self.routes: dict[str, Route] = {}
        self._chosen: list[str] = []  # the rooms whose channels a session is subscribing to
        self._subscribed: dict[str, Route] = {}  # the rooms a session subscribed to as it began
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._hub: Node | None = None
        self._flushed: asyncio.Future[Any] | None = None  # the session's kept messages in Redis
        self._bus: Bus | None = None
        self._client: Client | None = None
        self._sha: dict[str, str] = {}
        self._fail: Callable[[BaseException], None] = lambda exc: None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- what the broker asks ---------------------------------------------------------------

    async def attend(self, room: str) -> None:
        """Return once this node reads `room` (at once while Redis is away: then only this node's
        sockets are in it, and it is read when Redis is back)."""
        self.want(room)
        route = self.routes.get(room)
        if route is None and self._bus is not None:
            route = self._start(room)
        if route is not None and not route.ready.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(route.ready), ATTEND_TIMEOUT)

    def want(self, room: str) -> None:
        self.wanted.add(room)
        handle = self._lingering.pop(room, None)
        if handle is not None:
            handle.cancel()

    def sockets_changed(self, room: str, local: int) -> None:
        """This node's socket count of `room` changed: the last one gone starts the linger."""
        if local > 0:
            self.want(room)
            if room not in self.routes and self._bus is not None:
                self._start(room)  # let go of since it was attended (a linger shorter than a handshake)
        elif room in self.wanted and room not in self._lingering:
            loop = asyncio.get_running_loop()
            self._lingering[room] = loop.call_later(self.linger, self._let_go, room)

    def receives(self, room: str) -> bool:
        """Whether this node's subscription brings it `room`'s messages (or will, once confirmed)."""
        return room in self.routes

    def reading(self) -> list[str]:
        return sorted(room for room, route in self.routes.items() if route.state is Reading.READING)

    # --- the session's side -------------------------------------------------------------------

    def channels(self) -> list[str]:
        """What a new session subscribes to: the node-wide channel, then each wanted room's."""
        self._chosen = sorted(self.wanted)
        return [self.keys.channel, *(self.keys.room_channel(room) for room in self._chosen)]

    def begin(
        self,
        hub: Node,
        client: Client,
        bus: Bus,
        sha: dict[str, str],
        fail: Any,
        flushed: asyncio.Future[Any],
    ) -> None:
        """A session subscribed to `channels()`: those of its rooms still wanted are subscribing.
        The rooms attended or let go of while it subscribed (no session then) are subscribed to,
        or unsubscribed from, on their own. `flushed` is done once what this node kept while
        Redis was away is in Redis: no room's history is loaded before (it would lack them)."""
        self._hub, self._client, self._bus, self._sha, self._fail = hub, client, bus, sha, fail
        self._flushed = flushed
        loop = asyncio.get_running_loop()
        chosen, self._chosen = self._chosen, []
        self.routes = {room: Route(loop.create_future()) for room in chosen if room in self.wanted}
        self._subscribed = dict(self.routes)
        for room in sorted(self.wanted - set(chosen)):
            self._start(room)
        for room in chosen:
            if room not in self.wanted:
                self._spawn(bus.unsubscribe(self.keys.room_channel(room)))

    async def load(self) -> None:
        """Read the rooms the session subscribed to as it began (their subscriptions are
        confirmed; rooms attended since are read on their own)."""
        subscribed, self._subscribed = self._subscribed, {}
        await asyncio.gather(*(self._load(room, route) for room, route in subscribed.items()))

    def end(self) -> None:
        """The session is over: no room is read until the next one; `attend` returns at once.
        Messages still at the barrier go on (they came from Redis: late, not lost)."""
        for route in self.routes.values():
            while route.waiting:
                self._hand_on(route.waiting.popleft())
            if not route.ready.done():
                route.ready.set_result(None)
        self.barrier.release()
        for task in self._tasks:
            task.cancel()
        self.routes, self._subscribed, self._tasks = {}, {}, set()
        self._bus = self._client = None

    def on_room_event(self, seq: int, header: Header, payload: bytes) -> None:
        """An event from a room's channel: a message, a kick or a deletion."""
        route = self.routes.get(header.room)
        if route is None:
            return  # a room let go of: its subscription is ending
        if route.state is Reading.SUBSCRIBING:
            route.held.append((seq, header, payload))
        elif seq > route.base:
            self._pass_on(header, payload)
            route.received = max(route.received, seq)
            if route.waiting:
                self._presence_due(route)

    def presence(self, seq: int, header: Header, payload: bytes) -> bool:
        """A `newcomer` or an `exiter` in a room (from the node-wide channel): held while the
        room's messages are, to go to the node in order with them (`_load`); or waiting for the
        message its node sent before it, which this node has not read yet. False: hand it on now."""
        route = self.routes.get(header.room)
        if route is None:
            return False
        if route.state is Reading.SUBSCRIBING:
            route.notes.append((seq, header, payload))
            return True
        if not route.waiting and header.sent <= route.received:
            return False
        self._wait(route, (seq, header, payload))
        return True

    def _wait(self, route: Route, note: Buffered) -> None:
        route.waiting.append(note)
        self.barrier.block(note[0])
        loop = asyncio.get_running_loop()
        loop.call_later(self.barrier.patience, self._give_up, route, note[0])

    def _give_up(self, route: Route, seq: int) -> None:
        """What a presence event waited for did not come: it goes on, late, with those before it."""
        while route.waiting and route.waiting[0][0] <= seq:
            self._hand_on(route.waiting.popleft())

    def _presence_due(self, route: Route) -> None:
        """The room was read further: the presence events waiting for it go on, in order."""
        waiting = route.waiting
        while waiting and waiting[0][1].sent <= route.received:
            self._hand_on(waiting.popleft())

    def _hand_on(self, note: Buffered) -> None:
        seq, header, payload = note
        self._announce(header, payload)
        self.barrier.unblock(seq)

    def _pass_on(self, header: Header, payload: bytes, in_history: bool = False) -> None:
        """A room's event to the node, through the barrier (behind what waits there)."""
        if header.kind is EventKind.MESSAGE:
            self.barrier.pass_on(header.after, lambda: self.deliver(header, payload, in_history=in_history))
        elif header.kind is EventKind.ORDER:
            self.barrier.pass_on(0, lambda: self._obey(payload))

    def deliver(self, header: Header, payload: bytes, *, in_history: bool) -> None:
        """A message event to this node's sockets, unless they had it already; `in_history`:
        the room's history has it already (or it is not kept)."""
        hub = self._hub
        if hub is None or (header.node == self.node and header.quiet):
            return  # kept during an outage: its sockets had it then, the history has it now
        post = readable(payload)
        if post is None or not self.seen.first(post.id):
            return  # sent again after an outage, delivered already
        hub.deliver(header.room, Envelope(post, header.to, header.keep and not in_history))

    # --- reading a room -----------------------------------------------------------------------

    def _start(self, room: str) -> Route:
        route = Route(asyncio.get_running_loop().create_future())
        self.routes[room] = route
        self._spawn(self._subscribe_and_load(room, route))
        return route

    async def _subscribe_and_load(self, room: str, route: Route) -> None:
        bus = self._bus
        assert bus is not None
        await asyncio.wait_for(bus.subscribe(self.keys.room_channel(room)), ATTEND_TIMEOUT)
        if self.routes.get(room) is route:  # not let go of meanwhile
            await self._load(room, route)

    async def _load(self, room: str, route: Route) -> None:
        """The room's history and recent events as of a sequence number, then what was held."""
        client, hub = self._client, self._hub
        assert client is not None
        assert hub is not None
        keys = self.keys
        # Sockets here already (joined while Redis was away) are owed what they never got; else
        # the recent events' ids are only noted, and only they travel.
        missed = hub.local_count(room) > 0
        if self._flushed is not None and not self._flushed.done():
            await asyncio.shield(self._flushed)
        seq_raw, history, recent = await client.evalsha(
            self._sha["follow"],
            3,
            keys.room_seq(room),
            keys.history(room),
            keys.recent(room),
            "events" if missed else "ids",
        )
        if self.routes.get(room) is not route:
            return  # let go of, or the session ended, meanwhile
        base = int(seq_raw)
        self.outbox.covered(keys.room_channel(room), base)
        # The node-wide events about the room that came meanwhile go to the node among its
        # messages: each before the first message whose sender had read it (`after`).
        notes = deque(route.notes)
        if missed:  # in the room's order
            for event in map(parse_event, recent):  # messages, and deletions
                if event is not None:
                    self._replay(notes, event[1].after)
                    self._pass_on(event[1], event[2], in_history=True)
        else:
            for post_id in recent:
                self.seen.first(post_id.decode(errors="replace"))
        # The history as of `base`; what came after it goes on as it would have live (kept, if it
        # is to be), so the history and the deliveries never hold a message twice.
        hub.reset_history(room, stored_posts(room, history))
        # Messages up to `base` are in the history; an order held (a kick, a deletion) is carried
        # out even so: this node's sockets were here when it was given.
        held = [
            (header, payload)
            for seq, header, payload in route.held
            if seq > base or header.kind is not EventKind.MESSAGE
        ]
        route.received = max([base, *(seq for seq, _, _ in route.held)])
        route.state, route.base, route.held, route.notes = Reading.READING, base, [], []
        for header, payload in held:
            self._replay(notes, header.after)
            self._pass_on(header, payload)
        for note in notes:  # the rest, once the room is read as far as each one's node had sent
            if route.waiting or note[1].sent > route.received:
                self._wait(route, note)
            else:
                self._announce(note[1], note[2])
        hub.remote_changed(room)
        if not route.ready.done():
            route.ready.set_result(None)

    def _replay(self, notes: deque[Buffered], upto: int) -> None:
        """What `presence` held, numbered up to `upto`, to the node now."""
        while notes and notes[0][0] <= upto:
            _, header, payload = notes.popleft()
            self._announce(header, payload)

    def _announce(self, header: Header, payload: bytes) -> None:
        """A `newcomer` or an `exiter` to the node."""
        post = readable(payload, header.freed_at)
        if post is not None and self._hub is not None:
            self._hub.deliver(header.room, Envelope(post))

    def _obey(self, payload: bytes) -> None:
        """A kick or a deletion, in its place among the room's messages."""
        order = read_order(payload)
        if order is not None and self._hub is not None:
            self._hub.obey(order)

    def _let_go(self, room: str) -> None:
        """Nobody here in `room` for the linger: stop reading it."""
        self._lingering.pop(room, None)
        self.wanted.discard(room)
        route = self.routes.pop(room, None)
        if route is not None:
            while route.waiting:
                self._hand_on(route.waiting.popleft())
            if not route.ready.done():
                route.ready.set_result(None)
        self.outbox.let_go(self.keys.room_channel(room))
        if self._bus is not None:
            self._spawn(self._bus.unsubscribe(self.keys.room_channel(room)))

    def _spawn(self, work: Any) -> None:
        """Run `work` for this session; a failure ends the session (the connection is suspect)."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._fail(error)


def stored_posts(room: str, items: list[bytes]) -> list[Post]:
    """A room's history as Redis holds it; entries another version wrote are skipped, said once."""
    posts = [post for post in map(readable, items) if post is not None]
    if len(posts) < len(items):
        logger.warning(
            "history of %r: %d stored messages in another format skipped (written by gischat 2.x?)",
            room,
            len(items) - len(posts),
        )
    return posts
