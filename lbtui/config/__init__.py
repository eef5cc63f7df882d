"""TOML -> typed, validated, immutable configuration (docs/config.md lists every key).

The package, bottom up (each module imports only those above it in this list):

- ``values``: converters of raw TOML values (durations, sizes, addresses, names, HTTP tokens, ...) and how a
  value, a key path and a "did you mean" are written in a message.
- ``reader``: ``ConfigIssue``, ``ConfigError``, the issue collector (``Context``) and ``Reader`` (one table,
  its key paths, its unknown keys).
- ``options``: how a key is declared on its dataclass field, once (key, converter, default), and ``Options``, the
  one reader of declared keys.
- ``model``: the frozen dataclasses, one per table, each key declared on its field; the names values are chosen
  from (``ALGORITHMS``, ...).
- one module per section with rules of its own: ``listeners`` (and tls), ``admin``, ``services`` (backends,
  health, outlier, sticky, ramp; ``parse_backend``), ``consumers``, ``routes`` (match, aggregate, headers,
  auth, rate_limit, ...). Tables with no rules beyond their keys' (timeouts, retries, cors, cache, limits,
  state, access_log) are read by ``options`` from their declarations alone.
- ``load``: ``load_config`` and ``parse_config``, the checks across sections.

Invariants:
- A ``Config`` that exists has been validated in full. Bad input never escapes as a traceback: every problem is
  a ``ConfigIssue`` (file, key path, what is wrong, a fix), all collected before one ``ConfigError`` is raised.
- Config objects are frozen, slotted dataclasses holding tuples: shared between threads, compared, hashed.
- Below lbtui.core and lbtui.proxy: imports neither (TLS files are checked with the leaf lbtui.tlsfiles), nor
  any UI; the engine and ``lbtui check`` use it headless.
"""

from __future__ import annotations

from lbtui.config.load import load_config, parse_config
from lbtui.config.model import (
    ALGORITHMS,
    AccessLogConfig,
    AdminConfig,
    AggregatePart,
    AuthConfig,
    BackendConfig,
    CacheConfig,
    Config,
    ConsumerConfig,
    CorsConfig,
    HeaderOps,
    HealthConfig,
    LimitsConfig,
    ListenerConfig,
    OutlierConfig,
    RampConfig,
    RateLimitConfig,
    RetriesConfig,
    RouteConfig,
    RouteMatch,
    ServiceConfig,
    StateConfig,
    StickyConfig,
    TimeoutsConfig,
    TLSConfig,
)
from lbtui.config.options import keys_of
from lbtui.config.reader import ConfigError, ConfigIssue
from lbtui.config.routes import aggregate_path_pieces
from lbtui.config.services import parse_backend
from lbtui.config.values import parse_address, parse_duration, parse_size

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
    "aggregate_path_pieces",
    "keys_of",
    "load_config",
    "parse_address",
    "parse_backend",
    "parse_config",
    "parse_duration",
    "parse_size",
]
