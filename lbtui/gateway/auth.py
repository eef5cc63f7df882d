"""API-key authentication of consumers (Kong's key-auth): who is calling, from a header.

- Keys are known only by their SHA-256 (`api_key_sha256`, or the key in an environment variable named by
  `api_key_env`, hashed at start): no key is kept in clear, logged or shown.
- A presented key is hashed and compared with every consumer's digest in constant time (hmac.compare_digest,
  no early exit), so the time taken says nothing about which digest was near.
- The key header is removed before the request goes upstream, and the consumer's name is sent as
  `X-Consumer` instead; a client's own `X-Consumer` is always dropped (lbtui.http.SET_BY_PROXY), so a backend
  can believe it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from typing import Final

from lbtui.config import ConsumerConfig

CONSUMER_HEADER: Final = b"X-Consumer"


def digest_of(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeys:
    """Every consumer's key digest, and who a presented key belongs to."""

    def __init__(self, consumers: Sequence[ConsumerConfig], environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.digests: list[tuple[bytes, bytes]] = []  # (sha256 digest, consumer name)
        for consumer in consumers:
            if consumer.api_key_sha256 is not None:
                digest = bytes.fromhex(consumer.api_key_sha256)
            elif consumer.api_key_env is not None and consumer.api_key_env in env:
                digest = digest_of(env[consumer.api_key_env].encode())
            else:
                continue  # lbtui.features.refused names a consumer whose variable is not set
            self.digests.append((digest, consumer.name.encode()))

    def consumer(self, key: bytes) -> bytes | None:
        """The name of the consumer whose key this is, or None."""
        presented = digest_of(key)
        found = None
        for digest, name in self.digests:  # all of them, whatever matched: constant time
            if hmac.compare_digest(digest, presented):
                found = name
        return found


def missing_keys(consumers: Sequence[ConsumerConfig], environ: Mapping[str, str] | None = None) -> list[int]:
    """The indexes of consumers whose api_key_env names a variable that is not set."""
    env = os.environ if environ is None else environ
    return [
        i
        for i, consumer in enumerate(consumers)
        if consumer.api_key_env is not None and not env.get(consumer.api_key_env)
    ]
