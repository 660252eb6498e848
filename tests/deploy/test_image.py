"""The Docker image, built from the Dockerfile and run in a real container engine.

As an operator runs it: a non-root user, a read-only root file system (a tmpfs on /tmp), its
healthcheck passing. SIGTERM (what `docker stop` sends) closes every websocket with 1012 after
what the server had received is delivered, and the process exits well within the stop grace
period. The size of the image and the time from `run` to a healthy `/status` are printed
(`pytest -s tests/deploy/test_image.py`) for the docs and the closing notes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from containers import Engine, http_status, require_engine, wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import TIMEOUT, Client, free_port, text

pytestmark = pytest.mark.anyio

TAG = "gischat:test"
START_TIMEOUT = 60.0
# docker stop's default grace is 10 s; the server must be out well before.
EXIT_BOUND = 8.0


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(require_engine())


@pytest.fixture(scope="module")
def image(engine: Engine) -> str:
    seconds = engine.build(TAG)
    size = engine.image_size(TAG)
    print(f"\nimage {TAG}: built in {seconds:.1f} s, {size / 1e6:.0f} MB ({engine.name})")
    return TAG


@pytest.fixture
def container(engine: Engine, image: str) -> Iterator[tuple[str, int, float]]:
    """The image run read-only as an operator would; (name, host port, seconds to healthy)."""
    name = f"gischat-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    started = time.monotonic()
    engine(
        "run", "-d", "--name", name,
        "--read-only", "--tmpfs", "/tmp", "--shm-size", "128m",
        "-p", f"127.0.0.1:{port}:8000",
        "-e", "ROOMS=QGIS,Field and mobile", "-e", "MESSAGE_RATE=0", "-e", "NB_USERS_INTERVAL=0.05",
        "-e", "MAX_STORED_MESSAGES=0",
        image,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: (http_status(url) or {}).get("healthy"), START_TIMEOUT, "a healthy /status")
        ready = time.monotonic() - started
        print(f"\nimage {image}: run to a healthy /status in {ready:.2f} s")
        yield name, port, ready
    finally:
        engine("rm", "-f", "-t", "0", name, check=False)


def test_image_runs_unprivileged_read_only_and_healthy(
    engine: Engine, container: tuple[str, int, float]
) -> None:
    name, _, ready = container
    assert ready < START_TIMEOUT
    assert engine("exec", name, "id", "-u").strip() == "10001"
    config = engine.inspect(name)
    assert config["HostConfig"]["ReadonlyRootfs"] is True
    # Nothing but the tmpfs is writable, the application's own files included.
    refused = engine("exec", name, "sh", "-c", "touch /app/written 2>&1; echo $?", check=False)
    assert refused.strip().endswith("1"), refused
    assert engine("exec", name, "sh", "-c", "touch /tmp/written && echo ok").strip() == "ok"
    # The image's own HEALTHCHECK (kept by building in Docker's format under podman).
    assert config["Config"].get("Healthcheck", {}).get("Test"), "the image lost its HEALTHCHECK"
    assert wait_until(lambda: engine.health(name), 30, "the image's healthcheck")


async def test_sigterm_delivers_what_was_received_then_closes_every_socket_with_1012(
    engine: Engine, container: tuple[str, int, float]
) -> None:
    name, port, _ = container
    base = f"ws://127.0.0.1:{port}"
    count = 200
    async with (
        connect(f"{base}/room/QGIS/ws", open_timeout=TIMEOUT) as a,
        connect(f"{base}/channel/QGIS/ws", open_timeout=TIMEOUT) as b,
        connect(f"{base}/room/QGIS/ws", open_timeout=TIMEOUT) as c,
    ):
        sender, channel, room = Client(a), Client(b), Client(c)
        await sender.register("sender")
        await channel.expect("newcomer", newcomer="sender")
        await room.expect("newcomer", newcomer="sender")
        for i in range(count):
            await sender.send(text("sender", f"m{i}"))
        # The last message is on the wire, not yet (all) delivered: stop the server now.
        stopped = time.monotonic()
        engine("kill", "--signal", "TERM", name)

        async def until_closed(client: Client) -> tuple[list[str], int | None]:
            texts: list[str] = []
            while True:
                try:
                    message = await client.recv(TIMEOUT)
                except ConnectionClosed as exc:
                    return texts, exc.rcvd.code if exc.rcvd is not None else None
                if message.get("type") == "text":
                    texts.append(message["text"])

        results = await asyncio.gather(*(until_closed(client) for client in (sender, channel, room)))
    expected = [f"m{i}" for i in range(count)]
    for texts, code in results:
        assert code == 1012, f"closed with {code}, not 1012 (service restart)"
        assert texts == expected, f"{len(texts)} of {count} delivered before the close"
    engine("wait", name, timeout=EXIT_BOUND + 20)
    exited = time.monotonic() - stopped
    state = engine.inspect(name)["State"]
    log = engine("logs", name)
    print(f"\nSIGTERM to exit: {exited:.2f} s, exit code {state['ExitCode']}")
    assert exited < EXIT_BOUND, log
    assert state["ExitCode"] in (0, 143), log
    assert "Finished server process" in log
    assert "Traceback" not in log
