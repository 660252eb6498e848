"""Which web pages may drive a visitor's browser into the chat.

Browsers attach an `Origin` header to websocket handshakes and cross-site requests; native
clients (QGIS, curl, scripts) send none. Without a check, any page on the internet could open
a websocket to the instance from its visitors' browsers and speak in their name, so pages are
let in only from the instance's own host or from origins the operator listed.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """No Origin, a listed origin, `*` in the list, or a page served by this very host."""
    if origin is None or "*" in allowed:
        return True
    origin = origin.strip().rstrip("/").lower()
    if origin in allowed:
        return True
    if not host:
        return False
    try:
        page_host = urlsplit(origin).hostname
    except ValueError:
        return False
    # Behind a proxy the Host header often lacks the port the page used: compare names only.
    served_host = urlsplit(f"//{host.strip().lower()}").hostname
    return page_host is not None and page_host == served_host
