"""Active health checks over real sockets: down after `fall`, up after `rise`, tcp, maint, added, shutdown."""

from __future__ import annotations

import asyncio

import httpx

from lbtui.config import parse_config
from lbtui.proxy.engine import Engine
from lbtui.proxy.health import parse_status_line, probe
from tests.conftest import make_config, wait_for

FAST = {"path": "/healthz", "interval": "100ms", "timeout": "100ms", "rise": 2, "fall": 3}


def health_checks(backend) -> int:
    return sum(1 for _, url, _ in backend.received if url == b"/healthz")


def traffic(backend) -> int:
    return sum(1 for _, url, _ in backend.received if url != b"/healthz")


def health_events(engine: Engine, name: str, after_id: int = 0) -> list[tuple[str, str]]:
    return [
        (e.before, e.after)
        for e in reversed(engine.controller.events(1000))
        if e.actor == "health" and e.target == name and e.id > after_id
    ]


def last_event_id(engine: Engine) -> int:
    events = engine.controller.events(1)
    return events[0].id if events else 0


def health(engine: Engine, name: str) -> str:
    return engine.controller.snapshot().backend(name).health


async def test_failing_backend_goes_down_after_fall_gets_no_traffic_and_comes_back_after_rise(
    backends, engine_factory
):
    a = await backends("a")
    b = await backends("b")
    engine = await engine_factory(make_config([a, b], health=FAST))
    # The backend counts a check as it answers; the checker records it a moment later: wait for the record.
    await wait_for(
        lambda: all(engine.controller.snapshot().backend(n).checks for n in ("a", "b")), what="first checks"
    )
    view = engine.controller.snapshot().backend("a")
    assert view.checked
    assert view.checks[-1].ok
    assert view.checks[-1].detail.startswith("200 in ")
    assert view.health_label == "up"

    mark = last_event_id(engine)
    a.healthy = False
    await wait_for(lambda: health(engine, "a") == "down", what="a down")
    assert health_events(engine, "a", mark) == [
        ("up", "going_down 1/3 (status 503)"),
        ("going_down 1/3", "going_down 2/3 (status 503)"),
        ("going_down 2/3", "down (status 503)"),
    ]
    view = engine.controller.snapshot().backend("a")
    assert (view.health_count, view.health_of) == (0, 0)
    assert [c.detail for c in view.checks[-3:]] == ["status 503"] * 3

    before = traffic(a)
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        for _ in range(20):
            r = await http.get("/")
            assert r.json()["backend"] == "b"
    assert traffic(a) == before

    mark = last_event_id(engine)
    a.healthy = True
    await wait_for(lambda: health(engine, "a") == "up", what="a up")
    assert health_events(engine, "a", mark) == [
        ("down", f"going_up 1/2 ({engine.controller.snapshot().backend('a').checks[-2].detail})"),
        ("going_up 1/2", f"up ({engine.controller.snapshot().backend('a').checks[-1].detail})"),
    ]
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        served = {(await http.get("/")).json()["backend"] for _ in range(10)}
    assert served == {"a", "b"}


async def test_every_backend_down_gives_503(backends, engine_factory):
    a = await backends("a")
    a.healthy = False
    engine = await engine_factory(make_config([a], health={**FAST, "fall": 1}))
    await wait_for(lambda: health(engine, "a") == "down", what="a down")
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        assert (await http.get("/")).status_code == 503
    assert traffic(a) == 0


async def test_the_check_request(backends, engine_factory):
    a = await backends("a")
    await engine_factory(make_config([a], health=FAST))
    await wait_for(lambda: health_checks(a) >= 1, what="a check")
    method, url, headers = next(r for r in a.received if r[1] == b"/healthz")
    assert (method, url) == (b"GET", b"/healthz")
    sent = {name.lower(): value for name, value in headers}
    assert sent[b"host"] == a.address.encode()
    assert sent[b"connection"] == b"close"


async def test_tcp_check_marks_a_closed_port_down(backends, engine_factory, closed_port):
    a = await backends("a")
    tcp = {"type": "tcp", "interval": "100ms", "timeout": "100ms", "fall": 2}
    engine = await engine_factory(make_config([a, ("dead", f"127.0.0.1:{closed_port()}")], health=tcp))
    await wait_for(lambda: health(engine, "dead") == "down", what="dead down")
    assert health_events(engine, "dead")[-1] == ("going_down 1/2", "down (connect refused)")
    await wait_for(lambda: engine.controller.snapshot().backend("a").checks != (), what="a checked")
    view = engine.controller.snapshot().backend("a")
    assert view.health == "up"
    assert view.checks[-1].detail.startswith("connected in ")
    assert health_checks(a) == 0  # a connect only: no request


async def test_maint_is_not_checked_and_drain_is(backends, engine_factory):
    a = await backends("a")
    b = await backends("b")
    c = await backends("c")
    engine = await engine_factory(make_config([a, b, c], health=FAST))
    # The checks' tasks have not run yet: nothing has awaited since the engine started them.
    engine.controller.maint("a")
    engine.controller.drain("c")
    await wait_for(lambda: health_checks(b) >= 4 and health_checks(c) >= 4, what="b and c checked")
    assert health_checks(a) == 0
    assert engine.controller.snapshot().backend("a").checks == ()
    engine.controller.enable("a")
    await wait_for(lambda: health_checks(a) >= 1, what="a checked after maint")


async def test_a_result_that_arrives_in_maint_is_dropped(scripted, engine_factory):
    asked = asyncio.Event()
    release = asyncio.Event()
    hung_up = asyncio.Event()

    async def slow(reader, writer, upstream):
        await upstream.read_request(reader)
        asked.set()
        await release.wait()
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()  # EOF once the checker has read the status line and decided
        hung_up.set()

    up = await scripted(slow)
    config = {"interval": "500ms", "timeout": "500ms", "fall": 1}
    engine = await engine_factory(make_config([("s", up.address)], health=config))
    await asyncio.wait_for(asked.wait(), 10)
    engine.controller.maint("s")
    release.set()
    await asyncio.wait_for(hung_up.wait(), 10)
    view = engine.controller.snapshot().backend("s")
    assert view.checks == ()
    assert view.health == "up"  # with fall = 1, the 500 would have marked it down


async def test_added_backend_is_checked_and_a_removed_one_no_more(backends, engine_factory):
    a = await backends("a")
    late = await backends("late")
    late.healthy = False
    engine = await engine_factory(make_config([a], health={**FAST, "fall": 2}))
    engine.controller.add_backend("app", "late", late.address)
    await wait_for(lambda: health(engine, "late") == "down", what="late down")
    assert health_events(engine, "late") == [
        ("up", "going_down 1/2 (status 503)"),
        ("going_down 1/2", "down (status 503)"),
    ]
    _, task = engine.health.tasks["late"]
    engine.controller.remove_backend("late")
    assert "late" not in engine.health.tasks
    await wait_for(task.done, what="the check task to end")
    assert task.cancelled()


async def test_shutdown_ends_every_check(backends):
    a = await backends("a")
    b = await backends("b")
    engine = Engine(make_config([a, b], health=FAST))
    await engine.start()
    try:
        await wait_for(lambda: health_checks(a) >= 1 and health_checks(b) >= 1, what="checks")
        tasks = [task for _, task in engine.health.tasks.values()]
        assert len(tasks) == 2
    finally:
        await engine.shutdown(grace=1.0)
    assert all(task.done() for task in tasks)
    assert engine.health.tasks == {}
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("lbtui-health")]


async def test_services_without_health_are_not_checked(backends, engine_factory):
    a = await backends("a")
    engine = await engine_factory(make_config([a]))
    assert engine.health.tasks == {}
    assert not engine.controller.snapshot().backend("a").checked


# -- one probe -----------------------------------------------------------------------------------------------


def health_config(**health):
    data = {"services": {"x": {"health": health, "backends": [{"name": "x", "address": "127.0.0.1:1"}]}}}
    config = parse_config(data).service("x").health
    assert config is not None
    return config


async def test_probe_reports_a_timeout(scripted):
    async def silent(reader, writer, upstream):
        await reader.read()  # never answers; ends when the checker closes

    up = await scripted(silent)
    check = await probe("127.0.0.1", up.port, up.address, health_config(interval="50ms"))
    assert not check.ok
    assert check.detail == "timeout after 0.05s"
    assert check.duration_ms >= 45


async def test_probe_reports_garbage_and_status_ranges(scripted):
    async def garbage(reader, writer, upstream):
        await upstream.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()

    async def teapot(reader, writer, upstream):
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    bad = await scripted(garbage)
    assert (await probe("127.0.0.1", bad.port, bad.address, health_config())).detail == "not an HTTP response"
    tea = await scripted(teapot)
    check = await probe("127.0.0.1", tea.port, tea.address, health_config())
    assert (check.ok, check.detail) == (False, "status 418")
    check = await probe("127.0.0.1", tea.port, tea.address, health_config(expect_status="4xx"))
    assert check.ok
    assert check.detail.startswith("418 in ")


async def test_probe_reports_a_refused_connect(closed_port):
    port = closed_port()
    check = await probe("127.0.0.1", port, f"127.0.0.1:{port}", health_config())
    assert (check.ok, check.detail) == (False, "connect refused")


def test_parse_status_line():
    assert parse_status_line(b"HTTP/1.1 200 OK\r\n") == 200
    assert parse_status_line(b"HTTP/1.0 503\r\n") == 503
    assert parse_status_line(b"HTTP/1.1 20 OK\r\n") is None
    assert parse_status_line(b"HTTP/1.1 999 What\r\n") is None
    assert parse_status_line(b"HTTP/2 200\r\n") is None
    assert parse_status_line(b"garbage\r\n") is None
