"""CORS per route (the Fetch standard's CORS protocol, as Kong's and Envoy's cors filters answer it).

- A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by the gateway and
  never reaches a backend: `204` with `Access-Control-Allow-Origin` (the origin itself), `-Allow-Methods`,
  `-Allow-Headers`, `-Max-Age` and `Vary: Origin` when the origin is allowed, the method is in
  `allow_methods` (or the route's methods, or GET/HEAD/POST when neither is given) and every requested header
  is in `allow_headers`; otherwise `403` with no CORS header, which the browser takes as a refusal.
- An actual request from an allowed origin gets `Access-Control-Allow-Origin: <origin>` and `Vary: Origin`;
  from any other origin, none. A backend's own `Access-Control-*` headers are always dropped on a route with
  `cors`, so only the gateway's configuration grants access.
- `allow_origins = ["*"]` allows every origin (the answer still names the origin, with `Vary: Origin`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from lbtui.config import CorsConfig

SIMPLE_METHODS: Final = (b"GET", b"HEAD", b"POST")
BACKEND_CORS_HEADERS: Final = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-expose-headers",
        b"access-control-max-age",
    }
)


class Cors:
    def __init__(self, config: CorsConfig, route_methods: Sequence[str]) -> None:
        self.any_origin = "*" in config.allow_origins
        self.origins = frozenset(o.lower().encode() for o in config.allow_origins if o != "*")
        methods = config.allow_methods or tuple(route_methods)
        self.methods = frozenset(m.encode() for m in methods) if methods else frozenset(SIMPLE_METHODS)
        self.headers = frozenset(h.lower().encode() for h in config.allow_headers)
        self.methods_value = b", ".join(sorted(self.methods))
        self.headers_value = b", ".join(h.encode() for h in config.allow_headers)
        self.max_age = b"%d" % int(config.max_age) if config.max_age else b""

    def allows(self, origin: bytes) -> bool:
        return self.any_origin or origin.lower() in self.origins

    def preflight(
        self, origin: bytes, method: bytes, headers: bytes
    ) -> tuple[tuple[bytes, bytes], ...] | None:
        """The headers of a 204 that grants this preflight, or None to refuse it."""
        if not self.allows(origin) or method not in self.methods:
            return None
        asked = {h.strip().lower() for h in headers.split(b",") if h.strip()}
        if not asked <= self.headers:
            return None
        out = [
            (b"Access-Control-Allow-Origin", origin),
            (b"Access-Control-Allow-Methods", self.methods_value),
            (b"Vary", b"Origin"),
        ]
        if self.headers_value:
            out.append((b"Access-Control-Allow-Headers", self.headers_value))
        if self.max_age:
            out.append((b"Access-Control-Max-Age", self.max_age))
        return tuple(out)

    def response_headers(self, origin: bytes | None) -> tuple[tuple[bytes, bytes], ...]:
        """What an actual response carries: the grant for an allowed origin; otherwise only Vary."""
        if origin is not None and self.allows(origin):
            return ((b"Access-Control-Allow-Origin", origin), (b"Vary", b"Origin"))
        return ((b"Vary", b"Origin"),)
