"""The last few messages of a room, replayed to whoever joins: memory only, lost on restart.

QTribu was built against a server that greets every new socket with what was just said, so
a person who joins mid-conversation is not lost. Only what people said is kept (texts,
images, layers, CRSs and extents), never the room's bookkeeping (likes, arrivals and
departures, counts, refusals) nor the plugin's easter-egg commands. The number of messages
and the bytes they hold are both capped, so a few big layers cannot pin a room's memory.
"""

from __future__ import annotations

from collections import deque

from gischat.protocol.dialects import AUTHORED_TYPES, Dialect, Post

# Texts that trigger a QTribu or QChat easter egg: fun once, noise when replayed to every newcomer.
# QChat adds a few of its own.
EASTER_EGGS = frozenset(
    {
        "givemesomecheese",
        "iamarobot",
        "its10oclock",
        "qgisprolicense",
        "lookattheflickofqgis",
        "wizz",
        "spaceandtime",
    }
)


def worth_keeping(kind: str, text: str | None = None) -> bool:
    """Whether a message of this type (and text) belongs in a room's history."""
    if kind not in AUTHORED_TYPES:  # what people said, not the room's bookkeeping
        return False
    return text is None or text.strip().casefold() not in EASTER_EGGS


class History:
    """At most `max_messages` messages holding at most `max_bytes` characters, oldest dropped first.

    One history per conversation, kept as posts: a socket of either dialect gets the replay in
    its own shape, with the ids and timestamps the live recipients saw; the 2.x replay skips
    the types the 2.x dialect does not have.
    """

    __slots__ = ("_bytes", "_items", "max_bytes", "max_messages")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._items: deque[Post] = deque()
        self._bytes = 0

    def add(self, item: Post) -> None:
        if self.max_messages == 0 or item.size > self.max_bytes:
            return
        self._items.append(item)
        self._bytes += item.size
        while len(self._items) > self.max_messages or self._bytes > self.max_bytes:
            self._bytes -= self._items.popleft().size

    def remove(self, message_id: str) -> bool:
        """Forget the message with this id (a moderator deleted it); whether it was there."""
        for index, post in enumerate(self._items):
            if post.id == message_id:
                del self._items[index]
                self._bytes -= post.size
                return True
        return False

    def __contains__(self, message_id: object) -> bool:
        return any(post.id == message_id for post in self._items)

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def items(self) -> list[Post]:
        """Oldest first, as they were said."""
        return list(self._items)

    def as_json(self, dialect: Dialect = Dialect.ROOM, send_style: bool = True) -> bytes:
        """The stored messages in `dialect` as one JSON array, from their frames without re-parsing."""
        frames = (post.frame(dialect, send_style) for post in self._items)
        return b"[" + b",".join(frame.data for frame in frames if frame is not None) + b"]"
