"""The config model: one frozen dataclass per table, each of its keys declared once, on the field it fills.

A field's declaration (lbtui.config.options) carries its TOML key, the converter that checks its value
(lbtui.config.values) and its default; ``custom()`` marks a key its section's code reads itself (the sections'
modules say how). Fields without one are not keys (a service's name is its table's name).

Invariants:
- Config objects are frozen, slotted dataclasses holding tuples (mappings are tuples of pairs, in file order):
  they can be shared between threads, compared and hashed.
- A ``Config`` that exists has been validated in full (lbtui.config.load builds it only then).
- Field order is the order of a table's keys in an unknown key's hint, and the order in which a table's
  remaining keys are read (so their issues come out in it); reload reports changed service settings in it.
- The names that values are chosen from (``ALGORITHMS``, ``LISTENER_MODES``, ...) are the config's:
  lbtui.core.algorithms takes its names from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lbtui.config.options import array, custom, file_path, option, pairs, required, table
from lbtui.config.values import (
    boolean,
    choice,
    cookie_max_age,
    env_name,
    hash_key_form,
    header_name,
    header_value,
    int_in,
    jwt_algorithm,
    method,
    network,
    nonempty,
    nonnegative_number,
    origin,
    parse_duration,
    parse_size,
    percent,
    positive_duration,
    positive_size,
    query_name,
    rate_limit_key_form,
    regex,
    route_host,
    sha256_hex,
    status_range,
    token,
    upgrade_protocol,
    url_path,
    valid_name,
)

# The balancing algorithms (lbtui.core.algorithms implements one for each name, in this order).
ALGORITHMS: Final[tuple[str, ...]] = (
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "random",
    "p2c",
    "ewma",
    "ip_hash",
    "consistent_hash",
)
LISTENER_MODES: Final = ("http", "tcp")
AUTH_TYPES: Final = ("api_key", "jwt")
# What a listener does with a request whose path holds %2F or %5C (Envoy's path_with_escaped_slashes_action).
ESCAPED_SLASHES: Final = ("reject", "keep", "unescape_and_forward", "unescape_and_redirect")
# What it does with a request header whose name has `_` (Envoy's headers_with_underscores_action).
HEADERS_WITH_UNDERSCORES: Final = ("drop", "keep", "reject")
BACKEND_STATES: Final = ("ready", "drain", "maint")
HEALTH_TYPES: Final = ("http", "tcp")
RETRY_CONDITIONS: Final = ("connect-failure", "reset", "gateway-error", "5xx", "timeout")
SAME_SITE: Final = ("lax", "strict", "none")
ACCESS_LOG_FORMATS: Final = ("json", "combined")
CACHE_MAX_BODY: Final = 1024 * 1024
CACHE_MAX_BYTES: Final = 64 * 1024 * 1024
CACHE_STATUSES: Final = ((200, 200), (301, 301), (404, 404))  # Kong's proxy-cache default


@dataclass(frozen=True, slots=True)
class TLSConfig:
    # Paths joined to the config file's folder; lbtui.config.listeners loads the pair as the engine will.
    cert: str = file_path(required=True)
    key: str = file_path(required=True)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str = custom()  # absent: "listener<index>"
    host: str = custom(key="bind")
    port: int = custom(key="bind")
    mode: str = option(choice(LISTENER_MODES, "a listener mode"), "http")
    service: str | None = custom(None)  # tcp listeners only
    tls: TLSConfig | None = custom(None)
    # Networks (CIDR) whose X-Forwarded-For is believed; from anyone else it is dropped and replaced.
    trusted_proxies: tuple[str, ...] = array(network)
    # The Upgrade protocols tunnelled for routes that do not say (lower case; others are dropped from requests).
    upgrades: tuple[str, ...] = array(upgrade_protocol, ("websocket",))
    # a path with %2F or %5C: one of ESCAPED_SLASHES
    escaped_slashes: str = option(choice(ESCAPED_SLASHES, "an escaped_slashes action"), "reject")
    # a request header named with `_`: one of HEADERS_WITH_UNDERSCORES
    headers_with_underscores: str = option(
        choice(HEADERS_WITH_UNDERSCORES, "a headers_with_underscores action"), "drop"
    )
    forwarded: bool = option(boolean, False)  # also send an RFC 7239 Forwarded field of lbtui's own


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = custom("127.0.0.1", key="bind")
    port: int = custom(9901, key="bind")
    token_env: str | None = option(env_name, None)
    enabled: bool = custom(False)  # no [admin] table: off; a table: on unless it says enabled = false


@dataclass(frozen=True, slots=True)
class HealthConfig:
    type: str = option(choice(HEALTH_TYPES, "a health check type"), "http")
    path: str = option(url_path, "/healthz")
    interval: float = option(positive_duration, 2.0)
    timeout: float = option(positive_duration, 1.0)  # absent: at most the interval
    rise: int = option(int_in(1), 2)
    fall: int = option(int_in(1), 3)
    expect_status: tuple[int, int] = option(status_range, (200, 399))


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    connect: float = option(positive_duration, 2.0)
    response: float = option(positive_duration, 30.0)
    idle: float = option(positive_duration, 60.0)
    # how long a request waits for a backend under max_connections (HAProxy: timeout queue defaults to connect)
    queue: float = option(positive_duration, 2.0, same_as="connect")


@dataclass(frozen=True, slots=True)
class RetriesConfig:
    attempts: int = option(int_in(0, 10), 2)
    on: tuple[str, ...] = array(
        choice(RETRY_CONDITIONS, "a retry condition"), ("connect-failure", "reset", "gateway-error")
    )
    # Envoy's retry budget: retries under way at most this percent of the service's requests in flight,
    # but always allow min_retry_concurrency of them.
    budget_percent: float = option(percent, 20.0)
    min_retry_concurrency: int = option(int_in(0), 3)


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    consecutive_5xx: int = option(int_in(1), 5)
    consecutive_gateway_errors: int = option(int_in(1), 5)
    consecutive_connect_failures: int = option(int_in(1), 5)
    base_ejection: float = option(positive_duration, 30.0)
    max_ejection: float = option(positive_duration, 300.0)
    max_ejected_percent: int = option(int_in(0, 100), 50)


@dataclass(frozen=True, slots=True)
class StickyConfig:
    """Cookie-based session persistence (HAProxy's `cookie NAME insert indirect nocache`).

    `secret_env` names the variable holding the key the cookie's values are made with (None: a random key per
    process); `secure` None means "on TLS listeners"; `same_site` is "lax", "strict", "none" or None (not
    sent); `max_age` in seconds, or None for a session cookie.
    """

    cookie: str = required(token("cookie name"), "", hint='e.g. cookie = "lbtui_srv"')
    secret_env: str | None = option(env_name, None)
    secure: bool | None = option(boolean, None)
    same_site: str | None = option(choice(SAME_SITE, "a SameSite value"), None)
    max_age: int | None = option(cookie_max_age, None)


@dataclass(frozen=True, slots=True)
class RampConfig:
    """A canary ramp: the canary group's share of the split, step by step, with a hold at each step.

    It rolls back (the canary's share to 0) when, over the last window, the canary's 5xx rate is more than
    `max_5xx_excess` percentage points above the stable group's, or its p99 is above both `max_p99_ratio`
    times and `p99_slack` more than the stable group's. Nothing is judged before `min_requests` canary requests.
    """

    steps: tuple[int, ...] = array(int_in(1, 100), (5, 25, 50, 100), empty_is_default=True)
    hold: float = option(positive_duration, 30.0)
    max_5xx_excess: float = option(nonnegative_number, 2.0)
    max_p99_ratio: float = option(nonnegative_number, 2.0)
    p99_slack: float = option(parse_duration, 0.010)
    min_requests: int = option(int_in(1), 20)


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str = required(valid_name("backend"), "")
    host: str = custom(key="address")
    port: int = custom(key="address")
    group: str = option(valid_name("group"), "default")
    weight: int = option(int_in(0, 1000), 1)
    state: str = option(choice(BACKEND_STATES, "a backend state"), "ready")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str  # the name of its table, [services.NAME]
    algorithm: str = option(choice(ALGORITHMS, "an algorithm"), "round_robin")
    backends: tuple[BackendConfig, ...] = custom(())
    split: tuple[tuple[str, int], ...] | None = pairs(valid_name("group"), int_in(0), None)
    health: HealthConfig | None = custom(None)
    timeouts: TimeoutsConfig = table(TimeoutsConfig, TimeoutsConfig())
    retries: RetriesConfig = table(RetriesConfig, RetriesConfig())
    outlier: OutlierConfig | None = custom(None)
    slow_start: float = option(parse_duration, 0.0)
    max_connections: int | None = option(int_in(1), None)
    # requests waiting for a backend under max_connections; beyond: 503 at once
    max_queue: int = option(int_in(0), 100)
    sticky: StickyConfig | None = custom(None)
    backup_group: str | None = option(valid_name("group"), None)
    # percent; under it healthy, balance over all ready backends (Envoy's panic)
    panic_threshold: int = option(int_in(0, 100), 0)
    hash_key: str | None = option(hash_key_form, None)
    ramp: RampConfig = custom(RampConfig())


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: str | None = option(url_path, None)
    path_prefix: str | None = option(url_path, None)
    path_regex: str | None = option(regex, None)
    host: str | None = option(route_host, None)
    methods: tuple[str, ...] = array(method)
    headers: tuple[tuple[str, str], ...] = pairs(header_name, header_value)
    # query parameters that must be present with exactly these values
    query: tuple[tuple[str, str], ...] = pairs(query_name, header_value)
    # path, path_prefix and path_regex compare letters' case (default: they do not)
    case_sensitive: bool = option(boolean, False)


@dataclass(frozen=True, slots=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = pairs(header_name, header_value)
    remove: tuple[str, ...] = array(header_name)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    type: str = required(choice(AUTH_TYPES, "an auth type"), "", hint='type = "api_key" or "jwt"')
    header: str = option(header_name, "X-API-Key")
    algorithms: tuple[str, ...] = array(jwt_algorithm)
    secret_env: str | None = option(env_name, None)
    public_key_file: str | None = file_path()
    issuer: str | None = option(nonempty, None)
    audience: str | None = option(nonempty, None)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    rate: int = required(int_in(1), 1, hint="e.g. rate = 10")
    per: float = option(positive_duration, 1.0)
    burst: int | None = option(int_in(1), None)
    key: str = option(rate_limit_key_form, "client_ip")
    # Per-consumer overrides: (consumer, its own rate, per and burst); each such consumer has buckets of its own.
    consumers: tuple[tuple[str, RateLimitConfig], ...] = custom(())


@dataclass(frozen=True, slots=True)
class CorsConfig:
    allow_origins: tuple[str, ...] = array(origin)
    allow_methods: tuple[str, ...] = array(method)
    allow_headers: tuple[str, ...] = array(header_name)
    max_age: float = option(parse_duration, 0.0)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    ttl: float = required(positive_duration, 1.0, hint='e.g. ttl = "30s"')
    max_entries: int = option(int_in(1), 1000)
    max_body: int = option(positive_size, CACHE_MAX_BODY)  # larger responses are passed on, not kept
    # all the route's kept bodies together; the least recently used go first
    max_bytes: int = option(positive_size, CACHE_MAX_BYTES)
    statuses: tuple[tuple[int, int], ...] = array(  # the responses kept
        status_range, CACHE_STATUSES, empty_is_default=True
    )


@dataclass(frozen=True, slots=True)
class AggregatePart:
    service: str = required(nonempty, "")
    # may hold `{group.field}`: a field of an earlier part's reply (see routes.aggregate_path_pieces)
    path: str = required(url_path, "/")
    group: str = required(nonempty, "")
    allow: tuple[str, ...] = array(nonempty)  # top-level fields kept (all when empty)
    deny: tuple[str, ...] = array(nonempty)  # top-level fields dropped
    rename: tuple[tuple[str, str], ...] = pairs(nonempty, nonempty)  # (field, new name), after allow and deny


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str = custom()  # absent: "route<index>"
    match: RouteMatch = custom()  # absent: every request
    service: str | None = option(nonempty, None)
    aggregate: tuple[AggregatePart, ...] = custom(())
    strip_prefix: str | None = option(url_path, None)
    request_headers: HeaderOps = custom(HeaderOps())
    response_headers: HeaderOps = custom(HeaderOps())
    auth: AuthConfig | None = custom(None)
    rate_limit: RateLimitConfig | None = custom(None)
    cors: CorsConfig | None = table(CorsConfig, None)
    cache: CacheConfig | None = table(CacheConfig, None)
    timeout: float | None = option(positive_duration, None)
    ip_allow: tuple[str, ...] = array(
        network
    )  # networks (CIDR); when given, only clients in one may use the route
    ip_deny: tuple[str, ...] = array(network)  # networks whose clients get 403 (deny wins over allow)
    rewrite: tuple[str, str] | None = custom(None)  # (pattern, substitution) on the path, after strip_prefix
    # Query parameters set on the request (replacing same names).
    add_query: tuple[tuple[str, str], ...] = pairs(query_name, header_value)
    # replaces the service's retries for this route's requests
    retries: RetriesConfig | None = table(RetriesConfig, None)
    # the Upgrade protocols tunnelled (None: its listener's `upgrades`)
    upgrades: tuple[str, ...] | None = array(upgrade_protocol, None)


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    name: str = custom()  # required; absent: "consumer<index>" while the rest is checked
    api_key_sha256: str | None = option(sha256_hex, None)
    api_key_env: str | None = option(env_name, None)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_header_bytes: int = option(positive_size, 16384)
    max_headers: int = option(int_in(1), 100)
    max_body: int = option(parse_size, 100 * 1024 * 1024)
    header_timeout: float = option(positive_duration, 10.0)
    client_idle_timeout: float = option(positive_duration, 60.0)
    max_connections: int = option(int_in(1), 10000)


@dataclass(frozen=True, slots=True)
class StateConfig:
    file: str | None = file_path()


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    path: str | None = file_path(keep=("-",))  # a file, "-" for stderr; None: no access log
    # "json" (one object a line) or "combined" (Apache's, then key=value fields)
    format: str = option(choice(ACCESS_LOG_FORMATS, "an access log format"), "json")


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # the file read (or the name given to parse_config)
    listeners: tuple[ListenerConfig, ...] = custom()
    admin: AdminConfig = custom()
    services: tuple[ServiceConfig, ...] = custom()
    routes: tuple[RouteConfig, ...] = custom(())
    consumers: tuple[ConsumerConfig, ...] = custom(())
    limits: LimitsConfig = table(LimitsConfig, LimitsConfig())
    state: StateConfig = table(StateConfig, StateConfig())
    access_log: AccessLogConfig = table(AccessLogConfig, AccessLogConfig())

    def service(self, name: str) -> ServiceConfig:
        """The service called ``name``; KeyError if there is none."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)


DEFAULT_LISTENER: Final = ListenerConfig(name="web", host="127.0.0.1", port=8080, mode="http")
