"""One membership check for trusted proxies (FORWARDED_ALLOW_IPS) and `/metrics` (METRICS_NETWORKS)."""

from __future__ import annotations

import pytest

from gischat.networks import Networks


@pytest.mark.parametrize(
    ("entries", "address", "inside"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("10.0.0.0/8, 192.168.0.0/16", "10.20.30.40", True),
        (["10.0.0.0/8", "192.168.0.0/16"], "192.168.1.1", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("::1, fc00::/7", "::1", True),
        ("fc00::/7", "fd12::5", True),
        ("fc00::/7", "2001:db8::1", False),
        ("192.0.2.7/24", "192.0.2.200", True),  # host bits set: the network it names
        ("*", "203.0.113.9", True),
        ("*", "?", True),
        ("10.0.0.0/8", "?", False),  # an unknown peer is in no network
        ("/run/gischat.sock", "/run/gischat.sock", True),  # a literal entry matches itself only
        ("/run/gischat.sock", "127.0.0.1", False),
        ("", "127.0.0.1", False),
    ],
)
def test_membership(entries: str | list[str], address: str, inside: bool) -> None:
    assert (address in Networks(entries)) is inside


def test_anything_but_a_string_is_outside() -> None:
    assert None not in Networks("127.0.0.1")
