"""Rate limits per route (Kong's rate-limiting, Envoy's local rate limit): a token bucket per key.

- A route's `rate_limit = { rate, per, burst, key }` gives each key a bucket of `burst` tokens (default:
  `rate`), refilled at `rate` per `per`; a request takes one token, and one that finds none gets `429` with
  `Retry-After` (whole seconds until a token is back, at least 1) and the `RateLimit-Limit`,
  `RateLimit-Remaining` and `RateLimit-Reset` headers (IETF draft); answers that pass carry them too.
- The key is the client address (`client_ip`: the peer, or with trusted_proxies the client their
  X-Forwarded-For names, so a client cannot rotate it), the authenticated consumer (`consumer`), or a request
  header (`header:NAME`; requests without it share one bucket).
- The bucket belongs to the route, and routes match the normalised path: `/login/`, `//login` and
  `/./login` are one bucket.
- Memory is bounded: buckets that are full again (idle for burst / rate x per) are dropped by `sweep`, and
  past MAX_KEYS keys the fullest go first.
"""

from __future__ import annotations

import math
from typing import Final

from lbtui.config import RateLimitConfig

MAX_KEYS: Final = 100_000


class TokenBuckets:
    def __init__(self, config: RateLimitConfig) -> None:
        self.rate = config.rate / config.per  # tokens per second
        self.burst = float(config.burst or config.rate)
        self.limit_header = b"%d" % int(self.burst)
        self.buckets: dict[bytes, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self.refused = 0

    def take(self, key: bytes, now: float) -> tuple[bool, int, int]:
        """Take a token for `key`: (allowed, tokens left, seconds until the next token or a full bucket)."""
        tokens, then = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0 - 1e-9:  # (the clock's float arithmetic may leave a whole token a hair short)
            tokens = max(0.0, tokens - 1.0)
            self.buckets[key] = (tokens, now)
            if len(self.buckets) > MAX_KEYS:
                self.sweep(now, force=True)
            return True, int(tokens), math.ceil((self.burst - tokens) / self.rate)
        self.buckets[key] = (tokens, now)
        self.refused += 1
        return False, 0, max(1, math.ceil((1.0 - tokens) / self.rate))

    def headers(self, remaining: int, reset: int) -> tuple[tuple[bytes, bytes], ...]:
        return (
            (b"RateLimit-Limit", self.limit_header),
            (b"RateLimit-Remaining", b"%d" % remaining),
            (b"RateLimit-Reset", b"%d" % reset),
        )

    def sweep(self, now: float, force: bool = False) -> None:
        """Drop buckets that have refilled (they are as good as new); with `force`, the fuller half too."""
        full = [
            k for k, (tokens, then) in self.buckets.items() if tokens + (now - then) * self.rate >= self.burst
        ]
        for key in full:
            del self.buckets[key]
        if force and len(self.buckets) > MAX_KEYS // 2:
            by_fullness = sorted(self.buckets, key=lambda k: self.buckets[k][0], reverse=True)
            for key in by_fullness[: len(self.buckets) - MAX_KEYS // 2]:
                del self.buckets[key]
