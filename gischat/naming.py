"""Names the settings must check and the Matrix bridge must make alike: pure, no imports of ours.

Two rooms whose names give one slug would share one Matrix portal, and a nickname too short for the
bridge's suffix could never be given: the settings refuse both at start, with the same rules the
bridge names things by (`gischat.matrix.names`).
"""

from __future__ import annotations

import re

# The end of every Matrix participant's nickname in gischat (and the mark the web client shows).
MATRIX_SUFFIX = "-matrix"
# Characters a room alias's localpart keeps; the rest of a room's name is dropped.
SLUG_DROPPED = re.compile(r"[^a-z0-9._=-]")


def slug(room: str) -> str:
    """`Field and mobile` -> `field-and-mobile`: lowercase, spaces to `-`, the rest dropped."""
    return SLUG_DROPPED.sub("", room.lower().replace(" ", "-"))
