"""Large frames cross to a worker as a file in shared memory (tmpfs), not through the executor's pipe.

Why: the executor pickles its arguments in a feeder thread and pushes them through a pipe 64 kB
at a time, and the worker reads and unpickles them: four copies and a couple of hundred system
calls, 85 ms for a 12 MB frame as `str` (50 as `bytes`) on a 2-core machine. A tmpfs file costs
an encode and a write (on the loop, a piece per turn, so that nobody waits long) and one read
on the worker's side, and the job's argument is only its path; the worker checks and parses the
bytes without decoding them. That is most of what stood between a 12 MB layer over the
vertex budget and its refusal.

Plain files written with `write`, not `multiprocessing.shared_memory`: a full `/dev/shm`
(Docker gives containers 64 MB by default) fails the write with ENOSPC here, where a mapped
page would raise SIGBUS later, and no resource tracker is involved. Without a usable
`/dev/shm` (another OS, a read-only or full one), `pack` says so and the frame goes through the
pipe as before. The file is removed once the job is done, whatever its outcome; files left by a
server that was killed are removed when the next one starts its workers (`sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gischat.protocol.utf8 import Utf8Check

# Files are created O_EXCL with mode 0600 in a sticky directory: nobody else can swap them.
SHARED_DIR = Path("/dev/shm")  # noqa: S108
PREFIX = "gischat-frame-"
# Frames at least this large go through a file; below, the pipe costs less than two system calls.
HANDOFF_MIN = 1024 * 1024
# Characters encoded and written per loop turn (about a millisecond).
PIECE = 512 * 1024

_serial = itertools.count()


@dataclass(frozen=True, slots=True)
class Parcel:
    """A frame's UTF-8 bytes in a file of `SHARED_DIR`: what a job gets instead of the text."""

    path: str
    size: int

    def read(self) -> bytes:
        """The frame's UTF-8 bytes, read in the worker (which parses bytes as readily as text)."""
        with open(self.path, "rb", buffering=0) as file:
            return file.read(self.size)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


async def pack(text: str | bytes, inspect: Callable[[bytes], None] | None = None) -> Parcel | None:
    """Write `text` to a new file of `SHARED_DIR`; None when that cannot be done (use the pipe).

    On the loop, a piece at a time with a turn for everyone else between pieces: each costs
    about a millisecond (one encode of 12 MB would hold the loop for 12 ms, and threads doing it
    would fight the loop for the interpreter). `inspect` sees each piece's bytes before they are
    written; whatever it raises stops the writing, removes the file and reaches the caller, so a
    frame it refuses is refused before the rest of it is written. A text message given as its
    bytes (the transport left it undecoded) has its UTF-8 checked the same way (`InvalidText`).
    """
    path = str(SHARED_DIR / f"{PREFIX}{os.getpid()}-{next(_serial)}")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError:
        return None
    size = 0
    try:
        # A full tmpfs fails the write (ENOSPC): nothing is mapped, so there is no SIGBUS to fear.
        for piece in _pieces(text):
            if inspect is not None:
                inspect(piece)
            size += len(piece)
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
            await asyncio.sleep(0)
    except BaseException as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        if isinstance(exc, OSError):
            return None
        raise  # cancelled: the file is gone with it
    os.close(fd)
    return Parcel(path, size)


def _pieces(text: str | bytes) -> Iterator[bytes]:
    """`text`'s UTF-8 a piece at a time: encoded from a string, checked from bytes."""
    if isinstance(text, str):
        for start in range(0, len(text), PIECE):
            yield text[start : start + PIECE].encode()
        return
    check = Utf8Check()
    for start in range(0, len(text), PIECE):
        piece = text[start : start + PIECE]
        check.feed(piece, final=start + PIECE >= len(text))
        yield piece


def sweep() -> int:
    """Remove the files of servers that are no longer running; how many were removed."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in SHARED_DIR.glob(f"{PREFIX}*"):
            pid = entry.name[len(PREFIX) :].partition("-")[0]
            if pid.isdigit() and not running(int(pid)):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed += 1
    return removed


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process: alive
        return True
    return True
