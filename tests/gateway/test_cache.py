"""Response caching on routes, through real sockets: what is kept, for how long, for whom, and within what bounds."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from email.utils import formatdate
from types import SimpleNamespace
from typing import Any

import pytest

from lbtui.config import ConfigError, parse_config

# path -> (status, extra header lines, body); the upstream appends " #n" (its n-th answer to that path) to the body
REPLIES: dict[str, tuple[int, list[str], bytes]] = {
    "/plain": (200, ['ETag: "v1"'], b"plain"),
    "/no-store": (200, ["Cache-Control: no-store"], b"x"),
    "/no-cache": (200, ["Cache-Control: no-cache"], b"x"),
    "/private": (200, ["Cache-Control: private, max-age=60"], b"x"),
    "/cookie": (200, ["Set-Cookie: s=1"], b"x"),
    "/vary-star": (200, ["Vary: *"], b"x"),
    "/vary": (200, ["Vary: Accept-Language"], b"v"),
    "/max-age": (200, ["Cache-Control: max-age=2"], b"m"),
    "/s-maxage": (200, ["Cache-Control: max-age=100, s-maxage=3"], b"s"),
    "/aged": (200, ["Age: 25"], b"a"),
    "/expired": (200, ["Expires: 0"], b"x"),
    "/public": (200, ["Cache-Control: public"], b"p"),
    "/error": (500, [], b"e"),
    "/missing": (404, [], b"n"),
    "/created": (201, [], b"c"),
    "/big": (200, [], b"b" * 5000),
}


class Upstream:
    """Answers by path (REPLIES) and counts the requests that reached it."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.heads: list[bytes] = []

    async def __call__(self, reader, writer, up) -> None:
        while True:
            head = await up.read_request(reader)
            self.heads.append(head)
            target = head.split(b" ", 2)[1].decode()
            path = target.split("?", 1)[0]
            self.hits[target] += 1
            status, extra, body = REPLIES.get(path, (200, [], path.encode()))
            body = body + b" #%d" % self.hits[target]
            lower = head.lower()
            if b"\r\nrange:" in lower:
                status, extra, body = 206, ["Content-Range: bytes 0-0/10"], body[:1]
            elif b"\r\nif-none-match:" in lower:
                status, extra, body = 304, ['ETag: "v1"'], b""
            elif path == "/expires":  # fresh for 3 s by its Date and Expires
                now = time.time()
                extra = [
                    f"Date: {formatdate(now, usegmt=True)}",
                    f"Expires: {formatdate(now + 3, usegmt=True)}",
                ]
            elif head.startswith(b"POST"):
                status = 404 if path == "/missing" else 200
            lines = [f"HTTP/1.1 {status} X", *extra]
            if status == 304:
                payload = b""
            elif path.startswith("/chunked"):
                lines.append("Transfer-Encoding: chunked")
                payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            else:
                lines.append(f"Content-Length: {len(body)}")
                payload = body
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)


def config(address: str, cache: dict[str, Any], **route: Any) -> Any:
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {"app": {"backends": [{"name": "up", "address": address}]}},
        "routes": [
            {"name": "cached", "match": {"path_prefix": "/"}, "service": "app", "cache": cache, **route},
        ],
    }
    if "auth" in route:
        data["consumers"] = [
            {"name": name, "api_key_sha256": hashlib.sha256(name.encode() + b"-key").hexdigest()}
            for name in ("alice", "bob")
        ]
    return parse_config(data, source="<test>")


async def get(client, path: str, method: str = "GET", **headers: str):
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: test.local",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    await client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    return await client.read_response(head=method == "HEAD")


@pytest.fixture
async def cached(scripted, engine_factory, raw_client):
    """engine, client, upstream and clock for a route with `cache` (keyword arguments: the cache table, the route)."""

    async def start(cache: dict[str, Any] | None = None, **route: Any):
        upstream = Upstream()
        up = await scripted(upstream)
        engine = await engine_factory(config(up.address, cache or {"ttl": "30s"}, **route))
        clock = [0.0]
        real = engine.now
        engine.now = lambda: real() + clock[0]  # the cache's clock, moved on by the test
        return SimpleNamespace(
            engine=engine, client=await raw_client(engine.address()), upstream=upstream, clock=clock
        )

    return start


async def test_a_get_is_kept_and_answered_from_the_cache(cached):
    g = await cached()
    r = await get(g.client, "/plain?q=1")
    assert (r.status, r.body, r.header("x-cache")) == (200, b"plain #1", "MISS")
    g.clock[0] += 7
    r = await get(g.client, "/plain?q=1")
    assert (r.status, r.body, r.header("x-cache")) == (200, b"plain #1", "HIT")
    assert r.header("age") == "7"
    assert r.header("content-length") == "8"
    assert r.header("etag") == '"v1"'
    r = await get(g.client, "/plain?q=1", "HEAD")  # HEAD is answered from what the GET kept
    assert (r.status, r.body, r.header("x-cache"), r.header("content-length")) == (200, b"", "HIT", "8")
    r = await get(g.client, "/plain?q=2")  # another query is another response
    assert (r.body, r.header("x-cache")) == (b"plain #1", "MISS")
    assert g.upstream.hits == {"/plain?q=1": 1, "/plain?q=2": 1}
    cache = g.engine.router.routes[0].cache
    assert (cache.hits, cache.misses) == (2, 2)
    route = g.engine.controller.snapshot().routes[0]
    assert route.status_classes[2] == 4  # hits are counted as the route's answers


async def test_freshness_is_the_ttl_or_less_when_the_response_says_so(cached):
    g = await cached({"ttl": "10s"})
    for path in ("/plain", "/max-age", "/s-maxage"):
        assert (await get(g.client, path)).header("x-cache") == "MISS"
        assert (await get(g.client, path)).header("x-cache") == "HIT"
    await get(g.client, "/aged")
    g.clock[0] += 2.5  # max-age=2 is over
    assert (await get(g.client, "/max-age")).body == b"m #2"
    assert (await get(g.client, "/s-maxage")).header("x-cache") == "HIT"  # s-maxage=3 wins over max-age=100
    g.clock[0] += 1
    assert (await get(g.client, "/s-maxage")).body == b"s #2"
    assert (await get(g.client, "/plain")).header("x-cache") == "HIT"
    r = await get(g.client, "/aged")  # Age 25 from the backend, ttl 10: fresh for 0 s, never kept
    assert (r.body, r.header("x-cache")) == (b"a #2", "MISS")
    g.clock[0] += 7  # 10.5 s: the ttl is over
    assert (await get(g.client, "/plain")).body == b"plain #2"


@pytest.mark.parametrize(
    "path", ["/no-store", "/no-cache", "/private", "/cookie", "/vary-star", "/error", "/created"]
)
async def test_responses_that_must_not_be_kept(cached, path):
    g = await cached()
    for n in (1, 2):
        r = await get(g.client, path)
        assert r.header("x-cache") == "MISS"
        assert r.body.endswith(b" #%d" % n)
    assert not g.engine.router.routes[0].cache.entries


async def test_statuses_decide_what_is_kept(cached):
    g = await cached({"ttl": "30s", "statuses": ["2xx"]})
    await get(g.client, "/created")
    assert (await get(g.client, "/created")).header("x-cache") == "HIT"
    await get(g.client, "/missing")
    assert (await get(g.client, "/missing")).body == b"n #2"  # 404 is not 2xx here (by default it is kept)


async def test_what_the_client_asks(cached):
    g = await cached()
    await get(g.client, "/plain")
    r = await get(g.client, "/plain", Cache_Control="no-cache")  # fetched again, and the new one is kept
    assert (r.body, r.header("x-cache")) == (b"plain #2", "MISS")
    assert (await get(g.client, "/plain")).body == b"plain #2"
    r = await get(g.client, "/plain", Cache_Control="max-age=0")
    assert r.body == b"plain #3"
    r = await get(g.client, "/plain", Pragma="no-cache")
    assert r.body == b"plain #4"
    r = await get(g.client, "/fresh", Cache_Control="no-store")  # neither looked up nor kept
    assert r.header("x-cache") is None
    assert (await get(g.client, "/fresh")).header("x-cache") == "MISS"
    r = await get(g.client, "/elsewhere", Cache_Control="only-if-cached")
    assert r.status == 504
    assert g.upstream.hits["/elsewhere"] == 0
    r = await get(g.client, "/fresh", Cache_Control="only-if-cached")
    assert (r.status, r.header("x-cache")) == (200, "HIT")
    r = await get(g.client, "/plain", If_None_Match='W/"v0", "v1"')
    assert (r.status, r.body, r.header("etag")) == (304, b"", '"v1"')
    r = await get(g.client, "/plain", If_None_Match='"v2"')
    assert (r.status, r.body) == (200, b"plain #4")


async def test_other_methods_and_bodies_are_not_cached(cached):
    g = await cached()
    await get(g.client, "/plain")
    for _ in range(2):
        await g.client.send(b"POST /plain HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\nhi")
        r = await g.client.read_response()
        assert r.header("x-cache") is None
    await g.client.send(b"GET /plain HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\nhi")
    assert (await g.client.read_response()).header("x-cache") is None
    assert g.upstream.hits["/plain"] == 4


async def test_vary_keeps_the_varying_headers(cached):
    g = await cached()
    assert (await get(g.client, "/vary", Accept_Language="en")).body == b"v #1"
    assert (await get(g.client, "/vary", Accept_Language="en")).header("x-cache") == "HIT"
    r = await get(g.client, "/vary", Accept_Language="de")
    assert (r.body, r.header("x-cache")) == (b"v #2", "MISS")
    assert (await get(g.client, "/vary", Accept_Language="de")).header("x-cache") == "HIT"


async def test_one_consumer_never_gets_anothers_response(cached):
    g = await cached(auth={"type": "api_key"})
    alice = await get(g.client, "/me", X_API_Key="alice-key")
    bob = await get(g.client, "/me", X_API_Key="bob-key")
    assert (alice.header("x-cache"), bob.header("x-cache")) == ("MISS", "MISS")
    assert (await get(g.client, "/me", X_API_Key="bob-key")).header("x-cache") == "HIT"
    assert (await get(g.client, "/me")).status == 401  # auth comes first: no key, no cached answer
    assert g.upstream.hits["/me"] == 2
    assert b"X-Consumer: bob" in g.upstream.heads[-1]


async def test_authorization_on_a_route_without_auth_is_kept_only_when_public(cached):
    g = await cached()
    for n in (1, 2):
        r = await get(g.client, "/mine", Authorization="Bearer a")
        assert r.body == b"/mine #%d" % n
    await get(g.client, "/public", Authorization="Bearer a")
    assert (await get(g.client, "/public")).header("x-cache") == "HIT"


async def test_chunked_responses_are_kept_and_large_ones_passed_on(cached):
    g = await cached({"ttl": "30s", "max_body": 1000})
    r = await get(g.client, "/chunked")
    assert (r.body, r.header("transfer-encoding")) == (b"/chunked #1", "chunked")
    r = await get(g.client, "/chunked")
    assert (r.body, r.header("x-cache"), r.header("content-length")) == (b"/chunked #1", "HIT", "11")
    for n in (1, 2):
        r = await get(g.client, "/big")  # 5000 bytes: passed on whole, never kept
        assert r.body == b"b" * 5000 + b" #%d" % n
    r = await get(g.client, "/plain")  # the connection is still good
    assert r.status == 200


async def test_the_cache_is_bounded(cached):
    g = await cached({"ttl": "30s", "max_entries": 2})
    for path in ("/a", "/b"):
        await get(g.client, path)
    await get(g.client, "/a")  # /a is now the most recently used
    await get(g.client, "/c")  # /b goes
    cache = g.engine.router.routes[0].cache
    assert len(cache.entries) == 2
    assert (await get(g.client, "/a")).header("x-cache") == "HIT"
    assert (await get(g.client, "/b")).body == b"/b #2"
    g = await cached({"ttl": "30s", "max_bytes": 600})
    for n in range(10):
        await get(g.client, f"/path-{n}-" + "x" * 100)  # bodies of about 110 bytes
    cache = g.engine.router.routes[0].cache
    assert cache.bytes <= 600
    assert 1 <= len(cache.entries) < 10
    assert cache.bytes == sum(e.size for e in cache.entries.values())
    g.clock[0] += 31
    g.engine.router.sweep(g.engine.now())  # the g.engine's tick drops expired entries
    assert not cache.entries
    assert cache.bytes == 0


def test_cache_config_errors():
    with pytest.raises(ConfigError) as err:
        config("127.0.0.1:1", {"ttl": "0s", "max_body": "1XB", "statuses": ["6xx"], "size": 1})
    text = str(err.value)
    assert "routes[0].cache.ttl" in text
    assert "routes[0].cache.max_body" in text
    assert "routes[0].cache.statuses[0]" in text
    assert "routes[0].cache.size: unknown key" in text


async def test_partial_and_not_modified_replies_are_never_kept(cached):
    """Whatever `statuses` says, a 206 (to a Range) or a 304 (to a conditional GET) is not a whole response:
    kept, it would be served to everyone after."""
    g = await cached({"ttl": "30s", "statuses": ["2xx", "3xx"]})
    r = await get(g.client, "/plain", Range="bytes=0-0")
    assert (r.status, r.header("x-cache")) == (206, None)  # neither looked up nor kept
    r = await get(g.client, "/plain", If_None_Match='"v0"')  # nothing kept yet: the backend answers 304
    assert (r.status, r.header("x-cache")) == (304, "MISS")
    r = await get(g.client, "/plain")
    assert (r.status, r.body, r.header("x-cache")) == (200, b"plain #3", "MISS")
    assert (await get(g.client, "/plain")).header("x-cache") == "HIT"


async def test_expires_bounds_freshness_when_max_age_does_not(cached):
    g = await cached({"ttl": "30s"})
    await get(g.client, "/expires")
    assert (await get(g.client, "/expires")).header("x-cache") == "HIT"
    g.clock[0] += 3.5
    assert (await get(g.client, "/expires")).body == b"/expires #2"


async def test_a_change_drops_what_is_kept_for_its_target(cached):
    g = await cached(auth={"type": "api_key"})
    for who in ("alice-key", "bob-key"):
        await get(g.client, "/doc", X_API_Key=who)
        assert (await get(g.client, "/doc", X_API_Key=who)).header("x-cache") == "HIT"
    await g.client.send(
        b"POST /doc HTTP/1.1\r\nHost: test.local\r\nX-API-Key: alice-key\r\nContent-Length: 1\r\n\r\nx"
    )
    assert (await g.client.read_response()).status == 200
    for who in ("alice-key", "bob-key"):  # every consumer's entry for /doc went
        assert (await get(g.client, "/doc", X_API_Key=who)).header("x-cache") == "MISS"
    await get(g.client, "/missing", X_API_Key="bob-key")
    await g.client.send(
        b"POST /missing HTTP/1.1\r\nHost: test.local\r\nX-API-Key: bob-key\r\nContent-Length: 0\r\n\r\n"
    )
    await g.client.read_response()  # a 404: it changed nothing, and nothing is dropped
    assert (await get(g.client, "/missing", X_API_Key="bob-key")).header("x-cache") == "HIT"


async def test_authorization_is_never_shared_on_a_route_with_auth_either(cached):
    g = await cached(auth={"type": "api_key"})
    for n in (1, 2):  # one consumer (a web app) passing on its users' tokens: every request goes through
        r = await get(g.client, "/mine", X_API_Key="alice-key", Authorization=f"Bearer user-{n}")
        assert (r.body, r.header("x-cache")) == (b"/mine #%d" % n, "MISS")


async def test_http_and_https_are_kept_apart(scripted, engine_factory, raw_client, tmp_path):
    import ssl

    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    upstream = Upstream()
    up = await scripted(upstream)
    data = {
        "listeners": [
            {"name": "web", "bind": "127.0.0.1:0"},
            {"name": "tls", "bind": "127.0.0.1:0", "tls": {"cert": str(cert), "key": str(key)}},
        ],
        "services": {"app": {"backends": [{"name": "up", "address": up.address}]}},
        "routes": [{"name": "cached", "match": {}, "service": "app", "cache": {"ttl": "30s"}}],
    }
    engine = await engine_factory(parse_config(data, source="<test>"))
    plain = await raw_client(engine.address("web"))
    assert (await get(plain, "/page")).header("x-cache") == "MISS"
    assert (await get(plain, "/page")).header("x-cache") == "HIT"
    context = ssl.create_default_context()
    ca.configure_trust(context)
    reader, writer = await asyncio.open_connection(
        *engine.address("tls"), ssl=context, server_hostname="127.0.0.1"
    )
    writer.write(b"GET /page HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
    reply = await reader.read()
    writer.close()
    assert b"X-Cache: MISS" in reply  # what the http listener kept is not https's answer
    assert upstream.hits["/page"] == 2
