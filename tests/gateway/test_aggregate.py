"""Aggregate routes through real sockets: parts merged under their groups, shaped, failing, cancelled, counted."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

import pytest

from lbtui.config import ConfigError, parse_config
from lbtui.features import refused
from tests.conftest import wait_for

ALICE = "alice-key-0123456789"


def aggregate_config(
    services: dict[str, str], parts: list[dict[str, Any]], consumers: bool = False, **route: Any
) -> Any:
    """A config with one service per (name, address) and an aggregate route at /agg (and /plain proxied)."""
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {
            name: {"backends": [{"name": name, "address": address}]} for name, address in services.items()
        },
        "routes": [
            {"name": "agg", "match": {"path": "/agg"}, "aggregate": parts, **route},
            {"name": "plain", "match": {"path_prefix": "/"}, "service": next(iter(services))},
        ],
    }
    if consumers:
        data["consumers"] = [{"name": "alice", "api_key_sha256": hashlib.sha256(ALICE.encode()).hexdigest()}]
    config = parse_config(data, source="<test>")
    assert refused(config) == []
    return config


async def ask(client, method: str = "GET", path: str = "/agg", headers: dict[str, str] | None = None):
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: test.local",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    await client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    return await client.read_response(head=method == "HEAD")


async def silent_upstream(scripted):
    """A backend that reads a request and never answers; `closed` is set when the caller hangs up, whole request
    or not (a part cut at its deadline on a loaded machine may be cut before its request was written)."""
    closed = asyncio.Event()

    async def script(reader, writer, up):
        try:
            await up.read_request(reader)
            await reader.read()  # until the caller closes
        finally:
            closed.set()

    up = await scripted(script)
    up.closed = closed
    return up


async def test_parts_are_called_and_merged_under_their_groups(backends, engine_factory, raw_client):
    bs = {name: await backends(name) for name in ("users", "orders", "stock")}
    parts = [
        {"service": "users", "path": "/echo/user/1", "group": "user"},
        {"service": "orders", "path": "/echo/orders?user=1", "group": "orders"},
        {"service": "stock", "path": "/stock", "group": "stock"},
    ]
    engine = await engine_factory(aggregate_config({n: b.address for n, b in bs.items()}, parts))
    client = await raw_client(engine.address())
    r = await ask(client)
    assert r.status == 200
    assert r.header("content-type") == "application/json"
    assert r.header("x-aggregate-completed") == "true"
    body = json.loads(r.body)
    assert list(body) == ["user", "orders", "stock"]  # config order
    assert body["user"]["url"] == "/echo/user/1"
    assert body["user"]["method"] == "GET"
    assert body["orders"]["url"] == "/echo/orders?user=1"
    assert body["stock"] == {"backend": "stock", "path": "/stock"}
    # HEAD: the same head, no body; and the connection is still good for the next request.
    r = await ask(client, "HEAD")
    assert r.status == 200
    assert r.body == b""
    assert int(r.header("content-length")) > 0
    r = await ask(client)
    assert r.status == 200
    # Counted as the proxy counts: each backend's requests, none left in flight, and the route's answers.
    for name in bs:
        backend = engine.balancer.backends[name]
        assert backend.requests == 3
        assert backend.in_flight == 0
        assert backend.status_classes[2] == 3
        assert bs[name].accepted == 1  # one kept-alive connection served the three calls
    assert engine.balancer.route_stats["agg"].status_classes[2] == 3


async def test_allow_deny_and_rename(backends, engine_factory, raw_client):
    b = await backends("app")
    parts = [
        {"service": "app", "path": "/echo/a", "group": "allowed", "allow": ["backend", "url"]},
        {
            "service": "app",
            "path": "/echo/d",
            "group": "denied",
            "deny": ["headers", "body_sha256", "method"],
        },
        {
            "service": "app",
            "path": "/echo/r",
            "group": "renamed",
            "allow": ["backend", "url", "method"],
            "rename": {"url": "where", "backend": "method", "method": "verb"},
        },
        {"service": "app", "path": "/other", "group": "plain", "rename": {"path": "backend"}},
    ]
    engine = await engine_factory(aggregate_config({"app": b.address}, parts))
    client = await raw_client(engine.address())
    body = json.loads((await ask(client)).body)
    assert body["allowed"] == {"backend": "app", "url": "/echo/a"}
    assert body["denied"] == {"backend": "app", "url": "/echo/d", "body_size": 0}
    # A swap and a chain: every renamed field keeps its value under its new name.
    assert body["renamed"] == {"where": "/echo/r", "method": "app", "verb": "GET"}
    # A renamed field wins over a field that had its new name.
    assert body["plain"] == {"backend": "/other"}


async def test_failing_parts_are_left_out(
    backends, engine_factory, raw_client, scripted, fault_proxy, caplog, closed_port
):
    caplog.set_level(logging.DEBUG, logger="lbtui")

    async def text_and_scalar(reader, writer, up):
        while True:
            head = await up.read_request(reader)
            body = b"42" if b"/scalar" in head else b"hello, not json"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    good = await backends("good")
    odd = await scripted(text_and_scalar)
    hole = await fault_proxy(good)
    hole.blackhole()  # accepts, takes the request, never answers
    services = {
        "good": good.address,
        "odd": odd.address,
        "refused": f"127.0.0.1:{closed_port()}",
        "hole": hole.address,
    }
    parts = [
        {"service": "good", "path": "/echo", "group": "good"},
        {"service": "good", "path": "/status/500", "group": "error"},
        {"service": "odd", "path": "/text", "group": "text"},
        {"service": "odd", "path": "/scalar", "group": "scalar"},
        {"service": "good", "path": "/bytes/9000000", "group": "large"},  # over 8 MiB
        {"service": "refused", "path": "/", "group": "refused"},
        {"service": "hole", "path": "/echo", "group": "hole"},
    ]
    engine = await engine_factory(aggregate_config(services, parts, timeout="500ms"))
    client = await raw_client(engine.address())
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await ask(client)
    # The route's 500 ms, not the services' 30 s (10 s: generous for a busy machine).
    assert loop.time() - started < 10.0
    assert r.status == 200
    assert r.header("x-aggregate-completed") == "false"
    assert list(json.loads(r.body)) == ["good"]
    why = caplog.text
    assert "part 'error' failed: good answered 500" in why
    assert "part 'text' failed: odd answered with something that is not JSON" in why
    assert "part 'scalar' failed: odd answered with JSON that is neither an object nor an array" in why
    assert "part 'large' failed: the reply body is larger than 8388608 bytes" in why
    assert "part 'refused' failed: no backend of service 'refused' could be reached" in why
    assert "part 'hole' missed the route's timeout" in why
    backends_ = engine.balancer.backends
    await wait_for(lambda: all(b.in_flight == 0 for b in backends_.values()), what="no part in flight")
    assert backends_["good"].requests == 3
    assert backends_["good"].status_classes[5] == 1
    assert backends_["refused"].connect_failures == 1
    assert backends_["refused"].status_classes[0] == 1  # a failure with no status, as the proxy counts it
    assert backends_["hole"].status_classes[0] == 1
    await wait_for(lambda: hole.open_links == 0, what="the blackholed connection to be closed")


async def test_every_part_failing_is_502(engine_factory, raw_client, closed_port):
    parts = [
        {"service": "a", "path": "/", "group": "a"},
        {"service": "b", "path": "/", "group": "b"},
    ]
    engine = await engine_factory(
        aggregate_config({"a": f"127.0.0.1:{closed_port()}", "b": f"127.0.0.1:{closed_port()}"}, parts)
    )
    client = await raw_client(engine.address())
    r = await ask(client)
    assert r.status == 502
    assert r.header("x-aggregate-completed") == "false"
    assert engine.balancer.route_stats["agg"].status_classes[5] == 1


async def test_a_part_with_no_backend_available_fails(backends, engine_factory, raw_client):
    up = await backends("up")
    parts = [
        {"service": "up", "path": "/echo", "group": "up"},
        {"service": "down", "path": "/echo", "group": "down"},
    ]
    engine = await engine_factory(aggregate_config({"up": up.address, "down": up.address}, parts))
    engine.controller.set_state("down", "maint")
    client = await raw_client(engine.address())
    r = await ask(client)
    assert r.header("x-aggregate-completed") == "false"
    assert list(json.loads(r.body)) == ["up"]
    assert engine.balancer.services["down"].unrouted == 1


async def test_the_client_leaving_cancels_the_parts(engine_factory, raw_client, scripted):
    silent = await silent_upstream(scripted)
    parts = [{"service": "silent", "path": "/", "group": "s"}]
    engine = await engine_factory(aggregate_config({"silent": silent.address}, parts, timeout="30s"))
    client = await raw_client(engine.address())
    await client.send(b"GET /agg HTTP/1.1\r\nHost: test.local\r\n\r\n")
    await wait_for(lambda: silent.received, what="the part to reach its backend")
    backend = engine.balancer.backends["silent"]
    assert backend.in_flight == 1
    await client.close()
    # Within wait_for's 10 s: long before the route's 30 s.
    await wait_for(silent.closed.is_set, what="the part's connection to close")
    await wait_for(lambda: backend.in_flight == 0, what="the part to be counted")
    assert backend.status_classes[4] == 1  # 499, as the proxy counts a client that left
    assert engine.balancer.route_stats["agg"].status_classes[4] == 1


async def test_a_silent_backend_is_let_go_at_the_timeout(engine_factory, raw_client, scripted, backends):
    silent = await silent_upstream(scripted)
    good = await backends("good")
    parts = [
        {"service": "silent", "path": "/", "group": "s"},
        {"service": "good", "path": "/echo", "group": "g"},
    ]
    config = aggregate_config({"good": good.address, "silent": silent.address}, parts, timeout="200ms")
    engine = await engine_factory(config)
    client = await raw_client(engine.address())
    r = await ask(client)
    assert r.header("x-aggregate-completed") == "false"
    # Only the route's 200 ms lets it go (with a route timeout, the part has no reply timeout of its own).
    await wait_for(silent.closed.is_set, what="the silent part's connection to close")
    assert engine.balancer.backends["silent"].in_flight == 0


async def test_headers_sent_to_parts(backends, engine_factory, raw_client):
    b = await backends("app")
    parts = [
        {"service": "app", "path": "/echo/1", "group": "one"},
        {"service": "app", "path": "/echo/2", "group": "two"},
    ]
    config = aggregate_config(
        {"app": b.address},
        parts,
        consumers=True,
        auth={"type": "api_key"},
        request_headers={"set": {"X-Gateway": "lbtui"}},
    )
    engine = await engine_factory(config)
    client = await raw_client(engine.address())
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sent = {
        "X-API-Key": ALICE,
        "traceparent": parent,
        "tracestate": "congo=t61rcWkgMzE",
        "X-Request-ID": "abc-123",
        "Cookie": "session=secret",
        "Authorization": "Basic c2VjcmV0",
        "User-Agent": "curl/8",
        "X-Forwarded-For": "10.9.9.9",  # not a trusted proxy: not believed
        "X-Consumer": "mallory",
    }
    r = await ask(client, headers=sent)
    assert r.status == 200
    body = json.loads(r.body)
    for group in ("one", "two"):
        seen = body[group]["headers"]
        assert seen == [
            ["Host", b.address],
            ["Accept", "application/json"],
            ["X-Request-ID", "abc-123"],
            ["traceparent", parent],
            ["tracestate", "congo=t61rcWkgMzE"],
            ["X-Gateway", "lbtui"],
            ["X-Consumer", "alice"],
            ["X-Forwarded-For", "127.0.0.1"],
            ["X-Forwarded-Proto", "http"],
            ["X-Forwarded-Host", "test.local"],
        ], group
    # Without an id of the client's, one new id, the same for every part of the request.
    r = await ask(client, headers={"X-API-Key": ALICE})
    body = json.loads(r.body)
    ids = [dict(body[group]["headers"])["X-Request-ID"] for group in ("one", "two")]
    assert ids[0] == ids[1]
    assert ids[0] != "abc-123"
    r = await ask(client)  # the route's auth still applies
    assert r.status == 401
    assert b.requests == 4


async def test_methods(backends, engine_factory, raw_client):
    b = await backends("app")
    parts = [{"service": "app", "path": "/echo", "group": "a"}]
    engine = await engine_factory(aggregate_config({"app": b.address}, parts))
    client = await raw_client(engine.address())
    r = await ask(client, "POST")
    assert r.status == 405
    assert r.header("allow") == "GET, HEAD"
    assert b.requests == 0
    posted = aggregate_config({"app": b.address}, parts, match={"path": "/agg", "methods": ["POST"]})
    engine = await engine_factory(posted)
    client = await raw_client(engine.address())
    r = await ask(client, "POST")
    assert r.status == 200
    assert json.loads(r.body)["a"]["method"] == "GET"  # parts are GETs whatever the client's method


async def test_sequential_parts_use_an_earlier_reply(backends, engine_factory, raw_client):
    b = await backends("app")
    parts = [
        {"service": "app", "path": "/echo/a%20b?x=1", "group": "user"},
        {"service": "app", "path": "/echo/orders?of={user.url}&by={user.backend}", "group": "orders"},
        {"service": "app", "path": "/echo/{user.body_size}/{orders.method}", "group": "more"},
    ]
    engine = await engine_factory(aggregate_config({"app": b.address}, parts))
    client = await raw_client(engine.address())
    body = json.loads((await ask(client)).body)
    assert body["orders"]["url"] == "/echo/orders?of=%2Fecho%2Fa%2520b%3Fx%3D1&by=app"
    assert body["more"]["url"] == "/echo/0/GET"
    assert [url for _, url, _ in b.received] == [
        b"/echo/a%20b?x=1",
        b"/echo/orders?of=%2Fecho%2Fa%2520b%3Fx%3D1&by=app",
        b"/echo/0/GET",
    ]


async def test_the_route_timeout_bounds_sequential_parts_together(backends, engine_factory, raw_client):
    b = await backends("app")
    parts = [
        {"service": "app", "path": "/delay/100", "group": "first"},
        {"service": "app", "path": "/delay/400?after={first.backend}", "group": "second"},
    ]
    engine = await engine_factory(aggregate_config({"app": b.address}, parts, timeout="300ms"))
    client = await raw_client(engine.address())
    r = await ask(client)
    assert r.header("x-aggregate-completed") == "false"
    assert list(json.loads(r.body)) == ["first"]  # the second started at 100 ms and needed 400 more


async def test_without_a_route_timeout_each_part_has_its_services(
    engine_factory, raw_client, scripted, backends, caplog
):
    caplog.set_level(logging.DEBUG, logger="lbtui")
    silent = await silent_upstream(scripted)
    good = await backends("good")
    config = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                "good": {"backends": [{"name": "good", "address": good.address}]},
                "silent": {
                    "backends": [{"name": "silent", "address": silent.address}],
                    "timeouts": {"response": "150ms"},
                },
            },
            "routes": [
                {
                    "match": {"path": "/agg"},
                    "aggregate": [
                        {"service": "silent", "path": "/", "group": "s"},
                        {"service": "good", "path": "/delay/300", "group": "g"},  # its service's 30 s
                    ],
                }
            ],
        }
    )
    engine = await engine_factory(config)
    client = await raw_client(engine.address())
    r = await ask(client)
    assert r.header("x-aggregate-completed") == "false"
    assert list(json.loads(r.body)) == ["g"]
    assert "part 's' failed: no whole reply within 0.15s" in caplog.text


async def test_parts_are_balanced_as_the_proxy_balances(backends, engine_factory, raw_client):
    bs = [await backends(f"b{i}") for i in range(4)]
    config = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                "app": {
                    "algorithm": "consistent_hash",
                    "hash_key": "query:user",
                    "backends": [{"name": b.name, "address": b.address} for b in bs],
                }
            },
            "routes": [
                {
                    "match": {"path": "/agg"},
                    "aggregate": [
                        {"service": "app", "path": f"/echo/agg?user={user}", "group": user}
                        for user in ("ann", "bob", "cid", "dee", "eve")
                    ],
                },
                {"match": {"path_prefix": "/"}, "service": "app"},
            ],
        }
    )
    engine = await engine_factory(config)
    client = await raw_client(engine.address())
    merged = json.loads((await ask(client)).body)
    for user, reply in merged.items():
        proxied = json.loads((await ask(client, path=f"/echo/proxied?user={user}")).body)
        assert reply["backend"] == proxied["backend"], user
    assert len({reply["backend"] for reply in merged.values()}) > 1


async def test_a_part_after_a_failed_one_fails_too(backends, engine_factory, raw_client):
    b = await backends("app")
    parts = [
        {"service": "app", "path": "/status/503", "group": "user"},
        {"service": "app", "path": "/echo/{user.id}", "group": "orders"},
        {"service": "app", "path": "/echo/fine", "group": "fine"},
        {"service": "app", "path": "/echo/{fine.missing}", "group": "missing"},
    ]
    engine = await engine_factory(aggregate_config({"app": b.address}, parts))
    client = await raw_client(engine.address())
    r = await ask(client)
    assert list(json.loads(r.body)) == ["fine"]
    assert b.requests == 2  # the dependent parts were never sent


async def test_a_kept_alive_connection_closed_by_the_backend_is_replaced(
    engine_factory, raw_client, scripted
):
    async def one_reply_per_connection(reader, writer, up):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await reader.readuntil(b"\r\n\r\n")  # a second request on this connection: hang up instead

    up = await scripted(one_reply_per_connection)
    parts = [{"service": "up", "path": "/", "group": "a"}]
    engine = await engine_factory(aggregate_config({"up": up.address}, parts))
    client = await raw_client(engine.address())
    for _ in range(3):
        r = await ask(client)
        assert r.header("x-aggregate-completed") == "true"
    assert up.connections == 3
    assert engine.balancer.backends["up"].requests == 3


# -- config ----------------------------------------------------------------------------------------------


def problems(parts: list[dict[str, Any]]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "services": {"a": {"backends": [{"name": "x", "address": "127.0.0.1:1"}]}},
                "routes": [{"match": {"path": "/p"}, "aggregate": parts}],
            },
            source="t.toml",
        )
    return str(info.value)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (
            [{"path": "/{user.id}", "group": "orders"}, {"path": "/", "group": "user"}],
            "routes[0].aggregate[0].path: {user.id} names group 'user', which is not before this part",
        ),
        (
            [{"path": "/{order.id}", "group": "orders"}],
            "routes[0].aggregate[0].path: no earlier part has group 'order'",
        ),
        (
            [{"path": "/", "group": "user"}, {"path": "/{usr.id}", "group": "orders"}],
            "routes[0].aggregate[1].path: no earlier part has group 'usr'; did you mean 'user'?",
        ),
        (
            [{"path": "/{user}", "group": "user"}],
            "routes[0].aggregate[0].path: '/{user}' {user} is not a placeholder: write {group.field}",
        ),
        (
            [{"path": "/{a.b", "group": "user"}],
            "routes[0].aggregate[0].path: '/{a.b' has a '{' or '}' that is not part of a {group.field} placeholder",
        ),
        (
            [{"path": "/", "group": "g", "allow": ["a"], "deny": ["b"]}],
            "routes[0].aggregate[0].deny: give either 'allow' or 'deny', not both",
        ),
        (
            [{"path": "/", "group": "g", "rename": {"a": "x", "b": "x"}}],
            "routes[0].aggregate[0].rename.b: 'x' is already the new name of 'a'",
        ),
        (
            [{"path": "/", "group": "g", "allow": ["a", "x"], "rename": {"a": "x"}}],
            "routes[0].aggregate[0].rename.a: 'x' is also kept by allow: two fields would have one name",
        ),
        (
            [{"path": "/", "group": "g", "allow": ["a"], "rename": {"b": "c"}}],
            "routes[0].aggregate[0].rename.b: field 'b' is dropped by allow: nothing to rename",
        ),
        (
            [{"path": "/", "group": "g", "deny": ["b"], "rename": {"b": "c"}}],
            "routes[0].aggregate[0].rename.b: field 'b' is dropped by deny: nothing to rename",
        ),
        (
            [{"path": "/", "group": "g", "rename": {"b": ""}}],
            "routes[0].aggregate[0].rename.b: ",
        ),
        (
            [{"path": "/", "group": "g", "renames": {}}],
            "routes[0].aggregate[0].renames: unknown key; did you mean 'rename'?",
        ),
    ],
)
def test_config_errors(parts: list[dict[str, Any]], expected: str) -> None:
    assert f"t.toml: {expected}" in problems([{"service": "a", **part} for part in parts])


async def test_a_cached_aggregate_is_answered_from_the_cache(backends, engine_factory, raw_client):
    bs = {name: await backends(name) for name in ("users", "orders")}
    parts = [
        {"service": "users", "path": "/echo/user/1", "group": "user"},
        {"service": "orders", "path": "/echo/orders", "group": "orders"},
    ]
    config = aggregate_config({n: b.address for n, b in bs.items()}, parts, cache={"ttl": "30s"})
    engine = await engine_factory(config)
    client = await raw_client(engine.address())
    first = await ask(client)
    assert (first.status, first.header("x-cache")) == (200, "MISS")
    again = await ask(client)
    assert (again.status, again.header("x-cache"), again.body) == (200, "HIT", first.body)
    assert again.header("x-aggregate-completed") == "true"
    assert [engine.balancer.backends[n].requests for n in bs] == [1, 1]


async def test_a_partial_aggregate_is_never_cached(backends, engine_factory, raw_client, closed_port):
    users = await backends("users")
    parts = [
        {"service": "users", "path": "/echo/user/1", "group": "user"},
        {"service": "orders", "path": "/echo/orders", "group": "orders"},
    ]
    config = aggregate_config(
        {"users": users.address, "orders": f"127.0.0.1:{closed_port()}"}, parts, cache={"ttl": "30s"}
    )
    engine = await engine_factory(config)
    client = await raw_client(engine.address())
    for _ in range(2):
        r = await ask(client)
        assert (r.status, r.header("x-aggregate-completed"), r.header("x-cache")) == (200, "false", "MISS")
        assert r.header("cache-control") == "no-store"
    assert engine.balancer.backends["users"].requests == 2


async def json_upstream(scripted):
    """Answers /id/VALUE with {"id": VALUE} and /cc/DIRECTIVES with {} and that Cache-Control; records paths."""
    from urllib.parse import unquote

    async def script(reader, writer, up):
        while True:
            head = await up.read_request(reader)
            path = head.split(b" ", 2)[1].decode()
            extra = ""
            if path.startswith("/id/"):
                body = json.dumps({"id": unquote(path[4:])}).encode()
            else:
                body = b"{}"
                if path.startswith("/cc/"):
                    extra = f"Cache-Control: {unquote(path[4:])}\r\n"
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )

    return await scripted(script)


@pytest.mark.parametrize("value", ["..", ".", ""])
async def test_a_field_that_would_be_a_dot_segment_fails_its_part(
    scripted, engine_factory, raw_client, value
):
    up = await json_upstream(scripted)
    parts = [
        {"service": "app", "path": f"/id/{value}", "group": "user"},
        {"service": "app", "path": "/orders/{user.id}/list", "group": "orders"},
    ]
    engine = await engine_factory(aggregate_config({"app": up.address}, parts))
    client = await raw_client(engine.address())
    r = await ask(client)
    assert json.loads(r.body) == {"user": {"id": value}}
    assert r.header("x-aggregate-completed") == "false"
    assert len(up.received) == 1  # the second part was never sent


@pytest.mark.parametrize(
    ("controls", "merged"),
    [
        (["max-age=60", "max-age=5"], "max-age=5"),
        (["max-age=60", "private"], "no-store"),
        (["no-cache", ""], "no-store"),
        (["", ""], None),
    ],
)
async def test_the_merged_reply_is_as_cacheable_as_its_parts(
    scripted, engine_factory, raw_client, controls, merged
):
    up = await json_upstream(scripted)
    parts = [
        {"service": "app", "path": f"/cc/{c.replace(' ', '%20')}" if c else "/plain", "group": f"g{i}"}
        for i, c in enumerate(controls)
    ]
    engine = await engine_factory(aggregate_config({"app": up.address}, parts, cache={"ttl": "30s"}))
    client = await raw_client(engine.address())
    r = await ask(client)
    assert r.header("cache-control") == merged
    again = await ask(client)
    assert again.header("x-cache") == ("MISS" if merged == "no-store" else "HIT")
