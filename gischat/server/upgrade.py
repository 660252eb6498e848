"""The opening handshake read and answered by gischat itself (RFC 6455, section 4.2).

Why not `websockets`' own handshake: uvicorn has already parsed the upgrade request once, and
hands it over re-serialised; `websockets` then parsed it again in pure Python, built a `Request`
and two `Headers` (with a list per header name), and its parser generator kept the request alive
for the connection's whole life: CPU on every join, and objects on every idle socket for the
garbage collector to walk (docs/benchmarks.md, joins). Here the head is read with `httptools` (C,
the parser uvicorn uses), checked, and answered from bytes; the sans-I/O protocol is then created
already open (its public `state` argument) and only ever parses frames.

With permessage-deflate enabled, the extension negotiation stays with `websockets`
(`ServerProtocol.accept`); `from_request` turns its request into the same `Upgrade`.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import re
from dataclasses import dataclass
from http import HTTPStatus

import httptools
from websockets.http11 import Request

# RFC 6455, section 1.3: appended to the client's key before hashing.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED_VERSION = b"13"
REFUSAL_PREFIX = "Failed to open a WebSocket connection: "
# A head holding another request before the upgrade (sent without waiting for its answer).
PIPELINED_REASON = "a request was sent before the upgrade request without waiting"
UPGRADE_WEBSOCKET = re.compile(rb"\r\nupgrade:[^\r\n]*\bwebsocket\b")
CONNECTION_UPGRADE = re.compile(rb"\r\nconnection:[^\r\n]*\bupgrade\b")


@dataclass(slots=True)
class Upgrade:
    """A valid upgrade request: its target (path and query, as sent) and its headers (names
    lower-cased, as ASGI wants them), and the value of the `Sec-WebSocket-Accept` answer."""

    target: bytes
    headers: list[tuple[bytes, bytes]]
    accept: bytes


class HandshakeRefused(Exception):
    """The request cannot be upgraded: the HTTP status, the reason, extra response headers."""

    def __init__(self, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


class HeadReader:
    """Callbacks of the `httptools` parser: the request target and the headers, nothing else.

    `requests` counts the requests begun: the gate hands over everything up to the end of the
    upgrade's head, which holds an earlier request too when a client pipelined one before it
    in the same read (the target and headers would then be both requests' run together)."""

    __slots__ = ("complete", "headers", "requests", "target")

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.requests = 0

    def on_message_begin(self) -> None:
        self.requests += 1

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete = True


def read_upgrade(data: bytes) -> Upgrade:
    """Read and check the head of an upgrade request; `HandshakeRefused` says why it is not one."""
    reader = HeadReader()
    parser = httptools.HttpRequestParser(reader)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass  # the head is complete, and it asks for an upgrade
    except httptools.HttpParserError:
        raise HandshakeRefused(400, "invalid HTTP request") from None
    if not reader.complete:
        raise HandshakeRefused(400, "incomplete HTTP request")
    if reader.requests > 1:
        raise HandshakeRefused(400, PIPELINED_REASON)
    if parser.get_method() != b"GET":
        raise HandshakeRefused(405, "the upgrade request must be a GET", ((b"Allow", b"GET"),))
    if parser.get_http_version() != "1.1":
        raise HandshakeRefused(400, "the upgrade request must be HTTP/1.1")
    check_upgrade(reader.headers)
    key = single(reader.headers, b"sec-websocket-key")
    if key is None or not valid_key(key):
        raise HandshakeRefused(400, "missing or invalid Sec-WebSocket-Key header")
    version = single(reader.headers, b"sec-websocket-version")
    if version is None or version.strip() != SUPPORTED_VERSION:
        raise HandshakeRefused(
            426,
            "unsupported Sec-WebSocket-Version (13 only)",
            ((b"Sec-WebSocket-Version", SUPPORTED_VERSION),),
        )
    return Upgrade(reader.target, reader.headers, accept_value(key))


def wants_websocket(head: bytes) -> bool:
    """Whether a complete request head asks for a websocket (`Connection: Upgrade` and
    `Upgrade: websocket`); whether it is a valid one is `read_upgrade`'s to say.

    Two searches of the lower-cased head rather than a parse: this only picks the protocol that
    answers, and the one picked parses the head anyway.
    """
    lowered = head.lower()
    return bool(UPGRADE_WEBSOCKET.search(lowered) and CONNECTION_UPGRADE.search(lowered))


def check_upgrade(headers: list[tuple[bytes, bytes]]) -> None:
    """`Connection` must hold the `upgrade` token and `Upgrade` the `websocket` one."""
    if b"upgrade" not in tokens(headers, b"connection"):
        raise HandshakeRefused(400, "missing Connection: Upgrade header")
    if b"websocket" not in tokens(headers, b"upgrade"):
        raise HandshakeRefused(426, "missing Upgrade: websocket header", ((b"Upgrade", b"websocket"),))


def tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """The comma-separated tokens of every `name` header, lower-cased."""
    return {
        token.strip().lower() for header, value in headers if header == name for token in value.split(b",")
    }


def single(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of a header that must appear once (None when missing or repeated)."""
    values = [value for header, value in headers if header == name]
    return values[0] if len(values) == 1 else None


def valid_key(key: bytes) -> bool:
    """A key is 16 random bytes, base64-encoded (RFC 6455, section 4.1)."""
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except binascii.Error:
        return False


def accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + ACCEPT_GUID, usedforsecurity=False).digest())


def from_request(request: Request, accept: str) -> Upgrade:
    """The `Upgrade` of a request `websockets` parsed (with permessage-deflate enabled)."""
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in request.headers.raw_items()
    ]
    return Upgrade(request.path.encode("ascii"), headers, accept.encode("ascii"))


def switching_protocols(accept: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The 101 answer, with the server's and the application's `headers` after ours."""
    lines = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n"
    ]
    lines.extend(name + b": " + value + b"\r\n" for name, value in headers)
    lines.append(b"\r\n")
    return b"".join(lines)


def http_answer(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A complete HTTP/1.1 answer that ends the connection: a refusal or an app's denial.

    `Date`, `Connection: close`, `Content-Length` and a plain-text `Content-Type` are added
    unless `headers` has them already.
    """
    if not 100 <= status < 600:
        raise RuntimeError(f"invalid HTTP status {status} in a websocket denial response")
    present = {name.lower() for name, _ in headers}
    defaults = (
        (b"date", email.utils.formatdate(usegmt=True).encode("ascii")),
        (b"connection", b"close"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"content-type", b"text/plain; charset=utf-8"),
    )
    fields = [*headers, *((name, value) for name, value in defaults if name not in present)]
    head = [b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status).encode("ascii"))]
    head.extend(name + b": " + value + b"\r\n" for name, value in fields)
    head.append(b"\r\n")
    return b"".join(head) + body


def refusal(exc: HandshakeRefused) -> bytes:
    """The answer to a request that is not a valid upgrade, in the words `websockets` uses."""
    body = f"{REFUSAL_PREFIX}{exc.detail}.\n".encode()
    return http_answer(exc.status, list(exc.headers), body)


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
