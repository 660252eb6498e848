"""Which client addresses belong to a list of networks: trusted proxies, and who may scrape `/metrics`.

One check for both, written here rather than borrowed from a server's private classes: entries are
IP addresses or CIDR networks (IPv4 or IPv6), `*` means everyone, and any other entry (a unix
socket path, say) matches itself literally.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Verdicts remembered per address (every connection asks, for the same few proxies and clients);
# past this many distinct addresses the memory starts over.
MAX_REMEMBERED = 4096


class Networks:
    """A set of networks, asked `address in networks`."""

    __slots__ = ("everyone", "literals", "networks", "verdicts")

    def __init__(self, entries: str | Iterable[str]) -> None:
        items = entries.split(",") if isinstance(entries, str) else list(entries)
        self.everyone = False
        self.networks: list[Network] = []
        self.literals: set[str] = set()
        self.verdicts: dict[str, bool] = {}
        for raw in items:
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                self.everyone = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.literals.add(entry)

    def __contains__(self, address: object) -> bool:
        if self.everyone:
            return True
        if not isinstance(address, str):
            return False
        verdict = self.verdicts.get(address)
        if verdict is None:
            if len(self.verdicts) >= MAX_REMEMBERED:
                self.verdicts.clear()
            verdict = self.verdicts[address] = self._judge(address)
        return verdict

    def _judge(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:  # "?" or a unix socket: only what is listed literally
            return address in self.literals
        return any(ip in network for network in self.networks)
