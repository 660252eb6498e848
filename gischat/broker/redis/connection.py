"""Reaching Redis: the client every node opens, and what of its URL may be shown.

Two forms of `BROKER_URL` reach Redis:

- `redis://[[user]:password@]host[:port][/db]` (`rediss://` over TLS): one server, as redis-py's
  `Redis.from_url` reads it.
- `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`, optionally
  `?sentinel_username=...&sentinel_password=...`: a primary that Redis Sentinel watches and replaces
  when it fails. The addresses are sentinels' (port 26379 unless given), `service` the name they
  monitor the primary under (`sentinel monitor <service> ...`), the credentials and database the
  primary's; `sentinel_*` authenticate to the sentinels themselves, where they require it. redis-py
  reads no URL for Sentinel (`Sentinel(...)` takes a list of addresses, `master_for` a name and the
  primary's connection arguments): this is the form other redis-py users settled on
  (Redis-Sentinel-Url, redisvl), parsed here into exactly those arguments.

With Sentinel every connection asks the sentinels where the primary is when it is made, and each
session listens to one sentinel for `+switch-master` (`RedisTarget.watch`): when the primary dies, or
is demoted alive, and they promote a replica, the node's session ends (as when Redis goes away) at
their announcement, and the next one lands on the new primary. Nothing else in the engine knows.

- `redis+cluster://[[user]:password@]host:port[,host:port...]` (`rediss+cluster://` over TLS): a Redis
  Cluster, reached through any of the listed nodes (redis-py's `RedisCluster` learns the others
  and the slots from them). A cluster has one database: the URL names none. Each room's keys
  share a hash tag, so the room lives on one shard; its channel is a sharded channel there
  (SPUBLISH, SSUBSCRIBE: `bus.py`).

A broker URL may carry passwords: logs, `/status` and error messages show only where it points
(and, with Sentinel, which primary the node is on), and every secret part is masked in whatever an
exception says.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# What a node talks to Redis with: one server (or Sentinel's primary), or a cluster.
Client: TypeAlias = Redis | RedisCluster

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
REDIS_PORT = 6379
SENTINEL_PORT = 26379
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
SERVICE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
HOST_PATTERN = re.compile(
    r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+))(?::(?P<port>[0-9]{1,5}))?"
)


@dataclass(frozen=True)
class SentinelURL:
    """A `redis+sentinel://` URL, read into what redis-py's `Sentinel` and `master_for` take."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # sentinel_username, sentinel_password

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        """Raises ValueError with a message that never quotes the URL (it may hold passwords)."""
        scheme, _, rest = url.partition("://")
        if scheme != SENTINEL_SCHEME:
            raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
        rest, _, query = rest.partition("#")[0].partition("?")
        netloc, _, path = rest.partition("/")
        username, password, hosts = _credentials(netloc)
        sentinels = [_address(entry, SENTINEL_PORT, SENTINEL_EXAMPLE) for entry in hosts.split(",")]
        parts = path.split("/") if path else []
        if not parts or not SERVICE_PATTERN.fullmatch(parts[0]) or len(parts) > 2:
            raise ValueError(
                "a redis+sentinel:// URL names the service the sentinels monitor, then the database: "
                "redis+sentinel://host:26379,host:26379/service/0"
            )
        db = parts[1] if len(parts) == 2 else ""
        if db and not db.isdigit():
            raise ValueError("the database of a redis+sentinel:// URL is a number: .../service/0")
        options = dict(parse_qsl(query, keep_blank_values=True))
        unknown = sorted(set(options) - set(SENTINEL_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown option in a redis+sentinel:// URL (known: {', '.join(SENTINEL_OPTIONS)})"
            )
        return cls(sentinels, parts[0], int(db or 0), username, password, options)

    @property
    def location(self) -> str:
        """The sentinels, service and database, for logs and /status: no credentials."""
        hosts = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels
        )
        return f"{SENTINEL_SCHEME}://{hosts}/{self.service}/{self.db}"

    @property
    def secrets(self) -> list[str]:
        values = [self.password, self.username, *self.options.values()]
        return [value for value in values if value]


def _credentials(netloc: str) -> tuple[str | None, str | None, str]:
    """A URL's `[user][:password]@hosts` read: the user, the password (both unquoted), the hosts."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, hosts
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if colon else None, hosts


def _address(entry: str, default_port: int, example: str) -> tuple[str, int]:
    match = HOST_PATTERN.fullmatch(entry.strip())
    port = int(match["port"]) if match and match["port"] else default_port
    if match is None or not 1 <= port <= 65535:
        raise ValueError(example)
    return match["ip6"] or match["host"], port


@dataclass(frozen=True)
class ClusterURL:
    """A `redis+cluster://` URL, read into what redis-py's `RedisCluster` takes."""

    nodes: list[tuple[str, int]]
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterURL:
        """Raises ValueError with a message that never quotes the URL (it may hold passwords)."""
        scheme, _, rest = url.partition("://")
        if scheme not in CLUSTER_SCHEMES:
            raise ValueError("not a redis+cluster:// URL")
        netloc, _, path = rest.partition("#")[0].partition("?")[0].partition("/")
        if path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has one database: a redis+cluster:// URL names none")
        username, password, hosts = _credentials(netloc)
        nodes = [_address(entry, REDIS_PORT, CLUSTER_EXAMPLE) for entry in hosts.split(",")]
        return cls(nodes, scheme == "rediss+cluster", username, password)

    @property
    def location(self) -> str:
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.nodes)
        return f"{'rediss' if self.tls else 'redis'}+cluster://{hosts}"

    @property
    def secrets(self) -> list[str]:
        return [value for value in (self.password, self.username) if value]


CLUSTER_EXAMPLE = (
    "a redis+cluster:// URL lists some of the cluster's nodes as host:port, separated by commas: "
    "redis+cluster://host:6379,host:6379"
)
SENTINEL_EXAMPLE = (
    "a redis+sentinel:// URL lists its sentinels as host:port, separated by commas: "
    "redis+sentinel://host:26379,host:26379/service/0"
)


class PrimarySwitched(Exception):
    """The sentinels announced that the service's primary moved: the session starts over there."""


class RedisTarget:
    """Where this node's Redis is, from `BROKER_URL`: how to open a client there, how to close it,
    and how to name it (with Sentinel, the primary the node is on as well)."""

    def __init__(self, url: str, node: str = "", connect_timeout: float = 5.0) -> None:
        self.url = url
        self.sentinel = SentinelURL.parse(url) if url.startswith(f"{SENTINEL_SCHEME}://") else None
        self.cluster = ClusterURL.parse(url) if url.partition("://")[0] in CLUSTER_SCHEMES else None
        if self.sentinel is not None:
            self.location, more = self.sentinel.location, self.sentinel.secrets
        elif self.cluster is not None:
            self.location, more = self.cluster.location, self.cluster.secrets
        else:
            self.location, more = redis_location(url), []
        self.secrets = redis_secrets(url, more)
        self.node = node
        self.connect_timeout = connect_timeout
        self._pool: SentinelConnectionPool | None = None

    @property
    def primary(self) -> str | None:
        """With Sentinel, the primary the last connection was made to (host:port), else None."""
        address = self._pool.master_address if self._pool is not None else None
        if not address:
            return None
        host, port = address
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def __str__(self) -> str:
        """For log lines: the location and, with Sentinel, the primary."""
        primary = self.primary
        return f"{self.location} (primary {primary})" if primary else self.location

    def _options(self, sentinel: bool = False) -> dict[str, Any]:
        """No retries of redis-py's own (the broker reconnects and resyncs itself), the node in the
        client's name; for a sentinel, its own credentials."""
        options: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),
            "socket_connect_timeout": self.connect_timeout,
            "socket_keepalive": True,
            "client_name": f"gischat-{self.node}",
        }
        if sentinel and self.sentinel is not None:
            options["username"] = self.sentinel.options.get("sentinel_username") or None
            options["password"] = self.sentinel.options.get("sentinel_password") or None
        return options

    @property
    def sharded(self) -> bool:
        """A cluster: channels are sharded channels (SPUBLISH, SSUBSCRIBE), one connection per shard."""
        return self.cluster is not None

    def client(self) -> Client:
        """A client with no read timeout (the subscriber waits for events as long as it takes).
        With Sentinel, a new set of sentinel clients each time: each session asks afresh; with a
        cluster, a client that learns the shards when it first connects."""
        if self.cluster is not None:
            # Commands only (the channels have connections of their own, `bus.py`): a shard that
            # stops answering (frozen, cut off) fails the command in bounded time, and the session
            # with it, rather than holding the outbox; no retries of redis-py's own either.
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in self.cluster.nodes],
                username=self.cluster.username,
                password=self.cluster.password,
                ssl=self.cluster.tls,
                socket_timeout=max(2.0, self.connect_timeout),
                decode_responses=False,
                **self._options(),
            )
        if self.sentinel is None:
            return Redis.from_url(self.url, socket_timeout=None, decode_responses=False, **self._options())
        found = self.sentinel
        # A sentinel that stops answering must not hold the lookup: bounded, unlike the primary's reads.
        sentinels = Sentinel(
            found.sentinels, sentinel_kwargs={**self._options(True), "socket_timeout": self.connect_timeout}
        )
        client = sentinels.master_for(
            found.service,
            redis_class=Redis,
            db=found.db,
            username=found.username,
            password=found.password,
            socket_timeout=None,
            decode_responses=False,
            **self._options(),
        )
        assert isinstance(client, Redis)
        pool = client.connection_pool
        self._pool = pool if isinstance(pool, SentinelConnectionPool) else None
        return client

    def shard_client(self, host: str, port: int) -> Redis:
        """A connection to one node of the cluster, for the sharded channels it serves (`bus.py`)."""
        assert self.cluster is not None
        found = self.cluster
        return Redis(
            host=host,
            port=port,
            username=found.username,
            password=found.password,
            ssl=found.tls,
            socket_timeout=None,
            decode_responses=False,
            **self._options(),
        )

    async def close(self, client: Client) -> None:
        """Close a client from `client`, and its sentinel clients with it."""
        await client.aclose()
        if isinstance(client, Redis):
            pool = client.connection_pool
            if isinstance(pool, SentinelConnectionPool):
                await pool.sentinel_manager.aclose()

    async def watch(self) -> None:
        """Raise `PrimarySwitched` when the sentinels announce that the service's primary moved
        (`+switch-master`); without Sentinel, wait for ever.

        A session runs this beside its work: without it, a node would follow a primary that died
        only at its next reconnection attempt (up to REDIS_RECONNECT_MAX_DELAY later), and one
        demoted alive (a planned failover, a partition) only at its next refused write. Every node
        listens to the same sentinel, the first of the URL that answers, so they all hear at once."""
        if self.sentinel is None:
            await asyncio.Event().wait()
            return
        for address in itertools.cycle(self.sentinel.sentinels):
            try:
                moved = await self._switch_on(*address)
            except (RedisError, OSError):
                await asyncio.sleep(self.connect_timeout)  # this sentinel is away: the next one
            else:
                raise PrimarySwitched(f"the sentinels moved the primary to {moved}")

    async def _switch_on(self, host: str, port: int) -> str:
        """The new primary's address, once one sentinel announces that the service's moved."""
        assert self.sentinel is not None
        client = Redis(host=host, port=port, socket_timeout=None, **self._options(True))
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe("+switch-master")
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    fields = message["data"].decode().split() if message else []
                    # <service> <old ip> <old port> <new ip> <new port>
                    if len(fields) == 5 and fields[0] == self.sentinel.service:
                        return f"{fields[3]}:{fields[4]}"
        finally:
            await client.aclose()

    async def pause(self, delay: float) -> None:
        """Wait `delay` before reconnecting, or less if the sentinels announce a new primary."""
        with contextlib.suppress(TimeoutError, PrimarySwitched):
            await asyncio.wait_for(self.watch(), delay)


def describe(exc: BaseException, secrets: list[str]) -> str:
    """An exception as one line, with every secret masked."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def redis_location(url: str) -> str:
    """Where a broker URL points, for logs and /status: scheme, host, port and database, no credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    db = parts.path.strip("/") or "0"
    return f"{parts.scheme}://{host}:{port}/{db}"


def redis_secrets(url: str, more: list[str] | None = None) -> list[str]:
    """The parts of a URL that must never reach a log line or an answer."""
    found = [url]
    if url.partition("://")[0] not in (SENTINEL_SCHEME, *CLUSTER_SCHEMES):  # urlsplit refuses a list of hosts
        parts = urlsplit(url)
        for part in (parts.password, parts.username):
            if part:
                found += [part, unquote(part)]
    for part in more or []:
        found += [part, quote(part, safe="")]
    return sorted({secret for secret in found if len(secret) >= 3}, key=len, reverse=True)
