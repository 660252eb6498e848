"""Gauges read from the live rooms, the worker pool and the broker when Prometheus scrapes.

They walk the objects of the parts below (rooms, work, broker), so they live here, where those
parts are put together, and the metrics registry itself knows none of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gischat.broker.base import Membership
from gischat.rooms.hub import Hub
from gischat.work.pool import Processor


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
            depths = [conn.pending for conn in room.members]
            sockets.add_metric([room.name], len(room))
            users.add_metric([room.name], len(room.nicknames()))
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
        yield GaugeMetricFamily(
            "gischat_loop_tasks", "Tasks of the event loop, running or waiting", value=_tasks()
        )

    return collect


def _tasks() -> int:
    """The loop's tasks (a soak watches them come back to where they were); 0 off the loop."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped from a thread with no running loop
        return 0


def broker_state(broker: Membership) -> Callable[[], Iterable[Metric]]:
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
        # Redis away: this node's users' messages kept for its return, and those the bounds dropped.
        yield GaugeMetricFamily(
            "gischat_broker_outage_kept",
            "Messages kept while Redis is away, to publish when it is back",
            value=int(status.get("kept", 0)),
        )
        yield CounterMetricFamily(
            "gischat_broker_outage_dropped",
            "Messages sent while Redis was away that OUTAGE_BUFFER_MESSAGES or OUTAGE_BUFFER_SECONDS dropped",
            value=int(status.get("dropped", 0)),
        )

    return collect
