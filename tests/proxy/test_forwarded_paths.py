"""Who the client is (X-Forwarded-For and trusted_proxies) and which path it asked for (normalisation).

Routing, hashing and the request the backend gets all use the one normalised path; an X-Forwarded-For is
believed only from a peer in the listener's trusted_proxies.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from lbtui.config import ConfigError, parse_config
from lbtui.http import TrustedProxies, normalize_target
from tests.conftest import make_config


def forwarded_config(backends: list[Any], trusted: list[str], algorithm: str = "round_robin") -> Any:
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0", "trusted_proxies": trusted}],
            "services": {
                "app": {
                    "algorithm": algorithm,
                    "backends": [{"name": b.name, "address": b.address} for b in backends],
                }
            },
        },
        source="<test>",
    )


def seen_headers(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


# -- X-Forwarded-For -----------------------------------------------------------------------------------


async def test_forwarded_for_from_an_untrusted_client_is_replaced(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(forwarded_config([b1], ["10.0.0.0/8"]))  # 127.0.0.1 is not trusted
    client = await raw_client(engine.address())
    r = await client.request("GET", "/echo", {"X-Forwarded-For": "6.6.6.6", "X-Real-Thing": "x"})
    assert r.status == 200
    assert seen_headers(r.body)["x-forwarded-for"] == "127.0.0.1"
    assert engine.controller.recent_requests(1)[0].client == "127.0.0.1"


async def test_forwarded_for_from_a_trusted_proxy_is_kept_and_names_the_client(
    backends, engine_factory, raw_client
):
    b1 = await backends("b1")
    engine = await engine_factory(forwarded_config([b1], ["127.0.0.0/8", "10.0.0.0/8"]))
    client = await raw_client(engine.address())
    # A chain: the client 203.0.113.7, then an inner proxy 10.1.2.3 (trusted), then us via 127.0.0.1.
    r = await client.request("GET", "/echo", {"X-Forwarded-For": "203.0.113.7, 10.1.2.3"})
    assert seen_headers(r.body)["x-forwarded-for"] == "203.0.113.7, 10.1.2.3, 127.0.0.1"
    assert engine.controller.recent_requests(1)[0].client == "203.0.113.7"
    # A forged left-most entry does not win over the first untrusted one from the right.
    r = await client.request("GET", "/echo", {"X-Forwarded-For": "1.1.1.1, 198.51.100.9"})
    assert engine.controller.recent_requests(1)[0].client == "198.51.100.9"
    # Without the header, the client is the peer itself.
    r = await client.request("GET", "/echo")
    assert seen_headers(r.body)["x-forwarded-for"] == "127.0.0.1"
    assert engine.controller.recent_requests(1)[0].client == "127.0.0.1"


async def test_ip_hash_uses_the_client_a_trusted_proxy_names(backends, engine_factory, raw_client):
    bs = [await backends(f"h{i}") for i in range(4)]
    engine = await engine_factory(forwarded_config(bs, ["127.0.0.1"], algorithm="ip_hash"))
    client = await raw_client(engine.address())
    chosen: dict[str, set[str]] = {}
    for i in range(40):
        address = f"192.0.2.{i % 8}"
        r = await client.request("GET", "/echo", {"X-Forwarded-For": address})
        chosen.setdefault(address, set()).add(json.loads(r.body)["backend"])
    assert all(len(names) == 1 for names in chosen.values()), chosen  # each client sticks
    assert len(set().union(*chosen.values())) > 1  # and clients are spread: the header is the key


async def test_ip_hash_ignores_an_untrusted_forwarded_for(backends, engine_factory, raw_client):
    bs = [await backends(f"u{i}") for i in range(4)]
    engine = await engine_factory(forwarded_config(bs, [], algorithm="ip_hash"))
    client = await raw_client(engine.address())
    names = set()
    for i in range(20):
        r = await client.request("GET", "/echo", {"X-Forwarded-For": f"192.0.2.{i}"})
        names.add(json.loads(r.body)["backend"])
    assert len(names) == 1  # all from 127.0.0.1, whatever the header says


def test_trusted_proxies_chain_rules() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "::1/128"])
    for address in (b"10.2.3.4", b"::1", b"::ffff:10.0.0.1"):
        assert trusted.contains(address)
    for address in (b"11.0.0.1", b"garbage", b""):
        assert not trusted.contains(address)
    assert trusted.client_address(None, b"10.0.0.1") == b"10.0.0.1"
    assert trusted.client_address(b"5.5.5.5, 10.0.0.9", b"10.0.0.1") == b"5.5.5.5"
    assert trusted.client_address(b"10.0.0.7, 10.0.0.9", b"10.0.0.1") == b"10.0.0.7"  # all trusted: left-most
    assert trusted.client_address(b"unknown", b"10.0.0.1") == b"unknown"


def test_trusted_proxies_must_be_networks() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "listeners": [{"bind": "127.0.0.1:0", "trusted_proxies": ["10.0.0.0/8", "ten"]}],
                "services": {"a": {"backends": [{"name": "x", "address": "127.0.0.1:1"}]}},
            },
            source="t.toml",
        )
    assert "listeners[0].trusted_proxies[1]" in str(info.value)
    assert "not an IP address or network" in str(info.value)


# -- path normalisation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "normal"),
    [
        (b"/a/b", b"/a/b"),
        (b"/a/./b", b"/a/b"),
        (b"/a/../b", b"/b"),
        (b"/../../x", b"/x"),
        (b"/a//b///c", b"/a/b/c"),
        (b"/%2e%2e/admin", b"/admin"),
        (b"/a/%2E/b", b"/a/b"),
        (b"/a/.%2e/b", b"/b"),
        (b"/%41%7e%2d", b"/A~-"),
        (b"/a%2fb", b"/a%2Fb"),  # an encoded slash stays encoded: a segment, not a separator
        (b"/a%2Fb/../c", b"/c"),
        (b"/sp%20ace", b"/sp%20ace"),
        (b"/a/..", b"/"),
        (b"/a/.", b"/a/"),
        (b"/.well-known/x", b"/.well-known/x"),
        (b"/x?next=//../y", b"/x?next=//../y"),  # the query is not a path
        (b"/a/b/..?q=1", b"/a/?q=1"),
    ],
)
def test_normalize_target(target: bytes, normal: bytes) -> None:
    assert normalize_target(target) == normal
    assert normalize_target(normal) == normal  # idempotent


@pytest.mark.parametrize("target", [b"/%", b"/%4", b"/%zz", b"/a%g1", b"/%%41"])
def test_broken_percent_encoding_is_refused_by_normalize_target(target: bytes) -> None:
    assert normalize_target(target) is None


def routed_config(admin: Any, public: Any) -> Any:
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                "admin": {"backends": [{"name": admin.name, "address": admin.address}]},
                "public": {"backends": [{"name": public.name, "address": public.address}]},
            },
            "routes": [
                {"name": "admin", "match": {"path_prefix": "/echo/admin"}, "service": "admin"},
                {"name": "public", "match": {"path_prefix": "/"}, "service": "public"},
            ],
        },
        source="<test>",
    )


@pytest.mark.parametrize(
    ("target", "backend", "url"),
    [
        (b"/echo/admin/x", "adm", "/echo/admin/x"),
        (b"/echo/public/../admin/x", "adm", "/echo/admin/x"),
        (b"/echo/public/%2e%2e/admin/x", "adm", "/echo/admin/x"),
        (b"/echo/public/%2E%2E/admin/x", "adm", "/echo/admin/x"),
        (b"//echo//admin/x", "adm", "/echo/admin/x"),
        (b"/echo/./admin/x?y=1", "adm", "/echo/admin/x?y=1"),
        (b"/echo/%61dmin/x", "adm", "/echo/admin/x"),
        # An encoded slash (%2F, %5C): tests/proxy/test_normalisation.py (listener escaped_slashes).
        (b"/echo/admin/../public", "pub", "/echo/public"),
    ],
)
async def test_routing_and_forwarding_use_the_same_normalised_path(
    backends, engine_factory, raw_client, target, backend, url
):
    adm, pub = await backends("adm"), await backends("pub")
    engine = await engine_factory(routed_config(adm, pub))
    client = await raw_client(engine.address())
    await client.send(b"GET " + target + b" HTTP/1.1\r\nHost: test.local\r\n\r\n")
    r = await client.read_response()
    assert r.status == 200
    seen = json.loads(r.body)
    assert (seen["backend"], seen["url"]) == (backend, url)


async def test_broken_percent_encoding_gets_400_and_reaches_no_backend(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    client = await raw_client(engine.address())
    await client.send(b"GET /echo/%zz HTTP/1.1\r\nHost: test.local\r\n\r\n")
    r = await client.read_response()
    assert r.status == 400
    assert b"%-encoding" in r.body
    assert await client.is_closed()
    assert engine.balancer.backends["b1"].requests == 0


def test_trusted_proxies_on_a_tcp_listener_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.trusted_proxies: only used by http listeners"):
        parse_config(
            {
                "listeners": [
                    {"bind": "127.0.0.1:0", "mode": "tcp", "service": "a", "trusted_proxies": ["10.0.0.0/8"]}
                ],
                "services": {"a": {"backends": [{"name": "x", "address": "127.0.0.1:1"}]}},
            },
            source="t.toml",
        )
