"""Sticky sessions (`sticky = { cookie = "NAME" }`) through real sockets: HAProxy's `cookie NAME insert indirect
nocache`. The first response sets the cookie, later requests with it stay on its backend whatever the
algorithm, the backend never sees it, and it moves only when its backend cannot or may not take it."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trustme

from lbtui.admin.api import AdminServer
from lbtui.admin.schema import snapshot_from_json, snapshot_json
from lbtui.config import AdminConfig, Config, parse_config
from lbtui.core.algorithms import ALGORITHMS
from lbtui.core.control import ReloadRefused
from lbtui.core.model import sticky_value
from lbtui.proxy.engine import Engine
from tests.conftest import RawClient, RawResponse, wait_for

COOKIE = "lbtui_srv"


def config(
    backends: list[Any],
    *,
    sticky: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    listener: dict[str, Any] | None = None,
    **service: Any,
) -> Config:
    entries = []
    for b in backends:
        if isinstance(b, dict):
            entries.append(b)
        else:
            entries.append({"name": b.name, "address": b.address})
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", **(listener or {})}],
        "services": {"app": {"backends": entries, "sticky": sticky or {"cookie": COOKIE}, **service}},
    }
    if routes is not None:
        data["routes"] = routes
    return parse_config(data, source="<test>")


def cookie_of(response: RawResponse) -> str | None:
    """The value our Set-Cookie gives (None: the response sets none)."""
    for value in response.header_all("Set-Cookie"):
        name, _, rest = value.partition("=")
        if name == COOKIE:
            return rest.split(";", 1)[0]
    return None


async def get(client: RawClient, path: str = "/", cookie: str | None = None) -> RawResponse:
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie is not None else {}
    response = await client.request("GET", path, headers)
    assert response.status == 200, response
    return response


def value_for(engine: Engine, backend: str) -> str:
    """The cookie value that names `backend` (what a response from it sets)."""
    service = engine.balancer.services["app"]
    value = service.sticky_value_of(engine.balancer.backends[backend])
    assert value is not None
    return value.decode()


async def session(client: RawClient, backend: str, engine: Engine, tries: int = 30) -> str:
    """A session on `backend`, begun the way a browser begins one: requests without a cookie until one of
    them is answered by `backend`, and the cookie that answer sets."""
    for _ in range(tries):
        response = await get(client)
        if response.header("X-Backend") == backend:
            value = cookie_of(response)
            assert value is not None
            return value
    raise AssertionError(f"no request went to {backend} in {tries} tries")


async def test_the_first_response_sets_the_cookie_and_the_session_stays(backends, engine_factory, raw_client):
    # Names that are not hex: "b1" turned up inside a random 24-hex-digit value about one run in ten.
    bs = [await backends(f"srv{i}") for i in range(3)]
    engine = await engine_factory(config(bs))
    client = await raw_client(engine.address())
    first = await get(client, "/echo")
    backend = first.header("X-Backend")
    value = cookie_of(first)
    assert value is not None
    assert first.header_all("Set-Cookie") == [f"{COOKIE}={value}; Path=/; HttpOnly"]
    assert first.header("Cache-Control") == "private"  # nocache: no shared cache hands it to others
    # Opaque: nothing of the backend's name or address is in it.
    assert re.fullmatch(r"[0-9a-f]{24}", value)
    served = next(b for b in bs if b.name == backend)
    assert not any(part in value for part in (served.name, served.host, str(served.port)))
    # Round robin would move it at once: 30 requests (on this connection and on new ones) all stay, and none
    # sets the cookie again.
    seen: Counter[str] = Counter()
    for i in range(30):
        other = client if i % 2 else await raw_client(engine.address())
        response = await get(other, "/", value)
        seen[response.header("X-Backend") or ""] += 1
        assert response.header("Set-Cookie") is None
        assert response.header("Cache-Control") is None
    assert seen == {backend: 30}
    # Without it, round robin goes on as before, and each answer starts a session on its own backend.
    spread = {(r.header("X-Backend"), cookie_of(r)) for r in [await get(client) for _ in range(6)]}
    assert len({b for b, _ in spread}) == 3
    assert len({v for _, v in spread}) == 3  # one value per backend
    assert (backend, value) in spread  # the same value for the same backend
    view = engine.controller.snapshot()
    assert view.backend(backend or "").sticky_requests == 30
    assert sum(b.sticky_cookies for b in view.service("app").backends) == 7
    assert view.service("app").sticky == COOKIE


ROUTES = {
    "none": None,
    "route": [{"match": {"path_prefix": "/"}, "service": "app"}],
    "rewriting route": [
        {
            "match": {"path_prefix": "/api"},
            "service": "app",
            "strip_prefix": "/api",
            "request_headers": {"set": {"X-Gateway": "lbtui"}},
        }
    ],
}


@pytest.mark.parametrize("routes", ROUTES)
async def test_the_backend_never_sees_the_cookie(backends, engine_factory, raw_client, routes):
    b1 = await backends("b1")
    engine = await engine_factory(config([b1], routes=ROUTES[routes]))
    client = await raw_client(engine.address())
    prefix = "/api" if routes == "rewriting route" else ""
    value = value_for(engine, "b1")
    cases = [
        ([f'a=1; {COOKIE}={value}; b="x y"'], ['a=1; b="x y"']),
        ([f"{COOKIE}={value}"], []),  # nothing left: no Cookie field at all
        ([f'{COOKIE}="{value}"'], []),  # quoted, as RFC 6265 allows
        (["a=1", f"{COOKIE}={value}; c=3"], ["a=1", "c=3"]),  # two fields, each kept apart
        ([f"x{COOKIE}=1; {COOKIE}2=2;{COOKIE}={value}"], [f"x{COOKIE}=1; {COOKIE}2=2"]),  # only ours goes
        ([f"{COOKIE.upper()}=1"], [f"{COOKIE.upper()}=1"]),  # cookie names are case-sensitive: not ours
        (["plain=1;;  spaced = 2 "], ["plain=1;;  spaced = 2 "]),  # without ours: as it came
    ]
    for sent, expected in cases:
        lines = "".join(f"Cookie: {line}\r\n" for line in sent)
        await client.send(f"GET {prefix}/echo HTTP/1.1\r\nHost: test.local\r\n{lines}\r\n".encode())
        response = await client.read_response()
        assert response.status == 200
        seen = [v for n, v in json.loads(response.body)["headers"] if n.lower() == "cookie"]
        assert seen == expected, sent
        assert value not in json.dumps(json.loads(response.body))
        ours = f"{COOKIE}={value}" in "; ".join(sent) or f'"{value}"' in "; ".join(sent)
        assert (cookie_of(response) is None) == ours, sent  # a session on b1 already: not set again


async def test_a_drain_keeps_its_sessions_and_takes_no_new_ones(backends, engine_factory, raw_client):
    bs = [await backends(f"b{i}") for i in range(3)]
    engine = await engine_factory(config(bs))
    client = await raw_client(engine.address())
    value = await session(client, "b1", engine)
    engine.controller.drain("b1")
    for _ in range(12):
        response = await get(client, "/", value)
        assert response.header("X-Backend") == "b1"  # a drain takes requests bound to it (HAProxy's meaning)
        assert cookie_of(response) is None
    newcomers = {(await get(client)).header("X-Backend") for _ in range(12)}
    assert newcomers == {"b0", "b2"}
    assert engine.controller.snapshot().backend("b1").sticky_requests == 12


def checked_config(bs: list[Any]) -> Config:
    return config(
        bs,
        health={"path": "/healthz", "interval": "50ms", "timeout": "50ms", "rise": 1, "fall": 1},
        outlier={"consecutive_5xx": 1, "max_ejected_percent": 50},
    )


@pytest.mark.parametrize("how", ["maint", "down", "ejected", "removed"])
async def test_a_session_moves_when_its_backend_cannot_take_it(backends, engine_factory, raw_client, how):
    bs = [await backends(f"b{i}") for i in range(3)]
    engine = await engine_factory(checked_config(bs))
    client = await raw_client(engine.address())
    await wait_for(lambda: all(b.checks for b in engine.controller.snapshot().service("app").backends))
    value = await session(client, "b1", engine)
    if how == "maint":
        engine.controller.maint("b1")
    elif how == "down":
        bs[1].healthy = False
        await wait_for(lambda: engine.controller.snapshot().backend("b1").health == "down")
    elif how == "ejected":
        failed = await client.request("GET", "/status/500", {"Cookie": f"{COOKIE}={value}"})
        assert failed.status == 500
        assert failed.header("X-Backend") == "b1"
        assert engine.controller.snapshot().backend("b1").health == "ejected"
    else:
        engine.controller.remove_backend("b1")
    moved = await get(client, "/", value)
    new_backend = moved.header("X-Backend")
    new_value = cookie_of(moved)
    assert new_backend in ("b0", "b2")
    assert new_value is not None
    assert new_value != value
    assert moved.header_all("Set-Cookie") == [f"{COOKIE}={new_value}; Path=/; HttpOnly"]
    for _ in range(8):  # the new session stays where it went
        response = await get(client, "/", new_value)
        assert response.header("X-Backend") == new_backend
        assert cookie_of(response) is None
    service = engine.controller.snapshot().service("app")
    assert service.sticky_moved + service.sticky_unknown == 1


async def test_a_backend_back_in_service_takes_its_sessions_again(backends, engine_factory, raw_client):
    bs = [await backends(f"b{i}") for i in range(2)]
    engine = await engine_factory(config(bs))
    client = await raw_client(engine.address())
    value = value_for(engine, "b1")
    engine.controller.maint("b1")
    for _ in range(3):
        assert (await get(client, "/", value)).header("X-Backend") == "b0"
    engine.controller.enable("b1")
    # A client that kept the old cookie (it ignored the new one) is back on b1: its value names b1 still.
    for _ in range(6):
        response = await get(client, "/", value)
        assert response.header("X-Backend") == "b1"
        assert cookie_of(response) is None


async def test_a_cookie_that_names_no_backend_is_not_trusted(backends, engine_factory, raw_client):
    bs = [await backends(f"b{i}") for i in range(3)]
    engine = await engine_factory(config(bs))
    client = await raw_client(engine.address())
    b2 = engine.balancer.backends["b2"]
    right = value_for(engine, "b2")
    forged = [
        "garbage",
        "",
        "b2",  # a name
        b2.address,  # an address
        sticky_value(b"a key lbtui does not have", "app", "b2", b2.address).decode(),  # another key
        right[:-1] + ("1" if right.endswith("0") else "0"),  # almost right
        sticky_value(b"x", "other", "b2", b2.address).decode(),
    ]
    for value in forged:
        response = await get(client, "/", value)
        assert cookie_of(response) is not None, value  # picked as any new client, and told where it went
        assert cookie_of(response) == value_for(engine, response.header("X-Backend") or "")
    assert engine.controller.snapshot().service("app").sticky_unknown == len(forged)
    # The backend the forged values wanted took no more than round robin's share.
    assert engine.controller.snapshot().backend("b2").sticky_requests == 0


async def test_values_are_stable_with_a_secret_and_per_process_without(
    backends, engine_factory, raw_client, monkeypatch
):
    b1 = await backends("b1")
    monkeypatch.setenv("LBTUI_TEST_STICKY_KEY", "s3cret-s3cret-s3cret")
    keyed = config([b1], sticky={"cookie": COOKIE, "secret_env": "LBTUI_TEST_STICKY_KEY"})
    first = await engine_factory(keyed)
    value = cookie_of(await get(await raw_client(first.address())))
    await first.shutdown(grace=0.0)
    # A restart with the same key: the session goes on (as with HAProxy's dynamic-cookie-key).
    second = await engine_factory(keyed)
    client = await raw_client(second.address())
    assert cookie_of(await get(client, "/", value)) is None
    assert second.controller.snapshot().backend("b1").sticky_requests == 1
    # A reload while the variable is gone is refused (another key would move every session), as a start is.
    monkeypatch.delenv("LBTUI_TEST_STICKY_KEY")
    with pytest.raises(ReloadRefused, match=r"services\.app\.sticky\.secret_env: the environment variable"):
        second.reload(keyed)
    assert cookie_of(await get(client, "/", value)) is None
    # Without a secret: a key of this process, not the secret's.
    plain = await engine_factory(config([b1]))
    plain_value = cookie_of(await get(await raw_client(plain.address())))
    assert plain_value not in (None, value)
    # A reload keeps the process's key: sessions survive it.
    plain.reload(config([b1], max_connections=10))
    assert cookie_of(await get(await raw_client(plain.address()), "/", plain_value)) is None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_stickiness_comes_before_every_algorithm(backends, engine_factory, raw_client, algorithm):
    bs = [await backends(f"b{i}") for i in range(3)]
    extra = {"hash_key": "header:X-User"} if algorithm == "consistent_hash" else {}
    engine = await engine_factory(config(bs, algorithm=algorithm, **extra))
    client = await raw_client(engine.address())
    for b in bs:
        value = value_for(engine, b.name)
        for i in range(10):
            cookie = f"{COOKIE}={value}"
            response = await client.request("GET", "/", {"Cookie": cookie, "X-User": f"user{i}"})
            assert response.header("X-Backend") == b.name
            assert cookie_of(response) is None


async def test_split_moves_a_session_only_when_its_group_has_no_share(backends, engine_factory, raw_client):
    bs = [await backends(name) for name in ("blue-1", "blue-2", "green-1")]
    entries = [
        {"name": "blue-1", "address": bs[0].address, "group": "blue"},
        {"name": "blue-2", "address": bs[1].address, "group": "blue"},
        {"name": "green-1", "address": bs[2].address, "group": "green"},
    ]
    engine = await engine_factory(config(entries, split={"blue": 100, "green": 0}))
    control = engine.controller
    client = await raw_client(engine.address())
    blue = await session(client, "blue-1", engine)
    for step in ({"blue": 75, "green": 25}, {"blue": 50, "green": 50}):  # a ramp's steps: both have a share
        control.set_split("app", step)
        for _ in range(10):
            assert (await get(client, "/", blue)).header("X-Backend") == "blue-1"
    green = await session(client, "green-1", engine)  # new sessions follow the split
    control.set_split("app", {"blue": 0, "green": 100})  # the ramp's end: blue has no share left
    moved = await get(client, "/", blue)
    assert moved.header("X-Backend") == "green-1"
    assert cookie_of(moved) == green  # told where it is now
    assert cookie_of(await get(client, "/", green)) is None  # green's sessions stay
    control.flip("app")  # blue 100, green 0: green's sessions move back
    back = await get(client, "/", green)
    assert back.header("X-Backend") in ("blue-1", "blue-2")
    assert cookie_of(back) is not None
    assert control.snapshot().service("app").sticky_moved == 2


async def test_a_session_on_the_backup_group_goes_home(backends, engine_factory, raw_client):
    bs = [await backends(name) for name in ("main-1", "dr-1")]
    entries = [
        {"name": "main-1", "address": bs[0].address, "group": "main"},
        {"name": "dr-1", "address": bs[1].address, "group": "dr"},
    ]
    engine = await engine_factory(config(entries, backup_group="dr"))
    client = await raw_client(engine.address())
    engine.controller.maint("main-1")
    dr = await session(client, "dr-1", engine)
    assert (await get(client, "/", dr)).header("X-Backend") == "dr-1"
    engine.controller.enable("main-1")  # the backup group serves only while no other group can
    home = await get(client, "/", dr)
    assert home.header("X-Backend") == "main-1"
    assert cookie_of(home) == value_for(engine, "main-1")


async def test_a_retry_on_another_backend_sets_the_cookie_again(backends, engine_factory, raw_client):
    bs = [await backends(f"b{i}") for i in range(2)]
    engine = await engine_factory(config(bs))
    client = await raw_client(engine.address())
    value = await session(client, "b1", engine)
    await bs[1].stop()  # b1 is gone: connecting fails, and the request goes to b0
    response = await get(await raw_client(engine.address()), "/", value)
    assert response.header("X-Backend") == "b0"
    assert cookie_of(response) == value_for(engine, "b0")


async def test_a_session_waits_for_its_own_backend_at_max_connections(backends, engine_factory, raw_client):
    bs = [await backends(f"b{i}") for i in range(2)]
    engine = await engine_factory(config(bs, max_connections=1))
    b0, b1 = value_for(engine, "b0"), value_for(engine, "b1")
    view = engine.controller.snapshot

    async def fetch(path: str, cookie: str | None) -> RawResponse:
        return await get(await raw_client(engine.address()), path, cookie)

    # Both backends busy: b1 for a long time, b0 for a shorter one.
    long = asyncio.ensure_future(fetch("/delay/900", b1))
    short = asyncio.ensure_future(fetch("/delay/300", b0))
    await wait_for(lambda: view().backend("b0").in_flight == 1 and view().backend("b1").in_flight == 1)
    sticky = asyncio.ensure_future(fetch("/", b1))  # waits for b1 (HAProxy's server queue)
    await wait_for(lambda: view().service("app").queue_length == 1)
    plain = asyncio.ensure_future(fetch("/", None))  # waits for any backend
    await wait_for(lambda: view().service("app").queue_length == 2)
    # b0 is free first: the plain request takes it; the session at the head of the queue is passed over.
    first = await plain
    assert first.header("X-Backend") == "b0"
    assert not sticky.done()
    assert (await sticky).header("X-Backend") == "b1"
    assert cookie_of(await sticky) is None
    assert long.done()
    assert (await short).header("X-Backend") == "b0"


# -- the route's cache and nocache ------------------------------------------------------------------------


async def test_the_cache_never_keeps_our_cookie_and_keeps_groups_apart(backends, engine_factory, raw_client):
    bs = [await backends(name) for name in ("blue-1", "green-1")]
    entries = [
        {"name": "blue-1", "address": bs[0].address, "group": "blue"},
        {"name": "green-1", "address": bs[1].address, "group": "green"},
    ]
    routes = [{"match": {"path_prefix": "/"}, "service": "app", "cache": {"ttl": "60s"}}]
    engine = await engine_factory(config(entries, routes=routes, split={"blue": 50, "green": 50}))
    client = await raw_client(engine.address())
    first = await get(client, "/page")
    assert first.header("X-Cache") == "MISS"
    assert cookie_of(first) is not None
    assert first.header("Cache-Control") == "private"
    origin = first.header("X-Backend")
    # A client without a session gets the kept response: no backend chose it, so no cookie is set, and what
    # was kept has neither our Set-Cookie nor the Cache-Control: private that went with it.
    hit = await get(await raw_client(engine.address()), "/page")
    assert hit.header("X-Cache") == "HIT"
    assert hit.header("X-Backend") == origin
    assert hit.header("Set-Cookie") is None
    assert hit.header("Cache-Control") is None
    # A session gets its own group's answer, never the other group's kept one.
    for backend in ("green-1", "blue-1"):
        value = value_for(engine, backend)
        for expected in ("MISS", "HIT", "HIT"):
            response = await get(client, "/page", value)
            assert response.header("X-Cache") == expected
            assert response.header("X-Backend") == backend
            assert response.header("Set-Cookie") is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", ["private"]),
        ("Cache-Control: max-age=60\r\n", ["max-age=60", "private"]),
        ("Cache-Control: public, max-age=60\r\n", ["public, max-age=60", "private"]),
        ("Cache-Control: no-store\r\n", ["no-store"]),
        ("Cache-Control: private, max-age=5\r\n", ["private, max-age=5"]),
        ("Cache-Control: no-cache\r\n", ["no-cache"]),
    ],
)
async def test_a_response_that_sets_the_cookie_is_private(
    scripted, engine_factory, raw_client, extra, expected
):
    async def script(reader, writer, up):
        while True:
            await up.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                + f"Set-Cookie: app=1; Path=/\r\nSet-Cookie: {COOKIE}=chosen-by-the-backend\r\n{extra}".encode()
                + b"\r\nok"
            )
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(config([{"name": "s1", "address": up.address}]))
    client = await raw_client(engine.address())
    first = await get(client)
    value = cookie_of(first)
    assert value == value_for(engine, "s1")
    # The backend's own cookie of our name is dropped (it would choose for the client); its others stay.
    assert first.header_all("Set-Cookie") == ["app=1; Path=/", f"{COOKIE}={value}; Path=/; HttpOnly"]
    assert first.header_all("Cache-Control") == expected
    again = await get(client, "/", value)
    assert again.header_all("Set-Cookie") == ["app=1; Path=/"]  # not set again, and the backend's still not
    kept = expected[:1] if extra else []  # the backend's own Cache-Control, and nothing of ours
    assert again.header_all("Cache-Control") == kept


# -- attributes ---------------------------------------------------------------------------------------------


async def test_cookie_attributes(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    cases = [
        ({"same_site": "lax"}, "; Path=/; HttpOnly; SameSite=Lax"),
        ({"same_site": "none"}, "; Path=/; HttpOnly; Secure; SameSite=None"),  # None needs Secure
        ({"secure": True, "max_age": "1h"}, "; Path=/; HttpOnly; Secure; Max-Age=3600"),
        ({"same_site": "strict", "max_age": 90}, "; Path=/; HttpOnly; SameSite=Strict; Max-Age=90"),
    ]
    for extra, attributes in cases:
        engine = await engine_factory(config([b1], sticky={"cookie": COOKIE, **extra}))
        response = await get(await raw_client(engine.address()))
        assert response.header_all("Set-Cookie") == [f"{COOKIE}={cookie_of(response)}{attributes}"], extra
    prefixed = await engine_factory(config([b1], sticky={"cookie": "__Host-srv"}))
    response = await get(await raw_client(prefixed.address()))
    assert (response.header("Set-Cookie") or "").endswith("; Path=/; HttpOnly; Secure")


async def test_a_tls_listener_sets_a_secure_cookie(backends, engine_factory, tmp_path: Path):
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    b1 = await backends("b1")
    tls = {"tls": {"cert": str(cert), "key": str(key)}}
    for sticky, secure in (({"cookie": COOKIE}, True), ({"cookie": COOKIE, "secure": False}, False)):
        engine = await engine_factory(config([b1], sticky=sticky, listener=tls))
        context = ssl.create_default_context()
        ca.configure_trust(context)
        reader, writer = await asyncio.open_connection(
            *engine.address(), ssl=context, server_hostname="localhost"
        )
        client = RawClient(reader, writer)
        try:
            response = await get(client)
        finally:
            await client.close()
        assert (response.header("Set-Cookie") or "").endswith("; Secure") == secure


# -- the numbers: admin API, metrics, attach ----------------------------------------------------------------


async def test_the_numbers_in_the_admin_api_and_metrics(backends, engine_factory, raw_client):
    bs = [await backends(f"b{i}") for i in range(2)]
    engine = await engine_factory(config(bs))
    server = AdminServer(engine.controller, AdminConfig(host="127.0.0.1", port=0, enabled=True), 10.0)
    await server.start()
    try:
        client = await raw_client(engine.address())
        value = await session(client, "b1", engine)
        for _ in range(4):
            await get(client, "/", value)
        await get(client, "/", "forged")
        engine.controller.maint("b1")
        await get(client, "/", value)  # moved to b0
        admin = await raw_client(server.address)
        host = f"Host: 127.0.0.1:{server.address[1]}".encode()
        await admin.send(b"GET /api/v1/state HTTP/1.1\r\n" + host + b"\r\n\r\n")
        state = json.loads((await admin.read_response()).body)
        await admin.send(b"GET /metrics HTTP/1.1\r\n" + host + b"\r\n\r\n")
        metrics = (await admin.read_response()).body.decode()
    finally:
        await server.stop()
    app = state["services"][0]
    assert (app["sticky_cookie"], app["sticky_moved"], app["sticky_unknown"]) == (COOKIE, 1, 1)
    b1 = next(b for b in app["backends"] if b["name"] == "b1")
    assert b1["sticky_requests"] == 4
    assert b1["sticky_cookies_set"] >= 1
    assert snapshot_json(snapshot_from_json(state), now=state["time"]) == state  # `lbtui attach` reads it all
    assert 'lbtui_backend_sticky_requests_total{service="app",backend="b1",group="default"} 4' in metrics
    assert 'lbtui_service_sticky_moved_total{service="app"} 1' in metrics
    assert 'lbtui_service_sticky_unknown_total{service="app"} 1' in metrics
    assert "lbtui_backend_sticky_cookies_set_total{" in metrics
