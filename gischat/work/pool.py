"""Heavy message work (big frames, images, layers) in worker processes, off the event loop.

One event loop serves every room, so it must never do work proportional to what a client
sends: decoding a 16 MB frame, validating two million positions or resizing a photo would
freeze all rooms for seconds. Threads do not help with pure-Python validation (the GIL), so
that work runs in a process pool. The loop hands over one `str` and gets one `str` back
(plus a few small fields): pickling a string is a copy, pickling a parsed layer would be a
walk over millions of objects in the main process.

The loop also keeps a global budget of work in flight (jobs and characters, queued or
running): past it a sender is told the server is busy instead of queueing without bound.

Workers come from the `forkserver`: it imports this module (pydantic, geojson-pydantic,
Pillow, orjson) once, and every worker is a cheap fork of it, so recycling workers after
`PROCESSING_WORKER_MAX_TASKS` jobs (which hands their memory back to the system) costs a
few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from gischat.protocol import messages as models
from gischat.protocol import parsing, refusals
from gischat.protocol.dialects import AnyClientMessage, Dialect
from gischat.protocol.geojson import PositionCount
from gischat.protocol.refusals import BUSY_REASON, CRASH_REASON
from gischat.protocol.utf8 import decode_text
from gischat.work import handoff
from gischat.work.heap import trim_heap_soon
from gischat.work.jobs import (
    IGNORED,
    LARGE_INPUT,
    Outcome,
    Prepared,
    Refused,
    Rules,
    run_frame,
    run_image,
    run_parcel,
)
from gischat.work.workers import WorkerPool, shut_down

__all__ = ["OFFLOAD_THRESHOLD", "Prepared", "Processor"]

logger = logging.getLogger("gischat.processing")

# Frames longer than this (characters) are parsed in a worker: below it orjson and pydantic
# take well under a millisecond on the loop, above it the cost grows with the frame.
OFFLOAD_THRESHOLD = 64 * 1024
# Workers are stopped once no job came for this long, handing back everything they hold
# (two idle workers still hold tens of MB); the next job starts new ones, a fork of the
# forkserver each, in a thread.
POOL_IDLE = 5.0


# --- on the event loop ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """The worker pool's settings: its size, its recycling, its budget, the image rules."""

    processing_workers: int
    processing_worker_max_tasks: int
    max_processing_jobs: int
    max_processing_bytes: int
    max_image_size: int
    max_image_pixels: int


@dataclass(frozen=True, slots=True)
class _Packed:
    """A frame in its file, and the worker entry point that reads it."""

    parcel: handoff.Parcel
    job: Callable[..., Outcome]


class Processor:
    """The loop's side: budget checks, a lazily created pool, crash recovery, statistics.

    Everything but pool creation and shutdown (done in threads) runs on the event loop
    thread, so the counters need no lock.
    """

    def __init__(self, settings: PoolSettings, limits: models.Limits) -> None:
        self.settings = settings
        self.rules = Rules(limits, settings.max_image_size, settings.max_image_pixels)
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()  # pool creation runs in a thread
        self._stopped = False
        # Statistics, for metrics.
        self.jobs_in_flight = 0  # queued or running
        self.bytes_in_flight = 0  # characters of their inputs
        self.jobs_done = 0  # answered by a worker, refusals included
        self.busy_refusals = 0
        self.crashed_jobs = 0  # lost to a worker that died
        self.pool_restarts = 0  # pools replaced after a crash
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_due = 0.0
        self.idle_stops = 0  # pools stopped for lack of work

    async def start(self) -> None:
        """Nothing heavy: the pool is created on the first job.

        The main process's allocator is deliberately left alone (see `tune_allocator`): its
        memory is handed back by a trim after bursts instead.
        """
        self._stopped = False

    async def stop(self) -> None:
        """Shut the workers down, waiting briefly for running jobs, then terminating them."""
        self._stopped = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(shut_down, pool)

    async def process_frame(
        self, text: str | bytes, dialect: Dialect = Dialect.ROOM
    ) -> AnyClientMessage | Prepared:
        """A frame too large to parse on the loop: parse + validate (+ resize/serialise for
        image/geojson) in a worker. `text` may be a text message's undecoded UTF-8 (see
        `frames.RAW_TEXT_KEY`): it is checked on its way to the worker.

        Returns Prepared for image/geojson, the validated model for other (small) types.
        Raises refusals.Uncompliant, or refusals.InvalidText for bytes that are not UTF-8.
        """
        size = len(text)
        self._reserve(size)  # before the file is written: a busy server refuses at once
        try:
            parcel = await self._pack(text) if size >= handoff.HANDOFF_MIN else None
            if parcel is None and isinstance(text, bytes):
                text = decode_text(text)  # no file: through the pipe, as text
        except BaseException:
            self._release(size)
            raise
        if parcel is None:
            outcome = await self._run(size, run_frame, text, self.rules, dialect, reserved=True)
        else:
            # In its file now: the server keeps no copy of it while a worker reads and prepares
            # it (the callers let go of it too), so a burst of large frames is held once, in
            # /dev/shm, not also in the server's heap.
            del text
            outcome = await self._run(
                size,
                parcel.job,
                parcel.parcel,
                self.rules,
                dialect,
                cleanup=parcel.parcel.discard,
                reserved=True,
            )
        assert not isinstance(outcome, Refused)
        return outcome

    async def _pack(self, text: str | bytes) -> _Packed | None:
        """A large frame written to a file for the worker (`work.handoff`); None: use the pipe.

        A layer's positions are counted as it is written: one far over the vertex budget is
        refused on the loop once the budget is passed, with no worker and no rest of the file.
        """
        count = None
        if parsing.sniff_type(text) == "geojson":
            count = PositionCount(self.rules.limits.max_geojson_vertices)
        parcel = await handoff.pack(text, None if count is None else count.inspect)
        if parcel is None:
            return None
        return _Packed(parcel, partial(run_parcel, counted=count is not None))

    async def process_message(self, message: models.ImageMessage | models.GeojsonMessage) -> Prepared:
        """A small frame already parsed on the loop whose type needs heavy work.

        An image goes over as its three fields. A layer goes over re-serialised: orjson
        writes a parsed layer in one fast call, pickle would walk its objects in the
        executor's feeder thread, holding the GIL: 44 ms + 2 ms against 209 ms for a 10 MB layer.
        Raises refusals.Uncompliant.
        """
        if isinstance(message, models.ImageMessage):
            outcome = await self._run(
                len(message.image_data),
                run_image,
                message.author,
                message.avatar,
                message.image_data,
                self.rules,
            )
        else:
            text = message.to_wire()
            outcome = await self._run(len(text), run_frame, text, self.rules, Dialect.ROOM)
        assert isinstance(outcome, Prepared)
        return replace(outcome, reply=message.in_reply_to_id)

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for tests and diagnostics)."""
        pool = self._pool
        return [] if pool is None else [p.pid for p in pool.processes() if p.pid is not None]

    async def _run(
        self,
        size: int,
        function: Callable[..., Outcome],
        *args: Any,
        cleanup: Callable[[], None] | None = None,
        reserved: bool = False,
    ) -> Outcome:
        """Run `function(*args)` in a worker, `size` counted in the budget (already, if
        `reserved`) until the worker is done."""
        if not reserved:
            self._reserve(size)
        loop = asyncio.get_running_loop()

        # The budget is released (and `cleanup` run) when the worker is done, not when this task
        # is: a sender that disconnects (cancelling this task) must not free room while its job
        # still runs.
        def done(_: object) -> None:
            _call_soon(loop, self._release, size)
            if cleanup is not None:
                cleanup()

        try:
            pool, future = await self._submit(function, args, done)
        except asyncio.CancelledError:
            raise  # `_submit` saw to the budget
        except BaseException:
            self._release(size)
            raise
        try:
            outcome = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self.crashed_jobs += 1
            self._discard_broken(pool)
            raise refusals.Uncompliant(CRASH_REASON) from None
        self.jobs_done += 1
        if size > LARGE_INPUT:
            # glibc keeps the freed frames, results and per-socket copies of big layers for reuse
            # (150 MB after a burst of ten 16 MB layers): the process's one trimmer hands them back
            # once large buffers stop coming, whoever let them go (here, or the transport).
            trim_heap_soon()
        if outcome == IGNORED:
            raise parsing.Ignored()
        if isinstance(outcome, Refused):
            raise refusals.Uncompliant(outcome.reason)
        return outcome

    def _reserve(self, size: int) -> None:
        jobs = self.jobs_in_flight + 1
        if (
            jobs > self.settings.max_processing_jobs
            or self.bytes_in_flight + size > self.settings.max_processing_bytes
        ):
            self.busy_refusals += 1
            raise refusals.Uncompliant(BUSY_REASON)
        self.jobs_in_flight = jobs
        self.bytes_in_flight += size

    def _release(self, size: int) -> None:
        self.jobs_in_flight -= 1
        self.bytes_in_flight -= size
        if self.jobs_in_flight == 0 and not self._stopped:
            self._watch_idle()

    def _watch_idle(self) -> None:
        """Stop the workers POOL_IDLE seconds after the last job, unless another came."""
        loop = asyncio.get_running_loop()
        self._idle_due = loop.time() + POOL_IDLE
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(self._idle_due, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._stopped or self.jobs_in_flight:
            return  # the last of those jobs will watch again
        loop = asyncio.get_running_loop()
        if loop.time() < self._idle_due:
            self._idle_timer = loop.call_at(self._idle_due, self._idle_check)
            return
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            self.idle_stops += 1
            loop.run_in_executor(None, shut_down, pool)

    async def _submit(
        self, function: Callable[..., Outcome], args: tuple[Any, ...], done: Callable[[object], None]
    ) -> tuple[WorkerPool, Future[Outcome]]:
        """Hand a job over; from then on `done` runs once it is finished, even if this task is
        cancelled meanwhile (if it never went in, `done` runs at once, then).

        A submit may start a worker, that is wait for a fork: on the loop only when every worker
        of the pool is up, so that none can be started; otherwise in a thread.
        """
        pool = self._pool
        if pool is not None and pool.ready():
            try:
                future = pool.executor.submit(function, *args)
            except BrokenProcessPool:  # a worker died since the last job: this one never started
                self._discard_broken(pool)
            else:
                future.add_done_callback(done)
                return pool, future
        handing = asyncio.ensure_future(asyncio.to_thread(self._hand_over, function, args, done))
        try:
            return await asyncio.shield(handing)
        except asyncio.CancelledError:
            handing.add_done_callback(lambda handed: _unless_handed(handed, done))
            raise

    def _hand_over(
        self, function: Callable[..., Outcome], args: tuple[Any, ...], done: Callable[[object], None]
    ) -> tuple[WorkerPool, Future[Outcome]]:
        """`_submit` in a thread: create the pool if needed, submit (starting a worker, maybe);
        a pool found broken before the job went in is replaced."""
        for _ in range(2):
            pool = self._create_pool()
            try:
                future = pool.submit_starting(function, *args)
            except BrokenProcessPool:
                self._discard_broken(pool)
                continue
            future.add_done_callback(done)
            return pool, future
        raise refusals.Uncompliant(CRASH_REASON)

    def _create_pool(self) -> WorkerPool:
        """The pool, created if there is none (in a thread: its workers start with its first
        jobs, the first one waiting for the forkserver to import its modules, later ones for a
        fork)."""
        with self._pool_lock:
            if self._stopped:
                raise refusals.Uncompliant(CRASH_REASON)
            if self._pool is None:
                handoff.sweep()  # files a killed server left behind
                self._pool = WorkerPool(
                    self.settings.processing_workers, self.settings.processing_worker_max_tasks
                )
            return self._pool

    def _discard_broken(self, pool: WorkerPool) -> None:
        """Forget a pool a worker crash broke; the next job creates a new one."""
        with self._pool_lock:
            if self._pool is not pool:
                return  # already replaced, by another job that saw the same crash
            self._pool = None
        self.pool_restarts += 1
        logger.warning("a processing worker died; starting new workers")
        # Its manager thread already terminated and joined the other workers.
        pool.executor.shutdown(wait=False, cancel_futures=True)
        pool.close()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """From any thread; a loop that is already closed has no budget left to release."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _unless_handed(
    handing: asyncio.Future[tuple[WorkerPool, Future[Outcome]]], done: Callable[[object], None]
) -> None:
    """A job whose hand-over failed never runs: what it reserved is given back now."""
    if handing.cancelled() or handing.exception() is not None:
        done(None)
