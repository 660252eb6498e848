"""The ledger of the Redis engine: keys under `{prefix}:ledger:`, each with its expiry.

`first` is one `SET NX PX`, so exactly one node wins it. While Redis is away, the node remembers
alone (a `MemoryLedger`): a transaction retried on another node meanwhile may be handed to the
rooms twice, never lost, and the chat does not wait for Redis to come back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from gischat.broker.ledger import MemoryLedger
from gischat.broker.redis.connection import Client

logger = logging.getLogger("gischat.broker")
# The longest a ledger call waits for Redis before the node answers from its own memory.
LEDGER_TIMEOUT = 2.0


class RedisLedger:
    """Keys shared through Redis, with the node's own memory when Redis is away."""

    def __init__(self, prefix: str, client: Callable[[], Awaitable[Client | None]]) -> None:
        self._prefix = f"{prefix}:ledger:"
        self._client = client
        self._local = MemoryLedger()

    async def first(self, key: str, ttl: float, value: str = "1") -> bool:
        redis = await self._client()
        if redis is not None:
            try:
                async with asyncio.timeout(LEDGER_TIMEOUT):
                    won = await redis.set(self._prefix + key, value, nx=True, px=_ms(ttl))
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning("broker: ledger answered from this node's memory: %s", type(exc).__name__)
            else:
                if won:  # the loser does not know the winner's value: it remembers nothing
                    await self._local.put(key, value, ttl)
                return bool(won)
        return await self._local.first(key, ttl, value)

    async def put(self, key: str, value: str, ttl: float) -> None:
        await self._local.put(key, value, ttl)
        redis = await self._client()
        if redis is None:
            return
        try:
            async with asyncio.timeout(LEDGER_TIMEOUT):
                await redis.set(self._prefix + key, value, px=_ms(ttl))
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("broker: ledger entry kept on this node only: %s", type(exc).__name__)

    async def get(self, key: str) -> str | None:
        redis = await self._client()
        if redis is not None:
            try:
                async with asyncio.timeout(LEDGER_TIMEOUT):
                    value = await redis.get(self._prefix + key)
            except (RedisError, OSError, TimeoutError):
                pass
            else:
                return value.decode() if isinstance(value, bytes) else value
        return await self._local.get(key)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
