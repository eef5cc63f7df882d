"""How exchanges and backends end, through the HTTP/1.1 data plane: drained and removed backends finish their
requests and close their upstream connections, clients that go away release what they held, shutdown finishes
what is in flight (with Connection: close) and cuts what is left at the grace's end, and the stats are exact
after a mix of outcomes.

Every test runs against real sockets on 127.0.0.1 (tests/proxy/wire.py's raw client). Waiting is done with
`wait_for` or `asyncio.timeout`, never with a sleep; every loop is bounded.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import make_config, wait_for
from tests.proxy.wire import Keeper, T, get, ok, post, read_head_and_body


def counting_script(keeper: Keeper, gate: asyncio.Event | None = None):
    """Keep-alive backend: answers its name; /slow waits for `gate`; counts the connections it saw closed."""

    async def script(reader, writer, up):
        try:
            for _ in range(10_000):
                head, _ = await read_head_and_body(reader)
                keeper.requests.append(head)
                if b" /slow " in head and gate is not None:
                    await gate.wait()
                writer.write(ok(b"scripted"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            keeper.closed += 1

    return script


# == drains and removals =====================================================================================


async def test_drain_in_flight_request_finishes_then_its_upstream_connection_closes(
    scripted, backends, engine_factory, stream
):
    keeper = Keeper()
    gate = asyncio.Event()
    up = await scripted(counting_script(keeper, gate))
    other = await backends("other")
    engine = await engine_factory(make_config([("a", up.address), other]))
    engine.controller.maint("other")
    s = await stream(engine.address())
    await s.send(get("/slow"))
    await wait_for(lambda: len(keeper.requests) == 1, T, "the request at a")
    engine.controller.drain("a")
    engine.controller.enable("other")
    s2 = await stream(engine.address())
    for _ in range(5):
        await s2.send(get("/"))
        assert (await s2.response()).json()["backend"] == "other"
    assert engine.controller.snapshot().backend("a").in_flight == 1
    gate.set()
    r = await s.response()
    assert (r.status, r.body) == (200, b"scripted")
    await wait_for(lambda: keeper.closed == 1, T, "a's keep-alive connection to close after its request")
    await s.send(get("/"))
    assert (await s.response()).json()["backend"] == "other"
    assert len(keeper.requests) == 1
    assert up.connections == 1
    snap = engine.controller.snapshot()
    assert (snap.backend("a").in_flight, snap.backend("a").requests, snap.backend("other").requests) == (
        0,
        1,
        6,
    )


async def test_drain_closes_idle_pooled_connections(scripted, backends, engine_factory, stream):
    keeper = Keeper()
    up = await scripted(counting_script(keeper))
    other = await backends("other")
    engine = await engine_factory(make_config([("a", up.address), other]))
    engine.controller.maint("other")
    clients = [await stream(engine.address()) for _ in range(3)]
    for c in clients:  # three requests at once: three upstream connections, then idle in the pool
        await c.send(get("/"))
    for c in clients:
        assert (await c.response()).body == b"scripted"
    assert up.connections >= 1
    engine.controller.drain("a")
    engine.controller.enable("other")
    await wait_for(lambda: keeper.closed == up.connections, 1.5, "a's idle connections to close")


async def test_removed_backend_finishes_its_request_then_goes(scripted, backends, engine_factory, stream):
    keeper = Keeper()
    gate = asyncio.Event()
    up = await scripted(counting_script(keeper, gate))
    other = await backends("other")
    engine = await engine_factory(make_config([("a", up.address), other]))
    engine.controller.maint("other")
    s = await stream(engine.address())
    await s.send(get("/slow"))
    await wait_for(lambda: len(keeper.requests) == 1, T, "the request at a")
    engine.controller.remove_backend("a")
    engine.controller.enable("other")
    assert engine.controller.snapshot().backend("a").removing
    gate.set()
    r = await s.response()
    assert (r.status, r.body) == (200, b"scripted")
    names = lambda: [b.name for b in engine.controller.snapshot().service("app").backends]  # noqa: E731
    await wait_for(lambda: names() == ["other"], T, "a to be dropped")
    await wait_for(lambda: keeper.closed == 1, T, "a's connection to close")
    await s.send(get("/"))
    assert (await s.response()).json()["backend"] == "other"


# == clients that go away ====================================================================================


async def test_client_closing_mid_download_releases_in_flight(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    for close in ("abort", "close"):
        s = await stream(engine.address())
        await s.send(get(f"/bytes/{64 * 1024 * 1024}"))
        await s._need(b"\r\n\r\n")
        for _ in range(1000):  # some of the body, far from all of it
            if len(s.buf) > 300_000:
                break
            await s._fill()
        assert engine.controller.snapshot().backend("b1").in_flight == 1
        s.abort() if close == "abort" else s.close()
        await wait_for(lambda: engine.controller.snapshot().backend("b1").in_flight == 0, T, "in_flight 0")
        await wait_for(
            lambda: b1.in_flight == 0 and not b1.connections, T, "the upstream connection to close"
        )
    s = await stream(engine.address())
    await s.send(get("/echo"))
    assert (await s.response()).status == 200
    snap = engine.controller.snapshot().backend("b1")
    assert (snap.in_flight, snap.requests) == (0, 3)


async def test_client_closing_while_backend_is_slow_releases_in_flight(scripted, engine_factory, stream):
    keeper = Keeper()
    gate = asyncio.Event()
    up = await scripted(counting_script(keeper, gate))
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/slow"))
    await wait_for(lambda: len(keeper.requests) == 1, T, "the request at the backend")
    s.close()
    try:
        await wait_for(lambda: engine.controller.snapshot().backend("s1").in_flight == 0, 2.0, "in_flight 0")
    finally:
        gate.set()
    await wait_for(lambda: keeper.closed == 1, T, "the upstream connection to be found closed")
    s2 = await stream(engine.address())
    await s2.send(get("/"))
    assert (await s2.response()).body == b"scripted"
    snap = engine.controller.snapshot().backend("s1")
    assert (snap.in_flight, snap.requests, snap.status_classes[4]) == (0, 2, 1)  # 499: the client left


async def test_client_closing_with_pipelined_requests_queued_releases_in_flight(
    scripted, engine_factory, stream
):
    keeper = Keeper()
    gate = asyncio.Event()
    up = await scripted(counting_script(keeper, gate))
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/slow") + get("/queued"))
    await wait_for(lambda: len(keeper.requests) == 1, T, "the request at the backend")
    s.close()
    try:
        await wait_for(lambda: engine.controller.snapshot().backend("s1").in_flight == 0, 1.0, "in_flight 0")
    finally:
        gate.set()
    await wait_for(lambda: keeper.closed == 1, T, "the upstream connection to be found closed")
    assert len(keeper.requests) == 1  # /queued was never sent


# == shutdown ================================================================================================


async def test_shutdown_finishes_the_in_flight_request_with_connection_close(
    backends, engine_factory, stream
):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    idle = await stream(engine.address())
    await idle.send(get("/"))
    assert (await idle.response()).status == 200
    busy = await stream(engine.address())
    await busy.send(get("/delay/300") + get("/queued"))
    await wait_for(lambda: b1.in_flight == 1, T, "the request at the backend")
    shutdown = asyncio.create_task(engine.shutdown(grace=5.0))
    assert await idle.closed()  # idle keep-alive connections close at once
    r = await busy.response()
    assert r.status == 200
    assert r.json()["path"] == "/delay/300"
    assert r.header("Connection") == "close"
    assert await busy.closed()
    assert busy.buf == b""  # the queued request was not answered
    async with asyncio.timeout(T):
        assert await shutdown is True
    assert engine.controller.snapshot().backend("b1").in_flight == 0
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*engine.address())


async def test_shutdown_during_a_streaming_response_lets_it_finish(backends, engine_factory, stream):
    b1 = await backends("b1", latency=0.0)
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    await s.send(get("/chunked/2000000"))
    await s._need(b"\r\n\r\n")
    shutdown = asyncio.create_task(engine.shutdown(grace=5.0))
    r = await s.response()
    assert (r.status, len(r.body)) == (200, 2_000_000)
    assert await s.closed()
    async with asyncio.timeout(T):
        assert await shutdown is True


async def test_shutdown_grace_expiry_cuts_what_is_left(scripted, engine_factory, stream):
    keeper = Keeper()
    gate = asyncio.Event()
    up = await scripted(counting_script(keeper, gate))
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/slow"))
    await wait_for(lambda: len(keeper.requests) == 1, T, "the request at the backend")
    try:
        async with asyncio.timeout(T):
            assert await engine.shutdown(grace=0.3) is False
    finally:
        gate.set()
    assert await s.closed()
    assert s.buf == b""
    await wait_for(lambda: engine.controller.snapshot().backend("s1").in_flight == 0, T, "in_flight 0")
    await wait_for(lambda: keeper.closed == 1, T, "the upstream connection to close")


# == stats ===================================================================================================


async def test_stats_are_exact_after_a_mix_of_outcomes(scripted, engine_factory, stream):
    async def script(reader, writer, up):
        for _ in range(1000):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            path = head.split(b" ")[1]
            if path == b"/reset":
                writer.transport.abort()
                return
            if path == b"/close":
                return
            status = int(path[1:]) if path[1:].isdigit() else 200
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nxx" % status)
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)], retries={"attempts": 0}))
    s = await stream(engine.address())
    plan = [("GET", "/", 200)] * 5 + [("GET", "/404", 404)] * 3 + [("GET", "/500", 500)] * 2
    plan += [("GET", "/302", 302)] + [("POST", "/reset", 502)] * 2 + [("POST", "/close", 502)]
    plan += [("GET", "/", 200)]
    for method, path, want in plan:
        await s.send(post(path, b"b") if method == "POST" else get(path))
        r = await s.response()
        assert r.status == want, (method, path)
    engine.controller.maint("s1")
    for _ in range(2):
        await s.send(get("/"))
        assert (await s.response()).status == 503
    snap = engine.controller.snapshot()
    b = snap.backend("s1")
    assert b.in_flight == 0
    assert b.requests == 15
    assert b.status_classes == (3, 0, 6, 1, 3, 2)
    assert b.window.requests == 15
    assert snap.service("app").unrouted == 2
    assert snap.service("app").requests == 17
    assert snap.service("app").in_flight == 0
