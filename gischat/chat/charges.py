"""What a message pays before anything is done with it: one message and its size, and an image or a
layer on top. The same for a socket's frame and for a participant without a socket (a Matrix user),
so both follow one set of rates."""

from __future__ import annotations

from gischat.limits import ConnectionLimits, Rates
from gischat.protocol.refusals import Uncompliant


class SlowDown(Uncompliant):
    """A rate limit refused the message; enough of these in a row close the connection."""

    def __init__(self, limit: str, reason: str) -> None:
        super().__init__(reason)
        self.limit = limit


def pay(buckets: ConnectionLimits, rates: Rates, size: int, now: float) -> None:
    """Every message, valid or not, pays for itself in messages and in bytes. Raises SlowDown."""
    if not buckets.messages.take(now):
        raise SlowDown("messages", rates.messages.reason())
    if not buckets.bytes.take(now, size):
        raise SlowDown("bytes", rates.bytes.reason())


def charge(buckets: ConnectionLimits, rates: Rates, kind: str | None, now: float) -> None:
    """Images and layers also pay per item; a large frame of unknown kind pays as a layer."""
    limit, bucket, rate = (
        ("images", buckets.images, rates.images)
        if kind == "image"
        else ("layers", buckets.layers, rates.layers)
    )
    if not bucket.take(now):
        raise SlowDown(limit, rate.reason())
