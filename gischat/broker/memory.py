"""The single-process broker: publishing is delivering, and there are no other nodes."""

from __future__ import annotations

from typing import Any

from gischat.broker.base import Envelope, Node, Order
from gischat.broker.ledger import MemoryLedger
from gischat.protocol.dialects import Post


class MemoryBroker:
    """Single-process broker: publishing is delivering, and there are no other nodes."""

    healthy = True
    shared = False
    node_name = "local"

    def __init__(self) -> None:
        self._node: Node | None = None
        self.ledger = MemoryLedger()

    async def start(self, node: Node) -> None:
        self._node = node

    async def stop(self) -> None:
        self._node = None

    def publish(self, room: str, envelope: Envelope) -> None:
        if self._node is not None:
            self._node.deliver(room, envelope)

    async def claim(self, room: str, key: str, nickname: str, payload: Post) -> bool:
        # The hub checked its own registry: with one node that is the whole truth.
        self.publish(room, Envelope(payload))
        return True

    def release(self, room: str, key: str, nickname: str, payload: Post) -> None:
        self.publish(room, Envelope(payload))

    async def attend(self, room: str) -> None:
        return None  # one process: every room's messages are here

    def count_changed(self, room: str) -> None:
        return None

    def remote_count(self, room: str) -> int:
        return 0

    def remote_owner(self, room: str, key: str) -> str | None:
        return None

    def remote_users(self, room: str) -> list[str]:
        return []

    def status(self) -> dict[str, Any] | None:
        return None

    def order(self, order: Order) -> None:
        if self._node is not None:
            self._node.obey(order)

    async def load_bans(self) -> list[dict[str, Any]]:
        return []

    async def gather(self, room: str) -> list[dict[str, Any]]:
        return []
