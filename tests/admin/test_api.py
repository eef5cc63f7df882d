"""The admin API over real sockets: every endpoint, its JSON, its errors, and its defences."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

import lbtui
from lbtui.admin.api import (
    MAX_BODY,
    AdminApi,
    AdminServer,
    AdminSetupError,
    HostPolicy,
    Request,
    same_origin,
    split_host,
    start_admin_server,
)
from lbtui.config import AdminConfig, Config, ConfigIssue, parse_config
from lbtui.core.control import Controller, ReloadRefused, ReloadResult
from lbtui.proxy.engine import Engine
from lbtui.serve import Runtime, ServeOptions
from tests.conftest import RawClient, wait_for

TOKEN = "s3cret-token"


def shop_config(addresses: dict[str, str] | None = None, split: dict[str, int] | None = None) -> Config:
    if addresses is None:
        addresses = {"blue-1": "127.0.0.1:1", "green-1": "127.0.0.1:2"}
        split = split or {"blue": 90, "green": 10}
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                "shop": {
                    **({"split": split} if split else {}),
                    "backends": [
                        {"name": name, "address": address, "group": name.split("-")[0]}
                        for name, address in addresses.items()
                    ],
                },
                "solo": {"backends": [{"name": "solo-1", "address": "127.0.0.1:3"}]},
            },
            "routes": [
                {"name": "solo", "match": {"path_prefix": "/solo"}, "service": "solo"},
                {"name": "shop", "match": {"path_prefix": "/"}, "service": "shop"},
            ],
        },
        source="<test>",
    )


class Admin:
    """An engine with the admin API in front of it, and a client that writes exact requests."""

    def __init__(self, engine: Engine, server: AdminServer) -> None:
        self.engine = engine
        self.server = server
        self.host, self.port = server.address
        self.clients: list[RawClient] = []

    @property
    def default_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def connect(self) -> RawClient:
        client = await RawClient.connect((self.host, self.port))
        self.clients.append(client)
        return client

    async def ask(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        client: RawClient | None = None,
    ) -> tuple[int, Any, Any]:
        """(status, JSON body, response) of one request; `headers` may drop Host by giving it None."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        sent = {"Host": self.default_host}
        if body is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        lines = [f"{method} {path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in sent.items() if v is not None]
        if data or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(data)}")
        client = client or await self.connect()
        await client.send(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        response = await client.read_response(head=method == "HEAD")
        ctype = response.header("content-type") or ""
        value = json.loads(response.body) if ctype.startswith("application/json") and response.body else None
        return response.status, value, response

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


@pytest.fixture
async def admin_factory(
    engine_factory: Callable[[Config], Awaitable[Engine]],
) -> AsyncIterator[Callable[..., Awaitable[Admin]]]:
    made: list[Admin] = []

    async def start(
        config: Config | None = None, token: str | None = None, header_timeout: float = 10.0
    ) -> Admin:
        engine = await engine_factory(config or shop_config())
        admin_config = AdminConfig(host="127.0.0.1", port=0, token_env="T" if token else None, enabled=True)
        server = AdminServer(engine.controller, admin_config, header_timeout, environ={"T": token or ""})
        await server.start()
        admin = Admin(engine, server)
        made.append(admin)
        return admin

    yield start
    for admin in made:
        await admin.close()
        await admin.server.stop()


@pytest.fixture
async def admin(admin_factory: Callable[..., Awaitable[Admin]]) -> Admin:
    return await admin_factory()


# -- reads --------------------------------------------------------------------------------------------------


async def test_the_api_says_who_it_is(admin: Admin) -> None:
    """`GET /api/v1/`: the identity a client asks for first (as Envoy's /server_info, HAProxy's show info)."""
    for path in ("/api/v1/", "/api/v1"):
        status, identity, response = await admin.ask("GET", path)
        assert status == 200, path
        assert identity == {
            "api": "lbtui-admin",
            "version": 1,
            "versions": [1],
            "lbtui": lbtui.__version__,
            "data_plane": lbtui.data_plane_build(),
            "pid": os.getpid(),
        }
        assert response.header("x-lbtui-admin") == "1"
    status, _, response = await admin.ask("HEAD", "/api/v1/")
    assert (status, response.header("x-lbtui-admin")) == (200, "1")
    status, _, response = await admin.ask("POST", "/api/v1/")
    assert (status, response.header("allow")) == (405, "GET, HEAD")


async def test_every_answer_carries_the_api_header(admin_factory: Callable[..., Awaitable[Admin]]) -> None:
    """Errors too: a client tells a refusal of lbtui's (a token, a Host) from another server's page."""
    admin = await admin_factory(token=TOKEN)
    token = {"Authorization": f"Bearer {TOKEN}"}
    answers = [
        await admin.ask("GET", "/api/v1/state", headers=token),  # 200
        await admin.ask("GET", "/api/v1/"),  # 401
        await admin.ask("GET", "/api/v1/", headers={"Host": "evil.example", **token}),  # 403
        await admin.ask("GET", "/nope", headers=token),  # 404
        await admin.ask("GET", "/api/v1/backends/blue-1/drain", headers=token),  # 405
        await admin.ask("PUT", "/api/v1/backends/blue-1/weight", raw=b"{", headers=token),  # 415
        await admin.ask("GET", "/metrics", headers=token),  # 200, text
    ]
    assert [status for status, _, _ in answers] == [200, 401, 403, 404, 405, 415, 200]
    assert all(response.header("x-lbtui-admin") == "1" for _, _, response in answers)
    client = await admin.connect()
    await client.send(b"GET /api/v1/state HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n")
    response = await client.read_response()
    assert (response.status, response.header("x-lbtui-admin")) == (400, "1")
    client = await admin.connect()
    await client.send(
        f"GET / HTTP/1.1\r\nHost: {admin.default_host}\r\nX-Big: {'a' * 20000}\r\n\r\n".encode()
    )
    response = await client.read_response()
    assert (response.status, response.header("x-lbtui-admin")) == (431, "1")


async def test_state_is_the_snapshot_as_documented_json(admin: Admin) -> None:
    status, state, response = await admin.ask("GET", "/api/v1/state")
    assert status == 200
    assert response.header("content-type") == "application/json"
    assert response.header("cache-control") == "no-store"
    assert state["version"] == 1
    assert [s["name"] for s in state["services"]] == ["shop", "solo"]
    shop = state["services"][0]
    assert shop["algorithm"] == "round_robin"
    assert shop["split"] == {"blue": 90, "green": 10}
    assert shop["groups"] == ["blue", "green"]
    assert {"rps", "p50_ms", "p90_ms", "p99_ms", "in_flight", "requests", "window", "ramp"} <= set(shop)
    blue = shop["backends"][0]
    assert blue["name"] == "blue-1"
    assert blue["group"] == "blue"
    assert blue["address"] == "127.0.0.1:1"
    assert (blue["admin_state"], blue["health"], blue["weight"], blue["in_flight"]) == ("ready", "up", 1, 0)
    assert blue["status_classes"] == {"failed": 0, "1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
    assert {"requests", "rps", "p50_ms", "p90_ms", "p99_ms", "drain_seconds", "removing"} <= set(blue)
    assert state["listeners"][0]["name"] == "web"
    assert [r["name"] for r in state["routes"]] == ["solo", "shop"]
    assert {"match", "target", "policies", "status_classes", "rejected", "cache", "window"} <= set(
        state["routes"][0]
    )


async def test_one_backend_and_one_service(admin: Admin) -> None:
    status, backend, _ = await admin.ask("GET", "/api/v1/backends/green-1")
    assert (status, backend["name"], backend["service"]) == (200, "green-1", "shop")
    status, service, _ = await admin.ask("GET", "/api/v1/services/solo")
    assert (status, service["name"], len(service["backends"])) == (200, "solo", 1)
    assert await admin.ask("GET", "/api/v1/backends/nope") == (
        404,
        {"error": "no backend named 'nope'"},
        any_,
    )
    status, body, _ = await admin.ask("GET", "/api/v1/services/nope")
    assert (status, body) == (404, {"error": "no service named 'nope'"})


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


any_ = _Any()


async def test_head_answers_headers_only(admin: Admin) -> None:
    status, _, response = await admin.ask("HEAD", "/api/v1/state")
    assert status == 200
    assert int(response.header("content-length") or 0) > 0
    assert response.body == b""


async def test_events_are_the_audit_log_newest_first(admin: Admin) -> None:
    await admin.ask("POST", "/api/v1/backends/blue-1/drain")
    await admin.ask("PUT", "/api/v1/backends/blue-1/weight", {"weight": 4})
    status, body, _ = await admin.ask("GET", "/api/v1/events?limit=1")
    assert status == 200
    assert [e["action"] for e in body["events"]] == ["weight"]
    status, body, _ = await admin.ask("GET", "/api/v1/events")
    assert [e["action"] for e in body["events"]] == ["weight", "state"]
    event = body["events"][1]
    assert set(event) == {"id", "time", "actor", "action", "target", "before", "after", "note", "text"}
    for bad in ("0", "x", "5000", ""):
        status, body, _ = await admin.ask("GET", f"/api/v1/events?limit={bad}")
        assert status == 400
        assert "limit must be" in body["error"]


async def test_metrics_are_prometheus_text(admin: Admin) -> None:
    status, _, response = await admin.ask("GET", "/metrics")
    assert status == 200
    assert (response.header("content-type") or "").startswith("text/plain; version=0.0.4")
    assert b"# TYPE" in response.body


# -- changes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "before", "after"),
    [("drain", "ready", "drain"), ("maint", "ready", "maint"), ("enable", "ready", "ready")],
)
async def test_state_changes_answer_their_audit_event(
    admin: Admin, action: str, before: str, after: str
) -> None:
    status, event, _ = await admin.ask("POST", f"/api/v1/backends/blue-1/{action}")
    assert status == 200
    assert (event["actor"], event["action"], event["target"]) == ("api", "state", "blue-1")
    assert (event["before"], event["after"]) == (before, after)
    assert admin.engine.balancer.backends["blue-1"].admin_state.value == after


async def test_the_actor_is_ctl_only_when_ctl_says_so(admin: Admin) -> None:
    _, event, _ = await admin.ask("POST", "/api/v1/backends/blue-1/drain", headers={"X-Lbtui-Actor": "ctl"})
    assert event["actor"] == "ctl"
    _, event, _ = await admin.ask(
        "POST", "/api/v1/backends/blue-1/maint", headers={"X-Lbtui-Actor": "health"}
    )
    assert event["actor"] == "api"  # a client cannot pose as the engine in the audit log


async def test_weight(admin: Admin) -> None:
    status, event, _ = await admin.ask("PUT", "/api/v1/backends/blue-1/weight", {"weight": 3})
    assert (status, event["before"], event["after"]) == (200, 1, 3)
    assert admin.engine.balancer.backends["blue-1"].weight == 3
    cases = [
        ({"weight": "3"}, 400, "'weight' must be a whole number, not a string"),
        ({"weight": True}, 400, "'weight' must be a whole number, not a boolean"),
        ({}, 400, "the body needs 'weight'"),
        ({"weight": 5000}, 400, "weight must be an integer from 0 to 1000, got 5000"),
    ]
    for body, code, message in cases:
        assert (await admin.ask("PUT", "/api/v1/backends/blue-1/weight", body))[:2] == (
            code,
            {"error": message},
        )
    status, body, _ = await admin.ask("PUT", "/api/v1/backends/nope/weight", {"weight": 1})
    assert (status, body) == (404, {"error": "no backend named 'nope'"})


async def test_bodies_must_be_a_json_object(admin: Admin) -> None:
    path = "/api/v1/backends/blue-1/weight"
    status, body, _ = await admin.ask(
        "PUT", path, raw=b'{"weight": 3', headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert body["error"].startswith("the body is not valid JSON: Expecting ',' delimiter at line 1 column 13")
    status, body, _ = await admin.ask("PUT", path, raw=b"[3]", headers={"Content-Type": "application/json"})
    assert (status, body) == (400, {"error": "the body must be a JSON object, not an array"})
    status, body, _ = await admin.ask(
        "PUT", path, raw=b"\xff\xfe", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    status, body, _ = await admin.ask(
        "PUT", path, raw=b'{"weight": 3}', headers={"Content-Type": "text/plain"}
    )
    assert status == 415
    assert "application/json" in body["error"]
    status, body, _ = await admin.ask("PUT", path)
    assert (status, body) == (400, {"error": "this request needs a JSON object body"})
    # A charset parameter is fine.
    status, _, _ = await admin.ask(
        "PUT", path, raw=b'{"weight": 2}', headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert status == 200


async def test_add_and_remove_a_backend(admin: Admin) -> None:
    body = {"name": "blue-2", "address": "127.0.0.1:4", "group": "blue", "weight": 2}
    status, event, response = await admin.ask("POST", "/api/v1/services/shop/backends", body)
    assert status == 201
    assert response.header("location") == "/api/v1/backends/blue-2"
    assert (event["action"], event["target"]) == ("add", "blue-2")
    assert event["after"] == {"service": "shop", "address": "127.0.0.1:4", "group": "blue", "weight": 2}
    status, got, _ = await admin.ask("GET", "/api/v1/backends/blue-2")
    assert (status, got["weight"], got["group"]) == (200, 2, "blue")

    status, err, _ = await admin.ask("POST", "/api/v1/services/shop/backends", body)
    assert (status, err) == (409, {"error": "a backend named 'blue-2' exists already"})
    status, err, _ = await admin.ask("POST", "/api/v1/services/nope/backends", body)
    assert status == 404
    assert err["error"].startswith("no service named 'nope'")
    status, err, _ = await admin.ask(
        "POST", "/api/v1/services/shop/backends", {"name": "x", "address": "nope"}
    )
    assert status == 400
    assert "address" in err["error"]
    status, err, _ = await admin.ask("POST", "/api/v1/services/shop/backends", {**body, "colour": "red"})
    assert (status, err) == (
        400,
        {"error": "unknown key 'colour' in the body (allowed: name, address, group, weight)"},
    )
    status, err, _ = await admin.ask("POST", "/api/v1/services/shop/backends", {"address": "127.0.0.1:5"})
    assert (status, err) == (400, {"error": "the body needs 'name'"})

    status, event, _ = await admin.ask("DELETE", "/api/v1/backends/blue-2")
    assert (status, event["action"], event["after"]) == (200, "remove", None)
    assert "blue-2" not in admin.engine.balancer.backends  # nothing in flight: gone at once
    status, err, _ = await admin.ask("DELETE", "/api/v1/backends/blue-2")
    assert status == 404


async def test_removing_a_backend_with_requests_in_flight_is_a_conflict_the_second_time(
    admin_factory: Callable[..., Awaitable[Admin]], backends: Any
) -> None:
    slow = await backends("slow")
    admin = await admin_factory(shop_config({"blue-1": slow.address}))
    async with httpx.AsyncClient(base_url=admin.engine.url(), timeout=10) as http:
        request = asyncio.create_task(http.get("/delay/400"))
        await wait_for(lambda: slow.in_flight == 1, what="the request to reach the backend")
        status, _, _ = await admin.ask("DELETE", "/api/v1/backends/blue-1")
        assert status == 200
        status, backend, _ = await admin.ask("GET", "/api/v1/backends/blue-1")
        assert (backend["removing"], backend["in_flight"], backend["admin_state"]) == (True, 1, "drain")
        status, err, _ = await admin.ask("DELETE", "/api/v1/backends/blue-1")
        assert (status, err) == (409, {"error": "backend 'blue-1' is being removed already"})
        status, err, _ = await admin.ask("POST", "/api/v1/backends/blue-1/enable")
        assert (status, err) == (409, {"error": "backend 'blue-1' is being removed"})
        assert (await request).status_code == 200


async def test_algorithm(admin: Admin) -> None:
    status, event, _ = await admin.ask("PUT", "/api/v1/services/shop/algorithm", {"algorithm": "ewma"})
    assert (status, event["before"], event["after"]) == (200, "round_robin", "ewma")
    status, err, _ = await admin.ask("PUT", "/api/v1/services/shop/algorithm", {"algorithm": "fastest"})
    assert status == 400
    assert err["error"].startswith("'fastest' is not an algorithm (round_robin, ")
    status, err, _ = await admin.ask("PUT", "/api/v1/services/shop/algorithm", {"algorithm": 3})
    assert (status, err) == (400, {"error": "'algorithm' must be a string, not a number"})
    status, _, _ = await admin.ask("PUT", "/api/v1/services/nope/algorithm", {"algorithm": "ewma"})
    assert status == 404


async def test_split_and_flip(admin: Admin) -> None:
    status, event, _ = await admin.ask("PUT", "/api/v1/services/shop/split", {"blue": 50, "green": 50})
    assert (status, event["before"], event["after"]) == (
        200,
        {"blue": 90, "green": 10},
        {"blue": 50, "green": 50},
    )
    status, event, _ = await admin.ask("PUT", "/api/v1/services/shop/split", {"blue": 70, "green": 30})
    status, event, _ = await admin.ask("POST", "/api/v1/services/shop/flip")
    assert (status, event["action"], event["after"]) == (200, "flip", {"blue": 30, "green": 70})
    status, err, _ = await admin.ask("PUT", "/api/v1/services/shop/split", {"red": 10})
    assert (status, err) == (400, {"error": "service 'shop' has no group 'red' (groups: blue, green)"})
    status, err, _ = await admin.ask("PUT", "/api/v1/services/shop/split", {"blue": "10"})
    assert (status, err) == (400, {"error": "split weight for 'blue' must be a whole number, not a string"})
    status, err, _ = await admin.ask("POST", "/api/v1/services/solo/flip")
    assert (status, err) == (409, {"error": "service 'solo' needs a split of exactly two groups to flip"})
    status, _, _ = await admin.ask("POST", "/api/v1/services/nope/flip")
    assert status == 404


async def test_names_are_percent_decoded(admin: Admin) -> None:
    status, _, _ = await admin.ask("GET", "/api/v1/backends/blue%2D1")
    assert status == 200


# -- methods and paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/v1/backends/blue-1/drain", "POST"),
        ("GET", "/api/v1/backends/blue-1/weight", "PUT"),
        ("PUT", "/api/v1/backends/blue-1/enable", "POST"),
        ("HEAD", "/api/v1/services/shop/flip", "POST"),
        ("POST", "/api/v1/state", "GET, HEAD"),
        ("DELETE", "/api/v1/events", "GET, HEAD"),
        ("POST", "/api/v1/backends/blue-1", "GET, DELETE, HEAD"),
        ("GET", "/api/v1/services/shop/backends", "POST"),
    ],
)
async def test_a_known_path_with_another_method_is_405_with_allow(
    admin: Admin, method: str, path: str, allow: str
) -> None:
    status, body, response = await admin.ask(method, path)
    assert status == 405
    assert response.header("allow") == allow
    if method != "HEAD":
        assert body == {"error": f"{method} is not allowed here (allowed: {allow})"}
    assert admin.engine.balancer.backends["blue-1"].admin_state.value == "ready"  # nothing changed


async def test_unknown_paths_are_404(admin: Admin) -> None:
    for path in ("/", "/api", "/api/v2", "/api/v2/state", "/api/v1/backends//drain", "/api/v1/reloads"):
        status, body, _ = await admin.ask("GET", path)
        assert status == 404, path
        assert body["error"].startswith("no such endpoint")


async def test_keep_alive_serves_requests_in_order(admin: Admin) -> None:
    client = await admin.connect()
    for _ in range(3):
        status, _, _ = await admin.ask("GET", "/api/v1/state", client=client)
        assert status == 200
    assert not client.closed


# -- defences ------------------------------------------------------------------------------------------------


async def test_a_token_is_required_when_configured(admin_factory: Callable[..., Awaitable[Admin]]) -> None:
    admin = await admin_factory(token=TOKEN)
    status, body, response = await admin.ask("GET", "/api/v1/state")
    assert status == 401
    assert response.header("www-authenticate") == 'Bearer realm="lbtui"'
    assert "token" in body["error"]
    for wrong in ("Bearer nope", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", "Bearer "):
        status, _, _ = await admin.ask("GET", "/api/v1/state", headers={"Authorization": wrong})
        assert status == 401, wrong
    # A refused change changes nothing, and unknown paths say nothing without the token either.
    status, _, _ = await admin.ask("POST", "/api/v1/backends/blue-1/drain")
    assert status == 401
    assert admin.engine.balancer.backends["blue-1"].admin_state.value == "ready"
    status, _, _ = await admin.ask("GET", "/nope")
    assert status == 401
    status, _, _ = await admin.ask("GET", "/api/v1/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    status, _, _ = await admin.ask("GET", "/api/v1/state", headers={"Authorization": f"bearer  {TOKEN}"})
    assert status == 200


async def test_a_token_variable_that_is_not_set_refuses_to_start(engine_factory: Any) -> None:
    engine = await engine_factory(shop_config())
    config = AdminConfig(host="127.0.0.1", port=0, token_env="LBTUI_TEST_UNSET_TOKEN", enabled=True)
    with pytest.raises(AdminSetupError, match="LBTUI_TEST_UNSET_TOKEN"):
        AdminServer(engine.controller, config, environ={})


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example", 403),
        ("evil.example:9901", 403),
        ("127.0.0.1.nip.io", 403),
        ("localhost", 200),
        ("LOCALHOST:9901", 200),
        ("127.0.0.1", 200),
        ("127.0.0.2:1", 200),
        ("[::1]:9901", 200),
        ("10.0.0.1", 403),  # not the bind address, and the bind is not a wildcard
    ],
)
async def test_host_must_be_loopback_or_the_bind_address(admin: Admin, host: str, status: int) -> None:
    got, body, _ = await admin.ask("GET", "/api/v1/state", headers={"Host": host})
    assert got == status
    if status == 403:
        assert "is not this admin API's" in body["error"]


async def test_a_request_without_host_is_refused(admin: Admin) -> None:
    status, body, _ = await admin.ask("GET", "/api/v1/state", headers={"Host": None})  # type: ignore[dict-item]
    assert (status, body) == (400, {"error": "a Host header is required"})


def test_host_policy_on_a_wildcard_bind_takes_addresses_but_no_names() -> None:
    policy = HostPolicy("0.0.0.0")
    assert policy.allows("10.1.2.3")
    assert policy.allows("localhost")
    assert not policy.allows("evil.example")
    assert HostPolicy("admin.internal").allows("admin.internal")
    assert not HostPolicy("10.0.0.5").allows("10.0.0.6")
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("a:b:c") is None
    assert split_host("host:99999") is None


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("http://evil.example", 403),
        ("null", 403),
        ("https://127.0.0.1:{port}", 403),
        ("http://127.0.0.1:1", 403),
        ("http://localhost:{port}", 403),  # another origin than the Host's, though both are loopback
        ("http://127.0.0.1:{port}", 200),
    ],
)
async def test_cross_origin_requests_are_refused(admin: Admin, origin: str, status: int) -> None:
    origin = origin.format(port=admin.port)
    got, body, _ = await admin.ask("POST", "/api/v1/backends/blue-1/drain", headers={"Origin": origin})
    assert got == status
    if status == 403:
        assert body["error"] == f"cross-origin requests are refused (Origin {origin!r})"
        assert admin.engine.balancer.backends["blue-1"].admin_state.value == "ready"


def test_same_origin_takes_the_default_port() -> None:
    assert same_origin("http://localhost", ("localhost", 80))
    assert same_origin("http://localhost:80", ("localhost", None))
    assert not same_origin("http://localhost:[", ("localhost", None))


async def test_a_body_over_the_limit_is_413_and_closes(admin: Admin) -> None:
    client = await admin.connect()
    await client.send(
        (
            f"PUT /api/v1/backends/blue-1/weight HTTP/1.1\r\nHost: {admin.default_host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
        ).encode()
    )
    response = await client.read_response()
    assert response.status == 413
    assert json.loads(response.body) == {"error": f"the body is over {MAX_BODY} bytes"}
    assert await client.is_closed()


async def test_a_chunked_body_over_the_limit_is_413(admin: Admin) -> None:
    client = await admin.connect()
    chunk = b"x" * 8192
    head = (
        f"PUT /api/v1/services/shop/split HTTP/1.1\r\nHost: {admin.default_host}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    await client.send(head + (b"2000\r\n" + chunk + b"\r\n") * (MAX_BODY // 8192 + 1))
    response = await client.read_response()
    assert response.status == 413
    assert await client.is_closed()


async def test_a_head_over_the_limit_is_431(admin: Admin) -> None:
    client = await admin.connect()
    await client.send(
        f"GET /api/v1/state HTTP/1.1\r\nHost: {admin.default_host}\r\nX-Big: {'a' * 20000}\r\n\r\n".encode()
    )
    response = await client.read_response()
    assert response.status == 431
    assert await client.is_closed()


async def test_a_slow_request_is_408(admin_factory: Callable[..., Awaitable[Admin]]) -> None:
    admin = await admin_factory(header_timeout=0.2)
    client = await admin.connect()
    await client.send(b"GET /api/v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    response = await client.read_response(timeout=5)
    assert response.status == 408
    assert await client.is_closed()
    idle = await admin.connect()
    assert await idle.is_closed(timeout=5)  # an idle connection is closed too, without a word


async def test_malformed_requests_are_400(admin: Admin) -> None:
    client = await admin.connect()
    await client.send(b"GET /api/v1/state HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n")
    response = await client.read_response()
    assert response.status == 400
    assert await client.is_closed()


class _Broken(Controller):
    """A controller whose every call fails as a bug would."""

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("__"):
            return object.__getattribute__(self, name)
        raise RuntimeError("boom: a secret detail")


_Broken.__abstractmethods__ = frozenset()  # type: ignore[misc]


def test_an_unexpected_error_is_500_without_details(caplog: pytest.LogCaptureFixture) -> None:
    api = AdminApi(_Broken())
    response = api.handle(Request("GET", "/api/v1/state", {"host": "127.0.0.1"}))
    assert response.status == 500
    assert json.loads(response.body) == {"error": "internal error"}
    assert "boom" in caplog.text  # logged for the operator, never sent to the client


async def test_stop_closes_open_connections(admin_factory: Callable[..., Awaitable[Admin]]) -> None:
    admin = await admin_factory()
    client = await admin.connect()
    status, _, _ = await admin.ask("GET", "/api/v1/state", client=client)
    assert status == 200
    await admin.server.stop()
    assert await client.is_closed()
    with pytest.raises(ConnectionRefusedError):
        await RawClient.connect((admin.host, admin.port))


# -- the runtime starts and stops it ---------------------------------------------------------------------------


def _with_admin(bind: str, **admin: Any) -> Config:
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "admin": {"bind": bind, **admin},
            "services": {"shop": {"backends": [{"name": "blue-1", "address": "127.0.0.1:1"}]}},
        },
        source="<test>",
    )


async def test_the_runtime_runs_the_admin_api_when_configured() -> None:
    said: list[str] = []
    options = ServeOptions(config=_with_admin("127.0.0.1:0"), grace=1.0, admin_server=start_admin_server)
    runtime = Runtime(options, said.append)
    assert await runtime.start()
    try:
        assert runtime.admin is not None
        host, port = runtime.admin.address
        assert port != 0
        runtime.announce()
        assert f"admin API on http://127.0.0.1:{port}" in said
        async with httpx.AsyncClient(base_url=runtime.admin.url) as http:
            response = await http.post("/api/v1/backends/blue-1/drain")
            assert response.json()["after"] == "drain"
    finally:
        await runtime.stop()
    assert runtime.admin is None
    with pytest.raises(ConnectionRefusedError):
        await RawClient.connect((host, port))


async def test_the_runtime_says_why_when_the_admin_port_is_taken() -> None:
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = taken.sockets[0].getsockname()[1]
    said: list[str] = []
    try:
        options = ServeOptions(config=_with_admin(f"127.0.0.1:{port}"), admin_server=start_admin_server)
        runtime = Runtime(options, said.append)
        assert not await runtime.start()
        assert runtime.engine is None
        assert any(m.startswith(f"cannot listen for the admin API on 127.0.0.1:{port}") for m in said), said
    finally:
        taken.close()


async def test_a_runtime_given_no_admin_api_says_so_rather_than_run_without_it() -> None:
    """lbtui.serve never imports the admin API: the command line hands it in (ServeOptions.admin_server)."""
    said: list[str] = []
    runtime = Runtime(ServeOptions(config=_with_admin("127.0.0.1:0")), said.append)
    assert not await runtime.start()
    assert runtime.engine is None
    assert any(m.startswith("cannot start the admin API: ") for m in said), said


async def test_no_admin_section_no_admin_api() -> None:
    config = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {"shop": {"backends": [{"name": "b", "address": "127.0.0.1:1"}]}},
        },
        source="<test>",
    )
    runtime = Runtime(ServeOptions(config=config, grace=1.0), lambda _: None)
    assert await runtime.start()
    assert runtime.admin is None
    await runtime.stop()


# -- what `lbtui attach` needs ---------------------------------------------------------------------------------


async def test_events_since_an_id_are_only_the_newer_ones(admin: Admin) -> None:
    await admin.ask("POST", "/api/v1/backends/blue-1/drain")
    _, body, _ = await admin.ask("GET", "/api/v1/events")
    first = body["events"][0]["id"]
    await admin.ask("POST", "/api/v1/backends/blue-1/enable")
    _, body, _ = await admin.ask("GET", f"/api/v1/events?since={first}")
    assert [(e["id"], e["after"]) for e in body["events"]] == [(first + 1, "ready")]
    status, body, _ = await admin.ask("GET", "/api/v1/events?since=-1")
    assert status == 400
    assert "since must be a whole number of 0 or more" in body["error"]


async def test_requests_are_the_access_log_tail(admin: Admin) -> None:
    status, body, _ = await admin.ask("GET", "/api/v1/requests?limit=5")
    assert (status, body) == (200, {"requests": []})
    status, body, _ = await admin.ask("GET", "/api/v1/requests?limit=0")
    assert status == 400


async def test_the_key_actor_is_taken_and_others_are_api(admin: Admin) -> None:
    _, event, _ = await admin.ask("POST", "/api/v1/backends/blue-1/drain", headers={"X-Lbtui-Actor": "key"})
    assert event["actor"] == "key"
    _, event, _ = await admin.ask(
        "POST", "/api/v1/backends/blue-1/enable", headers={"X-Lbtui-Actor": "health"}
    )
    assert event["actor"] == "api"


async def test_undo_ramp_and_drain_then_maint(admin: Admin) -> None:
    status, body, _ = await admin.ask("POST", "/api/v1/undo")
    assert (status, body) == (409, {"error": "nothing to undo"})
    await admin.ask("PUT", "/api/v1/backends/blue-1/weight", {"weight": 4})
    status, event, _ = await admin.ask("POST", "/api/v1/undo")
    assert (status, event["actor"], event["action"], event["after"]) == (200, "undo", "weight", 1)
    status, event, _ = await admin.ask("POST", "/api/v1/services/shop/ramp")
    assert (status, event["action"]) == (200, "ramp")
    assert (await admin.ask("POST", "/api/v1/services/shop/ramp"))[0] == 409  # one is under way
    status, event, _ = await admin.ask("DELETE", "/api/v1/services/shop/ramp")
    assert (status, event["after"]) == (200, {"blue": 90, "green": 10})
    assert (await admin.ask("DELETE", "/api/v1/services/shop/ramp"))[0] == 409
    assert (await admin.ask("POST", "/api/v1/services/nope/ramp"))[0] == 404
    status, event, _ = await admin.ask("POST", "/api/v1/backends/green-1/drain-then-maint")
    assert (status, event["after"]) == (200, "drain")
    await wait_for(lambda: admin.engine.controller.snapshot().backend("green-1").admin_state == "maint")


async def test_reload_answers_what_the_runtime_says(admin: Admin) -> None:
    status, body, _ = await admin.ask("POST", "/api/v1/reload")
    assert (status, body) == (409, {"error": "this instance has no config file to reload"})
    status, _, response = await admin.ask("GET", "/api/v1/reload")
    assert (status, response.header("allow")) == (405, "POST")
    refused = {
        "error": "lbtui.toml: 1 problem(s); nothing changed, the running config stays",
        "issues": [
            {"file": "lbtui.toml", "key_path": "services.app.algorithm", "message": "no", "hint": None}
        ],
    }

    def refuse() -> ReloadResult:
        raise ReloadRefused([ConfigIssue("lbtui.toml", "services.app.algorithm", "no")])

    admin.engine.controller.reloader = refuse  # what the runtime sets (lbtui/serve.py)
    assert (await admin.ask("POST", "/api/v1/reload"))[:2] == (400, refused)
    admin.engine.controller.reloader = lambda: ReloadResult("lbtui.toml", changes=["backend b: added"])
    assert (await admin.ask("POST", "/api/v1/reload"))[:2] == (
        200,
        {
            "source": "lbtui.toml",
            "summary": "reloaded lbtui.toml: 1 change",
            "changes": ["backend b: added"],
            "restart_needed": [],
            "warnings": [],
            "events": [],
        },
    )


# -- after review: floods, lockouts, odd input ------------------------------------------------------------


async def test_a_pipelined_flood_is_cut_off(admin: Admin) -> None:
    """ctl and attach never pipeline: a connection that sends many requests in one go without reading the
    answers is answered a few times, then closed, so it holds neither the engine's loop nor memory."""
    reader, writer = await asyncio.open_connection(admin.host, admin.port)
    one = f"GET /api/v1/state HTTP/1.1\r\nHost: {admin.default_host}\r\n\r\n".encode()
    writer.write(one * 500)
    received = await asyncio.wait_for(reader.read(), 10)  # until the server closes
    writer.close()
    assert received.count(b"HTTP/1.1 200 OK") == 8  # MAX_PIPELINED
    status, _, _ = await admin.ask("GET", "/api/v1/state")  # the API goes on for everyone else
    assert status == 200


async def test_silent_connections_cannot_lock_the_api_out(admin: Admin) -> None:
    from lbtui.admin.api import MAX_CONNECTIONS

    held = [await asyncio.open_connection(admin.host, admin.port) for _ in range(MAX_CONNECTIONS)]
    await wait_for(lambda: len(admin.server.connections) == MAX_CONNECTIONS, what="all held")
    status, _, _ = await admin.ask("GET", "/api/v1/state")  # an idle one made room
    assert status == 200
    for _, writer in held:
        writer.close()


async def test_odd_numbers_are_400_not_500(admin: Admin) -> None:
    status, _, _ = await admin.ask("GET", "/api/v1/events?limit=%C2%B2")  # "²" is a digit to str.isdigit
    assert status == 400
    status, _, _ = await admin.ask("GET", "/api/v1/state", headers={"Host": "127.0.0.1:\u00b2"})
    assert status in (400, 403)
    path = "/api/v1/backends/blue-1/weight"
    for raw in (b'{"weight": ' + b"9" * 5000 + b"}", b"[" * 30000):
        status, body, _ = await admin.ask("PUT", path, raw=raw, headers={"Content-Type": "application/json"})
        assert status == 400, body
