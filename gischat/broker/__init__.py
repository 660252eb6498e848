"""Fan-out between server processes: a tiny interface (`base`), and its engines as siblings.

`memory://` (one process, `memory`) and `redis://` (any number of nodes, `redis`; also
`rediss://`, and `redis+sentinel://` for a primary Redis Sentinel replaces when it fails) are chosen
by the URL scheme of `BROKER_URL`; the Redis engine is imported only when asked for.
"""

from __future__ import annotations

from gischat.broker.base import (
    Broker,
    BrokerSettings,
    Control,
    Envelope,
    Fanout,
    Membership,
    Nicknames,
    Node,
    Presence,
)
from gischat.broker.ledger import Ledger
from gischat.broker.memory import MemoryBroker

__all__ = [
    "Broker",
    "BrokerSettings",
    "Control",
    "Envelope",
    "Fanout",
    "Ledger",
    "Membership",
    "MemoryBroker",
    "Nicknames",
    "Node",
    "Presence",
    "create_broker",
]


def create_broker(settings: BrokerSettings) -> Broker:
    """Pick the broker implementation from the URL scheme of `BROKER_URL`."""
    scheme = settings.broker_url.split("://", 1)[0]
    if scheme == "memory":
        return MemoryBroker()
    if scheme in ("redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster"):
        from gischat.broker.redis.broker import RedisBroker

        return RedisBroker(settings)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}")  # settings refuse it first
