"""The process's open-file limit, and the connection cap it leaves room for.

The runner raises the soft limit once, before the app is built; each server's guard then sizes
its connection cap from it, keeping some descriptors for what is not a client connection.
"""

from __future__ import annotations

import resource
import sys

# File descriptors kept out of the connection cap for the server's own files, pipes and
# workers, and for refused connections while their answer goes out.
RESERVED_FDS = 128


def nofile_limit() -> int:
    """The soft limit on open file descriptors of this process (sys.maxsize when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return sys.maxsize if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows; return the soft limit then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return nofile_limit()
    for candidate in (target, 1 << 20, 65536):  # the kernel may cap below an infinite hard limit
        if soft < candidate <= target:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (candidate, hard))
            except (ValueError, OSError):
                continue
            break
    return nofile_limit()


def effective_max_connections(requested: int, nofile: int) -> int:
    """`MAX_CONNECTIONS`, lowered to what `nofile` descriptors allow with some kept in reserve."""
    return max(1, min(requested, nofile - RESERVED_FDS))
