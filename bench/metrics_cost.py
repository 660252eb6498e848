"""What Prometheus scraping costs the chat: the fan-out scenario with and without a scraper.

    pip install -e ".[test,bench]"
    python bench/metrics_cost.py            # 4 rounds each way, alternating (~1 minute)

One gischat process (relay limits lifted, as in bench/run.py) serves 100 clients while 4
of them flood the room (scenario 1 of bench/run.py). Rounds alternate between "quiet" and
"scraped": in a scraped round another task fetches GET /metrics back to back for the whole
round, far more often than any Prometheus would (one scrape every 15 s is usual). Printed:
the fan-out rate each way, how many scrapes a round saw, their latency, and the server CPU
time one scrape costs (measured apart, on the idle server holding the same 100 sockets).
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import uvloop
from harness import (
    HOST,
    OPTIONS,
    RELAY_ONLY,
    ROOM,
    Server,
    drop,
    joined_room,
    machine,
    percentile,
    raise_fd_limit,
    running,
)
from scenarios_fanout import FANOUT_CLIENTS, fanout_round

ROUNDS = 4
IDLE_SCRAPES = 300


async def scrape_until(server: Server, stop: asyncio.Event, latencies: list[float]) -> None:
    async with httpx.AsyncClient(timeout=5.0) as http:
        while not stop.is_set():
            started = time.perf_counter()
            response = await http.get(f"http://{HOST}:{server.port}/metrics")
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)


async def scraped_round(server: Server, latencies: list[float]) -> tuple[int, float]:
    stop = asyncio.Event()
    scraper = asyncio.create_task(scrape_until(server, stop, latencies))
    try:
        delivered, elapsed, *_ = await fanout_round(server)
    finally:
        stop.set()
        await scraper
    return delivered, elapsed


async def cpu_per_scrape(server: Server) -> float:
    """Server CPU seconds per scrape, with the fan-out room's 100 sockets open and idle."""
    tally, peers = await joined_room(server, ROOM, FANOUT_CLIENTS)
    del tally
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            before = server.cpu()
            for _ in range(IDLE_SCRAPES):
                (await http.get(f"http://{HOST}:{server.port}/metrics")).raise_for_status()
            return (server.cpu() - before) / IDLE_SCRAPES
    finally:
        drop(peers)
        await server.wait_count(ROOM, 0, 5.0)


async def main() -> int:
    raise_fd_limit(FANOUT_CLIENTS * 2 + 64)
    OPTIONS.gischat_env.update(RELAY_ONLY)
    quiet: list[float] = []
    scraped: list[float] = []
    latencies: list[float] = []
    scrapes: list[int] = []
    async with running("gischat", "metrics-cost") as server:
        for _ in range(ROUNDS):
            delivered, elapsed, *_ = await fanout_round(server)
            quiet.append(delivered / elapsed)
            before = len(latencies)
            delivered, elapsed = await scraped_round(server, latencies)
            scraped.append(delivered / elapsed)
            scrapes.append(len(latencies) - before)
        cost = await cpu_per_scrape(server)
    ratio = statistics.median(scraped) / statistics.median(quiet)
    print(f"machine: {machine()}")
    print("| metric | value |")
    print("| --- | ---: |")
    print(f"| fan-out deliveries/s, no scraping (median of {ROUNDS}) | {statistics.median(quiet):,.0f} |")
    print(
        f"| fan-out deliveries/s, scraped back to back (median of {ROUNDS}) | {statistics.median(scraped):,.0f} |"
    )
    print(f"| ratio | {ratio:.2f} |")
    print(f"| scrapes per round (median) | {statistics.median(scrapes):,.0f} |")
    print(
        f"| scrape latency p50 / p99 during the flood (ms) | {percentile(latencies, 50) * 1000:.1f} / "
        f"{percentile(latencies, 99) * 1000:.1f} |"
    )
    print(f"| server CPU per scrape, 100 sockets open (ms) | {cost * 1000:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(uvloop.run(main()))
