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
import ctypes
import ctypes.util
import gc
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, TypeAlias

import orjson

from gischat.protocol import messages as models
from gischat.protocol.dialects import AnyClientMessage, Dialect, parse_object
from gischat.settings import Settings
from gischat.work import images

__all__ = [
    "BUSY_REASON",
    "CRASH_REASON",
    "MEMORY_REASON",
    "OFFLOAD_THRESHOLD",
    "Prepared",
    "Processor",
    "release_memory",
    "trim_heap_soon",
    "tune_allocator",
]

logger = logging.getLogger("gischat.processing")

# Frames longer than this (characters) are parsed in a worker: below it orjson and pydantic
# take well under a millisecond on the loop, above it the cost grows with the frame.
OFFLOAD_THRESHOLD = 64 * 1024
# After a job on an input longer than this, a worker hands its freed memory back at once.
LARGE_INPUT = 2 * 1024 * 1024
# Address space a worker may map: a pathological input gets MemoryError (a refusal) instead
# of pushing the machine into swap. Two workers on 15 MB layers peaked at 512 MB together.
WORKER_ADDRESS_SPACE = 3 * 1024**3
# Glibc serves larger blocks with mmap, returned to the system as soon as they are freed.
# Left alone, glibc raises this threshold after every large free (up to 32 MB), and the
# next layers' buffers then stay in the heap after use.
MMAP_THRESHOLD = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers, from glibc's malloc.h
# Workers run at a lower CPU priority than the server: when every core is busy validating
# layers, the event loop (which every room waits on) still gets a core the moment it needs it.
WORKER_NICENESS = 10
# After a large job, the main process trims its heap once big jobs have been quiet this long
# (seconds): by then the frame, the result and the copies sent to sockets are freed.
TRIM_DELAY = 1.0
# Seconds `stop()` lets workers finish their jobs before terminating them.
STOP_GRACE = 0.5
# Workers are stopped once no job came for this long, handing back everything they hold
# (two workers are ~70 MB of RSS even when idle); the next job starts new ones, a fork of the
# forkserver each, in a thread.
POOL_IDLE = 5.0

BUSY_REASON = "server busy: too many images and layers being processed, try again shortly"
CRASH_REASON = "server error while handling this message; it was not delivered"
MEMORY_REASON = "message too large to process: it needs more memory than a worker may use"
NOT_JSON_REASON = "message is not valid JSON"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A heavy message made ready in a worker: what the loop needs to check and publish."""

    kind: str  # the message type: "image" or "geojson"
    author: str
    body: str  # the keys after `type`, as `WireMessage.body()` writes them
    style: str | None  # a layer's `style` tail
    reply: Any = None  # the `in_reply_to_id` the sender gave, checked on the loop


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything a worker needs besides the input: small, frozen, cheap to pickle."""

    limits: models.Limits
    max_image_size: int
    max_image_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        return cls(
            limits=models.Limits.from_settings(settings),
            max_image_size=settings.max_image_size,
            max_image_pixels=settings.max_image_pixels,
        )


@dataclass(frozen=True, slots=True)
class Refused:
    """A refusal coming back from a worker: a value, not a pickled exception and traceback."""

    reason: str


Outcome: TypeAlias = Prepared | AnyClientMessage | Refused
# A frame its dialect drops silently (QField's `exiter`), on its way back from a worker.
IGNORED = Refused("")


# --- memory ---------------------------------------------------------------------------------------


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has malloc_trim and mallopt), else None (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def release_memory() -> bool:
    """Give freed heap memory back to the system (glibc `malloc_trim(0)`); False if unavailable.

    glibc keeps freed memory in its arenas for reuse. Once `tune_allocator()` has run, big
    buffers no longer land there and a trim finds little to do (0.3 ms after a burst of
    16 MB layers; 30 ms and 150 MB without the tuning). ctypes releases the GIL during the
    call but the calling thread waits: call it from a thread (`asyncio.to_thread`).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def tune_allocator() -> bool:
    """Pin glibc's mmap threshold in this process; False where that is not possible.

    Blocks above the threshold are mapped on their own and unmapped the moment they are
    freed; left dynamic, glibc raises the threshold after each big free and keeps the next
    big buffers in its heap. Workers use it. The main process does not: every 16 MB frame
    would then fault in fresh pages while holding the GIL (20-70 ms of loop stall measured,
    against 5 ms when the heap is reused), so it trims after bursts instead.
    """
    libc = _glibc()
    if libc is None or MMAP_THRESHOLD <= 0:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


class _HeapTrimmer:
    """Trims the main heap TRIM_DELAY seconds after the last large buffer was let go.

    Called for every large frame the transport receives or drops (most of them never reach a
    worker: refused for their rate, or left unfinished), so one timer is kept and moved.
    """

    def __init__(self) -> None:
        self.due = 0.0
        self.trims = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False

    def soon(self) -> None:
        loop = asyncio.get_running_loop()
        self.due = loop.time() + TRIM_DELAY
        if self._timer is None or self._loop is not loop:  # none yet, or one of a loop now gone
            self._loop, self._running = loop, False
            self._timer = loop.call_at(self.due, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if loop.is_closed():
            return
        if loop.time() < self.due:  # more came since: wait for quiet
            self._timer = loop.call_at(self.due, self._fire, loop)
            return
        if self._running:
            return  # the running trim schedules the next one when it is done
        self._running = True
        self.due = float("inf")  # nothing new since this trim
        self.trims += 1
        loop.run_in_executor(None, release_memory).add_done_callback(self._done)

    def _done(self, _: object) -> None:
        self._running = False
        loop = self._loop
        if self._timer is None and self.due != float("inf") and loop is not None and not loop.is_closed():
            self._timer = loop.call_at(self.due, self._fire, loop)  # more came during the trim


_heap_trimmer = _HeapTrimmer()


def trim_heap_soon() -> None:
    """On the event loop: a large buffer was just freed, trim the heap once they stop coming."""
    _heap_trimmer.soon()


# --- in the worker --------------------------------------------------------------------------------


def _init_worker(address_space: int, niceness: int) -> None:
    """Runs once in each new worker.

    Ctrl+C reaches the whole process group; the server shuts the pool down on its own, so a
    worker must not die of KeyboardInterrupt halfway through a job.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if niceness > 0:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    tune_allocator()
    if address_space > 0:
        _limit_address_space(address_space)


def _limit_address_space(limit: int) -> None:
    try:
        import resource
    except ImportError:  # not on this platform
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_frame(text: str, rules: Rules, dialect: Dialect) -> Outcome:
    """Worker entry point: a whole frame, parsed, validated and (image, layer) made ready."""
    return _guarded(len(text), _prepare_frame, text, rules, dialect)


def run_image(author: str, avatar: str | None, image_data: str, rules: Rules) -> Outcome:
    """Worker entry point: an image message the loop already validated, to be resized."""
    return _guarded(len(image_data), _prepare_image_fields, author, avatar, image_data, rules)


def _guarded(size: int, job: Callable[..., Outcome], *args: Any) -> Outcome:
    """Run a job, turning every refusal into a `Refused`; give memory back after big inputs."""
    try:
        outcome = job(*args)
    except models.Uncompliant as exc:
        outcome = Refused(exc.reason)
    except models.Ignored:
        outcome = IGNORED
    except images.ImageRejected as exc:
        outcome = Refused(str(exc))
    except MemoryError:
        outcome = Refused(MEMORY_REASON)
    # Out of the except blocks: the traceback and the objects it kept alive are gone now.
    if size > LARGE_INPUT:
        gc.collect()
        release_memory()
    return outcome


def _prepare_frame(text: str, rules: Rules, dialect: Dialect) -> Outcome:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise models.Uncompliant(NOT_JSON_REASON) from None
    message = parse_object(data, rules.limits, dialect)
    del data
    if isinstance(message, models.GeojsonMessage):
        return _prepare_layer(message, text, rules.limits)
    if isinstance(message, models.ImageMessage):
        return _prepare_image(message, rules)
    return message


def _prepare_layer(message: models.GeojsonMessage, text: str, limits: models.Limits) -> Prepared:
    """Vertices first (cheap), then features one by one (dear), then the wire text.

    Every position is a JSON array, so a text with no more '[' than the budget cannot exceed
    it: one C-speed scan spares the walk for nearly all layers.
    """
    maximum = limits.max_geojson_vertices
    if text.count("[") > maximum:
        models.check_vertices(message.geojson, maximum)
    for index, feature in enumerate(message.features):
        models.check_feature(index, feature)
    body, style = message.body()
    return Prepared("geojson", message.author, body, style, message.in_reply_to_id)


def _prepare_image(message: models.ImageMessage, rules: Rules) -> Prepared:
    resized = _resize(message.image_data, rules)
    body, _ = message.model_copy(update={"image_data": resized}).body()
    return Prepared("image", message.author, body, None, message.in_reply_to_id)


def _prepare_image_fields(author: str, avatar: str | None, image_data: str, rules: Rules) -> Prepared:
    resized = _resize(image_data, rules)
    message = models.ImageMessage.model_construct(author=author, avatar=avatar, image_data=resized)
    body, _ = message.body()
    return Prepared("image", author, body, None)


def _resize(image_data: str, rules: Rules) -> str:
    return images.process_image(image_data, max_size=rules.max_image_size, max_pixels=rules.max_image_pixels)


# --- on the event loop ----------------------------------------------------------------------------


class Processor:
    """The loop's side: budget checks, a lazily created pool, crash recovery, statistics.

    Everything but pool creation and shutdown (done in threads) runs on the event loop
    thread, so the counters need no lock.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules = Rules.from_settings(settings)
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()  # pool creation runs in a thread
        self._stopped = False
        # Statistics, for metrics.
        self.jobs_in_flight = 0  # queued or running
        self.bytes_in_flight = 0  # characters of their inputs
        self.jobs_done = 0  # answered by a worker, refusals included
        self.busy_refusals = 0
        self.crashed_jobs = 0  # lost to a worker that died
        self.pool_restarts = 0  # pools replaced after a crash
        self.trims = 0  # heap trims of the main process after large jobs
        self._trim_timer: asyncio.TimerHandle | None = None
        self._trimming: asyncio.Task[bool] | None = None
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
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(_shut_down, pool)

    async def process_frame(self, text: str, dialect: Dialect = Dialect.ROOM) -> AnyClientMessage | Prepared:
        """A frame too large to parse on the loop: parse + validate (+ resize/serialise for
        image/geojson) in a worker.

        Returns Prepared for image/geojson, the validated model for other (small) types.
        Raises models.Uncompliant.
        """
        outcome = await self._run(len(text), run_frame, text, self.rules, dialect)
        assert not isinstance(outcome, Refused)
        return outcome

    async def process_message(self, message: models.ImageMessage | models.GeojsonMessage) -> Prepared:
        """A small frame already parsed on the loop whose type needs heavy work.

        An image goes over as its three fields. A layer goes over re-serialised: orjson
        writes a parsed layer in one fast call, pickle would walk its objects in the
        executor's feeder thread, holding the GIL: 44 ms + 2 ms against 209 ms for a 10 MB layer.
        Raises models.Uncompliant.
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
        return [] if pool is None else list(pool._processes)

    async def _run(self, size: int, function: Callable[..., Outcome], *args: Any) -> Outcome:
        self._reserve(size)
        try:
            future = await self._submit(function, *args)
        except BaseException:
            self._release(size)
            raise
        # The budget is released when the worker is done, not when this task is: a sender that
        # disconnects (cancelling this task) must not free room while its job still runs.
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda _: _call_soon(loop, self._release, size))
        try:
            outcome = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self.crashed_jobs += 1
            self._discard_broken()
            raise models.Uncompliant(CRASH_REASON) from None
        self.jobs_done += 1
        if size > LARGE_INPUT:
            self._schedule_trim()
        if outcome == IGNORED:
            raise models.Ignored()
        if isinstance(outcome, Refused):
            raise models.Uncompliant(outcome.reason)
        return outcome

    def _schedule_trim(self) -> None:
        """Trim the main heap once large jobs have been quiet for TRIM_DELAY seconds.

        glibc keeps the freed frames, results and per-socket copies of big layers for reuse
        (150 MB after a burst of ten 16 MB layers); the trim takes tens of milliseconds
        without the GIL, so it runs in a thread and the loop never waits for it.
        """
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        self._trim_timer = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim)

    def _trim(self) -> None:
        self._trim_timer = None
        if self._stopped or (self._trimming is not None and not self._trimming.done()):
            return
        if self.bytes_in_flight > LARGE_INPUT:
            self._schedule_trim()  # still busy: the memory would be taken again at once
            return
        self.trims += 1
        self._trimming = asyncio.get_running_loop().create_task(asyncio.to_thread(release_memory))

    def _reserve(self, size: int) -> None:
        jobs = self.jobs_in_flight + 1
        if (
            jobs > self.settings.max_processing_jobs
            or self.bytes_in_flight + size > self.settings.max_processing_bytes
        ):
            self.busy_refusals += 1
            raise models.Uncompliant(BUSY_REASON)
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
            loop.run_in_executor(None, _shut_down, pool)

    async def _submit(self, function: Callable[..., Outcome], *args: Any) -> Future[Outcome]:
        """Hand a job to the pool; a pool found broken before the job went in is replaced."""
        for _ in range(2):
            pool = self._pool
            if pool is None:
                pool = await asyncio.to_thread(self._create_pool)
            try:
                return pool.submit(function, *args)
            except BrokenProcessPool:  # a worker died since the last job: this one never started
                self._discard_broken()
        raise models.Uncompliant(CRASH_REASON)

    def _create_pool(self) -> ProcessPoolExecutor:
        """Create the pool and start all its workers (in a thread: the first start waits for the
        forkserver to import its modules, later ones for a fork)."""
        with self._pool_lock:
            if self._stopped:
                raise models.Uncompliant(CRASH_REASON)
            if self._pool is None:
                self._pool = _new_pool(self.settings)
            return self._pool

    def _discard_broken(self) -> None:
        """Forget a pool a worker crash broke; the next job creates a new one."""
        with self._pool_lock:
            pool = self._pool
            if pool is None or not getattr(pool, "_broken", False):
                return  # already replaced, by another job that saw the same crash
            self._pool = None
        self.pool_restarts += 1
        logger.warning("a processing worker died; starting new workers")
        # Its manager thread already terminated and joined the other workers.
        pool.shutdown(wait=False, cancel_futures=True)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """From any thread; a loop that is already closed has no budget left to release."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _new_pool(settings: Settings) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    # Only takes effect when the forkserver starts, once per server process; harmless after.
    context.set_forkserver_preload([__name__])
    pool = ProcessPoolExecutor(
        max_workers=settings.processing_workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(WORKER_ADDRESS_SPACE, WORKER_NICENESS),
        max_tasks_per_child=settings.processing_worker_max_tasks,
    )
    # Start every worker now, in this thread: otherwise `submit()`, on the event loop, would
    # start them one by one, waiting for a fork each time.
    launch = getattr(pool, "_launch_processes", None)
    if callable(launch):
        launch()
    return pool


def _shut_down(pool: ProcessPoolExecutor) -> None:
    """Stop a pool and reap its workers (blocking: run it in a thread)."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    manager = getattr(pool, "_executor_manager_thread", None)
    if isinstance(manager, threading.Thread):
        manager.join(STOP_GRACE)
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=True)
    for process in processes:
        process.join(STOP_GRACE)
