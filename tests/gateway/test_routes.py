"""Routes through real sockets: the matching order, 404 and 405, strip_prefix and header transforms."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lbtui.config import ConfigError, parse_config


def gateway(services: dict[str, Any], routes: list[dict[str, Any]]) -> Any:
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                name: {"backends": [{"name": backend.name, "address": backend.address}]}
                for name, backend in services.items()
            },
            "routes": routes,
        },
        source="<test>",
    )


async def ask(client, method: str, path: str, host: str = "test.local", headers: dict | None = None):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    await client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    return await client.read_response(head=method == "HEAD")


async def test_the_most_specific_route_wins(backends, engine_factory, raw_client):
    names = ["host", "exact", "long", "short", "regex", "any", "first", "second"]
    bs = {n: await backends(n) for n in names}
    routes = [
        {"name": "any", "match": {}, "service": "any"},
        {"name": "regex", "match": {"path_regex": "/echo/[0-9]+"}, "service": "regex"},
        {"name": "short", "match": {"path_prefix": "/echo"}, "service": "short"},
        {"name": "long", "match": {"path_prefix": "/echo/deep"}, "service": "long"},
        {"name": "exact", "match": {"path": "/echo/deep/x"}, "service": "exact"},
        {"name": "host", "match": {"host": "api.local"}, "service": "host"},
        {"name": "first", "match": {"path_prefix": "/echo/tie", "methods": ["GET"]}, "service": "first"},
        {"name": "second", "match": {"path_prefix": "/echo/tie"}, "service": "second"},
    ]
    engine = await engine_factory(gateway(bs, routes))
    client = await raw_client(engine.address())
    cases = [
        ("/echo/deep/x", "test.local", "exact"),  # exact before any prefix
        ("/echo/deep/y", "test.local", "long"),  # the longest prefix
        ("/echo/other", "test.local", "short"),
        ("/echo/123", "test.local", "short"),  # a prefix comes before a regex
        ("/elsewhere", "test.local", "any"),  # a route with no path matches the rest
        ("/echo/deep/x", "api.local", "host"),  # a route with a matching host comes before all without
        ("/echo/tie/1", "test.local", "first"),  # same rank: config order
    ]
    for path, host, expected in cases:
        r = await ask(client, "GET", path, host)
        assert r.status == 200, (path, host)
        assert json.loads(r.body)["backend"] == expected, (path, host)
    r = await ask(client, "POST", "/echo/tie/1")
    assert json.loads(r.body)["backend"] == "second"  # first takes GET only


async def test_wildcard_hosts_come_after_exact_hosts_and_before_routes_without_one(
    backends, engine_factory, raw_client
):
    """nginx's server_name and Envoy's virtual host domains: an exact name first, then the longest wildcard
    (`*.example.com` takes any name that ends in `.example.com`, at any depth, but not `example.com`), then the
    routes with no host. Within a host, paths rank as always."""
    names = ["exact", "wild", "deeper", "wild_path", "none"]
    bs = {n: await backends(n) for n in names}
    routes = [
        {"name": "none", "match": {}, "service": "none"},
        {"name": "wild", "match": {"host": "*.example.com"}, "service": "wild"},
        {
            "name": "wild_path",
            "match": {"host": "*.example.com", "path_prefix": "/echo/p"},
            "service": "wild_path",
        },
        {"name": "deeper", "match": {"host": "*.b.example.com"}, "service": "deeper"},
        {"name": "exact", "match": {"host": "api.example.com"}, "service": "exact"},
    ]
    engine = await engine_factory(gateway(bs, routes))
    client = await raw_client(engine.address())
    cases = [
        ("api.example.com", "/echo", "exact"),
        ("api.example.com", "/echo/p", "exact"),  # an exact host before a wildcard with a longer path
        ("x.example.com", "/echo", "wild"),
        ("x.y.example.com", "/echo", "wild"),  # more than one label
        ("x.example.com", "/echo/p/1", "wild_path"),
        ("a.b.example.com", "/echo", "deeper"),  # the longest wildcard first
        ("a.b.example.com", "/echo/p", "deeper"),
        ("b.example.com", "/echo", "wild"),  # `*.b.example.com` needs a label before `b`
        ("X.Example.COM.", "/echo", "wild"),  # the Host in its normal form
        ("x.example.com:8080", "/echo", "wild"),  # the port is not part of the name
        ("example.com", "/echo", "none"),  # the wildcard does not take the bare name
        ("xexample.com", "/echo", "none"),  # nor a name that only ends the same
        ("example.com.evil", "/echo", "none"),
    ]
    for host, path, expected in cases:
        r = await ask(client, "GET", path, host)
        assert r.status == 200, (host, path)
        assert json.loads(r.body)["backend"] == expected, (host, path)


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("*", "is not a host pattern"),
        ("*.", "has no name after"),
        ("a.*.example.com", "is not a host pattern"),
        ("*example.com", "is not a host pattern"),
        ("*.*.example.com", "is not a host pattern"),
        ("**.example.com", "is not a host pattern"),
        ("example.*", "is not a host pattern"),
        ("*.example.com:80", "includes a port"),
        ("*.exa mple.com", "is not a valid host name"),
        ("example.com..", "is not a valid host name"),
    ],
)
def test_host_patterns_are_checked(host, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "services": {"a": {"backends": [{"name": "a", "address": "127.0.0.1:1"}]}},
                "routes": [{"match": {"host": host}, "service": "a"}],
            }
        )
    (issue,) = [str(i) for i in caught.value.issues]
    assert "routes[0].match.host" in issue
    assert problem in issue


@pytest.mark.parametrize(
    ("given", "stored"), [("API.Example.com.", "api.example.com"), ("*.Ex.COM", "*.ex.com")]
)
def test_route_hosts_are_kept_in_their_normal_form(given, stored):
    config = parse_config(
        {
            "services": {"a": {"backends": [{"name": "a", "address": "127.0.0.1:1"}]}},
            "routes": [{"match": {"host": given}, "service": "a"}],
        }
    )
    assert config.routes[0].match.host == stored


async def test_regex_comes_before_a_route_without_path(backends, engine_factory, raw_client):
    bs = {n: await backends(n) for n in ("regex", "any")}
    routes = [
        {"name": "any", "match": {}, "service": "any"},
        {"name": "regex", "match": {"path_regex": "/echo/[0-9]+"}, "service": "regex"},
    ]
    engine = await engine_factory(gateway(bs, routes))
    client = await raw_client(engine.address())
    assert json.loads((await ask(client, "GET", "/echo/42")).body)["backend"] == "regex"
    assert json.loads((await ask(client, "GET", "/echo/x42")).body)["backend"] == "any"


async def test_no_route_is_404_and_a_wrong_method_is_405_with_allow(backends, engine_factory, raw_client):
    bs = {"api": await backends("api")}
    routes = [
        {
            "name": "read",
            "match": {"path_prefix": "/echo/items", "methods": ["GET", "HEAD"]},
            "service": "api",
        },
        {"name": "write", "match": {"path": "/echo/items", "methods": ["POST"]}, "service": "api"},
    ]
    engine = await engine_factory(gateway(bs, routes))
    client = await raw_client(engine.address())
    r = await ask(client, "GET", "/nothing")
    assert r.status == 404
    r = await ask(client, "DELETE", "/echo/items")
    assert r.status == 405
    assert r.header("allow") == "GET, HEAD, POST"
    r = await ask(client, "DELETE", "/echo/items/7")
    assert r.status == 405
    assert r.header("allow") == "GET, HEAD"
    assert engine.balancer.backends["api"].requests == 0
    assert engine.controller.snapshot().extra["unmatched"] == {"no route": 1, "method": 2}
    r = await ask(client, "GET", "/echo/items/7")  # the connection is still good
    assert r.status == 200


async def test_strip_prefix(backends, engine_factory, raw_client):
    bs = {"api": await backends("api")}
    routes = [{"name": "api", "match": {"path_prefix": "/api"}, "service": "api", "strip_prefix": "/api"}]
    engine = await engine_factory(gateway(bs, routes))
    client = await raw_client(engine.address())
    for sent, seen in [
        ("/api/echo/x?q=1", "/echo/x?q=1"),
        ("/api/echo", "/echo"),
        ("/api//echo/../echo/y", "/echo/y"),
    ]:
        r = await ask(client, "GET", sent)
        assert json.loads(r.body)["url"] == seen, sent
    r = await ask(client, "GET", "/api")
    assert r.status == 200
    assert json.loads(r.body)["path"] == "/"


async def test_request_and_response_headers_are_transformed(scripted, engine_factory, raw_client):
    seen: list[bytes] = []

    async def upstream(reader, writer, up):
        while True:
            head = await up.read_request(reader)
            seen.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\nServer: secret/1.0\r\nX-Internal: yes\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nok"
            )

    up = await scripted(upstream)
    config = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {"app": {"backends": [{"name": "up", "address": up.address}]}},
            "routes": [
                {
                    "name": "api",
                    "match": {"path_prefix": "/api"},
                    "service": "app",
                    "request_headers": {"set": {"X-Gateway": "lbtui"}, "remove": ["X-Debug"]},
                    "response_headers": {"set": {"X-Served-By": "lbtui"}, "remove": ["Server", "x-internal"]},
                },
                {"name": "plain", "match": {"path_prefix": "/"}, "service": "app"},
            ],
        },
        source="<test>",
    )
    engine = await engine_factory(config)
    client = await raw_client(engine.address())
    forged = {"X-Gateway": "forged", "X-Debug": "1", "X-Other": "o"}
    r = await ask(client, "GET", "/api/a", headers=forged)
    assert r.status == 200
    head = seen[-1].decode()
    assert "X-Gateway: lbtui" in head
    assert "forged" not in head
    assert "X-Debug" not in head
    assert "X-Other: o" in head
    assert r.header("x-served-by") == "lbtui"
    assert r.header("server") is None
    assert r.header("x-internal") is None
    assert r.header("x-kept") == "k"
    # The same headers on the same connection to a route without transforms: nothing changed (the per-connection
    # cache of filtered headers never carries one route's changes to another).
    r = await ask(client, "GET", "/b", headers=forged)
    head = seen[-1].decode()
    assert "X-Gateway: forged" in head
    assert "X-Debug: 1" in head
    assert r.header("server") == "secret/1.0"
    assert r.header("x-served-by") is None
    r = await ask(client, "GET", "/api/c", headers=forged)
    assert "X-Gateway: lbtui" in seen[-1].decode()


@pytest.mark.parametrize(
    ("ops", "where"),
    [
        (
            {"request_headers": {"set": {"Content-Length": "1"}}},
            "routes[0].request_headers.set.Content-Length",
        ),
        ({"request_headers": {"remove": ["Host"]}}, "routes[0].request_headers.remove.Host"),
        (
            {"request_headers": {"set": {"X-Forwarded-For": "1.2.3.4"}}},
            "routes[0].request_headers.set.X-Forwarded-For",
        ),
        (
            {"response_headers": {"remove": ["Transfer-Encoding"]}},
            "routes[0].response_headers.remove.Transfer-Encoding",
        ),
        ({"response_headers": {"set": {"Connection": "close"}}}, "routes[0].response_headers.set.Connection"),
    ],
)
def test_headers_the_proxy_writes_cannot_be_transformed(ops: dict, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "services": {"a": {"backends": [{"name": "x", "address": "127.0.0.1:1"}]}},
                "routes": [{"match": {"path_prefix": "/"}, "service": "a", **ops}],
            },
            source="t.toml",
        )
    assert f"t.toml: {where}: " in str(info.value)
    assert "written by lbtui itself" in str(info.value)


async def test_ip_allow_and_deny_lists(backends, engine_factory, raw_client):
    bs = {"api": await backends("api")}

    def config(**lists):
        data = gateway(bs, [{"name": "r", "match": {"path_prefix": "/"}, "service": "api", **lists}])
        return data

    cases = [
        ({"ip_allow": ["127.0.0.0/8"]}, 200),
        ({"ip_allow": ["10.0.0.0/8", "::1"]}, 403),
        ({"ip_deny": ["127.0.0.1"]}, 403),
        ({"ip_deny": ["10.0.0.0/8"]}, 200),
        ({"ip_allow": ["127.0.0.0/8"], "ip_deny": ["127.0.0.1/32"]}, 403),  # deny wins
    ]
    for lists, status in cases:
        engine = await engine_factory(config(**lists))
        client = await raw_client(engine.address())
        r = await ask(client, "GET", "/echo/x", headers={"X-Forwarded-For": "10.1.1.1"})  # not believed
        assert r.status == status, lists
    assert bs["api"].requests == 2


def test_ip_lists_must_be_networks() -> None:
    with pytest.raises(ConfigError, match=r"routes\[0\]\.ip_deny\[0\]: 'x' is not an IP address or network"):
        parse_config(
            {
                "services": {"a": {"backends": [{"name": "x", "address": "127.0.0.1:1"}]}},
                "routes": [{"match": {}, "service": "a", "ip_deny": ["x"]}],
            }
        )


async def test_match_on_query_parameters(backends, engine_factory, raw_client):
    bs = {"v2": await backends("v2"), "v1": await backends("v1")}
    routes = [
        {"name": "v2", "match": {"path_prefix": "/echo", "query": {"version": "2"}}, "service": "v2"},
        {"name": "v1", "match": {"path_prefix": "/echo"}, "service": "v1"},
    ]
    engine = await engine_factory(gateway(bs, routes))
    client = await raw_client(engine.address())
    for target, expected in [
        ("/echo/a?version=2", "v2"),
        ("/echo/a?x=1&version=2", "v2"),
        ("/echo/a?version=20", "v1"),
        ("/echo/a?version", "v1"),
        ("/echo/a", "v1"),
    ]:
        r = await ask(client, "GET", target)
        assert json.loads(r.body)["backend"] == expected, target


async def test_a_route_timeout_overrides_the_services(backends, engine_factory, raw_client):
    bs = {"api": await backends("api")}
    routes = [
        {"name": "quick", "match": {"path": "/delay/600"}, "service": "api", "timeout": "150ms"},
        {"name": "rest", "match": {"path_prefix": "/"}, "service": "api"},
    ]
    engine = await engine_factory(gateway(bs, routes))
    client = await raw_client(engine.address())
    r = await ask(client, "GET", "/delay/600")
    assert r.status == 504
    client = await raw_client(engine.address())
    r = await ask(client, "GET", "/delay/300")  # the other route: the service's 30 s
    assert r.status == 200


async def test_trace_context_and_request_ids_are_propagated(backends, engine_factory, raw_client):
    bs = {"api": await backends("api")}
    engine = await engine_factory(gateway(bs, [{"name": "r", "match": {}, "service": "api"}]))
    client = await raw_client(engine.address())
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = await ask(
        client,
        "GET",
        "/echo",
        headers={"traceparent": parent, "tracestate": "congo=t61rcWkgMzE", "X-Request-ID": "abc-123"},
    )
    seen = {k.lower(): v for k, v in json.loads(r.body)["headers"]}
    assert seen["traceparent"] == parent
    assert seen["tracestate"] == "congo=t61rcWkgMzE"
    assert seen["x-request-id"] == "abc-123"


async def test_path_rewrite_and_added_query_parameters(backends, engine_factory, raw_client):
    bs = {"api": await backends("api")}
    routes = [
        {
            "name": "v1",
            "match": {"path_prefix": "/v1"},
            "service": "api",
            "rewrite": {"pattern": "^/v1/(.*)$", "substitution": "/echo/api/\\1"},
            "add_query": {"source": "gateway", "page": "1"},
        }
    ]
    engine = await engine_factory(gateway(bs, routes))
    client = await raw_client(engine.address())
    for sent, seen in [
        ("/v1/users", "/echo/api/users?source=gateway&page=1"),
        ("/v1/users?x=1&page=9", "/echo/api/users?x=1&source=gateway&page=1"),  # set replaces page
    ]:
        r = await ask(client, "GET", sent)
        assert json.loads(r.body)["url"] == seen, sent


def test_a_rewrite_must_fit_its_pattern() -> None:
    with pytest.raises(ConfigError, match=r"routes\[0\]\.rewrite\.substitution: does not fit the pattern"):
        parse_config(
            {
                "services": {"a": {"backends": [{"name": "x", "address": "127.0.0.1:1"}]}},
                "routes": [
                    {"match": {}, "service": "a", "rewrite": {"pattern": "^/(a)", "substitution": "/\\2"}}
                ],
            }
        )


async def test_paths_ignore_case_unless_the_route_is_case_sensitive(backends, engine_factory, raw_client):
    bs = {n: await backends(n) for n in ("api", "exact", "any")}
    routes = [
        {"name": "api", "match": {"path_prefix": "/Api"}, "service": "api", "strip_prefix": "/api"},
        {"name": "exact", "match": {"path": "/Echo/X", "case_sensitive": True}, "service": "exact"},
        {"name": "any", "match": {}, "service": "any"},
    ]
    engine = await engine_factory(gateway(bs, routes))
    client = await raw_client(engine.address())
    for sent, backend, seen in [
        ("/API/echo/a", "api", "/echo/a"),  # strip_prefix comes off whatever the case
        ("/api/echo/b", "api", "/echo/b"),
        ("/Echo/X", "exact", "/Echo/X"),  # the case is kept on the way to the backend
        ("/echo/x", "any", "/echo/x"),  # case_sensitive: another spelling is another path
    ]:
        body = json.loads((await ask(client, "GET", sent)).body)
        assert (body["backend"], body.get("url") or body["path"]) == (backend, seen), sent


async def test_a_route_has_retries_of_its_own(backends, scripted, engine_factory, raw_client):
    async def hang_up(reader, writer, up):
        await up.read_request(reader)  # then close without an answer: a reset

    dead = await scripted(hang_up)
    good = await backends("good")
    config = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                "app": {
                    "algorithm": "round_robin",
                    "backends": [
                        {"name": "dead", "address": dead.address},
                        {"name": "good", "address": good.address},
                    ],
                }
            },
            "routes": [
                {
                    "name": "once",
                    "match": {"path_prefix": "/echo/once"},
                    "service": "app",
                    "retries": {"attempts": 0},
                },
                {"name": "rest", "match": {"path_prefix": "/"}, "service": "app"},
            ],
        },
        source="<test>",
    )
    engine = await engine_factory(config)
    client = await raw_client(engine.address())
    statuses = sorted([(await ask(client, "GET", "/echo/once")).status for _ in range(2)])
    assert statuses == [200, 502]  # one of the two went to the dead backend, and was not tried again
    assert [(await ask(client, "GET", "/echo/again")).status for _ in range(2)] == [200, 200]
    assert engine.controller.snapshot().services[0].retries >= 1


async def test_rewrite_ignores_case_as_the_match_does(backends, engine_factory, raw_client):
    bs = {"api": await backends("api")}
    routes = [
        {
            "name": "v1",
            "match": {"path_prefix": "/v1"},
            "service": "api",
            "rewrite": {"pattern": "^/v1/(.*)$", "substitution": "/echo/\\1"},
        }
    ]
    engine = await engine_factory(gateway(bs, routes))
    client = await raw_client(engine.address())
    for sent in ("/v1/users", "/V1/users"):
        assert json.loads((await ask(client, "GET", sent)).body)["url"] == "/echo/users", sent
