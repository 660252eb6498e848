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

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gischat.protocol.refusals import refusal_kind

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
# What a moderator can do (gischat.moderation), each counted apart.
MODERATION_ACTIONS = ("kick", "ban", "lift", "delete", "announce")
PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
            "Websockets closed by the server, by cause (slow: could not keep up; abuse: flooding; "
            "moderator: kicked or banned; invalid_text: a large text message that was not UTF-8)",
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
        self.moderation = Counter(
            "gischat_moderation_actions",
            "Moderators' actions carried out by this process's routes, by action",
            ["action"],
            registry=registry,
        )
        for action in MODERATION_ACTIONS:
            self.moderation.labels(action)
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
