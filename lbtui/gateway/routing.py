"""Route matching: which service a request goes to.

Order (ARCHITECTURE section 5): routes whose `host` matches come before routes without a host; within each,
exact path, then longest prefix, then regex, then no path; ties keep config order. A config with one service
and no routes sends everything to that service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from lbtui.config import RouteConfig

if TYPE_CHECKING:
    from lbtui.core.model import Service


class RoutedRequest(Protocol):
    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    config: RouteConfig
    service: Service | None
    host: bytes | None
    path: bytes | None
    prefix: bytes | None
    regex: re.Pattern[bytes] | None
    methods: frozenset[bytes]
    headers: tuple[tuple[bytes, bytes], ...]
    rank: tuple[int, int, int, int]

    def matches(
        self, method: bytes, host: bytes | None, path: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> bool:
        if self.host is not None and host != self.host:
            return False
        if self.methods and method not in self.methods:
            return False
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
            return host.rsplit(b":", 1)[0] if b":" in host else host
    return None


class Router:
    def __init__(self, routes: Sequence[RouteConfig], services: Mapping[str, Service]) -> None:
        self.services = services
        self.single: Service | None = None
        if not routes:
            if len(services) == 1:
                self.single = next(iter(services.values()))
            self.routes: tuple[CompiledRoute, ...] = ()
            return
        compiled = []
        for index, route in enumerate(routes):
            m = route.match
            if m.path is not None:
                kind, length = 0, len(m.path)
            elif m.path_prefix is not None:
                kind, length = 1, len(m.path_prefix)
            elif m.path_regex is not None:
                kind, length = 2, 0
            else:
                kind, length = 3, 0
            compiled.append(
                CompiledRoute(
                    config=route,
                    service=services.get(route.service) if route.service else None,
                    host=m.host.lower().encode() if m.host else None,
                    path=m.path.encode() if m.path is not None else None,
                    prefix=m.path_prefix.encode() if m.path_prefix is not None else None,
                    regex=re.compile(m.path_regex.encode()) if m.path_regex is not None else None,
                    methods=frozenset(x.encode() for x in m.methods),
                    headers=tuple((k.lower().encode(), v.encode()) for k, v in m.headers),
                    rank=(0 if m.host else 1, kind, -length, index),
                )
            )
        self.routes = tuple(sorted(compiled, key=lambda r: r.rank))

    def route(self, request: RoutedRequest) -> Service | None:
        if self.single is not None:
            return self.single
        path = request.url.split(b"?", 1)[0]
        host = _host_of(request.headers)
        for route in self.routes:
            if route.matches(request.method, host, path, request.headers):
                return route.service
        return None
