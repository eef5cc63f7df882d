"""Rate limits through real sockets: 429 with Retry-After and RateLimit-*, keys, and the bypasses that fail."""

from __future__ import annotations

import hashlib

from lbtui.config import RateLimitConfig, parse_config
from lbtui.gateway.ratelimit import TokenBuckets

KEY = "alice-key"


def limited_config(backend, limit: dict, trusted: list[str] | None = None, auth: bool = False):
    route = {"name": "login", "match": {"path_prefix": "/echo/login"}, "service": "app", "rate_limit": limit}
    if auth:
        route["auth"] = {"type": "api_key"}
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0", "trusted_proxies": trusted or []}],
            "services": {"app": {"backends": [{"name": backend.name, "address": backend.address}]}},
            "consumers": [
                {"name": "alice", "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()},
                {"name": "bob", "api_key_sha256": hashlib.sha256(b"bob-key").hexdigest()},
            ],
            "routes": [route, {"name": "rest", "match": {"path_prefix": "/"}, "service": "app"}],
        },
        source="<test>",
    )


async def ask(client, path: str, headers: dict[str, str] | None = None):
    lines = [f"GET {path} HTTP/1.1", "Host: test.local", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    await client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    return await client.read_response()


async def test_the_bucket_runs_out_then_429_with_retry_after(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(limited_config(b, {"rate": 3, "per": "1m"}))
    client = await raw_client(engine.address())
    seen = [await ask(client, "/echo/login") for _ in range(4)]
    assert [r.status for r in seen] == [200, 200, 200, 429]
    assert [r.header("ratelimit-remaining") for r in seen] == ["2", "1", "0", "0"]
    assert all(r.header("ratelimit-limit") == "3" for r in seen)
    refused = seen[-1]
    assert 1 <= int(refused.header("retry-after")) <= 20  # one token comes back every 20 s
    assert refused.header("ratelimit-reset") == refused.header("retry-after")
    assert b.requests == 3
    assert (await ask(client, "/echo/other")).status == 200  # other routes are not limited
    assert (await ask(client, "/echo/other")).header("ratelimit-limit") is None


async def test_spellings_of_the_path_share_one_bucket(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(limited_config(b, {"rate": 4, "per": "1m"}))
    client = await raw_client(engine.address())
    statuses = [
        (await ask(client, path)).status
        for path in ("/echo/login", "/echo/login/", "//echo//login", "/echo/./login", "/echo/%6cogin")
    ]
    assert statuses == [200, 200, 200, 200, 429]


async def test_the_case_of_the_path_does_not_escape_the_bucket(backends, engine_factory, raw_client):
    """Routes ignore the case of letters in the path unless `case_sensitive`: `/ECHO/Login` is the same route
    (and bucket) as `/echo/login`, where a backend that ignores case would otherwise serve it unlimited."""
    b = await backends("b")
    engine = await engine_factory(limited_config(b, {"rate": 3, "per": "1m"}))
    client = await raw_client(engine.address())
    statuses = [
        (await ask(client, path)).status
        for path in ("/echo/LOGIN", "/ECHO/Login/", "/echo/%4cogin", "/echo/login")
    ]
    assert statuses == [200, 200, 200, 429]
    assert engine.controller.snapshot().routes[0].status_classes[2] == 3


async def test_rotating_x_forwarded_for_does_not_escape_the_bucket(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(limited_config(b, {"rate": 2, "per": "1m"}))
    client = await raw_client(engine.address())
    statuses = [
        (await ask(client, "/echo/login", {"X-Forwarded-For": f"10.0.0.{i}"})).status for i in range(4)
    ]
    assert statuses == [200, 200, 429, 429]


async def test_behind_a_trusted_proxy_each_client_has_its_own_bucket(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(limited_config(b, {"rate": 1, "per": "1m"}, trusted=["127.0.0.1"]))
    client = await raw_client(engine.address())
    assert (await ask(client, "/echo/login", {"X-Forwarded-For": "198.51.100.1"})).status == 200
    assert (await ask(client, "/echo/login", {"X-Forwarded-For": "198.51.100.2"})).status == 200
    assert (await ask(client, "/echo/login", {"X-Forwarded-For": "198.51.100.1"})).status == 429


async def test_per_consumer_and_per_header_keys(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(limited_config(b, {"rate": 1, "per": "1m", "key": "consumer"}, auth=True))
    client = await raw_client(engine.address())
    assert (await ask(client, "/echo/login", {"X-API-Key": KEY})).status == 200
    assert (await ask(client, "/echo/login", {"X-API-Key": "bob-key"})).status == 200
    assert (await ask(client, "/echo/login", {"X-API-Key": KEY})).status == 429
    assert (await ask(client, "/echo/login", {"X-API-Key": "wrong"})).status == 401  # auth comes first

    other = await engine_factory(limited_config(b, {"rate": 1, "per": "1m", "key": "header:X-Tenant"}))
    client = await raw_client(other.address())
    assert (await ask(client, "/echo/login", {"X-Tenant": "a"})).status == 200
    assert (await ask(client, "/echo/login", {"X-Tenant": "b"})).status == 200
    assert (await ask(client, "/echo/login", {"x-tenant": "a"})).status == 429


async def test_a_consumer_can_have_a_limit_of_its_own(backends, engine_factory, raw_client):
    b = await backends("b")
    limit = {"rate": 1, "per": "1m", "key": "client_ip", "consumers": {"alice": {"rate": 3, "burst": 3}}}
    engine = await engine_factory(limited_config(b, limit, auth=True))
    client = await raw_client(engine.address())
    alice = [await ask(client, "/echo/login", {"X-API-Key": KEY}) for _ in range(4)]
    assert [r.status for r in alice] == [200, 200, 200, 429]
    assert alice[0].header("ratelimit-limit") == "3"
    bob = [await ask(client, "/echo/login", {"X-API-Key": "bob-key"}) for _ in range(2)]
    assert [r.status for r in bob] == [200, 429]  # the route's own limit, in a bucket alice does not share
    assert bob[0].header("ratelimit-limit") == "1"


def test_token_bucket_refills_at_its_rate_up_to_burst():
    buckets = TokenBuckets(RateLimitConfig(rate=10, per=1.0, burst=5))
    now = 100.0
    assert [buckets.take(b"k", now)[0] for _ in range(6)] == [True] * 5 + [False]
    allowed, _, retry = buckets.take(b"k", now)
    assert not allowed
    assert retry == 1
    assert buckets.take(b"k", now + 0.1)[0]  # 10 per second: one token after 0.1 s
    assert not buckets.take(b"k", now + 0.1)[0]
    assert [buckets.take(b"k", now + 60)[0] for _ in range(6)] == [True] * 5 + [False]  # never above burst
    assert buckets.take(b"other", now)[0]  # keys are separate
    buckets.sweep(now + 600)
    assert buckets.buckets == {}  # refilled buckets are forgotten
