"""The client side: one protocol per client connection, one Exchange per request.

Invariants:
- Requests on a connection are answered in the order they arrived (pipelining): one exchange is served at a
  time; later ones are parsed and held, their bodies buffered, until their turn (reading stops while
  PIPELINE_DEPTH requests or PIPELINE_LIMIT body bytes wait).
- After a request with `Connection: close`, or an Upgrade request whose protocol is tunnelled, nothing more is
  parsed as HTTP. Only the protocols its route allows (listener `upgrades`, route `upgrades`; `websocket` by
  default) are offered to the backend; an Upgrade with none of them is dropped and the request served as a
  plain one. A 101 is passed on only for a protocol that was offered; any other is a gateway error (retried
  where retries.on says so, else 502).
- What reaches a backend about the request's origin is lbtui's: the Host in one normal form (http.normal_host,
  400 for a Host that is not one host), X-Forwarded-* and Forwarded from a client only through a listener's
  trusted_proxies, no header named with `_` (listener headers_with_underscores), Content-Length in its
  canonical digits, and a path with no %2F or %5C unless the listener says keep (escaped_slashes).
- Bodies stream both ways with backpressure: a full write buffer on one side pauses reading on the other, so
  memory stays flat whatever the body size.
- A request is retried on another backend only while nothing of its response has reached the client, only
  when what was sent can be sent again (idempotent method, body kept), and never after a POST was sent. A
  retry after a bad or late answer (gateway-error, timeout, a 5xx with retries.on "5xx") needs room in the
  service's retry budget; one after a connection closed or reset before any byte of a response (a backend
  dying) or a failed connect does not. A 5xx that is retried never reaches the client; the last attempt's
  answer always does. A request that cannot be sent again is never written on a pooled connection whose end
  already waits in its socket (UpstreamConnection.still_open).
- A response cut after its head was forwarded is aborted (the client's connection is reset) and counted for its
  backend (`aborted`); every failed attempt is kept for the access log (failed_tries, termination).
- Every exchange ends exactly once (`_finish`; `upstream_complete`, its short form for a response read whole;
  or `upstream_upgraded` for one that becomes a tunnel), which releases its backend's in-flight count and
  records it: the backend its last attempt (with that attempt's latency), the service and route the answer.
  A tunnel ends when either side closes (the other side is closed too) or resets (the other is reset); that
  end is not a failure of the exchange.
- Sticky sessions (gateway/sticky.py): the backend a request's cookie names (Service.sticky_backend) is tried
  before any algorithm, the cookie never reaches a backend, and a response from a backend the cookie did not
  name sets it. A session whose backend is at max_connections waits for that backend in the service's queue.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
from collections import deque
from typing import TYPE_CHECKING, Final

import httptools

from lbtui.core.model import AdminState
from lbtui.gateway.auth import CONSUMER_HEADER
from lbtui.gateway.cache import (
    BYPASS,
    HIT,
    MISS,
    ONLY_CACHED,
    REFRESH,
    UNSAFE,
    X_CACHE,
    ResponseCache,
    hit_fields,
    not_modified_fields,
)
from lbtui.gateway.routing import response_parts, rewrite_target, set_headers, strip_prefix
from lbtui.gateway.sticky import cookie_values, response_with_cookie, set_cookie, without_cookie
from lbtui.http import (
    CHUNKED,
    HOP_BY_HOP,
    IDEMPOTENT_METHODS,
    LAST_CHUNK,
    LENGTH,
    NEVER_CONNECTION_NAMED,
    NO_BODY,
    PLAIN_CONNECTION,
    SET_BY_PROXY,
    TARGET_BYTES,
    UNTIL_CLOSE,
    WELL_FORMED_VERSION,
    TrustedProxies,
    chunk_frame,
    connection_tokens,
    error_response,
    escaped_slash,
    field_value,
    forwarded_element,
    no_delay,
    normal_host,
    normalize_target,
    protocol_names,
    status_line,
    unescape_slashes,
    upgrade_offer,
    without_fields,
    x_forwarded,
)
from lbtui.proxy.miniclient import ConnectFailed, Reply
from lbtui.proxy.upstream import (
    BAD_RESPONSE,
    CONNECT_FAILURE,
    LINGER_ZERO,
    RESET,
    TIMEOUT,
    UpstreamConnection,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from lbtui.config import ListenerConfig, RetriesConfig, StickyConfig, TimeoutsConfig
    from lbtui.core.model import Backend, RouteStats, Service
    from lbtui.gateway.ratelimit import TokenBuckets
    from lbtui.gateway.routing import CompiledRoute, Router
    from lbtui.proxy.engine import Engine

# Request body bytes kept so that a failed attempt can be sent again to another backend.
REPLAY_LIMIT: Final = 64 * 1024
# Bytes of a request body we hold while it waits (for its turn, or for a connection) before we stop reading.
PIPELINE_LIMIT: Final = 64 * 1024
# Pipelined requests we hold before we stop reading from the client.
PIPELINE_DEPTH: Final = 16

READY: Final = AdminState.READY
RETRY_AFTER: Final = ((b"Retry-After", b"1"),)

PAUSE_UPSTREAM: Final = 1  # the upstream's write buffer is full
PAUSE_PIPELINE: Final = 2  # requests are queued behind the current one
PAUSE_WAITING: Final = 4  # body arrives before an upstream connection is ready


class StopParsing(Exception):
    """Raised in a parser callback to stop reading requests from a connection (see ClientConnection.refuse)."""


class Exchange:
    """One request and its response."""

    # Defaults live on the class: a new exchange sets only what differs, which keeps the hot path short.
    # (Lists are never shared: the empty defaults are tuples, replaced by a list on first use.)
    url = b""
    method = b""
    version = "1.1"
    keep_alive = True
    upgrade = False  # the parser took it for an upgrade (cleared when no protocol it asks for is tunnelled)
    upgrade_offer = b""  # the protocols of its Upgrade that its route tunnels, sent on (b"": none)
    body_after_upgrade = False  # its Upgrade was dropped, and the parser has yet to read its body
    req_framing = NO_BODY
    request_done = False
    body_pending: tuple[bytes, ...] | list[bytes] = ()  # framed body bytes not yet written upstream
    body_pending_size = 0
    # Framed body bytes sent so far, while small enough to send again; None once they are not.
    replay: tuple[bytes, ...] | list[bytes] | None = ()
    replay_size = 0
    bytes_in = 0
    bytes_out = 0
    service: Service | None = None
    backend: Backend | None = None
    upstream: UpstreamConnection | None = None
    upstream_request = b""
    tried: tuple[Backend, ...] = ()
    attempts = 0  # requests written to a backend so far (a retry resends the kept body)
    fresh_retry = False
    # For the access log, why it did not end well (proxy/accesslog.py): each failed attempt as "backend:cause"
    # (cause: connect-refused, closed-before-head, reset-mid-body, 503, ...; "/reused" on a kept-alive
    # connection), how the exchange ended ("": a response passed on whole), and why its last failure was not
    # tried again (retries exhausted, budget refused, not idempotent, ...).
    failed_tries: tuple[str, ...] = ()
    termination = ""
    retry_verdict = ""
    informed = False  # a 1xx went to the client: something reached it (no retry on a 5xx after that)
    response_started = False
    resp_framing = NO_BODY
    chunk_out = False  # frame the response body in chunks for the client
    status = 0
    started = 0.0
    done = False
    close_after = False
    tunnel = False
    tunnel_pending: tuple[bytes, ...] = ()
    deadline = 0.0  # when the backend's response head is due (0: not waiting); the engine's tick checks
    content_length = 0  # the request's Content-Length, when it has one
    head_size = 0  # bytes of the header fields so far (names, values, ": " and CRLF)
    refused: tuple[int, str] | None = None  # answered by the proxy at its turn: (status, why); see refuse()
    failure: tuple[int, str] | None = None  # the last failed attempt's answer (status, why); see attempt()
    client_addr = b""  # the client's address from a trusted proxy's X-Forwarded-For ("": the peer's)
    retrying = False  # counted in its service's retries_in_flight (the retry budget)
    queue_deadline = 0.0  # waiting in its service's queue (max_connections) until then; 0: not waiting
    route: CompiledRoute | None = None  # set when its route changes the response's headers
    response_extra: tuple[tuple[bytes, bytes], ...] = ()  # for the response: RateLimit-*, CORS grants
    route_stats: RouteStats | None = None  # the numbers of the route that took it
    consumer = b""  # who auth said the client is
    middle = b""  # with routes: the filtered headers, until start() composes the request for the backend
    has_request_id = False
    request_id = b""  # the X-Request-ID made here for it (b"": none made; the client's own is in headers)
    # For the access log (proxy/accesslog.py): when a new upstream connection was asked for, how long the last
    # attempt waited for its connection (0.0 when it reused one), and when the response head came (0.0: none).
    connect_started = 0.0
    connect_time = 0.0
    attempt_started = 0.0  # when its current backend was chosen: what that backend's latency counts from
    head_at = 0.0
    response_timeout = 0.0  # its route's `timeout`, when it has one (else the service's timeouts.response)
    # Answering it off the request path (an aggregate); cancelled if lost.
    task: asyncio.Task[None] | None = None
    retries_config: RetriesConfig | None = None  # its route's retries (None: its service's)
    # Looked up in its route's cache and missed: the response is kept under this key, if it may.
    cache_key = b""
    cache_target = b""  # what its route's cache knows its target by (to keep its response, or drop it)
    cache_fresh = 0.0  # how long the response stays fresh (set with the head; 0: it is not kept)
    cache_head: list[bytes] | None = None  # the response's head as the upstream side kept it (to keep)
    capture: list[bytes] | None = None  # the response body read so far, while it may be kept
    capture_size = 0
    cache_headers: list[tuple[bytes, bytes]] | None = None  # the request's headers as sent (for Vary)
    sticky: StickyConfig | None = None  # its service's sticky sessions (set at its turn; None: not sticky)
    bound: Backend | None = None  # the backend its sticky cookie named, while it may take it
    strip_cookie = b""  # the cookie the backend must not see (the service's sticky cookie, when sent)
    sticky_group = b""  # the group its cache key was made for (a sticky session's), b"": none

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.headers: list[tuple[bytes, bytes]] = []

    # -- request side ----------------------------------------------------------------------------------
    def build_upstream_head(self, cache: bool = True) -> None:
        """Re-serialise the request for the backend: hop-by-hop headers out, forwarding headers in.

        A client on a keep-alive connection mostly sends the same headers again and again: the filtered
        headers are kept per connection and reused while the next request's headers are equal.
        """
        client = self.client
        headers = self.headers
        single = client.engine.router.single
        strip = single.sticky_cookie() if single is not None and single.config.sticky is not None else b""
        cached = client.head_cache
        if cache and cached is not None and cached[0] == headers and cached[5] == strip and not self.upgrade:
            middle, has_request_id, self.req_framing, self.content_length = cached[1:5]
            # The client address its X-Forwarded-For gave (trusted peers): that request's, not the address of
            # whatever request was filtered last on this connection without being kept (a Host rewritten in
            # normal form, HTTP/1.0): a trusted proxy sends many clients' requests on one connection.
            client.forwarded_client = cached[6]
        else:
            self.strip_cookie = strip
            middle, has_request_id = self._filter_headers()
            if (
                cache
                and not self.upgrade
                and self.refused is None
                and self.version == "1.1"
                and self.headers is headers  # (not when its Host was rewritten in normal form)
            ):
                client.head_cache = (
                    headers,
                    middle,
                    has_request_id,
                    self.req_framing,
                    self.content_length,
                    strip,
                    client.forwarded_client,
                )
        if client.trusted is not None:
            self.client_addr = client.forwarded_client
        if client.engine.router.single is not None:
            self._compose(middle, has_request_id)
        else:  # composed once its route is known (start): a route may write the request again
            self.middle = middle
            self.has_request_id = has_request_id

    def _compose(self, middle: bytes, has_request_id: bool, consumer: bytes = b"") -> None:
        """The request line and the filtered headers (`middle`), an X-Request-ID if it had none, and the
        consumer auth named: the request's head for the backend."""
        if has_request_id and not consumer:
            self.upstream_request = b"".join(
                (self.method, b" ", self.url, b" HTTP/1.1\r\n", middle, b"\r\n\r\n")
            )
            return
        parts = [self.method, b" ", self.url, b" HTTP/1.1\r\n", middle]
        if not has_request_id:
            request_id = self.request_id = self.client.engine.request_ids.next()
            parts += (b"\r\nX-Request-ID: ", request_id)
        if consumer:  # after the filter, which drops any X-Consumer a client sent
            parts += (b"\r\n", CONSUMER_HEADER, b": ", consumer)
        parts.append(b"\r\n\r\n")
        self.upstream_request = b"".join(parts)

    def _filter_headers(self) -> tuple[bytes, bool]:
        """The request's headers for the backend (no request line, no final CRLF), and whether it had an id.

        Also sets the request's body framing from Transfer-Encoding and Content-Length, and puts its Host in
        normal form (http.normal_host) in `headers`, so that routing sees what the backend gets.
        """
        client = self.client
        dropped = HOP_BY_HOP
        parts: list[bytes] = []
        forwarded_for = None
        forwarded = None
        host = None
        request_id = None
        connection = None
        settings = None
        framing = NO_BODY
        hosts = 0
        strip = self.strip_cookie
        for name, value in self.headers:
            lname = name.lower()
            if lname in dropped:
                if lname == b"connection":
                    connection = value if connection is None else connection + b"," + value
                elif lname == b"transfer-encoding":
                    framing = CHUNKED
                    if value.strip().lower() != b"chunked":  # the parser made sure chunked is last, and once
                        coding = value.decode("latin-1")
                        self.refused = (
                            501,
                            f"the transfer coding {coding!r} is not supported (only chunked)",
                        )
                continue  # (Upgrade too: the protocols its route tunnels are written below, upgrade_offer)
            if lname == b"content-length":
                if value[:1] == b"0" and len(value) > 1:
                    value = b"%d" % int(value)  # `005` is 5: the backend gets the number, not the spelling
                if framing == NO_BODY and value != b"0":
                    framing = LENGTH
                    self.content_length = int(value)  # digits only: the parser refused anything else
            if lname in SET_BY_PROXY:
                if lname == b"http2-settings":
                    settings = value
                continue
            if strip and lname == b"cookie":
                value = without_cookie(value, strip)  # sticky sessions: the backend never sees ours
                if not value:
                    continue
            if lname == b"x-forwarded-for":
                # Believed only from a trusted proxy (listener trusted_proxies); anyone else's is dropped.
                if client.trusted is not None:
                    forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
                continue
            if lname == b"forwarded":  # RFC 7239: the same as X-Forwarded-For
                if client.trusted is not None:
                    forwarded = value if forwarded is None else forwarded + b", " + value
                continue
            if lname == b"host":
                hosts += 1
                if hosts > 1:
                    self.refused = (400, "more than one Host header field")
                else:
                    normal = normal_host(value)
                    if normal is None:
                        self.refused = (400, "the Host header field is not one valid host[:port]")
                    elif normal != value:
                        self.headers = [(n, normal if n.lower() == b"host" else v) for n, v in self.headers]
                        value = normal
                host = value
            elif lname == b"x-request-id":
                request_id = value
            parts += (name, b": ", value, b"\r\n")
        if connection is not None and connection.lower() not in PLAIN_CONNECTION:
            named = connection_tokens(connection) - dropped - NEVER_CONNECTION_NAMED
            if named:  # headers the client marked as for this connection only: drop them too
                parts = without_fields(parts, named, 0)
        self.req_framing = framing
        if host is None:
            if self.version == "1.1":
                self.refused = (400, "an HTTP/1.1 request needs a Host header field")
            else:  # HTTP/1.0 may leave it out; forwarded as HTTP/1.1, which must have one (empty: RFC 9112 3.2)
                parts.append(b"Host: \r\n")
        peer = client.peer_host
        if client.trusted is not None:
            client.forwarded_client = client.trusted.client_address(forwarded_for, peer)
        parts.append(x_forwarded(peer, forwarded_for, client.tls, host))
        if client.send_forwarded:
            own = forwarded_element(peer, client.scheme, host)
            parts += (b"\r\nForwarded: ", own if forwarded is None else forwarded + b", " + own)
        elif forwarded is not None:
            parts += (b"\r\nForwarded: ", forwarded)
        if self.req_framing == CHUNKED:
            parts.append(b"\r\nTransfer-Encoding: chunked")
        offer = self.upgrade_offer
        if offer:
            if settings is not None and b"h2c" in protocol_names(offer):
                parts += (b"\r\nConnection: upgrade, HTTP2-Settings\r\nHTTP2-Settings: ", settings)
            else:
                parts.append(b"\r\nConnection: upgrade")
            parts += (b"\r\nUpgrade: ", offer)
        return b"".join(parts), request_id is not None

    def request_body(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.bytes_in > self.client.max_body:
            self.client.refuse(self, 413, f"the request body is larger than {self.client.max_body} bytes")
            return
        framed = chunk_frame(data) if self.req_framing == CHUNKED else [data]
        self._send_body(framed, len(data))

    def request_complete(self) -> None:
        self.request_done = True
        if self.req_framing == CHUNKED:
            self._send_body([LAST_CHUNK], 5)
        if self.upstream is not None and not self.response_started and self.service is not None:
            self.deadline = self.client.engine.now() + (
                self.response_timeout or self.service.response_timeout
            )
        if self.done:
            self.client.exchange_finished(self, self.client.engine.now())

    def _send_body(self, framed: list[bytes], size: int) -> None:
        if self.done:
            return  # answered early: the rest of the body is read and dropped
        replay = self.replay
        if replay is not None:
            self.replay_size += size
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
            else:
                if not replay:
                    self.replay = replay = []
                assert isinstance(replay, list)
                replay.extend(framed)
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.closed:
            upstream.transport.writelines(framed)
        else:
            pending = self.body_pending
            if not pending:
                self.body_pending = pending = []
            assert isinstance(pending, list)
            pending.extend(framed)
            self.body_pending_size += size
            if self.body_pending_size > PIPELINE_LIMIT:
                self.client.pause_reading_for(PAUSE_WAITING)

    # -- dispatch ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """This exchange's turn: choose a service and a backend (or answer the refusal of its request)."""
        refused = self.refused
        if refused is not None:
            # (response_extra: a redirect's Location, see on_headers_complete)
            self.respond_error(*refused, extra=self.response_extra)
            return
        router = self.client.engine.router
        service = router.single
        if service is None:
            if router.cors and self.method == b"OPTIONS" and self._preflight(router):
                return
            route = router.route(self)
            if route is None:
                allow = router.allowed(self)
                if allow:
                    router.unmatched["method"] += 1
                    self.respond_error(
                        405,
                        "this route does not take this method",
                        extra=((b"Allow", ", ".join(allow).encode()),),
                    )
                else:
                    router.unmatched["no route"] += 1
                    self.respond_error(404, "no route matches this request")
                return
            self.route_stats = route.stats
            if route.timeout:
                self.response_timeout = route.timeout
            service = route.service
            if route.ip_allow is not None or route.ip_deny is not None:
                address = self.client_addr or self.client.peer_host
                denied, allowed = route.ip_deny, route.ip_allow
                if (denied is not None and denied.contains(address)) or (
                    allowed is not None and not allowed.contains(address)
                ):
                    self._reject("ip", 403, "this client address may not use this route")
                    return
            consumer = b""
            if route.api_key is not None:
                consumer = self._consumer(route.api_key)
                if not consumer:
                    return
            elif route.jwt is not None:
                subject, challenge = route.jwt.consumer(field_value(self.headers, b"authorization"))
                if subject is None:
                    self._reject(
                        "auth",
                        401,
                        "a valid bearer token is required" if challenge != b"Bearer" else "no bearer token",
                        extra=((b"WWW-Authenticate", challenge),),
                    )
                    return
                consumer = subject
            self.consumer = consumer
            original_url, original_headers = self.url, self.headers
            if route.limiter is not None and not self._within_rate(route, route.limiter, consumer):
                return
            if service is not None and service.config.sticky is not None:
                self._stick(service)
            if route.transforms_request or self.strip_cookie:
                self._rewrite_for(route, consumer)
            else:
                self._compose(self.middle, self.has_request_id)
            cors = route.cors
            if cors is not None:
                self.response_extra += cors.response_headers(field_value(self.headers, b"origin"))
            if route.response_remove or self.response_extra:
                self.route = route
            if route.retries is not None:
                self.retries_config = route.retries
            if route.cache is not None and self._cached(route, route.cache, original_url, original_headers):
                return
            if route.aggregator is not None:
                self.route = route
                self.task = client_task(self, route.aggregator.answer(self))
                return
            if service is None:
                self.respond_error(404, "no route matches this request")
                return
        elif service.config.sticky is not None:
            self._stick(service)
        self.service = service
        self.attempt()

    def _stick(self, service: Service) -> None:
        """Its service has sticky sessions: find the backend its cookie names, if it may take it."""
        self.sticky = service.config.sticky
        name = service.sticky_cookie()
        values = cookie_values(self.headers, name)
        if values:
            self.strip_cookie = name
            self.bound = service.sticky_backend(values)

    def _preflight(self, router: Router) -> bool:
        """A CORS preflight for a route with `cors`: answered here (204 or 403), never forwarded. False when
        this OPTIONS is not one (it is then routed as any request)."""
        requested = field_value(self.headers, b"access-control-request-method")
        origin = field_value(self.headers, b"origin")
        if requested is None or origin is None:
            return False
        method = requested.strip()
        route = router.route(self, method)
        if route is None:
            route = router.cors_route(self)  # a method no route takes here: refused below
        if route is None or route.cors is None:
            return False  # not a route with cors: the OPTIONS is routed (and forwarded) as any request
        cors = route.cors
        assert cors is not None
        asked = field_value(self.headers, b"access-control-request-headers") or b""
        grant = cors.preflight(origin, method, asked)
        self.route_stats = route.stats
        if grant is None:
            self._reject("cors", 403, "CORS preflight refused: this origin, method or header is not allowed")
        else:
            self.respond_error(204, "", extra=grant)
        return True

    def _cached(
        self, route: CompiledRoute, cache: ResponseCache, url: bytes, headers: list[tuple[bytes, bytes]]
    ) -> bool:
        """Answer from the route's cache (True), or mark the exchange so that its response is kept."""
        scheme = b"https" if self.client.listener.tls is not None else b"http"
        target = cache.target(scheme, field_value(headers, b"host") or b"", url)
        policy = cache.request_policy(self.method, headers, self.req_framing != NO_BODY)
        if policy == BYPASS:
            if self.method in UNSAFE:  # its success drops what is kept for its target (upstream_head)
                self.route = route
                self.cache_target = target
            return False
        self.route = route
        key = cache.key(target, self.consumer)
        bound = self.bound
        if bound is not None:
            # A sticky session gets what its own group answered (a canary's users see the canary's pages);
            # requests without a session share one entry, as without stickiness.
            self.sticky_group = bound.group.encode()
            key += b"\0sticky\0" + self.sticky_group
        now = self.client.engine.now()
        if policy != REFRESH:
            entry = cache.lookup(key, headers, now)
            if entry is not None:
                cache.hits += 1
                if self.route_stats is not None:
                    self.route_stats.cache[0] += 1
                self.response_extra += ((X_CACHE, HIT),)
                if cache.not_modified(entry, headers):
                    self.respond_local(304, not_modified_fields(entry, now), b"", route)
                else:
                    self.respond_local(entry.status, hit_fields(entry, now), entry.body, route)
                return True
            if policy == ONLY_CACHED:
                self.respond_error(504, "only-if-cached, and this response is not in the cache")
                return True
        cache.misses += 1
        if self.route_stats is not None:
            self.route_stats.cache[1] += 1
        self.response_extra += ((X_CACHE, MISS),)
        if self.method == b"GET":
            self.cache_key = key
            self.cache_target = target
            self.cache_headers = headers
        return False

    def _within_rate(self, route: CompiledRoute, limiter: TokenBuckets, consumer: bytes) -> bool:
        """Take a token from the bucket of this request's key; False after answering 429."""
        if consumer and route.consumer_limiters is not None:
            limiter = route.consumer_limiters.get(consumer, limiter)
        kind = route.limit_key
        if kind == "client_ip":
            key = self.client_addr or self.client.peer_host
        elif kind == "consumer":
            key = consumer
        else:
            key = field_value(self.headers, kind.encode()) or b""
        allowed, remaining, reset = limiter.take(key, self.client.engine.now())
        headers = limiter.headers(remaining, reset)
        if allowed:
            self.response_extra += headers
            return True
        self._reject(
            "rate limit",
            429,
            "too many requests: wait for Retry-After",
            extra=((b"Retry-After", b"%d" % reset), *headers),
        )
        return False

    def _reject(
        self, reason: str, status: int, detail: str, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        """A gateway policy refuses the request: counted for its route by `reason`, and answered."""
        stats = self.route_stats
        if stats is not None:
            stats.reject(reason)
        self.respond_error(status, detail, extra=extra)

    def _consumer(self, header: bytes) -> bytes:
        """The consumer an API key in `header` names; "" after answering 401 (no key, two keys, unknown)."""
        keys = [value for name, value in self.headers if name.lower() == header]
        consumer = None
        if len(keys) == 1:
            client = self.client
            known = client.known_key
            if known is not None and hmac.compare_digest(known[0], keys[0]):
                consumer = known[1]  # the key this connection used last (keep-alive): checked already
            else:
                consumer = client.engine.api_keys.consumer(keys[0])
                if consumer is not None:
                    client.known_key = (keys[0], consumer)
        if consumer is None:
            shown = header.decode("latin-1")
            self._reject(
                "auth",
                401,
                f"a valid API key is required in the {shown} header" if keys else f"no API key in {shown}",
                extra=((b"WWW-Authenticate", b'ApiKey header="' + header + b'"'),),
            )
            return b""
        return consumer

    def _rewrite_for(self, route: CompiledRoute, consumer: bytes = b"") -> None:
        """The route's strip_prefix, request header changes and authenticated consumer: the request for the
        backend is written again (the API key itself is not passed on)."""
        if route.strip is not None:
            self.url = strip_prefix(self.url, route.strip, route.fold)
        if route.rewrite is not None or route.add_query:
            self.url = rewrite_target(self.url, route.rewrite, route.add_query)
        client = self.client
        original = self.headers
        cached = client.rewrite_cache
        if cached is not None and cached[0] is route and cached[1] == original and not self.upgrade:
            # The same headers on this connection to the same route as last time: filtered as then.
            self.headers, middle, has_request_id = cached[2], cached[3], cached[4]
        else:
            remove = route.request_remove
            if route.api_key is not None:
                remove = remove | {route.api_key}
            if remove:
                self.headers = set_headers(original, remove, route.request_set)
            middle, has_request_id = self._filter_headers()
            if not self.upgrade:
                client.rewrite_cache = (route, original, self.headers, middle, has_request_id)
        self._compose(middle, has_request_id, consumer)

    def hash_key(self) -> bytes | None:
        service = self.service
        assert service is not None
        return service.hash_key_of(self.client_addr or self.client.peer_host, self.url, self.headers)

    def attempt(self, same_backend: Backend | None = None, picked: Backend | None = None) -> None:
        """Send the request to a backend: `same_backend` on a new connection (after a kept-alive one was found
        dead), `picked` (chosen already) or the one the service picks, on a kept-alive connection if one is idle.
        """
        service = self.service
        assert service is not None
        bound = self.bound
        if (
            bound is not None
            and same_backend is None
            and picked is None
            and not self._bound_takes_it(service, bound)
        ):
            if self.bound is not None:
                return  # it waits in the queue for its own backend
            bound = None
        backend = (
            same_backend
            or picked
            or bound
            or service.pick(self.hash_key() if service.hashing else None, self.tried)
        )
        if backend is None:
            if service.config.max_connections is not None and service.has_eligible(self.tried):
                self._wait_for_room(service)  # every backend that could take it is at max_connections
                return
            failure = self.failure
            if failure is not None:  # a retry found no backend left: answer as the last attempt failed
                self.retry_verdict = "no-backend-left"
                self.respond_error(failure[0], failure[1], retry_after=failure[0] == 503)
                return
            service.unrouted += 1
            self.termination = "no-backend"
            self.respond_error(503, f"no backend of service {service.name!r} is available", retry_after=True)
            return
        self.backend = backend
        backend.in_flight += 1
        # A backend's latency is its own attempt's (from here), never the time the request spent queued or on
        # other backends before: a retry after another's timeout or slow 5xx would make the healthy one look slow
        # (Peak-EWMA takes a slower sample at once), and send traffic to the failing one.
        now = self.attempt_started = self.client.engine.now()
        pool = backend.pool
        if pool is None:
            pool = self.client.engine.make_pool(backend)
        if same_backend is None:
            idle = pool.idle
            while idle:  # the newest idle connection first (LIFO keeps few connections warm)
                conn = idle.pop()
                if conn.closed:
                    continue
                if self.method not in IDEMPOTENT_METHODS and not conn.still_open():
                    conn.close()  # found dead: what could not be sent again is not sent on it
                    continue
                pool.active.add(conn)
                self.attach(conn, reused=True)
                return
        self.connect_started = now
        pool.connect(self)

    def _bound_takes_it(self, service: Service, bound: Backend) -> bool:
        """Whether the backend its sticky cookie names takes this attempt. If not, `bound` is cleared (the
        session moves: the response sets the cookie again), or, when that backend is only full, the exchange
        waits for it in the queue (HAProxy queues a persistent request on its server)."""
        if bound in self.tried or not service.keeps(bound):
            if bound not in self.tried:
                service.sticky_moved += 1  # its state changed while it waited
            self.bound = None  # (a retry goes to another backend as for any request)
            return False
        limit = service.config.max_connections
        if limit is not None and bound.in_flight >= limit:
            self._wait_for_room(service)
            return False
        bound.sticky_requests += 1
        return True

    def _wait_for_room(self, service: Service) -> None:
        """Queue for a backend under max_connections (HAProxy's server queue); 503 at once when it is full."""
        queue = service.queue
        if queue is None:
            queue = service.queue = deque()
        if self.queue_deadline:  # it was waiting already and still finds no room: back to the head
            queue.appendleft(self)
            return
        if len(queue) >= service.config.max_queue:
            for waiting in [w for w in queue if w.done]:
                queue.remove(waiting)  # clients that went away while waiting
        if len(queue) >= service.config.max_queue:
            service.queue_full += 1
            service.unrouted += 1
            self.termination = "queue-full"
            self.respond_error(503, "every backend is at max_connections and the queue is full", True)
            return
        queue.append(self)
        service.queued += 1
        self.queue_deadline = self.client.engine.now() + service.config.timeouts.queue

    def queue_expired(self) -> None:
        """Waited in the queue for timeouts.queue: 503, as HAProxy answers a `timeout queue`."""
        self.queue_deadline = 0.0
        service = self.service
        if service is not None:
            service.unrouted += 1
        self.termination = "queue-timeout"
        self.respond_error(503, "no backend had room in time (max_connections)", retry_after=True)

    def service_config_timeouts(self) -> TimeoutsConfig:
        assert self.service is not None
        return self.service.config.timeouts

    def attach(self, conn: UpstreamConnection, reused: bool) -> None:
        """An upstream connection is ready for this exchange: send the request."""
        now = self.client.engine.now()
        if self.done or self.backend is None or conn.pool.backend is not self.backend:
            conn.pool.release(conn, now)
            return
        self.connect_time = 0.0 if reused else now - self.connect_started
        conn.exchange = self  # the connection's per-exchange state (as UpstreamConnection.reset_head)
        conn._skip_body = self.method == b"HEAD"
        conn.received = False
        conn.parts = [b""]
        conn.framing = UNTIL_CLOSE
        conn.connection = None
        conn.upgrade_value = None
        conn._reason = b""
        self.upstream = conn
        transport = conn.transport
        assert transport is not None
        self.fresh_retry = not reused  # a fresh connection is never retried "fresh" again
        self.attempts += 1
        if self.attempts > 1 and self.replay is not None:
            transport.writelines([self.upstream_request, *self.replay])
        elif self.body_pending:
            transport.writelines([self.upstream_request, *self.body_pending])
        else:
            transport.write(self.upstream_request)
        if self.body_pending:
            self.body_pending = ()
            self.body_pending_size = 0
            self.client.resume_reading_for(PAUSE_WAITING)
        if self.client.write_paused:
            transport.pause_reading()
        if self.request_done or self.req_framing == NO_BODY:
            self.deadline = now + (
                self.response_timeout or self.service.response_timeout  # type: ignore[union-attr]
            )
        # else: the response timeout starts when the body has been sent whole (request_complete)

    def connect_failed(self, backend: Backend, reason: str, cause: str = "connect-failure") -> None:
        if self.done or self.backend is not backend:
            return
        backend.connect_failed()
        self._attempt_failed(CONNECT_FAILURE, reason, cause)

    def expire(self) -> None:
        """The backend's response head did not come in time, or its body stopped moving (the engine's tick)."""
        self.deadline = 0.0
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.exchange = None
            conn.close()
        if self.response_started:
            self._attempt_failed(TIMEOUT, "the backend's response stopped moving", "stalled-mid-body")
        else:
            self._attempt_failed(TIMEOUT, "the backend did not answer in time", "timeout-before-head")

    def upstream_lost(self, conn: UpstreamConnection, reset: bool = False) -> None:
        """The backend closed the connection (`reset`: reset it) before the exchange completed."""
        if self.tunnel:
            # The backend ended the tunnel (upstream_upgraded): so does the client's side, the same way.
            if reset:
                self.client.abort()
            else:
                self.client.close()
            return
        if self.upstream is not conn:
            return
        self.upstream = None
        if self.response_started:
            if self.resp_framing == UNTIL_CLOSE and not reset:
                self._response_end()  # a body that ends with the connection: whole
                return
            # Reset, or closed short of its framing: cut, never passed off as whole.
            how = "reset" if reset else "closed"
            self._attempt_failed(RESET, f"the backend {how} the connection mid-response", f"{how}-mid-body")
            return
        how = "reset" if reset else "closed"
        # A kept-alive connection that ends before any byte of its response: most likely the backend closed it
        # while it sat idle in the pool, at the moment it was taken (see _attempt_failed).
        reused = conn.requests > 0 and not conn.received
        self._attempt_failed(RESET, f"the backend {how} the connection", f"{how}-before-head", reused)

    def upstream_failed(self, kind: str, reason: str, cause: str) -> None:
        if self.tunnel:
            self.client.abort()  # the backend reset the tunnel: the client's side is reset too
            return
        self.upstream = None
        self._attempt_failed(kind, reason, cause)

    def _attempt_failed(self, kind: str, reason: str, cause: str, reused: bool = False) -> None:
        """An attempt failed: `kind` as retries.on names it, `cause` for the access log (failed_tries).

        Where nothing of a response reached the client, the request goes to another backend as far as the rules
        allow (the module's invariants; docs/config.md, retries), else the failure is answered. A response cut
        after its head was forwarded can only be aborted."""
        if self.done:
            return
        self._clear_response_deadline()
        backend = self.backend
        name = backend.name if backend is not None else "-"
        self.failed_tries = (*self.failed_tries, f"{name}:{cause}/reused" if reused else f"{name}:{cause}")
        self.termination = cause
        if self.response_started:
            # Part of the response reached the client: it cannot be replaced, and must not look whole.
            if backend is not None:
                backend.aborted += 1
            self.status = 502
            self.close_after = True
            self.client.abort()
            self._finish()
            return
        self.failure = (503 if kind == CONNECT_FAILURE else 504 if kind == TIMEOUT else 502, reason)
        service = self.service
        assert service is not None
        retries = self.retries_config or service.config.retries
        resendable = self.method in IDEMPOTENT_METHODS and self.replay is not None
        # A kept-alive connection that ends before any byte of a response is most often the pool's race with
        # the backend's keep-alive timeout (it closed the connection while it sat idle): the request goes to
        # the same backend once more on a new connection, and only that attempt counts for the backend (counted
        # twice, a race would count as a failure, and outlier detection would eject a healthy backend).
        stale = reused and kind == RESET and not self.fresh_retry and resendable
        if backend is not None:
            self.backend = None
            now = self.client.engine.now()
            service.attempt_ended(backend, 0, self.attempt_started, now, 0, counted=not stale)
        if kind == CONNECT_FAILURE:
            # Nothing was sent: any method may go to the next backend.
            if backend is not None:
                self.tried = (*self.tried, backend)
            if len(self.tried) <= max(len(service.backends), retries.attempts):
                self.attempt()
                return
            self.retry_verdict = "attempts-exhausted"
            self.respond_error(503, reason, retry_after=True)
            return
        if stale and backend is not None:
            # Once more on a fresh connection to the same backend (not counted against attempts).
            self.fresh_retry = True
            self.attempt(same_backend=backend)
            return
        if backend is not None:
            self.tried = (*self.tried, backend)
        if not resendable:
            self.retry_verdict = (
                "not-idempotent" if self.method not in IDEMPOTENT_METHODS else "body-not-kept"
            )
        elif kind not in retries.on:
            self.retry_verdict = f"{kind}-not-in-retries-on"
        elif len(self.tried) > retries.attempts:
            self.retry_verdict = "attempts-exhausted"
        elif kind == RESET or self.retrying or self._retry_budget(service):
            # A connection closed or reset before any byte of a response is how a backend's death looks (and
            # the request cost the dead backend nothing): retried like a connect failure, outside the budget,
            # within attempts. The budget holds back retries of answers that came bad or late.
            service.retries += 1
            self.attempt()
            return
        else:
            service.retries_refused += 1
            self.retry_verdict = "budget-refused"
        if kind == TIMEOUT:
            self.respond_error(504, reason)
        else:
            self.respond_error(502, reason)

    def retry_5xx(self, conn: UpstreamConnection, status: int) -> bool:
        """A 5xx head from the backend, before anything reached the client: with "5xx" in retries.on an
        idempotent request goes to another backend, within attempts and the budget, and this response is
        dropped (True: `conn` reads the rest of it on its own). The last attempt's 5xx is passed on (False)."""
        service = self.service
        backend = self.backend
        if (
            service is None
            or backend is None
            or self.done
            or self.informed
            or self.upgrade
            or self.method not in IDEMPOTENT_METHODS
            or self.replay is None
        ):
            return False
        retries = self.retries_config or service.config.retries
        if "5xx" not in retries.on:
            return False
        tried = (*self.tried, backend)
        if len(tried) > retries.attempts:
            return False
        # The budget is asked before a backend is picked: a pick is a turn of the algorithm, and it may be a
        # joining backend's probe (Service.pick), which a retry the budget then refused would use up.
        if not self.retrying and not self._budget_room(service):
            if service.has_eligible(tried):
                service.retries_refused += 1
                self.retry_verdict = "budget-refused"
            return False
        following = service.pick(self.hash_key() if service.hashing else None, tried)
        if following is None:
            return False  # no backend left to try: this 5xx is the answer
        if not self.retrying:
            self._retry_budget(service)  # (room was checked above)
        self._clear_response_deadline()
        self.failed_tries = (*self.failed_tries, f"{backend.name}:{status}")
        self.failure = (502, f"{backend.name} answered {status}")
        self.tried = tried
        self.upstream = None
        self.backend = None
        service.attempt_ended(backend, status, self.attempt_started, self.client.engine.now(), 0)
        service.retries += 1
        self.attempt(picked=following)
        return True

    def _retry_budget(self, service: Service) -> bool:
        """Envoy's retry budget: retries under way stay within budget_percent of the service's requests in
        flight (but min_retry_concurrency are always allowed), so a failing backend is not hit by a storm."""
        if not self._budget_room(service):
            return False
        service.retries_in_flight += 1
        self.retrying = True
        return True

    def _budget_room(self, service: Service) -> bool:
        """Whether the retry budget (_retry_budget) has room for one more retry now; takes nothing."""
        retries = self.retries_config or service.config.retries
        active = sum(b.in_flight for b in service.backends) + 1  # + this one, between attempts
        allowed = max(retries.min_retry_concurrency, retries.budget_percent * active / 100.0)
        return service.retries_in_flight < allowed

    def _clear_response_deadline(self) -> None:
        """No longer waiting for the backend's response head (the engine's tick checks `deadline`)."""
        self.deadline = 0.0

    # -- response side ---------------------------------------------------------------------------------
    def upstream_informational(self, parts: list[bytes]) -> None:
        if self.version == "1.0" or self.done:
            return  # HTTP/1.0 clients do not understand 1xx
        self.informed = True
        parts.append(b"\r\n")
        self.client.write(b"".join(parts))

    def upstream_head(
        self,
        conn: UpstreamConnection,
        status: int,
        parts: list[bytes],
        framing: int,
        upgrade_value: bytes | None,
    ) -> None:
        """The backend's response head, its headers already filtered (see UpstreamConnection.on_header)."""
        if self.done:
            return
        client = self.client
        if status == 101:
            switched_to = protocol_names(upgrade_value) if upgrade_value is not None else set()
            if not switched_to or not switched_to <= protocol_names(self.upgrade_offer):
                # A switch the client did not ask for, or to another protocol: the bytes that follow are not HTTP,
                # so that connection is closed and nothing of it reaches the client; a gateway error (retried
                # where retries.on says so, else 502, as HAProxy answers).
                conn.exchange = None
                conn.close()
                asked = self.upgrade_offer.decode("latin-1") or "no upgrade"
                self.upstream_failed(
                    BAD_RESPONSE,
                    f"the backend switched protocols (101) unasked (the request asked for {asked})",
                    "unasked-101",
                )
                return
        self.head_at = client.engine.now()
        self.deadline = 0.0
        self.status = status
        self.response_started = True
        if self.termination:
            self.termination = ""  # an attempt failed before this one: this response is the answer
        if self.method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
            framing = NO_BODY
        if status == 101:
            assert upgrade_value is not None
            if self.sticky is not None:  # a handshake's answer too: its session is the backend that switched
                parts = self._sticky_cookie(parts)
            parts.append(b"Connection: upgrade\r\nUpgrade: " + upgrade_value + b"\r\n")
            parts.append(b"\r\n")
            client.write(b"".join(parts))
            return
        if not self.request_done and self.req_framing != NO_BODY:
            self.close_after = True  # answered before the request was read whole: close after the reply
        if self.sticky_group and self.backend is not self.bound:
            self.cache_key = b""  # its session moved: the reply is not its group's to keep under that key
        route = self.route
        if route is not None:
            if self.cache_key:
                self._keep_response(route, status, parts, framing)
            elif self.cache_target and status < 400 and route.cache is not None:
                route.cache.invalidate(self.cache_target)  # a POST, PUT, PATCH or DELETE changed it
            parts = response_parts(parts, route.response_remove, route.response_set + self.response_extra)
        if self.sticky is not None:
            parts = self._sticky_cookie(parts)
        self.resp_framing = framing
        if framing in (CHUNKED, UNTIL_CLOSE):
            if self.version == "1.1":
                # Chunked to the client, also when the backend ends its body by closing: keeps keep-alive.
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self.chunk_out = True
            else:
                self.close_after = True  # HTTP/1.0 knows no chunks: the body ends when we close
        if self.close_after or not self.keep_alive or client.engine.closing:
            parts.append(b"Connection: close\r\n")
            self.close_after = True
        elif self.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        out = client.out
        if out is not None:
            out += parts  # corked: joined once with the body when the connection is uncorked
        else:
            client.write(b"".join(parts))

    def _sticky_cookie(self, parts: list[bytes]) -> list[bytes]:
        """The response head with the sticky cookie set when the request's cookie did not name the backend
        that answered (none, unknown, or one that could not take it), and without a backend's own cookie of
        that name. (What the route's cache keeps was taken before: it never holds our Set-Cookie.)"""
        sticky = self.sticky
        service = self.service
        assert sticky is not None
        assert service is not None
        backend = self.backend
        set_value = None
        if backend is not None and backend is not self.bound:
            value = service.sticky_value_of(backend)
            if value is not None:
                set_value = set_cookie(sticky, value, self.client.listener.tls is not None)
                backend.sticky_cookies += 1
        return response_with_cookie(parts, service.sticky_cookie(), set_value)

    def _keep_response(self, route: CompiledRoute, status: int, parts: list[bytes], framing: int) -> None:
        """The response to a cache miss: read it into memory too while it may be kept (cache.py)."""
        cache = route.cache
        assert cache is not None
        if framing == NO_BODY and status != 204 and status != 304:
            framing = LENGTH  # (a 200 with no body but a Content-Length: 0)
        fresh = cache.freshness(status, parts, self._authorized())
        if fresh <= 0.0 or framing == UNTIL_CLOSE:
            self.cache_key = b""
            return
        self.cache_fresh = fresh
        self.cache_head = list(parts)
        self.capture = []

    def _authorized(self) -> bool:
        return field_value(self.cache_headers or [], b"authorization") is not None

    def upstream_body(self, data: bytes) -> None:
        if self.done or not data:
            return
        capture = self.capture
        if capture is not None:
            self.capture_size += len(data)
            if self.capture_size <= self.route.cache.max_body:  # type: ignore[union-attr]
                capture.append(data)
            else:
                self.capture = None  # too large to keep: passed on only
        self.bytes_out += len(data)
        client = self.client
        out = client.out
        if out is not None:  # corked: the usual case, inside UpstreamConnection.data_received
            if self.chunk_out:
                out += (b"%x\r\n" % len(data), data, b"\r\n")
            else:
                out.append(data)
        elif self.chunk_out:
            client.writelines(chunk_frame(data))
        else:
            client.write(data)

    def upstream_complete(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        """The backend's response was read whole: the common end of an exchange, kept short."""
        if self.done:
            conn.close()
            return
        client = self.client
        engine = client.engine
        now = engine.now()
        backend = self.backend
        self.upstream = None
        if (
            keep_alive
            and self.request_done
            and backend is not None
            and backend.admin_state is READY
            and not engine.closing
        ):
            conn.pool.release(conn, now)
        else:
            conn.close()  # draining backends close their connections after the current request
        if self.chunk_out:
            client.write(LAST_CHUNK)
        self.done = True
        self.deadline = 0.0
        if self.capture is not None:
            self._store(now)
        self._record(now)
        if (
            client.current is self
            and self.keep_alive
            and not self.close_after
            and not engine.closing
            and not client.pending
            and not client.paused
            and (self.request_done or self.req_framing == NO_BODY)
        ):
            # The usual end (ClientConnection.exchange_finished, inlined): idle, waiting for the next request.
            client.current = None
            client.last_active = now
        elif self.request_done or self.req_framing == NO_BODY or self.close_after:
            client.exchange_finished(self, now)

    def _store(self, now: float) -> None:
        """Keep the response read whole in its route's cache."""
        route = self.route
        head = self.cache_head
        capture = self.capture
        self.capture = None
        if route is None or route.cache is None or head is None or capture is None:
            return
        route.cache.store(
            self.cache_key,
            self.cache_target,
            self.status,
            head,
            b"".join(capture),
            now,
            self.cache_fresh,
            self.cache_headers or [],
        )

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The backend switched protocols (101): from now on, bytes pass through both ways untouched."""
        if self.done or self.upstream is not conn:
            conn.close()  # a 101 that upstream_head answered with a 502
            return
        if self.status != 101 or not self.upgrade:
            conn.close()
            self.upstream = None
            self._attempt_failed(BAD_RESPONSE, "the backend switched protocols unasked", "unasked-101")
            return
        self.tunnel = True
        conn.pool.active.discard(conn)
        self.client.start_tunnel(self, conn)
        if rest:
            self.client.write(rest)
        if self.tunnel_pending and conn.transport is not None:
            conn.transport.writelines(list(self.tunnel_pending))  # what the client sent after its request
            self.tunnel_pending = ()
        self._record(self.client.engine.now())
        # Counted and logged once, as a 101: what ends the tunnel later (either side closing) is no failure.
        self.done = True

    def _response_end(self) -> None:
        if self.chunk_out:
            self.client.write(LAST_CHUNK)
        self._finish()

    def respond_error(
        self,
        status: int,
        detail: str,
        retry_after: bool = False,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer with an error of our own, when nothing of a backend's response was sent."""
        if self.done:
            return
        self._clear_response_deadline()
        self.status = status
        if not self.request_done and self.req_framing != NO_BODY:
            self.close_after = True
        close = self.close_after or not self.keep_alive or self.client.engine.closing
        self.close_after = close
        if retry_after:
            extra = RETRY_AFTER + extra
        self.client.write(
            error_response(status, detail, close=close, head_only=self.method == b"HEAD", extra=extra)
        )
        self._finish()

    def respond_local(self, status: int, fields: list[bytes], body: bytes, route: CompiledRoute) -> None:
        """Answer with a whole response made here (a cache hit, an aggregate's merged reply) on `route`.

        `fields` are the head's header fields as the upstream side keeps them (name, ": ", value, CRLF for
        each), without framing or Connection; the route's response transforms and this exchange's extra
        headers (RateLimit-*, CORS) are applied, and Content-Length is written here."""
        if self.done:
            return
        self._clear_response_deadline()
        self.status = status
        self.response_started = True
        head = [status_line(status), *fields]
        cache = route.cache
        if self.cache_key and cache is not None:  # an aggregate's reply to a cache miss: kept as a backend's
            fresh = cache.freshness(status, head, self._authorized())
            if fresh > 0.0 and len(body) <= cache.max_body:
                now = self.client.engine.now()
                headers = self.cache_headers or []
                cache.store(self.cache_key, self.cache_target, status, head, body, now, fresh, headers)
        parts = response_parts(head, route.response_remove, route.response_set + self.response_extra)
        if status != 204 and status != 304:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        if not self.request_done and self.req_framing != NO_BODY:
            self.close_after = True
        if self.close_after or not self.keep_alive or self.client.engine.closing:
            parts.append(b"Connection: close\r\n")
            self.close_after = True
        elif self.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if self.method != b"HEAD" and status != 204 and status != 304:
            parts.append(body)
            self.bytes_out += len(body)
        self.client.write(b"".join(parts))
        self._finish()

    def _record(self, now: float) -> None:
        """Count the exchange's outcome for its backend (this attempt), its service and its route (the client's
        answer), and keep it in the tail of recent requests."""
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.bytes_in += self.bytes_in
            service = self.service
            assert service is not None  # (a backend is picked from its service)
            service.attempt_ended(backend, self.status, self.attempt_started, now, self.bytes_out)
        stats = self.route_stats
        if stats is not None:
            stats.observe(self.status, now - self.started, now)
        answered = self.service
        if answered is not None:
            answered.observe(self.status, now - self.started, now)
        if self.retrying:
            self.retrying = False
            self.service.retries_in_flight -= 1  # type: ignore[union-attr]
        entry = (
            now,
            self.client_addr or self.client.peer_host,
            self.method,
            self.url,
            self.status,
            backend,
            now - self.started,
            self.bytes_out,
            stats,
            self.consumer,
        )
        engine = self.client.engine
        engine.access_log.append(entry)
        log_queue = engine.log_queue
        if log_queue is not None:  # the access log file's (proxy/accesslog.py), written by the tick
            if len(log_queue) < engine.log_queue_limit:
                log_queue.append((entry, self))
            else:
                engine.access_log_dropped += 1

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        task = self.task
        if task is not None:
            self.task = None
            if task is not asyncio.current_task():
                task.cancel()  # the client left (or the engine stops) while the answer was being made
        if self.body_pending:  # held for a backend that will not get it now
            self.body_pending = ()
            self.body_pending_size = 0
            self.client.resume_reading_for(PAUSE_WAITING)
        self._clear_response_deadline()
        now = self.client.engine.now()
        self._record(now)
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.exchange = None
            upstream.close()
        if self.tunnel:
            return
        if self.request_done or self.req_framing == NO_BODY or self.close_after:
            self.client.exchange_finished(self, now)

    def client_lost(self) -> None:
        """The client went away: stop the exchange and close its upstream connection."""
        if self.done:
            return
        self.close_after = True
        if self.termination != "client-timeout":  # (body_timeout cut it: that says more)
            self.termination = "client-closed"
        if not self.response_started:
            self.status = 499  # nginx's "client closed request"
        self._finish()

    # -- what an aggregate asks of it (gateway/aggregate.AggregateRequest) ----------------------------------
    def client_address(self) -> bytes:
        return self.client_addr or self.client.peer_host

    def forwarded_fields(self) -> bytes:
        client = self.client
        forwarded_for = None
        if (
            client.trusted is not None
        ):  # a trusted proxy's X-Forwarded-For is believed, as for a proxied request
            chain = [v for n, v in self.headers if n.lower() == b"x-forwarded-for"]
            if chain:
                forwarded_for = b", ".join(chain)
        return x_forwarded(client.peer_host, forwarded_for, client.tls, field_value(self.headers, b"host"))

    def new_request_id(self) -> bytes:
        return self.client.engine.request_ids.next()

    def now(self) -> float:
        return self.client.engine.now()

    async def fetch(
        self,
        backend: Backend,
        request: bytes,
        *,
        max_body: int,
        connect_timeout: float | None,
        reply_timeout: float | None,
        idle_timeout: float,
    ) -> Reply | None:
        """`request` to `backend` on the engine's pool of small-client connections (proxy/miniclient.py), its
        reply read whole; None when no connection could be made."""
        try:
            return await self.client.engine.call_pool.request(
                backend.host,
                backend.port,
                request,
                max_body=max_body,
                connect_timeout=connect_timeout,
                reply_timeout=reply_timeout,
                idle_timeout=idle_timeout,
            )
        except ConnectFailed:
            return None


def client_task(exchange: Exchange, work: Coroutine[object, object, None]) -> asyncio.Task[None]:
    """Run `work` (which answers `exchange` in the end) as a task of the engine's loop."""
    return exchange.client.engine.loop.create_task(work)


class ClientConnection(asyncio.Protocol):
    """A connection from a client to one of our http listeners."""

    def __init__(self, engine: Engine, listener: ListenerConfig) -> None:
        self.engine = engine
        self.listener = listener
        self.tls = listener.tls is not None
        self.scheme = b"https" if self.tls else b"http"
        # The listener's request rules, as the running config has them (a reload changes them for new connections).
        settings = engine.listener_configs.get(listener.name) or listener
        self.upgrades = settings.upgrades  # tunnelled for routes that do not say
        self.escaped_slashes = settings.escaped_slashes
        self.underscores = settings.headers_with_underscores
        self.send_forwarded = settings.forwarded
        self.in_own_head = False  # the parser reads a head of our own (read_body_after_upgrade)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Exchange | None = None
        self.current: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.peer_host = b""
        # Set when the peer is one of the listener's trusted_proxies: then its X-Forwarded-For is believed.
        self.trusted: TrustedProxies | None = None
        self.forwarded_client = b""  # the client address that X-Forwarded-For gives (trusted peers only)
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.out: list[bytes] | None = None  # writes held while corked
        self.last_active = 0.0
        self.tunnel_to: UpstreamConnection | None = None
        self.upgrading: Exchange | None = None  # an Upgrade request waiting for its 101
        self.last_request = False  # a request said `Connection: close` (or the parser failed): read no more
        # The last request's headers and what they became for the backend (see build_upstream_head): filtered
        # headers, had an id, body framing, Content-Length, the sticky cookie stripped, the forwarded client.
        self.head_cache: tuple[list[tuple[bytes, bytes]], bytes, bool, int, int, bytes, bytes] | None = None
        # The same for a route's rewrite (Exchange._rewrite_for): route, headers, rewritten, filtered, had an id.
        self.rewrite_cache: (
            tuple[CompiledRoute, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bytes, bool] | None
        ) = None
        self.known_key: tuple[bytes, bytes] | None = (
            None  # the API key this connection used, and its consumer
        )
        limits = engine.config.limits
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.max_body = limits.max_body
        self.head_started = 0.0  # when the first byte of a request head not yet complete arrived (0: none)
        self.head_received = 0  # bytes received while in a request head (bounds what the parser holds)

    # -- lifecycle -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_host = str(peer[0]).encode()
            trusted = self.engine.trusted_proxies.get(self.listener.name)
            if trusted is not None and trusted.contains(self.peer_host):
                self.trusted = trusted
        no_delay(transport)
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]
        self.last_active = self.engine.now()
        if len(self.engine.connections) >= self.engine.config.limits.max_connections:
            # Over [limits] max_connections: say so and close, rather than take what we cannot serve.
            self.closed = True
            transport.write(error_response(503, "too many connections", close=True, extra=RETRY_AFTER))  # type: ignore[attr-defined]
            transport.close()
            self.engine.connections_refused += 1
            return
        self.engine.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self not in self.engine.connections:
            return  # refused at connection_made (over max_connections)
        self.closed = True
        self.engine.connection_closed(self)
        tunnel = self.tunnel_to
        if tunnel is not None:
            self.tunnel_to = None
            if exc is not None:
                tunnel.abort()  # the client reset the tunnel: so is the backend's side
            else:
                tunnel.close()
        if self.current is not None:
            self.current.client_lost()
        for exchange in self.pending:
            exchange.done = True
        self.pending.clear()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.uncork()
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection with a reset (RST), not a close: a response cut short must not look whole, even
        to a client that reads its body until the connection closes (HTTP/1.0, or no framing). What was written
        while corked goes first, so the client sees the same cut however the backend's bytes were split."""
        if self.transport is not None:
            self.uncork()
            self.closed = True
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
                except (OSError, ValueError):  # ValueError: uvloop's socket of a transport already closed
                    pass
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return self.current is None and self.parsing is None and self.tunnel_to is None

    # -- writing and flow control ------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        out = self.out
        if out is not None:
            out.append(data)
        elif not self.closed and self.transport is not None:
            self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        out = self.out
        if out is not None:
            out.extend(data)
        elif not self.closed and self.transport is not None:
            self.transport.writelines(data)

    def uncork(self) -> None:
        """Send what was written while corked (`out` set: see UpstreamConnection.data_received) at once."""
        out = self.out
        self.out = None
        if out and not self.closed and self.transport is not None:
            # One buffer, not a vector of small ones: a plain write costs the kernel less than writev.
            if len(out) == 1:
                self.transport.write(out[0])
            elif len(out) <= 64:
                self.transport.write(b"".join(out))
            else:
                self.transport.writelines(out)

    def pause_writing(self) -> None:
        self.write_paused = True
        upstream = self.tunnel_to or (self.current.upstream if self.current is not None else None)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        upstream = self.tunnel_to or (self.current.upstream if self.current is not None else None)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.resume_reading()

    def pause_reading_for(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # -- parsing -------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel_to
        if tunnel is not None:
            if tunnel.transport is not None:
                tunnel.transport.write(data)
            return
        self.last_active = self.engine.now()
        upgrading = self.upgrading
        if upgrading is not None:
            # After an Upgrade request nothing is parsed as HTTP: the bytes wait for the backend's 101, and are
            # dropped with the connection if it refuses.
            upgrading.tunnel_pending = (*upgrading.tunnel_pending, data)
            return
        parsing = self.parsing
        if self.last_request and parsing is None:
            return  # after `Connection: close` (or HTTP/1.0): nothing more is read as a request (its body is)
        if parsing is None or not parsing.method:  # in a request head (or about to start one)
            if not self.head_started:
                self.head_started = self.last_active  # [limits] header_timeout runs from here (the tick)
            self.head_received += len(data)
        # Each turn of the loop parses what is left of `data`: more than one only after an Upgrade request that is
        # served as a plain one (the parser stops at its head and is fed the rest again), so it ends.
        while True:
            try:
                self.parser.feed_data(data)
                if self.head_received > self.max_header_bytes:
                    self.head_too_large()
            except StopParsing:
                pass  # a request was refused (refuse): nothing more is read
            except httptools.HttpParserUpgrade as upgrade:
                rest = data[upgrade.args[0] :]
                exchange = self.upgrading
                if exchange is None:  # no protocol it asked for is tunnelled: read on as HTTP
                    self.read_body_after_upgrade()
                    # (after `Connection: close` only the request's own body; the parser then stops at its end)
                    if rest and (not self.last_request or self.parsing is not None):
                        data = rest
                        continue
                elif rest:
                    exchange.tunnel_pending = (*exchange.tunnel_pending, rest)
            except httptools.HttpParserError as error:
                if self.last_request:
                    return  # bytes after the last request of the connection: ignored, not an error
                self.bad_request(error, data)
            return

    def read_body_after_upgrade(self) -> None:
        """The parser ends an Upgrade request at its head: when that request goes on as a plain one with a body
        (its Upgrade dropped, on_headers_complete), a head of our own with the same framing makes the parser read
        that body next; its callbacks are skipped (`in_own_head`), the body goes to the request."""
        exchange = self.parsing
        if exchange is None or not exchange.body_after_upgrade:
            return
        exchange.body_after_upgrade = False
        if exchange.req_framing == CHUNKED:
            framing = b"Transfer-Encoding: chunked"
        else:
            framing = b"Content-Length: %d" % exchange.content_length
        close = b"" if exchange.keep_alive else b"\r\nConnection: close"
        self.in_own_head = True
        # A new parser: the old one may be past the end of the connection (an Upgrade request with `close`).
        self.parser = httptools.HttpRequestParser(self)
        self.parser.feed_data(b"PUT / HTTP/1.1\r\n" + framing + close + b"\r\n\r\n")

    def header_timeout(self) -> None:
        """[limits] header_timeout passed before the request head was complete (slowloris): 408, close."""
        self.engine.header_timeouts += 1
        self.last_request = True
        self.write(error_response(408, "the request head did not arrive in time", close=True))
        self.close()

    def body_timeout(self) -> None:
        """The request's body stopped arriving for [limits] client_idle_timeout: 408 if nothing of the response
        was sent yet, and close either way (its backend connection, holding half a body, is closed too)."""
        self.last_request = True
        current = self.current
        if current is not None and not current.done:
            current.termination = "client-timeout"
        if current is not None and not current.response_started and not current.done:
            current.respond_error(408, "the request body stopped arriving")
        else:
            self.abort()

    def head_too_large(self) -> None:
        """A request head past [limits] max_header_bytes: 414 while in the request line, else 431."""
        exchange = self.parsing
        if exchange is None:  # bytes that never became a request line
            exchange = self.parsing = Exchange(self)
        if exchange.method:
            return  # the head was complete after all (the bytes counted were body)
        if exchange.headers:
            self.refuse(
                exchange, 431, f"the request's header fields are larger than {self.max_header_bytes} bytes"
            )
        else:
            self.refuse(exchange, 414, f"the request line is longer than {self.max_header_bytes} bytes")

    def refuse(self, exchange: Exchange, status: int, detail: str) -> None:
        """Answer `exchange` with `status` at its turn and read nothing more from this connection.

        Called while parsing (it ends by raising StopParsing, which data_received takes as the end of input):
        nothing of a refused request reaches a backend, and none of its bytes are read as a next request.
        """
        self.last_request = True
        exchange.keep_alive = False
        queued = exchange is self.current or exchange in self.pending
        if exchange is self.parsing:
            self.parsing = None  # the parser stops here: nothing more of this request is read either
        if exchange.done:
            raise StopParsing
        if exchange is self.current:
            if exchange.response_started:
                exchange.close_after = True  # the backend answered already: cut the connection at the end
            else:
                exchange.respond_error(status, detail)
        else:
            if exchange.refused is None:
                exchange.refused = (status, detail)
            if not queued:  # refused before its head was complete: queue it now
                exchange.started = self.last_active
                if self.current is None:
                    self.current = exchange
                    exchange.start()
                else:
                    self.pending.append(exchange)
        raise StopParsing

    def bad_request(self, error: Exception, data: bytes = b"") -> None:
        """The client sent what is not HTTP/1.1: the request it broke in is answered 400 at its turn (505 for a
        well-formed version we do not serve), after the requests before it, and nothing more is read."""
        detail = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        status = 400
        if detail == "Invalid HTTP version" and WELL_FORMED_VERSION.search(data):
            status, detail = 505, "this HTTP version is not supported (HTTP/1.1 is)"
        exchange = self.parsing
        if exchange is None:  # broken at the start of a new request
            exchange = self.parsing = Exchange(self)
        try:
            self.refuse(exchange, status, f"bad request: {detail}")
        except StopParsing:
            pass

    # No on_message_begin callback (one Python call less per request): a request starts with its URL.
    def on_url(self, url: bytes) -> None:
        if self.in_own_head:
            return  # (read_body_after_upgrade)
        exchange = self.parsing
        if exchange is None:
            self.parsing = exchange = Exchange(self)
            exchange.url = url
            if not self.head_started:
                self.head_started = self.last_active  # a pipelined request: its head began in this read
        else:
            exchange.url += url  # the URL can arrive in pieces
        if len(exchange.url) > self.max_header_bytes:
            self.refuse(exchange, 414, f"the request target is longer than {self.max_header_bytes} bytes")
        if url.find(b"#") >= 0:  # (find, not `in`: see below)
            self.refuse(exchange, 400, "a request target has no fragment (#)")
        if url.translate(None, TARGET_BYTES):  # what is left is not allowed (RFC 9112 3.2: 400)
            self.refuse(exchange, 400, "the request target has a character that RFC 3986 does not allow")

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.parsing
        if exchange is not None and not exchange.method:  # after the head (method known): trailers, dropped
            headers = exchange.headers
            if name.find(b"_") < 0 or self.underscores == "keep":
                headers.append((name, value))
            elif self.underscores == "drop":
                # Some stacks read `_` as `-` (CGI, WSGI, PHP): `Transfer_Encoding` must not reach them as framing.
                self.engine.underscore_headers_dropped += 1
            else:
                self.engine.underscore_requests_refused += 1
                self.refuse(exchange, 400, "a header field name has '_' (listener headers_with_underscores)")
            size = exchange.head_size = exchange.head_size + len(name) + len(value) + 4
            if size > self.max_header_bytes:
                self.refuse(
                    exchange,
                    431,
                    f"the request's header fields are larger than {self.max_header_bytes} bytes",
                )
            if len(headers) > self.max_headers:
                self.refuse(exchange, 431, f"the request has more than {self.max_headers} header fields")

    def on_headers_complete(self) -> None:
        if self.in_own_head:
            self.in_own_head = False  # (read_body_after_upgrade): the body that follows is the request's
            return
        exchange = self.parsing
        assert exchange is not None
        parser = self.parser
        exchange.method = parser.get_method()
        exchange.version = parser.get_http_version()
        exchange.keep_alive = parser.should_keep_alive() and not self.engine.closing
        exchange.upgrade = parser.should_upgrade()
        if exchange.version != "1.1":
            self.check_version(exchange)
        url = exchange.url
        if url[:1] != b"/":
            self.origin_form(exchange)
            url = exchange.url
        redirect = b""
        # Whether the target may change under normalize_target. bytes.find, not `in`: CPython's `sub in some_bytes`
        # first tries `sub` as an int, and raises and clears a TypeError (with a formatted message) before it
        # searches: twice the cost, on every request.
        if url.find(b"%") >= 0 or url.find(b"/.") >= 0 or url.find(b"//") >= 0:
            normal = normalize_target(url)
            if normal is None:
                self.refuse(exchange, 400, "the request target has a broken %-encoding")
            else:
                if escaped_slash(normal) and self.escaped_slashes != "keep":
                    # `/flag%2Fx` is `/flag/x` to servers that decode it (nginx, for one): routing and the
                    # backend would disagree about the path (Envoy's path_with_escaped_slashes_action).
                    if self.escaped_slashes == "reject":
                        self.refuse(
                            exchange,
                            400,
                            "the path has an encoded slash or backslash (%2F, %5C) (listener escaped_slashes)",
                        )
                    normal = unescape_slashes(normal)
                    if self.escaped_slashes == "unescape_and_redirect":
                        redirect = normal
                exchange.url = normal
        exchange.build_upstream_head()  # also learns the body's framing, needed before its turn
        self.head_started = 0.0
        self.head_received = 0
        if exchange.refused is not None:
            self.refuse(exchange, *exchange.refused)
        if exchange.content_length > self.max_body:
            self.refuse(exchange, 413, f"the request body is larger than {self.max_body} bytes")
        if redirect:  # answered at its turn, as a refusal, but the connection stays open
            exchange.refused = (307, "the path had an encoded slash or backslash: ask for it unescaped")
            exchange.response_extra = ((b"Location", redirect),)
        exchange.started = self.last_active  # when its bytes arrived: queueing behind others counts too
        if exchange.upgrade:
            if exchange.method == b"CONNECT":  # the parser takes every CONNECT for an upgrade
                # RFC 9110 9.3.6: its target is an authority (refused in origin_form); with a path it is invalid.
                self.refuse(exchange, 400, "CONNECT needs an authority as its target, and is not served")
            offer = b"" if redirect else self.upgrade_offer_for(exchange)
            if offer:
                if exchange.req_framing != NO_BODY:
                    # The parser ends an upgrade request at its head: its body would pass as tunnel bytes while the
                    # backend waits for it (and reads the next client's request as the rest of it).
                    self.refuse(exchange, 400, "an upgrade request with a body is not served")
                exchange.upgrade_offer = offer
                exchange.build_upstream_head(cache=False)  # again, now with the Upgrade it sends on
                exchange.keep_alive = False
                self.upgrading = exchange
            else:
                # Nothing it asks for is tunnelled here (an h2c tunnel would carry requests past every policy):
                # a plain request, its Upgrade (and HTTP2-Settings) dropped. The parser ended it at its head;
                # its body is read next (read_body_after_upgrade), and then the requests after it.
                exchange.upgrade = False
                if exchange.req_framing != NO_BODY:
                    exchange.body_after_upgrade = True
        if not exchange.keep_alive:
            self.last_request = True
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:
            self.pending.append(exchange)
            # Queued requests are held, their bodies too; read on (so a closing client is noticed) until
            # too many wait, then stop reading until they are answered.
            if len(self.pending) >= PIPELINE_DEPTH:
                self.pause_reading_for(PAUSE_PIPELINE)

    def upgrade_offer_for(self, exchange: Exchange) -> bytes:
        """What of the request's Upgrade goes to the backend: the protocols its route tunnels (route `upgrades`,
        else its listener's), b"" for none (and for a request no route takes: it gets its 404 at its turn)."""
        asked = b", ".join(v for n, v in exchange.headers if n.lower() == b"upgrade")
        allowed = None
        router = self.engine.router
        if router.single is None:
            route = router.route(exchange)
            if route is None:
                return b""
            allowed = route.upgrades
        if allowed is None:
            allowed = frozenset(p.encode() for p in self.upgrades)
        return upgrade_offer(asked, allowed)

    def check_version(self, exchange: Exchange) -> None:
        """HTTP/1.0 is served (as 1.1 to the backend); 0.9 is refused; 2.0 over this text protocol is 505."""
        version = exchange.version
        if version == "0.9":
            self.refuse(exchange, 400, "HTTP/0.9 requests (no version) are not supported")
        elif version != "1.0":
            self.refuse(exchange, 505, f"HTTP/{version} is not supported here (HTTP/1.1 is)")

    def origin_form(self, exchange: Exchange) -> None:
        """A request target other than a path (RFC 9112 3.2): absolute-form becomes origin-form, its authority
        the Host; `*` only for OPTIONS; anything else is refused. A Host field beside an absolute-form target
        must name the same host (3.2: a client MUST send the target's authority as Host; HAProxy refuses a
        mismatch too), else 400: the route and the backend would see different hosts."""
        url = exchange.url
        if url == b"*":
            if exchange.method != b"OPTIONS":
                self.refuse(exchange, 400, "the request target * is only for OPTIONS")
            return
        scheme, sep, rest = url.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            self.refuse(exchange, 400, "the request target is neither a path nor an absolute http(s) URL")
        authority, slash, path = rest.partition(b"/")
        authority, question, query = authority.partition(b"?")
        normal = normal_host(authority) if authority and authority.find(b"@") < 0 else None
        if not normal:
            self.refuse(exchange, 400, "the request target's authority is not a valid host[:port]")
            return
        hosts = [v for n, v in exchange.headers if n.lower() == b"host"]
        if len(hosts) > 1:
            self.refuse(exchange, 400, "more than one Host header field")
        if hosts:
            default = b":443" if scheme.lower() == b"https" else b":80"
            given = normal_host(hosts[0])
            if given is None or given.removesuffix(default) != normal.removesuffix(default):
                self.refuse(exchange, 400, "the Host header field does not name the request target's host")
        exchange.url = b"/" + path + (b"?" + query if question else b"") if (slash or question) else b"/"
        exchange.headers = [(n, v) for n, v in exchange.headers if n.lower() != b"host"]
        exchange.headers.append((b"Host", normal))

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is not None:
            exchange.request_body(body)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is not None and exchange.body_after_upgrade:
            return  # the parser's end of an Upgrade request served as a plain one: its body is still to come
        self.parsing = None
        if exchange is not None:
            if exchange.req_framing == NO_BODY and not exchange.done:
                exchange.request_done = True  # Exchange.request_complete, for the common bodiless case
            else:
                exchange.request_complete()

    # -- sequencing ----------------------------------------------------------------------------------------
    def exchange_finished(self, exchange: Exchange, now: float) -> None:
        if exchange is not self.current:
            return
        self.current = None
        self.last_active = now
        engine = self.engine
        if exchange.close_after or not exchange.keep_alive or engine.closing:
            self.close()
            if engine.closing:
                engine.connection_idle(self)
            return
        if self.pending:
            self.current = self.pending.popleft()
            if len(self.pending) < PIPELINE_DEPTH:
                self.resume_reading_for(PAUSE_PIPELINE)
            self.current.start()
        elif self.paused:
            self.resume_reading_for(PAUSE_PIPELINE)

    def start_tunnel(self, exchange: Exchange, upstream: UpstreamConnection) -> None:
        self.tunnel_to = upstream
        self.upgrading = None
        self.current = None
        self.parsing = None
