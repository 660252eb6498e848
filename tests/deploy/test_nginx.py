"""The documented nginx setup, run: a real nginx with TLS in front of a real `gischat`.

The nginx configuration is docs/operations.md's own block, the one after the
`<!-- nginx-config: tests/deploy/test_nginx.py runs this block -->` marker, wrapped in a minimal
`nginx.conf` (everything in a temporary directory; nothing of /etc/nginx is read). Before it
runs, exactly these changes are made, each by a regular expression that must match once, so
that a docs edit the test cannot follow fails here instead of being silently skipped:

- `listen 443 ssl;` listens on 127.0.0.1 and a free port instead;
- `proxy_pass http://127.0.0.1:8000;` points at the port the test's gischat listens on;
- `ssl_certificate` and `ssl_certificate_key` name a self-signed certificate made for the test;
- `proxy_read_timeout` and `proxy_send_timeout` become `IDLE_TIMEOUT` (2 s) instead of 1 h, so that a
  websocket idle for longer than nginx's timeout takes seconds to show, not an hour;
- `client_max_body_size 16m` (the default MAX_FRAME_SIZE) becomes `2m`, the MAX_FRAME_SIZE of the
  test, which keeps large frames small enough for a quick test.

Clients reach nginx from distinct loopback addresses (127.0.0.2 and up) and nginx reaches gischat
from 127.0.0.1, the default FORWARDED_ALLOW_IPS. Without nginx the tests skip, saying how to
install it; under CI (`CI=true`) they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from test_cli import clean_env
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import TIMEOUT, Client, ServerFactory, closing, free_port, text, wait_for

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- nginx-config: tests/deploy/test_nginx.py runs this block -->"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# nginx's proxy timeouts in the test, and gischat's ping interval, well below it.
IDLE_TIMEOUT = 2
PING_INTERVAL = 0.5
MAX_FRAME_SIZE = 2 * 1024 * 1024
ROOMS = ["QGIS", "Field and mobile"]
# gischat's settings in the test: one websocket per address, to see whose address counts;
# /metrics for one client address only, to see that it is the client's and not nginx's.
METRICS_CLIENT = "127.0.0.40"
GISCHAT_ENV = {
    "ROOMS": ",".join(ROOMS),
    "FORWARDED_ALLOW_IPS": "127.0.0.1",
    "MAX_WEBSOCKETS_PER_IP": "1",
    "MAX_FRAME_SIZE": str(MAX_FRAME_SIZE),
    "BYTE_BURST": str(MAX_FRAME_SIZE),
    "WS_PING_INTERVAL": str(PING_INTERVAL),
    "METRICS_NETWORKS": f"{METRICS_CLIENT}/32",
    "MAX_STORED_MESSAGES": "0",
    "NB_USERS_INTERVAL": "0.05",
    "PROCESSING_WORKERS": "1",
    "LOG_RATE": "1000",
}
SPOOFED = "203.0.113.9"


# Finding nginx; the documented block and what the test changes in it.


def nginx_binary() -> str:
    """nginx's path; without one, skip (fail under CI, where .ci/run installs it)."""
    # Debian puts nginx in /usr/sbin, which is not on the PATH of every shell.
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    message = "nginx not installed: apt-get install nginx-light"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI must run this test; .ci/run installs nginx)")
    pytest.skip(message)


def documented_nginx_block() -> str:
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert MARKER in operations, "docs/operations.md's nginx block lost its marker"
    match = re.search(r"```nginx\n(.*?)\n```", operations[operations.index(MARKER) :], re.DOTALL)
    assert match, "no ```nginx block after the marker"
    return match.group(1)


def substitute(config: str, pattern: str, replacement: str) -> str:
    """Replace the one match of `pattern`; the documented block must hold exactly one."""
    result, count = re.subn(pattern, replacement, config, flags=re.MULTILINE)
    assert count == 1, f"docs/operations.md's nginx block: {pattern!r} matched {count} times, expected once"
    return result


def adapt(config: str, *, listen: int, upstream: int, cert: Path, key: Path, timeout: float) -> str:
    """The documented block with the test's ports, certificate, timeouts and body size (the only changes)."""
    config = substitute(config, r"(client_max_body_size\s+)16m;", rf"\g<1>{MAX_FRAME_SIZE // 2**20}m;")
    config = substitute(config, r"^(\s*listen\s+)443(\s+ssl;)", rf"\g<1>127.0.0.1:{listen}\g<2>")
    config = substitute(config, r"(proxy_pass\s+http://127\.0\.0\.1:)8000;", rf"\g<1>{upstream};")
    config = substitute(config, r"(ssl_certificate\s+)\S+;", rf"\g<1>{cert};")
    config = substitute(config, r"(ssl_certificate_key\s+)\S+;", rf"\g<1>{key};")
    config = substitute(config, r"(proxy_read_timeout\s+)\w+;", rf"\g<1>{timeout}s;")
    return substitute(config, r"(proxy_send_timeout\s+)\w+;", rf"\g<1>{timeout}s;")


def nginx_conf(directory: Path, server_config: str) -> str:
    """A minimal nginx.conf around the documented block, every file of nginx's in `directory`."""
    # Run as root, nginx's workers would become `nobody`, who cannot write request bodies into
    # a temporary directory only root may enter; as anybody else the directive is not needed.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} notice;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log {directory / 'access.log'};\n{temp}\n\n{server_config}\n}}\n"
    )


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        message = "openssl not installed: apt-get install openssl"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


# Processes.


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} is not listening on {port}:\n{log.read_text()}") from None
            time.sleep(0.02)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # fast shutdown for nginx; a graceful one for gischat
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


@dataclass
class Nginx:
    port: int
    process: subprocess.Popen[bytes]
    error_log: Path


def start_nginx(binary: str, directory: Path, upstream: int, cert: Path, key: Path) -> Nginx:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = adapt(
        documented_nginx_block(), listen=port, upstream=upstream, cert=cert, key=key, timeout=IDLE_TIMEOUT
    )
    conf = directory / "nginx.conf"
    conf.write_text(nginx_conf(directory, config))
    error_log = directory / "error.log"
    # -e: the log for what happens before nginx.conf is read (Debian's default is under /var/log).
    command = [binary, "-c", str(conf), "-p", str(directory), "-e", str(error_log)]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, (
        f"nginx refuses the documented configuration:\n{check.stderr}\n{conf.read_text()}"
    )
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, "nginx", error_log)
    except BaseException:
        stop(process)
        raise
    return Nginx(port, process, error_log)


@dataclass
class Stack:
    """nginx (TLS, the documented configuration) in front of the `gischat` command."""

    nginx: Nginx
    gischat_port: int
    gischat_log: Path
    tls: ssl.SSLContext

    def https(self, source: str, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTPS client connecting to nginx from the loopback address `source`."""
        transport = httpx.AsyncHTTPTransport(local_address=source, verify=self.tls)
        base_url = f"https://127.0.0.1:{self.nginx.port}"
        return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=TIMEOUT, **kwargs)

    def gischat_output(self) -> str:
        return self.gischat_log.read_text(errors="replace")


def tls_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture(scope="module")
def nginx_path() -> str:
    return nginx_binary()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def stack(
    nginx_path: str, certificate: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("stack")
    port = free_port()
    log = directory / "gischat.log"
    env = clean_env(HOST="127.0.0.1", PORT=str(port), **GISCHAT_ENV)
    with log.open("wb") as sink:
        gischat = subprocess.Popen(
            [sys.executable, "-m", "gischat"], env=env, cwd=directory, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, gischat, "gischat", log)
        assert httpx.get(f"http://127.0.0.1:{port}/status", timeout=TIMEOUT).json()["healthy"]
        nginx = start_nginx(nginx_path, directory / "nginx", port, *certificate)
        try:
            yield Stack(nginx, port, log, tls_context(certificate[0]))
        finally:
            stop(nginx.process)
    finally:
        stop(gischat)


def wss_url(port: int, room: str) -> str:
    return f"wss://127.0.0.1:{port}/room/{quote(room, safe='')}/ws"


@asynccontextmanager
async def wss(
    port: int, tls: ssl.SSLContext, source: str, room: str = "QGIS", **kwargs: Any
) -> AsyncIterator[Client]:
    """A websocket through nginx from the loopback address `source`; no client-side pings."""
    async with connect(
        wss_url(port, room),
        ssl=tls,
        local_addr=(source, 0),
        open_timeout=TIMEOUT,
        max_size=None,
        ping_interval=None,
        **kwargs,
    ) as ws:
        yield Client(ws)


async def refused_status(port: int, tls: ssl.SSLContext, source: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with wss(port, tls, source, **kwargs):
            pass
    return refused.value.response.status_code


# What works through nginx.


async def test_rest_routes_through_nginx(stack: Stack) -> None:
    async with stack.https("127.0.0.10") as client:
        assert (await client.get("/rooms")).json() == ROOMS
        status = (await client.get("/status")).json()
        assert status["status"] == "ok"
        assert [room["name"] for room in status["rooms"]] == ROOMS
        assert (await client.get("/rules")).json()["max_message_length"] == 255
        assert set((await client.get("/version")).json()) == {"version"}
        assert (await client.get("/room/Field%20and%20mobile/users")).json() == []
        assert (await client.get("/room/Nowhere/last")).status_code == 404
        home = await client.get("/")
        assert home.status_code == 200
        assert home.headers["content-type"].startswith("text/html")
        assert (await client.get("/openapi.json")).status_code == 200


async def test_wss_chat_between_two_clients(stack: Stack) -> None:
    port, tls = stack.nginx.port, stack.tls
    room = "Field and mobile"
    async with wss(port, tls, "127.0.0.11", room) as alice, wss(port, tls, "127.0.0.12", room) as bob:
        await alice.expect("nb_users", nb_users=2)
        await bob.expect("nb_users", nb_users=2)
        await alice.register("alice")
        await bob.expect("newcomer", newcomer="alice")
        await alice.send(text("alice", "through nginx"))
        sent = {"type": "text", "author": "alice", "avatar": None, "text": "through nginx"}
        assert await bob.expect("text") == sent
        assert await alice.expect("text") == sent
        await bob.send({"type": "like", "liker_author": "bob", "liked_author": "alice", "message": "ok"})
        assert await alice.expect("like") == {
            "type": "like", "liker_author": "bob", "liked_author": "alice", "message": "ok",
        }  # fmt: skip


async def test_browser_origins_are_checked_against_the_host_nginx_passes_on(stack: Stack) -> None:
    port, tls = stack.nginx.port, stack.tls
    # A page served by this very host (nginx passes `Host` on): let in.
    async with wss(port, tls, "127.0.0.13", origin=f"https://127.0.0.1:{port}") as page:
        await page.expect("nb_users")
    assert await refused_status(port, tls, "127.0.0.14", origin="https://elsewhere.example") == 403


# Client addresses: the real one counts, a client cannot choose it.


async def test_per_address_limits_apply_to_the_real_client_address(stack: Stack) -> None:
    port, tls = stack.nginx.port, stack.tls
    async with wss(port, tls, "127.0.0.20") as first, wss(port, tls, "127.0.0.21") as neighbour:
        await first.expect("nb_users")
        await neighbour.expect("nb_users")
        # MAX_WEBSOCKETS_PER_IP=1: a second socket from 127.0.0.20 is refused, though nginx
        # opened both upstream connections from 127.0.0.1.
        assert await refused_status(port, tls, "127.0.0.20") == 429
    # Through nginx, /metrics is served to the one client address METRICS_NETWORKS lists (and
    # not to nginx's own 127.0.0.1, which it is not).
    async with stack.https(METRICS_CLIENT) as allowed, stack.https("127.0.0.41") as other:
        assert (await allowed.get("/metrics")).status_code == 200
        assert (await other.get("/metrics")).status_code == 403


async def test_a_client_cannot_choose_its_address_with_x_forwarded_for(stack: Stack) -> None:
    port, tls = stack.nginx.port, stack.tls
    spoof: dict[str, Any] = {"additional_headers": {"X-Forwarded-For": SPOOFED}}
    async with (
        wss(port, tls, "127.0.0.22", **spoof) as first,
        wss(port, tls, "127.0.0.23", **spoof) as second,
    ):
        # Counted as 203.0.113.9, the second socket would have been refused (one per address).
        await first.expect("nb_users")
        await second.expect("nb_users")
        # Counted as its real address, 127.0.0.22 has used its one socket.
        assert await refused_status(port, tls, "127.0.0.22") == 429
        assert await refused_status(port, tls, "127.0.0.22", **spoof) == 429
    # /metrics from an address it is not served to, claiming to be the one it is served to.
    claim = {"X-Forwarded-For": METRICS_CLIENT}
    async with stack.https("127.0.0.24", headers=claim) as client:
        assert (await client.get("/metrics")).status_code == 403
    # The same from a client whose own address gischat trusts (nginx's host, 127.0.0.1): had nginx
    # appended to the client's header ($proxy_add_x_forwarded_for), gischat would take the
    # claimed address as the first one it does not trust, and serve it.
    async with stack.https("127.0.0.1", headers=claim) as client:
        assert (await client.get("/metrics")).status_code == 403
    # Straight to gischat, from a peer that is not a trusted proxy, the header is ignored too.
    direct = f"ws://127.0.0.1:{stack.gischat_port}/room/QGIS/ws"
    headers = {"X-Forwarded-For": SPOOFED}
    async with (
        connect(direct, local_addr=("127.0.0.25", 0), additional_headers=headers) as ws,
        connect(direct, local_addr=("127.0.0.26", 0), additional_headers=headers) as other,
    ):
        await Client(ws).expect("nb_users")
        await Client(other).expect("nb_users")
    # The log names the real addresses, never the claimed one.
    await wait_for(lambda: "127.0.0.23:" in stack.gischat_output())
    log = stack.gischat_output()
    assert re.search(r"127\.0\.0\.22:\d+ joined 'QGIS'", log), log
    assert SPOOFED not in log


# Idle connections and large frames.


async def test_idle_websocket_outlives_nginx_read_timeout(
    stack: Stack,
    nginx_path: str,
    certificate: tuple[Path, Path],
    server_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    # The control: the same nginx configuration in front of a gischat that does not ping.
    silent = server_factory(ws_ping_interval=0)
    control = start_nginx(nginx_path, tmp_path / "nginx", silent.port, *certificate)
    try:
        port, tls = stack.nginx.port, stack.tls
        async with (
            wss(port, tls, "127.0.0.30") as idle,
            wss(port, tls, "127.0.0.31") as listener,
            wss(control.port, tls, "127.0.0.32") as unpinged,
        ):
            await idle.expect("nb_users", nb_users=2)
            await listener.expect("nb_users", nb_users=2)
            await unpinged.expect("nb_users", nb_users=1)
            started = time.monotonic()
            # Nobody says anything for longer than nginx's read timeout. Without pings, nginx
            # closes the connection once its timeout has passed...
            with pytest.raises(ConnectionClosed):
                await unpinged.recv(timeout=IDLE_TIMEOUT + 3)
            assert time.monotonic() - started > IDLE_TIMEOUT - 0.5
            await asyncio.sleep(started + IDLE_TIMEOUT + 1 - time.monotonic())
            # ...while gischat's pings kept this one open: it still chats.
            await idle.send(text("idler", "still here"))
            assert (await listener.expect("text"))["text"] == "still here"
            assert (await idle.expect("text"))["text"] == "still here"
    finally:
        stop(control.process)


def large_layer(size: int) -> dict[str, Any]:
    """A `geojson` message whose frame is just under `size` bytes."""
    features = 100
    base: dict[str, Any] = {
        "type": "geojson", "author": "mapper", "avatar": None, "layer_name": "parcels",
        "crs_wkt": "GEOGCRS[\"WGS 84\"]", "crs_authid": "EPSG:4326",
        "geojson": {"type": "FeatureCollection", "features": []},
    }  # fmt: skip
    overhead = len(orjson.dumps(base))
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.35, 48.85]}}
    per_feature = len(orjson.dumps({**feature, "properties": {"note": ""}})) + 1
    pad = (size - 1024 - overhead) // features - per_feature
    base["geojson"]["features"] = [
        {**feature, "properties": {"note": f"{index:04d}" + "x" * (pad - 4)}} for index in range(features)
    ]
    return base


async def test_large_frames_pass_up_to_max_frame_size(stack: Stack) -> None:
    port, tls = stack.nginx.port, stack.tls
    layer = large_layer(MAX_FRAME_SIZE)
    frame = orjson.dumps(layer).decode()
    assert MAX_FRAME_SIZE - 2048 < len(frame) <= MAX_FRAME_SIZE
    room = "Field and mobile"
    async with wss(port, tls, "127.0.0.50", room) as sender, wss(port, tls, "127.0.0.51", room) as receiver:
        await sender.expect("nb_users", nb_users=2)
        await receiver.expect("nb_users", nb_users=2)
        await sender.send(frame)
        received = await receiver.expect("geojson")
        # The layer arrives whole (the message's other keys are the protocol tests' business).
        assert received["geojson"] == layer["geojson"]
        assert received["layer_name"] == layer["layer_name"]
        assert (await sender.expect("geojson"))["layer_name"] == "parcels"

        # PUT bodies above nginx's default client_max_body_size (1m) reach gischat: a text with
        # a large key gischat ignores is taken; nginx refuses a body above MAX_FRAME_SIZE.
        message = text("deploy-bot", "published") | {"padding": "p" * (3 * MAX_FRAME_SIZE // 4)}
        path = f"/room/{quote(room)}/text"
        async with stack.https("127.0.0.52") as client:
            answer = await client.put(path, content=orjson.dumps(message))
            assert answer.status_code == 200, answer.text
            assert (await receiver.expect("text"))["text"] == "published"
            message["padding"] = "p" * (MAX_FRAME_SIZE + 1024)
            answer = await client.put(path, content=orjson.dumps(message))
            assert answer.status_code == 413

        # A frame above MAX_FRAME_SIZE still ends the socket: gischat closes with 1009 while the
        # frame is still arriving, so nginx's next write upstream meets a reset and it drops both
        # sides, often before the close frame reaches the client.
        await sender.send("x" * (MAX_FRAME_SIZE + 1))
        closed = await closing(sender)
        assert closed.rcvd is None or closed.rcvd.code == 1009
        await receiver.expect("nb_users", nb_users=1)
