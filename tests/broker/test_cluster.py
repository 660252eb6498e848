"""A Redis Cluster behind `BROKER_URL=redis+cluster://...`: real gischat processes on six real
cluster nodes (three primaries, a replica each, `cluster_nodes.ClusterServers`).

What is checked: the settings and the broker read the same URLs, and show no password; each room
lives on the shard of its hash tag, its channel a sharded channel there that only the nodes with
sockets in the room read; and a shard's primary lost (killed, or handed over in a planned
failover) under traffic costs no message and no longer than the cluster's failover, whether it
served the room or the node-wide keys.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chatters import ROOM, assert_delivered_once, chatting, heard_since, settle, tally, traffic_for, until
from cluster_nodes import ClusterServers, require_cluster
from redis import Redis
from redis_nodes import Cluster, GischatNode, RedisServer
from sentinel_nodes import wait_until
from test_broker_contract import Nodes, sample
from test_sentinel import settings_accept

from gischat.broker.redis.connection import ClusterURL, RedisTarget, describe
from gischat.broker.redis.keys import NodeKeys
from gischat.settings import SettingsError, load_settings

from conftest import TEST_ROOMS

PASSWORD = "s3cret-cluster"

GOOD = [
    ("redis+cluster://h1:7000,h2:7001", [("h1", 7000), ("h2", 7001)]),
    ("redis+cluster://h1", [("h1", 6379)]),
    ("redis+cluster://:secret@h1:7000/", [("h1", 7000)]),
    ("redis+cluster://user:secret@[::1]:7000,h2/0", [("::1", 7000), ("h2", 6379)]),
    ("rediss+cluster://h1:7000", [("h1", 7000)]),
]
BAD = [
    "redis+cluster://:secret@",
    "redis+cluster://:secret@h1:99999",
    "redis+cluster://:secret@h1:7000/3",
    "redis+cluster://:secret@h1 h2",
]


@pytest.mark.parametrize(("url", "nodes"), GOOD)
def test_settings_and_broker_read_the_same_good_urls(url: str, nodes: list[tuple[str, int]]) -> None:
    assert settings_accept(url)
    assert ClusterURL.parse(url).nodes == nodes


@pytest.mark.parametrize("url", BAD)
def test_settings_and_broker_refuse_the_same_bad_urls_in_one_line_without_the_password(url: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(_env_file=None, broker_url=url)
    message = str(refused.value)
    assert message.startswith("invalid setting BROKER_URL: "), message
    assert "secret" not in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="redis") as unread:
        ClusterURL.parse(url)
    assert "secret" not in str(unread.value)


def test_what_is_shown_of_a_cluster_url() -> None:
    url = "rediss+cluster://app:pa%2Fss@h1:7000,[::1]:7001"
    target = RedisTarget(url)
    assert target.cluster is not None
    assert target.sharded
    assert (target.cluster.username, target.cluster.password, target.cluster.tls) == ("app", "pa/ss", True)
    assert target.location == "rediss+cluster://h1:7000,[::1]:7001"
    shown = describe(ConnectionError(f"AUTH pa/ss failed; {url}"), target.secrets)
    for secret in ("pa/ss", "pa%2Fss"):
        assert secret not in shown


def test_a_rooms_keys_share_one_hash_tag_apart_from_the_node_wide_ones() -> None:
    """Every key and channel of a room hashes to one slot (the scripts stay single-slot on a
    cluster); the node-wide ones to another, one for all of them."""
    keys = NodeKeys.of("gischat", "n1")
    room = [keys.room_seq("QGIS"), keys.room_channel("QGIS"), keys.history("QGIS"), keys.recent("QGIS")]
    home = [keys.seq, keys.channel, keys.nodes, keys.counts, keys.index, keys.bans, keys.nicks("QGIS")]
    assert {slot_of(key) for key in room} == {slot_of(keys.room_seq("QGIS"))}
    assert {slot_of(key) for key in home} == {slot_of(keys.seq)}
    assert slot_of(keys.seq) != slot_of(keys.room_seq("QGIS"))
    # Braces in a room's name do not split its keys over two slots.
    odd = [keys.room_seq("a}b{c"), keys.room_channel("a}b{c"), keys.history("a}b{c")]
    assert len({slot_of(key) for key in odd}) == 1


def slot_of(key: str) -> int:
    """Redis Cluster's hash slot of `key` (CRC16 of its hash tag, modulo 16384)."""
    tag = key
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            tag = key[start + 1 : end]
    crc = 0
    for byte in tag.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc % 16384


# --- real processes --------------------------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[ClusterServers]:
    """A cluster of its own for each test: the failovers leave it changed."""
    started = ClusterServers(*require_cluster(), password=PASSWORD)
    try:
        started.start()
        yield started
    finally:
        started.stop()


@pytest.fixture
def gischat(servers: ClusterServers, tmp_path: Path) -> Iterator[Cluster]:
    # The group's default Redis is the cluster's first node; every node below is given the cluster.
    first = RedisServer(servers.binary, port=servers.ports[0], password=PASSWORD)
    started = Cluster(first, tmp_path, f"c{uuid.uuid4().hex[:8]}")
    yield started
    started.stop()


def owner(servers: ClusterServers, key: str) -> int:
    """The port of the primary serving `key`'s slot, as the cluster says now."""
    with on_node(servers.primaries()[0]) as any_node:
        slot = int(any_node.execute_command("CLUSTER", "KEYSLOT", key))
        for first, last, primary, *_ in any_node.execute_command("CLUSTER", "SLOTS"):
            if int(first) <= slot <= int(last):
                return int(primary[1])
    raise AssertionError(f"no primary serves slot {slot}")


def on_node(port: int) -> Redis:
    return Redis(host="127.0.0.1", port=port, password=PASSWORD)


def two_nodes(servers: ClusterServers, gischat: Cluster) -> tuple[GischatNode, GischatNode]:
    # NODE_TIMEOUT 3: a loaded machine's late heartbeats must not get a node reaped.
    a_node, b_node = (
        gischat.node(BROKER_URL=servers.url, MAX_STORED_MESSAGES="1000", NODE_TIMEOUT="3") for _ in range(2)
    )
    return a_node, b_node


@pytest.mark.anyio
async def test_nodes_chat_across_a_cluster_each_room_on_its_shard(
    servers: ClusterServers, gischat: Cluster
) -> None:
    """Two nodes, four clients: every message everywhere once; the room's history and channel on
    the shard of its tag, read by both nodes (they have sockets there), and by nobody elsewhere."""
    a_node, b_node = two_nodes(servers, gischat)
    keys = NodeKeys.of(gischat.prefix, "")
    async with chatting([a_node.port, b_node.port]) as chatters:
        await traffic_for(chatters, 10)
        await settle(chatters, every_sent=True)
        assert_delivered_once(tally(chatters), chatters)
        room_port, home_port = owner(servers, keys.history(ROOM)), owner(servers, keys.seq)
        with on_node(room_port) as shard:
            assert shard.exists(keys.history(ROOM)) == 1
            channel = keys.room_channel(ROOM)
            assert shard.execute_command("PUBSUB", "SHARDNUMSUB", channel) == [channel.encode(), 2]
        with on_node(home_port) as shard:
            assert shard.execute_command("PUBSUB", "SHARDNUMSUB", keys.channel)[1] == 2
        for port in set(servers.primaries()) - {room_port}:
            with on_node(port) as other:
                assert other.execute_command("PUBSUB", "SHARDNUMSUB", keys.room_channel(ROOM))[1] == 0
    for node in (a_node, b_node):
        status = await node.broker()
        assert (status["state"], status["url"], status["reading"]) == (
            "up",
            servers.url.replace(f":{PASSWORD}@", ""),
            [ROOM],
        )
        output = node.output()
        assert f"connected to {status['url']}" in output
        assert PASSWORD not in output, "no password in the logs"


async def failover_under_traffic(
    servers: ClusterServers,
    gischat: Cluster,
    key: str,
    fail: Callable[[int], None],
    promoted: Callable[[int], float],
    what: str,
) -> None:
    """Two nodes, four clients chatting; `fail(port of the primary serving key)`; every node back,
    every message everywhere once; the time from the loss to every client hearing every other
    again printed beside the cluster's own failover."""
    a_node, b_node = two_nodes(servers, gischat)
    async with chatting([a_node.port, b_node.port]) as chatters:
        await traffic_for(chatters, 10)
        old = owner(servers, key)
        failed_at = time.monotonic()
        fail(old)
        took = await asyncio.to_thread(promoted, old)
        since = {chatter.nickname: len(chatter.sent) for chatter in chatters}
        heard = await until(chatters, lambda: heard_since(chatters, since), 30)
        back = time.monotonic() - failed_at
        assert heard, "the nodes did not hear each other again after the failover"
        await traffic_for(chatters, 10)
        await settle(chatters, every_sent=True)
        result = tally(chatters)
        print(
            f"\n{what} under traffic ({len(chatters)} clients of both dialects on 2 nodes): the cluster "
            f"promoted a replica in {took * 1000:.0f} ms (cluster-node-timeout 1000), every client "
            f"heard every other again {back * 1000:.0f} ms after the loss; {result.summary()}"
        )
        assert_delivered_once(result, chatters)
    assert owner(servers, key) != old
    for node in (a_node, b_node):
        assert (await node.broker())["state"] == "up"


@pytest.mark.anyio
@pytest.mark.parametrize("shard", ["room", "node-wide"])
async def test_nodes_come_back_when_a_shards_primary_is_killed(
    servers: ClusterServers, gischat: Cluster, shard: str
) -> None:
    keys = NodeKeys.of(gischat.prefix, "")
    key = keys.history(ROOM) if shard == "room" else keys.seq
    await failover_under_traffic(
        servers, gischat, key, servers.kill, servers.wait_failover, f"the {shard} shard's primary killed (-9)"
    )


@pytest.mark.anyio
async def test_nodes_follow_a_planned_failover(servers: ClusterServers, gischat: Cluster) -> None:
    """CLUSTER FAILOVER on a replica: the old primary lives on as a replica, and tells the nodes
    that read the room's channel there that it no longer serves it (`sunsubscribe`)."""

    def hand_over(port: int) -> None:
        with on_node(servers.replica_of(port)) as replica:
            replica.execute_command("CLUSTER", "FAILOVER")

    def handed_over(port: int) -> float:
        began = time.monotonic()
        wait_until(lambda: port not in servers.primaries(), 15, f"{port} a replica")
        servers.wait_ok()
        return time.monotonic() - began

    key = NodeKeys.of(gischat.prefix, "").history(ROOM)
    await failover_under_traffic(
        servers, gischat, key, hand_over, handed_over, "CLUSTER FAILOVER of the room's shard"
    )


@pytest.mark.anyio
async def test_a_listener_hears_its_room_again_after_the_shard_froze_and_failed_over(
    servers: ClusterServers,
) -> None:
    """A room's primary frozen (SIGSTOP: a hung host, a partition; no connection is closed) is
    replaced by the cluster; a node that only listens in that room (it sends nothing there that
    could fail) notices the silence of its connection to the frozen shard and reads the room on
    the new primary. Brokers in this process: nothing but the cluster is real here."""
    nodes, room = apart(servers)
    keys = NodeKeys.of(nodes.prefix, "")
    frozen = owner(servers, keys.room_channel(room))
    try:
        listener, heard = await nodes.start("listener", attend=(room,), node_timeout=3)
        heard.counts[room] = 1  # a socket there
        listener.count_changed(room)
        speaker, said = await nodes.start("speaker", attend=(room,), node_timeout=3)
        before = sample(1)
        speaker.publish(room, before)
        await heard.received(before.post)

        os.kill(servers.processes[frozen].pid, signal.SIGSTOP)
        try:
            await asyncio.to_thread(
                wait_until,
                lambda: owner_among(servers, keys.room_channel(room), frozen) != frozen,
                20,
                "failover",
            )
            after = sample(2)
            speaker.publish(room, after)
            await said.wait_until(lambda: after.post.id in said.ids(), "the speaker's own message", 30)
            await heard.wait_until(lambda: after.post.id in heard.ids(), "the listener hears the room", 30)
        finally:
            os.kill(servers.processes[frozen].pid, signal.SIGCONT)
    finally:
        await nodes.stop()


def apart(servers: ClusterServers) -> tuple[Nodes, str]:
    """Nodes on a key prefix that puts one of the rooms on another shard than the node-wide keys."""
    for attempt in range(100):
        nodes = Nodes(servers.url, prefix=f"frozen-{attempt}-{uuid.uuid4().hex[:6]}")
        keys = NodeKeys.of(nodes.prefix, "")
        home = owner(servers, keys.channel)
        for room in TEST_ROOMS:
            if owner(servers, keys.room_channel(room)) != home:
                return nodes, room
    raise AssertionError("no prefix puts a room apart from the node-wide keys")


def owner_among(servers: ClusterServers, key: str, frozen: int) -> int:
    """The primary serving `key`'s slot, asked of a node that is not frozen."""
    with Redis(
        host="127.0.0.1",
        port=next(p for p in servers.alive() if p != frozen),
        password=PASSWORD,
        socket_timeout=2,
    ) as node:
        slot = int(node.execute_command("CLUSTER", "KEYSLOT", key))
        for first, last, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
            if int(first) <= slot <= int(last):
                return int(primary[1])
    raise AssertionError(f"no primary serves slot {slot}")
