"""The [services.NAME] tables: backends, split, backup group, and the health, outlier, sticky and ramp tables.

Invariants:
- Backend names are unique across all services (``Registry``); a backend whose name is bad takes no part in
  that check. A split and a backup group name groups that some backend of the service is in; the backup group
  is not in the split and not every backend's group.
- ``consistent_hash`` needs a hash_key; max_queue means something only with max_connections.
- A health check's timeout is at most its interval (a short interval given alone shortens the default timeout).
- ``parse_backend`` checks a backend added at runtime (admin API, dashboard) with the same rules and messages.
- A service's keys are read in one fixed order (the order below), which is the order of its issues.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from lbtui.config.model import (
    BackendConfig,
    HealthConfig,
    OutlierConfig,
    RampConfig,
    ServiceConfig,
    StickyConfig,
)
from lbtui.config.options import Options, keys_of
from lbtui.config.reader import ConfigError, Context, Reader
from lbtui.config.values import (
    HASH_KEY_FORMS,
    NAME_HINT,
    NAME_RE,
    describe,
    join,
    number,
    q,
    seconds,
    suggest,
    upstream_address,
)

_HASH_KEY_HINT = "set hash_key to one of: " + ", ".join(q(form) for form in HASH_KEY_FORMS)


class Registry:
    """Names that must be unique across the whole config, with where each was first seen."""

    __slots__ = ("backends",)

    def __init__(self) -> None:
        self.backends: dict[str, str] = {}


def parse_services(ctx: Context, root: Reader, registry: Registry) -> list[ServiceConfig]:
    hint = "add a [services.NAME] table with [[services.NAME.backends]]"
    if "services" not in root:
        ctx.add("", "missing required key 'services'", hint)
        return []
    raw = root.data["services"]
    if not isinstance(raw, Mapping):
        array_hint = (
            "write [services.NAME] tables, not [[services]]" if isinstance(raw, list | tuple) else hint
        )
        ctx.add("services", f"expected a table, got {describe(raw)}", array_hint)
        return []
    if not raw:
        ctx.add("services", "at least one service is required", hint)
    services = []
    for name, body in raw.items():
        if not isinstance(name, str):
            ctx.add("services", f"keys must be strings, got {describe(name)}")
            continue
        path = join("services", name)
        if not NAME_RE.fullmatch(name):
            ctx.add(path, f"{q(name)} is not a valid service name", NAME_HINT)
        reader = ctx.table(path, body, keys_of(ServiceConfig))
        if reader is not None:
            services.append(_parse_service(ctx, name, reader, registry))
    return services


def _parse_backend(reader: Reader) -> tuple[BackendConfig, bool]:
    """The backend, and whether its name is valid (a bad name takes no part in uniqueness checks)."""
    opts = Options(reader, BackendConfig)
    name = opts.get("name")
    host, port = reader.required("address", upstream_address, ("", 0), 'e.g. address = "127.0.0.1:9001"')
    return opts.build(host=host, port=port), bool(name)


def _parse_service(ctx: Context, name: str, reader: Reader, registry: Registry) -> ServiceConfig:
    opts = Options(reader, ServiceConfig)
    algorithm = opts.get("algorithm")
    backends: list[BackendConfig] = []
    for _, backend_reader in (
        reader.tables("backends", keys_of(BackendConfig), "write [[services.NAME.backends]]") or ()
    ):
        backend, named = _parse_backend(backend_reader)
        backends.append(backend)
        if not named:
            continue
        if backend.name in registry.backends:
            ctx.add(
                backend_reader.key_path("name"),
                f"backend name {q(backend.name)} is already used at {registry.backends[backend.name]}",
                "backend names must be unique across all services",
            )
        else:
            registry.backends[backend.name] = backend_reader.path
    groups = list(dict.fromkeys(backend.group for backend in backends))

    split = opts.given("split")
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
                    join(split_path, group),
                    f"no backend of service {q(name)} is in group {q(group)}",
                    suggest(group, groups, f"groups of service {q(name)}"),
                )

    backup_group = opts.given("backup_group")
    if backup_group is not None:
        backup_path = reader.key_path("backup_group")
        if backup_group not in groups:
            ctx.add(
                backup_path,
                f"no backend of service {q(name)} is in group {q(backup_group)}",
                suggest(backup_group, groups, f"groups of service {q(name)}"),
            )
        elif groups == [backup_group]:
            ctx.add(backup_path, f"every backend of service {q(name)} is in the backup group")
        if split is not None and any(group == backup_group for group, _ in split):
            ctx.add(
                backup_path,
                f"group {q(backup_group)} is both the backup group and in the split",
                "a backup group takes traffic only when no other group can; remove it from the split",
            )

    opts.given("hash_key")
    if algorithm == "consistent_hash" and "hash_key" not in reader:
        ctx.add(
            reader.path, "missing required key 'hash_key' for algorithm 'consistent_hash'", _HASH_KEY_HINT
        )

    max_connections = opts.given("max_connections")
    opts.given("max_queue")
    if "max_queue" in reader and max_connections is None:
        ctx.add(
            reader.key_path("max_queue"),
            "only used with max_connections",
            "set max_connections (per backend); requests beyond it wait in this queue",
        )
    # The nested tables and the remaining keys, in the order their issues have always come out in.
    health = _parse_health(ctx, reader.table("health", keys_of(HealthConfig)))
    opts.given("timeouts")
    opts.given("retries")
    outlier = _parse_outlier(ctx, reader.table("outlier", keys_of(OutlierConfig)))
    opts.given("slow_start")
    opts.given("panic_threshold")
    return opts.build(
        name=name,
        backends=tuple(backends),
        health=health,
        outlier=outlier,
        sticky=_parse_sticky(ctx, reader.table("sticky", keys_of(StickyConfig))),
        ramp=_parse_ramp(ctx, reader.table("ramp", keys_of(RampConfig))),
    )


def _parse_ramp(ctx: Context, reader: Reader | None) -> RampConfig:
    if reader is None:
        return RampConfig()
    opts = Options(reader, RampConfig)
    steps = opts.given("steps")
    if steps is not None:
        if not steps:
            ctx.add(reader.key_path("steps"), "names no step", "e.g. steps = [5, 25, 50, 100]")
        elif list(steps) != sorted(steps):
            ctx.add(
                reader.key_path("steps"),
                f"steps must rise: {list(steps)}",
                "list the canary's shares in percent, smallest first, e.g. [5, 25, 50, 100]",
            )
    ratio = opts.get("max_p99_ratio")
    if ratio < 1:
        ctx.add(
            reader.key_path("max_p99_ratio"),
            f"must be at least 1, got {number(ratio)}",
            "2 rolls back when the canary's p99 is over twice the stable group's",
        )
    return opts.build()


def parse_ramp(ctx: Context, reader: Reader | None) -> RampConfig:
    """A `ramp` table read with the same keys and checks as a service's (HAProxy's groups file has them too)."""
    return _parse_ramp(ctx, reader)


def _parse_health(ctx: Context, reader: Reader | None) -> HealthConfig | None:
    if reader is None:
        return None
    default = HealthConfig()
    opts = Options(reader, HealthConfig)
    check_type = opts.get("type")
    given_interval = opts.given("interval")
    given_timeout = opts.given("timeout")
    interval = default.interval if given_interval is None else given_interval
    # A short interval given alone shortens the default timeout with it: a check never outlives its interval.
    timeout = min(default.timeout, interval) if given_timeout is None else given_timeout
    if given_timeout is not None and timeout > interval:
        shown = seconds(interval) if given_interval is not None else f"{seconds(interval)} (the default)"
        ctx.add(
            reader.key_path("timeout"),
            f"timeout {seconds(timeout)} is longer than interval {shown}",
            "make the timeout at most the interval"
            + ("" if given_interval is not None else ", or set interval"),
        )
    if check_type == "tcp":
        for key in ("path", "expect_status"):
            if key in reader:
                ctx.add(
                    reader.key_path(key), "only used by http health checks", 'remove it, or set type = "http"'
                )
    return opts.build(interval=interval, timeout=timeout)


def _parse_outlier(ctx: Context, reader: Reader | None) -> OutlierConfig | None:
    if reader is None:
        return None
    opts = Options(reader, OutlierConfig)
    base = opts.given("base_ejection")
    longest = opts.given("max_ejection")
    if base is not None and longest is not None and longest < base:
        ctx.add(
            reader.key_path("max_ejection"),
            f"max_ejection {seconds(longest)} is shorter than base_ejection {seconds(base)}",
        )
    return opts.build()


def _parse_sticky(ctx: Context, reader: Reader | None) -> StickyConfig | None:
    if reader is None:
        return None
    opts = Options(reader, StickyConfig)
    cookie = opts.get("cookie")
    secure = opts.given("secure")
    same_site = opts.given("same_site")
    if same_site == "none" and secure is False:
        ctx.add(
            reader.key_path("same_site"),
            "SameSite=None needs the Secure attribute, and secure = false leaves it out",
            'browsers drop such a cookie: remove secure = false, or choose "lax"',
        )
    if secure is False and cookie.startswith(("__Secure-", "__Host-")):
        ctx.add(
            reader.key_path("secure"),
            f"a cookie named {q(cookie)} must be Secure (its prefix says so)",
            "remove secure = false, or choose a name without the __Secure- or __Host- prefix",
        )
    return opts.build()


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
    ctx = Context(source, None)
    reader = ctx.table(key_path, data, keys_of(BackendConfig))
    if reader is None:
        raise ConfigError(ctx.issues)
    try:
        backend, named = _parse_backend(reader)
    except Exception as exc:  # same promise as parse_config: issues, never a traceback
        ctx.add(key_path, f"internal error while validating: {exc!r}", "please report this as a bug in lbtui")
        raise ConfigError(ctx.issues) from None
    if named:
        in_service = service is not None and any(other.name == backend.name for other in service.backends)
        if in_service and service is not None:
            ctx.add(
                reader.key_path("name"),
                f"backend name {q(backend.name)} is already used in service {q(service.name)}",
            )
        elif backend.name in taken_names:
            ctx.add(
                reader.key_path("name"),
                f"backend name {q(backend.name)} is already used",
                "backend names must be unique across all services",
            )
    if ctx.issues:
        raise ConfigError(ctx.issues)
    return backend
