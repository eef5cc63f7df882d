"""The [[routes]] section: match, service or aggregate, and the gateway's tables (headers, auth, rate_limit, cors,
cache, rewrite, retries, ...).

Invariants:
- A route names a service or an aggregate, never both, and every service it names exists; route names are
  unique (absent: "route<index>").
- An aggregate part's `{group.field}` names an earlier part's group; no two fields end up with one name.
- A route may not set or remove the headers that are the proxy's to write (framing, hop-by-hop, X-Forwarded-*).
- Auth: api_key needs consumers; jwt needs algorithms of one kind (HMAC or public-key, never both: a public key
  must not become an HMAC secret) with the secret or key they need; 'none' is refused.
- Per-consumer rate limits need auth on the route; with api_key auth they name known consumers.
- A route's keys are read in one fixed order (below), which is the order of its issues.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

from lbtui.config.model import (
    AggregatePart,
    AuthConfig,
    ConsumerConfig,
    HeaderOps,
    RateLimitConfig,
    RouteConfig,
    RouteMatch,
)
from lbtui.config.options import Options, keys_of
from lbtui.config.reader import Context, Reader
from lbtui.config.values import (
    describe,
    int_in,
    join,
    positive_duration,
    q,
    regex,
    string,
    suggest,
    valid_name,
)

REWRITE_KEYS: Final = ("pattern", "substitution")  # rewrite = { pattern, substitution }: RouteConfig.rewrite
JWT_ONLY_KEYS: Final = ("algorithms", "secret_env", "public_key_file", "issuer", "audience")
# A consumer's own limit: its rate, and the route's per and burst unless it gives its own.
RATE_OVERRIDE_KEYS: Final = ("rate", "per", "burst")


def parse_routes(
    ctx: Context, root: Reader, services: Sequence[str], consumers: Sequence[ConsumerConfig]
) -> list[RouteConfig]:
    routes = []
    names: dict[str, str] = {}
    for index, reader in root.tables("routes", keys_of(RouteConfig), "write [[routes]] tables") or ():
        route = _parse_route(ctx, index, reader, services, consumers)
        if route.name in names:
            ctx.add(
                reader.key_path("name"), f"route name {q(route.name)} is already used at {names[route.name]}"
            )
        names.setdefault(route.name, reader.path)
        routes.append(route)
    return routes


def _parse_route(
    ctx: Context, index: int, reader: Reader, services: Sequence[str], consumers: Sequence[ConsumerConfig]
) -> RouteConfig:
    opts = Options(reader, RouteConfig)
    name = reader.get("name", valid_name("route"), f"route{index}")
    match = _parse_match(ctx, reader.table("match", keys_of(RouteMatch)))
    service = opts.given("service")
    if service is not None:
        ctx.reference(reader.key_path("service"), service, services, "service")
    aggregate = _parse_aggregate(ctx, reader, services)
    reader.one_of("service", "aggregate", "or 'aggregate' to merge replies of several services")
    strip_prefix = opts.given("strip_prefix")
    if strip_prefix is not None and "aggregate" in reader:
        ctx.add(
            reader.key_path("strip_prefix"), "only used with 'service'", "give each aggregate part its path"
        )

    auth = _parse_auth(ctx, reader.table("auth", keys_of(AuthConfig)))
    if auth is not None and auth.type == "api_key" and not consumers:
        ctx.add(
            reader.key_path("auth"),
            "api_key auth needs consumers, and none are configured",
            "add [[consumers]] with a name and api_key_sha256 or api_key_env",
        )
    rate_limit = _parse_rate_limit(ctx, reader.table("rate_limit", keys_of(RateLimitConfig)))
    if rate_limit is not None and rate_limit.consumers:
        overrides = join(reader.key_path("rate_limit"), "consumers")
        if auth is None:
            ctx.add(overrides, "per-consumer limits need auth on this route", "add auth (api_key or jwt)")
        elif auth.type == "api_key":
            known = [c.name for c in consumers]
            for name, _ in rate_limit.consumers:
                ctx.reference(join(overrides, name), name, known, "consumer")
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
            join(reader.key_path("rate_limit"), "key"),
            "key 'consumer' needs auth on this route",
            'add auth, or use key = "client_ip"',
        )
    request_headers = _parse_header_ops(
        ctx, reader.table("request_headers", keys_of(HeaderOps)), request=True
    )
    response_headers = _parse_header_ops(
        ctx, reader.table("response_headers", keys_of(HeaderOps)), request=False
    )
    rewrite = _parse_rewrite(ctx, reader.table("rewrite", REWRITE_KEYS))
    # Read here: the order their issues have always come out in.
    for key in ("add_query", "ip_allow", "ip_deny"):
        opts.given(key)
    return opts.build(
        name=name,
        match=match,
        aggregate=aggregate,
        request_headers=request_headers,
        response_headers=response_headers,
        auth=auth,
        rate_limit=rate_limit,
        rewrite=rewrite,
    )


def _parse_match(ctx: Context, reader: Reader | None) -> RouteMatch:
    if reader is None:
        return RouteMatch()  # no match table: the route matches every request
    given = [key for key in ("path", "path_prefix", "path_regex") if key in reader]
    if len(given) > 1:
        ctx.add(reader.path, f"give only one of {', '.join(q(key) for key in given)}")
    return Options(reader, RouteMatch).build()


def _parse_aggregate(ctx: Context, route: Reader, services: Sequence[str]) -> tuple[AggregatePart, ...]:
    readers = route.tables("aggregate", keys_of(AggregatePart))
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
        opts = Options(reader, AggregatePart)
        service = opts.get("service")
        if service:
            ctx.reference(reader.key_path("service"), service, services, "service")
        group = opts.get("group")
        path = opts.get("path")
        _check_placeholders(ctx, reader.key_path("path"), path, list(groups), every_group)
        if group in groups:
            ctx.add(reader.key_path("group"), f"group {q(group)} is already used at {groups[group]}")
        elif group:
            groups[group] = reader.path
        allow = opts.get("allow")
        deny = opts.get("deny")
        if allow and deny:
            ctx.add(reader.key_path("deny"), "give either 'allow' or 'deny', not both")
        _check_rename(ctx, reader, opts.get("rename"), allow, deny)
        parts.append(opts.build())
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
    ctx: Context, key_path: str, path: str, earlier: Sequence[str], every: Sequence[str]
) -> None:
    """Each `{group.field}` in `path` names the group of an earlier part (its reply must have come first)."""
    try:
        pieces = aggregate_path_pieces(path)
    except ValueError as error:
        ctx.add(key_path, f"{q(path)} {error}", "percent-encode a literal brace (%7B, %7D)")
        return
    for piece in pieces:
        if isinstance(piece, str) or piece[0] in earlier:
            continue
        group = piece[0]
        if group in every:
            ctx.add(
                key_path,
                f"{{{group}.{'.'.join(piece[1])}}} names group {q(group)}, which is not before this part",
                "a part can use only the replies of parts listed before it",
            )
        else:
            ctx.add(
                key_path, f"no earlier part has group {q(group)}", suggest(group, earlier, "earlier groups")
            )


def _check_rename(
    ctx: Context,
    reader: Reader,
    pairs: Sequence[tuple[str, str]],
    allow: Sequence[str],
    deny: Sequence[str],
) -> None:
    """`rename = { old = "new" }`: two fields may not end up with one name."""
    targets: dict[str, str] = {}
    for old, new in pairs:
        where = join(reader.key_path("rename"), old)
        if (allow and old not in allow) or old in deny:
            ctx.add(where, f"field {q(old)} is dropped by {'allow' if allow else 'deny'}: nothing to rename")
        elif new in targets:
            ctx.add(where, f"{q(new)} is already the new name of {q(targets[new])}")
        elif new in allow and new not in dict(pairs):
            ctx.add(where, f"{q(new)} is also kept by allow: two fields would have one name")
        targets.setdefault(new, old)


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


def _parse_rewrite(ctx: Context, reader: Reader | None) -> tuple[str, str] | None:
    if reader is None:
        return None
    pattern = reader.required("pattern", regex, "", 'e.g. pattern = "^/v1/(.*)"')
    substitution = reader.required("substitution", string, "", 'e.g. substitution = "/api/\\1"')
    if pattern and substitution:
        try:
            re.sub(pattern, substitution, "/")  # a group the pattern does not have is an error now, not later
        except (re.error, IndexError) as error:
            ctx.add(reader.key_path("substitution"), f"does not fit the pattern: {error}")
            return None
    return (pattern, substitution)


def _parse_header_ops(ctx: Context, reader: Reader | None, request: bool) -> HeaderOps:
    if reader is None:
        return HeaderOps()
    ops = Options(reader, HeaderOps).build()
    owned = _OWNED_REQUEST_HEADERS if request else _OWNED_HEADERS
    for key, names in (("set", [name for name, _ in ops.set]), ("remove", list(ops.remove))):
        for name in names:
            if name.lower() in owned or (request and key == "remove" and name.lower() == "host"):
                ctx.add(
                    join(reader.key_path(key), name),
                    f"{q(name)} is written by lbtui itself and cannot be {'set' if key == 'set' else 'removed'}",
                    "framing, hop-by-hop and X-Forwarded-* headers (and a request's Host) are the proxy's",
                )
    return ops


def _parse_auth(ctx: Context, reader: Reader | None) -> AuthConfig | None:
    if reader is None:
        return None
    opts = Options(reader, AuthConfig)
    auth_type = opts.get("type")
    algorithms = opts.get("algorithms")
    opts.given("secret_env")
    opts.given("public_key_file")
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
    return opts.build()


def _check_jwt_keys(ctx: Context, reader: Reader, algorithms: Sequence[str]) -> None:
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


def _parse_rate_limit(ctx: Context, reader: Reader | None) -> RateLimitConfig | None:
    if reader is None:
        return None
    opts = Options(reader, RateLimitConfig)
    per = opts.get("per")
    overrides: list[tuple[str, RateLimitConfig]] = []
    if "consumers" in reader:  # a table keyed by consumer name
        path = reader.key_path("consumers")
        given = reader.data["consumers"]
        if not isinstance(given, Mapping):
            ctx.add(
                path,
                f"expected a table, got {describe(given)}",
                "e.g. consumers = { alice = { rate = 100 } }",
            )
            given = {}
        for name, raw in given.items():
            override = ctx.table(join(path, str(name)), raw, RATE_OVERRIDE_KEYS)
            if override is None:
                continue
            overrides.append(
                (
                    str(name),
                    RateLimitConfig(
                        rate=override.required("rate", int_in(1), 1, "e.g. rate = 100"),
                        per=override.get("per", positive_duration, per),
                        burst=override.value("burst", int_in(1)),
                    ),
                )
            )
    return opts.build(consumers=tuple(overrides))
