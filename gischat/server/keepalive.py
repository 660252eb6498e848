"""Keepalive pings of an open websocket: one every WS_PING_INTERVAL, a pong due within WS_PING_TIMEOUT.

The pings run on the connection's timers, not in a task: an idle socket costs nothing between
them. A peer that does not answer in time is refused (1011).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from uvicorn.config import Config
from websockets.server import ServerProtocol

from gischat.server.timers import Timers
from gischat.server.writing import Writer

CLOSE_INTERNAL_ERROR = 1011


class Keepalive:
    """The pings of one websocket while it is open, and the pong awaited."""

    __slots__ = ("conn", "interval", "payload", "refuse", "timeout", "timers", "writer")

    def __init__(
        self,
        conn: ServerProtocol,
        writer: Writer,
        timers: Timers,
        config: Config,
        *,
        refuse: Callable[[int, str], None],
    ) -> None:
        self.conn = conn
        self.writer = writer
        self.timers = timers
        # Between a pong (or a ping, without a timeout) and the next ping; the wait for the pong.
        self.interval, self.timeout = config.ws_ping_interval, config.ws_ping_timeout
        self.refuse = refuse  # the peer, with a close frame of this code and reason
        self.payload = b""  # of our ping awaiting its pong

    def start(self) -> None:
        """The connection is open (or the last ping was answered): the next ping in a while."""
        if self.interval:
            self.timers.start("ping", self.interval, self._ping)

    def stop(self) -> None:
        """The connection is no longer open: no more pings, nothing awaited."""
        self.timers.cancel("ping")
        self.timers.cancel("pong")

    def _ping(self) -> None:
        payload = os.urandom(4)
        self.conn.send_ping(payload)
        self.writer.flush()
        self.payload = payload
        if self.timeout:
            self.timers.start(
                "pong", self.timeout, self.refuse, CLOSE_INTERNAL_ERROR, "keepalive ping timeout"
            )
        else:
            self.start()

    def pong(self, payload: bytes) -> None:
        """A pong: the answer to our ping restarts the interval (others are unsolicited or late)."""
        if "pong" not in self.timers or payload != self.payload:
            return
        self.timers.cancel("pong")
        self.start()
