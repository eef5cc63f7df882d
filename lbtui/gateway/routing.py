"""Route matching: which service a request goes to, and what the route changes on the way.

Order (docs/config.md, routes): routes whose exact `host` matches come first, then routes whose wildcard host
(`*.example.com`: any name that ends in `.example.com`, at any depth, not `example.com` itself, as nginx's
`server_name`) matches, the longest wildcard first, then routes without a host; within each, exact path, then
longest prefix, then regex, then no path; ties keep config order. A config with one service and no routes sends
everything to that service.

Hosts are compared in the form lbtui/http.normal_host gives the request's Host (lower case, escapes decoded,
no trailing dot; the client proxy refuses a Host that is not one host), which is also what the backend gets, so
a route's host and the backend cannot disagree about the name.

A request no route matches gets 404; one that a route would match but for its method gets 405 with `Allow`
(every method the routes that match it otherwise take). A route's transforms (`strip_prefix`,
`request_headers`, `response_headers`) apply after matching, on the normalised path; headers the proxy owns
(framing, hop-by-hop, X-Forwarded-*) are not theirs to change (config.py refuses them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from lbtui.config import RetriesConfig, RouteConfig
from lbtui.gateway.aggregate import Aggregate
from lbtui.gateway.cache import ResponseCache
from lbtui.gateway.cors import BACKEND_CORS_HEADERS, Cors
from lbtui.gateway.jwt_auth import JwtVerifier
from lbtui.gateway.ratelimit import TokenBuckets
from lbtui.http import Networks, without_fields

if TYPE_CHECKING:
    from lbtui.core.model import RouteStats, Service


class Aggregator(Protocol):
    async def answer(self, exchange: Any) -> None:
        """Call the parts and answer `exchange` (Exchange.respond_local) with the merged reply."""


class RoutedRequest(Protocol):
    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    config: RouteConfig
    service: Service | None
    host: bytes | None  # an exact host
    path: bytes | None
    prefix: bytes | None
    regex: re.Pattern[bytes] | None
    methods: frozenset[bytes]
    headers: tuple[tuple[bytes, bytes], ...]
    rank: tuple[int, int, int, int, int]
    query: tuple[tuple[bytes, bytes], ...] = ()
    strip: bytes | None = None  # strip_prefix
    request_remove: frozenset[bytes] = frozenset()  # lower-case names dropped (and replaced by request_set)
    request_set: tuple[tuple[bytes, bytes], ...] = ()
    response_remove: frozenset[bytes] = frozenset()
    response_set: tuple[tuple[bytes, bytes], ...] = ()
    api_key: bytes | None = None  # auth api_key: the header (lower case) that carries the key
    ip_allow: Networks | None = None  # only these clients (403 for the rest)
    ip_deny: Networks | None = None  # never these clients (403)
    limiter: TokenBuckets | None = None  # rate_limit (its buckets are the route's mutable state)
    cors: Cors | None = None
    jwt: JwtVerifier | None = None  # auth jwt
    stats: RouteStats | None = None  # the route's live numbers (the balancer's; None in a bare Router)
    timeout: float = 0.0  # the route's response timeout (0: the service's)
    rewrite: tuple[re.Pattern[bytes], bytes] | None = None  # rewrite: (pattern, substitution) on the path
    add_query: tuple[tuple[bytes, bytes], ...] = ()
    limit_key: str = ""  # client_ip, consumer, or the lower-case header name of header:NAME
    transforms_request: bool = False  # strip, request headers or auth: the request is written again
    fold: bool = False  # match.case_sensitive is false: path, prefix and regex ignore letters' case
    consumer_limiters: Mapping[bytes, TokenBuckets] | None = None  # rate_limit.consumers: their own buckets
    retries: RetriesConfig | None = None  # the route's retries (None: the service's)
    cache: ResponseCache | None = None
    aggregator: Aggregator | None = None  # aggregate: the route answers from several services' replies
    host_suffix: bytes | None = None  # a wildcard host `*.example.com` as its suffix `.example.com`
    upgrades: frozenset[bytes] | None = None  # the Upgrade protocols it tunnels (None: its listener's)

    def matches(
        self,
        method: bytes,
        host: bytes | None,
        path: bytes,
        folded: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> bool:
        if self.methods and method not in self.methods:
            return False
        return self.matches_but_method(host, path, folded, headers)

    def matches_but_method(
        self, host: bytes | None, path: bytes, folded: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> bool:
        """`folded` is `path` in lower case (what routes that ignore case compare)."""
        if self.host is not None and host != self.host:
            return False
        suffix = self.host_suffix
        if suffix is not None and (host is None or len(host) <= len(suffix) or not host.endswith(suffix)):
            return False
        if self.fold:
            path = folded
        if self.path is not None and path != self.path:
            return False
        if self.prefix is not None and not _has_prefix(path, self.prefix):
            return False
        if self.regex is not None and self.regex.fullmatch(path) is None:
            return False
        for name, wanted in self.headers:
            if not any(n.lower() == name and v == wanted for n, v in headers):
                return False
        return True

    def matches_query(self, query: bytes) -> bool:
        """Every `query` parameter is in the request's query string with its value (as sent, not decoded)."""
        if not self.query:
            return True
        given = [part.partition(b"=") for part in query.split(b"&")]
        return all(any(k == name and v == value for k, _, v in given) for name, value in self.query)


def strip_prefix(url: bytes, prefix: bytes, fold: bool = False) -> bytes:
    """The target without `prefix` at the start of its path (`/api/x?q` less `/api` is `/x?q`; `/api` is `/`);
    with `fold`, `prefix` (lower case) also comes off `/API/x`."""
    path, question, query = url.partition(b"?")
    if not _has_prefix(path.lower() if fold else path, prefix):
        return url
    rest = path[len(prefix) :]
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    return rest + question + query


def set_headers(
    headers: list[tuple[bytes, bytes]], remove: frozenset[bytes], add: tuple[tuple[bytes, bytes], ...]
) -> list[tuple[bytes, bytes]]:
    """`headers` without the names in `remove` (lower case), then `add`."""
    kept = [(n, v) for n, v in headers if n.lower() not in remove]
    kept.extend(add)
    return kept


def response_parts(
    parts: list[bytes], remove: frozenset[bytes], add: tuple[tuple[bytes, bytes], ...]
) -> list[bytes]:
    """A response head as the upstream side keeps it (status line, then name, ": ", value, CRLF for each
    header) with `remove` (lower case) dropped and `add` appended."""
    out = without_fields(parts, remove)
    for name, value in add:
        out += (name, b": ", value, b"\r\n")
    return out


def rewrite_target(
    url: bytes, rewrite: tuple[re.Pattern[bytes], bytes] | None, add_query: tuple[tuple[bytes, bytes], ...]
) -> bytes:
    """The target with its path rewritten (a regex substitution; a result not starting with `/` gets one) and
    query parameters set (replacing any of the same name)."""
    path, question, query = url.partition(b"?")
    if rewrite is not None:
        path = rewrite[0].sub(rewrite[1], path)
        if not path.startswith(b"/"):
            path = b"/" + path
    if add_query:
        names = {name for name, _ in add_query}
        kept = [p for p in query.split(b"&") if p and p.partition(b"=")[0] not in names] if query else []
        kept += [name + b"=" + value for name, value in add_query]
        query = b"&".join(kept)
        question = b"?"
    return path + question + query


def _has_prefix(path: bytes, prefix: bytes) -> bool:
    # "/api" matches "/api", "/api/" and "/api/x", not "/apix" (as Envoy's path_separated_prefix).
    if prefix.endswith(b"/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + b"/")


def _host_of(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if len(name) == 4 and name.lower() == b"host":
            host = value.lower()
            if host.startswith(b"["):
                return host.split(b"]", 1)[0] + b"]"
            return host.rsplit(b":", 1)[0] if host.find(b":") >= 0 else host
    return None


class Router:
    def __init__(
        self,
        routes: Sequence[RouteConfig],
        services: Mapping[str, Service],
        stats: Mapping[str, RouteStats] | None = None,
        unmatched: dict[str, int] | None = None,
    ) -> None:
        self.services = services
        self.unmatched = {"no route": 0, "method": 0} if unmatched is None else unmatched
        self.single: Service | None = None
        if not routes:
            if len(services) == 1:
                self.single = next(iter(services.values()))
            self.routes: tuple[CompiledRoute, ...] = ()
            self.cors = False
            self.fold = False
            self.hosts = False
            return
        compiled = []
        for index, route in enumerate(routes):
            m = route.match
            fold = not m.case_sensitive
            if m.path is not None:
                kind, length = 0, len(m.path)
            elif m.path_prefix is not None:
                kind, length = 1, len(m.path_prefix)
            elif m.path_regex is not None:
                kind, length = 2, 0
            else:
                kind, length = 3, 0
            wildcard = m.host is not None and m.host.startswith("*.")
            host_tier = 1 if wildcard else 0 if m.host else 2
            suffix = m.host[1:].encode() if m.host is not None and wildcard else None
            compiled.append(
                CompiledRoute(
                    config=route,
                    service=services.get(route.service) if route.service else None,
                    host=m.host.lower().encode() if m.host and not wildcard else None,
                    host_suffix=suffix,
                    path=_folded(m.path, fold),
                    prefix=_folded(m.path_prefix, fold),
                    regex=(
                        re.compile(m.path_regex.encode(), re.IGNORECASE if fold else 0)
                        if m.path_regex is not None
                        else None
                    ),
                    fold=fold,
                    methods=frozenset(x.encode() for x in m.methods),
                    headers=tuple((k.lower().encode(), v.encode()) for k, v in m.headers),
                    query=tuple((k.encode(), v.encode()) for k, v in m.query),
                    stats=stats.get(route.name) if stats is not None else None,
                    timeout=route.timeout or 0.0,
                    rank=(host_tier, -len(suffix or b""), kind, -length, index),
                    aggregator=Aggregate(route, services) if route.aggregate else None,
                    **_transforms(route),
                )
            )
        self.routes = tuple(sorted(compiled, key=lambda r: r.rank))
        self.fold = any(r.fold for r in self.routes)  # some route compares the path in lower case
        # some route matches on the Host
        self.hosts = any(r.host is not None or r.host_suffix is not None for r in self.routes)
        self.cors = any(r.cors is not None for r in self.routes)  # some route answers CORS preflights

    def route(self, request: RoutedRequest, method: bytes | None = None) -> CompiledRoute | None:
        """The route that takes `request` (as if its method were `method`, when given; None: none; see
        `allowed` for a 405)."""
        path, _, query = request.url.partition(b"?")
        folded = path.lower() if self.fold else path
        host = _host_of(request.headers) if self.hosts else None
        wanted = request.method if method is None else method
        for route in self.routes:
            if route.matches(wanted, host, path, folded, request.headers) and route.matches_query(query):
                return route
        return None

    def sweep(self, now: float) -> None:
        """Forget rate-limit buckets that have refilled and cached responses that expired (the engine's tick
        calls this now and then)."""
        for route in self.routes:
            if route.limiter is not None:
                route.limiter.sweep(now)
            if route.consumer_limiters is not None:
                for limiter in route.consumer_limiters.values():
                    limiter.sweep(now)
            if route.cache is not None:
                route.cache.sweep(now)

    def _any_method(self, request: RoutedRequest) -> Iterator[CompiledRoute]:
        """The routes that would take `request` with some method (in rank order)."""
        path, _, query = request.url.partition(b"?")
        folded = path.lower() if self.fold else path
        host = _host_of(request.headers) if self.hosts else None
        for route in self.routes:
            if route.matches_but_method(host, path, folded, request.headers) and route.matches_query(query):
                yield route

    def cors_route(self, request: RoutedRequest) -> CompiledRoute | None:
        """The first route with `cors` that would take `request` with some method (for a preflight)."""
        return next((route for route in self._any_method(request) if route.cors is not None), None)

    def allowed(self, request: RoutedRequest) -> list[str]:
        """For a request no route takes: the methods routes would take it with (sorted; [] for a 404)."""
        methods: set[bytes] = set()
        for route in self._any_method(request):
            methods |= route.methods
        return sorted(m.decode() for m in methods)


def _folded(path: str | None, fold: bool) -> bytes | None:
    if path is None:
        return None
    return path.lower().encode() if fold else path.encode()


class _Transforms(TypedDict):
    """The route's transforms and policies, as CompiledRoute's fields of the same names (spread into it, so
    that mypy checks each name and type against the dataclass)."""

    strip: bytes | None
    request_remove: frozenset[bytes]
    request_set: tuple[tuple[bytes, bytes], ...]
    response_remove: frozenset[bytes]
    response_set: tuple[tuple[bytes, bytes], ...]
    cors: Cors | None
    rewrite: tuple[re.Pattern[bytes], bytes] | None
    add_query: tuple[tuple[bytes, bytes], ...]
    ip_allow: Networks | None
    ip_deny: Networks | None
    limiter: TokenBuckets | None
    consumer_limiters: Mapping[bytes, TokenBuckets] | None
    limit_key: str
    api_key: bytes | None
    jwt: JwtVerifier | None
    retries: RetriesConfig | None
    upgrades: frozenset[bytes] | None
    cache: ResponseCache | None
    transforms_request: bool


def _transforms(route: RouteConfig) -> _Transforms:
    request = route.request_headers
    response = route.response_headers
    auth = route.auth
    api_key = auth.header.lower().encode() if auth is not None and auth.type == "api_key" else None
    jwt = JwtVerifier(auth) if auth is not None and auth.type == "jwt" else None
    strip = _folded(route.strip_prefix, not route.match.case_sensitive) if route.strip_prefix else None
    request_remove = frozenset(n.lower().encode() for n in (*request.remove, *(k for k, _ in request.set)))
    rewrite = (
        (
            re.compile(route.rewrite[0].encode(), 0 if route.match.case_sensitive else re.IGNORECASE),
            route.rewrite[1].encode(),
        )
        if route.rewrite is not None
        else None
    )
    add_query = tuple((k.encode(), v.encode()) for k, v in route.add_query)
    out: _Transforms = {
        "strip": strip,
        "request_remove": request_remove,
        "request_set": tuple((k.encode(), v.encode()) for k, v in request.set),
        "response_remove": frozenset(
            n.lower().encode() for n in (*response.remove, *(k for k, _ in response.set))
        ),
        "response_set": tuple((k.encode(), v.encode()) for k, v in response.set),
        "rewrite": rewrite,
        "add_query": add_query,
        "ip_allow": Networks(route.ip_allow) if route.ip_allow else None,
        "ip_deny": Networks(route.ip_deny) if route.ip_deny else None,
        "api_key": api_key,
        "jwt": jwt,
        "retries": route.retries,
        "upgrades": frozenset(p.encode() for p in route.upgrades) if route.upgrades is not None else None,
        "transforms_request": bool(strip or request_remove or api_key or jwt or rewrite or add_query),
        "cors": None,
        "limiter": None,
        "consumer_limiters": None,
        "limit_key": "",
        "cache": None,
    }
    if route.cors is not None:
        out["cors"] = Cors(route.cors, route.match.methods)
        out["response_remove"] = out["response_remove"] | BACKEND_CORS_HEADERS
    limit = route.rate_limit
    if limit is not None:
        out["limiter"] = TokenBuckets(limit)
        if limit.consumers:
            out["consumer_limiters"] = {name.encode(): TokenBuckets(own) for name, own in limit.consumers}
        # The RateLimit-* headers are the gateway's: a backend's own are dropped.
        out["response_remove"] = out["response_remove"] | {
            b"ratelimit-limit",
            b"ratelimit-remaining",
            b"ratelimit-reset",
        }
        source, _, header = limit.key.partition(":")
        out["limit_key"] = header.lower() if source == "header" else source
    if route.cache is not None:
        out["cache"] = ResponseCache(route.cache, per_consumer=auth is not None)
        out["response_remove"] = out["response_remove"] | {b"x-cache"}
    return out
