"""API-key auth through real sockets: 401s, the consumer passed upstream, the key never forwarded or kept."""

from __future__ import annotations

import hashlib
import json
import timeit

from lbtui.config import ConsumerConfig, parse_config
from lbtui.gateway.auth import ApiKeys

ALICE = "alice-key-0123456789"
BOB = "bob-key-9876543210"


def keyed_config(backend, environ_name: str | None = None):
    consumers = [{"name": "alice", "api_key_sha256": hashlib.sha256(ALICE.encode()).hexdigest()}]
    if environ_name:
        consumers.append({"name": "bob", "api_key_env": environ_name})
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {"app": {"backends": [{"name": backend.name, "address": backend.address}]}},
            "consumers": consumers,
            "routes": [
                {
                    "name": "api",
                    "match": {"path_prefix": "/echo/api"},
                    "service": "app",
                    "auth": {"type": "api_key"},
                },
                {"name": "open", "match": {"path_prefix": "/"}, "service": "app"},
            ],
        },
        source="<test>",
    )


async def ask(
    client, path: str, headers: dict[str, str] | None = None, method: str = "GET", body: bytes = b""
):
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: test.local",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    await client.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return await client.read_response()


def upstream_headers(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


async def test_a_valid_key_passes_and_the_backend_learns_the_consumer(
    backends, engine_factory, raw_client, monkeypatch
):
    monkeypatch.setenv("BOB_KEY", BOB)
    b = await backends("b")
    engine = await engine_factory(keyed_config(b, "BOB_KEY"))
    client = await raw_client(engine.address())
    for key, name in ((ALICE, "alice"), (BOB, "bob")):
        r = await ask(client, "/echo/api/x", {"X-API-Key": key, "X-Consumer": "admin"})
        assert r.status == 200
        seen = upstream_headers(r.body)
        assert seen["x-consumer"] == name  # the client's own X-Consumer was dropped
        assert "x-api-key" not in seen  # the key itself is not passed on
        assert key not in r.body.decode()


async def test_missing_wrong_or_doubled_keys_get_401_and_reach_nothing(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(keyed_config(b))
    client = await raw_client(engine.address())
    for headers in ({}, {"X-API-Key": "nope"}, {"X-API-Key": ALICE.upper()}, {"X-API-Key": ""}):
        r = await ask(client, "/echo/api/x", headers)
        assert r.status == 401, headers
        assert r.header("www-authenticate") == 'ApiKey header="x-api-key"'
    # Two keys (one good) are refused: which one counts would be a guess.
    await client.send(
        f"GET /echo/api/x HTTP/1.1\r\nHost: t\r\nX-API-Key: nope\r\nX-API-Key: {ALICE}\r\n\r\n".encode()
    )
    assert (await client.read_response()).status == 401
    assert engine.balancer.backends["b"].requests == 0
    # A 401 to a request with a body closes the connection: the body is never read as a request.
    other = await raw_client(engine.address())
    r = await ask(other, "/echo/api/x", {}, method="POST", body=b"GET /echo/open HTTP/1.1\r\nHost: t\r\n\r\n")
    assert r.status == 401
    assert await other.is_closed()
    assert engine.balancer.backends["b"].requests == 0


async def test_routes_without_auth_drop_a_forged_consumer(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(keyed_config(b))
    client = await raw_client(engine.address())
    r = await ask(client, "/echo/open", {"X-Consumer": "alice", "X-API-Key": "whatever"})
    assert r.status == 200
    seen = upstream_headers(r.body)
    assert "x-consumer" not in seen
    assert seen["x-api-key"] == "whatever"  # only an auth route takes the key away


async def test_keys_are_never_in_the_access_log_or_snapshot(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(keyed_config(b))
    client = await raw_client(engine.address())
    await ask(client, "/echo/api/x", {"X-API-Key": ALICE})
    shown = repr(engine.controller.recent_requests(10)) + repr(engine.controller.snapshot())
    assert ALICE not in shown
    assert hashlib.sha256(ALICE.encode()).hexdigest() not in shown


def test_the_comparison_takes_the_same_time_whichever_key():
    keys = ApiKeys(
        [ConsumerConfig(f"c{i}", api_key_sha256=hashlib.sha256(b"k%d" % i).hexdigest()) for i in range(50)]
    )
    assert keys.consumer(b"k7") == b"c7"
    assert keys.consumer(b"k49") == b"c49"
    assert keys.consumer(b"zz") is None
    first = min(timeit.repeat(lambda: keys.consumer(b"k0"), number=200, repeat=5))
    last = min(timeit.repeat(lambda: keys.consumer(b"k49"), number=200, repeat=5))
    none = min(timeit.repeat(lambda: keys.consumer(b"zz"), number=200, repeat=5))
    # Every digest is compared every time: the first consumer's key costs what the last's and no key's do.
    assert 0.5 < first / last < 2.0
    assert 0.5 < first / none < 2.0


async def test_route_numbers_count_answers_and_refusals_by_reason(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(keyed_config(b))
    client = await raw_client(engine.address())
    await ask(client, "/echo/api/x", {"X-API-Key": ALICE})
    await ask(client, "/echo/api/x", {"X-API-Key": ALICE})
    await ask(client, "/echo/api/x", {"X-API-Key": "wrong"})
    await ask(client, "/echo/open")
    view = {r.name: r for r in engine.controller.snapshot().routes}
    api, rest = view["api"], view["open"]
    assert api.status_classes[2] == 2
    assert api.status_classes[4] == 1
    assert api.rejected == (("auth", 1),)
    assert api.window is not None
    assert api.window.requests == 3
    assert rest.status_classes[2] == 1
    assert rest.rejected == ()


async def test_the_access_log_names_the_route_and_the_consumer(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(keyed_config(b))
    client = await raw_client(engine.address())
    await ask(client, "/echo/api/x", {"X-API-Key": ALICE})
    await ask(client, "/echo/api/x", {"X-API-Key": "wrong"})
    await ask(client, "/echo/open")
    newest = engine.controller.recent_requests(3)
    assert [(r.route, r.consumer, r.status) for r in newest] == [
        ("open", "", 200),
        ("api", "", 401),
        ("api", "alice", 200),
    ]


async def test_a_keep_alive_connection_is_checked_on_every_request(backends, engine_factory, raw_client):
    b = await backends("b")
    engine = await engine_factory(keyed_config(b))
    client = await raw_client(engine.address())
    statuses = []
    for key in (ALICE, ALICE, "wrong", ALICE[:-1], ALICE):
        statuses.append((await ask(client, "/echo/api/x", {"X-API-Key": key})).status)
        if statuses[-1] == 401:
            client = await raw_client(engine.address())
    assert statuses == [200, 200, 401, 401, 200]
    r = await ask(client, "/echo/api/y", {"X-API-Key": ALICE, "X-Consumer": "forged"})
    seen = upstream_headers(r.body)
    assert seen["x-consumer"] == "alice"
    assert "x-api-key" not in seen
