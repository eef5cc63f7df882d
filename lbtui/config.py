"""TOML -> typed, validated, immutable configuration (ARCHITECTURE.md section 5).

Invariants:

- A ``Config`` that exists has been validated in full: every value, every reference between sections
  (routes and tcp listeners to services, splits and backup groups to backend groups), every uniqueness rule.
- Bad input never escapes as a traceback. Every problem becomes a ``ConfigIssue`` carrying the file, the key
  path (``services.shop.backends[1].name``), what is wrong and, where one exists, a fix. All issues are
  collected before one ``ConfigError`` is raised, so an operator fixes a file in one round, not ten.
- Config objects are frozen, slotted dataclasses holding tuples (mappings are tuples of pairs, in file order):
  they can be shared between threads, compared and hashed.
- No UI imports: the engine and ``lbtui check`` use this module headless.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, TypeVar

__all__ = [
    "ALGORITHMS",
    "AccessLogConfig",
    "AdminConfig",
    "AggregatePart",
    "AuthConfig",
    "BackendConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ConsumerConfig",
    "CorsConfig",
    "HeaderOps",
    "HealthConfig",
    "LimitsConfig",
    "ListenerConfig",
    "OutlierConfig",
    "RampConfig",
    "RateLimitConfig",
    "RetriesConfig",
    "RouteConfig",
    "RouteMatch",
    "ServiceConfig",
    "StateConfig",
    "StickyConfig",
    "TLSConfig",
    "TimeoutsConfig",
    "load_config",
    "parse_address",
    "parse_backend",
    "parse_config",
    "parse_duration",
    "parse_size",
]

T = TypeVar("T")

# The algorithm names are the algorithms module's (re-exported here for validation and callers).
from lbtui.core.algorithms import ALGORITHMS  # noqa: E402

LISTENER_MODES: Final = ("http", "tcp")
BACKEND_STATES: Final = ("ready", "drain", "maint")
HEALTH_TYPES: Final = ("http", "tcp")
RETRY_CONDITIONS: Final = ("connect-failure", "reset", "gateway-error", "5xx", "timeout")
AUTH_TYPES: Final = ("api_key", "jwt")
JWT_ALGORITHMS: Final = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
HASH_KEY_FORMS: Final = ("header:NAME", "cookie:NAME", "path", "query:NAME")
RATE_LIMIT_KEY_FORMS: Final = ("client_ip", "consumer", "header:NAME")
# Methods a route may name without a typo check; others are accepted unless they look like a typo of one.
KNOWN_METHODS: Final = (
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
)

# ----------------------------------------------------------------------------------------------------------
# Config objects


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    host: str
    port: int
    mode: str = "http"
    service: str | None = None
    tls: TLSConfig | None = None
    # Networks (CIDR) whose X-Forwarded-For is believed; from anyone else it is dropped and replaced.
    trusted_proxies: tuple[str, ...] = ()
    # The Upgrade protocols tunnelled for routes that do not say (lower case; others are dropped from requests).
    upgrades: tuple[str, ...] = ("websocket",)
    escaped_slashes: str = "reject"  # a path with %2F or %5C: one of ESCAPED_SLASHES
    headers_with_underscores: str = "drop"  # a request header named with `_`: one of HEADERS_WITH_UNDERSCORES
    forwarded: bool = False  # also send an RFC 7239 Forwarded field of lbtui's own


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9901
    token_env: str | None = None
    enabled: bool = False


@dataclass(frozen=True, slots=True)
class HealthConfig:
    type: str = "http"
    path: str = "/healthz"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    expect_status: tuple[int, int] = (200, 399)


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    connect: float = 2.0
    response: float = 30.0
    idle: float = 60.0
    queue: float = 2.0  # how long a request waits for a backend under max_connections (default: connect)


@dataclass(frozen=True, slots=True)
class RetriesConfig:
    attempts: int = 2
    on: tuple[str, ...] = ("connect-failure", "reset", "gateway-error")
    # Envoy's retry budget: retries under way at most this percent of the service's requests in flight,
    # but always allow min_retry_concurrency of them.
    budget_percent: float = 20.0
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 5
    consecutive_connect_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejected_percent: int = 50


@dataclass(frozen=True, slots=True)
class StickyConfig:
    """Cookie-based session persistence (HAProxy's `cookie NAME insert indirect nocache`).

    `secret_env` names the variable holding the key the cookie's values are made with (None: a random key per
    process); `secure` None means "on TLS listeners"; `same_site` is "lax", "strict", "none" or None (not
    sent); `max_age` in seconds, or None for a session cookie.
    """

    cookie: str
    secret_env: str | None = None
    secure: bool | None = None
    same_site: str | None = None
    max_age: int | None = None


@dataclass(frozen=True, slots=True)
class RampConfig:
    """A canary ramp: the canary group's share of the split, step by step, with a hold at each step.

    It rolls back (the canary's share to 0) when, over the last window, the canary's 5xx rate is more than
    `max_5xx_excess` percentage points above the stable group's, or its p99 is above both `max_p99_ratio`
    times and `p99_slack` more than the stable group's. Nothing is judged before `min_requests` canary requests.
    """

    steps: tuple[int, ...] = (5, 25, 50, 100)
    hold: float = 30.0
    max_5xx_excess: float = 2.0
    max_p99_ratio: float = 2.0
    p99_slack: float = 0.010
    min_requests: int = 20


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    host: str
    port: int
    group: str = "default"
    weight: int = 1
    state: str = "ready"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    algorithm: str = "round_robin"
    backends: tuple[BackendConfig, ...] = ()
    split: tuple[tuple[str, int], ...] | None = None
    health: HealthConfig | None = None
    timeouts: TimeoutsConfig = TimeoutsConfig()
    retries: RetriesConfig = RetriesConfig()
    outlier: OutlierConfig | None = None
    slow_start: float = 0.0
    max_connections: int | None = None
    max_queue: int = 100  # requests waiting for a backend under max_connections; beyond: 503 at once
    sticky: StickyConfig | None = None
    backup_group: str | None = None
    panic_threshold: int = 0  # percent; under it healthy, balance over all ready backends (Envoy's panic)
    hash_key: str | None = None
    ramp: RampConfig = RampConfig()


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    host: str | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()  # query parameters that must be present with exactly these values
    case_sensitive: bool = (
        False  # path, path_prefix and path_regex compare letters' case (default: they do not)
    )


@dataclass(frozen=True, slots=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthConfig:
    type: str
    header: str = "X-API-Key"
    algorithms: tuple[str, ...] = ()
    secret_env: str | None = None
    public_key_file: str | None = None
    issuer: str | None = None
    audience: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    rate: int
    per: float = 1.0
    burst: int | None = None
    key: str = "client_ip"
    # Per-consumer overrides: (consumer, its own rate, per and burst); each such consumer has buckets of its own.
    consumers: tuple[tuple[str, RateLimitConfig], ...] = ()


@dataclass(frozen=True, slots=True)
class CorsConfig:
    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    max_age: float = 0.0


CACHE_MAX_BODY: Final = 1024 * 1024
CACHE_MAX_BYTES: Final = 64 * 1024 * 1024
CACHE_STATUSES: Final = ((200, 200), (301, 301), (404, 404))  # Kong's proxy-cache default


@dataclass(frozen=True, slots=True)
class CacheConfig:
    ttl: float
    max_entries: int = 1000
    max_body: int = CACHE_MAX_BODY  # larger responses are passed on, not kept
    max_bytes: int = CACHE_MAX_BYTES  # all the route's kept bodies together; the least recently used go first
    statuses: tuple[tuple[int, int], ...] = CACHE_STATUSES  # the responses kept


@dataclass(frozen=True, slots=True)
class AggregatePart:
    service: str
    path: str  # may hold `{group.field}`: a field of an earlier part's reply (see aggregate_path_pieces)
    group: str
    allow: tuple[str, ...] = ()  # top-level fields kept (all when empty)
    deny: tuple[str, ...] = ()  # top-level fields dropped
    rename: tuple[tuple[str, str], ...] = ()  # (field, new name), after allow and deny


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    match: RouteMatch
    service: str | None = None
    aggregate: tuple[AggregatePart, ...] = ()
    strip_prefix: str | None = None
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()
    auth: AuthConfig | None = None
    rate_limit: RateLimitConfig | None = None
    cors: CorsConfig | None = None
    cache: CacheConfig | None = None
    timeout: float | None = None
    retries: RetriesConfig | None = None  # replaces the service's retries for this route's requests
    rewrite: tuple[str, str] | None = None  # (pattern, substitution) on the path, after strip_prefix
    add_query: tuple[tuple[str, str], ...] = ()  # query parameters set on the request (replacing same names)
    ip_allow: tuple[str, ...] = ()  # networks (CIDR); when given, only clients in one may use the route
    ip_deny: tuple[str, ...] = ()  # networks whose clients get 403 (deny wins over allow)
    upgrades: tuple[str, ...] | None = (
        None  # the Upgrade protocols tunnelled (None: its listener's `upgrades`)
    )


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    name: str
    api_key_sha256: str | None = None
    api_key_env: str | None = None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_header_bytes: int = 16384
    max_headers: int = 100
    max_body: int = 100 * 1024 * 1024
    header_timeout: float = 10.0
    client_idle_timeout: float = 60.0
    max_connections: int = 10000


@dataclass(frozen=True, slots=True)
class StateConfig:
    file: str | None = None


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    path: str | None = None  # a file, "-" for stderr; None: no access log
    format: str = "json"  # "json" (one object a line) or "combined" (Apache's, then key=value fields)


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    listeners: tuple[ListenerConfig, ...]
    admin: AdminConfig
    services: tuple[ServiceConfig, ...]
    routes: tuple[RouteConfig, ...] = ()
    consumers: tuple[ConsumerConfig, ...] = ()
    limits: LimitsConfig = LimitsConfig()
    state: StateConfig = StateConfig()
    access_log: AccessLogConfig = AccessLogConfig()

    def service(self, name: str) -> ServiceConfig:
        """The service called ``name``; KeyError if there is none."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)


DEFAULT_LISTENER: Final = ListenerConfig(name="web", host="127.0.0.1", port=8080, mode="http")

# ----------------------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    key_path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = (
            f"{self.file}: {self.key_path}: {self.message}"
            if self.key_path
            else f"{self.file}: {self.message}"
        )
        return f"{text}; {self.hint}" if self.hint else text


class ConfigError(Exception):
    """Every problem found in one config, one ``ConfigIssue`` each, in the order they were found."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[tuple[ConfigIssue, ...]]]:
        return (type(self), (self.issues,))


class _Invalid(ValueError):
    """A bad value: what is wrong and how to fix it. Public helpers raise it as a plain ValueError."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(f"{message}; {hint}" if hint else message)
        self.message = message
        self.hint = hint


# ----------------------------------------------------------------------------------------------------------
# Value parsers (public: the engine and admin API validate runtime input with them too)

_DURATION_HINT: Final = "use a number of seconds or a string like '250ms', '2s', '1m'"
_DURATION_FACTORS: Final = {
    "us": Decimal("0.000001"),
    "µs": Decimal("0.000001"),  # micro sign
    "μs": Decimal("0.000001"),  # Greek mu: both get typed
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
# Longer units first, so that "ms" is not read as "m" followed by garbage.
_DURATION_PART: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|µs|μs|ms|s|m|h)")
_DURATION_WHOLE: Final = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*(?:us|µs|μs|ms|s|m|h))+\s*")

_INT64: Final = 2**63
_SIZE_HINT: Final = "use a number of bytes or a string like '512KiB', '100MiB', '1GB'"
_SIZE_FACTORS: Final = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(value: object) -> float:
    """Seconds from ``"250ms"``, ``"2s"``, ``"1.5m"``, ``"1h"``, ``"100us"``, ``"1m30s"`` or a number.

    Raises ValueError (with what is wrong and how to fix it) for anything else, negatives included.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Invalid(f"expected a duration, got {_describe(value)}", _DURATION_HINT)
    if isinstance(value, int | float):
        if isinstance(value, int) and abs(value) >= _INT64:
            raise _Invalid("integer is too large for a duration")
        if not math.isfinite(value):
            raise _Invalid(f"{_number(value)} is not a duration", _DURATION_HINT)
        if value < 0:
            raise _Invalid(f"{_number(value)} is not a duration", "durations cannot be negative")
        return float(value)
    text = value.strip().lower()
    if text.startswith("-"):
        raise _Invalid(f"{_q(value)} is not a duration", "durations cannot be negative")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        raise _Invalid(
            f"{_q(value)} is not a duration", f"add a unit ('{text}s') or write {text} without quotes"
        )
    if not _DURATION_WHOLE.fullmatch(text):
        raise _Invalid(f"{_q(value)} is not a duration", _DURATION_HINT)
    total = float(
        sum(
            (Decimal(number) * _DURATION_FACTORS[unit] for number, unit in _DURATION_PART.findall(text)),
            Decimal(0),
        )
    )
    if not math.isfinite(total):
        raise _Invalid(f"{_q(value)} is too large for a duration")
    return total


def parse_size(value: object) -> int:
    """Bytes from ``"100MiB"``, ``"16KiB"``, ``"1GB"``, ``"512"`` or an integer. Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(f"expected a size, got {_describe(value)}", _SIZE_HINT)
    if isinstance(value, int):
        if abs(value) >= _INT64:
            raise _Invalid("integer is too large for a size")
        if value < 0:
            raise _Invalid(f"{value} is not a size", "sizes cannot be negative")
        return value
    match = _SIZE_RE.fullmatch(value.strip().lower())
    if match is None or match.group(2) not in _SIZE_FACTORS:
        raise _Invalid(f"{_q(value)} is not a size", _SIZE_HINT)
    size = Decimal(match.group(1)) * _SIZE_FACTORS[match.group(2)]
    if size != size.to_integral_value():
        raise _Invalid(f"{_q(value)} is not a whole number of bytes", _SIZE_HINT)
    if size >= _INT64:
        raise _Invalid(f"{_q(value)} is too large for a size")
    return int(size)


def parse_address(value: object, allow_zero: bool = False) -> tuple[str, int]:
    """``(host, port)`` from ``"127.0.0.1:8080"``, ``"[::1]:8080"`` or ``"localhost:80"``.

    IPv6 hosts come back without brackets. Port 0 (any free port) only with ``allow_zero`` (listeners).
    Raises ValueError.
    """
    low = 0 if allow_zero else 1
    port_hint = f"use a port from {low} to 65535"
    if isinstance(value, int) and not isinstance(value, bool):
        raise _Invalid(f"expected an address 'host:port', got integer {value}", f"write '127.0.0.1:{value}'")
    if not isinstance(value, str):
        raise _Invalid(f"expected an address 'host:port', got {_describe(value)}")
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise _Invalid(f"{_q(value)} has no closing ']'", "write IPv6 addresses like '[::1]:8080'")
        host, rest = value[1:end], value[end + 1 :]
        if not rest.startswith(":"):
            raise _Invalid(f"{_q(value)} has no port", f"write it as '[{host}]:PORT'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{_q(host)} is not an IPv6 address") from None
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon:
            raise _Invalid(f"{_q(value)} has no port", f"write it as 'host:port', e.g. '{value}:8080'")
        if ":" in host:
            raise _Invalid(
                f"{_q(value)} is not a valid address",
                f"put IPv6 addresses in brackets, e.g. '[{host}]:{port_text}'",
            )
        if not host:
            raise _Invalid(
                f"{_q(value)} has no host",
                f"write '127.0.0.1:{port_text}' (this machine) or '0.0.0.0:{port_text}' (all interfaces)",
            )
        _check_host(host)
    if not port_text.isascii() or not port_text.isdigit():
        raise _Invalid(f"{_q(port_text)} is not a port number", port_hint)
    port = int(port_text)
    if port == 0 and not allow_zero:
        raise _Invalid(
            "port 0 is not allowed here", f"{port_hint} (port 0, any free port, is for listeners only)"
        )
    if not low <= port <= 65535:
        raise _Invalid(f"port {port} is out of range", port_hint)
    return host, port


_HOST_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE: Final = re.compile(rf"(?=.{{1,253}}\Z){_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def _check_host(host: str) -> None:
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _Invalid(f"{_q(host)} is not a valid IPv4 address") from None
        return
    if not _HOSTNAME_RE.fullmatch(host):
        raise _Invalid(f"{_q(host)} is not a valid host name")


def _is_loopback(host: str) -> bool:
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------------------
# Describing values and suggesting fixes

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def _join(path: str, key: str) -> str:
    part = key if _BARE_KEY.fullmatch(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}.{part}" if path else part


def _q(text: str) -> str:
    if len(text) > 60:
        text = text[:57] + "..."
    return repr(text)


def _number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value)


def _describe(value: object) -> str:
    """The TOML type name and, for scalars, the value: "string '3'", "boolean true", "table"."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        # Python refuses to print ints of more than 4300 digits; TOML integers are 64-bit anyway.
        return f"integer {value}" if abs(value) < _INT64 else "integer (too large)"
    if isinstance(value, float):
        return f"float {_number(value)}"
    if isinstance(value, str):
        return f"string {_q(value)}"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, datetime.datetime):
        return f"datetime {value.isoformat()}"
    if isinstance(value, datetime.date):
        return f"date {value.isoformat()}"
    if isinstance(value, datetime.time):
        return f"time {value.isoformat()}"
    if value is None:
        return "null"
    return type(value).__name__


def _closest(word: str, choices: Iterable[str]) -> str | None:
    by_lower = {choice.lower(): choice for choice in choices}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return by_lower[found[0]] if found else None


def _suggest(word: str, choices: Sequence[str], listing: str) -> str | None:
    """ "did you mean 'x'?" when a choice is close, else ``listing`` followed by every choice."""
    close = _closest(word, choices)
    if close is not None:
        return f"did you mean {_q(close)}?"
    if not choices:
        return None
    return f"{listing}: " + ", ".join(_q(choice) for choice in choices)


def _seconds(value: float) -> str:
    return f"{value:g}s"


# ----------------------------------------------------------------------------------------------------------
# Converters: raw value -> typed value, or _Invalid


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_describe(value)}")
    return value


def _nonempty(value: object) -> str:
    text = _string(value)
    if not text:
        raise _Invalid("must not be empty")
    return text


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = None
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            hint = f"write {value.strip()} without quotes"
        elif isinstance(value, float) and value.is_integer():
            hint = f"write {int(value)}"
        raise _Invalid(f"expected an integer, got {_describe(value)}", hint)
    if abs(value) >= _INT64:
        raise _Invalid("integer is too large", "TOML integers are 64-bit")
    return value


def _int_in(low: int, high: int | None = None) -> Callable[[object], int]:
    def convert(value: object) -> int:
        number = _integer(value)
        if high is None and number < low:
            raise _Invalid(f"must be at least {low}, got {number}")
        if high is not None and not low <= number <= high:
            raise _Invalid(f"must be between {low} and {high}, got {number}")
        return number

    return convert


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        hint = f"write {value} without quotes" if value in ("true", "false") else None
        raise _Invalid(f"expected a boolean, got {_describe(value)}", hint)
    return value


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise _Invalid("must be greater than zero", _DURATION_HINT)
    return seconds


def _listen_address(value: object) -> tuple[str, int]:
    return parse_address(value, allow_zero=True)


def _upstream_address(value: object) -> tuple[str, int]:
    return parse_address(value, allow_zero=False)


_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_NAME_HINT: Final = "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
_ENV_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 9110 token: header names, methods, cookie names.
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEX64_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_ORIGIN_RE: Final = re.compile(r"https?://[^/\s?#]+")


def _name(kind: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = _string(value)
        if not _NAME_RE.fullmatch(text):
            raise _Invalid(f"{_q(text)} is not a valid {kind} name", _NAME_HINT)
        return text

    return convert


def _choice(choices: Sequence[str], noun: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = _string(value)
        if text not in choices:
            raise _Invalid(f"{_q(text)} is not {noun}", _suggest(text, choices, "choose one of"))
        return text

    return convert


def _env_name(value: object) -> str:
    text = _string(value)
    if not _ENV_RE.fullmatch(text):
        raise _Invalid(
            f"{_q(text)} is not an environment variable name",
            "give the NAME of the variable that holds the secret (letters, digits, '_'), not the secret",
        )
    return text


def _token(kind: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = _string(value)
        if not _TOKEN_RE.fullmatch(text):
            raise _Invalid(f"{_q(text)} is not a valid {kind}", "use letters, digits and -, no spaces or ':'")
        return text

    return convert


_header_name = _token("header name")


def _header_value(value: object) -> str:
    text = _string(value)
    if re.search(r"[\r\n\x00]", text):
        raise _Invalid("header values cannot contain line breaks or NUL")
    return text


def _url_path(value: object) -> str:
    text = _string(value)
    if not text.startswith("/"):
        raise _Invalid(f"{_q(text)} does not start with '/'", f"write {_q('/' + text)}")
    if re.search(r"[\s\x00-\x1f\x7f]", text):
        raise _Invalid(f"{_q(text)} contains spaces or control characters", "percent-encode them (%20)")
    return text


def _method(value: object) -> str:
    method = _token("method")(value).upper()
    if method not in KNOWN_METHODS:
        close = _closest(method, KNOWN_METHODS)
        if close is not None:
            raise _Invalid(f"{_q(method)} is not an HTTP method", f"did you mean {_q(close)}?")
    return method


def _regex(value: object) -> str:
    text = _string(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise _Invalid(
            f"{_q(text)} is not a valid regular expression: {exc.msg} at position {exc.pos}"
        ) from None
    return text


def _route_host(value: object) -> str:
    """A route's host: a name (`api.example.com`) or a wildcard for its subdomains (`*.example.com`), in lower
    case with no trailing dot (requests' hosts are compared in that form, proxy/http.normal_host)."""
    text = _nonempty(value).lower()
    if ":" in text:
        raise _Invalid(f"{_q(text)} includes a port", f"match the host name only: {_q(text.split(':')[0])}")
    name = text[2:] if text.startswith("*.") else text
    if "*" in name:
        raise _Invalid(
            f"{_q(text)} is not a host pattern",
            "a wildcard is '*.' before a name, as in '*.example.com' (any subdomain, at any depth)",
        )
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]  # `example.com.` names the same host as `example.com`
    if not name:
        raise _Invalid(f"{_q(text)} has no name after '*.'", "write e.g. '*.example.com'")
    _check_host(name)
    if name.endswith("."):
        raise _Invalid(f"{_q(text)} is not a valid host name")
    return "*." + name if text.startswith("*.") else name


def _upgrade_protocol(value: object) -> str:
    """A protocol name a client may ask for in Upgrade (`websocket`, `h2c`), lower case."""
    text = _string(value)
    if not _TOKEN_RE.fullmatch(text):
        raise _Invalid(
            f"{_q(text)} is not a protocol name", "e.g. 'websocket' (a token: no spaces, '/' or ',')"
        )
    return text.lower()


def _status_range(value: object) -> tuple[int, int]:
    hint = "use a status (200), a class ('2xx'), a range ('200-399') or [200, 399]"
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise _Invalid(f"expected [low, high], got an array of {len(value)}", hint)
        low, high = _integer(value[0]), _integer(value[1])
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"[1-5]xx", text):
            low, high = int(text[0]) * 100, int(text[0]) * 100 + 99
        elif match := re.fullmatch(r"(\d{3})\s*-\s*(\d{3})", text):
            low, high = int(match.group(1)), int(match.group(2))
        elif re.fullmatch(r"\d{3}", text):
            low = high = int(text)
        else:
            raise _Invalid(f"{_q(value)} is not a status or status range", hint)
    elif isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    else:
        raise _Invalid(f"expected a status or status range, got {_describe(value)}", hint)
    if not (100 <= low <= 599 and 100 <= high <= 599):
        shown = f"{low}-{high}" if low != high else str(low)
        raise _Invalid(f"{shown} is not a status", "status codes run from 100 to 599")
    if low > high:
        raise _Invalid(f"range {low}-{high} is backwards", f"write [{high}, {low}]")
    return low, high


def _named_form(text: str, forms: Sequence[str], noun: str) -> str:
    """Checks ``kind:NAME`` forms such as ``header:X-User``; plain forms (``path``) must match exactly."""
    listing = "use one of: " + ", ".join(_q(form) for form in forms)
    plain = [form for form in forms if ":" not in form]
    prefixes = [form.split(":")[0] for form in forms if ":" in form]
    if text in plain:
        return text
    kind, colon, name = text.partition(":")
    if colon and kind in prefixes:
        if not name:
            raise _Invalid(f"{_q(text)} has no name after '{kind}:'", f"write e.g. '{kind}:X-User'")
        check = _token(f"{kind} name") if kind in ("header", "cookie") else _query_name
        check(name)
        return text
    close = _closest(kind, [*plain, *prefixes])
    hint = listing if close is None else f"did you mean {_q(close + (':' + name if colon else ''))}?"
    raise _Invalid(f"{_q(text)} is not {noun}", hint)


def _query_name(value: object) -> str:
    text = _nonempty(value)
    if re.search(r"[&=#\s]", text):
        raise _Invalid(f"{_q(text)} is not a valid query parameter name")
    return text


def _hash_key(value: object) -> str:
    return _named_form(_string(value), HASH_KEY_FORMS, "a hash key")


def _rate_limit_key(value: object) -> str:
    return _named_form(_string(value), RATE_LIMIT_KEY_FORMS, "a rate limit key")


def _jwt_algorithm(value: object) -> str:
    text = _string(value)
    if text.lower() == "none":
        raise _Invalid(
            "'none' is not allowed", "unsigned tokens would let anyone in; use e.g. 'HS256' or 'RS256'"
        )
    return _choice(JWT_ALGORITHMS, "a JWT algorithm")(text)


def _origin(value: object) -> str:
    text = _nonempty(value)
    if text == "*":
        return text
    if _ORIGIN_RE.fullmatch(text):
        return text
    if _ORIGIN_RE.fullmatch(text.rstrip("/")):
        raise _Invalid(f"{_q(text)} is not an origin", f"remove the trailing '/': {_q(text.rstrip('/'))}")
    raise _Invalid(f"{_q(text)} is not an origin", "write 'https://host[:port]' (no path), or '*'")


def _sha256_hex(value: object) -> str:
    text = _string(value)
    if not _HEX64_RE.fullmatch(text):
        raise _Invalid(
            "not a SHA-256 hex digest (64 hex digits)", "compute it with: printf %s 'THE-KEY' | sha256sum"
        )
    return text.lower()


# ----------------------------------------------------------------------------------------------------------
# Reading tables while collecting issues


class _Context:
    """One validation run: where the input came from and every issue found so far."""

    __slots__ = ("base_dir", "file", "issues")

    def __init__(self, file: str, base_dir: str | None) -> None:
        self.file = file
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = []

    def add(self, key_path: str, message: str, hint: str | None = None) -> None:
        self.issues.append(ConfigIssue(self.file, key_path, message, hint))

    def convert(self, key_path: str, raw: object, convert: Callable[[Any], T]) -> T | None:
        """``convert(raw)``, or None after recording why not. No exception gets past this."""
        try:
            return convert(raw)
        except _Invalid as exc:
            self.add(key_path, exc.message, exc.hint)
        except Exception as exc:  # a converter bug must still surface as an issue, not a traceback
            self.add(key_path, f"invalid value {_describe(raw)}: {exc}")
        return None

    def table(self, key_path: str, raw: object, allowed: Sequence[str]) -> _Reader | None:
        if not isinstance(raw, Mapping):
            self.add(key_path, f"expected a table, got {_describe(raw)}")
            return None
        return _Reader(self, raw, key_path, allowed)

    def resolve(self, path: str) -> str:
        """A file path relative to the config file's directory (kept as given for dict input)."""
        path = os.path.expanduser(path)
        if self.base_dir is not None and not os.path.isabs(path):
            path = os.path.join(self.base_dir, path)
        return os.path.normpath(path)

    def reference(self, key_path: str, name: str, known: Sequence[str], kind: str) -> bool:
        if name in known:
            return True
        self.add(key_path, f"no {kind} named {_q(name)}", _suggest(name, known, f"defined {kind}s"))
        return False


class _Reader:
    """One table being read: converted values out, issues (at their key paths) into the context."""

    __slots__ = ("ctx", "data", "path")

    def __init__(self, ctx: _Context, data: Mapping[Any, Any], path: str, allowed: Sequence[str]) -> None:
        self.ctx = ctx
        self.data = data
        self.path = path
        for key in data:
            if not isinstance(key, str):
                ctx.add(path, f"keys must be strings, got {_describe(key)}")
            elif key not in allowed:
                ctx.add(self.key_path(key), "unknown key", _suggest(key, allowed, "allowed keys"))

    def key_path(self, key: str) -> str:
        return _join(self.path, key)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def value(self, key: str, convert: Callable[[Any], T]) -> T | None:
        """The converted value, or None when the key is absent or the value is bad (an issue is recorded)."""
        if key not in self.data:
            return None
        return self.ctx.convert(self.key_path(key), self.data[key], convert)

    def get(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        found = self.value(key, convert)
        return default if found is None else found

    def required(self, key: str, convert: Callable[[Any], T], placeholder: T, hint: str | None = None) -> T:
        """The converted value; if absent or bad, an issue and ``placeholder`` (no Config will be built)."""
        if key not in self.data:
            self.ctx.add(self.path, f"missing required key {_q(key)}", hint)
            return placeholder
        return self.get(key, convert, placeholder)

    def table(self, key: str, allowed: Sequence[str]) -> _Reader | None:
        if key not in self.data:
            return None
        return self.ctx.table(self.key_path(key), self.data[key], allowed)

    def tables(
        self, key: str, allowed: Sequence[str], hint: str | None = None
    ) -> list[tuple[int, _Reader]] | None:
        """An array of tables, as (index, reader); elements that are not tables are reported and skipped."""
        if key not in self.data:
            return None
        raw, path = self.data[key], self.key_path(key)
        if not isinstance(raw, list | tuple):
            self.ctx.add(path, f"expected an array of tables, got {_describe(raw)}", hint)
            return None
        readers = []
        for index, item in enumerate(raw):
            reader = self.ctx.table(f"{path}[{index}]", item, allowed)
            if reader is not None:
                readers.append((index, reader))
        return readers

    def array(self, key: str, convert: Callable[[Any], T], *, unique: bool = True) -> tuple[T, ...] | None:
        if key not in self.data:
            return None
        raw, path = self.data[key], self.key_path(key)
        if not isinstance(raw, list | tuple):
            self.ctx.add(path, f"expected an array, got {_describe(raw)}")
            return None
        items: list[T] = []
        for index, item in enumerate(raw):
            found = self.ctx.convert(f"{path}[{index}]", item, convert)
            if found is None:
                continue
            if unique and found in items:
                self.ctx.add(f"{path}[{index}]", f"{_q(str(found))} is listed twice")
                continue
            items.append(found)
        return tuple(items)

    def pairs(
        self, key: str, convert_key: Callable[[Any], str], convert_value: Callable[[Any], T]
    ) -> tuple[tuple[str, T], ...] | None:
        """A table of free-form keys (header names, groups) as pairs in file order."""
        if key not in self.data:
            return None
        raw, path = self.data[key], self.key_path(key)
        if not isinstance(raw, Mapping):
            self.ctx.add(path, f"expected a table, got {_describe(raw)}")
            return None
        found: list[tuple[str, T]] = []
        for name, item in raw.items():
            if not isinstance(name, str):
                self.ctx.add(path, f"keys must be strings, got {_describe(name)}")
                continue
            item_path = _join(path, name)
            good_name = self.ctx.convert(item_path, name, convert_key)
            good_item = self.ctx.convert(item_path, item, convert_value)
            if good_name is not None and good_item is not None:
                found.append((good_name, good_item))
        return tuple(found)


# ----------------------------------------------------------------------------------------------------------
# Sections

TOP_KEYS: Final = ("listeners", "admin", "services", "routes", "consumers", "limits", "state", "access_log")
LISTENER_KEYS: Final = (
    "name",
    "bind",
    "mode",
    "service",
    "tls",
    "trusted_proxies",
    "upgrades",
    "escaped_slashes",
    "headers_with_underscores",
    "forwarded",
)
# What a listener does with a request whose path holds %2F or %5C (Envoy's path_with_escaped_slashes_action).
ESCAPED_SLASHES: Final = ("reject", "keep", "unescape_and_forward", "unescape_and_redirect")
# What it does with a request header whose name has `_` (Envoy's headers_with_underscores_action).
HEADERS_WITH_UNDERSCORES: Final = ("drop", "keep", "reject")
HTTP_ONLY_LISTENER_KEYS: Final = (
    "trusted_proxies",
    "upgrades",
    "escaped_slashes",
    "headers_with_underscores",
    "forwarded",
)
TLS_KEYS: Final = ("cert", "key")
ADMIN_KEYS: Final = ("bind", "token_env", "enabled")
SERVICE_KEYS: Final = (
    "algorithm",
    "backends",
    "split",
    "health",
    "timeouts",
    "retries",
    "outlier",
    "slow_start",
    "max_connections",
    "max_queue",
    "sticky",
    "backup_group",
    "panic_threshold",
    "hash_key",
    "ramp",
)
BACKEND_KEYS: Final = ("name", "address", "group", "weight", "state")
HEALTH_KEYS: Final = ("type", "path", "interval", "timeout", "rise", "fall", "expect_status")
TIMEOUTS_KEYS: Final = ("connect", "response", "idle", "queue")
RETRIES_KEYS: Final = ("attempts", "on", "budget_percent", "min_retry_concurrency")
OUTLIER_KEYS: Final = (
    "consecutive_5xx",
    "consecutive_gateway_errors",
    "consecutive_connect_failures",
    "base_ejection",
    "max_ejection",
    "max_ejected_percent",
)
STICKY_KEYS: Final = ("cookie", "secret_env", "secure", "same_site", "max_age")
SAME_SITE: Final = ("lax", "strict", "none")
RAMP_KEYS: Final = ("steps", "hold", "max_5xx_excess", "max_p99_ratio", "p99_slack", "min_requests")
ROUTE_KEYS: Final = (
    "name",
    "match",
    "service",
    "aggregate",
    "strip_prefix",
    "request_headers",
    "response_headers",
    "auth",
    "rate_limit",
    "cors",
    "cache",
    "timeout",
    "ip_allow",
    "ip_deny",
    "rewrite",
    "add_query",
    "retries",
    "upgrades",
)
REWRITE_KEYS: Final = ("pattern", "substitution")
MATCH_KEYS: Final = (
    "path",
    "path_prefix",
    "path_regex",
    "host",
    "methods",
    "headers",
    "query",
    "case_sensitive",
)
AGGREGATE_KEYS: Final = ("service", "path", "group", "allow", "deny", "rename")
HEADER_OPS_KEYS: Final = ("set", "remove")
AUTH_KEYS: Final = ("type", "header", "algorithms", "secret_env", "public_key_file", "issuer", "audience")
JWT_ONLY_KEYS: Final = ("algorithms", "secret_env", "public_key_file", "issuer", "audience")
RATE_LIMIT_KEYS: Final = ("rate", "per", "burst", "key", "consumers")
RATE_OVERRIDE_KEYS: Final = ("rate", "per", "burst")
CORS_KEYS: Final = ("allow_origins", "allow_methods", "allow_headers", "max_age")
CACHE_KEYS: Final = ("ttl", "max_entries", "max_body", "max_bytes", "statuses")
CONSUMER_KEYS: Final = ("name", "api_key_sha256", "api_key_env")
LIMITS_KEYS: Final = (
    "max_header_bytes",
    "max_headers",
    "max_body",
    "header_timeout",
    "client_idle_timeout",
    "max_connections",
)
STATE_KEYS: Final = ("file",)
ACCESS_LOG_KEYS: Final = ("path", "format")
ACCESS_LOG_FORMATS: Final = ("json", "combined")

_HASH_KEY_HINT: Final = "set hash_key to one of: " + ", ".join(_q(form) for form in HASH_KEY_FORMS)


class _Listener:
    """A parsed listener and where it was, for the checks that need the services."""

    __slots__ = ("config", "path", "service_path")

    def __init__(self, config: ListenerConfig, path: str, service_path: str) -> None:
        self.config = config
        self.path = path
        self.service_path = service_path


def _parse_listeners(ctx: _Context, root: _Reader) -> list[_Listener]:
    if "listeners" not in root:
        return [_Listener(DEFAULT_LISTENER, "the default listener", "listeners")]
    readers = root.tables("listeners", LISTENER_KEYS, "write [[listeners]] tables")
    if readers is None:
        return []
    if not root.data["listeners"]:
        ctx.add(
            "listeners",
            "at least one listener is required",
            "add [[listeners]] with bind = \"127.0.0.1:8080\", or leave 'listeners' out for that default",
        )
    listeners: list[_Listener] = []
    names: dict[str, str] = {}
    binds: dict[tuple[str, int], str] = {}
    for index, reader in readers:
        name = reader.get("name", _name("listener"), f"listener{index}")
        host, port = reader.required("bind", _listen_address, ("", 0), 'e.g. bind = "127.0.0.1:8080"')
        mode = reader.get("mode", _choice(LISTENER_MODES, "a listener mode"), "http")
        service = reader.value("service", _nonempty)
        if mode == "tcp" and "service" not in reader:
            ctx.add(reader.path, "missing required key 'service'", "a tcp listener forwards to one service")
        if mode == "http" and "service" in reader:
            ctx.add(
                reader.key_path("service"),
                "only used by tcp listeners",
                "remove it; http listeners pick a service through [[routes]]",
            )
            service = None
        tls = _parse_tls(ctx, reader.table("tls", TLS_KEYS), mode)
        trusted = reader.array("trusted_proxies", _network) or ()
        upgrades = reader.array("upgrades", _upgrade_protocol)
        escaped = reader.get(
            "escaped_slashes", _choice(ESCAPED_SLASHES, "an escaped_slashes action"), "reject"
        )
        underscores = reader.get(
            "headers_with_underscores",
            _choice(HEADERS_WITH_UNDERSCORES, "a headers_with_underscores action"),
            "drop",
        )
        forwarded = reader.get("forwarded", _boolean, False)
        if mode == "tcp":
            for key in HTTP_ONLY_LISTENER_KEYS:
                if key in reader:
                    ctx.add(
                        reader.key_path(key),
                        "only used by http listeners",
                        "a tcp listener passes bytes through and reads no HTTP",
                    )
        if name in names:
            ctx.add(reader.key_path("name"), f"listener name {_q(name)} is already used at {names[name]}")
        else:
            names[name] = reader.path
        bind_key = (host.lower(), port)
        if host and port:  # port 0 asks for any free port: never a clash
            if bind_key in binds:
                ctx.add(
                    reader.key_path("bind"), f"{_bind_text(host, port)} is already bound by {binds[bind_key]}"
                )
            else:
                binds[bind_key] = reader.path
        config = ListenerConfig(
            name=name,
            host=host,
            port=port,
            mode=mode,
            service=service,
            tls=tls,
            trusted_proxies=trusted,
            upgrades=upgrades if upgrades is not None else ("websocket",),
            escaped_slashes=escaped,
            headers_with_underscores=underscores,
            forwarded=forwarded,
        )
        listeners.append(_Listener(config, reader.path, reader.key_path("service")))
    return listeners


def _bind_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_tls(ctx: _Context, reader: _Reader | None, mode: str) -> TLSConfig | None:
    if reader is None:
        return None
    cert = reader.required("cert", _nonempty, "")
    key = reader.required("key", _nonempty, "")
    config = TLSConfig(cert=ctx.resolve(cert) if cert else "", key=ctx.resolve(key) if key else "")
    if cert and key:
        # Load the pair as the engine will, so that `lbtui check` (and a reload) finds a bad file before a
        # start does. Imported here: only configs with TLS pay for the ssl and asyncio imports.
        from lbtui.proxy.tls import TLSFileError, check_readable, load_server_context

        readable = True
        for which, path in (("cert", config.cert), ("key", config.key)):
            try:
                check_readable(which, path)
            except TLSFileError as error:  # both files are checked: one round of fixes, not two
                ctx.add(reader.key_path(which), error.message, error.hint)
                readable = False
        if readable:
            try:
                load_server_context(config.cert, config.key, alpn=("http/1.1",) if mode == "http" else ())
            except TLSFileError as error:
                ctx.add(reader.key_path(error.which), error.message, error.hint)
    return config


def _parse_admin(ctx: _Context, root: _Reader, listeners: Sequence[_Listener]) -> AdminConfig:
    reader = root.table("admin", ADMIN_KEYS)
    if reader is None:
        return AdminConfig()
    default = AdminConfig()
    bind = reader.value("bind", _listen_address)
    host, port = bind if bind is not None else (default.host, default.port)
    token_env = reader.value("token_env", _env_name)
    enabled = reader.get("enabled", _boolean, True)
    if enabled and bind is not None and "token_env" not in reader and not _is_loopback(host):
        ctx.add(
            reader.key_path("bind"),
            f"the admin API on non-loopback address {_q(host)} needs a token",
            'set token_env = "LBTUI_ADMIN_TOKEN" (a variable holding the token), or bind to 127.0.0.1',
        )
    if enabled and port:
        for listener in listeners:
            if (listener.config.host.lower(), listener.config.port) == (host.lower(), port):
                ctx.add(
                    reader.key_path("bind"), f"{_bind_text(host, port)} is already bound by {listener.path}"
                )
    return AdminConfig(host=host, port=port, token_env=token_env, enabled=enabled)


class _Registry:
    """Names that must be unique across the whole config, with where each was first seen."""

    __slots__ = ("backends",)

    def __init__(self) -> None:
        self.backends: dict[str, str] = {}


def _parse_services(ctx: _Context, root: _Reader, registry: _Registry) -> list[ServiceConfig]:
    hint = "add a [services.NAME] table with [[services.NAME.backends]]"
    if "services" not in root:
        ctx.add("", "missing required key 'services'", hint)
        return []
    raw = root.data["services"]
    if not isinstance(raw, Mapping):
        array_hint = (
            "write [services.NAME] tables, not [[services]]" if isinstance(raw, list | tuple) else hint
        )
        ctx.add("services", f"expected a table, got {_describe(raw)}", array_hint)
        return []
    if not raw:
        ctx.add("services", "at least one service is required", hint)
    services = []
    for name, body in raw.items():
        if not isinstance(name, str):
            ctx.add("services", f"keys must be strings, got {_describe(name)}")
            continue
        path = _join("services", name)
        if not _NAME_RE.fullmatch(name):
            ctx.add(path, f"{_q(name)} is not a valid service name", _NAME_HINT)
        reader = ctx.table(path, body, SERVICE_KEYS)
        if reader is not None:
            services.append(_parse_service(ctx, name, reader, registry))
    return services


def _parse_backend(ctx: _Context, reader: _Reader) -> tuple[BackendConfig, bool]:
    """The backend, and whether its name is valid (a bad name takes no part in uniqueness checks)."""
    name = reader.required("name", _name("backend"), "")
    host, port = reader.required("address", _upstream_address, ("", 0), 'e.g. address = "127.0.0.1:9001"')
    group = reader.get("group", _name("group"), "default")
    weight = reader.get("weight", _int_in(0, 1000), 1)
    state = reader.get("state", _choice(BACKEND_STATES, "a backend state"), "ready")
    backend = BackendConfig(name=name, host=host, port=port, group=group, weight=weight, state=state)
    return backend, bool(name)


def _parse_service(ctx: _Context, name: str, reader: _Reader, registry: _Registry) -> ServiceConfig:
    algorithm = reader.get("algorithm", _choice(ALGORITHMS, "an algorithm"), "round_robin")
    backends: list[BackendConfig] = []
    for _, backend_reader in (
        reader.tables("backends", BACKEND_KEYS, "write [[services.NAME.backends]]") or ()
    ):
        backend, named = _parse_backend(ctx, backend_reader)
        backends.append(backend)
        if not named:
            continue
        if backend.name in registry.backends:
            ctx.add(
                backend_reader.key_path("name"),
                f"backend name {_q(backend.name)} is already used at {registry.backends[backend.name]}",
                "backend names must be unique across all services",
            )
        else:
            registry.backends[backend.name] = backend_reader.path
    groups = list(dict.fromkeys(backend.group for backend in backends))

    split = reader.pairs("split", _name("group"), _int_in(0))
    if split is not None:
        split_path = reader.key_path("split")
        if not reader.data["split"]:
            ctx.add(
                split_path, "names no group", "remove it, or weight groups like { blue = 90, green = 10 }"
            )
        elif len(split) == len(reader.data["split"]) and all(weight == 0 for _, weight in split):
            ctx.add(split_path, "every weight is 0", "give at least one group a weight above 0")
        for group, _ in split:
            if group not in groups:
                ctx.add(
                    _join(split_path, group),
                    f"no backend of service {_q(name)} is in group {_q(group)}",
                    _suggest(group, groups, f"groups of service {_q(name)}"),
                )

    backup_group = reader.value("backup_group", _name("group"))
    if backup_group is not None:
        backup_path = reader.key_path("backup_group")
        if backup_group not in groups:
            ctx.add(
                backup_path,
                f"no backend of service {_q(name)} is in group {_q(backup_group)}",
                _suggest(backup_group, groups, f"groups of service {_q(name)}"),
            )
        elif groups == [backup_group]:
            ctx.add(backup_path, f"every backend of service {_q(name)} is in the backup group")
        if split is not None and any(group == backup_group for group, _ in split):
            ctx.add(
                backup_path,
                f"group {_q(backup_group)} is both the backup group and in the split",
                "a backup group takes traffic only when no other group can; remove it from the split",
            )

    hash_key = reader.value("hash_key", _hash_key)
    if algorithm == "consistent_hash" and "hash_key" not in reader:
        ctx.add(
            reader.path, "missing required key 'hash_key' for algorithm 'consistent_hash'", _HASH_KEY_HINT
        )

    max_connections = reader.value("max_connections", _int_in(1))
    max_queue = reader.get("max_queue", _int_in(0), 100)
    if "max_queue" in reader and max_connections is None:
        ctx.add(
            reader.key_path("max_queue"),
            "only used with max_connections",
            "set max_connections (per backend); requests beyond it wait in this queue",
        )
    return ServiceConfig(
        name=name,
        algorithm=algorithm,
        backends=tuple(backends),
        split=split,
        health=_parse_health(ctx, reader.table("health", HEALTH_KEYS)),
        timeouts=_parse_timeouts(reader.table("timeouts", TIMEOUTS_KEYS)),
        retries=_parse_retries(reader.table("retries", RETRIES_KEYS)),
        outlier=_parse_outlier(ctx, reader.table("outlier", OUTLIER_KEYS)),
        slow_start=reader.get("slow_start", parse_duration, 0.0),
        max_connections=max_connections,
        max_queue=max_queue,
        panic_threshold=reader.get("panic_threshold", _int_in(0, 100), 0),
        sticky=_parse_sticky(ctx, reader.table("sticky", STICKY_KEYS)),
        backup_group=backup_group,
        hash_key=hash_key,
        ramp=_parse_ramp(ctx, reader.table("ramp", RAMP_KEYS)),
    )


def _nonnegative_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {_describe(value)}")
    if not 0 <= value < float("inf"):
        raise _Invalid(f"must be a number of at least 0, got {value}")
    return float(value)


def _parse_ramp(ctx: _Context, reader: _Reader | None) -> RampConfig:
    default = RampConfig()
    if reader is None:
        return default
    steps = reader.array("steps", _int_in(1, 100))
    if steps is not None:
        if not steps:
            ctx.add(reader.key_path("steps"), "names no step", "e.g. steps = [5, 25, 50, 100]")
        elif list(steps) != sorted(steps):
            ctx.add(
                reader.key_path("steps"),
                f"steps must rise: {list(steps)}",
                "list the canary's shares in percent, smallest first, e.g. [5, 25, 50, 100]",
            )
    ratio = reader.get("max_p99_ratio", _nonnegative_number, default.max_p99_ratio)
    if ratio < 1:
        ctx.add(
            reader.key_path("max_p99_ratio"),
            f"must be at least 1, got {_number(ratio)}",
            "2 rolls back when the canary's p99 is over twice the stable group's",
        )
    return RampConfig(
        steps=steps or default.steps,
        hold=reader.get("hold", _positive_duration, default.hold),
        max_5xx_excess=reader.get("max_5xx_excess", _nonnegative_number, default.max_5xx_excess),
        max_p99_ratio=ratio,
        p99_slack=reader.get("p99_slack", parse_duration, default.p99_slack),
        min_requests=reader.get("min_requests", _int_in(1), default.min_requests),
    )


def _parse_health(ctx: _Context, reader: _Reader | None) -> HealthConfig | None:
    if reader is None:
        return None
    default = HealthConfig()
    check_type = reader.get("type", _choice(HEALTH_TYPES, "a health check type"), default.type)
    given_interval = reader.value("interval", _positive_duration)
    given_timeout = reader.value("timeout", _positive_duration)
    interval = default.interval if given_interval is None else given_interval
    # A short interval given alone shortens the default timeout with it: a check never outlives its interval.
    timeout = min(default.timeout, interval) if given_timeout is None else given_timeout
    if given_timeout is not None and timeout > interval:
        shown = _seconds(interval) if given_interval is not None else f"{_seconds(interval)} (the default)"
        ctx.add(
            reader.key_path("timeout"),
            f"timeout {_seconds(timeout)} is longer than interval {shown}",
            "make the timeout at most the interval"
            + ("" if given_interval is not None else ", or set interval"),
        )
    if check_type == "tcp":
        for key in ("path", "expect_status"):
            if key in reader:
                ctx.add(
                    reader.key_path(key), "only used by http health checks", 'remove it, or set type = "http"'
                )
    return HealthConfig(
        type=check_type,
        path=reader.get("path", _url_path, default.path),
        interval=interval,
        timeout=timeout,
        rise=reader.get("rise", _int_in(1), default.rise),
        fall=reader.get("fall", _int_in(1), default.fall),
        expect_status=reader.get("expect_status", _status_range, default.expect_status),
    )


def _parse_timeouts(reader: _Reader | None) -> TimeoutsConfig:
    default = TimeoutsConfig()
    if reader is None:
        return default
    connect = reader.get("connect", _positive_duration, default.connect)
    return TimeoutsConfig(
        connect=connect,
        response=reader.get("response", _positive_duration, default.response),
        idle=reader.get("idle", _positive_duration, default.idle),
        queue=reader.get("queue", _positive_duration, connect),  # HAProxy: timeout queue defaults to connect
    )


def _parse_retries(reader: _Reader | None) -> RetriesConfig:
    default = RetriesConfig()
    if reader is None:
        return default
    on = reader.array("on", _choice(RETRY_CONDITIONS, "a retry condition"))
    return RetriesConfig(
        attempts=reader.get("attempts", _int_in(0, 10), default.attempts),
        on=default.on if on is None else on,
        budget_percent=reader.get("budget_percent", _percent, default.budget_percent),
        min_retry_concurrency=reader.get("min_retry_concurrency", _int_in(0), default.min_retry_concurrency),
    )


def _parse_outlier(ctx: _Context, reader: _Reader | None) -> OutlierConfig | None:
    if reader is None:
        return None
    default = OutlierConfig()
    base = reader.value("base_ejection", _positive_duration)
    longest = reader.value("max_ejection", _positive_duration)
    if base is not None and longest is not None and longest < base:
        ctx.add(
            reader.key_path("max_ejection"),
            f"max_ejection {_seconds(longest)} is shorter than base_ejection {_seconds(base)}",
        )
    return OutlierConfig(
        consecutive_5xx=reader.get("consecutive_5xx", _int_in(1), default.consecutive_5xx),
        consecutive_gateway_errors=reader.get(
            "consecutive_gateway_errors", _int_in(1), default.consecutive_gateway_errors
        ),
        consecutive_connect_failures=reader.get(
            "consecutive_connect_failures", _int_in(1), default.consecutive_connect_failures
        ),
        base_ejection=default.base_ejection if base is None else base,
        max_ejection=default.max_ejection if longest is None else longest,
        max_ejected_percent=reader.get("max_ejected_percent", _int_in(0, 100), default.max_ejected_percent),
    )


def _percent(value: object) -> float:
    number = _nonnegative_number(value)
    if number > 100:
        raise _Invalid(f"must be a percentage from 0 to 100, got {_describe(value)}")
    return number


def _network(value: object) -> str:
    text = _string(value)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise _Invalid(
            f"{_q(text)} is not an IP address or network", 'e.g. "127.0.0.1", "10.0.0.0/8" or "::1"'
        ) from None


def _cookie_max_age(value: object) -> int:
    seconds = parse_duration(value)
    if seconds < 1:
        raise _Invalid(
            "must be at least 1s", "leave it out for a cookie that lasts as long as the browser session"
        )
    return int(seconds)


def _parse_sticky(ctx: _Context, reader: _Reader | None) -> StickyConfig | None:
    if reader is None:
        return None
    cookie = reader.required("cookie", _token("cookie name"), "", 'e.g. cookie = "lbtui_srv"')
    secure = reader.value("secure", _boolean)
    same_site = reader.value("same_site", _choice(SAME_SITE, "a SameSite value"))
    if same_site == "none" and secure is False:
        ctx.add(
            reader.key_path("same_site"),
            "SameSite=None needs the Secure attribute, and secure = false leaves it out",
            'browsers drop such a cookie: remove secure = false, or choose "lax"',
        )
    if secure is False and cookie.startswith(("__Secure-", "__Host-")):
        ctx.add(
            reader.key_path("secure"),
            f"a cookie named {_q(cookie)} must be Secure (its prefix says so)",
            "remove secure = false, or choose a name without the __Secure- or __Host- prefix",
        )
    return StickyConfig(
        cookie=cookie,
        secret_env=reader.value("secret_env", _env_name),
        secure=secure,
        same_site=same_site,
        max_age=reader.value("max_age", _cookie_max_age),
    )


def _parse_consumers(ctx: _Context, root: _Reader) -> list[ConsumerConfig]:
    consumers = []
    names: dict[str, str] = {}
    digests: dict[str, str] = {}
    for index, reader in root.tables("consumers", CONSUMER_KEYS, "write [[consumers]] tables") or ():
        name = reader.required("name", _name("consumer"), f"consumer{index}")
        digest = reader.value("api_key_sha256", _sha256_hex)
        env = reader.value("api_key_env", _env_name)
        if "api_key_sha256" in reader and "api_key_env" in reader:
            ctx.add(reader.path, "give either 'api_key_sha256' or 'api_key_env', not both")
        elif "api_key_sha256" not in reader and "api_key_env" not in reader:
            ctx.add(
                reader.path,
                "missing required key 'api_key_sha256'",
                'or api_key_env = "NAME" (a variable holding the key); keys are never stored in clear',
            )
        if "name" in reader and name in names:
            ctx.add(reader.key_path("name"), f"consumer name {_q(name)} is already used at {names[name]}")
        names.setdefault(name, reader.path)
        if digest is not None:
            if digest in digests:
                ctx.add(reader.key_path("api_key_sha256"), f"the same key as {digests[digest]}")
            digests.setdefault(digest, reader.path)
        consumers.append(ConsumerConfig(name=name, api_key_sha256=digest, api_key_env=env))
    return consumers


def _parse_routes(
    ctx: _Context, root: _Reader, services: Sequence[str], consumers: Sequence[ConsumerConfig]
) -> list[RouteConfig]:
    routes = []
    names: dict[str, str] = {}
    for index, reader in root.tables("routes", ROUTE_KEYS, "write [[routes]] tables") or ():
        route = _parse_route(ctx, index, reader, services, consumers)
        if route.name in names:
            ctx.add(
                reader.key_path("name"), f"route name {_q(route.name)} is already used at {names[route.name]}"
            )
        names.setdefault(route.name, reader.path)
        routes.append(route)
    return routes


def _parse_route(
    ctx: _Context, index: int, reader: _Reader, services: Sequence[str], consumers: Sequence[ConsumerConfig]
) -> RouteConfig:
    name = reader.get("name", _name("route"), f"route{index}")
    match = _parse_match(ctx, reader.table("match", MATCH_KEYS))
    service = reader.value("service", _nonempty)
    if service is not None:
        ctx.reference(reader.key_path("service"), service, services, "service")
    aggregate = _parse_aggregate(ctx, reader, services)
    if "service" in reader and "aggregate" in reader:
        ctx.add(reader.path, "give either 'service' or 'aggregate', not both")
    elif "service" not in reader and "aggregate" not in reader:
        ctx.add(
            reader.path,
            "missing required key 'service'",
            "or 'aggregate' to merge replies of several services",
        )
    strip_prefix = reader.value("strip_prefix", _url_path)
    if strip_prefix is not None and "aggregate" in reader:
        ctx.add(
            reader.key_path("strip_prefix"), "only used with 'service'", "give each aggregate part its path"
        )

    auth = _parse_auth(ctx, reader.table("auth", AUTH_KEYS))
    if auth is not None and auth.type == "api_key" and not consumers:
        ctx.add(
            reader.key_path("auth"),
            "api_key auth needs consumers, and none are configured",
            "add [[consumers]] with a name and api_key_sha256 or api_key_env",
        )
    rate_limit = _parse_rate_limit(ctx, reader.table("rate_limit", RATE_LIMIT_KEYS))
    if rate_limit is not None and rate_limit.consumers:
        overrides = _join(reader.key_path("rate_limit"), "consumers")
        if auth is None:
            ctx.add(overrides, "per-consumer limits need auth on this route", "add auth (api_key or jwt)")
        elif auth.type == "api_key":
            known = [c.name for c in consumers]
            for name, _ in rate_limit.consumers:
                ctx.reference(_join(overrides, name), name, known, "consumer")
    if "retries" in reader and "aggregate" in reader:
        ctx.add(reader.key_path("retries"), "only used with 'service'", "aggregate parts are not retried")
    if "upgrades" in reader and "aggregate" in reader:
        ctx.add(
            reader.key_path("upgrades"),
            "only used with 'service'",
            "an aggregate answers every request itself",
        )
    if rate_limit is not None and rate_limit.key == "consumer" and "auth" not in reader:
        ctx.add(
            _join(reader.key_path("rate_limit"), "key"),
            "key 'consumer' needs auth on this route",
            'add auth, or use key = "client_ip"',
        )
    return RouteConfig(
        name=name,
        match=match,
        service=service,
        aggregate=aggregate,
        strip_prefix=strip_prefix,
        request_headers=_parse_header_ops(
            ctx, reader.table("request_headers", HEADER_OPS_KEYS), request=True
        ),
        response_headers=_parse_header_ops(
            ctx, reader.table("response_headers", HEADER_OPS_KEYS), request=False
        ),
        auth=auth,
        rate_limit=rate_limit,
        rewrite=_parse_rewrite(ctx, reader.table("rewrite", REWRITE_KEYS)),
        add_query=reader.pairs("add_query", _query_name, _header_value) or (),
        ip_allow=reader.array("ip_allow", _network) or (),
        ip_deny=reader.array("ip_deny", _network) or (),
        cors=_parse_cors(reader.table("cors", CORS_KEYS)),
        cache=_parse_cache(reader.table("cache", CACHE_KEYS)),
        timeout=reader.value("timeout", _positive_duration),
        retries=_parse_retries(retries) if (retries := reader.table("retries", RETRIES_KEYS)) else None,
        upgrades=reader.array("upgrades", _upgrade_protocol),
    )


def _parse_match(ctx: _Context, reader: _Reader | None) -> RouteMatch:
    if reader is None:
        return RouteMatch()  # no match table: the route matches every request
    given = [key for key in ("path", "path_prefix", "path_regex") if key in reader]
    if len(given) > 1:
        ctx.add(reader.path, f"give only one of {', '.join(_q(key) for key in given)}")
    return RouteMatch(
        path=reader.value("path", _url_path),
        path_prefix=reader.value("path_prefix", _url_path),
        path_regex=reader.value("path_regex", _regex),
        host=reader.value("host", _route_host),
        methods=reader.array("methods", _method) or (),
        headers=reader.pairs("headers", _header_name, _header_value) or (),
        query=reader.pairs("query", _query_name, _header_value) or (),
        case_sensitive=reader.get("case_sensitive", _boolean, False),
    )


def _parse_aggregate(ctx: _Context, route: _Reader, services: Sequence[str]) -> tuple[AggregatePart, ...]:
    readers = route.tables("aggregate", AGGREGATE_KEYS)
    if readers is None:
        return ()
    if not route.data["aggregate"]:
        ctx.add(
            route.key_path("aggregate"),
            "needs at least one part",
            "e.g. { service = ..., path = ..., group = ... }",
        )
    parts = []
    groups: dict[str, str] = {}
    every_group = [r.data["group"] for _, r in readers if isinstance(r.data.get("group"), str)]
    for _, reader in readers:
        service = reader.required("service", _nonempty, "")
        if service:
            ctx.reference(reader.key_path("service"), service, services, "service")
        group = reader.required("group", _nonempty, "")
        path = reader.required("path", _url_path, "/")
        _check_placeholders(ctx, reader.key_path("path"), path, list(groups), every_group)
        if group in groups:
            ctx.add(reader.key_path("group"), f"group {_q(group)} is already used at {groups[group]}")
        elif group:
            groups[group] = reader.path
        allow = reader.array("allow", _nonempty) or ()
        deny = reader.array("deny", _nonempty) or ()
        if allow and deny:
            ctx.add(reader.key_path("deny"), "give either 'allow' or 'deny', not both")
        parts.append(
            AggregatePart(
                service=service,
                path=path,
                group=group,
                allow=allow,
                deny=deny,
                rename=_parse_rename(ctx, reader, allow, deny),
            )
        )
    return tuple(parts)


def aggregate_path_pieces(path: str) -> list[str | tuple[str, tuple[str, ...]]]:
    """An aggregate part's path as text pieces and, for each `{group.field}` (`{group.a.b}` reaches into
    objects), (group, field names). Raises ValueError for a brace that is not part of such a placeholder."""
    pieces: list[str | tuple[str, tuple[str, ...]]] = []
    for index, piece in enumerate(re.split(r"\{([^{}]*)\}", path)):
        if index % 2 == 0:
            if "{" in piece or "}" in piece:
                raise ValueError("has a '{' or '}' that is not part of a {group.field} placeholder")
            if piece:
                pieces.append(piece)
            continue
        group, _, field = piece.partition(".")
        names = tuple(field.split(".")) if field else ()
        if not group or not names or not all(names):
            raise ValueError(f"{{{piece}}} is not a placeholder: write {{group.field}}")
        pieces.append((group, names))
    return pieces


def _check_placeholders(
    ctx: _Context, key_path: str, path: str, earlier: Sequence[str], every: Sequence[str]
) -> None:
    """Each `{group.field}` in `path` names the group of an earlier part (its reply must have come first)."""
    try:
        pieces = aggregate_path_pieces(path)
    except ValueError as error:
        ctx.add(key_path, f"{_q(path)} {error}", "percent-encode a literal brace (%7B, %7D)")
        return
    for piece in pieces:
        if isinstance(piece, str) or piece[0] in earlier:
            continue
        group = piece[0]
        if group in every:
            ctx.add(
                key_path,
                f"{{{group}.{'.'.join(piece[1])}}} names group {_q(group)}, which is not before this part",
                "a part can use only the replies of parts listed before it",
            )
        else:
            ctx.add(
                key_path, f"no earlier part has group {_q(group)}", _suggest(group, earlier, "earlier groups")
            )


def _parse_rename(
    ctx: _Context, reader: _Reader, allow: Sequence[str], deny: Sequence[str]
) -> tuple[tuple[str, str], ...]:
    """`rename = { old = "new" }`: two fields may not end up with one name."""
    pairs = reader.pairs("rename", _nonempty, _nonempty) or ()
    targets: dict[str, str] = {}
    for old, new in pairs:
        where = _join(reader.key_path("rename"), old)
        if (allow and old not in allow) or old in deny:
            ctx.add(where, f"field {_q(old)} is dropped by {'allow' if allow else 'deny'}: nothing to rename")
        elif new in targets:
            ctx.add(where, f"{_q(new)} is already the new name of {_q(targets[new])}")
        elif new in allow and new not in dict(pairs):
            ctx.add(where, f"{_q(new)} is also kept by allow: two fields would have one name")
        targets.setdefault(new, old)
    return pairs


# Headers a route may not set or remove: the message's framing and the hop-by-hop ones are the proxy's to
# write; on requests, so are the X-Forwarded-* it adds (a route may not forge the client it vouches for).
_OWNED_HEADERS: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
_OWNED_REQUEST_HEADERS: Final = _OWNED_HEADERS | {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}


def _parse_rewrite(ctx: _Context, reader: _Reader | None) -> tuple[str, str] | None:
    if reader is None:
        return None
    pattern = reader.required("pattern", _regex, "", 'e.g. pattern = "^/v1/(.*)"')
    substitution = reader.required("substitution", _string, "", 'e.g. substitution = "/api/\\1"')
    if pattern and substitution:
        try:
            re.sub(pattern, substitution, "/")  # a group the pattern does not have is an error now, not later
        except (re.error, IndexError) as error:
            ctx.add(reader.key_path("substitution"), f"does not fit the pattern: {error}")
            return None
    return (pattern, substitution)


def _parse_header_ops(ctx: _Context, reader: _Reader | None, request: bool) -> HeaderOps:
    if reader is None:
        return HeaderOps()
    ops = HeaderOps(
        set=reader.pairs("set", _header_name, _header_value) or (),
        remove=reader.array("remove", _header_name) or (),
    )
    owned = _OWNED_REQUEST_HEADERS if request else _OWNED_HEADERS
    for key, names in (("set", [name for name, _ in ops.set]), ("remove", list(ops.remove))):
        for name in names:
            if name.lower() in owned or (request and key == "remove" and name.lower() == "host"):
                ctx.add(
                    _join(reader.key_path(key), name),
                    f"{_q(name)} is written by lbtui itself and cannot be {'set' if key == 'set' else 'removed'}",
                    "framing, hop-by-hop and X-Forwarded-* headers (and a request's Host) are the proxy's",
                )
    return ops


def _parse_auth(ctx: _Context, reader: _Reader | None) -> AuthConfig | None:
    if reader is None:
        return None
    auth_type = reader.required("type", _choice(AUTH_TYPES, "an auth type"), "", 'type = "api_key" or "jwt"')
    algorithms = reader.array("algorithms", _jwt_algorithm) or ()
    secret_env = reader.value("secret_env", _env_name)
    public_key_file = reader.value("public_key_file", _nonempty)
    if auth_type == "api_key":
        for key in JWT_ONLY_KEYS:
            if key in reader:
                ctx.add(reader.key_path(key), "only used by jwt auth", 'remove it, or set type = "jwt"')
    elif auth_type == "jwt":
        if "header" in reader:
            ctx.add(
                reader.key_path("header"), "only used by api_key auth", "jwt reads 'Authorization: Bearer'"
            )
        _check_jwt_keys(ctx, reader, algorithms)
    return AuthConfig(
        type=auth_type,
        header=reader.get("header", _header_name, "X-API-Key"),
        algorithms=algorithms,
        secret_env=secret_env,
        public_key_file=None if public_key_file is None else ctx.resolve(public_key_file),
        issuer=reader.value("issuer", _nonempty),
        audience=reader.value("audience", _nonempty),
    )


def _check_jwt_keys(ctx: _Context, reader: _Reader, algorithms: Sequence[str]) -> None:
    if "algorithms" not in reader:
        ctx.add(reader.path, "missing required key 'algorithms'", 'e.g. algorithms = ["HS256"] or ["RS256"]')
        return
    if not reader.data["algorithms"]:
        ctx.add(reader.key_path("algorithms"), "names no algorithm", 'e.g. algorithms = ["HS256"]')
    hmac = [algorithm for algorithm in algorithms if algorithm.startswith("HS")]
    public = [algorithm for algorithm in algorithms if not algorithm.startswith("HS")]
    if hmac and public:
        ctx.add(
            reader.key_path("algorithms"),
            "mixes HMAC (HS*) and public-key algorithms",
            "a token could then be signed with the public key as an HMAC secret; use one kind per route",
        )
    if hmac and "secret_env" not in reader:
        ctx.add(reader.path, "missing required key 'secret_env'", f"{hmac[0]} needs a shared secret")
    if public and "public_key_file" not in reader:
        ctx.add(reader.path, "missing required key 'public_key_file'", f"{public[0]} needs a public key")
    if not hmac and "secret_env" in reader:
        ctx.add(reader.key_path("secret_env"), "only used by HMAC (HS*) algorithms")
    if not public and "public_key_file" in reader:
        ctx.add(
            reader.key_path("public_key_file"), "only used by public-key algorithms (RS*, PS*, ES*, EdDSA)"
        )


def _parse_rate_limit(ctx: _Context, reader: _Reader | None) -> RateLimitConfig | None:
    if reader is None:
        return None
    per = reader.get("per", _positive_duration, 1.0)
    overrides: list[tuple[str, RateLimitConfig]] = []
    if "consumers" in reader:  # a table keyed by consumer name
        path = reader.key_path("consumers")
        given = reader.data["consumers"]
        if not isinstance(given, Mapping):
            ctx.add(
                path,
                f"expected a table, got {_describe(given)}",
                "e.g. consumers = { alice = { rate = 100 } }",
            )
            given = {}
        for name, raw in given.items():
            override = ctx.table(_join(path, str(name)), raw, RATE_OVERRIDE_KEYS)
            if override is None:
                continue
            overrides.append(
                (
                    str(name),
                    RateLimitConfig(
                        rate=override.required("rate", _int_in(1), 1, "e.g. rate = 100"),
                        per=override.get("per", _positive_duration, per),
                        burst=override.value("burst", _int_in(1)),
                    ),
                )
            )
    return RateLimitConfig(
        rate=reader.required("rate", _int_in(1), 1, "e.g. rate = 10"),
        per=per,
        burst=reader.value("burst", _int_in(1)),
        key=reader.get("key", _rate_limit_key, "client_ip"),
        consumers=tuple(overrides),
    )


def _parse_cors(reader: _Reader | None) -> CorsConfig | None:
    if reader is None:
        return None
    return CorsConfig(
        allow_origins=reader.array("allow_origins", _origin) or (),
        allow_methods=reader.array("allow_methods", _method) or (),
        allow_headers=reader.array("allow_headers", _header_name) or (),
        max_age=reader.get("max_age", parse_duration, 0.0),
    )


def _parse_cache(reader: _Reader | None) -> CacheConfig | None:
    if reader is None:
        return None
    return CacheConfig(
        ttl=reader.required("ttl", _positive_duration, 1.0, 'e.g. ttl = "30s"'),
        max_entries=reader.get("max_entries", _int_in(1), 1000),
        max_body=reader.get("max_body", _positive_size, CACHE_MAX_BODY),
        max_bytes=reader.get("max_bytes", _positive_size, CACHE_MAX_BYTES),
        statuses=reader.array("statuses", _status_range) or CACHE_STATUSES,
    )


def _parse_limits(root: _Reader) -> LimitsConfig:
    default = LimitsConfig()
    reader = root.table("limits", LIMITS_KEYS)
    if reader is None:
        return default
    return LimitsConfig(
        max_header_bytes=reader.get("max_header_bytes", _positive_size, default.max_header_bytes),
        max_headers=reader.get("max_headers", _int_in(1), default.max_headers),
        max_body=reader.get("max_body", parse_size, default.max_body),
        header_timeout=reader.get("header_timeout", _positive_duration, default.header_timeout),
        client_idle_timeout=reader.get(
            "client_idle_timeout", _positive_duration, default.client_idle_timeout
        ),
        max_connections=reader.get("max_connections", _int_in(1), default.max_connections),
    )


def _positive_size(value: object) -> int:
    size = parse_size(value)
    if size <= 0:
        raise _Invalid("must be greater than zero", _SIZE_HINT)
    return size


def _parse_state(ctx: _Context, root: _Reader) -> StateConfig:
    reader = root.table("state", STATE_KEYS)
    if reader is None:
        return StateConfig()
    file = reader.value("file", _nonempty)
    return StateConfig(file=None if file is None else ctx.resolve(file))


def _parse_access_log(ctx: _Context, root: _Reader) -> AccessLogConfig:
    reader = root.table("access_log", ACCESS_LOG_KEYS)
    if reader is None:
        return AccessLogConfig()
    path = reader.value("path", _nonempty)
    form = reader.get("format", _choice(ACCESS_LOG_FORMATS, "an access log format"), "json")
    if path is not None and path != "-":
        path = ctx.resolve(path)
    return AccessLogConfig(path=path, format=form)


def _build(ctx: _Context, data: object) -> Config | None:
    if not isinstance(data, Mapping):
        ctx.add("", f"expected a table at the top level, got {_describe(data)}")
        return None
    root = _Reader(ctx, data, "", TOP_KEYS)
    registry = _Registry()
    listeners = _parse_listeners(ctx, root)
    admin = _parse_admin(ctx, root, listeners)
    services = _parse_services(ctx, root, registry)
    service_names = [service.name for service in services]
    for listener in listeners:
        if listener.config.mode == "tcp" and listener.config.service is not None:
            ctx.reference(listener.service_path, listener.config.service, service_names, "service")
    consumers = _parse_consumers(ctx, root)
    routes = _parse_routes(ctx, root, service_names, consumers)
    if len(services) > 1 and not routes and any(item.config.mode == "http" for item in listeners):
        ctx.add(
            "routes" if "routes" in root else "",
            f"http listeners need routes to choose among {len(services)} services",
            "add [[routes]] with a match and a service; only a config with one service needs none",
        )
    _check_underscored_headers(ctx, [item.config for item in listeners], routes, services)
    limits = _parse_limits(root)
    state = _parse_state(ctx, root)
    access_log = _parse_access_log(ctx, root)
    if ctx.issues:
        return None
    return Config(
        source=ctx.file,
        listeners=tuple(listener.config for listener in listeners),
        admin=admin,
        services=tuple(services),
        routes=tuple(routes),
        consumers=tuple(consumers),
        limits=limits,
        state=state,
        access_log=access_log,
    )


def _check_underscored_headers(
    ctx: _Context,
    listeners: Sequence[ListenerConfig],
    routes: Sequence[RouteConfig],
    services: Sequence[ServiceConfig],
) -> None:
    """A header named with `_` that a route or a service reads never arrives where every http listener drops
    (or refuses) such headers: say so, rather than have a match that never matches or a key never found."""
    http = [listener for listener in listeners if listener.mode == "http"]
    if not http or any(listener.headers_with_underscores == "keep" for listener in http):
        return
    action = http[0].headers_with_underscores
    named: list[tuple[str, str]] = []
    for index, route in enumerate(routes):
        base = f"routes[{index}]"
        named += [(_join(f"{base}.match.headers", name), name) for name, _ in route.match.headers]
        if route.auth is not None and route.auth.type == "api_key":
            named.append((f"{base}.auth.header", route.auth.header))
        if route.rate_limit is not None and route.rate_limit.key.startswith("header:"):
            named.append((f"{base}.rate_limit.key", route.rate_limit.key.partition(":")[2]))
    for service in services:
        if service.hash_key is not None and service.hash_key.startswith("header:"):
            named.append((f"services.{service.name}.hash_key", service.hash_key.partition(":")[2]))
    for key_path, name in named:
        if "_" in name:
            ctx.add(
                key_path,
                f"header {_q(name)} has '_', and the listeners {'drop' if action == 'drop' else 'refuse'} such"
                f" headers (headers_with_underscores = {_q(action)})",
                f"use {_q(name.replace('_', '-'))}, or set headers_with_underscores = 'keep' on the listener",
            )


# ----------------------------------------------------------------------------------------------------------
# Entry points


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", *, base_dir: str | os.PathLike[str] | None = None
) -> Config:
    """A validated Config from already-parsed TOML (or JSON). Raises ConfigError listing every issue.

    Relative file paths (tls, public_key_file, state.file) are joined to ``base_dir`` when given. TLS
    certificates and keys are read and checked as a pair (lbtui.proxy.tls.load_server_context).
    """
    ctx = _Context(source, None if base_dir is None else os.fspath(base_dir))
    try:
        config = _build(ctx, data)
    except Exception as exc:  # a bug here must still reach the operator as an issue, not a traceback
        ctx.add("", f"internal error while validating: {exc!r}", "please report this as a bug in lbtui")
        config = None
    if config is None:
        raise ConfigError(ctx.issues)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a TOML file. Raises ConfigError (also for unreadable files and bad TOML)."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as stream:
            raw = stream.read()
    except OSError as exc:
        raise ConfigError([ConfigIssue(file, "", *_read_problem(file, exc))]) from None
    try:
        # utf-8-sig: editors on Windows like to start files with a byte order mark, which TOML forbids.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        issue = ConfigIssue(
            file, "", f"not UTF-8 text (bad byte at offset {exc.start})", "save the file as UTF-8"
        )
        raise ConfigError([issue]) from None
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or int() refusing a 5000-digit number inside tomllib
        raise ConfigError([ConfigIssue(file, "", f"invalid TOML: {exc}")]) from None
    return parse_config(data, file, base_dir=os.path.dirname(os.path.abspath(file)))


def _read_problem(file: str, exc: OSError) -> tuple[str, str | None]:
    if isinstance(exc, FileNotFoundError):
        return "file not found", f"looked for {os.path.abspath(file)}"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file", None
    if isinstance(exc, PermissionError):
        return "permission denied", None
    return f"cannot read: {exc.strerror or exc}", None


def parse_backend(
    data: Mapping[str, Any],
    service: ServiceConfig | None = None,
    source: str = "<runtime>",
    key_path: str = "backend",
    *,
    taken_names: Collection[str] = (),
) -> BackendConfig:
    """Validate a backend added at runtime (``{"name", "address", "group", "weight", "state"}``).

    With ``service``, its name must not be used in that service yet; ``taken_names`` adds names in use
    elsewhere (backend names are unique across the whole config). Raises ConfigError.
    """
    ctx = _Context(source, None)
    reader = ctx.table(key_path, data, BACKEND_KEYS)
    if reader is None:
        raise ConfigError(ctx.issues)
    try:
        backend, named = _parse_backend(ctx, reader)
    except Exception as exc:  # same promise as parse_config: issues, never a traceback
        ctx.add(key_path, f"internal error while validating: {exc!r}", "please report this as a bug in lbtui")
        raise ConfigError(ctx.issues) from None
    if named:
        in_service = service is not None and any(other.name == backend.name for other in service.backends)
        if in_service and service is not None:
            ctx.add(
                reader.key_path("name"),
                f"backend name {_q(backend.name)} is already used in service {_q(service.name)}",
            )
        elif backend.name in taken_names:
            ctx.add(
                reader.key_path("name"),
                f"backend name {_q(backend.name)} is already used",
                "backend names must be unique across all services",
            )
    if ctx.issues:
        raise ConfigError(ctx.issues)
    return backend
