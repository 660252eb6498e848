"""docker-compose.yaml brought up as docs/operations.md says, in a real engine, and operated.

Redis, two gischat replicas (`--scale gischat=2`: podman-compose ignores `deploy.replicas`) and nginx
as the one way in, on the ports of HTTP_PORT and (with a certificate in TLS_CERT_DIR) HTTPS_PORT.
Clients of both dialects, some over TLS, chat through nginx, land on both replicas and hold one
conversation; moderation works from ADMIN_TOKENS; `deploy/rolling-restart` restarts every replica
under traffic, and `docker compose restart redis` takes Redis away and back under traffic. Each run
prints what was sent and delivered, and the reconnection times (`pytest -s tests/deploy/test_stack.py`).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from chatters import ROOM, Chatter, settle, stop, tally, traffic_for
from containers import (
    CHATTERS_BEHIND_NGINX,
    ROLLING_RESTART,
    ROOT,
    Engine,
    Stack,
    http_status,
    require_engine,
    run,
    wait_until,
)

from conftest import free_port

# Restarting containers under traffic waits on the engine: up to a minute each on a busy 2-core CI
# machine (the default 60 s per test is too tight for a restart and its recovery together).
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

ADMIN_SECRET = "s" * 40
UP_TIMEOUT = 240.0


def self_signed(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    run([
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
        "-keyout", str(directory / "privkey.pem"), "-out", str(directory / "fullchain.pem"),
    ])  # fmt: skip
    for name in ("privkey.pem", "fullchain.pem"):
        (directory / name).chmod(0o644)
    directory.chmod(0o755)
    return directory


def bring_up(stack: Stack, replicas: int) -> None:
    """`up -d --build --scale gischat=N`, then nginx answering with every replica on Redis."""
    stack.compose("up", "-d", "--build", "--scale", f"gischat={replicas}")
    url = f"http://127.0.0.1:{stack.variables['HTTP_PORT']}"

    def ready() -> bool:
        status = http_status(url)
        return bool(status and status.get("healthy") and status["broker"]["nodes"] == replicas)

    try:
        wait_until(ready, UP_TIMEOUT, f"nginx in front of {replicas} healthy replicas")
    except AssertionError:
        print(stack.compose("logs", "--tail", "50", check=False))
        raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    engine = Engine(require_engine())
    certs = self_signed(tmp_path_factory.mktemp("tls"))
    variables = {
        "HTTP_PORT": str(free_port()),
        "HTTPS_PORT": str(free_port()),
        "TLS_CERT_DIR": str(certs),
        "ADMIN_TOKENS": f"ops:{ADMIN_SECRET}",
        **CHATTERS_BEHIND_NGINX,
        # What a node keeps while Redis is away is bounded (1,000 messages, 60 s by default); these
        # tests are about nothing lost within the bounds, however slow a busy machine restarts Redis
        # (tests/broker/test_redis_outage.py tests what the bounds drop).
        "OUTAGE_BUFFER_MESSAGES": "100000",
        "OUTAGE_BUFFER_SECONDS": "600",
    }
    deployed = Stack(engine, f"gischat-test-{uuid.uuid4().hex[:8]}", variables)
    try:
        bring_up(deployed, 2)
        yield deployed
    finally:
        deployed.down()


def ws_base(stack: Stack) -> str:
    return f"ws://127.0.0.1:{stack.variables['HTTP_PORT']}"


def wss_base(stack: Stack) -> str:
    return f"wss://localhost:{stack.variables['HTTPS_PORT']}"


def tls_context(stack: Stack) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(Path(stack.variables["TLS_CERT_DIR"]) / "fullchain.pem"))
    return context


@pytest.fixture
async def chatters(stack: Stack) -> AsyncIterator[list[Chatter]]:
    """Six users (three per dialect, two of them over TLS) chatting through nginx, spread over
    both replicas (more join, one by one, while one replica has none: nginx picks at random)."""
    tag = uuid.uuid4().hex[:4]
    group: list[Chatter] = []
    tasks: list[asyncio.Task[None]] = []

    def join(number: int) -> None:
        dialect = "room" if number % 2 == 0 else "channel"
        secure = number in (0, 1)
        chatter = Chatter(
            wss_base(stack) if secure else ws_base(stack),
            f"{dialect[0]}{tag}-{number}",
            dialect,
            ssl=tls_context(stack) if secure else None,
        )
        group.append(chatter)
        tasks.append(asyncio.get_running_loop().create_task(chatter.run()))

    for number in range(6):
        join(number)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.registered.wait() for c in group)), 30)
        replicas = stack.containers("gischat")
        while min(stack.replica_sockets(name) for name in replicas) == 0:
            assert len(group) < 20, "nginx sends every new connection to the same replica"
            join(len(group))
            await asyncio.wait_for(group[-1].registered.wait(), 30)
        yield group
    finally:
        await stop(group, tasks)


def diagnosis(stack: Stack) -> str:
    """What each replica says of itself and logged of Redis, for a failure's message."""
    parts = []
    for name in stack.containers("gischat"):
        status = stack.replica_get(name, "/status")
        broker_lines = [line for line in stack.logs(name).splitlines() if "broker" in line]
        parts.append(f"{name}: {status}\n" + "\n".join(broker_lines[-20:]))
    return "\n".join(parts)


def final_count(stack: Stack) -> int:
    status = http_status(f"http://127.0.0.1:{stack.variables['HTTP_PORT']}")
    assert status is not None
    return int(next(room["nb_connected_users"] for room in status["rooms"] if room["name"] == ROOM))


async def test_one_conversation_through_nginx_over_both_replicas(
    stack: Stack, chatters: list[Chatter]
) -> None:
    await traffic_for(chatters, 10)
    await settle(chatters)
    result = tally(chatters)
    print(f"\nthrough nginx, {len(chatters)} clients on two replicas: {result.summary()}")
    assert not result.lost
    assert result.confirmed == result.sent
    assert all(chatter.nb_users == len(chatters) for chatter in chatters)
    assert final_count(stack) == len(chatters)
    # Moderation from ADMIN_TOKENS, through nginx: the room's sockets gathered from both replicas.
    url = f"http://127.0.0.1:{stack.variables['HTTP_PORT']}/admin/rooms/{ROOM}/connections"
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.get(url)
        answer = await client.get(url, headers={"Authorization": f"Bearer {ADMIN_SECRET}"})
    assert refused.status_code == 401
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["connections"]) == len(chatters)


async def test_rolling_restart_loses_nothing(stack: Stack, chatters: list[Chatter]) -> None:
    await traffic_for(chatters, 5)
    env = {**os.environ, "COMPOSE_PROJECT_NAME": stack.project, "ENGINE": stack.engine.name}
    process = await asyncio.create_subprocess_exec(
        str(ROLLING_RESTART),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, output.decode()
    await traffic_for(chatters, 5)
    await settle(chatters)
    result = tally(chatters)
    print(f"\nrolling restart of 2 replicas, {len(chatters)} clients: {result.summary()}")
    assert not result.lost, f"{len(result.lost)} lost: {result.lost[:10]}"
    assert all(chatter.closes for chatter in chatters), "a client was never moved"
    assert set(result.closes) == {1012}
    assert all(chatter.nb_users == len(chatters) for chatter in chatters)
    assert final_count(stack) == len(chatters)


async def test_redis_restart_under_traffic_loses_nothing(stack: Stack, chatters: list[Chatter]) -> None:
    await traffic_for(chatters, 5)
    url = f"http://127.0.0.1:{stack.variables['HTTP_PORT']}"
    await asyncio.to_thread(stack.compose, "restart", "redis")
    await asyncio.to_thread(
        wait_until, lambda: (http_status(url) or {}).get("healthy"), 60, "the replicas back on Redis"
    )

    def all_up() -> bool:
        return all(
            '"state":"up"' in stack.replica_get(name, "/status") for name in stack.containers("gischat")
        )

    await asyncio.to_thread(wait_until, all_up, 60, "every replica back on Redis")
    await traffic_for(chatters, 5)
    await settle(chatters)
    result = tally(chatters)
    print(f"\ncompose restart redis, {len(chatters)} clients on 2 replicas: {result.summary()}")
    assert not result.lost, f"{len(result.lost)} lost: {result.lost[:10]}\n{diagnosis(stack)}"
    assert not result.closes, "nobody's socket was closed"
    assert all(chatter.nb_users == len(chatters) for chatter in chatters)
    assert final_count(stack) == len(chatters)
