"""`gischat.app:app`, for `uvicorn gischat.app:app` (the command people know from upstream).

The app is built from the environment the first time someone asks for it, through the module's
`__getattr__`: importing `gischat.app` reads no setting. `create_app` builds one for given settings.
"""

from __future__ import annotations

from fastapi import FastAPI

from gischat.settings import SettingsError
from gischat.web.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> FastAPI:
    """Build `app` from the environment the first time someone asks for it."""
    if name == "app":
        try:
            application = create_app()
        except SettingsError as exc:
            raise SystemExit(f"gischat: {exc}") from None
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
