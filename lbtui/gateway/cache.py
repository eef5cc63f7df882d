"""Response caching on routes (nginx's proxy_cache, Kong's proxy-cache): `cache = { ttl, max_entries, ... }`.

What is kept (RFC 9111, as a shared cache):
- Responses to GET whose status is in `statuses` (default 200, 301, 404, as Kong), read whole, with a body of
  at most `max_body`. HEAD is answered from what a GET kept, and never stores.
- Not kept: a response with `Cache-Control` `no-store`, `no-cache` or `private`, with `Set-Cookie`, or with
  `Vary: *`; a 206 or 304 whatever `statuses` says (they are not whole responses); a response to a request
  that had a body, a `Range`, or `Authorization` (unless the response says `public` or `s-maxage`, RFC 9111
  3.5); a request's own `Cache-Control: no-store`.
- Fresh for `ttl`, or less when the response's `s-maxage` (or else `max-age`, or else `Expires` against its
  `Date`) says so, less its `Age`.
- The key is the scheme, the host, the request target (the normalised path and query, before the route
  rewrites it) and, on routes with auth, the consumer: one consumer never gets another's response. `Vary`
  keeps the varying request headers' values with the entry, and a request with other values misses. A request
  with a sticky session adds its backend's group (gateway/pipeline.py, cached): it gets what its own group answered.
- What is kept is the backend's response as it came: the sticky cookie lbtui sets (gateway/sticky.py) is
  added after, and never kept.
- A POST, PUT, PATCH or DELETE that succeeds drops what is kept for its target, for every consumer
  (RFC 9111 4.4).

What a client can ask: `Cache-Control: no-cache` (or `max-age=0`, or `Pragma: no-cache`) goes to the backend
and keeps the new response; `no-store` goes to the backend and keeps nothing; `only-if-cached` gets 504 on a
miss. `If-None-Match` matching a kept ETag gets 304.

Bounded: at most `max_entries` responses and `max_bytes` of kept bodies per route; the least recently used go
first, and expired entries are dropped by the engine's sweep. Hits carry `X-Cache: HIT` and `Age`; responses
fetched for a lookup carry `X-Cache: MISS`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Final

from lbtui.config import CacheConfig
from lbtui.http import LENGTH, NO_BODY, UNTIL_CLOSE, field_value

X_CACHE: Final = b"X-Cache"
HIT: Final = b"HIT"
MISS: Final = b"MISS"

# A lookup's answer (see ResponseCache.request_policy): what to do with a request.
BYPASS: Final = 0  # neither look up nor keep (not a GET/HEAD, no-store, a body...)
LOOKUP: Final = 1  # look up; on a miss, keep the response if it may be kept
REFRESH: Final = 2  # go to the backend (no-cache), keep the response
ONLY_CACHED: Final = 3  # only-if-cached: a miss is a 504

# Requests that change their target: a success drops what is kept for it (RFC 9111 4.4).
UNSAFE: Final = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
NEVER_KEPT: Final = frozenset({206, 304})  # partial content and "not modified" are not whole responses

# Fields not kept with an entry: the framing is written again on a hit, and Age is computed then.
NOT_KEPT: Final = frozenset({b"content-length", b"transfer-encoding", b"age", b"x-cache"})
# Fields a 304 carries (RFC 9110 15.4.5).
NOT_MODIFIED_KEEPS: Final = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)


class CacheEntry:
    __slots__ = ("age", "body", "etag", "expires", "fields", "size", "status", "stored", "target", "vary")

    def __init__(
        self,
        status: int,
        fields: list[bytes],
        body: bytes,
        stored: float,
        expires: float,
        age: int,
        vary: tuple[tuple[bytes, bytes | None], ...],
        etag: bytes | None,
        key_size: int,
        target: bytes,
    ) -> None:
        self.target = target  # what it answers, whoever asked (see ResponseCache.invalidate)
        self.status = status
        self.fields = fields  # name, ": ", value, CRLF for each field (NOT_KEPT ones left out)
        self.body = body
        self.stored = stored
        self.expires = expires
        self.age = age  # the backend's Age when it was kept
        self.vary = vary  # (lower-case request header name, its value when kept)
        self.etag = etag
        # What it holds, its key and the kept request header values included (all count against max_bytes).
        self.size = len(body) + sum(len(p) for p in fields) + key_size + sum(len(v or b"") for _, v in vary)

    def age_at(self, now: float) -> bytes:
        return b"%d" % (self.age + int(now - self.stored))


class ResponseCache:
    def __init__(self, config: CacheConfig, per_consumer: bool) -> None:
        self.ttl = config.ttl
        self.max_entries = config.max_entries
        self.max_body = config.max_body
        self.max_bytes = config.max_bytes
        self.statuses = config.statuses
        self.per_consumer = per_consumer  # the route has auth: the consumer is part of the key
        self.entries: OrderedDict[bytes, CacheEntry] = OrderedDict()  # least recently used first
        self.targets: dict[bytes, set[bytes]] = {}  # a target's keys (one per consumer): see invalidate
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    # -- the request ---------------------------------------------------------------------------------------
    def request_policy(self, method: bytes, headers: Sequence[tuple[bytes, bytes]], has_body: bool) -> int:
        """What to do with a request: BYPASS, LOOKUP, REFRESH or ONLY_CACHED."""
        if (method != b"GET" and method != b"HEAD") or has_body:
            return BYPASS
        control = b""
        pragma = b""
        authorized = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"cache-control":
                control = value if not control else control + b"," + value
            elif lname == b"pragma":
                pragma = value
            elif lname == b"authorization":
                authorized = True
            elif lname == b"range" or lname == b"if-range":
                return BYPASS  # a part of the response: neither answered from nor kept
        if authorized:
            # A shared cache may keep it only if the response says so (see freshness), and may not answer it
            # from an entry, which another user's request may have made.
            return REFRESH
        if not control:
            return REFRESH if b"no-cache" in pragma.lower() else LOOKUP
        directives = _directives(control)
        if b"no-store" in directives:
            return BYPASS
        if b"no-cache" in directives or directives.get(b"max-age") == b"0":
            return REFRESH
        if b"only-if-cached" in directives:
            return ONLY_CACHED
        return LOOKUP

    @staticmethod
    def target(scheme: bytes, host: bytes, target: bytes) -> bytes:
        """What a response is for, whoever asked: the scheme, the host and the request target."""
        return b"%s\x00%s\x00%s\x00" % (scheme, host.lower(), target)

    def key(self, target: bytes, consumer: bytes) -> bytes:
        return target + consumer if self.per_consumer else target

    def invalidate(self, target: bytes) -> None:
        """Drop what is kept for `target` (every consumer's): a request changed it (RFC 9111 4.4)."""
        for key in list(self.targets.get(target, ())):
            self._drop(key)

    def lookup(self, key: bytes, headers: Sequence[tuple[bytes, bytes]], now: float) -> CacheEntry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            self._drop(key)
            return None
        for name, kept in entry.vary:
            if _field(headers, name) != kept:
                return None
        self.entries.move_to_end(key)
        return entry

    @staticmethod
    def not_modified(entry: CacheEntry, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """The request's If-None-Match names the entry's ETag (weak comparison, RFC 9110 13.1.2)."""
        if entry.etag is None or entry.status != 200:
            return False  # (only a 200's validator is the selected representation's, RFC 9110 13.2.1)
        wanted = _field(headers, b"if-none-match")
        if wanted is None:
            return False
        if wanted.strip() == b"*":
            return True
        mine = _weak(entry.etag)
        return any(_weak(tag) == mine for tag in wanted.split(b","))

    # -- the response --------------------------------------------------------------------------------------
    def freshness(self, status: int, parts: list[bytes], authorized: bool) -> float:
        """How long a response (its head as the upstream side keeps it) stays fresh; 0: not to be kept."""
        if status in NEVER_KEPT or not any(low <= status <= high for low, high in self.statuses):
            return 0.0
        control = b""
        age = 0
        expires: bytes | None = None
        date: bytes | None = None
        for i in range(1, len(parts) - 3, 4):
            lname = parts[i].lower()
            if lname == b"cache-control":
                control = parts[i + 2] if not control else control + b"," + parts[i + 2]
            elif lname == b"set-cookie" or (lname == b"vary" and b"*" in parts[i + 2]):
                return 0.0
            elif lname == b"age":
                age = _seconds(parts[i + 2])
            elif lname == b"expires":
                expires = parts[i + 2]
            elif lname == b"date":
                date = parts[i + 2]
        ttl = self.ttl
        directives: dict[bytes, bytes] = {}
        if control:
            directives = _directives(control)
            if b"no-store" in directives or b"no-cache" in directives or b"private" in directives:
                return 0.0
            given = directives.get(b"s-maxage")
            if given is None:
                given = directives.get(b"max-age")
            elif authorized:
                authorized = False  # s-maxage allows a shared cache to keep it (RFC 9111 3.5)
            if b"public" in directives:
                authorized = False
            if given is not None:
                ttl = min(ttl, float(_seconds(given)))
        if expires is not None and b"max-age" not in directives and b"s-maxage" not in directives:
            ttl = min(ttl, _lifetime(expires, date))  # RFC 9111 4.2.1: max-age wins over Expires
        if authorized:
            return 0.0
        return max(0.0, ttl - age)

    def store(
        self,
        key: bytes,
        target: bytes,
        status: int,
        parts: list[bytes],
        body: bytes,
        now: float,
        fresh: float,
        request_headers: Sequence[tuple[bytes, bytes]],
    ) -> None:
        """Keep a response read whole (`parts`: its head as the upstream side keeps it, status line first)."""
        fields: list[bytes] = []
        vary: list[tuple[bytes, bytes | None]] = []
        etag = None
        age = 0
        for i in range(1, len(parts) - 3, 4):
            lname = parts[i].lower()
            if lname == b"age":
                age = _seconds(parts[i + 2])
            if lname in NOT_KEPT:
                continue
            if lname == b"vary":
                for name in parts[i + 2].split(b","):
                    name = name.strip().lower()
                    if name:
                        vary.append((name, _field(request_headers, name)))
            elif lname == b"etag":
                etag = parts[i + 2]
            fields += parts[i : i + 4]
        entry = CacheEntry(status, fields, body, now, now + fresh, age, tuple(vary), etag, len(key), target)
        if entry.size > self.max_bytes:
            return
        if key in self.entries:
            self._drop(key)
        self.entries[key] = entry
        self.bytes += entry.size
        self.targets.setdefault(target, set()).add(key)
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def sweep(self, now: float) -> None:
        """Drop expired entries."""
        for key in [k for k, e in self.entries.items() if e.expires <= now]:
            self._drop(key)

    def _drop(self, key: bytes) -> None:
        entry = self.entries.pop(key)
        self.bytes -= entry.size
        keys = self.targets.get(entry.target)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.targets[entry.target]


class Keeping:
    """One request's business with its route's cache (gateway/pipeline.py sets it; the proxy's exchange holds
    it): the target whose entries its success drops (an unsafe method), or, on a miss, the key its response is
    kept under, read into memory while it may be kept."""

    def __init__(self, cache: ResponseCache, target: bytes) -> None:
        self.cache = cache
        self.target = target  # what the cache knows its target by
        self.key = b""  # a miss: its response is kept under this key, if it may (b"": not kept)
        self.group = b""  # the sticky group its key was made for (b"": none)
        self.headers: list[tuple[bytes, bytes]] = []  # the request's headers as sent (for Vary)
        self.fresh = 0.0  # how long the response stays fresh (set with its head)
        self.head: list[bytes] | None = None  # the response's head as the upstream side kept it
        self.body: list[bytes] | None = None  # the response body read so far, while it may be kept
        self.size = 0

    def authorized(self) -> bool:
        """Whether the request carried Authorization (a shared cache keeps such a response only if told)."""
        return field_value(self.headers, b"authorization") is not None

    def response_head(self, status: int, parts: list[bytes], framing: int) -> None:
        """The response's head (framing: lbtui.http's): read its body into memory too, while it may be kept."""
        if framing == NO_BODY and status != 204 and status != 304:
            framing = LENGTH  # (a 200 with no body but a Content-Length: 0)
        fresh = self.cache.freshness(status, parts, self.authorized())
        if fresh <= 0.0 or framing == UNTIL_CLOSE:
            self.key = b""
            return
        self.fresh = fresh
        self.head = list(parts)
        self.body = []

    def store(self, status: int, now: float) -> None:
        """The response was read whole: keep it."""
        head, body = self.head, self.body
        self.body = None
        if head is not None and body is not None:
            joined = b"".join(body)
            self.cache.store(self.key, self.target, status, head, joined, now, self.fresh, self.headers)

    def store_whole(self, status: int, head: list[bytes], body: bytes, now: float) -> None:
        """A reply made here (an aggregate's) to a miss: kept as a backend's response would be."""
        fresh = self.cache.freshness(status, head, self.authorized())
        if fresh > 0.0 and len(body) <= self.cache.max_body:
            self.cache.store(self.key, self.target, status, head, body, now, fresh, self.headers)

    def take(self, data: bytes) -> None:
        """More of the response's body: kept while the whole stays within the cache's max_body."""
        body = self.body
        if body is not None:
            self.size += len(data)
            if self.size <= self.cache.max_body:
                body.append(data)
            else:
                self.body = None  # too large to keep: passed on only


def hit_fields(entry: CacheEntry, now: float) -> list[bytes]:
    """The kept fields for a hit, with its Age (`X-Cache: HIT` goes with the exchange's extra headers)."""
    return [*entry.fields, b"Age", b": ", entry.age_at(now), b"\r\n"]


def not_modified_fields(entry: CacheEntry, now: float) -> list[bytes]:
    """A 304's fields for a hit whose ETag the request named (RFC 9110 15.4.5: those a 200 would have sent
    that describe the representation's freshness and identity)."""
    kept = []
    for i in range(0, len(entry.fields), 4):
        if entry.fields[i].lower() in NOT_MODIFIED_KEEPS:
            kept += entry.fields[i : i + 4]
    return [*kept, b"Age", b": ", entry.age_at(now), b"\r\n"]


def _directives(value: bytes) -> dict[bytes, bytes]:
    """Cache-Control directives, lower case, with their values (b"" for none; quotes removed)."""
    out: dict[bytes, bytes] = {}
    for part in value.split(b","):
        name, _, arg = part.strip().partition(b"=")
        if name:
            out[name.strip().lower()] = arg.strip().strip(b'"')
    return out


def _seconds(value: bytes) -> int:
    """A delta-seconds value (RFC 9111 1.2.2); anything else counts as 0."""
    value = value.strip()
    return int(value) if value.isdigit() else 0


def _field(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """All the values of the request fields called `name` (lower case), joined; None when it has none."""
    found = [v for n, v in headers if n.lower() == name]
    return b", ".join(found) if found else None


def _lifetime(expires: bytes, date: bytes | None) -> float:
    """Seconds from the response's Date (or now) to its Expires; 0 for a date that does not parse (RFC 9111
    5.3: an invalid Expires, such as "0", means already expired)."""
    try:
        until = parsedate_to_datetime(expires.decode("latin-1")).timestamp()
        since = parsedate_to_datetime(date.decode("latin-1")).timestamp() if date is not None else time.time()
    except (ValueError, TypeError, IndexError, OverflowError):
        return 0.0
    return max(0.0, until - since)


def _weak(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag.startswith(b"W/") else tag
