"""Reaching Redis: the client every node opens, and what of its URL may be shown.

A broker URL may carry a password: logs, `/status` and error messages show only where it points,
and every secret part is masked in whatever an exception says.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def redis_client(url: str, node: str, connect_timeout: float) -> Redis:
    """A client with no retries of its own (the broker reconnects and resyncs itself), no read
    timeout (the subscriber waits for events as long as it takes), and the node in its name."""
    return Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=None,
        socket_connect_timeout=connect_timeout,
        socket_keepalive=True,
        decode_responses=False,
        client_name=f"gischat-{node}",
    )


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


def redis_secrets(url: str) -> list[str]:
    """The parts of a URL that must never reach a log line or an answer."""
    parts = urlsplit(url)
    found = [url]
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    if parts.username:
        found += [parts.username, unquote(parts.username)]
    return [secret for secret in found if len(secret) >= 3]
