"""A diagnostic hook for `bench/photo_memory.py --diagnose`, never for production.

With this directory on PYTHONPATH, every Python process of the server's tree (the server, the
forkserver and each worker) appends what glibc's allocator holds to
bench/results/diag/malloc-PID.jsonl whenever it gets SIGUSR2: mallinfo2 (all arenas together)
and malloc_info's per-arena figures; on SIGUSR1, after a full collection and a malloc_trim, with
the number of objects the collection found. The handlers run in the main thread between bytecodes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "results" / "diag"


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = MallInfo2
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    return libc


HEAP = re.compile(r'<heap nr="(\d+)">(.*?)</heap>', re.S)
TOTAL = re.compile(r'<total type="(\w+)" count="(\d+)" size="(\d+)"/>')
SYSTEM = re.compile(r'<system type="(\w+)" size="(\d+)"/>')


def _collect_and_dump(*_: object) -> None:
    """SIGUSR1: a full collection and a trim first (what they free tells what held the memory)."""
    import gc
    import tracemalloc

    before = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    gc.set_debug(gc.DEBUG_SAVEALL)  # the garbage is kept in gc.garbage, to be looked at
    found = gc.collect()
    gc.set_debug(0)
    _holders(gc.garbage, "garbage")
    _blame(gc.garbage)
    gc.garbage.clear()
    gc.collect()
    if before is not None:
        after = tracemalloc.take_snapshot()
        top = after.compare_to(before, "traceback")[:8]
        row = {
            "pid": os.getpid(),
            "freed": [[stat.size_diff, stat.count_diff, [str(f) for f in stat.traceback]] for stat in top],
        }
        with (OUT / f"malloc-{os.getpid()}.traced.jsonl").open("a") as file:
            file.write(json.dumps(row) + "\n")
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    _dump(collected=found)
    _holders(gc.get_objects(), "live")


def _blame(garbage: list[object]) -> None:
    """Which type of garbage object frees the memory: each type's objects emptied in turn
    (their attributes, items or locals dropped), the allocator's bytes in use read after each."""
    from collections import Counter

    libc = _libc()
    if libc is None:
        return

    def in_use() -> int:
        return int(libc.mallinfo2().uordblks)

    freed: list[tuple[str, int]] = []
    transports = [o for o in garbage if hasattr(o, "get_write_buffer_size") and hasattr(o, "is_closing")]
    queued = 0
    closing = 0
    for transport in transports:
        with __import__("contextlib").suppress(Exception):
            queued += transport.get_write_buffer_size()
            closing += bool(transport.is_closing())
    freed.append((f"transports: {len(transports)}, closing {closing}, write buffers", queued))
    for name, _ in Counter(type(o).__qualname__ for o in garbage).most_common():
        before = in_use()
        for obj in [o for o in garbage if type(o).__qualname__ == name]:
            _empty(obj)
        freed.append((name, before - in_use()))
    row = {
        "pid": os.getpid(),
        "blame": [item for item in freed if abs(item[1]) >= 100_000 or "transports" in item[0]],
    }
    with (OUT / f"malloc-{os.getpid()}.blame.jsonl").open("a") as file:
        file.write(json.dumps(row) + "\n")


def _empty(obj: object) -> None:
    import contextlib

    with contextlib.suppress(Exception):
        if hasattr(obj, "close") and type(obj).__name__ in ("generator", "coroutine"):
            obj.close()
            return
        if hasattr(obj, "clear") and type(obj).__name__ in ("list", "dict", "frame", "set", "deque"):
            obj.clear()
            return
        if hasattr(obj, "__dict__"):
            vars(obj).clear()
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                with contextlib.suppress(Exception):
                    delattr(obj, slot)


def _holders(objects: list[object], kind: str, minimum: int = 4096) -> None:
    """Who holds large buffers among `objects`: container type (and code, for frames) and size."""
    import gc
    from collections import Counter

    held: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    seen: set[int] = set()
    types: Counter[str] = Counter(type(o).__qualname__ for o in objects) if kind == "garbage" else Counter()
    for container in objects:
        for item in gc.get_referents(container):
            if id(item) not in seen:
                size = item.nbytes if isinstance(item, memoryview) else sys.getsizeof(item)
                if size >= minimum:
                    seen.add(id(item))
                    where = f"{type(item).__qualname__} in {type(container).__qualname__}"
                    code = getattr(container, "f_code", None) or getattr(container, "cr_code", None)
                    if code is not None:
                        where += f" {code.co_qualname}"
                    held[where] += 1
                    sizes[where] += size
    row = {
        "pid": os.getpid(),
        "kind": kind,
        "holders": [[where, held[where], sizes[where]] for where, _ in sizes.most_common(12)],
        "types": types.most_common(25),
    }
    with (OUT / f"malloc-{os.getpid()}.holders.jsonl").open("a") as file:
        file.write(json.dumps(row) + "\n")


def _dump(*_: object, collected: int | None = None) -> None:
    libc = _libc()
    if libc is None:
        return
    info = libc.mallinfo2()
    row: dict[str, object] = {field[0]: getattr(info, field[0]) for field in MallInfo2._fields_}
    row["collected"] = collected
    row["gc_counts"] = list(__import__("gc").get_count())
    row["t"] = time.time()
    row["pid"] = os.getpid()
    row["threads"] = threading.active_count()
    xml_path = OUT / f"malloc-{os.getpid()}.xml"
    fp = libc.fopen(str(xml_path).encode(), b"w")
    if fp:
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        heaps = []
        for number, body in HEAP.findall(xml_path.read_text()):
            totals = {kind: int(size) for kind, _count, size in TOTAL.findall(body)}
            system = {kind: int(size) for kind, size in SYSTEM.findall(body)}
            heaps.append({"nr": int(number), "free": sum(totals.values()), **system})
        row["heaps"] = heaps
    with (OUT / f"malloc-{os.getpid()}.jsonl").open("a") as file:
        file.write(json.dumps(row) + "\n")


if os.environ.get("GISCHAT_MALLOC_DIAG"):
    OUT.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGUSR2, _dump)
    signal.signal(signal.SIGUSR1, _collect_and_dump)
    _frames = int(os.environ.get("GISCHAT_TRACEMALLOC", "0"))
    if _frames and sys.argv[:1] == ["-m"]:  # the server (`python -m gischat`), once it has started
        import tracemalloc

        threading.Timer(5.0, tracemalloc.start, (_frames,)).start()
