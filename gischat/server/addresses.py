"""Whom a connection comes from: its socket addresses, and the real client behind trusted proxies."""

from __future__ import annotations

import asyncio
from typing import Any

from gischat.networks import Networks


def address_of(transport_info: Any) -> tuple[str, int] | None:
    """(host, port) of a socket address from `get_extra_info("peername"/"sockname")`; None for a
    unix socket or none at all."""
    if isinstance(transport_info, tuple | list) and len(transport_info) >= 2:
        return str(transport_info[0]), int(transport_info[1])
    return None


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The peer's IP address, or "" when it has none (a unix socket): whom a connection slot counts."""
    address = address_of(transport.get_extra_info("peername"))
    return address[0] if address is not None else ""


def real_client(peer: str, scope_headers: list[tuple[bytes, bytes]], trusted: Networks) -> str:
    """The client's address: the peer's, or behind trusted proxies the nearest untrusted
    address of X-Forwarded-For (the one uvicorn's proxy-headers middleware shows the app)."""
    if not peer or peer not in trusted:
        return peer
    forwarded = b",".join(value for name, value in scope_headers if name.lower() == b"x-forwarded-for")
    hops = [hop.strip() for hop in forwarded.decode("latin-1").split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return hops[0] if hops else peer
