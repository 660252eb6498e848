"""The transport guards of this process: one per server the runner set up, found by its spec.

The runner binds a `GuardSpec` (the settings and a token naming the server, cheap to pickle for
worker processes) to the HTTP gate it hands uvicorn; the gate's first connection in a process
builds that server's guard here, and every later one finds the same guard.
"""

from __future__ import annotations

from gischat.server.guard import GuardSettings, TransportGuard


class GuardSpec:
    """What a process needs to build a server's guard: its settings and a token naming the server."""

    __slots__ = ("settings", "token")

    def __init__(self, settings: GuardSettings, token: str) -> None:
        self.settings = settings
        self.token = token

    def __reduce__(self) -> tuple[type[GuardSpec], tuple[GuardSettings, str]]:
        return (GuardSpec, (self.settings, self.token))


# The guards of this process, by server token: one per server the runner set up.
_GUARDS: dict[str, TransportGuard] = {}


def guard_for(spec: GuardSpec) -> TransportGuard:
    """This process's guard for the server `spec` names, built on first use; its sweep starts on
    the loop of the first connection (`attach`)."""
    guard = _GUARDS.get(spec.token)
    if guard is None:
        guard = _GUARDS[spec.token] = TransportGuard(spec.settings)
    return guard


def forget_guard(token: str) -> None:
    """The server named `token` stopped: stop its guard's sweep and let it go."""
    guard = _GUARDS.pop(token, None)
    if guard is not None:
        guard.stop()
