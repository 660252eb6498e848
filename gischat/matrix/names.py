"""How gischat names things in Matrix, and Matrix people in gischat: pure functions, no I/O.

Everything the bridge creates lives in the namespace the registration claims, `@<prefix>...` and
`#<prefix>...`: portals' aliases, the bridge bot, one virtual user per gischat nickname. A Matrix
participant speaks in gischat under a nickname that ends with `MATRIX_SUFFIX`, which no gischat
client may register or write under while the bridge runs: the two sets can never meet.
"""

from __future__ import annotations

import hashlib
import unicodedata

from gischat.naming import MATRIX_SUFFIX, slug

# Characters a virtual user's localpart keeps as they are (historical user ids allow more).
LOCALPART_KEPT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
BOT_NAME = "bot"
# The longest Matrix user id (the spec's bound, `@localpart:server` included).
MAX_USER_ID_LENGTH = 255

__all__ = ["MATRIX_SUFFIX", "slug"]


def portal_alias(prefix: str, room: str, server_name: str) -> str:
    return f"#{prefix}{slug(room)}:{server_name}"


def bot_localpart(prefix: str) -> str:
    return f"{prefix}{BOT_NAME}"


def puppet_localpart(prefix: str, nickname: str, room: int = MAX_USER_ID_LENGTH) -> str:
    """The localpart of the virtual user who speaks for a gischat nickname in Matrix.

    Reversible and case-preserving, as Matrix localparts are lowercase: `_x` is an uppercase X,
    `__` an underscore, `=hh` a byte of any other character's UTF-8. A nickname that would take
    the bot's name is escaped (`=` never starts an escape of a letter otherwise). One whose
    encoding would not fit in `room` characters (32 CJK characters take 288) is `==` and a digest
    of the nickname instead: still one virtual user per nickname, and `==` starts no escape."""
    out: list[str] = []
    for char in nickname:
        if char in LOCALPART_KEPT:
            out.append(char)
        elif char == "_":
            out.append("__")
        elif "A" <= char <= "Z":
            out.append("_" + char.lower())
        else:
            out.extend(f"={byte:02x}" for byte in char.encode())
    encoded = "".join(out)
    if encoded == BOT_NAME:
        encoded = "=" + encoded
    if len(prefix) + len(encoded) > room:
        encoded = "==" + hashlib.sha256(nickname.encode()).hexdigest()[:40]
    return prefix + encoded


def user_id(localpart: str, server_name: str) -> str:
    return f"@{localpart}:{server_name}"


def in_namespace(prefix: str, server_name: str, mxid: str) -> bool:
    """Whether a Matrix user is one of the bridge's own (its bot or a virtual user): never echoed."""
    return mxid.startswith(f"@{prefix}") and mxid.endswith(f":{server_name}")


def nickname_base(display_name: str | None, mxid: str, max_length: int) -> str:
    """The start of a Matrix participant's gischat nickname, from their display name.

    Letters, digits, `_` and `-` are kept (accents too: gischat's author rule is Unicode `\\w`),
    spaces become `_`; with nothing left, the user id's localpart is used. Room is left for the
    suffix and a number that makes it unique."""
    source = display_name if display_name and display_name.strip() else mxid[1:].split(":", 1)[0]
    cleaned = unicodedata.normalize("NFC", source.strip()).replace(" ", "_")
    kept = "".join(char for char in cleaned if char == "-" or char == "_" or char.isalnum())
    if not kept:
        kept = "".join(char for char in mxid[1:].split(":", 1)[0] if char.isalnum()) or "someone"
    room = max(1, max_length - len(MATRIX_SUFFIX) - 2)
    return kept[:room]


def matrix_nickname(base: str, number: int) -> str:
    """`Jane` -> `Jane-matrix`, then `Jane2-matrix`... when another Matrix user holds the first."""
    return f"{base}{number if number > 1 else ''}{MATRIX_SUFFIX}"


def is_matrix_nickname(nickname: str) -> bool:
    return nickname.casefold().endswith(MATRIX_SUFFIX)
