"""Delivery under pressure, end to end: slow consumers, concurrent senders, join storms,
images, oversized frames, abrupt disconnects and shutdown.

Every test runs a real uvicorn server (see conftest) and real websockets clients. Nothing
waits on a fixed sleep: clients record what they receive in the background and tests wait,
with a deadline, for a condition on what was recorded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from PIL import ExifTags, Image
from websockets.exceptions import ConnectionClosed

from gischat.rooms.pace import QUIET, SETTLED_SHARE, STORM_SHARE, WRITE_COST, CountPace

from conftest import TIMEOUT, Client, LiveServer, ServerFactory, text, wait_for, ws_client

pytestmark = pytest.mark.anyio

ROOM = "QGIS"


# --- helpers -------------------------------------------------------------------------------------


class Recorder:
    """Reads a client's messages in the background as fast as they come, and keeps them.

    Long `text` fields are cut to their first 64 characters (their length is kept in
    `text_len`), so floods of large messages cost little memory.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.messages: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.closed: ConnectionClosed | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                raw = await self.client.ws.recv()
                assert isinstance(raw, str), "the server only sends text frames"
                message = orjson.loads(raw)
                if isinstance(message.get("text"), str) and len(message["text"]) > 64:
                    message["text_len"] = len(message["text"])
                    message["text"] = message["text"][:64]
                self.messages.append(message)
                self.counts[message.get("type", "?")] += 1
                self._changed.set()
        except ConnectionClosed as exc:
            self.closed = exc
            self._changed.set()

    async def until(self, predicate: Callable[[Recorder], bool], timeout: float = TIMEOUT) -> None:
        """Wait until `predicate(self)` holds, failing after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    if self._task.done():
                        self._task.result()  # surfaces an assertion from the reader, if any
                        raise AssertionError(f"connection closed: {self.closed!r}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"condition not met in {timeout} s; last messages: {self.messages[-3:]}"
            ) from None

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == type_]

    def texts(self, prefix: str = "") -> list[str]:
        return [m["text"] for m in self.messages if m.get("type") == "text" and m["text"].startswith(prefix)]

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])


async def settle(recorders: list[Recorder], done: Callable[[Recorder], bool]) -> None:
    """Wait until every recorder is done, or until something went wrong for any of them (a
    refusal, a closed connection): then `done` may never hold, and there is no point waiting."""
    await wait_for(
        lambda: (
            any(r.counts["uncompliant"] or r.closed is not None for r in recorders)
            or all(done(r) for r in recorders)
        )
    )


def assert_healthy(recorders: list[Recorder]) -> None:
    """Nobody was disconnected and no message was refused."""
    for recorder in recorders:
        assert recorder.closed is None, f"a fast reader was disconnected: {recorder.closed!r}"
    for recorder in recorders:
        refusals = recorder.of_type("uncompliant")
        assert not refusals, f"a valid message was refused: {refusals}"


async def room_count(live: LiveServer, room: str = ROOM) -> int:
    async with httpx.AsyncClient(base_url=live.http_url, timeout=TIMEOUT) as http:
        response = await http.get("/status")
    counts = {r["name"]: r["nb_connected_users"] for r in response.json()["rooms"]}
    return int(counts[room])


async def room_users(live: LiveServer, room: str = ROOM) -> list[str]:
    async with httpx.AsyncClient(base_url=live.http_url, timeout=TIMEOUT) as http:
        response = await http.get(f"/room/{room}/users")
    users = response.json()
    assert isinstance(users, list)
    return [str(u) for u in users]


@asynccontextmanager
async def small_window_client(live: LiveServer, room: str = ROOM) -> AsyncIterator[Client]:
    """A client whose kernel receive buffer is tiny, so that once it stops reading, the
    server's sends to it back up after a few kilobytes rather than megabytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before connect: the receive window (and its scale) is negotiated in the handshake.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
    except BaseException:
        sock.close()
        raise
    # A short close timeout: if a test fails while the client is paused, teardown stays quick.
    async with ws_client(live, room, sock=sock, close_timeout=1) as client:
        try:
            yield client
        finally:
            client.ws.transport.resume_reading()


async def read_until_closed(client: Client, timeout: float = TIMEOUT) -> tuple[int, ConnectionClosed]:
    """Read and count messages until the connection closes; return the count and how it closed."""
    received = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                await client.ws.recv()
                received += 1
    except ConnectionClosed as exc:
        return received, exc
    except TimeoutError:
        raise AssertionError(f"still open after {timeout} s ({received} messages read)") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def image_b64(im: Image.Image, fmt: str, **params: Any) -> str:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(data: str) -> tuple[Image.Image, bytes]:
    raw = base64.b64decode(data, validate=True)
    im = Image.open(io.BytesIO(raw))
    im.load()
    return im, raw


def gradient(size: tuple[int, int]) -> Image.Image:
    """A non-uniform RGB picture whose top-left and bottom-right corners differ."""
    horizontal = Image.linear_gradient("L").resize(size)
    vertical = Image.linear_gradient("L").rotate(90).resize(size)
    return Image.merge("RGB", (horizontal, vertical, Image.new("L", size, 128)))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pixel_bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit grayscale PNG of `width` x `height` black pixels, a few tens of kB."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then packed bits
    compressor = zlib.compressobj(9)
    block = row * 1000
    parts = [compressor.compress(block) for _ in range(height // 1000)]
    parts.append(compressor.compress(row * (height % 1000)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def abort_with_rst(client: Client) -> None:
    """Drop the TCP connection the rude way: RST, no close frame, no FIN."""
    transport = client.ws.transport
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# --- slow consumer -------------------------------------------------------------------------------

FLOOD = 300
FLOOD_SIZE = 50_000


async def test_slow_consumer_is_evicted_and_others_keep_up(server_factory: ServerFactory) -> None:
    live = server_factory(send_queue_size=16, max_message_length=60_000)
    async with AsyncExitStack() as stack:
        stalled = await stack.enter_async_context(small_window_client(live))
        await stalled.register("slowpoke")
        # The websockets client reads from its socket in the background; stop that for real.
        stalled.ws.transport.pause_reading()

        sender = await stack.enter_async_context(ws_client(live))
        readers = [await stack.enter_async_context(ws_client(live)) for _ in range(3)]
        await sender.register("flooder")
        await readers[0].register("prober")
        await wait_for(lambda: _count_is(live, 5))
        assert await room_users(live) == ["flooder", "prober", "slowpoke"]

        recorders = [Recorder(c) for c in (sender, *readers)]
        prober = recorders[1]
        round_trips: list[float] = []
        evicted_at: int | None = None

        async def probe(k: int) -> None:
            started = time.monotonic()
            await readers[0].send(text("prober", f"ping-{k}"))
            await prober.until(lambda r: f"ping-{k}" in r.texts("ping-"))
            round_trips.append(time.monotonic() - started)

        padding = "x" * FLOOD_SIZE
        for i in range(FLOOD):
            await sender.send(text("flooder", f"flood-{i:04d}:{padding}"))
            if i % 20 == 19:
                await probe(i)
            if evicted_at is None and prober.of_type("exiter"):
                evicted_at = i

        # One sender's messages keep their order, so its last one closes every reader's stream.
        await sender.send(text("flooder", "end-of-flood"))
        await settle(recorders, lambda r: "end-of-flood" in r.texts("end-"))
        assert_healthy(recorders)
        for recorder in recorders:
            floods = [m for m in recorder.of_type("text") if m["text"].startswith("flood-")]
            seqs = [int(m["text"][6:10]) for m in floods]
            missing = sorted(set(range(FLOOD)) - set(seqs))
            assert not missing, f"flood messages lost for a fast reader: {missing}"
            assert seqs == list(range(FLOOD)), "every flood message, once, in order"
            assert {m["text_len"] for m in floods} == {len("flood-0000:") + FLOOD_SIZE}
            await recorder.until(lambda r: {"type": "exiter", "exiter": "slowpoke"} in r.messages)

        # The stall reached the server during the flood (the paused transport really made its
        # sends back up), after the kernel buffers and the 16-message queue were full.
        assert evicted_at is not None, "the stalled client was not evicted during the flood"
        assert evicted_at >= live.settings.send_queue_size

        # The stalled socket is out of the room: not counted, nickname released.
        assert await room_count(live) == 4
        assert await room_users(live) == ["flooder", "prober"]

        # A normal reader's round trip stayed fast while its neighbour was stalled.
        assert len(round_trips) == FLOOD // 20
        assert max(round_trips) < 1.0, f"round trips: {round_trips}"

        # Once it reads again, the stalled client drains what was in flight, then the close.
        stalled.ws.transport.resume_reading()
        received, closed = await read_until_closed(stalled)
        assert closed.rcvd is not None, "the server's close frame did not arrive"
        assert closed.rcvd.code == 1008
        assert closed.rcvd.reason == "too slow: outbound queue full"
        assert received < FLOOD, "the stalled client must not have been sent the whole flood"
        print(
            f"\nslow consumer: exiter seen after flood message #{evicted_at}; the stalled client then "
            f"drained {received} messages; round trips max {max(round_trips) * 1000:.1f} ms"
        )
        for recorder in recorders:
            await recorder.stop()


async def test_dropped_client_that_never_reads_is_aborted_by_the_kernel(
    server_factory: ServerFactory,
) -> None:
    """After eviction a graceful close cannot drain to a peer that never reads; TCP_USER_TIMEOUT ends it."""
    live = server_factory(send_queue_size=16, max_message_length=60_000, tcp_user_timeout=1)
    async with AsyncExitStack() as stack:
        stalled = await stack.enter_async_context(small_window_client(live))
        await stalled.register("slowpoke")
        stalled.ws.transport.pause_reading()
        sender = await stack.enter_async_context(ws_client(live))
        await sender.register("flooder")
        padding = "x" * FLOOD_SIZE
        sent = 0
        while "slowpoke" in await room_users(live):
            assert sent < FLOOD, "the stalled client was never dropped"
            for _ in range(10):
                await sender.send(text("flooder", f"flood-{sent:04d}:{padding}"))
                sent += 1
            await sender.expect("text", text=f"flood-{sent - 1:04d}:{padding}")
        # uvicorn still holds the dropped socket, waiting to flush; the kernel gives up on it.
        await wait_for(lambda: len(live.server.server_state.connections) == 1, timeout=10)
        assert await room_count(live) == 1


# --- concurrent senders --------------------------------------------------------------------------

SENDERS = 5
PER_SENDER = 200


async def test_concurrent_senders_lose_nothing_and_keep_order(server: LiveServer) -> None:
    async with AsyncExitStack() as stack:
        senders = [await stack.enter_async_context(ws_client(server)) for _ in range(SENDERS)]
        readers = [await stack.enter_async_context(ws_client(server)) for _ in range(3)]
        for n, client in enumerate(senders):
            await client.register(f"sender{n}")
        recorders = [Recorder(c) for c in (*senders, *readers)]

        async def blast(n: int) -> None:
            for seq in range(PER_SENDER):
                await senders[n].send(text(f"sender{n}", f"s{n}:{seq}"))

        await asyncio.gather(*(blast(n) for n in range(SENDERS)))

        # Per-sender order: once a reader has each sender's last message, it has them all.
        last = {f"s{n}:{PER_SENDER - 1}" for n in range(SENDERS)}
        await settle(recorders, lambda r: last <= set(r.texts("s")))
        assert_healthy(recorders)
        for recorder in recorders:
            by_author: dict[str, list[int]] = {}
            for message in recorder.of_type("text"):
                by_author.setdefault(message["author"], []).append(int(message["text"].split(":")[1]))
            assert sorted(by_author) == [f"sender{n}" for n in range(SENDERS)]
            for author, seqs in by_author.items():
                assert seqs == list(range(PER_SENDER)), f"{author}: lost, duplicated or reordered"
        for recorder in recorders:
            await recorder.stop()


BURST = 300


async def test_a_burst_from_one_sender_does_not_evict_fast_readers(server: LiveServer) -> None:
    """Frames that reach the server together (a client on a slow link flushing, TCP
    coalescing) are handled in one go; readers that keep up must not pay for that."""
    assert server.settings.send_queue_size < BURST
    async with AsyncExitStack() as stack:
        sender = await stack.enter_async_context(ws_client(server))
        readers = [await stack.enter_async_context(ws_client(server)) for _ in range(3)]
        await sender.register("burster")
        recorders = [Recorder(c) for c in (sender, *readers)]
        # Queue every frame in the sans-I/O protocol, then hand them to the kernel in one write.
        for seq in range(BURST):
            sender.ws.protocol.send_text(orjson.dumps(text("burster", f"b:{seq}")))
        sender.ws.transport.write(b"".join(sender.ws.protocol.data_to_send()))

        await settle(recorders, lambda r: f"b:{BURST - 1}" in r.texts("b:"))
        assert_healthy(recorders)
        for recorder in recorders:
            assert recorder.texts("b:") == [f"b:{seq}" for seq in range(BURST)]
        for recorder in recorders:
            await recorder.stop()


# --- nb_users coalescing -------------------------------------------------------------------------

JOINERS = 50
COUNT_INTERVAL = 0.2


async def test_nb_users_is_coalesced_during_a_join_storm(server_factory: ServerFactory) -> None:
    live = server_factory(nb_users_interval=COUNT_INTERVAL)

    def latest_count(r: Recorder) -> int | None:
        counts = r.of_type("nb_users")
        return int(counts[-1]["nb_users"]) if counts else None

    async with AsyncExitStack() as stack:
        started = time.monotonic()
        first = await stack.enter_async_context(ws_client(live))
        first_recorder = Recorder(first)
        others_stack = await stack.enter_async_context(AsyncExitStack())
        others = await asyncio.gather(
            *(others_stack.enter_async_context(ws_client(live)) for _ in range(JOINERS - 1))
        )
        join_time = time.monotonic() - started
        recorders = [first_recorder, *(Recorder(c) for c in others)]

        for recorder in recorders:
            await recorder.until(lambda r: latest_count(r) == JOINERS)
        assert await room_count(live) == JOINERS

        # Changes within one interval share a broadcast: at most one per interval while
        # people join, plus the immediate first one and one trailing.
        received = len(first_recorder.of_type("nb_users"))
        bound = int(join_time / COUNT_INTERVAL) + 2
        assert received <= bound, f"{received} nb_users messages for {join_time:.2f} s of joins"
        assert received < JOINERS // 3
        print(f"{JOINERS} joins took {join_time:.3f} s; first client got {received} nb_users messages")

        for recorder in recorders[1:]:
            await recorder.stop()
        await others_stack.aclose()
        await first_recorder.until(lambda r: latest_count(r) == 1)
        assert await room_count(live) == 1
        await first_recorder.stop()


def test_the_first_count_after_a_quiet_spell_goes_at_once() -> None:
    pace = CountPace(interval=0.2)
    pace.last_change = 5.0
    assert pace.due(10_000) < 5.0


def test_counts_to_a_large_room_wait_for_their_share_while_the_count_keeps_moving() -> None:
    pace = CountPace(interval=0.2)
    pace.last_sent = 10.0
    pace.last_change = 11.99  # people are still joining
    assert pace.due(10_000) == pytest.approx(10.0 + 10_000 * WRITE_COST / STORM_SHARE)


def test_a_settled_count_goes_soon_after_the_last_change() -> None:
    pace = CountPace(interval=0.2)
    pace.last_sent = 10.0
    pace.last_change = 10.5  # the storm is over
    assert pace.due(10_000) == pytest.approx(10.5 + QUIET)
    pace.last_change = 10.1  # settled early: still no more than its share
    assert pace.due(10_000) == pytest.approx(10.0 + 10_000 * WRITE_COST / SETTLED_SHARE)


def test_no_two_counts_within_the_operators_interval() -> None:
    pace = CountPace(interval=0.2)
    pace.last_sent = 10.0
    pace.last_change = 10.01
    assert pace.due(3) == pytest.approx(10.2)


# --- images over the websocket -------------------------------------------------------------------


@pytest.fixture
async def painter_and_viewer(server: LiveServer) -> AsyncIterator[tuple[Client, Client]]:
    async with ws_client(server) as painter, ws_client(server) as viewer:
        await painter.register("painter")
        await viewer.expect("newcomer", newcomer="painter")
        yield painter, viewer


async def send_image(painter: Client, viewer: Client, image_data: str) -> list[dict[str, Any]]:
    await painter.send({"type": "image", "author": "painter", "avatar": "pic.svg", "image_data": image_data})
    return [await painter.expect("image"), await viewer.expect("image")]


async def test_large_png_is_shrunk_for_everyone(painter_and_viewer: tuple[Client, Client]) -> None:
    painter, viewer = painter_and_viewer
    source = gradient((2000, 1000))
    for message in await send_image(painter, viewer, image_b64(source, "PNG")):
        assert set(message) == {"type", "author", "avatar", "image_data"}
        assert (message["type"], message["author"], message["avatar"]) == ("image", "painter", "pic.svg")
        im, _ = decode_image(message["image_data"])
        assert im.format == "PNG"
        assert im.size == (800, 400)


async def test_jpeg_stays_jpeg_and_small_images_are_not_upscaled(
    painter_and_viewer: tuple[Client, Client],
) -> None:
    painter, viewer = painter_and_viewer
    for message in await send_image(painter, viewer, image_b64(gradient((1600, 1200)), "JPEG")):
        im, _ = decode_image(message["image_data"])
        assert (im.format, im.size) == ("JPEG", (800, 600))
    for message in await send_image(painter, viewer, image_b64(gradient((120, 60)), "PNG")):
        im, _ = decode_image(message["image_data"])
        assert (im.format, im.size) == ("PNG", (120, 60))


async def test_pixel_bomb_is_refused_quickly_to_the_sender_only(
    painter_and_viewer: tuple[Client, Client],
) -> None:
    painter, viewer = painter_and_viewer
    bomb = pixel_bomb_png()
    assert len(bomb) < 100_000
    started = time.monotonic()
    await painter.send({"type": "image", "author": "painter", "avatar": None, "image_data": b64(bomb)})
    refusal = await painter.expect("uncompliant")
    elapsed = time.monotonic() - started
    assert refusal["reason"].startswith("image_data:")
    assert "too large" in refusal["reason"]
    assert "20000x20000" in refusal["reason"]
    assert elapsed < 1.0, f"refusal took {elapsed:.3f} s"
    # The socket survives, and the viewer never saw the bomb nor the refusal.
    await painter.send(text("painter", "after the bomb"))
    await painter.expect("text", text="after the bomb")
    await viewer.expect_no("image", until=lambda m: m.get("text") == "after the bomb")


async def test_corrupt_base64_is_refused(painter_and_viewer: tuple[Client, Client]) -> None:
    painter, viewer = painter_and_viewer
    await painter.send({"type": "image", "author": "painter", "avatar": None, "image_data": "not*base64!"})
    refusal = await painter.expect("uncompliant")
    assert refusal["reason"].startswith("image_data")
    await painter.send(text("painter", "still here"))
    await painter.expect("text", text="still here")
    await viewer.expect_no("uncompliant", until=lambda m: m.get("text") == "still here")


async def test_exif_orientation_applied_and_metadata_stripped(
    painter_and_viewer: tuple[Client, Client],
) -> None:
    painter, viewer = painter_and_viewer
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90 CW to display"
    exif[ExifTags.Base.Make] = "SecretCam"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 24.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (2.0, 21.0, 3.0)
    source = image_b64(gradient((300, 200)), "JPEG", exif=exif.tobytes())
    check, _ = decode_image(source)
    assert check.getexif().get_ifd(ExifTags.IFD.GPSInfo), "the test image must carry GPS data"

    for message in await send_image(painter, viewer, source):
        im, raw = decode_image(message["image_data"])
        assert im.format == "JPEG"
        assert im.size == (200, 300), "orientation 6 must be applied (dimensions swapped)"
        assert not im.getexif()
        assert "exif" not in im.info
        assert b"Exif" not in raw
        assert b"SecretCam" not in raw


# --- frame size ----------------------------------------------------------------------------------


async def test_frame_above_max_frame_size_closes_with_1009(server_factory: ServerFactory) -> None:
    live = server_factory(max_frame_size=65_536)
    async with ws_client(live) as big, ws_client(live) as other:
        await other.register("bystander")
        await big.send("x" * 100_000)
        _, closed = await read_until_closed(big)
        assert closed.rcvd is not None, "the server's close frame did not arrive"
        assert closed.rcvd.code == 1009

        # Just under the limit but not a valid message: refused, connection kept.
        await other.send("{" + "x" * 65_000)
        assert (await other.expect("uncompliant"))["reason"] == "message is not valid JSON"
        await other.send(text("bystander", "unaffected"))
        await other.expect("text", text="unaffected")
        await wait_for(lambda: _count_is(live, 1))


async def _count_is(live: LiveServer, expected: int) -> bool:
    return await room_count(live) == expected


# --- abrupt disconnects --------------------------------------------------------------------------


async def test_abrupt_disconnects_are_cleaned_up(server: LiveServer) -> None:
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(ws_client(server)) for _ in range(20)]
        for n, client in enumerate(clients):
            await client.register(f"user{n:02d}")
        await wait_for(lambda: _count_is(server, 20))
        for client in clients[::2]:
            abort_with_rst(client)
        await wait_for(lambda: _count_is(server, 10))
        assert await room_users(server) == [f"user{n:02d}" for n in range(1, 20, 2)]
        # The survivors still talk to each other.
        await clients[1].send(text("user01", "anyone left?"))
        for client in clients[1::2]:
            await client.expect("text", text="anyone left?")


# --- shutdown ------------------------------------------------------------------------------------


async def test_shutdown_with_clients_connected(server_factory: ServerFactory) -> None:
    live = server_factory()
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(ws_client(live)) for _ in range(3)]
        await clients[0].register("stayer")
        await wait_for(lambda: _count_is(live, 3))
        recorders = [Recorder(c) for c in clients]
        started = time.monotonic()
        await asyncio.to_thread(live.stop)
        assert not live.thread.is_alive(), "the server did not stop"
        assert time.monotonic() - started < 5
        for recorder in recorders:
            await recorder.until(lambda r: r.closed is not None)
            assert recorder.closed is not None
            assert recorder.closed.rcvd is not None, "no close frame from the server"
            assert recorder.closed.rcvd.code == 1012  # service restart
