"""Redis that fails over: BROKER_URL=redis+sentinel://..., real sentinels, a primary lost under traffic.

The URL first: the settings and the broker read one grammar (held to the same URLs from both
sides), and no error, log line or `/status` answer shows a password.

Then real processes (`sentinel_nodes`): a primary, a replica and three sentinels on loopback, two
gischat nodes on `redis+sentinel://`, and clients of both dialects chatting on both. The primary is
killed (-9) under traffic: each node serves its own sockets alone and keeps what they say, the
sentinels promote the replica after DOWN_AFTER_MS, each node finds the new primary through them
and publishes what it kept. Every message sent reaches every client, once. The failover time (the
primary killed -> every client heard something every other one said since, across the nodes) is printed:
`pytest -s tests/broker/test_sentinel.py`. A planned failover (`SENTINEL FAILOVER`: the old primary lives
on, as a replica) is followed the same way.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chatters import assert_delivered_once, chatting, heard_since, settle, tally, traffic_for, until
from redis_nodes import Cluster, require_redis
from sentinel_nodes import SERVICE, SentinelGroup

from gischat.broker.redis.connection import RedisTarget, SentinelURL, describe
from gischat.settings import SettingsError, load_settings

PASSWORD = "data-s3cret/pw"  # a '/' to be percent-encoded in the URL
SENTINEL_PASSWORD = "sentinel-s3cret"


# --- the URL ---------------------------------------------------------------------------------

GOOD = [
    (
        "redis+sentinel://s1:26379,s2:26379,s3:26379/mymaster/0",
        [("s1", 26379), ("s2", 26379), ("s3", 26379)],
        0,
    ),
    ("redis+sentinel://s1,s2:26380/mymaster", [("s1", 26379), ("s2", 26380)], 0),
    ("redis+sentinel://:pw@10.0.0.1:26379/gischat/2", [("10.0.0.1", 26379)], 2),
    ("redis+sentinel://user:pw@[::1]:26379,[fd00::2]/gischat/", [("::1", 26379), ("fd00::2", 26379)], 0),
    ("redis+sentinel://:pw@h:1/svc.name-1/5?sentinel_password=x&sentinel_username=y", [("h", 1)], 5),
]
BAD = [
    "redis+sentinel://:secret@s1:26379,s2:26379",  # no service
    "redis+sentinel://:secret@s1:26379/",  # no service
    "redis+sentinel://:secret@s1:port/mymaster/0",
    "redis+sentinel://:secret@s1:70000/mymaster/0",
    "redis+sentinel://:secret@s1:26379,,s2/mymaster/0",
    "redis+sentinel://:secret@/mymaster/0",
    "redis+sentinel://:secret@s1/my master/0",
    "redis+sentinel://:secret@s1/mymaster/db",
    "redis+sentinel://:secret@s1/mymaster/0/1",
    "redis+sentinel://:secret@s1/mymaster/0?password=secret",
    "rediss+sentinel://:secret@s1/mymaster/0",
]


def settings_accept(url: str) -> bool:
    try:
        load_settings(_env_file=None, broker_url=url)
    except SettingsError:
        return False
    return True


@pytest.mark.parametrize(("url", "sentinels", "db"), GOOD)
def test_settings_and_broker_read_the_same_good_urls(
    url: str, sentinels: list[tuple[str, int]], db: int
) -> None:
    assert settings_accept(url)
    parsed = SentinelURL.parse(url)
    assert (parsed.sentinels, parsed.db) == (sentinels, db)


@pytest.mark.parametrize("url", BAD)
def test_settings_and_broker_refuse_the_same_bad_urls_in_one_line_without_the_password(url: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(_env_file=None, broker_url=url)
    message = str(refused.value)
    assert message.startswith("invalid setting BROKER_URL: "), message
    assert "secret" not in message
    assert "\n" not in message
    if url.startswith("redis+sentinel://"):
        with pytest.raises(ValueError, match="redis") as unread:
            SentinelURL.parse(url)
        assert "secret" not in str(unread.value)


def test_what_is_shown_of_a_sentinel_url() -> None:
    url = "redis+sentinel://app:pa%2Fss@s1:26379,[::1]/mymaster/3?sentinel_password=sentinel-pw"
    target = RedisTarget(url)
    assert target.sentinel is not None
    assert (target.sentinel.service, target.sentinel.db) == ("mymaster", 3)
    assert (target.sentinel.username, target.sentinel.password) == ("app", "pa/ss")
    assert target.location == "redis+sentinel://s1:26379,[::1]:26379/mymaster/3"
    assert str(target) == target.location  # the primary is not known before a connection
    error = ConnectionError(f"AUTH pa/ss failed; sentinel AUTH sentinel-pw; {url}")
    shown = describe(error, target.secrets)
    for secret in ("pa/ss", "pa%2Fss", "sentinel-pw"):
        assert secret not in shown


# --- failover with real processes ----------------------------------------------------------------


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(require_redis(), tmp_path, PASSWORD, SENTINEL_PASSWORD)
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture
def cluster(sentinels: SentinelGroup, tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(sentinels.servers[0], tmp_path, f"s{uuid.uuid4().hex[:8]}")
    yield started
    started.stop()


async def failover_under_traffic(
    sentinels: SentinelGroup, cluster: Cluster, fail: Callable[[int], None], what: str
) -> None:
    """Two nodes, four clients chatting; `fail(primary port)`; every node on the new primary,
    every message everywhere once; the failover time printed."""
    # NODE_TIMEOUT 3: a loaded machine's late heartbeats must not get a node reaped.
    a_node, b_node = (
        cluster.node(BROKER_URL=sentinels.url, MAX_STORED_MESSAGES="1000", NODE_TIMEOUT="3") for _ in range(2)
    )
    old = sentinels.primary_port()
    for node in (a_node, b_node):
        assert (await node.broker())["primary"] == f"127.0.0.1:{old}"
    async with chatting([a_node.port, b_node.port]) as chatters:
        await traffic_for(chatters, 10)
        failed_at = time.monotonic()
        fail(old)
        new = await asyncio.to_thread(sentinels.promoted, old)
        # What is said from now on crosses only through the new primary (a planned failover's old
        # primary, a replica now, refuses writes).
        since = {chatter.nickname: len(chatter.sent) for chatter in chatters}
        heard = await until(chatters, lambda: heard_since(chatters, since), 30)
        failover = time.monotonic() - failed_at
        assert heard, "the nodes did not hear each other again after the failover"
        await traffic_for(chatters, 10)
        await settle(chatters, every_sent=True)
        result = tally(chatters)
        print(
            f"\n{what} under traffic ({len(chatters)} clients of both dialects on 2 nodes): failover "
            f"{failover * 1000:.0f} ms (the primary lost -> every client hearing every other again, "
            f"across the nodes; sentinels' down-after-milliseconds 1000); {result.summary()}"
        )
        assert_delivered_once(result, chatters)
    for node in (a_node, b_node):
        status = await node.broker()
        assert (status["state"], status["primary"], status["kept"], status["dropped"]) == (
            "up",
            f"127.0.0.1:{new}",
            0,
            0,
        )
        assert status["url"] == sentinels.location
        output = node.output()
        assert f"connected to {status['url']} (primary 127.0.0.1:{old})" in output
        assert f"back on {status['url']} (primary 127.0.0.1:{new})" in output
        assert "s3cret" not in output, "no password in the logs"


@pytest.mark.anyio
async def test_nodes_follow_the_replica_promoted_when_the_primary_is_killed(
    sentinels: SentinelGroup, cluster: Cluster
) -> None:
    await failover_under_traffic(
        sentinels, cluster, lambda port: sentinels.server_on(port).kill(), "primary killed (-9)"
    )


@pytest.mark.anyio
async def test_nodes_follow_a_planned_failover(sentinels: SentinelGroup, cluster: Cluster) -> None:
    """SENTINEL FAILOVER: the old primary lives on as a replica, refusing writes (READONLY)."""

    def failover(_: int) -> None:
        with sentinels.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)

    await failover_under_traffic(sentinels, cluster, failover, "SENTINEL FAILOVER")
