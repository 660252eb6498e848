"""Fixtures: a real uvicorn server on a free port, and websocket clients that talk to it.

The server runs in a thread with its own event loop, exactly as `gischat` configures
uvicorn, so tests exercise the real sockets, the real websocket protocol and the real
handshake. Helpers wait on messages, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gischat.server.registry import GuardSpec, forget_guard
from gischat.server.runner import guarded, listening_socket, prepare_process, uvicorn_options
from gischat.settings import Settings
from gischat.web.app import create_app

if TYPE_CHECKING:
    from cluster_nodes import ClusterServers
    from redis_nodes import RedisServer

# A real Synapse for the Matrix bridge's tests (tests/synapse_homeserver.py): its fixtures.
pytest_plugins = ["synapse_homeserver"]

TEST_ROOMS = ["QGIS", "Field and mobile", "Living room"]
TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Every test client connects from 127.0.0.1 and many of them push far more than a person
# would: the per-address quotas and rate limits are lifted here and tested on their own, with
# their production defaults, in test_limits.py; room history likewise in test_history.py.
UNLIMITED: dict[str, Any] = {
    "max_websockets_per_ip": 100_000,
    "max_nicknames_per_ip": 100_000,
    "registrations_per_minute": 0,
    "message_rate": 0,
    "byte_rate": 0,
    "images_per_minute": 0,
    "layers_per_minute": 0,
    "put_rate": 0,
    # Tests expect a new socket's first frames to be live ones; history has its own tests.
    "max_stored_messages": 0,
}


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "rooms": list(TEST_ROOMS),
        "nb_users_interval": 0.05,
        "_env_file": None,
        **UNLIMITED,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class LiveServer:
    """A running gischat instance and the addresses to reach it."""

    settings: Settings
    port: int
    server: uvicorn.Server
    thread: threading.Thread
    guard_spec: GuardSpec  # names the server's transport guard (see gischat.server.registry)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port}/room/{quote(room, safe='')}/ws"

    def channel_url(self, channel: str) -> str:
        """The same conversation as `ws_url(channel)`, in the 3.x dialect (QChat, QField)."""
        return f"ws://127.0.0.1:{self.port}/channel/{quote(channel, safe='')}/ws"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        forget_guard(self.guard_spec.token)


def start_server(settings: Settings, port: int = 0) -> LiveServer:
    """Start a server on `port` (a free one by default; a stopped server's port to restart it)."""
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port})
    sock = listening_socket(settings)  # the socket the `gischat` command would listen on
    port = int(sock.getsockname()[1])
    prepare_process(settings)  # as the `gischat` command does
    options = uvicorn_options(settings)
    guard_spec = options["http"].keywords["guard_spec"]
    options.update(port=port, log_config=None, log_level="warning")
    options.pop("workers")
    config = uvicorn.Config(guarded(create_app(settings)), **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.005)
    return LiveServer(settings=settings, port=port, server=server, thread=thread, guard_spec=guard_spec)


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    """Start servers with custom settings; all are stopped after the test."""
    servers: list[LiveServer] = []

    def factory(**overrides: Any) -> LiveServer:
        live = start_server(make_settings(**overrides))
        servers.append(live)
        return live

    yield factory
    for live in servers:
        live.stop()


@pytest.fixture
def server(server_factory: ServerFactory) -> LiveServer:
    return server_factory()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def http(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as client:
        yield client


class Client:
    """A websocket client with helpers to wait for the messages a test expects."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict):
            await self.ws.send(orjson.dumps(message).decode())
        else:
            await self.ws.send(message)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), "the server only sends text frames"
        data = orjson.loads(raw)
        assert isinstance(data, dict)
        return data

    async def recv_raw(self, timeout: float = TIMEOUT) -> str:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str)
        return raw

    async def expect(self, type_: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        """Skip messages until one of `type_` (matching `fields`) arrives."""

        async def wait() -> dict[str, Any]:
            while True:
                message = await self.recv(timeout)
                if message.get("type") == type_ and all(message.get(k) == v for k, v in fields.items()):
                    return message

        return await asyncio.wait_for(wait(), timeout)

    async def expect_no(self, type_: str, *, until: Callable[[dict[str, Any]], bool]) -> None:
        """Read until `until(message)` holds, failing if a `type_` message shows up before."""
        while True:
            message = await self.recv()
            assert message.get("type") != type_, f"unexpected {message}"
            if until(message):
                return

    async def register(self, nickname: str) -> None:
        await self.send({"type": "newcomer", "newcomer": nickname})
        await self.expect("newcomer", newcomer=nickname)

    async def close(self) -> None:
        await self.ws.close()


@asynccontextmanager
async def ws_client(server: LiveServer, room: str = "QGIS", **kwargs: Any) -> AsyncIterator[Client]:
    async with connect(server.ws_url(room), open_timeout=TIMEOUT, max_size=None, **kwargs) as ws:
        yield Client(ws)


@asynccontextmanager
async def channel_client(server: LiveServer, channel: str = "QGIS", **kwargs: Any) -> AsyncIterator[Client]:
    """A websocket on `/channel/{channel}/ws`, as QChat and the QField plugin open it."""
    async with connect(server.channel_url(channel), open_timeout=TIMEOUT, max_size=None, **kwargs) as ws:
        yield Client(ws)


async def closing(client: Client) -> ConnectionClosed:
    """Read until the server ends the socket; how it ended is what the caller looks at."""
    while True:
        try:
            await client.recv()
        except ConnectionClosed as exc:
            return exc


async def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    """Poll a cheap condition (an HTTP count, say) until it holds; a bounded wait, not a sleep."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def text(author: str, body: str = "hello", avatar: str | None = None) -> dict[str, Any]:
    return {"type": "text", "author": author, "avatar": avatar, "text": body}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real Redis (redis-server, or valkey from the test extra) for a module's scale-out tests."""
    from redis_nodes import RedisServer, require_redis

    server = RedisServer(require_redis())
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[ClusterServers]:
    """A real Redis Cluster (six servers on loopback: three primaries, a replica each) for a
    module's tests of the cluster engine."""
    from cluster_nodes import ClusterServers, require_cluster

    servers = ClusterServers(*require_cluster())
    servers.start()
    yield servers
    servers.stop()
