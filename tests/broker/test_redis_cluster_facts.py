"""What redis-py's asyncio cluster client and a real Redis Cluster do, as executable notes.

A probe, not a test of gischat: each test states facts about redis-py (as installed) against the
six-node cluster of `cluster_nodes` (valkey-server or redis-server, three primaries with a replica
each, a password on every node), and fails the day one no longer holds. Keys use hash tags
(`{p:roomA}:x`) so that each script call stays in one slot while the calls of one pipeline spread
over several slots and nodes. `pytest -s` prints what was seen.

Checked in the sources of redis-py 5.2.0 (the oldest the project allows), not run here:
- `RedisCluster.__init__` (asyncio) has username, password, client_name, decode_responses,
  socket_timeout / socket_connect_timeout (both default None there; 5 s in 8.x), retry,
  retry_on_error, cluster_error_retry_attempts (3) and connection_error_retry_attempts (3, gone in
  8.x: a TypeError there). `pipeline(transaction=...)` raises only for a truthy transaction;
  `ClusterPipeline.execute(raise_on_error=True, allow_redirections=True)`; SCRIPT LOAD goes to
  every primary; `get_node_from_key(key, replica=False)` exists.
- The asyncio `PubSub` has no `ssubscribe` before redis-py 8.0.0 (and no smessage / sunsubscribe
  handling): there `await pubsub.execute_command("SSUBSCRIBE", channel)` works (see
  `test_d_raw_ssubscribe`), but a reconnection does not subscribe again.

The failover tests come last, each leaving the cluster ok again.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from cluster_nodes import ClusterServers, require_cluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
)

pytestmark = pytest.mark.anyio

PASSWORD = "cluster-s3cret"
TIMEOUT = 5.0

SET_AND_RETURN = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"
FAILS = "return redis.error_reply('boom: ' .. KEYS[1])"
SPUBLISH = "return redis.call('SPUBLISH', KEYS[1], ARGV[1])"
BUILT_KEY = "return redis.call('SET', ARGV[1], 'built')"  # a key not declared in KEYS
NON_LOCAL = "Script attempted to access a non local key in a cluster node"
CROSS_SLOT = "Script attempted to access keys that do not hash to the same slot"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterServers]:
    servers = ClusterServers(*require_cluster(), password=PASSWORD)
    began = time.monotonic()
    servers.start()
    print(f"\ncluster of six started and ok in {time.monotonic() - began:.2f} s")
    yield servers
    servers.stop()


@pytest.fixture
async def client(cluster: ClusterServers) -> AsyncIterator[RedisCluster]:
    startup = [ClusterNode("127.0.0.1", port) for port in cluster.ports[:3]]
    async with RedisCluster(startup_nodes=startup, password=PASSWORD) as connected:
        await connected.initialize()
        yield connected


def plain(port: int) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(host="127.0.0.1", port=port, password=PASSWORD)


def owner(cluster: ClusterServers, key: str) -> int:
    """The port of the primary serving `key`'s slot, as the servers say it."""
    slot = key_slot(key.encode())
    with cluster.client(cluster.primaries()[0]) as sync:
        for start, end, primary, *_ in sync.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
    raise AssertionError(f"slot {slot} not served")


def tags_on_distinct_primaries(cluster: ClusterServers, count: int = 3) -> list[str]:
    """`count` hash tags whose slots are served by `count` different primaries."""
    found: dict[int, str] = {}
    number = 0
    while len(found) < count:
        tag = f"p:room{number}"
        found.setdefault(owner(cluster, "{" + tag + "}"), tag)
        number += 1
    return list(found.values())


async def next_message(pubsub: PubSub, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=0.1)
        if message is not None:
            return message
    return None


async def subscribed(port: int, channel: str) -> tuple[redis.asyncio.Redis, PubSub]:
    connection = plain(port)
    pubsub = connection.pubsub()
    await pubsub.ssubscribe(channel)
    confirmation = await next_message(pubsub)
    assert confirmation == {"type": "ssubscribe", "pattern": None, "channel": channel.encode(), "data": 1}
    return connection, pubsub


# --- a. SCRIPT LOAD -----------------------------------------------------------------------------


async def test_a_script_load_reaches_every_primary_and_no_replica(
    cluster: ClusterServers, client: RedisCluster
) -> None:
    sha = await client.script_load(SET_AND_RETURN)
    primaries = cluster.primaries()
    for port in cluster.ports:
        async with plain(port) as node:
            exists = await node.script_exists(sha)
        assert exists == [port in primaries]  # replicas never get it: NOSCRIPT after a failover (f)
    for tag in tags_on_distinct_primaries(cluster):
        assert await client.evalsha(sha, 1, f"{{{tag}}}:x", tag) == tag.encode()


# --- b. a pipeline of EVALSHA over several slots ------------------------------------------------


async def test_b_pipeline_of_evalsha_across_slots(cluster: ClusterServers, client: RedisCluster) -> None:
    sha = await client.script_load(SET_AND_RETURN)
    failing = await client.script_load(FAILS)
    tags = tags_on_distinct_primaries(cluster)
    pipe = client.pipeline(transaction=False)
    pipe.evalsha(sha, 1, f"{{{tags[0]}}}:x", "first")
    pipe.evalsha(failing, 1, f"{{{tags[1]}}}:x")
    pipe.evalsha(sha, 1, f"{{{tags[2]}}}:x", "third")
    pipe.evalsha("0" * 40, 1, f"{{{tags[1]}}}:y")  # an unknown script
    pipe.evalsha(sha, 1, f"{{{tags[1]}}}:z", "fifth")
    results = await pipe.execute(raise_on_error=False)
    print(f"\nb: {[str(result) for result in results]}")
    assert [results[0], results[2], results[4]] == [b"first", b"third", b"fifth"]  # call order
    assert type(results[1]) is ResponseError
    assert str(results[1]) == f"boom: {{{tags[1]}}}:x"
    assert isinstance(results[3], NoScriptError)
    assert str(results[3]) == "No matching script."

    pipe = client.pipeline(transaction=False)
    pipe.evalsha(failing, 1, f"{{{tags[0]}}}:x")
    pipe.evalsha(sha, 1, f"{{{tags[1]}}}:x", "ran")
    with pytest.raises(ResponseError) as raised:
        await pipe.execute()  # raise_on_error=True: the first error, once every command has run
    assert str(raised.value) == (
        f"Command # 1 (EVALSHA {failing} 1 {{{tags[0]}}}:x) of pipeline caused error: boom: {{{tags[0]}}}:x"
    )
    assert await client.get(f"{{{tags[1]}}}:x") == b"ran"


# --- c. SPUBLISH from Lua -----------------------------------------------------------------------


async def test_c_spublish_from_lua(client: RedisCluster) -> None:
    channel = "{p:roomC}:channel"
    node = client.get_node_from_key(channel)
    assert node is not None
    connection, pubsub = await subscribed(int(node.port), channel)
    assert await client.eval(SPUBLISH, 2, channel, "{p:roomC}:x", "hello") == 1  # receivers
    assert await next_message(pubsub) == {
        "type": "smessage",
        "pattern": None,
        "channel": channel.encode(),
        "data": b"hello",
    }
    # The channel undeclared but in a declared key's slot: allowed too (no subscriber here).
    assert (
        await client.eval("return redis.call('SPUBLISH', ARGV[1], 'x')", 1, "{p:roomC}:x", "{p:roomC}:y") == 0
    )
    with pytest.raises(RedisClusterException, match="EVAL - all keys must map to the same key slot"):
        await client.eval(SPUBLISH, 2, channel, "{p:elsewhere}:x", "hello")  # refused by redis-py itself
    await pubsub.aclose()
    await connection.aclose()


# --- d. SSUBSCRIBE with a plain client ----------------------------------------------------------


async def test_d_ssubscribe_on_the_owner(cluster: ClusterServers, client: RedisCluster) -> None:
    channel = "{p:roomD}:channel"
    node = client.get_node_from_key(channel)
    assert isinstance(node, ClusterNode)
    assert (node.host, node.port) == ("127.0.0.1", owner(cluster, channel))
    connection, pubsub = await subscribed(int(node.port), channel)  # {'type': 'ssubscribe', ..., 'data': 1}
    await client.spublish(channel, "hi")
    message = await next_message(pubsub)
    assert message == {"type": "smessage", "pattern": None, "channel": channel.encode(), "data": b"hi"}
    await pubsub.aclose()
    await connection.aclose()


async def test_d_ssubscribe_elsewhere(cluster: ClusterServers, client: RedisCluster) -> None:
    channel = "{p:roomD}:channel"
    home = owner(cluster, channel)
    other = next(port for port in cluster.primaries() if port != home)
    async with plain(other) as elsewhere:
        pubsub = elsewhere.pubsub()
        await pubsub.ssubscribe(channel)  # sent; the refusal comes as the answer read next
        with pytest.raises(MovedError) as moved:
            await next_message(pubsub)
        assert str(moved.value) == f"{key_slot(channel.encode())} 127.0.0.1:{home}"
        await pubsub.aclose()
    # A replica of the owner takes the subscription (no READONLY needed) and gets the messages.
    connection, pubsub = await subscribed(cluster.replica_of(home), channel)
    await client.spublish(channel, "to the replica too")
    assert (await next_message(pubsub))["data"] == b"to the replica too"
    await pubsub.aclose()
    await connection.aclose()


async def test_d_raw_ssubscribe(client: RedisCluster) -> None:
    """The way for redis-py < 8.0, whose asyncio PubSub has no ssubscribe: same messages."""
    channel = "{p:roomR}:channel"
    node = client.get_node_from_key(channel)
    assert node is not None
    async with plain(int(node.port)) as connection:
        pubsub = connection.pubsub()
        await pubsub.execute_command("SSUBSCRIBE", channel)
        assert (await next_message(pubsub))["type"] == "ssubscribe"
        await client.spublish(channel, "raw")
        assert (await next_message(pubsub))["type"] == "smessage"
        await pubsub.aclose()


# --- e. keys built inside Lua -------------------------------------------------------------------


async def test_e_undeclared_keys(cluster: ClusterServers, client: RedisCluster) -> None:
    declared = "{p:roomE}:x"
    home = owner(cluster, declared)
    same_slot = "{p:roomE}:built"
    same_node = next(
        f"o{n}"
        for n in range(10_000)
        if owner(cluster, f"o{n}") == home and key_slot(f"o{n}".encode()) != key_slot(declared.encode())
    )
    other_node = next(f"far{n}" for n in range(10_000) if owner(cluster, f"far{n}") != home)

    async def run(source: str, key: str) -> str:
        try:
            return str(await client.eval(source, 1, declared, key))
        except ResponseError as error:
            return str(error)

    # A plain script (no shebang): any key of a slot this node serves, else an error.
    assert await run(BUILT_KEY, same_slot) == "b'OK'"
    assert await run(BUILT_KEY, same_node) == "b'OK'"  # a different slot, same node: allowed (fragile)
    assert (await run(BUILT_KEY, other_node)).startswith(f"{NON_LOCAL} script: ")
    # A script with a shebang (`#!lua`): one slot only, unless flags=allow-cross-slot-keys.
    shebang = "#!lua\n" + BUILT_KEY
    assert await run(shebang, same_slot) == "b'OK'"
    assert (await run(shebang, same_node)).startswith(f"{CROSS_SLOT} script: ")
    assert (await run(shebang, other_node)).startswith(f"{NON_LOCAL} script: ")
    print(f"\ne: {await run(BUILT_KEY, other_node)}\ne: {await run(shebang, same_node)}")


# --- g. constructor -----------------------------------------------------------------------------


async def test_g_constructor_options(cluster: ClusterServers) -> None:
    startup = [ClusterNode("127.0.0.1", port) for port in cluster.ports[:3]]
    async with RedisCluster(
        startup_nodes=startup,
        username="default",
        password=PASSWORD,
        socket_timeout=None,
        socket_connect_timeout=2,
        client_name="probe",
        decode_responses=False,
        retry=Retry(ExponentialBackoff(cap=1, base=0.05), 3),
    ) as configured:
        assert await configured.ping()
        assert await configured.client_getname() == "probe"  # a str even with decode_responses=False
        assert await configured.get("{p:roomG}:missing") is None
    parameters = inspect.signature(RedisCluster.__init__).parameters
    assert {"retry", "retry_on_error", "cluster_error_retry_attempts"} <= parameters.keys()
    assert "connection_error_retry_attempts" not in parameters  # 5.2 has it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RedisCluster(startup_nodes=startup, cluster_error_retry_attempts=2)
    assert [str(warning.message) for warning in caught] == [
        "Call to '__init__' function with deprecated usage of input argument/s "
        "'cluster_error_retry_attempts'. (Please configure the 'retry' object instead) "
        "-- Deprecated since version 6.0.0."
    ]


# --- f. failovers -------------------------------------------------------------------------------


async def test_f_killed_primary_and_its_ssubscribers(cluster: ClusterServers, client: RedisCluster) -> None:
    channel = "{p:roomK}:channel"
    victim = owner(cluster, channel)
    sha = await client.script_load(SET_AND_RETURN)
    connection, pubsub = await subscribed(victim, channel)
    cluster.kill(victim)
    began = time.monotonic()
    with pytest.raises(RedisConnectionError) as lost:
        await next_message(pubsub)  # redis-py reconnects (its default Retry) before it gives up
    print(f"\nf: ssubscriber of the killed primary, after {time.monotonic() - began:.2f} s: {lost.value}")
    assert str(lost.value) == (
        f"Error 111 connecting to 127.0.0.1:{victim}. Connect call failed ('127.0.0.1', {victim})."
    )
    took = cluster.wait_failover(victim)
    print(f"f: replica promoted, cluster ok everywhere, {took:.2f} s after the kill")
    with pytest.raises(NoScriptError):  # the promoted replica never had the script
        await client.evalsha(sha, 1, "{p:roomK}:x", "v")
    script = client.register_script(SET_AND_RETURN)
    assert await script(keys=["{p:roomK}:x"], args=["v"]) == b"v"  # a Script loads it again on NOSCRIPT
    await pubsub.aclose()
    await connection.aclose()
    cluster.restart(victim)
    print(f"f: killed node restarted and in sync as a replica in {cluster.wait_ok():.2f} s")
    assert victim not in cluster.primaries()


async def test_f_manual_failover_unsubscribes_the_old_primarys_ssubscribers(
    cluster: ClusterServers, client: RedisCluster
) -> None:
    channel = "{p:roomM}:channel"
    old = owner(cluster, channel)
    replica = cluster.replica_of(old)
    connection, pubsub = await subscribed(old, channel)
    with cluster.client(replica) as promoted:
        assert promoted.execute_command("CLUSTER", "FAILOVER") == "OK"
    # The old primary tells its subscribers the slot is no longer its own: count 0 left.
    assert await next_message(pubsub) == {
        "type": "sunsubscribe",
        "pattern": None,
        "channel": channel.encode(),
        "data": 0,
    }
    assert pubsub.shard_channels  # redis-py forgets nothing: it asked for no unsubscribe
    cluster.wait_ok()
    assert owner(cluster, channel) == replica
    assert cluster.primary_of(old) == replica
    assert await connection.ping()  # the connection lives on; the old primary is a replica now
    await pubsub.ssubscribe(channel)
    assert (await next_message(pubsub))["type"] == "ssubscribe"  # and takes the subscription again
    await client.spublish(channel, "after the failover")
    assert (await next_message(pubsub))["data"] == b"after the failover"
    await pubsub.aclose()
    await connection.aclose()
