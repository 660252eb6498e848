"""The browser chat client: its page, its static files, Leaflet's files and its settings.

Everything is served by the instance itself (no CDN at run time) under relative URLs, so
the client also works when the instance sits under a path prefix behind a proxy. The page
carries a Content-Security-Policy that forbids inline scripts and styles: message contents
can never become code, whatever a bug in the client might do with them.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from gischat.matrix.names import MATRIX_SUFFIX
from gischat.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
# A Host header is echoed into the CSP only when it looks like a host name or address.
HOST_PATTERN = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def leaflet_dir() -> Path:
    """Where the xstatic-leaflet package keeps Leaflet's files (leaflet.js, leaflet.css, images/)."""
    package = importlib.import_module("xstatic.pkg.leaflet")
    return Path(package.BASE_DIR)


def tile_source(tile_url: str) -> str | None:
    """The CSP source that lets the page load basemap tiles, or None without a basemap.

    A `{s}` subdomain placeholder becomes a wildcard; any other placeholder in the host
    leaves only the scheme (the operator chose a template the policy cannot pin down).
    """
    if not tile_url:
        return None
    parts = urlsplit(tile_url)
    host = parts.netloc.replace("{s}", "*")
    if "{" in host or "}" in host or not host:
        return f"{parts.scheme}:"
    return f"{parts.scheme}://{host}"


def content_security_policy(settings: Settings, host: str | None) -> str:
    images = ["'self'", "data:", "blob:"]
    tiles = tile_source(settings.map_tile_url)
    if tiles:
        images.append(tiles)
    connect = ["'self'"]
    # CSP level 3 lets 'self' match ws:/wss: on the same host; older engines need them spelled out.
    if host and HOST_PATTERN.fullmatch(host):
        connect += [f"ws://{host}", f"wss://{host}"]
    directives = {
        "default-src": ["'none'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": images,
        "connect-src": connect,
        "manifest-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


def client_config(settings: Settings, moderation: bool = False) -> dict[str, Any]:
    """What the page needs beyond `/rules`: the basemap, the largest frame it may send,
    whether replies are threaded (REPLY_THREADS: the page then offers to reply to a message)
    and whether the instance has moderators (ADMIN_TOKENS: the page then offers to sign in as
    one; the secret itself is never part of the page or its settings)."""
    return {
        "tile_url": settings.map_tile_url,
        "tile_attribution": settings.map_tile_attribution if settings.map_tile_url else "",
        "max_frame_size": settings.max_frame_size,
        "reply_threads": settings.reply_threads,
        "moderation": moderation,
        # The Matrix bridge's nicknames end with this (none without the bridge): the page marks them.
        "matrix_suffix": MATRIX_SUFFIX if settings.matrix_enabled else None,
    }


def install(app: FastAPI, settings: Settings, *, moderation: bool = False) -> None:
    """Serve the client at `/`, its files under `/static/` and Leaflet under `/static/leaflet/`;
    `moderation`: the /admin routes are there (ADMIN_TOKENS), so the page offers them."""
    index = (STATIC_DIR / "index.html").read_bytes()
    config = client_config(settings, moderation)

    @app.get("/", include_in_schema=False)
    async def web_client(request: Request) -> Response:
        headers = {
            "Content-Security-Policy": content_security_policy(settings, request.headers.get("host")),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "strict-origin-when-cross-origin",
            "Cache-Control": "no-cache",
        }
        return Response(index, media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/client-config", include_in_schema=False)
    async def web_client_config() -> JSONResponse:
        return JSONResponse(config, headers={"Cache-Control": "no-cache"})

    # The more specific mount first: Starlette matches mounts by prefix, in order.
    app.mount("/static/leaflet", StaticFiles(directory=leaflet_dir()), name="leaflet")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
