"""The worker processes of `work.pool`: a process pool whose workers are known, and its shutdown.

Kept apart from the pool's budget and job logic (`work.pool`), which only submits to a
`WorkerPool`, asks whether all its workers are up, and shuts it down.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing.process import BaseProcess
from multiprocessing.queues import SimpleQueue
from typing import Any

from gischat.work.jobs import WORKER_ADDRESS_SPACE, WORKER_NICENESS, Outcome, init_worker

# The module the forkserver imports once, so that each worker forks with it loaded.
PRELOAD = "gischat.work.pool"
# Seconds `shut_down` lets workers finish their jobs before terminating them.
STOP_GRACE = 0.5


def start_worker(reports: SimpleQueue[int], address_space: int, niceness: int) -> None:
    """A new worker's initializer: set it up, then tell the pool it runs (see `WorkerPool`)."""
    init_worker(address_space, niceness)
    reports.put(os.getpid())


class WorkerPool:
    """A process pool and its worker processes, known through public interfaces only.

    `ProcessPoolExecutor` lists none of its workers, and starts them only as jobs come, one per
    submit while none is idle: a submit may wait for a fork. The workers are known two ways: one
    a submit started is the new entry of `multiprocessing.active_children()` right after it (so
    it is known at once), and every worker reports its pid from its initializer (so one the
    executor starts itself, replacing a worker recycled after its max tasks, is known too). A
    worker another pool of this process starts during one of our submits would be taken for
    ours; only a pool being replaced could, and it stops anyway.
    """

    def __init__(self, size: int, max_tasks: int) -> None:
        context = multiprocessing.get_context("forkserver")
        # Only takes effect when the forkserver starts, once per server process; harmless after:
        # the pool's module brings the jobs, images and protocol modules every worker needs.
        context.set_forkserver_preload([PRELOAD])
        self.size = size
        self._reports: SimpleQueue[int] = context.SimpleQueue()
        self._pids: set[int] = set()
        self._lock = threading.Lock()  # the loop and threads read the reports
        self.executor = ProcessPoolExecutor(
            max_workers=size,
            mp_context=context,
            initializer=start_worker,
            initargs=(self._reports, WORKER_ADDRESS_SPACE, WORKER_NICENESS),
            max_tasks_per_child=max_tasks,
        )

    def submit_starting(self, function: Callable[..., Outcome], *args: Any) -> Future[Outcome]:
        """Submit, noting the worker the submit started, if any (blocking: run it in a thread)."""
        before = _children()
        future = self.executor.submit(function, *args)
        started = _children() - before
        if started:
            with self._lock:
                self._pids |= started
        return future

    def processes(self) -> list[BaseProcess]:
        """The workers alive now."""
        with self._lock:
            while not self._reports.empty():
                self._pids.add(self._reports.get())
            live = [p for p in multiprocessing.active_children() if p.pid in self._pids]
            self._pids = {p.pid for p in live if p.pid is not None}
        return live

    def ready(self) -> bool:
        """Whether all workers are up, so that a submit cannot start one."""
        return len(self.processes()) >= self.size

    def close(self) -> None:
        """Let the reports go, once the workers are gone."""
        self._reports.close()


def _children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


def _wait_for_exit(processes: list[BaseProcess], timeout: float) -> None:
    """Until every one of `processes` has exited, or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    pending = [p.sentinel for p in processes]
    while pending and (left := deadline - time.monotonic()) > 0:
        ended = multiprocessing.connection.wait(pending, left)
        pending = [sentinel for sentinel in pending if sentinel not in ended]


def shut_down(pool: WorkerPool) -> None:
    """Stop a pool and reap its workers (blocking: run it in a thread)."""
    processes = pool.processes()
    pool.executor.shutdown(wait=False, cancel_futures=True)
    # Idle workers leave at once; one that is running a job gets STOP_GRACE to finish it.
    _wait_for_exit(processes, STOP_GRACE)
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.executor.shutdown(wait=True)
    for process in processes:
        process.join(STOP_GRACE)
    pool.close()
