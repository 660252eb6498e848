"""The web client in a real browser: headless Chromium driven by Playwright, against real servers.

Chromium comes from the system (Debian's `chromium` package, which `.ci/run` installs):
Playwright's own browser download is not used. Without a browser these tests are skipped
with the reason, except under CI (`CI=true`), where a missing browser is a failure.
Every wait is on an event (a selector, a websocket message, a download), never a fixed sleep.

The page speaks the 3.x dialect (`/channel/{c}/ws`); the Python clients beside it are 2.x
room sockets (QTribu) unless a test opens a channel socket (QChat, QField) with `channel_client`.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import orjson
import pytest
from PIL import Image
from playwright.async_api import Browser, Locator, Page, Route, WebSocket, async_playwright, expect
from synapse_homeserver import MatrixUserFactory, SynapseServer
from websockets.asyncio.client import connect

from conftest import TIMEOUT, Client, LiveServer, ServerFactory, start_server, text, ws_client
from wire import GEOJSON_ORDER

pytestmark = pytest.mark.anyio

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 780}
# The only console errors a test may accept: the browser reporting refused websocket
# connections while the server is down.
WEBSOCKET_REFUSED = re.compile(r"WebSocket connection to 'ws://[^']+' failed")

WGS84_FEATURES: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[2.22, 48.83], [2.32, 48.81], [2.36, 48.86], [2.26, 48.89], [2.22, 48.83]]],
            },
            "properties": {"name": "survey zone", "status": "done"},
        },
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[2.2, 48.8], [2.29, 48.85], [2.4, 48.87]]},
            "properties": {"name": "trail", "length_km": 14.2},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [2.3, 48.845]},
            "properties": {"name": "well 1", "depth": 12},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [2.34, 48.86]},
            "properties": {"name": "well 2", "depth": 30},
        },
    ],
}
MERCATOR_FEATURES: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [261_000.0, 6_250_000.0]},
            "properties": {},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [265_000.0, 6_252_000.0]},
            "properties": {},
        },
    ],
}


# The protocol table: the keys a client sends on a channel socket (3.x), in order. The server
# gives every message its id and timestamp; a client sends neither.
PROTOCOL_KEYS = {
    "text": ["type", "author", "avatar", "text"],
    "image": ["type", "author", "avatar", "image_data"],
    "geojson": ["type", "author", "avatar", "layer_name", "crs_wkt", "crs_authid", "geojson"],
    "crs": ["type", "author", "avatar", "crs_wkt", "crs_authid"],
    "bbox": ["type", "author", "avatar", "crs_wkt", "crs_authid", "xmin", "xmax", "ymin", "ymax"],
    "position": ["type", "author", "avatar", "crs_wkt", "crs_authid", "x", "y"],
    "model": ["type", "author", "avatar", "model_name", "model_group", "raw_xml"],
    "script": ["type", "author", "avatar", "name", "raw_pycode"],
    "newcomer": ["type", "newcomer"],
    "like": ["type", "liker_author", "liked_author", "message"],
}
# The types a client may send as a reply: `in_reply_to_id` comes last, after the type's keys.
REPLY_TYPES = {"text", "image", "geojson", "crs", "bbox", "position", "model", "script"}
# What every frame of a channel socket starts with.
CHANNEL_HEAD = ["type", "id", "timestamp"]
CHANNEL_PATH = re.compile(r"^ws://127\.0\.0\.1:\d+/channel/[^/]+/ws$")
ROOM_ROUTE = re.compile(r"^https?://127\.0\.0\.1:\d+/rooms?(/|$)")
# A fixed-offset zone without daylight saving time (+05:45): local time is never UTC's.
KATHMANDU = ("Asia/Kathmandu", timezone(timedelta(hours=5, minutes=45)))

# Whether the shared extent's rectangle is on screen, inside the map and most of its width
# or height, as after zooming to it (fitting snaps to whole zoom levels: half of the map or more).
BBOX_FILLS_MAP = """(expected) => {
    const map = document.querySelector("#map").getBoundingClientRect();
    const box = document.querySelector("path.gc-bbox").getBoundingClientRect();
    const inside = box.left >= map.left - 1 && box.right <= map.right + 1
        && box.top >= map.top - 1 && box.bottom <= map.bottom + 1;
    return (inside && (box.width > 0.45 * map.width || box.height > 0.45 * map.height)) === expected;
}"""


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "no Chromium found (install Debian's `chromium` package; .ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: browser tests never skip under CI")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so that one browser serves every test of this file."""
    return "asyncio"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    # `launch` gives the browser a fresh temporary profile (user data dir) of its own.
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


@dataclass
class Pages:
    """Browser pages for one test, each in its own context, with their console errors."""

    browser: Browser
    errors: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)  # every frame the pages sent
    sockets: list[str] = field(default_factory=list)  # the address of every websocket they opened
    requests: list[str] = field(default_factory=list)  # the address of every request they made
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    async def open(self, server: LiveServer, size: dict[str, int] = DESKTOP, **options: Any) -> Page:
        context = await self.browser.new_context(viewport=size, **options)  # type: ignore[arg-type]
        page = await context.new_page()
        page.on("console", lambda message: self.note(message.type, message.text))
        page.on("pageerror", lambda error: self.note("error", f"uncaught: {error}"))
        page.on("websocket", self.record)
        page.on("request", lambda request: self.requests.append(request.url))
        await page.goto(f"{server.http_url}/")
        await expect(page.locator("#join-button")).to_be_enabled()
        return page

    def note(self, kind: str, text: str) -> None:
        if kind == "error" and not any(pattern.search(text) for pattern in self.allowed):
            self.errors.append(text)

    def record(self, socket: WebSocket) -> None:
        self.sockets.append(socket.url)
        socket.on("framesent", lambda payload: self.sent.append(orjson.loads(payload)))

    def assert_clean(self) -> None:
        """No console error, every websocket a channel socket, and every frame the pages sent has
        exactly the protocol's keys, in order (a reply's `in_reply_to_id` last)."""
        assert self.errors == [], f"console errors: {self.errors}"
        assert self.sent, "the pages sent nothing"
        for url in self.sockets:
            assert CHANNEL_PATH.match(url), f"the page opened {url}, not a channel socket"
        for url in self.requests:
            assert not ROOM_ROUTE.match(url), f"the page asked a 2.x route: {url}"
        for message in self.sent:
            keys = list(message)
            if keys[-1] == "in_reply_to_id" and message["type"] in REPLY_TYPES:
                assert is_uuid(message["in_reply_to_id"]), message
                keys.pop()
            assert keys == PROTOCOL_KEYS[message["type"]], message

    async def close(self) -> None:
        for context in self.browser.contexts:
            await context.close()


@pytest.fixture
async def pages(browser: Browser) -> AsyncIterator[Pages]:
    opened = Pages(browser)
    yield opened
    await opened.close()


def is_uuid(value: Any) -> bool:
    return isinstance(value, str) and str(uuid.UUID(value)) == value


@asynccontextmanager
async def channel_client(server: LiveServer, channel: str = "QGIS") -> AsyncIterator[Client]:
    """A websocket on `/channel/{channel}/ws`, the 3.x dialect (QChat, the QField plugin)."""
    url = f"ws://127.0.0.1:{server.port}/channel/{quote(channel, safe='')}/ws"
    async with connect(url, open_timeout=TIMEOUT, max_size=None) as ws:
        yield Client(ws)


def check_channel_frame(message: dict[str, Any], keys: list[str]) -> None:
    """A frame of a channel socket: type, id, timestamp, then the type's keys."""
    assert list(message) == [*CHANNEL_HEAD, *keys], message
    assert is_uuid(message["id"])
    assert isinstance(message["timestamp"], int)


def quiet_server(server_factory: ServerFactory, **overrides: Any) -> LiveServer:
    """A server whose page loads nothing from the network: no basemap tiles."""
    return server_factory(map_tile_url="", **overrides)


async def join(page: Page, nickname: str, room: str = "QGIS") -> None:
    await choose(page, nickname, room)
    await expect(page.locator("#chat-view")).to_be_visible()
    await expect(page.locator("#connection")).to_have_text("connected")


async def choose(page: Page, nickname: str, room: str = "QGIS") -> None:
    await page.locator("#room-list li", has=page.locator(f'input[value="{room}"]')).locator("label").click()
    await page.fill("#nickname", nickname)
    await page.press("#nickname", "Enter")


async def say(page: Page, text: str) -> None:
    await page.fill("#message", text)
    await page.press("#message", "Enter")
    await expect(page.locator("#message")).to_have_value("")


def message_item(page: Page, author: str, text: str) -> Any:
    return page.locator(f'#log li.msg[data-author="{author}"]', has_text=text)


def png(width: int, height: int, noise: bool = False) -> bytes:
    if noise:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), (30, 120, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded_size(image_data: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(image_data))) as image:
        return image.size


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), animations="disabled")


# --- Chatting --------------------------------------------------------------------------------


async def test_two_pages_and_a_python_client_chat(server_factory: ServerFactory, pages: Pages) -> None:
    server = quiet_server(server_factory)
    async with ws_client(server) as bob:
        await bob.register("qgis_bob")
        alice = await pages.open(server)
        await expect(alice.locator("#room-list li", has_text="QGIS")).to_contain_text("1 connected")
        await join(alice, "alice")
        carol = await pages.open(server)
        await join(carol, "carol")
        await bob.expect("newcomer", newcomer="carol")

        # Arrivals, the user list and the count stay live.
        await expect(alice.locator("#log")).to_contain_text("carol joined")
        await expect(alice.locator("#user-list")).to_contain_text("qgis_bob")
        await expect(alice.locator("#user-list")).to_contain_text("carol")
        await expect(alice.locator("#user-count")).to_have_text("3 named")
        await expect(alice.locator("#nb-users")).to_have_text("3 connected")

        # Page to page and page to Python, with exactly the documented keys.
        await say(alice, "Hello @carol, the survey is up")
        sent = await bob.expect("text", author="alice")
        assert sent == {
            "type": "text",
            "author": "alice",
            "avatar": None,
            "text": "Hello @carol, the survey is up",
        }
        received = message_item(carol, "alice", "the survey is up")
        await expect(received.locator("mark.mention.me")).to_have_text("@carol")
        # Without REPLY_THREADS, nothing offers to reply.
        await expect(received.get_by_role("button", name="Like")).to_be_visible()
        await expect(carol.get_by_role("button", name="Reply")).to_have_count(0)
        await expect(received).to_have_class(re.compile(r"\bmentions-me\b"))

        # Python to both pages.
        await bob.send(
            {"type": "text", "author": "qgis_bob", "avatar": "mIconQgis.svg", "text": "Layer coming @alice"}
        )
        for page in (alice, carol):
            await expect(message_item(page, "qgis_bob", "Layer coming")).to_be_visible()
        await expect(message_item(alice, "qgis_bob", "Layer coming").locator("mark.mention")).to_have_text(
            "@alice"
        )

        # Likes: a page likes the Python client's message, another page's message.
        await message_item(carol, "qgis_bob", "Layer coming").get_by_role("button", name="Like").click()
        like = await bob.expect("like")
        assert like == {
            "type": "like",
            "liker_author": "carol",
            "liked_author": "qgis_bob",
            "message": "Layer coming @alice",
        }
        await message_item(carol, "alice", "the survey is up").get_by_role("button", name="Like").click()
        await expect(alice.locator("#log li.notice.liked")).to_contain_text("carol liked your message")
        await expect(message_item(alice, "alice", "the survey is up").locator(".likes")).to_have_text("♥ 1")

        # A refusal goes to the sender, shown with the server's reason.
        await bob.send({"type": "text", "author": "qgis_bob", "avatar": None, "text": "x" * 300})
        await bob.expect("uncompliant")

        # Leaving.
        await carol.get_by_role("button", name="Leave").click()
        await expect(carol.locator("#join-view")).to_be_visible()
        await bob.expect("exiter", exiter="carol")
        await expect(alice.locator("#log")).to_contain_text("carol left")
        await expect(alice.locator("#user-list")).not_to_contain_text("carol")
        await expect(alice.locator("#nb-users")).to_have_text("2 connected")
    await expect(alice.locator("#log")).to_contain_text("qgis_bob left")
    assert f"{server.http_url}/channel/QGIS/users" in pages.requests
    pages.assert_clean()


async def test_nickname_refusals_are_shown_inline(server_factory: ServerFactory, pages: Pages) -> None:
    server = quiet_server(server_factory)
    async with ws_client(server) as bob:
        await bob.register("alice")
        page = await pages.open(server)
        await expect(page.locator("#nickname-hint")).to_contain_text("3 to 32 letters, digits")
        await expect(page.locator("#rules-text")).to_have_text("Be kind and nice to this wonderful world")

        await choose(page, "Alice")
        await expect(page.locator("#join-error")).to_have_text(
            "newcomer: 'Alice' is already taken in this room"
        )
        await expect(page.locator("#join-view")).to_be_visible()

        await choose(page, "al")
        await expect(page.locator("#join-error")).to_have_text(
            "newcomer: must be 3 to 32 characters long (got 2)"
        )
        await choose(page, "alice <3")
        await expect(page.locator("#join-error")).to_have_text(
            "newcomer: only letters, digits, '_' and '-' are allowed"
        )

        await join(page, "alice_2")
        await expect(page.locator("#join-error")).to_be_hidden()
        await bob.expect("newcomer", newcomer="alice_2")
    pages.assert_clean()


async def test_uncompliant_reasons_are_shown_to_the_sender(
    server_factory: ServerFactory, pages: Pages, tmp_path: Path
) -> None:
    server = quiet_server(server_factory, max_geojson_features=2)
    page = await pages.open(server)
    await join(page, "alice")
    layer = tmp_path / "too-big.geojson"
    layer.write_bytes(orjson.dumps(WGS84_FEATURES))
    await page.set_input_files("#layer-input", str(layer))
    await expect(page.locator("#log li.notice.refused")).to_have_text(
        "Not delivered: Too many geojson features : 4 vs max 2 allowed"
    )
    broken = tmp_path / "broken.geojson"
    broken.write_text("{not json")
    await page.set_input_files("#layer-input", str(broken))
    await expect(page.locator("#log li.notice.refused").last).to_have_text(
        "Layer broken.geojson not shared: the file is not valid JSON"
    )
    pages.assert_clean()


async def test_message_texts_are_never_html(server_factory: ServerFactory, pages: Pages) -> None:
    server = quiet_server(server_factory)
    page = await pages.open(server)
    await join(page, "alice")
    hostile = [
        '<img src=x onerror="window.pwned = 1">',
        "<script>window.pwned = 2</script>",
        "<b>bold</b> &amp; <a href='javascript:alert(1)'>link</a>",
    ]
    async with ws_client(server) as bob:
        await bob.register("mallory")
        for body in hostile:
            await bob.send({"type": "text", "author": "mallory", "avatar": "<img src=x>", "text": body})
        layer = {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [1.0, 45.0]},
                    "properties": {"<img src=x onerror=alert(1)>": "<script>window.pwned = 3</script>"},
                }
            ],
        }
        await bob.send(
            {
                "type": "geojson",
                "author": "mallory",
                "avatar": None,
                "layer_name": "<img src=x onerror='window.pwned = 4'>",
                "crs_wkt": "",
                "crs_authid": "EPSG:4326",
                "geojson": layer,
            }
        )
        await bob.expect("geojson")
        bodies = page.locator('#log li.msg[data-author="mallory"] .body')
        await expect(bodies).to_have_count(4)
        for index, body in enumerate(hostile):
            await expect(bodies.nth(index)).to_have_text(body)
        await expect(page.locator(".layer-list")).to_contain_text("<img src=x onerror='window.pwned = 4'>")
        await page.locator("path.gc-feature").click()
        popup = page.locator(".leaflet-popup-content")
        await expect(popup).to_contain_text("<script>window.pwned = 3</script>")
        await expect(popup.locator("th")).to_have_text("<img src=x onerror=alert(1)>")
    assert await page.locator("#log img, #log script, #log b, #log a, .leaflet-popup img").count() == 0
    assert await page.evaluate("window.pwned") is None
    pages.assert_clean()


# --- Images ----------------------------------------------------------------------------------


async def test_images_from_the_page_arrive_resized(
    server_factory: ServerFactory, pages: Pages, tmp_path: Path
) -> None:
    server = quiet_server(server_factory, max_image_size=200)
    page = await pages.open(server)
    await join(page, "alice")
    async with ws_client(server) as bob:
        await bob.register("qgis_bob")
        picked = tmp_path / "photo.png"
        picked.write_bytes(png(1200, 600))
        await page.set_input_files("#image-input", str(picked))
        image = await bob.expect("image", author="alice")
        assert set(image) == {"type", "author", "avatar", "image_data"}
        assert decoded_size(image["image_data"]) == (200, 100)

        # Dropped on the room, and pasted into the message field.
        data = base64.b64encode(png(300, 900)).decode()
        for target, kind in (("#chat-view", "drop"), ("#message", "paste")):
            await page.evaluate(
                """([data, selector, kind]) => {
                    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                    const transfer = new DataTransfer();
                    transfer.items.add(new File([bytes], "shot.png", {type: "image/png"}));
                    const init = {bubbles: true, cancelable: true};
                    const event = kind === "drop"
                        ? new DragEvent("drop", {...init, dataTransfer: transfer})
                        : new ClipboardEvent("paste", {...init, clipboardData: transfer});
                    document.querySelector(selector).dispatchEvent(event);
                }""",
                [data, target, kind],
            )
            image = await bob.expect("image", author="alice")
            assert decoded_size(image["image_data"]) == (67, 200)

        # Shown inline; a click enlarges, Escape closes.
        thumbnails = page.locator("#log .thumb img")
        await expect(thumbnails).to_have_count(3)
        await expect(thumbnails.first).to_have_js_property("naturalWidth", 200)
        await page.locator("#log .thumb").first.click()
        await expect(page.locator("#image-dialog")).to_be_visible()
        await expect(page.locator("#image-large")).to_have_js_property("naturalWidth", 200)
        await page.keyboard.press("Escape")
        await expect(page.locator("#image-dialog")).to_be_hidden()
    pages.assert_clean()


async def test_image_too_large_for_a_frame_is_scaled_down_first(
    server_factory: ServerFactory, pages: Pages, tmp_path: Path
) -> None:
    server = quiet_server(server_factory, max_frame_size=65_536, max_image_size=100)
    page = await pages.open(server)
    await join(page, "alice")
    async with ws_client(server) as bob:
        await bob.register("qgis_bob")
        big = tmp_path / "noise.png"
        big.write_bytes(png(400, 300, noise=True))  # ~360 kB, far above one 64 kB frame
        await page.set_input_files("#image-input", str(big))
        image = await bob.expect("image", author="alice")
        assert decoded_size(image["image_data"]) == (100, 75)
    await expect(page.locator("#connection")).to_have_text("connected")
    pages.assert_clean()


# --- The map ---------------------------------------------------------------------------------


async def open_popup(page: Page, feature: Locator, text: str) -> None:
    """Click a drawn feature until its popup shows `text`: a click that lands while Leaflet is still
    settling the map (a zoom, a resize of the pane) opens nothing, on a loaded machine now and then."""
    popup = page.locator(".leaflet-popup-content")
    for _ in range(3):
        await feature.click()
        try:
            await expect(popup).to_contain_text(text, timeout=2000)
        except AssertionError:
            continue
        return
    await expect(popup).to_contain_text(text)


async def test_layers_and_extents_from_qgis_land_on_the_map(
    server_factory: ServerFactory, pages: Pages
) -> None:
    server = quiet_server(server_factory)
    alice = await pages.open(server)
    await join(alice, "alice")
    phone = await pages.open(server, PHONE)
    await join(phone, "field_ana")
    async with ws_client(server) as bob:
        await bob.register("qgis_bob")
        await say(alice, "Morning! Could someone share the survey zone?")
        await bob.send(
            {"type": "text", "author": "qgis_bob", "avatar": None, "text": "Sure, here it is @alice"}
        )
        base = {"type": "geojson", "author": "qgis_bob", "avatar": "mIconPolygonLayer.svg"}
        await bob.send(
            {
                **base,
                "layer_name": "survey 2024",
                "crs_wkt": 'GEOGCRS["WGS 84",...]',
                "crs_authid": "EPSG:4326",
                "geojson": WGS84_FEATURES,
            }
        )
        await bob.send(
            {
                **base,
                "layer_name": "webmercator wells",
                "crs_wkt": "",
                "crs_authid": "EPSG:3857",
                "geojson": MERCATOR_FEATURES,
            }
        )
        await bob.send(
            {
                **base,
                "layer_name": "lambert parcels",
                "crs_wkt": "",
                "crs_authid": "EPSG:2154",
                "geojson": WGS84_FEATURES,
            }
        )
        await bob.send(
            {
                "type": "bbox",
                "author": "qgis_bob",
                "avatar": None,
                "crs_wkt": "",
                "crs_authid": "EPSG:4326",
                "xmin": 2.15,
                "xmax": 2.45,
                "ymin": 48.78,
                "ymax": 48.92,
            }
        )
        await bob.send(
            {"type": "crs", "author": "qgis_bob", "avatar": None, "crs_wkt": "", "crs_authid": "EPSG:2154"}
        )
        await bob.expect("crs")

        # 4 WGS 84 features and 2 Web Mercator ones are drawn; the Lambert-93 layer is only listed.
        await expect(alice.locator(".leaflet-overlay-pane path.gc-feature")).to_have_count(6)
        await expect(alice.locator(".leaflet-overlay-pane path.gc-bbox")).to_have_count(1)
        await alice.locator(".leaflet-overlay-pane path.gc-bbox").dispatch_event("mouseover")
        await expect(alice.locator(".leaflet-tooltip")).to_have_text("extent shared by qgis_bob")
        entries = alice.locator(".layer-list > li")
        await expect(entries).to_have_count(4)
        await expect(entries.nth(0)).to_contain_text("survey 2024")
        await expect(entries.nth(0)).to_contain_text("by qgis_bob · 4 features · EPSG:4326")
        await expect(entries.nth(2)).to_contain_text("EPSG:2154")
        await expect(entries.nth(2)).to_contain_text("not drawn")
        await expect(alice.locator("#log")).to_contain_text("CRS EPSG:2154")

        # Hiding, popups and zooming.
        await entries.nth(1).get_by_role("checkbox").uncheck()
        await expect(alice.locator("path.gc-feature")).to_have_count(4)
        await entries.nth(1).get_by_role("checkbox").check()
        await expect(alice.locator("path.gc-feature")).to_have_count(6)
        await entries.nth(1).get_by_role("button", name="Zoom to").click()
        await alice.wait_for_function(BBOX_FILLS_MAP, arg=False)
        await entries.nth(3).get_by_role("button", name="Zoom to").click()
        await alice.wait_for_function(BBOX_FILLS_MAP, arg=True)

        # The phone shows the chat first and flags the map; the map pane has everything drawn.
        await expect(phone.locator("#show-map")).to_have_class(re.compile(r"\bhas-news\b"))
        await expect(phone.locator("#map-pane")).to_be_hidden()
        await phone.locator("#show-map").click()
        await expect(phone.locator("#map-pane")).to_be_visible()
        await expect(phone.locator("path.gc-feature")).to_have_count(6)

        await open_popup(alice, alice.locator("path.gc-feature").nth(2), "well 1")
        await screenshot(alice, "busy-room-desktop.png")
        await screenshot(phone, "busy-room-phone-map.png")
        await phone.locator("#show-chat").click()
        await screenshot(phone, "busy-room-phone-chat.png")
    pages.assert_clean()


async def test_the_page_shares_layers_extents_and_positions(
    server_factory: ServerFactory, pages: Pages, tmp_path: Path
) -> None:
    server = quiet_server(server_factory)
    page = await pages.open(
        server, DESKTOP, permissions=["geolocation"], geolocation={"latitude": 45.19, "longitude": 5.72}
    )
    await join(page, "alice")
    async with ws_client(server) as bob:
        await bob.register("qgis_bob")
        upload = tmp_path / "wells.geojson"
        upload.write_bytes(orjson.dumps(WGS84_FEATURES))
        await page.set_input_files("#layer-input", str(upload))
        layer = await bob.expect("geojson", author="alice")
        assert list(layer) == GEOJSON_ORDER
        assert layer["style"] is None  # the page shares no QML style
        assert layer["layer_name"] == "wells"
        assert layer["crs_authid"] == "EPSG:4326"
        assert layer["crs_wkt"].startswith('GEOGCRS["WGS 84"')
        assert layer["crs_wkt"].endswith('ID["EPSG",4326]]')
        assert layer["geojson"] == WGS84_FEATURES
        await expect(page.locator("path.gc-feature")).to_have_count(4)

        await page.get_by_role("button", name="Share view").click()
        bbox = await bob.expect("bbox", author="alice")
        keys = ["type", "author", "avatar", "crs_wkt", "crs_authid", "xmin", "xmax", "ymin", "ymax"]
        assert list(bbox) == keys
        assert bbox["crs_authid"] == "EPSG:4326"
        assert bbox["crs_wkt"] == layer["crs_wkt"]
        # The view was fitted to the layer: the extent shared holds it.
        assert -180 <= bbox["xmin"] <= 2.2 < 2.4 <= bbox["xmax"] <= 180
        assert -90 <= bbox["ymin"] <= 48.8 < 48.89 <= bbox["ymax"] <= 90
        await expect(page.locator("path.gc-bbox")).to_have_count(1)

        await page.get_by_role("button", name="Share position").click()
        position = await bob.expect("geojson", author="alice", layer_name="position of alice")
        point = position["geojson"]["features"][0]["geometry"]
        assert point == {"type": "Point", "coordinates": [5.72, 45.19]}
        assert position["crs_authid"] == "EPSG:4326"
        await expect(page.locator("path.gc-feature")).to_have_count(5)
    pages.assert_clean()


async def test_basemap_tiles_load_under_the_policy(server_factory: ServerFactory, pages: Pages) -> None:
    """Tiles come from the configured origin, which the page's policy allows (served here by the test)."""
    server = server_factory(
        map_tile_url="https://{s}.tiles.example.test/base/{z}/{x}/{y}.png",
        map_tile_attribution='Tiles &copy; <a href="https://example.test/">Example</a>',
    )
    requested: list[str] = []
    tile = png(256, 256)

    async def serve_tile(route: Route) -> None:
        requested.append(route.request.url)
        await route.fulfill(status=200, content_type="image/png", body=tile)

    page = await pages.open(server)
    await page.route(re.compile(r"^https://[abc]\.tiles\.example\.test/base/"), serve_tile)
    await join(page, "alice")
    await expect(page.locator("img.leaflet-tile-loaded").first).to_be_visible()
    assert re.fullmatch(r"https://[abc]\.tiles\.example\.test/base/2/\d+/\d+\.png", requested[0])
    attribution = page.locator(".leaflet-control-attribution")
    await expect(attribution).to_have_text("Tiles © Example")
    await expect(attribution.locator("a")).to_have_attribute("href", "https://example.test/")
    pages.assert_clean()


POSITION_KEYS = ["author", "avatar", "crs_wkt", "crs_authid", "x", "y"]
# Whether the position marker's dot sits at the middle of the map, as after zooming to it.
MARKER_AT_CENTRE = """() => {
    const map = document.querySelector("#map").getBoundingClientRect();
    const dot = document.querySelector(".gc-position-dot");
    if (!dot) return false;
    const box = dot.getBoundingClientRect();
    const dx = box.left + box.width / 2 - (map.left + map.width / 2);
    const dy = box.top + box.height / 2 - (map.top + map.height / 2);
    return Math.abs(dx) <= 2 && Math.abs(dy) <= 2;
}"""


def position(author: str, x: float, y: float, authid: str = "EPSG:4326") -> dict[str, Any]:
    """A position as the QField plugin sends it."""
    return {
        "type": "position",
        "author": author,
        "avatar": None,
        "crs_wkt": 'GEOGCRS["WGS 84",ID["EPSG",4326]]' if authid == "EPSG:4326" else "",
        "crs_authid": authid,
        "x": x,
        "y": y,
    }


async def test_positions_from_qfield_are_drawn_as_markers(
    server_factory: ServerFactory, pages: Pages
) -> None:
    server = quiet_server(server_factory)
    zone_name, zone = KATHMANDU
    page = await pages.open(server, locale="en-GB", timezone_id=zone_name)
    await join(page, "alice")
    async with channel_client(server) as field, channel_client(server) as surveyor:
        await field.register("fieldworker")
        await surveyor.register("surveyor")
        await field.send(position("fieldworker", 2.35, 48.85))
        echo = await field.expect("position", author="fieldworker")
        check_channel_frame(echo, POSITION_KEYS)
        at = datetime.fromtimestamp(echo["timestamp"], zone)

        # A marker labelled with the author and the server's time, brought into view.
        markers = page.locator(".leaflet-marker-pane .gc-position")
        await expect(markers).to_have_count(1)
        await expect(markers).to_have_text(f"fieldworker · {at:%H:%M}")
        await page.wait_for_function(MARKER_AT_CENTRE)
        entries = page.locator(".layer-list > li")
        await expect(entries).to_have_count(1)
        await expect(entries).to_contain_text("position of fieldworker")
        await expect(entries).to_contain_text(f"by fieldworker · 2.35, 48.85 at {at:%H:%M} · EPSG:4326")
        item = message_item(page, "fieldworker", "2.35, 48.85")
        await expect(item.locator(".tag")).to_have_text("position")
        await expect(item.locator("time")).to_have_attribute("datetime", iso(echo["timestamp"]))
        await markers.click()
        popup = page.locator(".leaflet-popup-content")
        await expect(popup).to_contain_text("position of fieldworker")
        await expect(popup).to_contain_text(f"{at.day} {at:%B} {at.year}")
        await expect(popup).to_contain_text("2.35, 48.85")
        await screenshot(page, "position-desktop.png")

        # The author moved: one marker, at the new place.
        await field.send(position("fieldworker", 2.36, 48.86))
        await field.expect("position", author="fieldworker", x=2.36)
        await expect(entries).to_have_count(1)
        await expect(entries).to_contain_text("2.36, 48.86")
        await expect(markers).to_have_count(1)
        await page.wait_for_function(MARKER_AT_CENTRE)

        # Another author in Web Mercator: a second marker; then in Lambert-93: listed, not drawn.
        await surveyor.send(position("surveyor", 261_000.0, 6_250_000.0, "EPSG:3857"))
        await expect(markers).to_have_count(2)
        await expect(markers.nth(1)).to_contain_text("surveyor")
        await surveyor.send(position("surveyor", 652_000.0, 6_862_000.0, "EPSG:2154"))
        await surveyor.expect("position", author="surveyor", crs_authid="EPSG:2154")
        await expect(entries.nth(1)).to_contain_text("EPSG:2154")
        await expect(entries.nth(1)).to_contain_text("not drawn")
        await expect(markers).to_have_count(1)
        await expect(page.locator("#log .tag", has_text="position")).to_have_count(4)

        # The log's button brings the current position back into view.
        await expect(popup).to_be_hidden()  # it went with the marker it belonged to
        await (
            message_item(page, "fieldworker", "2.36, 48.86").get_by_role("button", name="Show on map").click()
        )
        await page.wait_for_function(MARKER_AT_CENTRE)
    await say(page, "seen you both")
    pages.assert_clean()


def iso(timestamp: int) -> str:
    """A server timestamp as the page's `<time datetime>` writes it (JavaScript's toISOString)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


async def check_time(item: Locator, timestamp: int, zone: timezone, today: bool = True) -> None:
    """The message's `<time>`: the server's instant, the local time (the day too when it is not
    today's), the full date in its tooltip."""
    local = datetime.fromtimestamp(timestamp, zone)
    time = item.locator(".meta time")
    await expect(time).to_have_attribute("datetime", iso(timestamp))
    day = "" if today else rf"{local.day} \w+\.? "
    await expect(time).to_have_text(re.compile(rf"^{day}{local:%H:%M}$"))
    full = rf"\b{local:%A},? {local.day} {local:%B} {local.year}\b.*\b{local:%H:%M:%S}\b"
    await expect(time).to_have_attribute("title", re.compile(full))


async def test_messages_show_the_servers_time(server_factory: ServerFactory, pages: Pages) -> None:
    server = quiet_server(server_factory, max_stored_messages=5)
    zone_name, zone = KATHMANDU
    async with channel_client(server) as bob:
        await bob.register("qchat_bob")
        await bob.send(text("qchat_bob", "said before you came"))
        earlier = await bob.expect("text", author="qchat_bob")
        check_channel_frame(earlier, ["author", "avatar", "text"])

        # The replay keeps the time it was said at; the page's own message gets the server's.
        page = await pages.open(server, locale="en-GB", timezone_id=zone_name)
        await join(page, "alice")
        replayed = message_item(page, "qchat_bob", "said before you came")
        await check_time(replayed, earlier["timestamp"], zone)
        await say(page, "and now I am here")
        mine = await bob.expect("text", author="alice")
        check_channel_frame(mine, ["author", "avatar", "text"])
        await check_time(message_item(page, "alice", "and now I am here"), mine["timestamp"], zone)

        # A browser whose clock is days ahead still shows the server's times, with their day.
        ahead = await pages.open(server, locale="en-GB", timezone_id=zone_name)
        await ahead.clock.set_fixed_time(datetime.now(UTC) + timedelta(days=3))
        await join(ahead, "carol")
        await check_time(message_item(ahead, "alice", "and now I am here"), mine["timestamp"], zone, False)
        await bob.send(text("qchat_bob", "welcome carol"))
        welcome = await bob.expect("text", author="qchat_bob", text="welcome carol")
        await check_time(message_item(ahead, "qchat_bob", "welcome carol"), welcome["timestamp"], zone, False)
    pages.assert_clean()


# --- Models and scripts ----------------------------------------------------------------------


async def download(page: Page, button: Locator) -> tuple[str, bytes]:
    """Click a download button; the file's suggested name and its bytes."""
    async with page.expect_download() as started:
        await button.click()
    saved = await started.value
    assert await saved.failure() is None
    return saved.suggested_filename, await anyio.Path(await saved.path()).read_bytes()


async def test_models_and_scripts_are_offered_as_files(server_factory: ServerFactory, pages: Pages) -> None:
    server = quiet_server(server_factory, allow_scripts=True)
    page = await pages.open(server)
    await join(page, "alice")
    model_xml = (
        "<!DOCTYPE model>\n"
        '<Option type="Map"><Option name="model_name" type="QString" value="buffer &amp; clip"/>'
        '<img src=x onerror="window.pwned = 1"></Option>\n'
    )
    script_code = (
        "from qgis.core import QgsProcessingAlgorithm\n"
        "# <script>window.pwned = 2</script>\n"
        "import os\n"
        'os.system("echo déjà vu")\n'
    )
    async with channel_client(server) as bob:
        await bob.register("qchat_bob")
        await bob.send(
            {
                "type": "model",
                "author": "qchat_bob",
                "avatar": None,
                "model_name": "buffer and clip",
                "model_group": "survey",
                "raw_xml": model_xml,
            }
        )
        check_channel_frame(
            await bob.expect("model"), ["author", "avatar", "model_name", "model_group", "raw_xml"]
        )
        await bob.send(
            {
                "type": "script",
                "author": "qchat_bob",
                "avatar": None,
                "name": "<img src=x onerror='window.pwned = 3'>",
                "raw_pycode": script_code,
            }
        )
        check_channel_frame(await bob.expect("script"), ["author", "avatar", "name", "raw_pycode"])
        await bob.send(
            {
                "type": "script",
                "author": "qchat_bob",
                "avatar": None,
                "name": "tidy_layers.py",
                "raw_pycode": script_code,
            }
        )
        await bob.expect("script", name="tidy_layers.py")

    model = message_item(page, "qchat_bob", "buffer and clip.model3")
    await expect(model.locator(".tag")).to_have_text("model")
    await expect(model).to_contain_text("group survey")
    await expect(model.locator(".code-warning")).to_have_count(0)
    name, data = await download(page, model.get_by_role("button", name="Download buffer and clip.model3"))
    assert name == "buffer and clip.model3"
    assert data == model_xml.encode()

    hostile = message_item(page, "qchat_bob", "<img src=x onerror='window.pwned = 3'>.py")
    await expect(hostile.locator(".tag")).to_have_text("script")
    script = message_item(page, "qchat_bob", "tidy_layers.py")
    warning = script.locator(".code-warning")
    await expect(warning).to_be_visible()
    await expect(warning).to_contain_text("This is code.")
    await expect(warning).to_contain_text("This page never runs it.")
    name, data = await download(page, script.get_by_role("button", name="Download tidy_layers.py"))
    assert name == "tidy_layers.py"  # the extension is not doubled
    assert data == script_code.encode()
    await script.locator("summary").click()
    await expect(script.locator("pre")).to_be_visible()
    await expect(script.locator("pre")).to_have_js_property("textContent", script_code)
    name, data = await download(page, hostile.get_by_role("button", name=re.compile("^Download")))
    assert data == script_code.encode()
    await screenshot(page, "attachments-desktop.png")
    await say(page, "thanks for the tools")
    assert await page.locator("#log img, #log script, #log option").count() == 0
    assert await page.evaluate("window.pwned") is None
    pages.assert_clean()


# --- Replies ---------------------------------------------------------------------------------


async def test_replies_when_the_server_threads_them(server_factory: ServerFactory, pages: Pages) -> None:
    server = quiet_server(server_factory, reply_threads=True, max_stored_messages=1)
    alice = await pages.open(server)
    await join(alice, "alice")
    async with channel_client(server) as bob, ws_client(server) as tribu:
        await bob.register("qchat_bob")
        await tribu.register("qtribu_carl")
        await bob.send(text("qchat_bob", "Who has the survey layer for the north sector?"))
        question = await bob.expect("text", author="qchat_bob")
        asked = message_item(alice, "qchat_bob", "Who has the survey layer")
        bar = alice.locator("#reply-bar")
        await expect(bar).to_be_hidden()

        # Replying, then changing one's mind (the button, Escape): a plain message.
        await asked.get_by_role("button", name="Reply").click()
        await expect(bar).to_be_visible()
        await expect(bar).to_contain_text(
            "Replying to qchat_bob “Who has the survey layer for the north sector?”"
        )
        await expect(alice.locator("#message")).to_be_focused()
        await bar.get_by_role("button", name="Cancel the reply").click()
        await expect(bar).to_be_hidden()
        await asked.get_by_role("button", name="Reply").click()
        await alice.press("#message", "Escape")
        await expect(bar).to_be_hidden()
        await say(alice, "not me")
        plain = await bob.expect("text", author="alice")
        check_channel_frame(plain, ["author", "avatar", "text"])

        # The reply: sent with the id it answers, shown with a quote of it.
        await asked.get_by_role("button", name="Reply").click()
        await say(alice, "I do, sharing it now")
        answer = await bob.expect("text", author="alice", text="I do, sharing it now")
        check_channel_frame(answer, ["author", "avatar", "text", "in_reply_to_id"])
        assert answer["in_reply_to_id"] == question["id"]
        await expect(bar).to_be_hidden()
        # A 2.x client gets the message without the key.
        assert await tribu.expect("text", author="alice", text="I do, sharing it now") == {
            "type": "text",
            "author": "alice",
            "avatar": None,
            "text": "I do, sharing it now",
        }
        reply = message_item(alice, "alice", "I do, sharing it now")
        await expect(reply.locator(".reply-quote")).to_have_text(
            "↪ qchat_bob “Who has the survey layer for the north sector?”"
        )

        # A reply from QChat to the page's message; its quote brings the message into view.
        await bob.send({**text("qchat_bob", "great, thanks"), "in_reply_to_id": answer["id"]})
        thanks = message_item(alice, "qchat_bob", "great, thanks")
        await expect(thanks.locator(".reply-quote")).to_have_text("↪ alice “I do, sharing it now”")
        await thanks.locator(".reply-quote").click()
        await expect(reply).to_have_class(re.compile(r"\bflash\b"))

        # Likes between the dialects: the 3.x like has the same keys, with an id and a time.
        await bob.send(
            {"type": "like", "liker_author": "qchat_bob", "liked_author": "alice", "message": "not me"}
        )
        await expect(alice.locator("#log li.notice.liked")).to_contain_text("qchat_bob liked your message")
        await expect(message_item(alice, "alice", "not me").locator(".likes")).to_have_text("♥ 1")
        await thanks.get_by_role("button", name="Like").click()
        like = await bob.expect("like")
        check_channel_frame(like, ["liker_author", "liked_author", "message"])
        assert like["message"] == "great, thanks"
        await screenshot(alice, "replies-desktop.png")

        # Who joins later gets the last message only: a reply to something it never saw.
        late = await pages.open(server)
        await join(late, "dora")
        await expect(message_item(late, "qchat_bob", "great, thanks").locator(".reply-quote")).to_have_text(
            "↪ Reply to an earlier message"
        )
        await say(late, "hi all")
    pages.assert_clean()


# --- Reconnection ----------------------------------------------------------------------------


async def test_the_page_reconnects_after_a_server_restart(
    server_factory: ServerFactory, pages: Pages
) -> None:
    server = quiet_server(server_factory)
    page = await pages.open(server)
    await join(page, "alice")
    pages.allowed.append(WEBSOCKET_REFUSED)

    server.stop()
    await expect(page.locator("#log")).to_contain_text("Connection lost. Reconnecting…")
    await expect(page.locator("#connection")).to_contain_text("reconnecting")
    restarted = start_server(server.settings, port=server.port)
    try:
        await expect(page.locator("#log li.notice.ok")).to_have_text("Reconnected as alice.", timeout=15_000)
        await expect(page.locator("#connection")).to_have_text("connected")
        async with ws_client(restarted) as bob:
            await bob.register("qgis_bob")
            await bob.send({"type": "text", "author": "qgis_bob", "avatar": None, "text": "welcome back"})
            await expect(message_item(page, "qgis_bob", "welcome back")).to_be_visible()
            await expect(page.locator("#user-list")).to_contain_text("alice")
            await say(page, "thanks")
            assert (await bob.expect("text", author="alice"))["text"] == "thanks"
    finally:
        restarted.stop()
    pages.assert_clean()


async def test_the_about_page_loads_its_files_under_its_policy(
    server_factory: ServerFactory, browser: Browser
) -> None:
    server = quiet_server(server_factory)
    context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
        async with page.expect_response(lambda response: response.url.endswith("/static/about.js")) as script:
            await page.goto(f"{server.http_url}/about")
        assert (await script.value).status == 200
        count = page.locator("td.count").first
        await expect(count).to_have_css("text-align", "right")  # the stylesheet applied
        await expect(count).to_have_text("0")
        assert errors == []
    finally:
        await context.close()


# --- The Matrix bridge ------------------------------------------------------------------------


async def test_a_matrix_users_messages_carry_a_matrix_badge(
    server_factory: ServerFactory, pages: Pages, synapse: SynapseServer, matrix_users: MatrixUserFactory
) -> None:
    """A Matrix user's message, relayed by the bridge of a real Synapse, is marked as from Matrix;
    a gischat user's is not."""
    server = quiet_server(
        server_factory,
        matrix_homeserver_url=synapse.url,
        matrix_server_name=synapse.server_name,
        matrix_as_token=synapse.as_token,
        matrix_hs_token=synapse.hs_token,
        matrix_rooms=["QGIS"],
    )
    previous = synapse.relay.target
    synapse.serve_appservice_at(server.port)
    try:
        page = await pages.open(server)
        await join(page, "webber")
        matrix = await matrix_users("badge", "Badge Holder")
        room_id = await matrix.join(f"#gischat_qgis:{synapse.server_name}")
        await matrix.send_text(room_id, "a badge for Matrix")
        from_matrix = message_item(page, "Badge_Holder-matrix", "a badge for Matrix")
        await expect(from_matrix.locator(".badge.matrix")).to_have_text("Matrix")
        await say(page, "hello from the web")
        await expect(message_item(page, "webber", "hello from the web")).to_be_visible()
        await expect(message_item(page, "webber", "hello from the web").locator(".badge")).to_have_count(0)
    finally:
        synapse.serve_appservice_at(previous)
