"""docker-compose.yaml's `ha` profile in a real engine: the primary Redis container killed under traffic.

The stack as docs/operations.md runs it with `COMPOSE_PROFILES=ha` and
`BROKER_URL=redis+sentinel://sentinel-1,sentinel-2,sentinel-3/gischat/0`: the `redis` service is the
first primary, `redis-replica` its replica, three sentinels watch them, two gischat replicas behind
nginx reach Redis through the sentinels. Clients of both dialects chat through nginx on both replicas;
the primary's container is killed; the sentinels (SENTINEL_DOWN_AFTER_MS=1000 here) promote the
replica and both gischat replicas follow it, with nothing lost. The failover time (kill -> every
client heard something every other one said since) is printed: `pytest -s tests/deploy/test_stack_ha.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from chatters import Chatter, assert_delivered_once, heard_since, settle, stop, tally, traffic_for, until
from containers import CHATTERS_BEHIND_NGINX, Engine, Stack, http_status, require_engine, wait_until

from conftest import free_port

pytestmark = pytest.mark.anyio

SENTINEL_URL = "redis+sentinel://sentinel-1,sentinel-2,sentinel-3/gischat/0"
UP_TIMEOUT = 240.0


def sentinel_state(stack: Stack, container: str) -> dict[str, str]:
    """SENTINEL MASTER gischat, as one sentinel answers it."""
    output = stack.engine("exec", container, "redis-cli", "-p", "26379", "sentinel", "master", "gischat")
    lines = output.split()
    return dict(zip(lines[::2], lines[1::2], strict=False))


def replicas_on(stack: Stack, primary: str) -> bool:
    """Every gischat replica is up on Redis, on `primary`."""
    for name in stack.containers("gischat"):
        broker = json.loads(stack.replica_get(name, "/status"))["broker"]
        if (broker["state"], broker.get("primary")) != ("up", primary):
            return False
    return True


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    engine = Engine(require_engine())
    variables = {
        "HTTP_PORT": str(free_port()),
        "HTTPS_PORT": str(free_port()),
        "BROKER_URL": SENTINEL_URL,
        "SENTINEL_DOWN_AFTER_MS": "1000",
        **CHATTERS_BEHIND_NGINX,
    }
    deployed = Stack(engine, f"gischat-ha-{uuid.uuid4().hex[:8]}", variables, profiles=["ha"])
    try:
        deployed.compose("up", "-d", "--build", "--scale", "gischat=2")
        url = f"http://127.0.0.1:{variables['HTTP_PORT']}"

        def ready() -> bool:
            status = http_status(url)
            return bool(status and status.get("healthy") and status["broker"]["nodes"] == 2)

        def watching(name: str) -> bool:
            state = sentinel_state(deployed, name)
            return state.get("num-slaves") == "1" and state.get("num-other-sentinels") == "2"

        try:
            wait_until(
                ready, UP_TIMEOUT, "nginx in front of 2 healthy replicas on Redis through the sentinels"
            )
            for number in (1, 2, 3):
                (name,) = deployed.containers(f"sentinel-{number}")
                wait_until(lambda: watching(name), 60, f"{name} knowing the replica and the other sentinels")  # noqa: B023
            wait_until(lambda: replicas_on(deployed, "redis:6379"), 30, "both replicas on the primary")
        except AssertionError:
            print(deployed.compose("logs", "--tail", "50", check=False))
            raise
        yield deployed
    finally:
        deployed.down()


@pytest.fixture
async def chatters(stack: Stack) -> AsyncIterator[list[Chatter]]:
    """Users of both dialects chatting through nginx, on both replicas (more join until each
    replica has some: nginx picks at random)."""
    tag = uuid.uuid4().hex[:4]
    base = f"ws://127.0.0.1:{stack.variables['HTTP_PORT']}"
    group: list[Chatter] = []
    tasks: list[asyncio.Task[None]] = []

    def join() -> None:
        number = len(group)
        dialect = "room" if number % 2 == 0 else "channel"
        group.append(Chatter(base, f"{dialect[0]}{tag}-{number}", dialect))
        tasks.append(asyncio.get_running_loop().create_task(group[-1].run()))

    for _ in range(4):
        join()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.registered.wait() for c in group)), 30)
        replicas = stack.containers("gischat")
        while min(stack.replica_sockets(name) for name in replicas) == 0:
            assert len(group) < 20, "nginx sends every new connection to the same replica"
            join()
            await asyncio.wait_for(group[-1].registered.wait(), 30)
        yield group
    finally:
        await stop(group, tasks)


async def test_primary_container_killed_under_traffic_loses_nothing(
    stack: Stack, chatters: list[Chatter]
) -> None:
    await traffic_for(chatters, 10)
    (primary,) = stack.containers("redis")
    await asyncio.to_thread(stack.engine, "kill", primary)
    # From when it is dead: what was said while the engine's command ran may have crossed before.
    killed_at = time.monotonic()
    since = {chatter.nickname: len(chatter.sent) for chatter in chatters}
    heard = await until(chatters, lambda: heard_since(chatters, since), 60)
    failover = time.monotonic() - killed_at
    assert heard, "the replicas did not hear each other again after the primary was killed"
    await asyncio.to_thread(
        wait_until, lambda: replicas_on(stack, "redis-replica:6379"), 30, "the new primary"
    )
    await traffic_for(chatters, 10)
    await settle(chatters, every_sent=True)
    result = tally(chatters)
    print(
        f"\nha profile, primary container killed, {len(chatters)} clients on 2 replicas through nginx: "
        f"failover {failover * 1000:.0f} ms (kill -> every client heard every other again; "
        f"SENTINEL_DOWN_AFTER_MS=1000); {result.summary()}"
    )
    assert_delivered_once(result, chatters)
    for name in stack.containers("gischat"):
        assert "redis+sentinel://sentinel-1:26379" in stack.logs(name)
