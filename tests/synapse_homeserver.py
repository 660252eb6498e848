"""A real Synapse homeserver, real Matrix users and a relay to the application service for the bridge's tests.

Synapse (matrix-synapse, a test dependency) runs as its own process on a free loopback port with
SQLite, no federation listener and every per-user rate limit lifted, exactly as `synapse.app.homeserver`
runs in production; the bridge is tested against what a homeserver really sends and accepts rather
than a mock of it. Without Synapse the tests skip, except under CI (`CI` set), where they fail.

Synapse reads each application service's URL once, at start, while tests start gischat servers on
free ports: the registration points at an `AppServiceRelay`, a loopback port that stays put for the
session and forwards each connection to whichever port the test names (or refuses it, the AS down).

Helpers wait on events (the homeserver answering, a `/sync` long poll), never on fixed sleeps.

What Synapse 1.163 sends to an application service, measured by tests/matrix/test_synapse_homeserver.py:
see that module's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import importlib.metadata
import importlib.util
import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import orjson
import pytest
import yaml

from conftest import free_port

JsonDict = dict[str, Any]
T = TypeVar("T")

SERVER_NAME = "gischat.test"
USER_PREFIX = "gischat_"  # the application service's exclusive namespace: @gischat_*, #gischat_*
APPSERVICE_ID = "gischat"
# Test-only secrets, in the clear on purpose: they guard a homeserver that lives for one test session.
AS_TOKEN = "test-only-as-token-gischat-bridge-0123456789abcdef"
HS_TOKEN = "test-only-hs-token-gischat-bridge-0123456789abcdef"
SHARED_SECRET = "test-only-registration-shared-secret-0123456789abcdef"

# Measured on a 2-core machine, from spawn to `/versions` answering, a fresh SQLite schema included:
# 0.9 s idle, 1.7 s with cold caches, 1.8 s against four busy loops, 2.6-3.4 s while other test
# suites (Synapse among them) kept the load average above 5; SIGTERM to exit: 0.03-0.15 s.
# The deadline leaves room for far worse yet stays under pytest-timeout's 60 s for the first test
# using the fixture, so a slow start fails with Synapse's log rather than a bare timeout.
START_TIMEOUT = 50.0
STOP_TIMEOUT = 10.0
TIMEOUT = 10.0  # one client-server request, or one `wait_for` unless told otherwise

# Every test user talks from 127.0.0.1 and far faster than a person: lift each per-user limit
# (the application service's own users are exempt anyway: `rate_limited: false`).
_UNLIMITED = {"per_second": 100_000, "burst_count": 1_000_000}
RATE_LIMITS: JsonDict = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_third_party_invite": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
}


def synapse_version() -> str | None:
    """The importable matrix-synapse, which `sys.executable -m synapse.app.homeserver` will run."""
    if importlib.util.find_spec("synapse") is None:
        return None
    try:
        return importlib.metadata.version("matrix-synapse")
    except importlib.metadata.PackageNotFoundError:
        return None


def require_synapse() -> str:
    version = synapse_version()
    if version is None:
        reason = "matrix-synapse is not importable here (pip install matrix-synapse): no homeserver to test"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason)
        pytest.skip(reason)
    return version


# --- the application service registration ---------------------------------------------------------


def registration_yaml(
    *,
    as_token: str,
    hs_token: str,
    url: str,
    prefix: str = USER_PREFIX,
    server_name: str = SERVER_NAME,
) -> str:
    """The registration Synapse loads: users and aliases under `prefix` belong to the bridge alone."""
    domain = re.escape(server_name)
    registration = {
        "id": APPSERVICE_ID,
        "url": url,
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": f"{prefix}bot",
        "rate_limited": False,
        "namespaces": {
            "users": [{"exclusive": True, "regex": f"@{re.escape(prefix)}.*:{domain}"}],
            "aliases": [{"exclusive": True, "regex": f"#{re.escape(prefix)}.*:{domain}"}],
            "rooms": [],
        },
    }
    return yaml.safe_dump(registration, sort_keys=False)


def write_registration(
    path: Path,
    *,
    as_token: str = AS_TOKEN,
    hs_token: str = HS_TOKEN,
    url: str,
    prefix: str = USER_PREFIX,
    text: str | None = None,
) -> Path:
    """Write the registration to `path`: ours by default, or `text` verbatim (gischat's own, say)."""
    if text is None:
        text = registration_yaml(as_token=as_token, hs_token=hs_token, url=url, prefix=prefix)
    path.write_text(text)
    return path


# --- the homeserver -------------------------------------------------------------------------------


class Homeserver:
    """`python -m synapse.app.homeserver` with its config, database, media and log in `directory`.

    It can be stopped and started again on the same port with the same database (Synapse reads
    its application service registrations only at start).
    """

    def __init__(
        self,
        directory: Path,
        app_service_config_files: Sequence[Path] = (),
        *,
        server_name: str = SERVER_NAME,
        shared_secret: str = SHARED_SECRET,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = directory
        self.app_service_config_files = list(app_service_config_files)
        self.server_name = server_name
        self.shared_secret = shared_secret
        self.extra_config = dict(extra_config or {})
        self.port = free_port()
        self.config_path = directory / "homeserver.yaml"
        self.log_path = directory / "homeserver.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None  # spawn to `/versions` answering, for the last start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> JsonDict:
        directory = self.directory
        config: JsonDict = {
            "server_name": self.server_name,
            "public_baseurl": f"{self.url}/",
            "pid_file": str(directory / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    # `client` also serves /_synapse/admin (shared-secret registration) and the media repo.
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
            "media_store_path": str(directory / "media"),
            "signing_key_path": str(directory / "signing.key"),  # Synapse 1.163 generates it if missing
            "report_stats": False,
            "trusted_key_servers": [],
            "registration_shared_secret": self.shared_secret,
            "enable_registration": False,
            "enable_authenticated_media": True,
            "max_upload_size": "50M",
            "app_service_config_files": [str(path) for path in self.app_service_config_files],
            **RATE_LIMITS,
        }
        config.update(self.extra_config)
        return config

    def start(self) -> Homeserver:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "media").mkdir(exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "synapse.app.homeserver", "--config-path", str(self.config_path)],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,  # Synapse logs to stderr at INFO without a log_config
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's, not Synapse's
            )
        deadline = started + START_TIMEOUT
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while not self._answers(client):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"Synapse exited with {self.process.returncode} while starting:\n{self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Synapse did not answer within {START_TIMEOUT} s:\n{self.log_tail()}")
                time.sleep(0.05)
        self.startup_seconds = time.monotonic() - started
        return self

    def _answers(self, client: httpx.Client) -> bool:
        try:
            return client.get(f"{self.url}/_matrix/client/versions").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        """SIGTERM (Synapse shuts down cleanly in well under a second), then SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_position(self) -> int:
        """Where the log ends now: pass it to `log_since` to read only what Synapse writes from here on."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, position: int) -> str:
        """Synapse's log from `position` on: for the few states it shows nowhere else (an AS marked down)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(position)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def register_user(
        self, localpart: str, password: str, displayname: str | None = None, admin: bool = False
    ) -> JsonDict:
        """Register through the admin API with the shared secret (the HMAC nonce flow): no captcha, no UIA.

        Returns Synapse's answer: `user_id`, `access_token`, `device_id`, `home_server`.
        """
        url = f"{self.url}/_synapse/admin/v1/register"
        with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
            nonce = client.get(url).raise_for_status().json()["nonce"]
            mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
            for part in (nonce, localpart, password):
                mac.update(part.encode())
                mac.update(b"\x00")
            mac.update(b"admin" if admin else b"notadmin")
            body: JsonDict = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            if displayname is not None:
                body["displayname"] = displayname
            response = client.post(url, json=body)
        answer = _json_or_raise(response)
        return answer


# --- the relay to the application service ---------------------------------------------------------


class AppServiceRelay:
    """A loopback TCP forwarder on a port fixed for its lifetime, to a target port tests change at will.

    `target = port` forwards each new connection to 127.0.0.1:port; `target = None` accepts and closes
    each one at once, which Synapse counts as the application service being down.

    Synapse keeps its HTTP connections to the AS alive in a pool, so changing the target also retires
    the connections to the previous one: each is closed once it is not waiting for a response and has
    been quiet for `QUIET` seconds (a transaction in flight completes; closing it mid-way would make
    Synapse mark the AS down and back off). The setter returns once they are closed (in about `QUIET`
    seconds; at most `RETIRE_TIMEOUT` for an AS that never answers), so the next request Synapse
    makes reaches the new target, or finds the AS down. It blocks the calling thread meanwhile: an AS
    answering on that same thread's event loop would be answered only after `RETIRE_TIMEOUT` (gischat
    test servers run on a thread or in a process of their own).

    It runs its own event loop in a thread, so it works from sync tests and from any test's loop.
    """

    QUIET = 0.05
    RETIRE_TIMEOUT = 5.0

    def __init__(self) -> None:
        self._target: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="appservice-relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0
        self.accepted = 0  # connections accepted so far, forwarded or refused: Synapse's attempts

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> int | None:
        return self._target

    @target.setter
    def target(self, port: int | None) -> None:
        self.retarget(port)

    def retarget(self, port: int | None, *, graceful: bool = True) -> None:
        """`target = port`; `graceful=False` cuts the connections to the old target at once, mid-request
        if need be (a peer that vanishes), instead of letting each finish its exchange."""
        if port == self._target:
            return
        self._target = port
        if self._thread.is_alive():
            self._call(self._retire_all(graceful))

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed: 0 once those to a previous target are retired."""
        return len(self._links)

    def start(self) -> AppServiceRelay:
        self._thread.start()
        self.port = self._call(self._listen())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT)
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(TIMEOUT)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close()
        tasks = [task for task in self._tasks if not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT)

    async def _retire_all(self, graceful: bool) -> None:
        old = [link for link in self._links if link.target != self._target]
        await asyncio.gather(*(self._retire(link, graceful) for link in old))

    async def _retire(self, link: _Link, graceful: bool) -> None:
        deadline = self._loop.time() + self.RETIRE_TIMEOUT
        while graceful and not link.closed and not link.idle(self._loop.time(), self.QUIET):
            if self._loop.time() > deadline:
                break  # an AS that never answers (Synapse itself would wait 60 s)
            await asyncio.sleep(self.QUIET / 5)
        link.close()
        if link.handler is not None:
            await asyncio.wait([link.handler], timeout=self.RETIRE_TIMEOUT)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        handler = asyncio.current_task()
        assert handler is not None
        link = _Link(client=writer, target=self._target, opened_at=self._loop.time(), handler=handler)
        self._links.add(link)
        self._tasks.add(handler)
        try:
            if link.target is None:
                return
            try:
                upstream_reader, link.upstream = await asyncio.open_connection("127.0.0.1", link.target)
            except OSError:
                return  # nothing listens there: the AS is down
            if link.target == self._target and not link.closed:  # not retargeted while connecting
                await asyncio.gather(
                    link.pump(reader, link.upstream, request=True),
                    link.pump(upstream_reader, writer, request=False),
                )
        finally:
            link.close()
            self._links.discard(link)
            self._tasks.discard(handler)


@dataclass(eq=False)
class _Link:
    """One forwarded connection and when each direction last carried bytes (the relay loop's clock)."""

    client: asyncio.StreamWriter
    target: int | None
    opened_at: float
    handler: asyncio.Task[Any] | None = None
    upstream: asyncio.StreamWriter | None = None
    request_at: float = 0.0  # bytes from Synapse
    response_at: float = 0.0  # bytes from the AS
    closed: bool = False

    def idle(self, now: float, quiet: float) -> bool:
        """Not waiting for a response, and nothing either way for `quiet` seconds."""
        waiting = self.request_at > self.response_at
        return not waiting and now - max(self.opened_at, self.request_at, self.response_at) >= quiet

    def close(self) -> None:
        self.closed = True
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()

    async def pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, request: bool) -> None:
        """Copy one direction until its end, passing the half-close on; a reset on either side ends both."""
        loop = asyncio.get_running_loop()
        try:
            while data := await source.read(1 << 16):
                if request:
                    self.request_at = loop.time()
                else:
                    self.response_at = loop.time()
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except OSError:
            self.close()


# --- real Matrix users ----------------------------------------------------------------------------


class MatrixError(Exception):
    """A client-server API refusal: the HTTP status and the Matrix `errcode` (M_FORBIDDEN...)."""

    def __init__(self, status: int, errcode: str, error: str, body: JsonDict) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.body = body


def _json_or_raise(response: httpx.Response) -> JsonDict:
    try:
        body = orjson.loads(response.content) if response.content else {}
    except orjson.JSONDecodeError:
        body = {"error": response.text}
    if not isinstance(body, dict):
        body = {"body": body}
    if response.status_code >= 400:
        raise MatrixError(
            response.status_code, str(body.get("errcode", "")), str(body.get("error", "")), body
        )
    return body


def _path(value: str) -> str:
    """One path segment: room ids (!), aliases (#), user ids (@) and event ids ($) all need escaping."""
    return quote(value, safe="")


def _sync_filter(room_id: str) -> str:
    """Only this room's timeline: no presence, account data, receipts or typing to wake the long poll."""
    return orjson.dumps(
        {
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
            "room": {
                "rooms": [room_id],
                "timeline": {"limit": 100},
                "state": {"lazy_load_members": True},
                "ephemeral": {"not_types": ["*"]},
                "account_data": {"not_types": ["*"]},
            },
        }
    ).decode()


class MatrixUser:
    """A real, logged-in Matrix user on the test homeserver, speaking the client-server API v3.

    `wait_for` keeps a cursor per room: each event is looked at once, in order, across calls, so two
    calls in a row see two different events and an event that arrived before the call is not missed.
    """

    def __init__(self, homeserver: Homeserver, user_id: str, access_token: str, device_id: str) -> None:
        self.homeserver = homeserver
        self.user_id = user_id
        self.access_token = access_token
        self.device_id = device_id
        self.http = httpx.AsyncClient(
            base_url=homeserver.url,
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=TIMEOUT,
            trust_env=False,  # loopback only: no HTTP(S)_PROXY from the environment
        )
        self._since: dict[str, str] = {}
        self._unseen: dict[str, deque[JsonDict]] = {}
        self._transactions = itertools.count()

    @classmethod
    async def register(
        cls, homeserver: Homeserver, localpart: str, displayname: str | None = None
    ) -> MatrixUser:
        password = secrets.token_urlsafe(16)
        answer = await asyncio.to_thread(homeserver.register_user, localpart, password, displayname)
        return cls(homeserver, answer["user_id"], answer["access_token"], answer["device_id"])

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> MatrixUser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: JsonDict | None = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float = TIMEOUT,
    ) -> JsonDict:
        """One client-server call (`path` from `/_matrix/...`); a refusal raises `MatrixError`.

        The answer is the JSON object, or `{"body": [...]}` for the few endpoints that answer an
        array (`/rooms/{id}/state`).
        """
        response = await self.http.request(method, path, json=json, params=params, timeout=timeout)
        return _json_or_raise(response)

    def _txn(self) -> str:
        return f"{uuid.uuid4().hex}-{next(self._transactions)}"

    # rooms

    async def create_room(
        self,
        *,
        name: str | None = None,
        alias_localpart: str | None = None,
        invite: Sequence[str] = (),
        public: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """A new room (public: anyone may join) and its id; `extra` adds createRoom fields."""
        body: JsonDict = {"preset": "public_chat" if public else "private_chat", "invite": list(invite)}
        if name is not None:
            body["name"] = name
        if alias_localpart is not None:
            body["room_alias_name"] = alias_localpart
        body.update(extra or {})
        answer = await self.request("POST", "/_matrix/client/v3/createRoom", json=body)
        return str(answer["room_id"])

    async def join(self, room_id_or_alias: str) -> str:
        answer = await self.request("POST", f"/_matrix/client/v3/join/{_path(room_id_or_alias)}", json={})
        return str(answer["room_id"])

    async def leave(self, room_id: str) -> None:
        await self.request("POST", f"/_matrix/client/v3/rooms/{_path(room_id)}/leave", json={})

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.request(
            "POST", f"/_matrix/client/v3/rooms/{_path(room_id)}/invite", json={"user_id": user_id}
        )

    async def resolve_alias(self, alias: str) -> str:
        answer = await self.request("GET", f"/_matrix/client/v3/directory/room/{_path(alias)}")
        return str(answer["room_id"])

    async def members(self, room_id: str) -> dict[str, str | None]:
        """The joined members and their display names in this room."""
        answer = await self.request("GET", f"/_matrix/client/v3/rooms/{_path(room_id)}/joined_members")
        return {user_id: info.get("display_name") for user_id, info in answer["joined"].items()}

    async def set_displayname(self, displayname: str) -> None:
        """The profile's display name. Synapse answers first and rewrites the member event of each
        joined room after: wait for that event (`wait_for`) before reading `members`."""
        await self.request(
            "PUT",
            f"/_matrix/client/v3/profile/{_path(self.user_id)}/displayname",
            json={"displayname": displayname},
        )

    # events

    async def send(self, room_id: str, event_type: str, content: JsonDict) -> str:
        answer = await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{_path(room_id)}/send/{_path(event_type)}/{self._txn()}",
            json=content,
        )
        return str(answer["event_id"])

    async def send_text(self, room_id: str, body: str) -> str:
        return await self.send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})

    async def send_notice(self, room_id: str, body: str) -> str:
        return await self.send(room_id, "m.room.message", {"msgtype": "m.notice", "body": body})

    async def send_emote(self, room_id: str, body: str) -> str:
        return await self.send(room_id, "m.room.message", {"msgtype": "m.emote", "body": body})

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        content: JsonDict = {} if reason is None else {"reason": reason}
        answer = await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{_path(room_id)}/redact/{_path(event_id)}/{self._txn()}",
            json=content,
        )
        return str(answer["event_id"])

    async def messages(self, room_id: str, limit: int = 100) -> list[JsonDict]:
        """The room's latest events, newest first (`/messages?dir=b`)."""
        answer = await self.request(
            "GET",
            f"/_matrix/client/v3/rooms/{_path(room_id)}/messages",
            params={"dir": "b", "limit": limit},
        )
        return list(answer["chunk"])

    # media

    async def upload(self, data: bytes, content_type: str, filename: str | None = None) -> str:
        """Upload to the media repository; returns the `mxc://` URI."""
        response = await self.http.post(
            "/_matrix/media/v3/upload",
            content=data,
            headers={"Content-Type": content_type},
            params={"filename": filename} if filename else None,
        )
        return str(_json_or_raise(response)["content_uri"])

    async def download(self, mxc: str) -> bytes:
        """Fetch through authenticated media (`/_matrix/client/v1/media/download`), as clients now must."""
        match = re.fullmatch(r"mxc://([^/]+)/([^/]+)", mxc)
        assert match, f"not an mxc URI: {mxc}"
        server, media_id = match.groups()
        response = await self.http.get(
            f"/_matrix/client/v1/media/download/{_path(server)}/{_path(media_id)}", follow_redirects=True
        )
        if response.status_code >= 400:
            _json_or_raise(response)
        return response.content

    # sync

    async def sync_room(self, room_id: str, timeout: float) -> list[JsonDict]:
        """One `/sync` on this room from its kept token, long-polling up to `timeout`: its new timeline."""
        params: dict[str, str | int] = {
            "filter": _sync_filter(room_id),
            "timeout": int(timeout * 1000),
        }
        since = self._since.get(room_id)
        if since is not None:
            params["since"] = since
        else:
            params["timeout"] = 0  # the first sync is the room as it stands: its recent timeline
        answer = await self.request(
            "GET", "/_matrix/client/v3/sync", params=params, timeout=timeout + TIMEOUT
        )
        self._since[room_id] = str(answer["next_batch"])
        room = answer.get("rooms", {}).get("join", {}).get(room_id, {})
        return list(room.get("timeline", {}).get("events", []))

    async def wait_for(
        self, room_id: str, predicate: Callable[[JsonDict], bool], timeout: float = TIMEOUT
    ) -> JsonDict:
        """The next event of this room's timeline (from the last call on it) for which `predicate` holds.

        The first call on a room also looks at the room's recent timeline (100 events), so an event
        that arrived before the call is found. Each sync brings at most 100 new events: a burst
        larger than that between two syncs leaves a gap the cursor does not fill.
        """
        unseen = self._unseen.setdefault(room_id, deque())
        deadline = time.monotonic() + timeout
        while True:
            while unseen:
                event = unseen.popleft()
                if predicate(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.user_id}: no matching event in {room_id} within {timeout} s")
            unseen.extend(await self.sync_room(room_id, min(remaining, 5.0)))

    async def wait_for_invite(self, timeout: float = TIMEOUT) -> str:
        """The id of a room this user is invited to, waiting for the invite if there is none yet."""
        deadline = time.monotonic() + timeout
        since: str | None = None
        little = {"not_types": ["*"]}
        invites_only = orjson.dumps(
            {
                "presence": little,
                "account_data": little,
                "room": {
                    "timeline": {"limit": 1},
                    "state": little,
                    "ephemeral": little,
                    "account_data": little,
                },
            }
        ).decode()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.user_id}: no invite within {timeout} s")
            params: dict[str, str | int] = {
                "timeout": int(min(remaining, 5.0) * 1000),
                "filter": invites_only,
            }
            if since is not None:
                params["since"] = since
            answer = await self.request(
                "GET", "/_matrix/client/v3/sync", params=params, timeout=remaining + TIMEOUT
            )
            since = str(answer["next_batch"])
            invites = answer.get("rooms", {}).get("invite", {})
            if invites:
                return str(next(iter(invites)))


# --- the session's homeserver ---------------------------------------------------------------------


_localparts = itertools.count()


def unique_localpart(prefix: str = "user") -> str:
    """A localpart no other test of the session used: the homeserver's database lives for the session."""
    return f"{prefix}{next(_localparts)}"


@dataclass
class SynapseServer:
    """The session's homeserver, the relay its application service registration points at, and the tokens."""

    homeserver: Homeserver
    relay: AppServiceRelay
    registration: Path
    as_token: str = AS_TOKEN
    hs_token: str = HS_TOKEN

    @property
    def url(self) -> str:
        return self.homeserver.url

    @property
    def server_name(self) -> str:
        return self.homeserver.server_name

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    @property
    def bot_user_id(self) -> str:
        return self.user_id(f"{USER_PREFIX}bot")

    def serve_appservice_at(self, port: int | None) -> None:
        """Point the homeserver's application service at a gischat on `port` (None: nobody).

        With somebody there, the homeserver is pinged through it, so that transactions it held
        while the AS was away (an earlier test's server gone, say) go now, not after its backoff
        of up to 512 s."""
        self.relay.target = port
        if port is None:
            return
        response = httpx.post(
            f"{self.url}/_matrix/client/v1/appservice/{APPSERVICE_ID}/ping",
            json={},
            headers={"Authorization": f"Bearer {self.as_token}"},
            timeout=TIMEOUT,
            trust_env=False,
        )
        _json_or_raise(response)

    async def ping_appservice(self, transaction_id: str | None = None) -> JsonDict:
        """`POST /_matrix/client/v1/appservice/gischat/ping` as the AS (spec v1.7).

        Synapse then POSTs `/_matrix/app/v1/ping` to the AS and, on a 200, retries at once the
        transactions it holds for an AS it marked down, instead of waiting out its backoff (up to
        512 s). Raises `MatrixError` when the AS did not answer 200: 502 M_BAD_STATUS (its status
        and body in `.body`), or 504 M_CONNECTION_TIMEOUT, at once when the connection is closed
        unanswered (the relay without a target, or with nothing listening at it).
        """
        async with httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.as_token}"},
            timeout=TIMEOUT,
            trust_env=False,
        ) as client:
            body = {} if transaction_id is None else {"transaction_id": transaction_id}
            response = await client.post(
                f"/_matrix/client/v1/appservice/{APPSERVICE_ID}/ping", json=body, timeout=TIMEOUT
            )
        return _json_or_raise(response)


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """One Synapse for the session, its AS registration pointing at a relay whose target starts as None.

    The database lives for the session: register users under `unique_localpart()` names. The AS's
    state lives there too: a test that leaves the AS down (an event for the bridge while the relay
    has no target, or a non-200 answer) makes Synapse hold every later transaction until its backoff
    retry; `ping_appservice()` with a live AS behind the relay ends that at once.
    """
    require_synapse()
    directory = tmp_path_factory.mktemp("synapse")
    relay = AppServiceRelay().start()
    registration = write_registration(directory / "appservice.yaml", url=relay.url)
    homeserver = Homeserver(directory, [registration])
    try:
        homeserver.start()
        yield SynapseServer(homeserver=homeserver, relay=relay, registration=registration)
    finally:
        homeserver.stop()
        relay.close()


MatrixUserFactory = Callable[..., Awaitable[MatrixUser]]


@pytest.fixture
async def matrix_users(synapse: SynapseServer) -> AsyncIterator[MatrixUserFactory]:
    """Register users for one test: `await matrix_users("alice", "Alice")`; all are closed after it."""
    users: list[MatrixUser] = []

    async def register(prefix: str = "user", displayname: str | None = None) -> MatrixUser:
        user = await MatrixUser.register(synapse.homeserver, unique_localpart(prefix), displayname)
        users.append(user)
        return user

    yield register
    for user in users:
        with contextlib.suppress(Exception):
            await user.close()
