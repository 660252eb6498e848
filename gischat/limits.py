"""Rate limits and per-address quotas: what keeps one client from crowding out everybody else.

Token buckets everywhere: a client may burst (paste a few messages, share two layers in a row)
but not keep a high rate up. Buckets are plain slotted objects refilled lazily when they are
consulted, so an idle connection costs nothing and no timer runs for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


class TokenBucket:
    """`rate` tokens per second up to `burst`; a rate of 0 means unlimited."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Spend `amount` tokens if there are enough; a refusal spends nothing."""
        if self.rate <= 0:
            return True
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True

    def wait(self, now: float, amount: float = 1.0) -> float:
        """Seconds until `amount` tokens are there (0: now), spending nothing."""
        if self.rate <= 0:
            return 0.0
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        return max(0.0, (amount - tokens) / self.rate)

    def spend(self, now: float, amount: float) -> float:
        """Spend `amount` even beyond what is there (a debt); the seconds until the debt is paid
        (0: none). For what cannot be refused, only slowed down: bytes already read."""
        if self.rate <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - amount
        self.stamp = now
        return max(0.0, -self.tokens / self.rate)

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely, i.e. its owner can be forgotten."""
        return self.rate <= 0 or self.tokens + (now - self.stamp) * self.rate >= self.burst


@dataclass(frozen=True, slots=True)
class Rate:
    """A limit as configured, and how to say it to the client who went past it."""

    per_second: float
    burst: float
    what: str

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def bucket(self, now: float) -> TokenBucket:
        return TokenBucket(self.per_second, self.burst, now)

    def reason(self) -> str:
        if self.per_second >= 1:
            sustained = f"{number(self.per_second)} per second"
        else:
            sustained = f"{number(self.per_second * 60)} per minute"
        return f"slow down: more than {number(self.burst)} {self.what} at once or {sustained}"


def number(value: float) -> str:
    """1048576 rather than 1.04858e+06; a fraction keeps three significant digits."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def per_minute(count: float, what: str) -> Rate:
    """`count` per minute, all of which may come at once."""
    return Rate(count / 60, max(count, 1.0), what)


@dataclass(frozen=True, slots=True)
class RateSettings:
    """The rate settings as configured: a rate per second (or minute) and a burst each."""

    message_rate: float
    message_burst: int
    byte_rate: int
    byte_burst: int
    images_per_minute: float
    layers_per_minute: float
    rate_strikes_per_minute: int
    registrations_per_minute: float
    put_rate: float
    put_burst: int


@dataclass(frozen=True, slots=True)
class Rates:
    """Every per-connection and per-address rate of an instance."""

    messages: Rate
    bytes: Rate
    images: Rate
    layers: Rate
    strikes: Rate
    registrations: Rate
    puts: Rate

    @classmethod
    def from_settings(cls, settings: RateSettings) -> Rates:
        return cls(
            messages=Rate(settings.message_rate, settings.message_burst, "messages"),
            bytes=Rate(settings.byte_rate, settings.byte_burst, "bytes"),
            images=per_minute(settings.images_per_minute, "images"),
            layers=per_minute(settings.layers_per_minute, "layers"),
            strikes=per_minute(settings.rate_strikes_per_minute, "refusals"),
            registrations=per_minute(settings.registrations_per_minute, "nickname registrations"),
            puts=Rate(settings.put_rate, settings.put_burst, "messages"),
        )


class ConnectionLimits:
    """One websocket's buckets, created on its first message (an idle socket holds none)."""

    __slots__ = ("bytes", "images", "layers", "messages", "strikes")

    def __init__(self, rates: Rates, now: float) -> None:
        self.messages = rates.messages.bucket(now)
        self.bytes = rates.bytes.bucket(now)
        self.images = rates.images.bucket(now)
        self.layers = rates.layers.bucket(now)
        self.strikes = rates.strikes.bucket(now)


class AddressBook:
    """What each client address holds right now: open websockets, nicknames, a few buckets.

    Entries exist only while an address has something open or a bucket that has not refilled,
    so a scan from many addresses leaves nothing behind once it stops.
    """

    def __init__(self, rates: Rates, clock: Clock = time.monotonic) -> None:
        self.rates = rates
        self.clock = clock
        self.websockets: dict[str, int] = {}
        self.nicknames: dict[str, int] = {}
        self._registrations: dict[str, TokenBucket] = {}
        self._puts: dict[str, TokenBucket] = {}

    @staticmethod
    def _add(counts: dict[str, int], address: str, delta: int) -> None:
        value = counts.get(address, 0) + delta
        if value > 0:
            counts[address] = value
        else:
            counts.pop(address, None)

    def open_websocket(self, address: str, limit: int) -> bool:
        if self.websockets.get(address, 0) >= limit:
            return False
        self._add(self.websockets, address, 1)
        return True

    def close_websocket(self, address: str) -> None:
        self._add(self.websockets, address, -1)

    def add_nickname(self, address: str) -> None:
        self._add(self.nicknames, address, 1)

    def drop_nickname(self, address: str) -> None:
        self._add(self.nicknames, address, -1)

    def may_register(self, address: str) -> bool:
        return self._take(self._registrations, self.rates.registrations, address)

    def may_put(self, address: str) -> bool:
        return self._take(self._puts, self.rates.puts, address)

    def _take(self, buckets: dict[str, TokenBucket], rate: Rate, address: str) -> bool:
        if not rate.enabled:
            return True
        now = self.clock()
        bucket = buckets.get(address)
        if bucket is None:
            if len(buckets) > 4096:
                self._forget_full(buckets, now)
            bucket = buckets[address] = rate.bucket(now)
        return bucket.take(now)

    @staticmethod
    def _forget_full(buckets: dict[str, TokenBucket], now: float) -> None:
        """Drop the buckets that refilled: their addresses are back to a clean slate anyway."""
        for address in [address for address, bucket in buckets.items() if bucket.full(now)]:
            del buckets[address]
