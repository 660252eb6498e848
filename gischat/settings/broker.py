"""BROKER_URL, checked at start: which broker, and a Redis address that parses, in one line that never
quotes the URL (it may carry passwords).

The forms are `memory://`, `redis://[[user]:password@]host[:port][/db]` (`rediss://` over TLS), and
`redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]` with
`?sentinel_username=...&sentinel_password=...` for sentinels that require them, and
`redis+cluster://[[user]:password@]host[:port][,host[:port]...]` (`rediss+cluster://` over TLS) for a
Redis Cluster. The broker reads the last two itself (`SentinelURL`, `ClusterURL` in
`gischat.broker.redis.connection`, which this layer may not import); tests/broker/test_sentinel.py
and test_cluster.py hold both sides to the same URLs.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

# A sentinel's address (port 26379 by default), the name the sentinels monitor the primary under,
# and what the query may set.
SENTINEL_ADDRESS = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>[0-9]{1,5}))?")
SENTINEL_SERVICE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


def check_broker_url(url: str) -> str:
    """`url` if it is a broker this server runs, else ValueError."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster"):
        raise ValueError(
            "unsupported broker: use memory://, redis://host:port, rediss://host:port, "
            "redis+sentinel://host:26379,host:26379/service/0 or redis+cluster://host:6379,host:6379"
        )
    if scheme == "redis+sentinel":
        check_sentinel_url(url)
    elif scheme in ("redis+cluster", "rediss+cluster"):
        check_cluster_url(url)
    elif scheme != "memory":
        try:
            parsed = urlsplit(url)
            parsed.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            raise ValueError("not a valid redis:// URL (port?)") from None
        if not parsed.hostname:
            raise ValueError("a redis:// URL needs a host: redis://host:6379")
        if parsed.path not in ("", "/") and not parsed.path[1:].isdigit():
            raise ValueError("the path of a redis:// URL is a database number: redis://host:6379/0")
    return url


def check_cluster_url(url: str) -> None:
    """Some of the cluster's nodes as host[:port] separated by commas, and no database but 0."""
    netloc, _, path = url.split("://", 1)[1].partition("#")[0].partition("?")[0].partition("/")
    for entry in netloc.rpartition("@")[2].split(","):
        match = SENTINEL_ADDRESS.fullmatch(entry.strip())
        if match is None or not 1 <= int(match["port"] or 6379) <= 65535:
            raise ValueError(
                "a redis+cluster:// URL lists some of the cluster's nodes as host:port, separated by "
                "commas: redis+cluster://host:6379,host:6379"
            )
    if path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has one database: a redis+cluster:// URL names none")


def check_sentinel_url(url: str) -> None:
    """The sentinels as host[:port] separated by commas, a service name, a database number, and no
    query option but the sentinels' credentials."""
    rest, _, query = url.split("://", 1)[1].partition("#")[0].partition("?")
    netloc, _, path = rest.partition("/")
    for entry in netloc.rpartition("@")[2].split(","):
        match = SENTINEL_ADDRESS.fullmatch(entry.strip())
        if match is None or not 1 <= int(match["port"] or 26379) <= 65535:
            raise ValueError(
                "a redis+sentinel:// URL lists its sentinels as host:port, separated by commas: "
                "redis+sentinel://host:26379,host:26379/service/0"
            )
    parts = path.split("/") if path else []
    if not parts or not SENTINEL_SERVICE.fullmatch(parts[0]) or len(parts) > 2:
        raise ValueError(
            "a redis+sentinel:// URL names the service the sentinels monitor, then the database: "
            "redis+sentinel://host:26379,host:26379/service/0"
        )
    if len(parts) == 2 and parts[1] and not parts[1].isdigit():
        raise ValueError("the database of a redis+sentinel:// URL is a number: .../service/0")
    unknown = sorted({key for key, _ in parse_qsl(query, keep_blank_values=True)} - set(SENTINEL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option in a redis+sentinel:// URL (known: {', '.join(SENTINEL_OPTIONS)})")
