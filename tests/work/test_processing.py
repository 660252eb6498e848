"""gischat.work.pool with a real process pool: results, refusals, budgets, crashes, recycling.

Slow jobs are big layers (validation time grows with their positions), never sleeps, and
nothing waits on a fixed delay except the loop-responsiveness measurement.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import psutil
import pytest
from PIL import Image

from gischat.protocol import geojson, parsing, refusals
from gischat.protocol import messages as models
from gischat.protocol.dialects import Post
from gischat.protocol.refusals import BUSY_REASON, CRASH_REASON, MEMORY_REASON
from gischat.settings import project
from gischat.work import heap, jobs
from gischat.work import pool as processing
from gischat.work.pool import PoolSettings, Prepared, Processor

from conftest import make_settings

pytestmark = pytest.mark.anyio

ProcessorFactory = Callable[..., Processor]
WIRE_KEYS = ["type", "author", "avatar", "layer_name", "crs_wkt", "crs_authid", "geojson", "style"]
# Processes that live as long as the test session: multiprocessing's own, and the Matrix bridge's
# homeserver (tests/synapse_homeserver.py), started once for the session by the first test needing it.
HELPER_PROCESSES = (
    "multiprocessing.forkserver",
    "multiprocessing.resource_tracker",
    "synapse.app.homeserver",
)


@pytest.fixture
async def processor_factory() -> AsyncIterator[ProcessorFactory]:
    """Processors with custom settings; all are stopped after the test."""
    started: list[Processor] = []

    def factory(**overrides: Any) -> Processor:
        settings = make_settings(**overrides)
        processor = Processor(project(PoolSettings, settings), project(models.Limits, settings))
        started.append(processor)
        return processor

    yield factory
    for processor in started:
        await processor.stop()


# --- messages ------------------------------------------------------------------------------------


def feature(geometry: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def point(x: float = 1.0, y: float = 2.0) -> dict[str, Any]:
    return feature({"type": "Point", "coordinates": [x, y]})


def multipoint(count: int) -> dict[str, Any]:
    return feature({"type": "MultiPoint", "coordinates": [[1, 2]] * count})


def layer(*features: dict[str, Any], author: str = "mapper") -> dict[str, Any]:
    return {
        "type": "geojson",
        "author": author,
        "avatar": None,
        "layer_name": "wells",
        "crs_wkt": "GEOGCRS[]",
        "crs_authid": "EPSG:4326",
        "geojson": {"type": "FeatureCollection", "features": list(features)},
    }


def frame(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


def slow_frame(positions: int = 600_000) -> str:
    """A valid layer that keeps a worker busy for a second or so."""
    return frame(layer(multipoint(positions)))


def photo_frame(size: tuple[int, int], author: str = "photographer") -> str:
    out = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(out, "JPEG", quality=95)
    data = base64.b64encode(out.getvalue()).decode()
    return frame({"type": "image", "author": author, "avatar": "cam.svg", "image_data": data})


async def refusal(job: Any) -> str:
    with pytest.raises(refusals.Uncompliant) as caught:
        await job
    return caught.value.reason


# --- results -------------------------------------------------------------------------------------


def wire(prepared: Prepared) -> str:
    """What a 2.x socket receives of a prepared message."""
    return Post(prepared.kind, prepared.body, prepared.style).room_text()


async def test_valid_layer_comes_back_as_the_models_wire(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory()
    text = frame(layer(point(), multipoint(3), point(5, 6), author="Jane-GIS"))
    prepared = await processor.process_frame(text)
    expected = parsing.parse_frame(text, models.Limits())
    assert isinstance(prepared, Prepared)
    assert (prepared.kind, prepared.author) == ("geojson", "Jane-GIS")
    assert wire(prepared) == expected.to_wire()
    assert list(orjson.loads(wire(prepared))) == WIRE_KEYS
    assert (processor.jobs_done, processor.jobs_in_flight, processor.bytes_in_flight) == (1, 0, 0)


async def test_parsed_layer_is_prepared_too(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory()
    message = parsing.parse_frame(frame(layer(point())), models.Limits())
    assert isinstance(message, models.GeojsonMessage)
    prepared = await processor.process_message(message)
    body, style = message.body()
    assert prepared == Prepared("geojson", "mapper", body, style)
    assert wire(prepared) == message.to_wire()


async def test_other_types_come_back_validated(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory(max_message_length=10)
    padded = {"type": "text", "author": "abc", "avatar": None, "text": "hi", "ignored": "x" * 100_000}
    message = await processor.process_frame(frame(padded))
    assert message == models.TextMessage(author="abc", text="hi")
    too_long = {**padded, "text": "y" * 11}
    assert await refusal(processor.process_frame(frame(too_long))) == "text: too long (11 characters, max 10)"
    assert await refusal(processor.process_frame("{" * 70_000)) == "message is not valid JSON"


# --- layer rules ---------------------------------------------------------------------------------


async def test_too_many_vertices_are_refused(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory(max_geojson_vertices=10)
    ring = [[0, 0], [1, 0], [1, 1], [0, 0]]
    polygon = feature({"type": "Polygon", "coordinates": [ring]})
    members = [
        {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
        {"type": "Point", "coordinates": [0, 0]},
    ]
    collection = feature({"type": "GeometryCollection", "geometries": members})
    fits = layer(polygon, collection, multipoint(3))  # 4 + 3 + 3 positions
    assert isinstance(await processor.process_frame(frame(fits)), Prepared)
    over = layer(polygon, collection, multipoint(4))
    reason = await refusal(processor.process_frame(frame(over)))
    assert reason == "geojson: too many vertices (11, max 10)"
    parsed = parsing.parse_frame(frame(over), models.Limits())
    assert isinstance(parsed, models.GeojsonMessage)
    assert await refusal(processor.process_message(parsed)) == reason


def test_vertices_are_counted_by_geometry_type() -> None:
    ring = [[0, 0], [1, 0], [1, 1], [0, 0]]
    geometries = [
        {"type": "Point", "coordinates": [1, 2]},
        {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
        {"type": "LineString", "coordinates": [[1, 2], [3, 4]]},
        {"type": "MultiLineString", "coordinates": [[[1, 2], [3, 4]], [[5, 6], [7, 8], [9, 9]]]},
        {"type": "Polygon", "coordinates": [ring, ring]},
        {"type": "MultiPolygon", "coordinates": [[ring], [ring, ring]]},
        {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 2]}]},
        None,
        {"type": "Circle", "coordinates": [[1, 2]]},
    ]
    counts = [geojson.count_vertices({"features": [feature(g)]}) for g in geometries]  # type: ignore[arg-type]
    assert counts == [1, 2, 2, 5, 8, 12, 1, 0, 0]


async def test_feature_count_reason_is_unchanged(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory()
    reason = await refusal(processor.process_frame(frame(layer(*[point()] * 600))))
    assert reason == "Too many geojson features : 600 vs max 500 allowed"


@pytest.mark.parametrize(
    "geometry",
    [
        {"type": "Point", "coordinates": [1]},
        {"type": "MultiPoint", "coordinates": [[1, 2], ["a", "b"]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]], 7]},
        {"type": "Circle", "radius": 3},
    ],
    ids=["short-point", "string-position", "unclosed-ring", "ring-not-a-list", "unknown-type"],
)
async def test_invalid_feature_reason_is_unchanged(
    processor_factory: ProcessorFactory, geometry: dict[str, Any]
) -> None:
    processor = processor_factory()
    bad = feature(geometry)
    with pytest.raises(refusals.Uncompliant) as local:
        geojson.check_feature(3, bad)
    reason = await refusal(processor.process_frame(frame(layer(point(), point(), point(), bad))))
    assert reason == local.value.reason
    assert reason.startswith("geojson: not a valid FeatureCollection (features.3")


def test_junk_positions_are_refused_at_the_cost_of_one() -> None:
    """pydantic would build five errors per junk position: over a minute for a million."""
    junk = feature({"type": "MultiPoint", "coordinates": [[1, 2]] * 1000 + [["a", "b"]] * 300_000})
    start = time.perf_counter()
    with pytest.raises(refusals.Uncompliant) as caught:
        geojson.check_feature(0, junk)
    assert time.perf_counter() - start < 3  # about 20 s without the screening
    assert caught.value.reason == (
        "geojson: not a valid FeatureCollection (features.0.geometry.MultiPoint.coordinates.1000.Position2D.0: "
        "must be a number)"
    )


# --- images --------------------------------------------------------------------------------------


def decoded(prepared: Prepared) -> Image.Image:
    message = orjson.loads(wire(prepared))
    assert list(message) == ["type", "author", "avatar", "image_data"]
    return Image.open(io.BytesIO(base64.b64decode(message["image_data"], validate=True)))


async def test_image_is_resized_in_the_worker(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory(max_image_size=100)
    prepared = await processor.process_frame(photo_frame((1200, 900)))
    assert isinstance(prepared, Prepared)
    assert (prepared.kind, prepared.author) == ("image", "photographer")
    assert orjson.loads(wire(prepared))["avatar"] == "cam.svg"
    assert (decoded(prepared).format, decoded(prepared).size) == ("JPEG", (100, 75))

    small = parsing.parse_frame(photo_frame((40, 20)), models.Limits())
    assert isinstance(small, models.ImageMessage)
    prepared = await processor.process_message(small)
    assert decoded(prepared).size == (40, 20)
    expected = small.model_copy(update={"image_data": orjson.loads(wire(prepared))["image_data"]})
    assert wire(prepared) == expected.to_wire()


async def test_image_refusals_keep_their_reasons(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory(max_image_pixels=1000)
    reason = await refusal(processor.process_frame(photo_frame((400, 300))))
    assert reason == "image_data: image too large (400x300 pixels, max 1000 pixels)"
    broken = models.ImageMessage(author="abc", image_data="not base64!")
    assert await refusal(processor.process_message(broken)) == "image_data: not valid base64"


async def test_main_heap_is_trimmed_after_large_jobs(
    processor_factory: ProcessorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heap, "TRIM_DELAY", 0.01)
    processor = processor_factory()
    before, due = heap._heap_trimmer.trims, heap._heap_trimmer.due
    await processor.process_frame(frame(layer(point())))
    assert heap._heap_trimmer.due == due  # small jobs ask for no trim
    big = layer(feature({"type": "Point", "coordinates": [1, 2]}, notes="x" * (jobs.LARGE_INPUT + 1)))
    await processor.process_frame(frame(big))
    await wait_until(lambda: heap._heap_trimmer.trims == before + 1)


async def test_heap_is_trimmed_once_large_buffers_stop_coming(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "TRIM_DELAY", 0.05)
    before = heap._heap_trimmer.trims
    for _ in range(5):  # a burst of large frames: one trim, after the last
        heap.trim_heap_soon()
        await asyncio.sleep(0.01)
    await wait_until(lambda: heap._heap_trimmer.trims == before + 1)
    await asyncio.sleep(0.1)
    assert heap._heap_trimmer.trims == before + 1


HEAP_PROBE = """
import os
from gischat.work.heap import keep_heap_warm, release_memory

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

warm = os.environ["WARM"] == "1"
assert keep_heap_warm() if warm else True
frames = [b"x" * 16 * 2**20 for _ in range(3)]  # written through: every page is in RSS
held = rss()
del frames
freed = rss()
release_memory()
print(held - freed, held - rss())
"""


@pytest.mark.parametrize("warm", [True, False])
def test_the_server_heap_keeps_large_buffers_pages_until_the_trim(warm: bool) -> None:
    """With `keep_heap_warm` (the server process), 48 MB of freed frames stay mapped for the next
    ones and the trim after a burst hands them back; glibc's defaults hand them back at once."""
    probe = subprocess.run(
        [sys.executable, "-c", HEAP_PROBE], env={**os.environ, "WARM": "1" if warm else "0"},
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    given_back_by_free, given_back_by_trim = (int(n) for n in probe.stdout.split())
    if warm:
        assert given_back_by_free < 8 * 2**20
        assert given_back_by_trim > 40 * 2**20
    else:
        assert given_back_by_free > 40 * 2**20


async def test_idle_workers_are_stopped_and_come_back(
    processor_factory: ProcessorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processing, "POOL_IDLE", 0.2)
    processor = processor_factory()
    await processor.process_frame(frame(layer(point())))
    workers = processor.worker_pids()
    assert workers
    await wait_until(lambda: processor.idle_stops == 1 and not processor.worker_pids())

    def gone(pid: int) -> bool:
        with contextlib.suppress(psutil.NoSuchProcess):
            return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        return True

    await wait_until(lambda: all(gone(pid) for pid in workers))
    assert isinstance(await processor.process_frame(frame(layer(point()))), Prepared)
    assert processor.worker_pids()


def test_memory_error_in_a_job_becomes_a_refusal() -> None:
    def greedy() -> jobs.Outcome:
        raise MemoryError

    assert jobs._guarded(0, greedy) == jobs.Refused(MEMORY_REASON)


# --- budget --------------------------------------------------------------------------------------


async def test_jobs_budget_refuses_then_recovers(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory(max_processing_jobs=1)
    slow = asyncio.create_task(processor.process_frame(slow_frame(300_000)))
    await asyncio.sleep(0)  # the first job takes its place in the budget
    assert processor.jobs_in_flight == 1
    assert await refusal(processor.process_frame(frame(layer(point())))) == BUSY_REASON
    assert isinstance(await slow, Prepared)
    assert (processor.jobs_in_flight, processor.bytes_in_flight) == (0, 0)
    assert isinstance(await processor.process_frame(frame(layer(point()))), Prepared)
    assert processor.busy_refusals == 1


async def test_bytes_budget_counts_queued_and_running_input(processor_factory: ProcessorFactory) -> None:
    text = slow_frame(40_000)
    processor = processor_factory(max_processing_bytes=len(text) + 1000)
    first = asyncio.create_task(processor.process_frame(text))
    await asyncio.sleep(0)
    assert processor.bytes_in_flight == len(text)
    assert await refusal(processor.process_frame(frame(layer(multipoint(1000))))) == BUSY_REASON
    assert isinstance(await processor.process_frame(frame(layer(point()))), Prepared)  # still fits
    assert isinstance(await first, Prepared)
    assert processor.bytes_in_flight == 0


async def test_budget_is_held_until_the_worker_is_done(processor_factory: ProcessorFactory) -> None:
    """A sender who gives up (its task cancelled) does not free room while its job runs."""
    processor = processor_factory(max_processing_jobs=1, processing_workers=1)
    await processor.process_frame(frame(layer(point())))  # the pool is up
    job = asyncio.create_task(processor.process_frame(slow_frame(300_000)))
    await asyncio.sleep(0.05)
    job.cancel()
    assert await refusal(processor.process_frame(frame(layer(point())))) == BUSY_REASON
    await wait_until(lambda: processor.jobs_in_flight == 0)
    assert isinstance(await processor.process_frame(frame(layer(point()))), Prepared)


# --- workers -------------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def test_killed_worker_costs_its_job_only(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory(processing_workers=1)
    await processor.process_frame(frame(layer(point())))
    [pid] = processor.worker_pids()
    idle = cpu_seconds(pid)
    job = asyncio.create_task(processor.process_frame(slow_frame()))
    await wait_until(lambda: cpu_seconds(pid) > idle + 0.05)  # the worker is on it
    os.kill(pid, signal.SIGKILL)
    assert await refusal(job) == CRASH_REASON
    assert isinstance(await processor.process_frame(frame(layer(point()))), Prepared)
    assert processor.worker_pids() != [pid]
    assert (processor.crashed_jobs, processor.pool_restarts, processor.jobs_in_flight) == (1, 1, 0)


async def test_workers_ignore_ctrl_c(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory(processing_workers=1)
    await processor.process_frame(frame(layer(point())))
    [pid] = processor.worker_pids()
    os.kill(pid, signal.SIGINT)
    assert isinstance(await processor.process_frame(frame(layer(point()))), Prepared)
    assert processor.worker_pids() == [pid]


async def test_workers_are_recycled_after_max_tasks(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory(processing_workers=1, processing_worker_max_tasks=2)
    await processor.process_frame(frame(layer(point())))
    [first] = processor.worker_pids()
    await processor.process_frame(frame(layer(point())))  # its last job
    await processor.process_frame(frame(layer(point())))
    await wait_until(lambda: not psutil.pid_exists(first))
    [second] = processor.worker_pids()
    assert second != first
    assert processor.pool_restarts == 0  # recycling is not a crash


async def test_stop_leaves_no_worker_behind(processor_factory: ProcessorFactory) -> None:
    processor = processor_factory(processing_workers=2)
    await asyncio.gather(*(processor.process_frame(frame(layer(point()))) for _ in range(4)))
    pids = processor.worker_pids()
    assert len(pids) == 2
    running = asyncio.create_task(processor.process_frame(slow_frame()))
    await asyncio.sleep(0.05)
    await processor.stop()
    assert await refusal(running) == CRASH_REASON
    for pid in pids:
        assert not psutil.pid_exists(pid)
    for child in psutil.Process().children(recursive=True):
        # The forkserver and multiprocessing's resource tracker live as long as this process.
        assert any(helper in " ".join(child.cmdline()) for helper in HELPER_PROCESSES), child
    assert await refusal(processor.process_frame(frame(layer(point())))) == CRASH_REASON


# --- the event loop ------------------------------------------------------------------------------


async def test_event_loop_keeps_ticking_while_a_huge_layer_is_processed(
    processor_factory: ProcessorFactory,
) -> None:
    """A 12 MB MultiPoint of 2 million positions: the loop only hands text over and back."""
    processor = processor_factory(max_geojson_vertices=3_000_000, processing_workers=1)
    await processor.process_frame(frame(layer(point())))  # pool started: measure the job alone
    text = frame(layer(multipoint(2_000_000)))
    assert 11_000_000 < len(text) < 13_000_000
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    start = time.perf_counter()
    prepared = await processor.process_frame(text)
    elapsed = time.perf_counter() - start
    ticking.cancel()
    assert isinstance(prepared, Prepared)
    assert len(wire(prepared)) == len(text) + len(',"style":null')
    print(f"layer processed in {elapsed:.2f}s, {len(gaps)} ticks, largest loop gap {max(gaps) * 1000:.1f} ms")
    assert max(gaps) < 0.2
