"""What else the machine did while a benchmark ran.

The bench machine is shared (other engineers' tests, CI runs): a round trip that is late at the
very moment the machine was saturated is the machine's doing, not the server's, and a report
must let one tell the two apart rather than hide either. `watch_load` looks every few seconds
at three things:

- the 1-minute load average (runnable tasks, smoothed: slow to show a short burst);
- the cores used over the window by processes that are not the benchmark's own (this process
  and its descendants: servers, their workers, Redis, clients in processes of their own);
- the CPU pressure (Linux PSI, /proc/pressure/cpu): the share of the window during which some
  runnable task waited for a core, the most direct sign that the benchmark's processes could
  not all run when they wanted to (none on kernels without PSI).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from harness import machine_busy

PRESSURE = Path("/proc/pressure/cpu")


@dataclass(frozen=True)
class Load:
    """One look at the machine, at the end of a window."""

    wall: float  # time.time() at the end of the window
    load1: float  # 1-minute load average
    others: float  # cores used over the window by processes that are not the benchmark's
    pressure: float | None  # share of the window some runnable task waited for a core (None: no PSI)

    def describe(self) -> str:
        pressure = "" if self.pressure is None else f", CPU pressure {self.pressure:.0%}"
        return f"load {self.load1:.2f}, other work {self.others:.2f} cores{pressure}"


def cpu_pressure() -> float | None:
    """Seconds during which some runnable task waited for a core, since boot (None: no PSI)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        some = PRESSURE.read_text().splitlines()[0]  # some avg10=.. avg60=.. avg300=.. total=<us>
        return int(some.rsplit("total=", 1)[1]) / 1e6
    return None


def own_cpu(me: psutil.Process) -> float:
    """CPU seconds of the benchmark: this process and its descendants, the children each one has
    reaped included, so that a worker that ends moves its time into its parent's count instead
    of taking it away."""
    total, members = 0.0, [me]
    with contextlib.suppress(psutil.Error):
        members += me.children(recursive=True)
    for member in members:
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


async def watch_load(samples: list[Load], every: float) -> None:
    """Append a `Load` every `every` seconds until cancelled."""
    me = psutil.Process()
    busy, ours, waited, then = machine_busy(), own_cpu(me), cpu_pressure(), time.monotonic()
    while True:
        await asyncio.sleep(every)
        now_busy, now_ours, now_waited, now = machine_busy(), own_cpu(me), cpu_pressure(), time.monotonic()
        others = max((now_busy - busy) - (now_ours - ours), 0.0) / (now - then)
        pressure = None if now_waited is None or waited is None else (now_waited - waited) / (now - then)
        samples.append(Load(time.time(), os.getloadavg()[0], others, pressure))
        busy, ours, waited, then = now_busy, now_ours, now_waited, now


def load_at(samples: list[Load], wall: float) -> Load | None:
    """The sample whose window holds `wall` (the first one after it)."""
    return next((sample for sample in samples if sample.wall >= wall), samples[-1] if samples else None)
