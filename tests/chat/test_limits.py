"""Rate limits, per-address quotas and origins: refusals, their wording, and bystanders unharmed.

Different client addresses are distinct loopback sources (127.0.0.2, 127.0.0.3, ...);
127.0.0.1 is the trusted proxy of the default FORWARDED_ALLOW_IPS.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from test_images import b64, photo
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gischat.limits import AddressBook, Rate, Rates, RateSettings, TokenBucket
from gischat.observability.logs import LINES_PER_CONNECTION, RefusalLog
from gischat.settings import Settings, project

from conftest import TIMEOUT, Client, LiveServer, ServerFactory, closing, text, wait_for, ws_client
from wire import next_frame, wait_type

pytestmark = pytest.mark.anyio

ATTACKER = "127.0.0.2"
BYSTANDER = "127.0.0.3"


def source(address: str) -> dict[str, Any]:
    return {"local_addr": (address, 0)}


async def echo(client: Client, author: str, body: str) -> None:
    await client.send(text(author, body))
    await wait_type(client, "text", author=author, text=body)


# Buckets and books, with a clock the test turns.


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_bursts_then_refills() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)  # 0.8 of a token
    assert bucket.take(0.5)  # one whole token back
    assert bucket.take(10.0)
    assert bucket.take(10.0)
    assert bucket.take(10.0)
    assert not bucket.take(10.0)


def test_token_bucket_takes_amounts_and_zero_rate_is_unlimited() -> None:
    bucket = TokenBucket(rate=100.0, burst=1000, now=0.0)
    assert bucket.take(0.0, 900)
    assert not bucket.take(0.0, 200)  # a refusal spends nothing
    assert bucket.take(0.0, 100)
    unlimited = TokenBucket(rate=0.0, burst=1, now=0.0)
    assert all(unlimited.take(0.0, 10**9) for _ in range(100))


def test_rate_reasons_name_the_limit() -> None:
    assert Rate(5.0, 40, "messages").reason() == "slow down: more than 40 messages at once or 5 per second"
    rates = Rates.from_settings(project(RateSettings, Settings(_env_file=None, images_per_minute=12)))
    assert rates.images.reason() == "slow down: more than 12 images at once or 12 per minute"


def test_address_book_forgets_addresses_once_they_hold_nothing() -> None:
    clock = FakeClock()
    rates = Rates.from_settings(project(RateSettings, Settings(_env_file=None, put_rate=1.0, put_burst=2)))
    book = AddressBook(rates, clock)
    assert book.open_websocket("a", 2)
    assert book.open_websocket("a", 2)
    assert not book.open_websocket("a", 2)
    assert book.open_websocket("b", 2)
    book.close_websocket("a")
    assert book.open_websocket("a", 2)
    for address in ("a", "a", "b"):
        book.close_websocket(address)
    assert book.websockets == {}
    assert book.may_put("x")
    assert book.may_put("x")
    assert not book.may_put("x")
    clock.now += 1.0
    assert book.may_put("x")


def test_refusal_log_lets_a_few_lines_per_connection_through(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(logging.getLogger("gischat.test"), rate=1000)
    with caplog.at_level(logging.INFO, logger="gischat.test"):
        for seen in range(1, 501):
            log.refused("127.0.0.2:5000", "QGIS", "slow down: more than 40 messages", seen)
        log.flush()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == LINES_PER_CONNECTION + 1
    assert lines[-1] == "497 refusals not logged in the last 10 s (slow down x497)"


def test_refusal_log_has_a_global_budget(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(logging.getLogger("gischat.test"), rate=2)
    with caplog.at_level(logging.INFO, logger="gischat.test"):
        for peer in range(1000):  # a thousand connections, one refusal each
            log.refused(f"127.0.0.2:{peer}", "QGIS", "message is not valid JSON", 1)
    assert len(caplog.records) <= 7


# Per-connection rates, on a live server.


async def test_message_flood_is_slowed_down_and_the_room_sees_only_the_allowed_rate(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(message_rate=0.01, message_burst=5, rate_strikes_per_minute=1000)
    async with (
        ws_client(server, **source(ATTACKER)) as flooder,
        ws_client(server, **source(BYSTANDER)) as other,
    ):
        for index in range(8):
            await flooder.send(text("flooder", f"spam {index}"))
        reasons = []
        for _ in range(8):
            frame = await next_frame(flooder)
            if frame["type"] == "uncompliant":
                reasons.append(frame["reason"])
        assert reasons == ["slow down: more than 5 messages at once or 0.6 per minute"] * 3
        await other.send(text("bystander", "still here"))
        # The bystander saw the five allowed messages, then its own, nothing else.
        seen = [(await next_frame(other))["text"] for _ in range(6)]
        assert seen == [f"spam {index}" for index in range(5)] + ["still here"]


async def test_sustained_flooding_closes_the_connection(server_factory: ServerFactory) -> None:
    server = server_factory(message_rate=0.01, message_burst=2, rate_strikes_per_minute=3)
    async with (
        ws_client(server, **source(ATTACKER)) as flooder,
        ws_client(server, **source(BYSTANDER)) as other,
    ):
        for index in range(10):
            try:
                await flooder.send(text("flooder", f"spam {index}"))
            except ConnectionClosed:
                break
        closed = await closing(flooder)
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1008
        assert closed.rcvd.reason == "too many messages refused for going too fast"
        await echo(other, "bystander", "unharmed")


async def test_byte_rate_refuses_large_frames_past_the_burst(server_factory: ServerFactory) -> None:
    server = server_factory(max_frame_size=2048, byte_rate=1, byte_burst=4096)
    async with ws_client(server, **source(ATTACKER)) as client:
        body = "x" * 200
        padded = {**text("sender", body), "padding": "p" * 1500}
        reasons = []
        for _ in range(3):
            await client.send(padded)
            frame = await next_frame(client)
            reasons.append(frame.get("reason", frame["type"]))
        assert reasons == ["text", "text", "slow down: more than 4096 bytes at once or 1 per second"]


async def test_images_and_layers_have_their_own_rates(server_factory: ServerFactory) -> None:
    server = server_factory(images_per_minute=1, layers_per_minute=1)
    layer = {"type": "FeatureCollection", "features": []}
    geojson = {
        "type": "geojson",
        "author": "mapper",
        "avatar": None,
        "layer_name": "l",
        "crs_wkt": "w",
        "crs_authid": "EPSG:4326",
        "geojson": layer,
    }
    image = {"type": "image", "author": "mapper", "avatar": None, "image_data": b64(photo((32, 32)))}
    async with ws_client(server, **source(ATTACKER)) as client:
        await client.send(image)
        assert (await next_frame(client))["type"] == "image"
        await client.send(geojson)
        assert (await next_frame(client))["type"] == "geojson"
        await client.send(image)
        assert (await next_frame(client))["reason"] == "slow down: more than 1 images at once or 1 per minute"
        await client.send(geojson)
        assert (await next_frame(client))["reason"] == "slow down: more than 1 layers at once or 1 per minute"
        await echo(client, "mapper", "texts still go through")


async def test_limits_reset_after_a_pause(server_factory: ServerFactory) -> None:
    server = server_factory(message_rate=20, message_burst=1, rate_strikes_per_minute=1000)
    async with ws_client(server, **source(ATTACKER)) as client:
        await client.send(text("sender", "one"))
        await client.send(text("sender", "two"))
        assert (await next_frame(client))["text"] == "one"
        assert (await next_frame(client))["type"] == "uncompliant"

        async def accepted_again() -> bool:
            await client.send(text("sender", "again"))
            return bool((await next_frame(client))["type"] == "text")

        await wait_for(accepted_again)


async def test_default_limits_never_bother_a_person(server_factory: ServerFactory) -> None:
    """Production defaults: a QGIS user joins, chats, shares a screenshot and two layers."""
    server = server_factory(**Settings(_env_file=None).model_dump(include=LIMIT_FIELDS))
    layer = {
        "type": "geojson",
        "author": "Jane-GIS",
        "avatar": None,
        "layer_name": "wells",
        "crs_wkt": "w",
        "crs_authid": "EPSG:4326",
        "geojson": {"type": "FeatureCollection", "features": []},
    }
    async with ws_client(server, **source(ATTACKER)) as client:
        await client.register("Jane-GIS")
        for index in range(25):  # a lively exchange, typed quickly
            await echo(client, "Jane-GIS", f"message {index}")
        await client.send(
            {"type": "image", "author": "Jane-GIS", "avatar": None, "image_data": b64(photo((640, 480)))}
        )
        await wait_type(client, "image", author="Jane-GIS")
        for _ in range(2):
            await client.send(layer)
            await wait_type(client, "geojson", author="Jane-GIS")


LIMIT_FIELDS = {
    "max_websockets_per_ip",
    "max_nicknames_per_ip",
    "registrations_per_minute",
    "message_rate",
    "message_burst",
    "byte_rate",
    "byte_burst",
    "images_per_minute",
    "layers_per_minute",
    "put_rate",
    "put_burst",
}


# Per-address quotas.


async def test_websockets_per_address_are_capped_with_a_429(server_factory: ServerFactory) -> None:
    server = server_factory(max_websockets_per_ip=2)
    async with ws_client(server, **source(ATTACKER)) as first, ws_client(server, **source(ATTACKER)):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url("QGIS"), open_timeout=TIMEOUT, **source(ATTACKER)):
                pass
        response = refused.value.response
        assert response.status_code == 429
        assert response.body is not None
        assert b'"detail":"too many connections from your address (max 2)"' in response.body
        async with ws_client(server, **source(BYSTANDER)) as other:
            await echo(other, "bystander", "my address is fine")
        await first.close()

        async def accepted() -> bool:
            try:
                async with connect(server.ws_url("QGIS"), open_timeout=TIMEOUT, **source(ATTACKER)):
                    return True
            except InvalidStatus:
                return False

        await wait_for(accepted)  # the slot is freed once the server saw the close


async def test_the_real_client_address_comes_from_a_trusted_proxy(server_factory: ServerFactory) -> None:
    server = server_factory(max_websockets_per_ip=1)
    behind: dict[str, Any] = {"additional_headers": {"X-Forwarded-For": "198.51.100.7"}}
    async with ws_client(server, **behind):  # through the trusted proxy 127.0.0.1
        with pytest.raises(InvalidStatus):
            async with connect(server.ws_url("QGIS"), open_timeout=TIMEOUT, **behind):
                pass
        other: dict[str, Any] = {"additional_headers": {"X-Forwarded-For": "198.51.100.8"}}
        async with ws_client(server, **other) as client:
            await echo(client, "someone", "different address, own quota")


async def test_forwarded_headers_from_untrusted_peers_are_ignored(server_factory: ServerFactory) -> None:
    server = server_factory(max_websockets_per_ip=1)
    async with ws_client(server, **source(ATTACKER)):
        spoofed: dict[str, Any] = {
            "additional_headers": {"X-Forwarded-For": "198.51.100.9"},
            **source(ATTACKER),
        }
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url("QGIS"), open_timeout=TIMEOUT, **spoofed):
                pass
        assert refused.value.response.status_code == 429


async def test_nicknames_per_address_are_capped(server_factory: ServerFactory) -> None:
    server = server_factory(max_nicknames_per_ip=1)
    first_socket = ws_client(server, **source(ATTACKER))
    async with first_socket as first, ws_client(server, "Living room", **source(ATTACKER)) as second:
        await first.register("first-name")
        await second.send({"type": "newcomer", "newcomer": "second-name"})
        frame = await next_frame(second)
        assert frame == {
            "type": "uncompliant",
            "reason": "newcomer: too many nicknames registered from your address (max 1)",
        }
        async with ws_client(server, **source(BYSTANDER)) as other:
            await other.register("bystander")
        await first.close()

        async def registered() -> bool:
            await second.send({"type": "newcomer", "newcomer": "second-name"})
            return bool((await next_frame(second))["type"] == "newcomer")

        await wait_for(registered)


async def test_registrations_per_address_are_rate_limited(server_factory: ServerFactory) -> None:
    server = server_factory(registrations_per_minute=2)
    for index in range(2):
        async with ws_client(server, **source(ATTACKER)) as client:
            await client.register(f"name-{index}")
    async with ws_client(server, **source(ATTACKER)) as client:
        await client.send({"type": "newcomer", "newcomer": "name-2"})
        frame = await next_frame(client)
        assert frame["reason"] == "slow down: more than 2 nickname registrations at once or 2 per minute"
    async with ws_client(server, **source(BYSTANDER)) as other:
        await other.register("bystander")


async def test_put_is_rate_limited_per_address(server_factory: ServerFactory) -> None:
    server = server_factory(put_rate=0.01, put_burst=2)
    url = f"{server.http_url}/room/QGIS/text"
    body = text("curl-bot", "deploy")
    transport = httpx.AsyncHTTPTransport(local_address=ATTACKER)
    async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as attacker:
        statuses = [(await attacker.put(url, json=body)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = await attacker.put(url, json=body)
        assert refused.headers["retry-after"] == "1"
        assert refused.json() == {"detail": "slow down: more than 2 messages at once or 0.6 per minute"}
    other = httpx.AsyncHTTPTransport(local_address=BYSTANDER)
    async with httpx.AsyncClient(transport=other, timeout=TIMEOUT) as bystander:
        assert (await bystander.put(url, json=body)).status_code == 200


# Origins.


async def test_foreign_origins_are_refused_with_403(server: LiveServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.ws_url("QGIS"), origin="https://evil.example", open_timeout=TIMEOUT):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    assert refused.value.response.body is not None
    assert b"origin not allowed" in refused.value.response.body
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.put(
            f"{server.http_url}/room/QGIS/text",
            json=text("page", "hi"),
            headers={"Origin": "https://evil.example"},
        )
    assert response.status_code == 403
    assert response.json() == {"detail": "origin not allowed: this page may not open a chat on this server"}


@pytest.mark.parametrize(
    ("allowed", "origin"),
    [
        ([], None),  # QGIS, curl, scripts
        ([], "http://127.0.0.1:{port}"),  # the instance's own pages
        (["https://maps.example.org"], "https://maps.example.org"),
        (["*"], "https://anywhere.example"),
    ],
)
async def test_allowed_origins(server_factory: ServerFactory, allowed: list[str], origin: str | None) -> None:
    server = server_factory(allowed_origins=allowed)
    kwargs: dict[str, Any] = {} if origin is None else {"origin": origin.format(port=server.port)}
    async with ws_client(server, **kwargs) as client:
        await echo(client, "visitor", "let in")


def test_allowed_origins_setting_is_parsed_and_checked() -> None:
    settings = Settings(_env_file=None, allowed_origins="https://A.example/, https://b.example")
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]
    with pytest.raises(ValueError, match="not an origin"):
        Settings(_env_file=None, allowed_origins="evil.example")


async def test_rate_limits_are_per_connection(server_factory: ServerFactory) -> None:
    """Two sockets of one person each get the full burst: limits follow the socket."""
    server = server_factory(message_rate=0.01, message_burst=3, rate_strikes_per_minute=1000)
    async with ws_client(server, **source(ATTACKER)) as one, ws_client(server, **source(ATTACKER)) as two:
        for index in range(3):
            await echo(one, "person", f"one {index}")
        for index in range(3):
            await echo(two, "person", f"two {index}")
        await two.send(text("person", "two 3"))
        assert (await next_frame(two))["type"] == "uncompliant"
