"""Attempts and answers: a backend's row counts every attempt sent to it, a service's (and a route's) every
answer its clients got, once. A connect failure retried on another backend is the dead backend's failure and
the service's success: the service's 5xx % is what its clients saw."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from lbtui.admin.metrics import render
from lbtui.admin.schema import snapshot_from_json, snapshot_json
from lbtui.config import parse_config
from lbtui.tui.format import status_line
from tests.conftest import make_config, wait_for
from tests.proxy.test_tcp import Client, EchoServer, tcp_config

REQUESTS = 20


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{wanted}}} in the metrics")


async def test_retried_connect_failures_are_the_backends_not_the_services(
    backends, engine_factory, closed_port
) -> None:
    good = await backends("good")
    config = make_config(
        [("dead", f"127.0.0.1:{closed_port()}"), good]
    )  # round robin: every other request tries dead
    engine = await engine_factory(config)
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        for _ in range(REQUESTS):
            assert (await http.get("/")).status_code == 200  # every client got its 200

    snapshot = engine.controller.snapshot()
    service = snapshot.service("app")
    dead, alive = snapshot.backend("dead"), snapshot.backend("good")
    # The service: one answer per request, all 2xx.
    assert service.window.error_ratio == 0.0
    assert service.window.errors == 0
    assert service.window.requests == REQUESTS
    assert service.requests == REQUESTS
    assert service.status_classes == (0, 0, REQUESTS, 0, 0, 0)
    # Its backends: the attempts. The dead one failed about half of the requests' first attempts.
    assert alive.status_classes[2] == REQUESTS
    assert dead.status_classes[0] == dead.requests == dead.connect_failures >= REQUESTS // 2 - 1
    assert dead.window.errors == dead.requests
    assert dead.window.error_ratio == 1.0
    # The dashboard's status line, the admin API and the metrics say the same.
    assert "│ 5xx 0.0% │" in status_line(snapshot)
    state = snapshot_json(snapshot)
    [service_json] = state["services"]
    assert service_json["requests"] == REQUESTS
    assert service_json["window"]["errors"] == 0
    assert service_json["status_classes"]["2xx"] == REQUESTS
    assert snapshot_json(snapshot_from_json(state), now=state["time"]) == state
    metrics = render(snapshot)
    assert sample(metrics, "lbtui_service_requests_total", service="app", code="2xx") == REQUESTS
    assert sample(metrics, "lbtui_service_requests_total", service="app", code="none") == 0
    assert sample(metrics, "lbtui_service_latency_seconds_count", service="app") == REQUESTS
    labels = {"service": "app", "backend": "dead", "group": "default"}
    assert sample(metrics, "lbtui_backend_requests_total", **labels, code="none") == dead.requests


async def test_a_service_counts_what_its_clients_got(backends, engine_factory, closed_port) -> None:
    """5xx from a backend, a 503 with no backend left, and a route's numbers: each answer once."""
    good = await backends("good")
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {
            "app": {
                "backends": [
                    {"name": "dead", "address": f"127.0.0.1:{closed_port()}"},
                    {"name": "good", "address": good.address},
                ]
            },
            "gone": {"backends": [{"name": "d2", "address": f"127.0.0.1:{closed_port()}"}]},
        },
        "routes": [
            {"name": "gone", "match": {"path_prefix": "/gone"}, "service": "gone"},
            {"name": "app", "match": {"path_prefix": "/"}, "service": "app"},
        ],
    }
    engine = await engine_factory(parse_config(data, source="<test>"))
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        for _ in range(4):
            assert (await http.get("/status/500")).status_code == 500
            assert (await http.get("/")).status_code == 200
        assert (await http.get("/gone")).status_code == 503  # its only backend refuses
    snapshot = engine.controller.snapshot()
    app, gone = snapshot.service("app"), snapshot.service("gone")
    assert app.status_classes == (0, 0, 4, 0, 0, 4)
    assert app.window.errors == 4
    assert app.window.error_ratio == pytest.approx(0.5)
    assert gone.status_classes == (0, 0, 0, 0, 0, 1)  # the client's 503
    assert snapshot.backend("d2").status_classes == (1, 0, 0, 0, 0, 0)  # the attempt: no status at all
    route = next(r for r in snapshot.routes if r.name == "app")
    assert route.status_classes == app.status_classes  # a route counts answers too


async def test_a_tcp_service_counts_each_connection_once(engine_factory, closed_port) -> None:
    echo = await EchoServer("e").start()
    try:
        engine = await engine_factory(
            tcp_config([("dead", f"127.0.0.1:{closed_port()}"), ("e", echo.address)])
        )
        for _ in range(4):
            client = await Client.connect(engine)
            assert await client.greeting() == "e"
            await client.close()
        await wait_for(lambda: not engine.tcp_connections, what="the connections to end")
        snapshot = engine.controller.snapshot()
        service = snapshot.service("db")
        assert service.status_classes == (0, 0, 4, 0, 0, 0)
        assert service.window.errors == 0
        assert snapshot.backend("dead").status_classes[0] >= 1  # its refused connects
    finally:
        await echo.stop()


async def test_an_aggregate_part_is_counted_once_for_its_service(
    backends, engine_factory, raw_client, closed_port
) -> None:
    good = await backends("good")
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {
            "users": {
                "backends": [
                    {"name": "dead", "address": f"127.0.0.1:{closed_port()}"},
                    {"name": "good", "address": good.address},
                ]
            }
        },
        "routes": [
            {
                "name": "agg",
                "match": {"path": "/agg"},
                "aggregate": [{"service": "users", "path": "/echo", "group": "u"}],
            }
        ],
    }
    engine = await engine_factory(parse_config(data, source="<test>"))
    client = await raw_client(engine.address())
    for _ in range(4):
        assert (await client.request("GET", "/agg")).status == 200
    snapshot = engine.controller.snapshot()
    users = snapshot.service("users")
    assert users.status_classes == (0, 0, 4, 0, 0, 0)
    assert users.window.errors == 0
    assert snapshot.backend("dead").status_classes[0] >= 1


async def test_attached_to_a_server_from_before_answers_were_counted(
    backends, engine_factory, closed_port
) -> None:
    """Its state has no service status_classes: the service's numbers are its backends' attempts, as it meant."""
    good = await backends("good")
    engine = await engine_factory(make_config([("dead", f"127.0.0.1:{closed_port()}"), good]))
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        for _ in range(4):
            assert (await http.get("/")).status_code == 200
    state = snapshot_json(engine.controller.snapshot())
    older = state["services"][0]
    del older["status_classes"]
    service = snapshot_from_json(state).service("app")
    dead = service.backends[0]
    assert service.status_classes == (dead.status_classes[0], 0, 4, 0, 0, 0)
