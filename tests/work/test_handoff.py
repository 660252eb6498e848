"""Large frames handed to a worker as a file in /dev/shm (`gischat.work.handoff`), with real workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from gischat.protocol import messages as models
from gischat.protocol.dialects import Dialect
from gischat.protocol.refusals import InvalidText, Uncompliant
from gischat.settings import project
from gischat.work import handoff, jobs
from gischat.work.pool import PoolSettings, Prepared, Processor

from conftest import make_settings

pytestmark = pytest.mark.anyio


def our_files() -> set[str]:
    return {path.name for path in handoff.SHARED_DIR.glob(f"{handoff.PREFIX}{os.getpid()}-*")}


def big_layer(positions: int, author: str = "mapper") -> str:
    """A layer frame above HANDOFF_MIN, with non-ASCII text so that bytes and characters differ."""
    geometry = {"type": "MultiPoint", "coordinates": [[1.5, -2.25]] * positions}
    return orjson.dumps(
        {
            "type": "geojson",
            "author": author,
            "avatar": None,
            "layer_name": "forages é 井",
            "crs_wkt": "GEOGCRS[]",
            "crs_authid": "EPSG:4326",
            "geojson": {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "geometry": geometry, "properties": {"nom": "Sète"}}],
            },
        }
    ).decode()


@pytest.fixture
async def processor() -> AsyncIterator[Processor]:
    settings = make_settings(max_geojson_vertices=200_000)
    started = Processor(project(PoolSettings, settings), project(models.Limits, settings))
    yield started
    await started.stop()


async def test_a_parcel_holds_the_frame_as_utf8_until_discarded() -> None:
    text = "é" * 10 + "[1,2]" + "井" * handoff.PIECE  # more than one piece
    parcel = await handoff.pack(text)
    assert parcel is not None
    assert Path(parcel.path).parent == handoff.SHARED_DIR
    assert oct(os.stat(parcel.path).st_mode & 0o777) == "0o600"
    assert parcel.read() == text.encode()
    parcel.discard()
    parcel.discard()  # twice is harmless
    assert parcel.path not in {str(path) for path in handoff.SHARED_DIR.glob(f"{handoff.PREFIX}*")}


async def test_without_a_usable_directory_frames_go_through_the_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handoff, "SHARED_DIR", Path("/nonexistent-gischat-dir"))
    assert await handoff.pack("x" * 10) is None


def test_files_of_dead_servers_are_swept_and_live_ones_kept() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_file = handoff.SHARED_DIR / f"{handoff.PREFIX}{dead.stdout.strip()}-0"
    live_file = handoff.SHARED_DIR / f"{handoff.PREFIX}{os.getpid()}-in-use"
    dead_file.write_bytes(b"left behind")
    live_file.write_bytes(b"still in use")
    try:
        assert handoff.sweep() >= 1
        assert not dead_file.exists()
        assert live_file.exists()
    finally:
        live_file.unlink()


async def test_a_parcel_removed_behind_the_servers_back_is_refused_in_words() -> None:
    parcel = await handoff.pack(big_layer(10))
    assert parcel is not None
    parcel.discard()
    rules = jobs.Rules(models.Limits(), 1024, 1_000_000)
    assert jobs.run_parcel(parcel, rules, Dialect.ROOM) == jobs.Refused(jobs.HANDOFF_REASON)


async def test_a_large_layer_is_prepared_from_its_file_and_the_file_removed(processor: Processor) -> None:
    text = big_layer(100_000)
    assert len(text) >= handoff.HANDOFF_MIN
    before = our_files()
    prepared = await processor.process_frame(text)
    assert isinstance(prepared, Prepared)
    assert "forages é 井" in prepared.body
    assert "Sète" in prepared.body
    assert our_files() == before


async def test_a_cancelled_pack_leaves_no_file() -> None:
    before = our_files()
    packing = asyncio.ensure_future(handoff.pack("x" * handoff.PIECE * 4))
    await asyncio.sleep(0)  # the first piece is written
    assert our_files() != before
    packing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await packing
    assert our_files() == before


async def test_a_large_layer_over_the_budget_is_refused_as_it_is_written_without_a_worker(
    processor: Processor,
) -> None:
    before = our_files()
    text = big_layer(300_000)
    with pytest.raises(Uncompliant) as refused:
        await processor.process_frame(text)
    # Refused on the loop a piece after the budget was passed, not after counting all 300,000.
    counted = int(refused.value.reason.split("at least ")[1].split(",")[0])
    assert 200_000 < counted < 300_000
    assert refused.value.reason == f"geojson: too many vertices (at least {counted}, max 200000)"
    assert processor.worker_pids() == []
    assert our_files() == before
    assert (processor.jobs_in_flight, processor.bytes_in_flight) == (0, 0)


async def test_a_large_layer_over_the_budget_through_the_pipe_is_counted_by_the_worker(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handoff, "SHARED_DIR", Path("/nonexistent-gischat-test"))
    with pytest.raises(Uncompliant) as refused:
        await processor.process_frame(big_layer(300_000))
    assert refused.value.reason == "geojson: too many vertices (300000, max 200000)"
    assert processor.worker_pids() != []


async def test_a_message_given_as_bytes_is_written_as_is_its_utf8_checked_across_pieces() -> None:
    text = "a" * (handoff.PIECE - 1) + "井" + "é" * handoff.PIECE  # a character cut by the piece
    parcel = await handoff.pack(text.encode())
    assert parcel is not None
    try:
        assert parcel.read() == text.encode()
    finally:
        parcel.discard()


@pytest.mark.parametrize(
    ("data", "position"),
    [
        (b"a" * (handoff.PIECE + 10) + b"\xff" + b"a" * 10, handoff.PIECE + 10),  # in the second piece
        (b"a" * (handoff.PIECE - 1) + b"\xe4\xba" + b"a" * 100, handoff.PIECE - 1),  # cut, then no end
        (b"a" * handoff.PIECE * 2 + b"\xe4\xba", handoff.PIECE * 2),  # unfinished at the very end
    ],
)
async def test_bytes_that_are_not_utf8_are_refused_where_they_break_and_no_file_is_left(
    data: bytes, position: int
) -> None:
    before = our_files()
    with pytest.raises(InvalidText) as refused:
        await handoff.pack(data)
    assert refused.value.reason == f"invalid UTF-8 in a text message at byte {position}"
    assert our_files() == before


async def test_a_large_layer_given_as_bytes_is_prepared_and_checked_on_the_way(processor: Processor) -> None:
    prepared = await processor.process_frame(big_layer(100_000).encode())
    assert isinstance(prepared, Prepared)
    assert "forages é 井" in prepared.body
    with pytest.raises(InvalidText):
        await processor.process_frame(big_layer(100_000).encode()[:-3] + b"\xc3}")
    assert (processor.jobs_in_flight, processor.bytes_in_flight) == (0, 0)


async def test_without_a_file_bytes_are_decoded_on_the_loop_and_go_through_the_pipe(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handoff, "SHARED_DIR", Path("/nonexistent-gischat-test"))
    prepared = await processor.process_frame(big_layer(100_000).encode())
    assert isinstance(prepared, Prepared)
    assert "Sète" in prepared.body
    with pytest.raises(InvalidText):
        await processor.process_frame(b"\xff" + big_layer(100_000).encode())
