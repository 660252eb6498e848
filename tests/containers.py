"""Real containers for the deployment tests: the image built from the Dockerfile, the compose stack.

The engine is Docker where a daemon answers, podman otherwise (CI and development machines have no
Docker daemon; `../shared/containers/setup`, which `.ci/run` calls, installs podman and podman-compose).
Compose is `docker compose` with Docker and `podman-compose` with podman, given the same file and
the same variables. Without an engine the tests skip, except under CI (`CI=true`), where they fail.

Everything here waits on a condition with a deadline (a command that succeeds, an answer over
HTTP), never for a fixed time.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ROLLING_RESTART = ROOT / "deploy" / "rolling-restart"
# Chatters through nginx come from one address (the test's): no per-address caps nor pace limits,
# and the room's history long enough for a client back through nginx to find what it missed.
CHATTERS_BEHIND_NGINX = {
    "MESSAGE_RATE": "0",
    "MAX_WEBSOCKETS_PER_IP": "1000",
    "MAX_NICKNAMES_PER_IP": "1000",
    "REGISTRATIONS_PER_MINUTE": "0",
    "MAX_STORED_MESSAGES": "1000",
    "NODE_TIMEOUT": "2",
    "LOG_RATE": "100",
}


def run(command: Sequence[str], *, timeout: float = 300, check: bool = True, **kwargs: Any) -> str:
    """Run a command; its output (stdout and stderr together), or a failure that shows it."""
    result = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    output = str(result.stdout) + str(result.stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {result.returncode}:\n{output[-4000:]}")
    return output


@functools.cache
def engine_name() -> str | None:
    """`docker` when a Docker daemon answers, else `podman` when installed, else None."""
    if shutil.which("docker"):
        try:
            probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
        except subprocess.TimeoutExpired:
            probe = None
        if probe is not None and probe.returncode == 0 and b"podman" not in probe.stdout.lower():
            return "docker"
    if shutil.which("podman"):
        return "podman"
    return None


def require_engine() -> str:
    found = engine_name()
    if found is None:
        reason = "no container engine: a Docker daemon, or podman (../shared/containers/setup installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    if found == "podman" and not shutil.which("podman-compose"):
        pytest.fail("podman without podman-compose (../shared/containers/setup installs both)")
    return found


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `condition` until it returns something true; its value. Fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(every)


def http_status(url: str) -> dict[str, Any] | None:
    """GET url/status, or None while nothing answers."""
    try:
        response = httpx.get(f"{url}/status", timeout=2)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    data = response.json()
    return data if isinstance(data, dict) else None


@dataclass
class Engine:
    """One container engine, and the compose command that goes with it."""

    name: str

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        return run([self.name, *args], timeout=timeout, check=check)

    def build(self, tag: str) -> float:
        """Build the Dockerfile as `tag` (podman: in Docker's format, which keeps HEALTHCHECK); seconds."""
        started = time.monotonic()
        extra = ["--format", "docker"] if self.name == "podman" else []
        self("build", *extra, "-t", tag, str(ROOT), timeout=900)
        return time.monotonic() - started

    def image_size(self, tag: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", tag).strip())

    def inspect(self, container: str) -> dict[str, Any]:
        data = json.loads(self("inspect", container))
        assert isinstance(data, list)
        assert data
        result = data[0]
        assert isinstance(result, dict)
        return result

    def health(self, container: str) -> bool:
        """Run the container's healthcheck now (podman runs it on demand: no systemd timers here)."""
        if self.name == "podman":
            return self("healthcheck", "run", container, check=False, timeout=30).strip() in ("", "healthy")
        state = self.inspect(container)["State"]
        return bool(state.get("Health", {}).get("Status") == "healthy")

    def compose_command(self) -> list[str]:
        return ["docker", "compose"] if self.name == "docker" else ["podman-compose"]


@dataclass
class Stack:
    """docker-compose.yaml brought up under its own project name, with the test's variables."""

    engine: Engine
    project: str
    variables: dict[str, str]
    profiles: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
        env.update(self.variables, COMPOSE_PROJECT_NAME=self.project, COMPOSE_FILE=str(COMPOSE_FILE))
        if self.profiles:
            env["COMPOSE_PROFILES"] = ",".join(self.profiles)
        return env

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        command = self.engine.compose_command()
        profiles = [arg for profile in self.profiles for arg in ("--profile", profile)]
        if self.engine.name == "podman":
            command += ["-f", str(COMPOSE_FILE), "-p", self.project, *profiles]
        return run([*command, *args], timeout=timeout, check=check, env=self.env, cwd=ROOT)

    def containers(self, service: str) -> list[str]:
        """The names of the service's running containers, in their replica order."""
        output = self.engine(
            "ps",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
            "--format", "{{.Names}}",
        )  # fmt: skip
        return sorted(output.split(), key=lambda name: int(name.rsplit("_", 1)[-1].rsplit("-", 1)[-1]))

    def exec_python(self, container: str, code: str, timeout: float = 30) -> str:
        return self.engine("exec", container, "python", "-c", code, timeout=timeout)

    def replica_get(self, container: str, path: str) -> str:
        """GET a path on a replica from inside it (replicas publish no port)."""
        code = (
            "import sys, urllib.request; "
            f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:8000{path}', timeout=5).read().decode())"
        )
        return self.exec_python(container, code)

    def replica_sockets(self, container: str) -> int:
        """Open websockets on one replica, from its own /metrics."""
        total = 0.0
        for line in self.replica_get(container, "/metrics").splitlines():
            if line.startswith("gischat_websockets{"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def replica_node(self, container: str) -> str:
        return str(json.loads(self.replica_get(container, "/status"))["broker"]["node"])

    def logs(self, container: str) -> str:
        return self.engine("logs", container, check=False, timeout=60)

    def down(self) -> None:
        self.compose("down", "-v", "-t", "5", check=False, timeout=300)
        # podman-compose's `down` leaves the replicas `--scale` added (and then their network).
        label = f"label=com.docker.compose.project={self.project}"
        for _ in range(3):  # the dependent ones first: Redis goes once the replicas are gone
            left = self.engine("ps", "-a", "-q", "--filter", label, check=False).split()
            if not left:
                break
            for container in left:
                self.engine("rm", "-f", "-t", "0", container, check=False, timeout=120)
        self.engine("network", "rm", f"{self.project}_default", check=False)
