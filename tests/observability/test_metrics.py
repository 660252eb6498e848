"""GET /metrics: Prometheus text, the numbers it reports, and who may read it."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_delivery import small_window_client

from gischat.protocol.refusals import refusal_kind

from conftest import TIMEOUT, LiveServer, ServerFactory, text, ws_client
from wire import next_frame, refused, wait_type

pytestmark = pytest.mark.anyio


async def scrape(server: LiveServer, **kwargs: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=TIMEOUT, **kwargs) as http:  # type: ignore[arg-type]
        response = await http.get(f"{server.http_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("text: too long (300 characters, max 255)", "text"),
        ("slow down: more than 40 messages at once or 5 per second", "slow down"),
        ("geojson: not a valid FeatureCollection (features.3.geometry)", "geojson"),
        ("Too many geojson features : 600 vs max 500 allowed", "geojson"),
        ("type: unknown message type 'x'", "type"),
        ("features.3.geometry.coordinates: oops", "other"),
        ("<script>alert(1)</script>: anything a client wrote", "other"),
        ("message is not valid JSON", "message is not valid JSON"),
    ],
)
def test_refusal_labels_come_from_a_fixed_set(reason: str, kind: str) -> None:
    assert refusal_kind(reason) == kind


async def test_metrics_count_what_happens(server_factory: ServerFactory) -> None:
    server = server_factory(message_rate=0.01, message_burst=3, rate_strikes_per_minute=100)
    async with ws_client(server) as alice, ws_client(server) as bob, ws_client(server, "Living room"):
        await alice.register("alice")
        await alice.send(text("alice", "hello"))
        await wait_type(bob, "text", text="hello")
        await wait_type(alice, "text", text="hello")
        assert await refused(alice, "not json") == "message is not valid JSON"
        assert (await refused(alice, text("alice", "too fast"))).startswith("slow down")
        samples = await scrape(server)
    assert value(samples, "gischat_websockets", room="QGIS") == 2
    assert value(samples, "gischat_websockets", room="Living room") == 1
    assert value(samples, "gischat_users", room="QGIS") == 1
    assert value(samples, "gischat_messages_received_total", type="text") == 1
    assert value(samples, "gischat_messages_received_total", type="newcomer") == 1
    assert value(samples, "gischat_messages_delivered_total", type="text") == 2  # alice and bob
    assert value(samples, "gischat_refusals_total", kind="message is not valid JSON") == 1
    assert value(samples, "gischat_refusals_total", kind="slow down") == 1
    assert value(samples, "gischat_rate_limited_total", limit="messages") == 1
    assert value(samples, "gischat_received_bytes_total") > 0
    assert value(samples, "gischat_sent_bytes_total") > 0
    assert ("gischat_processing_jobs", ()) in samples
    assert value(samples, "gischat_loop_tasks") >= 2  # at least the two readers' receive loops


async def test_slow_clients_dropped_are_counted(server_factory: ServerFactory) -> None:
    server = server_factory(send_queue_size=4, max_message_length=60_000)
    async with small_window_client(server, "QGIS") as stalled, ws_client(server) as sender:
        stalled.ws.transport.pause_reading()  # stops reading for real, its window is tiny
        await sender.register("sender")
        padding = "x" * 50_000
        for index in range(400):
            await sender.send(text("sender", f"{index} {padding}"))
            if value(await scrape(server), "gischat_connections_dropped_total", cause="slow") == 1:
                break
        else:
            raise AssertionError("the stalled client was never dropped")
        await sender.send(text("sender", "still fine"))
        await wait_type(sender, "text", text="still fine")


async def test_metrics_are_refused_outside_the_listed_networks(server_factory: ServerFactory) -> None:
    server = server_factory(metrics_networks=["10.0.0.0/8"])
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(f"{server.http_url}/metrics")
        assert response.status_code == 403
        assert response.json() == {"detail": "metrics are not served to your network"}
        # Behind the trusted proxy (127.0.0.1) the real client address decides.
        inside = await http.get(f"{server.http_url}/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
        assert inside.status_code == 200


async def test_metrics_can_be_turned_off(server_factory: ServerFactory) -> None:
    server = server_factory(metrics_enabled=False)
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        assert (await http.get(f"{server.http_url}/metrics")).status_code == 404


async def test_scraping_during_a_chat_changes_nothing_for_the_chat(server: LiveServer) -> None:
    async with ws_client(server) as client:
        for index in range(20):
            await client.send(text("chatter", f"message {index}"))
            await scrape(server)
        for index in range(20):
            assert (await next_frame(client))["text"] == f"message {index}"
