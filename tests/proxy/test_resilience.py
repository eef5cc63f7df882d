"""Failover through real traffic: outlier ejection, per-backend max_connections with its queue, retry budget."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import make_config, wait_for


async def get(address: tuple[str, int], path: str = "/") -> tuple[int, bytes, float]:
    """One GET on a new connection: status, body, seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, loop.time() - started


async def test_a_failing_backend_is_ejected_and_traffic_goes_to_the_others(backends, engine_factory):
    good, bad = await backends("good"), await backends("bad", error_rate=1.0)
    engine = await engine_factory(
        make_config(
            [good, bad],
            outlier={"consecutive_5xx": 3, "base_ejection": "30s"},
            retries={"attempts": 0},
        )
    )
    statuses = [(await get(engine.address(), "/x"))[0] for _ in range(12)]
    assert statuses.count(500) == 3  # round robin: bad answered three times, then it was ejected
    assert statuses[-6:] == [200] * 6
    view = engine.controller.snapshot().backend("bad")
    assert view.health == "ejected"
    assert view.ejected_left is not None
    assert (
        20 < view.ejected_left <= 30
    )  # base_ejection, less the little time since (generous: a busy machine)
    assert any(e.actor == "outlier" and e.target == "bad" for e in engine.controller.events())


async def test_a_refusing_backend_is_ejected_after_connect_failures(backends, engine_factory):
    good = await backends("good")
    engine = await engine_factory(
        make_config(
            [good, ("dead", "127.0.0.1:1")],
            outlier={"consecutive_connect_failures": 2},
        )
    )
    for _ in range(6):
        status, _, _ = await get(engine.address())
        assert status == 200  # the connect failure is retried on good
    assert engine.controller.snapshot().backend("dead").health == "ejected"


async def test_max_connections_queues_then_serves_in_order(backends, engine_factory):
    slow = await backends("slow")
    engine = await engine_factory(make_config([slow], max_connections=1, timeouts={"queue": "5s"}))
    results = await asyncio.gather(*(get(engine.address(), "/delay/150") for _ in range(3)))
    assert [status for status, _, _ in results] == [200, 200, 200]
    # One at a time: the last one waited for the two before it.
    assert max(seconds for _, _, seconds in results) >= 0.3
    service = engine.controller.snapshot().service("app")
    assert service.queued == 2
    assert service.queue_length == 0
    assert service.queue_full == 0


async def held_backend(scripted, gate: asyncio.Event):
    """A backend whose answers wait for `gate`: while it is closed, the one place (max_connections = 1) stays
    taken, whatever the machine's speed."""

    async def script(reader, writer, upstream):
        await upstream.read_request(reader)
        await gate.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    return await scripted(script)


async def test_a_full_queue_answers_503_at_once(scripted, engine_factory):
    gate = asyncio.Event()
    slow = await held_backend(scripted, gate)
    engine = await engine_factory(make_config([("slow", slow.address)], max_connections=1, max_queue=1))
    first = asyncio.ensure_future(get(engine.address(), "/first"))
    await wait_for(lambda: engine.balancer.backends["slow"].in_flight == 1)
    second = asyncio.ensure_future(get(engine.address(), "/second"))
    await wait_for(lambda: engine.balancer.services["app"].queued == 1)
    try:
        status, body, seconds = await get(engine.address(), "/")
        assert status == 503
        assert b"queue is full" in body
        # At once: while the place is still taken, and long before the queue timeout (2 s by default).
        assert not first.done()
        assert not second.done()
        assert seconds < 1.0
    finally:
        gate.set()
    assert (await first)[0] == 200
    assert (await second)[0] == 200
    assert engine.controller.snapshot().service("app").queue_full == 1


async def test_waiting_past_the_queue_timeout_is_503(scripted, engine_factory):
    gate = asyncio.Event()
    slow = await held_backend(scripted, gate)
    engine = await engine_factory(
        make_config([("slow", slow.address)], max_connections=1, timeouts={"queue": "100ms"})
    )
    first = asyncio.ensure_future(get(engine.address(), "/first"))
    await wait_for(lambda: engine.balancer.backends["slow"].in_flight == 1)
    try:
        status, body, seconds = await get(engine.address(), "/")
        assert status == 503
        assert b"in time" in body
        # The queue timeout's 100 ms, not the place coming free (it has not) nor a longer timeout.
        assert not first.done()
        assert 0.09 < seconds < 1.0
    finally:
        gate.set()
    assert (await first)[0] == 200


async def test_a_client_that_leaves_the_queue_frees_its_place(backends, engine_factory):
    slow = await backends("slow")
    engine = await engine_factory(make_config([slow], max_connections=1, max_queue=1))
    first = asyncio.ensure_future(get(engine.address(), "/delay/300"))
    await wait_for(lambda: engine.balancer.backends["slow"].in_flight == 1)
    _, writer = await asyncio.open_connection(*engine.address())
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    await wait_for(lambda: engine.balancer.services["app"].queued == 1)
    writer.close()  # gives up while waiting
    await wait_for(lambda: engine.balancer.connections == 1)
    status, _, _ = await get(engine.address(), "/")  # takes the freed place, not a 503
    assert status == 200
    assert (await first)[0] == 200
    assert engine.balancer.backends["slow"].in_flight == 0


async def test_retry_budget_refuses_retries_beyond_it(scripted, backends, engine_factory):
    async def junk(reader, writer, upstream):
        await upstream.read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")  # a bad answer (gateway-error): its retry is budgeted
        await writer.drain()

    broken = await scripted(junk)
    good = await backends("good")
    tight = make_config(
        [("broken", broken.address), good],
        retries={"attempts": 2, "budget_percent": 0, "min_retry_concurrency": 0},
    )
    engine = await engine_factory(tight)
    statuses = [(await get(engine.address()))[0] for _ in range(4)]
    assert statuses.count(502) == 2  # broken's two turns: the budget allows no retry
    service = engine.controller.snapshot().service("app")
    assert (service.retries, service.retries_refused) == (0, 2)


async def test_retries_within_the_budget_hide_a_reset(scripted, backends, engine_factory):
    async def reset(reader, writer, upstream):
        await upstream.read_request(reader)
        writer.transport.abort()

    broken = await scripted(reset)
    good = await backends("good")
    engine = await engine_factory(make_config([("broken", broken.address), good]))
    results = [await get(engine.address(), "/echo") for _ in range(4)]
    assert [status for status, _, _ in results] == [200] * 4
    assert {json.loads(body)["backend"] for _, body, _ in results} == {"good"}
    service = engine.controller.snapshot().service("app")
    assert service.retries == 2
    assert service.retries_refused == 0
    assert engine.balancer.services["app"].retries_in_flight == 0
