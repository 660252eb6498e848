"""Who may moderate: a bearer secret from ADMIN_TOKENS, from a network ADMIN_NETWORKS allows.

The moderation routes are an open door on the internet like the rest of the instance, so the
secret is the only thing that stands between a troll and the kick button. It is checked in
constant time against every configured secret (`hmac.compare_digest`, and no early exit on a
match), so timing tells nothing about which secret, or which prefix, came close; wrong guesses
are counted per client address (the real one, behind a trusted proxy) and past
ADMIN_FAILURES_PER_MINUTE that address is answered 429 without any check at all until its
bucket refills, so a correct guess cannot be told apart from a wrong one while it is locked.
Secrets live as `SecretStr` until the comparison: no log line, metric or error quotes one; a
moderator is known everywhere else by the label in front of the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass

from pydantic import SecretStr

from gischat.limits import Clock, TokenBucket, per_minute
from gischat.networks import Networks

# Addresses whose failure buckets are kept before those that refilled are forgotten.
MAX_TRACKED_ADDRESSES = 4096
MISSING_DETAIL = "a moderator's bearer token is required"
WRONG_DETAIL = "a moderator's bearer token is required: wrong token"
NETWORK_DETAIL = "moderation is not allowed from your address"


@dataclass(frozen=True, slots=True)
class ModerationSettings:
    """The moderation settings: tokens by label, networks, the announcer, the failure rate."""

    admin_tokens: dict[str, SecretStr]
    admin_networks: list[str]
    announcer_name: str
    admin_failures_per_minute: int


class Denied(Exception):
    """A moderation request is refused: status (401, 403, 429), detail, and when to come back."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Gate:
    """Checks a request's address and bearer secret; answers the moderator's label or raises Denied."""

    def __init__(self, settings: ModerationSettings, clock: Clock = time.monotonic) -> None:
        # (label, digest of the secret): digests of equal length, so that not even a secret's
        # length shows in the time a comparison takes.
        self._secrets = [
            (label, digest(secret.get_secret_value())) for label, secret in settings.admin_tokens.items()
        ]
        self._networks = Networks(settings.admin_networks) if settings.admin_networks else None
        self._rate = per_minute(settings.admin_failures_per_minute, "failed sign-ins")
        self._failures: dict[str, TokenBucket] = {}
        self.clock = clock

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self._secrets]

    def admit(self, address: str, secret: str | None) -> str:
        """The label of the moderator whose secret this is; Denied otherwise."""
        if self._networks is not None and address not in self._networks:
            raise Denied(403, NETWORK_DETAIL)
        now = self.clock()
        bucket = self._failures.get(address)
        if bucket is not None:
            wait = bucket.wait(now)
            if wait > 0:
                raise Denied(429, self._locked_detail(), max(1, math.ceil(wait)))
        if not secret:
            raise Denied(401, MISSING_DETAIL)
        label = self.identify(secret)
        if label is None:
            self._failed(address, now)
            raise Denied(401, WRONG_DETAIL)
        return label

    def identify(self, secret: str) -> str | None:
        """Compare with every secret, always all of them, each in constant time."""
        given = digest(secret)
        found: str | None = None
        for label, expected in self._secrets:
            if hmac.compare_digest(given, expected) and found is None:
                found = label
        return found

    def _failed(self, address: str, now: float) -> None:
        bucket = self._failures.get(address)
        if bucket is None:
            if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                for known in [a for a, b in self._failures.items() if b.full(now)]:
                    del self._failures[known]
            bucket = self._failures[address] = self._rate.bucket(now)
        bucket.take(now)

    def _locked_detail(self) -> str:
        count = int(self._rate.burst)
        return (
            f"too many failed moderator sign-ins from your address (max {count} per minute), try again later"
        )
