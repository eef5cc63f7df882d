"""An exchange's states as proxy/exchange.py writes them down (HEAD, WAITING, QUEUED, SENT, RESPONDING, DONE),
read from live exchanges of a real engine while real requests are held at each step by a scripted backend.

Waiting is done with `wait_for` (a condition with a deadline), never with a sleep.
"""

from __future__ import annotations

import asyncio

from lbtui.proxy.exchange import DONE, HEAD, QUEUED, RESPONDING, SENT, WAITING
from tests.conftest import make_config, wait_for
from tests.proxy.wire import Keeper, T, get, read_head_and_body


def held_script(keeper: Keeper, head_gate: asyncio.Event, body_gate: asyncio.Event):
    """A keep-alive backend that holds each response twice: before its head, and after its first chunk."""

    async def script(reader, writer, up):
        try:
            for _ in range(100):
                head, _ = await read_head_and_body(reader)
                keeper.requests.append(head)
                await head_gate.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                await writer.drain()
                await body_gate.wait()
                writer.write(b"4\r\nlast\r\n0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            keeper.closed += 1

    return script


def the_client(engine):
    (client,) = engine.connections
    return client


async def test_an_exchange_goes_from_its_head_to_done_through_each_state(scripted, engine_factory, stream):
    keeper = Keeper()
    head_gate, body_gate = asyncio.Event(), asyncio.Event()
    up = await scripted(held_script(keeper, head_gate, body_gate))
    engine = await engine_factory(make_config([("a", up.address)]))
    s = await stream(engine.address())
    # The first request whole, and the start of a second one's head (pipelined).
    await s.send(get("/one") + b"GET /two HTTP/1.1\r\n")
    await wait_for(lambda: len(keeper.requests) == 1, T, "the first request at the backend")
    client = the_client(engine)
    first = client.current
    assert first is not None
    assert first.state == SENT
    await wait_for(lambda: client.parsing is not None, T, "the second head being read")
    second = client.parsing
    assert second.state == HEAD
    await s.send(b"Host: h\r\n\r\n")
    await wait_for(lambda: second in client.pending, T, "the second request held for its turn")
    assert second.state == WAITING
    head_gate.set()
    await wait_for(lambda: first.state == RESPONDING, T, "the first response's head passed on")
    body_gate.set()
    await wait_for(lambda: first.state == DONE, T, "the first exchange's end")
    await wait_for(lambda: second.state == DONE, T, "the second exchange's end (both gates open)")
    assert client.current is None
    assert not client.pending
    assert [r.body for r in [await s.response(), await s.response()]] == [b"firstlast", b"firstlast"]


async def test_a_request_waits_in_the_queue_while_its_backend_is_full(scripted, engine_factory, stream):
    keeper = Keeper()
    head_gate, body_gate = asyncio.Event(), asyncio.Event()
    body_gate.set()
    up = await scripted(held_script(keeper, head_gate, body_gate))
    engine = await engine_factory(
        make_config([("a", up.address)], max_connections=1, timeouts={"queue": "5s"})
    )
    s1, s2 = await stream(engine.address()), await stream(engine.address())
    await s1.send(get("/one"))
    await wait_for(lambda: len(keeper.requests) == 1, T, "the first request at the backend")
    await s2.send(get("/two"))
    await wait_for(lambda: len(engine.connections) == 2, T, "both clients connected")
    await wait_for(
        lambda: any(c.current is not None and c.current.state == QUEUED for c in engine.connections),
        T,
        "the second request queued",
    )
    (queued,) = [c.current for c in engine.connections if c.current is not None and c.current.state == QUEUED]
    head_gate.set()
    await wait_for(lambda: queued.state == DONE, T, "the queued request served once there was room")
    assert (await s1.response()).status == 200
    assert (await s2.response()).status == 200
