"""Upstream gischat 3.x settings an operator swapping images may still have, and why they do nothing.

The settings this server understands under upstream's names are aliases in `gischat.settings`;
these are the others, named in one startup line so nobody wonders why they have no effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

# Upstream 3.x settings an operator swapping images may still have, and why they do nothing here.
MATRIX_REASON = (
    "replaced by the Matrix application service bridge (MATRIX_HOMESERVER_URL, MATRIX_SERVER_NAME, "
    "MATRIX_AS_TOKEN, MATRIX_HS_TOKEN; see docs/matrix.md): no password relay, no ping forwarding"
)
SENTRY_REASON = "no Sentry reporting: errors go to the log and /metrics"
IGNORED_UPSTREAM: dict[str, str] = {
    "MATRIX_CHAT_ENABLED": MATRIX_REASON,
    "MATRIX_PING_MESSAGE_PREFIX": MATRIX_REASON,
    "MATRIX_PING_HOMESERVER": MATRIX_REASON,
    "MATRIX_PING_ROOMID": MATRIX_REASON,
    "MATRIX_PING_TOKEN": MATRIX_REASON,
    "SENTRY_DSN": SENTRY_REASON,
    "SENTRY_TRACES_SAMPLE_RATE": SENTRY_REASON,
    "SENTRY_PROFILES_SAMPLE_RATE": SENTRY_REASON,
}


def ignored_upstream_settings(environ: Mapping[str, str], env_file: str | None = ".env") -> str | None:
    """One line naming the upstream settings present in the environment (or `.env`) that this
    server ignores, and why; None when there are none."""
    names = {name.upper() for name in environ}
    if env_file is not None and Path(env_file).is_file():
        names |= {name.upper() for name in dotenv_values(env_file)}
    found = [name for name in IGNORED_UPSTREAM if name in names]
    if not found:
        return None
    reasons: dict[str, list[str]] = {}
    for name in found:
        reasons.setdefault(IGNORED_UPSTREAM[name], []).append(name)
    return "ignoring upstream gischat settings: " + "; ".join(
        f"{', '.join(names)} ({reason})" for reason, names in reasons.items()
    )
