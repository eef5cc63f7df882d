"""Reload (lbtui/proxy/reload.py): a new config applied to a running engine, over real sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from lbtui.config import Config, parse_config
from lbtui.core.control import ReloadRefused
from lbtui.demo.backends import DemoBackend
from lbtui.proxy.engine import Engine
from tests.conftest import RawClient, wait_for

Backends = Callable[..., Awaitable[DemoBackend]]
EngineFactory = Callable[[Config], Awaitable[Engine]]


def config(
    backends: list[DemoBackend],
    *,
    listeners: list[dict[str, Any]] | None = None,
    routes: list[dict[str, Any]] | None = None,
    services: dict[str, Any] | None = None,
    **service: Any,
) -> Config:
    data: dict[str, Any] = {
        "listeners": listeners or [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {
            "app": {"backends": [{"name": b.name, "address": b.address} for b in backends], **service}
        },
    }
    if services:
        data["services"].update(services)
    if routes is not None:
        data["routes"] = routes
    return parse_config(data, source="<test>")


async def served_by(client: RawClient, path: str = "/") -> str:
    response = await client.request("GET", path)
    assert response.status == 200, response
    return str(response.header("X-Backend"))


def actors(engine: Engine) -> set[str]:
    return {event.actor for event in engine.controller.events(1000)}


async def test_add_remove_and_change_backends(backends: Backends, engine_factory: EngineFactory) -> None:
    a, b, c = await backends("a"), await backends("b"), await backends("c")
    engine = await engine_factory(config([a, b]))
    result = engine.reload(config([a, c]))
    assert "backend c: added" in " ".join(result.changes)
    assert any(line.startswith("backend b: removed") for line in result.changes)
    assert {event.actor for event in result.events} == {"reload"}
    assert sorted(engine.balancer.backends) == ["a", "c"]
    client = await RawClient.connect(engine.address())
    seen = {await served_by(client) for _ in range(6)}
    assert seen == {"a", "c"}
    # A changed address: the name stays, the new address serves.
    moved = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                "app": {
                    "backends": [{"name": "a", "address": a.address}, {"name": "c", "address": b.address}]
                }
            },
        },
        source="<test>",
    )
    result = engine.reload(moved)
    assert any("backend c: address" in line for line in result.changes)
    assert {await served_by(client) for _ in range(6)} == {"a", "b"}  # c's name, b's server
    await client.close()


async def test_weight_and_algorithm_change(backends: Backends, engine_factory: EngineFactory) -> None:
    a, b = await backends("a"), await backends("b")
    engine = await engine_factory(config([a, b]))
    new = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                "app": {
                    "algorithm": "least_connections",
                    "backends": [
                        {"name": "a", "address": a.address, "weight": 3},
                        {"name": "b", "address": b.address},
                    ],
                }
            },
        },
        source="<test>",
    )
    result = engine.reload(new)
    service = engine.balancer.services["app"]
    assert service.algorithm_name == "least_connections"
    assert engine.balancer.backends["a"].weight == 3
    assert any("algorithm round_robin -> least_connections" in line for line in result.changes)
    # Unchanged again: nothing to do.
    assert engine.reload(new).changes == []


async def test_runtime_changes_win(backends: Backends, engine_factory: EngineFactory) -> None:
    a, b = await backends("a"), await backends("b")
    engine = await engine_factory(config([a, b]))
    engine.controller.set_weight("a", 7, "ctl")
    new = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                "app": {
                    "backends": [
                        {"name": "a", "address": a.address, "weight": 2},
                        {"name": "b", "address": b.address, "weight": 5},
                    ]
                }
            },
        },
        source="<test>",
    )
    engine.reload(new)
    assert engine.balancer.backends["a"].weight == 7  # set by ctl: stays
    assert engine.balancer.backends["b"].weight == 5  # the config's: applies


async def test_route_change_and_route_stats_carry_over(
    backends: Backends, engine_factory: EngineFactory
) -> None:
    a, b = await backends("a"), await backends("b")
    two = {"other": {"backends": [{"name": "b", "address": b.address}]}}
    engine = await engine_factory(
        config([a], services=two, routes=[{"name": "all", "match": {"path_prefix": "/"}, "service": "app"}])
    )
    client = await RawClient.connect(engine.address())
    assert await served_by(client, "/x") == "a"
    stats = engine.balancer.route_stats["all"]
    routes = [
        {"name": "other", "match": {"path_prefix": "/other"}, "service": "other"},
        {"name": "all", "match": {"path_prefix": "/"}, "service": "app"},
    ]
    result = engine.reload(config([a], services=two, routes=routes))
    assert "route other: added" in result.changes
    assert engine.balancer.route_stats["all"] is stats
    assert stats.status_classes[2] == 1
    assert await served_by(client, "/other/1") == "b"  # the same connection, the new routes
    assert await served_by(client, "/x") == "a"
    await client.close()


async def test_service_added_and_removed(backends: Backends, engine_factory: EngineFactory) -> None:
    a, b = await backends("a"), await backends("b")
    engine = await engine_factory(config([a]))
    two = {"other": {"backends": [{"name": "b", "address": b.address}]}}
    routes = [
        {"name": "other", "match": {"path_prefix": "/other"}, "service": "other"},
        {"name": "all", "match": {"path_prefix": "/"}, "service": "app"},
    ]
    result = engine.reload(config([a], services=two, routes=routes))
    assert any(line.startswith("service other: added") for line in result.changes)
    client = await RawClient.connect(engine.address())
    assert await served_by(client, "/other") == "b"
    result = engine.reload(config([a]))
    assert any(line.startswith("service other: removed") for line in result.changes)
    assert "other" not in engine.balancer.services
    await wait_for(lambda: "b" not in engine.balancer.backends, what="b dropped")
    assert await served_by(client, "/other") == "a"  # one service, no routes: everything to it
    await client.close()


async def test_listener_kept_added_removed(backends: Backends, engine_factory: EngineFactory) -> None:
    a = await backends("a")
    engine = await engine_factory(config([a]))
    server = engine.listener_servers["web"]
    address = engine.address("web")
    client = await RawClient.connect(address)
    assert await served_by(client) == "a"
    two = [{"name": "web", "bind": "127.0.0.1:0"}, {"name": "more", "bind": "127.0.0.1:0"}]
    result = engine.reload(config([a], listeners=two))
    assert engine.listener_servers["web"] is server  # kept: the same socket
    assert engine.address("web") == address
    assert any(line.startswith("listener more: added") for line in result.changes)
    assert await served_by(client) == "a"  # the kept-alive connection still works
    other = await RawClient.connect(engine.address("more"))
    assert await served_by(other) == "a"
    # Removed: stops accepting; its idle connection closes; the kept listener goes on.
    more = engine.address("more")
    result = engine.reload(config([a]))
    assert any(line.startswith("listener more: removed") for line in result.changes)
    assert await other.is_closed()
    await other.close()
    assert "more" not in engine.addresses
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*more)
    assert await served_by(client) == "a"
    assert [view.name for view in engine.balancer.listeners] == ["web"]
    await client.close()


async def test_removed_listener_finishes_the_request_in_flight(
    backends: Backends, engine_factory: EngineFactory
) -> None:
    a = await backends("a")
    two = [{"name": "web", "bind": "127.0.0.1:0"}, {"name": "more", "bind": "127.0.0.1:0"}]
    engine = await engine_factory(config([a], listeners=two))
    client = await RawClient.connect(engine.address("more"))
    await client.send(b"GET /delay/300 HTTP/1.1\r\nHost: t\r\n\r\n")
    await wait_for(lambda: engine.in_flight() == 1, what="the request in flight")
    engine.reload(config([a]))
    response = await client.read_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert await client.is_closed()
    await client.close()


async def test_listener_moved_to_another_address(backends: Backends, engine_factory: EngineFactory) -> None:
    a = await backends("a")
    engine = await engine_factory(config([a]))
    old = engine.address("web")
    result = engine.reload(config([a], listeners=[{"name": "web", "bind": "127.0.0.1:0", "mode": "http"}]))
    assert result.changes == []  # the same listener: kept
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    result = engine.reload(config([a], listeners=[{"name": "web", "bind": f"127.0.0.1:{free}"}]))
    assert any(line.startswith("listener web: changed") for line in result.changes)
    assert engine.address("web") == ("127.0.0.1", free)
    client = await RawClient.connect(("127.0.0.1", free))
    assert await served_by(client) == "a"
    await client.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*old)


async def test_a_listener_that_cannot_bind_refuses_the_reload(
    backends: Backends, engine_factory: EngineFactory
) -> None:
    a, b = await backends("a"), await backends("b")
    engine = await engine_factory(config([a]))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        two = [{"name": "web", "bind": "127.0.0.1:0"}, {"name": "more", "bind": f"127.0.0.1:{port}"}]
        with pytest.raises(ReloadRefused) as refused:
            engine.reload(config([a, b], listeners=two))
    assert refused.value.issues[0].key_path == "listeners[1].bind"
    assert sorted(engine.balancer.backends) == ["a"]  # nothing changed
    assert "reload" not in actors(engine)
    client = await RawClient.connect(engine.address())
    assert await served_by(client) == "a"
    await client.close()


async def test_no_failed_request_under_load(backends: Backends, engine_factory: EngineFactory) -> None:
    """8 keep-alive clients x 300 requests while three reloads happen: every request succeeds."""
    a, b, c = await backends("a"), await backends("b"), await backends("c")
    routes = [{"name": "all", "match": {"path_prefix": "/"}, "service": "app"}]
    engine = await engine_factory(config([a, b], routes=routes))
    address = engine.address()
    clients, per_client = 8, 300
    done = [0] * clients
    failures: list[str] = []

    async def load(index: int) -> None:
        client = await RawClient.connect(address)
        try:
            for _ in range(per_client):
                response = await client.request("GET", "/x")
                if response.status != 200:
                    failures.append(f"{response.status} {response.body[:80]!r}")
                if response.closed:
                    await client.close()
                    client = await RawClient.connect(address)
                done[index] += 1
        finally:
            await client.close()

    async def reloads() -> None:
        total = clients * per_client
        steps = [
            config([a, b, c], routes=routes),  # a backend added
            config([b, c], routes=routes),  # one removed (drains)
            config(
                [b, c],
                routes=[
                    {"name": "x", "match": {"path_prefix": "/x"}, "service": "app"},
                    {"name": "all", "match": {"path_prefix": "/"}, "service": "app"},
                ],
            ),  # routes changed
        ]
        for n, step in enumerate(steps, start=1):
            await wait_for(lambda n=n: sum(done) >= total * n // 4, what=f"load before reload {n}")
            engine.reload(step)

    async with asyncio.timeout(60):
        await asyncio.gather(reloads(), *(load(i) for i in range(clients)))
    assert failures == []
    assert sum(done) == clients * per_client
    assert sorted(engine.balancer.services["app"].config.backends, key=lambda x: x.name)[0].name == "b"
    await wait_for(lambda: "a" not in engine.balancer.backends, what="a drained and dropped")
    assert engine.balancer.route_stats["x"].status_classes[2] > 0
