"""Prometheus metrics of one gischat process.

Counters are bumped where things happen (a dictionary lookup and an addition: nothing on the
hot path allocates); everything that is a state rather than an event (sockets and users per
room, queue depths, work in flight) is read from the live objects only when Prometheus
scrapes, so an idle server does no metrics work at all. Each app has its own registry, so
tests can build many apps in one process, and every process of an instance exposes its own
numbers (Prometheus sums them across targets).

Label values come from fixed sets, never from what clients send: a refusal is counted under
the rule it broke (`text`, `author`, `slow down`, ...), not under its reason text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gischat.broker.base import Broker
    from gischat.rooms.hub import Hub
    from gischat.work.pool import Processor

MESSAGE_TYPES = (
    "text",
    "image",
    "geojson",
    "crs",
    "bbox",
    "newcomer",
    "like",
    "nb_users",
    "exiter",
    "uncompliant",
)
# What a refusal reason starts with, up to its first colon: the rule that was broken.
REFUSAL_KINDS = frozenset(
    {
        "author",
        "avatar",
        "bbox",
        "crs_authid",
        "crs_wkt",
        "geojson",
        "image_data",
        "layer_name",
        "liked_author",
        "liker_author",
        "message",
        "newcomer",
        "slow down",
        "server busy",
        "server error while handling this message; it was not delivered",
        "text",
        "type",
        "binary frames are not supported",
        "message is not valid JSON",
        "message must be a JSON object",
        "Too many geojson features ",
        "xmin",
        "xmax",
        "ymin",
        "ymax",
        # Fields of the 3.x dialect's own types and replies.
        "x",
        "y",
        "model_name",
        "model_group",
        "raw_xml",
        "name",
        "raw_pycode",
        "script",
        "in_reply_to_id",
    }
)
PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def refusal_kind(reason: str) -> str:
    """The bounded label a refusal reason is counted under."""
    head = reason.split(":", 1)[0]
    if head in REFUSAL_KINDS:
        return {"Too many geojson features ": "geojson"}.get(head, head)
    head = head.split(".", 1)[0]  # "features.3.geometry" style paths
    return head if head in REFUSAL_KINDS else "other"


class Metrics:
    """Every metric of one app, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.received = Counter(
            "gischat_messages_received",
            "Valid messages received from clients, by type",
            ["type"],
            registry=registry,
        )
        self.delivered = Counter(
            "gischat_messages_delivered",
            "Messages queued to sockets (one per recipient), by type",
            ["type"],
            registry=registry,
        )
        self.refusals = Counter(
            "gischat_refusals",
            "Messages refused with an uncompliant reply, by rule broken",
            ["kind"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "gischat_rate_limited",
            "Messages, handshakes and requests refused by a rate limit or quota, by limit",
            ["limit"],
            registry=registry,
        )
        self.dropped = Counter(
            "gischat_connections_dropped",
            "Websockets closed by the server, by cause (slow: could not keep up; abuse: flooding)",
            ["cause"],
            registry=registry,
        )
        self.bytes_received = Counter(
            "gischat_received_bytes", "Bytes of websocket messages received", registry=registry
        )
        self.bytes_sent = Counter(
            "gischat_sent_bytes", "Bytes of websocket messages queued to sockets", registry=registry
        )
        self.processing = Histogram(
            "gischat_processing_seconds",
            "Time to prepare an image or a layer in a worker process, queueing included",
            ["kind"],
            buckets=PROCESSING_BUCKETS,
            registry=registry,
        )
        for kind in MESSAGE_TYPES:  # every series exists from the start, at zero
            self.received.labels(kind)
            self.delivered.labels(kind)

    def sent(self, kind: str, size: int, recipients: int) -> None:
        """A message of type `kind` went to `recipients` queues, `size` bytes each."""
        self.delivered.labels(kind).inc(recipients)
        self.bytes_sent.inc(size * recipients)

    def watch(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Add values that are read from the live server at scrape time."""
        self.registry.register(_Live(collect))

    def refused(self, reason: str) -> None:
        self.refusals.labels(refusal_kind(reason)).inc()


class _Live(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def live_state(hub: Hub, processor: Processor) -> Callable[[], Iterable[Metric]]:
    """Gauges read from the rooms and the worker pool when Prometheus scrapes."""

    def collect() -> Iterable[Metric]:
        sockets = GaugeMetricFamily("gischat_websockets", "Open websockets, by room", labels=["room"])
        users = GaugeMetricFamily("gischat_users", "Registered nicknames, by room", labels=["room"])
        queued = GaugeMetricFamily(
            "gischat_send_queue_messages",
            "Messages waiting in sockets' outbound queues, by room",
            labels=["room"],
        )
        deepest = GaugeMetricFamily(
            "gischat_send_queue_max_messages",
            "Longest outbound queue of one socket, by room",
            labels=["room"],
        )
        for room in hub.rooms.values():
            depths = [conn.pending for conn in room.connections]
            sockets.add_metric([room.name], len(room.connections))
            users.add_metric([room.name], len(room.nicknames))
            queued.add_metric([room.name], sum(depths))
            deepest.add_metric([room.name], max(depths, default=0))
        yield from (sockets, users, queued, deepest)
        yield GaugeMetricFamily(
            "gischat_processing_jobs", "Images and layers queued or in work", value=processor.jobs_in_flight
        )
        yield GaugeMetricFamily(
            "gischat_processing_bytes",
            "Characters of images and layers queued or in work",
            value=processor.bytes_in_flight,
        )

    return collect


def broker_state(broker: Broker) -> Callable[[], Iterable[Metric]]:
    """Gauges of a shared broker (BROKER_URL=redis://...), read when Prometheus scrapes."""

    def collect() -> Iterable[Metric]:
        status = broker.status() or {}
        yield GaugeMetricFamily(
            "gischat_broker_up", "1 while this node is part of the shared service", value=int(broker.healthy)
        )
        yield GaugeMetricFamily(
            "gischat_broker_nodes",
            "Nodes this node sees in the shared service, itself included",
            value=int(status.get("nodes", 1)),
        )

    return collect
