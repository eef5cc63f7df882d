"""Loading a config: the file read as TOML, every section parsed, the checks across sections, one Config.

Invariants:
- Every problem found is collected (lbtui.config.reader.Context); nothing raises until the load ends, and then
  one ConfigError lists them all, in the order they were found, so that an operator fixes a file in one round,
  not ten. A Config is returned only when there was none: it has been validated in full (every value, every
  reference between sections, every uniqueness rule).
- Bad input never escapes as a traceback: an unreadable file, bad UTF-8 or bad TOML is one issue, and an
  exception inside the parsing (a bug) becomes an "internal error" issue.
- Sections are read in this order: listeners, admin, services (then the tcp listeners' services), consumers,
  routes, the checks across them, limits, state, access_log.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from lbtui.config.admin import parse_admin
from lbtui.config.consumers import parse_consumers
from lbtui.config.listeners import parse_listeners
from lbtui.config.model import Config, ListenerConfig, RouteConfig, ServiceConfig
from lbtui.config.options import Options, keys_of
from lbtui.config.reader import ConfigError, ConfigIssue, Context, Reader
from lbtui.config.routes import parse_routes
from lbtui.config.services import Registry, parse_services
from lbtui.config.values import describe, join, q


def _build(ctx: Context, data: object) -> Config | None:
    if not isinstance(data, Mapping):
        ctx.add("", f"expected a table at the top level, got {describe(data)}")
        return None
    root = Reader(ctx, data, "", keys_of(Config))
    opts = Options(root, Config)
    registry = Registry()
    listeners = parse_listeners(ctx, root)
    admin = parse_admin(ctx, root, listeners)
    services = parse_services(ctx, root, registry)
    service_names = [service.name for service in services]
    for listener in listeners:
        if listener.config.mode == "tcp" and listener.config.service is not None:
            ctx.reference(listener.service_path, listener.config.service, service_names, "service")
    consumers = parse_consumers(ctx, root)
    routes = parse_routes(ctx, root, service_names, consumers)
    if len(services) > 1 and not routes and any(item.config.mode == "http" for item in listeners):
        ctx.add(
            "routes" if "routes" in root else "",
            f"http listeners need routes to choose among {len(services)} services",
            "add [[routes]] with a match and a service; only a config with one service needs none",
        )
    _check_underscored_headers(ctx, [item.config for item in listeners], routes, services)
    config = opts.build(
        source=ctx.file,
        listeners=tuple(listener.config for listener in listeners),
        admin=admin,
        services=tuple(services),
        routes=tuple(routes),
        consumers=tuple(consumers),
    )
    return None if ctx.issues else config


def _check_underscored_headers(
    ctx: Context,
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
        named += [(join(f"{base}.match.headers", name), name) for name, _ in route.match.headers]
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
                f"header {q(name)} has '_', and the listeners {'drop' if action == 'drop' else 'refuse'} such"
                f" headers (headers_with_underscores = {q(action)})",
                f"use {q(name.replace('_', '-'))}, or set headers_with_underscores = 'keep' on the listener",
            )


# ----------------------------------------------------------------------------------------------------------
# Entry points


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", *, base_dir: str | os.PathLike[str] | None = None
) -> Config:
    """A validated Config from already-parsed TOML (or JSON). Raises ConfigError listing every issue.

    Relative file paths (tls, public_key_file, state.file) are joined to ``base_dir`` when given. TLS
    certificates and keys are read and checked as a pair (lbtui.tlsfiles.load_server_context).
    """
    ctx = Context(source, None if base_dir is None else os.fspath(base_dir))
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
    data = read_toml(file)
    return parse_config(data, file, base_dir=os.path.dirname(os.path.abspath(file)))


def read_toml(file: str) -> dict[str, Any]:
    """A TOML file's tables. Raises ConfigError (one issue naming the file) for an unreadable file, bad UTF-8
    or bad TOML."""
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
    return data


def _read_problem(file: str, exc: OSError) -> tuple[str, str | None]:
    if isinstance(exc, FileNotFoundError):
        return "file not found", f"looked for {os.path.abspath(file)}"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file", None
    if isinstance(exc, PermissionError):
        return "permission denied", None
    return f"cannot read: {exc.strerror or exc}", None
