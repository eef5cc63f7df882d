"""The gateway's pipeline: what a route does to a request before the proxy sends it, and to its response.

For a request on a listener with routes, `take` runs the steps in this order, each of which may answer the
request itself (and then nothing reaches a backend):

1. CORS preflight (`preflight`): an OPTIONS with Access-Control-Request-Method, answered 204 or 403.
2. Route match (routing.Router.route): 404 when no route matches, 405 when one would with another method.
3. Client address (ip_allow, ip_deny): 403.
4. Auth (api_key, jwt): 401; the consumer it names is what the backend sees in X-Consumer.
5. Rate limit (`within_rate`): 429 with Retry-After; RateLimit-* fields on the response.
6. Sticky session (`stick`): the backend its cookie names, the cookie taken off the request.
7. The request written again for the backend (strip_prefix, rewrite, header changes: proxy/head.py).
8. CORS grant fields for the response; the route's retries and timeout.
9. Cache (`cached`): a hit answered here (or 304), a miss marked so that its response is kept.
10. Aggregate: the route's parts called and merged (gateway/aggregate.py) instead of one backend.

It returns the service to send the request to, or None when it was answered. On the response side the proxy
calls `keep_or_invalidate` (cache; the exchange's `Keeping` then reads the body and stores a response read
whole) and `sticky_cookie` (Set-Cookie).

The gateway knows the proxy's exchange only as a `GatewayRequest` (below): the layers go one way, the
proxy over the gateway (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from lbtui.gateway.cache import (
    BYPASS,
    HIT,
    MISS,
    ONLY_CACHED,
    REFRESH,
    UNSAFE,
    X_CACHE,
    Keeping,
    ResponseCache,
    hit_fields,
    not_modified_fields,
)
from lbtui.gateway.sticky import cookie_values, response_with_cookie, set_cookie
from lbtui.http import NO_BODY, field_value

if TYPE_CHECKING:
    from lbtui.config import RetriesConfig, StickyConfig
    from lbtui.core.model import Backend, RouteStats, Service
    from lbtui.gateway.ratelimit import TokenBuckets
    from lbtui.gateway.routing import CompiledRoute, Router


class GatewayRequest(Protocol):
    """What the gateway's steps read and set of a request and its response (the proxy's Exchange is one)."""

    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]  # as the client sent them, its Host in normal form
    req_framing: int  # lbtui.http's NO_BODY, LENGTH, CHUNKED
    service: Service | None
    backend: Backend | None  # the backend of its current attempt
    consumer: bytes  # who auth said the client is (b"": no one)
    route: CompiledRoute | None  # set when its route changes the response
    route_stats: RouteStats | None  # the numbers of the route that took it
    response_extra: tuple[tuple[bytes, bytes], ...]  # fields for the response: RateLimit-*, CORS, X-Cache
    response_timeout: float  # its route's timeout (0.0: its service's)
    retries_config: RetriesConfig | None  # its route's retries (None: its service's)
    sticky: StickyConfig | None  # its service's sticky sessions (None: not sticky)
    bound: Backend | None  # the backend its sticky cookie named, while it may take it
    strip_cookie: bytes  # the cookie its backend must not see
    keeping: Keeping | None  # its business with its route's cache (gateway/cache.py), None: none

    def client_address(self) -> bytes: ...  # a trusted proxy's X-Forwarded-For, else the peer's

    def scheme(self) -> bytes: ...  # b"https" on a TLS listener, else b"http"

    def now(self) -> float: ...  # the engine's clock

    def consumer_of_key(self, key: bytes) -> bytes | None: ...  # the consumer an API key names

    def compose_for(self, route: CompiledRoute, consumer: bytes) -> None: ...  # the request for the backend

    def answer_aside(self, route: CompiledRoute) -> None: ...  # its route's aggregate answers it

    def respond_error(
        self,
        status: int,
        detail: str,
        retry_after: bool = False,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None: ...

    def respond_local(self, status: int, fields: list[bytes], body: bytes, route: CompiledRoute) -> None: ...


def take(ex: GatewayRequest, router: Router) -> Service | None:
    """The route's steps for `ex` (the module's docstring): the service to send it to, or None when answered
    here or handed to an aggregate."""
    if router.cors and ex.method == b"OPTIONS" and preflight(ex, router):
        return None
    route = router.route(ex)
    if route is None:
        allow = router.allowed(ex)
        if allow:
            router.unmatched["method"] += 1
            ex.respond_error(
                405,
                "this route does not take this method",
                extra=((b"Allow", ", ".join(allow).encode()),),
            )
        else:
            router.unmatched["no route"] += 1
            ex.respond_error(404, "no route matches this request")
        return None
    ex.route_stats = route.stats
    if route.timeout:
        ex.response_timeout = route.timeout
    service = route.service
    if route.ip_allow is not None or route.ip_deny is not None:
        address = ex.client_address()
        denied, allowed = route.ip_deny, route.ip_allow
        if (denied is not None and denied.contains(address)) or (
            allowed is not None and not allowed.contains(address)
        ):
            reject(ex, "ip", 403, "this client address may not use this route")
            return None
    consumer = b""
    if route.api_key is not None:
        consumer = api_key_consumer(ex, route.api_key)
        if not consumer:
            return None
    elif route.jwt is not None:
        subject, challenge = route.jwt.consumer(field_value(ex.headers, b"authorization"))
        if subject is None:
            reject(
                ex,
                "auth",
                401,
                "a valid bearer token is required" if challenge != b"Bearer" else "no bearer token",
                extra=((b"WWW-Authenticate", challenge),),
            )
            return None
        consumer = subject
    ex.consumer = consumer
    original_url, original_headers = ex.url, ex.headers
    if route.limiter is not None and not within_rate(ex, route, route.limiter, consumer):
        return None
    if service is not None and service.config.sticky is not None:
        stick(ex, service)
    ex.compose_for(route, consumer)
    cors = route.cors
    if cors is not None:
        ex.response_extra += cors.response_headers(field_value(ex.headers, b"origin"))
    if route.response_remove or ex.response_extra:
        ex.route = route
    if route.retries is not None:
        ex.retries_config = route.retries
    if route.cache is not None and cached(ex, route, route.cache, original_url, original_headers):
        return None
    if route.aggregator is not None:
        ex.route = route
        ex.answer_aside(route)
        return None
    if service is None:
        ex.respond_error(404, "no route matches this request")
    return service


def stick(ex: GatewayRequest, service: Service) -> None:
    """Its service has sticky sessions: find the backend its cookie names, if it may take it."""
    ex.sticky = service.config.sticky
    name = service.sticky_cookie()
    values = cookie_values(ex.headers, name)
    if values:
        ex.strip_cookie = name
        ex.bound = service.sticky_backend(values)


def preflight(ex: GatewayRequest, router: Router) -> bool:
    """A CORS preflight for a route with `cors`: answered here (204 or 403), never forwarded. False when
    this OPTIONS is not one (it is then routed as any request)."""
    requested = field_value(ex.headers, b"access-control-request-method")
    origin = field_value(ex.headers, b"origin")
    if requested is None or origin is None:
        return False
    method = requested.strip()
    route = router.route(ex, method)
    if route is None:
        route = router.cors_route(ex)  # a method no route takes here: refused below
    if route is None or route.cors is None:
        return False  # not a route with cors: the OPTIONS is routed (and forwarded) as any request
    cors = route.cors
    assert cors is not None
    asked = field_value(ex.headers, b"access-control-request-headers") or b""
    grant = cors.preflight(origin, method, asked)
    ex.route_stats = route.stats
    if grant is None:
        reject(ex, "cors", 403, "CORS preflight refused: this origin, method or header is not allowed")
    else:
        ex.respond_error(204, "", extra=grant)
    return True


def cached(
    ex: GatewayRequest,
    route: CompiledRoute,
    cache: ResponseCache,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
) -> bool:
    """Answer from the route's cache (True), or mark the exchange so that its response is kept."""
    scheme = ex.scheme()
    target = cache.target(scheme, field_value(headers, b"host") or b"", url)
    policy = cache.request_policy(ex.method, headers, ex.req_framing != NO_BODY)
    if policy == BYPASS:
        if ex.method in UNSAFE:  # its success drops what is kept for its target (keep_or_invalidate)
            ex.route = route
            ex.keeping = Keeping(cache, target)
        return False
    ex.route = route
    key = cache.key(target, ex.consumer)
    bound = ex.bound
    group = b""
    if bound is not None:
        # A sticky session gets what its own group answered (a canary's users see the canary's pages);
        # requests without a session share one entry, as without stickiness.
        group = bound.group.encode()
        key += b"\0sticky\0" + group
    now = ex.now()
    if policy != REFRESH:
        entry = cache.lookup(key, headers, now)
        if entry is not None:
            cache.hits += 1
            if ex.route_stats is not None:
                ex.route_stats.cache[0] += 1
            ex.response_extra += ((X_CACHE, HIT),)
            if cache.not_modified(entry, headers):
                ex.respond_local(304, not_modified_fields(entry, now), b"", route)
            else:
                ex.respond_local(entry.status, hit_fields(entry, now), entry.body, route)
            return True
        if policy == ONLY_CACHED:
            ex.respond_error(504, "only-if-cached, and this response is not in the cache")
            return True
    cache.misses += 1
    if ex.route_stats is not None:
        ex.route_stats.cache[1] += 1
    ex.response_extra += ((X_CACHE, MISS),)
    if ex.method == b"GET":
        keeping = ex.keeping = Keeping(cache, target)
        keeping.key = key
        keeping.group = group
        keeping.headers = headers
    return False


def within_rate(ex: GatewayRequest, route: CompiledRoute, limiter: TokenBuckets, consumer: bytes) -> bool:
    """Take a token from the bucket of this request's key; False after answering 429."""
    if consumer and route.consumer_limiters is not None:
        limiter = route.consumer_limiters.get(consumer, limiter)
    kind = route.limit_key
    if kind == "client_ip":
        key = ex.client_address()
    elif kind == "consumer":
        key = consumer
    else:
        key = field_value(ex.headers, kind.encode()) or b""
    allowed, remaining, reset = limiter.take(key, ex.now())
    headers = limiter.headers(remaining, reset)
    if allowed:
        ex.response_extra += headers
        return True
    reject(
        ex,
        "rate limit",
        429,
        "too many requests: wait for Retry-After",
        extra=((b"Retry-After", b"%d" % reset), *headers),
    )
    return False


def reject(
    ex: GatewayRequest, reason: str, status: int, detail: str, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """A gateway policy refuses the request: counted for its route by `reason`, and answered."""
    stats = ex.route_stats
    if stats is not None:
        stats.reject(reason)
    ex.respond_error(status, detail, extra=extra)


def api_key_consumer(ex: GatewayRequest, header: bytes) -> bytes:
    """The consumer an API key in `header` names; "" after answering 401 (no key, two keys, unknown)."""
    keys = [value for name, value in ex.headers if name.lower() == header]
    consumer = ex.consumer_of_key(keys[0]) if len(keys) == 1 else None
    if consumer is None:
        shown = header.decode("latin-1")
        reject(
            ex,
            "auth",
            401,
            f"a valid API key is required in the {shown} header" if keys else f"no API key in {shown}",
            extra=((b"WWW-Authenticate", b'ApiKey header="' + header + b'"'),),
        )
        return b""
    return consumer


def sticky_cookie(ex: GatewayRequest, parts: list[bytes]) -> list[bytes]:
    """The response head with the sticky cookie set when the request's cookie did not name the backend
    that answered (none, unknown, or one that could not take it), and without a backend's own cookie of
    that name. (What the route's cache keeps was taken before: it never holds our Set-Cookie.)"""
    sticky = ex.sticky
    service = ex.service
    assert sticky is not None
    assert service is not None
    backend = ex.backend
    set_value = None
    if backend is not None and backend is not ex.bound:
        value = service.sticky_value_of(backend)
        if value is not None:
            set_value = set_cookie(sticky, value, ex.scheme() == b"https")
            backend.sticky_cookies += 1
    return response_with_cookie(parts, service.sticky_cookie(), set_value)


def keep_or_invalidate(
    ex: GatewayRequest, keeping: Keeping, status: int, parts: list[bytes], framing: int
) -> None:
    """A backend's response head to a request its route's cache knows: a miss's response is read to be kept
    (Keeping.response_head); an unsafe method's success drops what the cache keeps for its target."""
    if keeping.group and ex.backend is not ex.bound:
        keeping.key = b""  # its session moved: the reply is not its group's to keep under that key
    if keeping.key:
        keeping.response_head(status, parts, framing)
    elif status < 400:
        keeping.cache.invalidate(keeping.target)  # a POST, PUT, PATCH or DELETE changed it
