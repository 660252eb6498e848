"""The ledger contract: what `gischat.broker.ledger.Ledger` promises the Matrix bridge, tested against
`MemoryLedger` and against `RedisLedger` on a real Redis (or valkey) server.

The contract tests are parametrized over both engines; every test gets its own key prefix, so
tests never see each other's keys. Expiry is waited for with a bounded poll, never a fixed sleep;
the memory engine's deadlines are also checked exactly, against a clock the test moves.
`RedisLedger` answers from its own memory when its client factory gives no client (the node is
cut off from Redis) and when a Redis call fails (a client pointed at a closed port).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis_nodes import RedisServer

import gischat.broker.ledger
from gischat.broker.ledger import Ledger, MemoryLedger
from gischat.broker.redis.ledger import RedisLedger

from conftest import free_port, wait_for

pytestmark = pytest.mark.anyio

LONG = 60.0  # a ttl no test outlives
SHORT = 0.05  # a ttl a test waits out (with a bounded poll)
EXPIRY_WAIT = 3.0  # the longest a test polls for an expired entry to be gone


def clients(redis: Redis | None) -> Callable[[], Awaitable[Redis | None]]:
    """A client factory as the Redis broker hands one to its ledger."""

    async def client() -> Redis | None:
        return redis

    return client


@dataclass
class Switch:
    """A client factory whose answer a test changes: Redis reachable, or the node cut off."""

    redis: Redis | None

    async def __call__(self) -> Redis | None:
        return self.redis


@pytest.fixture
def prefix() -> str:
    return f"l{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def ledger(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Ledger]:
    """Each engine in turn; Redis is started only for the tests that need it."""
    if request.param == "memory":
        yield MemoryLedger()
        return
    server = request.getfixturevalue("redis_server")
    assert isinstance(server, RedisServer)
    client = Redis.from_url(server.url)
    yield RedisLedger(prefix, clients(client))
    await client.aclose()


async def gone(ledger: Ledger, key: str) -> None:
    async def check() -> bool:
        return await ledger.get(key) is None

    await wait_for(check, timeout=EXPIRY_WAIT)


# --- the contract, on both engines ----------------------------------------------------------------


async def test_first_is_true_once_then_false(ledger: Ledger) -> None:
    assert await ledger.first("txn:1", LONG) is True
    assert await ledger.first("txn:1", LONG) is False
    assert await ledger.first("txn:1", LONG, "other") is False
    assert await ledger.first("txn:2", LONG) is True  # another key is another claim


async def test_first_keeps_its_value(ledger: Ledger) -> None:
    assert await ledger.first("holder:QGIS:jane-matrix", LONG, "@jane:example.org") is True
    assert await ledger.get("holder:QGIS:jane-matrix") == "@jane:example.org"
    # A lost claim does not change what the key holds.
    assert await ledger.first("holder:QGIS:jane-matrix", LONG, "@john:example.org") is False
    assert await ledger.get("holder:QGIS:jane-matrix") == "@jane:example.org"


async def test_first_without_a_value_holds_one(ledger: Ledger) -> None:
    assert await ledger.first("txn:plain", LONG) is True
    assert await ledger.get("txn:plain") == "1"


async def test_put_and_get(ledger: Ledger) -> None:
    assert await ledger.get("event:$a") is None
    await ledger.put("event:$a", '{"room":"QGIS","post":"p1"}', LONG)
    assert await ledger.get("event:$a") == '{"room":"QGIS","post":"p1"}'
    await ledger.put("event:$a", "replaced", LONG)  # whatever it held
    assert await ledger.get("event:$a") == "replaced"
    await ledger.put("event:$b", "héllo wörld 🌍", LONG)  # any text, non-ASCII included
    assert await ledger.get("event:$b") == "héllo wörld 🌍"
    assert await ledger.get("event:$a") == "replaced"


async def test_put_over_a_claim(ledger: Ledger) -> None:
    assert await ledger.first("said:x", LONG, "one") is True
    await ledger.put("said:x", "two", LONG)
    assert await ledger.get("said:x") == "two"
    assert await ledger.first("said:x", LONG) is False


async def test_entries_expire(ledger: Ledger) -> None:
    await ledger.put("short", "v", SHORT)
    await ledger.put("long", "v", LONG)
    await gone(ledger, "short")
    assert await ledger.get("long") == "v"


async def test_an_expired_claim_can_be_won_again(ledger: Ledger) -> None:
    assert await ledger.first("txn:short", SHORT, "a") is True
    await gone(ledger, "txn:short")
    assert await ledger.first("txn:short", LONG, "b") is True
    assert await ledger.get("txn:short") == "b"
    assert await ledger.first("txn:short", LONG, "c") is False


# --- MemoryLedger ---------------------------------------------------------------------------------


class Clock:
    """`time.monotonic` for the memory ledger, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(gischat.broker.ledger, "time", fake)
    return fake


async def test_memory_deadlines_are_exact(clock: Clock) -> None:
    ledger = MemoryLedger()
    await ledger.put("k", "v", 10)
    assert await ledger.first("c", 5, "x") is True
    clock.now += 4.999
    assert await ledger.get("k") == "v"
    assert await ledger.first("c", 5) is False
    clock.now += 0.001  # the claim's deadline
    assert await ledger.first("c", 5, "y") is True
    assert await ledger.get("c") == "y"
    clock.now += 5.0  # the entry's deadline
    assert await ledger.get("k") is None


async def test_memory_put_renews_the_deadline(clock: Clock) -> None:
    ledger = MemoryLedger()
    await ledger.put("k", "v", 10)
    clock.now += 8
    await ledger.put("k", "w", 10)
    clock.now += 8
    assert await ledger.get("k") == "w"


async def test_memory_size_bound_drops_the_oldest() -> None:
    ledger = MemoryLedger(max_entries=3)
    for key in ("a", "b", "c"):
        await ledger.put(key, key.upper(), LONG)
    await ledger.put("d", "D", LONG)
    assert await ledger.get("a") is None
    assert [await ledger.get(key) for key in ("b", "c", "d")] == ["B", "C", "D"]
    # Setting a key again makes it the newest: "b" outlives "c" now.
    await ledger.put("b", "B2", LONG)
    assert await ledger.first("e", LONG) is True
    assert await ledger.get("c") is None
    assert [await ledger.get(key) for key in ("d", "b", "e")] == ["D", "B2", "1"]


async def test_memory_size_bound_forgets_claims_too() -> None:
    ledger = MemoryLedger(max_entries=2)
    assert await ledger.first("txn:1", LONG) is True
    assert await ledger.first("txn:2", LONG) is True
    assert await ledger.first("txn:3", LONG) is True
    # "txn:1" was the oldest: forgotten, so it may be won again (a bound, not a working set).
    assert await ledger.first("txn:1", LONG) is True
    assert await ledger.first("txn:3", LONG) is False


# --- RedisLedger ----------------------------------------------------------------------------------


async def test_redis_keys_live_under_the_prefix_with_their_ttl(redis_client: Redis, prefix: str) -> None:
    ledger = RedisLedger(prefix, clients(redis_client))
    await ledger.put("event:$e", "v", SHORT)
    assert await ledger.first("txn:t", LONG, "w") is True
    assert await redis_client.get(f"{prefix}:ledger:event:$e") in (b"v", None)  # None: expired already
    assert await redis_client.get(f"{prefix}:ledger:txn:t") == b"w"
    assert 0 < await redis_client.pttl(f"{prefix}:ledger:txn:t") <= LONG * 1000
    assert await redis_client.pttl(f"{prefix}:ledger:event:$e") <= SHORT * 1000


async def test_redis_is_shared_by_the_nodes(redis_client: Redis, prefix: str) -> None:
    """Two nodes on one prefix: one claim wins across them, what one puts the other gets."""
    a = RedisLedger(prefix, clients(redis_client))
    b = RedisLedger(prefix, clients(redis_client))
    assert await a.first("txn:9", LONG, "a") is True
    assert await b.first("txn:9", LONG, "b") is False
    assert await b.get("txn:9") == "a"
    await b.put("nickname:QGIS:@jane:example.org", "Jane-matrix", LONG)
    assert await a.get("nickname:QGIS:@jane:example.org") == "Jane-matrix"
    # Another instance sharing the Redis (another prefix) sees none of it.
    other = RedisLedger(prefix + "x", clients(redis_client))
    assert await other.get("txn:9") is None
    assert await other.first("txn:9", LONG) is True


async def test_redis_away_answers_from_memory() -> None:
    """The broker gives no client while the node is cut off: the node remembers alone."""
    ledger = RedisLedger("gischat", clients(None))
    assert await ledger.first("txn:1", LONG, "a") is True
    assert await ledger.first("txn:1", LONG, "b") is False
    assert await ledger.get("txn:1") == "a"
    await ledger.put("event:$x", "v", LONG)
    assert await ledger.get("event:$x") == "v"
    await ledger.put("short", "v", SHORT)
    await gone(ledger, "short")


async def test_redis_failing_answers_from_memory(caplog: pytest.LogCaptureFixture) -> None:
    """A client pointed at a closed port: every call fails, the node answers from its memory."""
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        ledger = RedisLedger("gischat", clients(client))
        with caplog.at_level("WARNING", logger="gischat.broker"):
            assert await ledger.first("txn:1", LONG, "a") is True
            assert await ledger.first("txn:1", LONG, "b") is False
            assert await ledger.get("txn:1") == "a"
            await ledger.put("event:$x", "v", LONG)
            assert await ledger.get("event:$x") == "v"
        assert any("memory" in record.getMessage() for record in caplog.records)
        assert any("this node only" in record.getMessage() for record in caplog.records)
    finally:
        await client.aclose()


async def test_redis_claims_stay_lost_while_redis_is_away(redis_client: Redis, prefix: str) -> None:
    """What this node saw claimed in Redis is still claimed when Redis goes away meanwhile."""
    switch = Switch(redis_client)
    ledger = RedisLedger(prefix, switch)
    assert await ledger.first("txn:5", LONG, "a") is True
    await ledger.put("event:$y", "v", LONG)
    switch.redis = None
    assert await ledger.first("txn:5", LONG, "z") is False
    assert await ledger.get("event:$y") == "v"
    switch.redis = redis_client  # back: Redis answers again
    assert await ledger.get("txn:5") == "a"


async def test_redis_a_lost_claim_is_not_remembered_as_the_value(redis_client: Redis, prefix: str) -> None:
    switch = Switch(redis_client)
    ledger = RedisLedger(prefix, switch)
    assert await ledger.first("holder:QGIS:jane-matrix", LONG, "@jane:example.org") is True
    assert await ledger.first("holder:QGIS:jane-matrix", LONG, "@john:example.org") is False
    switch.redis = None  # Redis away: the node answers from its memory
    assert await ledger.get("holder:QGIS:jane-matrix") != "@john:example.org"
