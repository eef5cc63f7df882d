"""Failure mapping: refused, dead pooled connections, timeouts, garbage, nothing eligible, killed backends."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from tests.conftest import make_config, wait_for


async def test_refused_backend_is_skipped_for_any_method(backends, engine_factory, closed_port):
    good = await backends("good")
    dead = f"127.0.0.1:{closed_port()}"
    engine = await engine_factory(make_config([("dead", dead), good]))
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        for _ in range(10):
            assert (await http.post("/echo", content=b"payload")).status_code == 200
            assert (await http.get("/")).status_code == 200
    assert good.requests == 20
    assert engine.controller.snapshot().backend("dead").connect_failures >= 5


async def test_all_backends_refused_gives_503_with_retry_after(engine_factory, raw_client, closed_port):
    engine = await engine_factory(
        make_config([("d1", f"127.0.0.1:{closed_port()}"), ("d2", f"127.0.0.1:{closed_port()}")])
    )
    client = await raw_client(engine.address())
    r = await client.request("GET", "/")
    assert r.status == 503
    assert r.header("Retry-After") == "1"


async def test_no_eligible_backend_gives_503(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    engine.controller.maint("b1")
    client = await raw_client(engine.address())
    r = await client.request("GET", "/")
    assert r.status == 503
    assert r.header("Retry-After")
    assert b1.requests == 0
    assert not client.closed  # a 503 of ours keeps the connection
    engine.controller.enable("b1")
    assert (await client.request("GET", "/")).status == 200


async def test_dead_pooled_connection_is_retried_on_a_fresh_one(scripted, engine_factory, raw_client):
    async def script(reader, writer, up):
        # Serve one request, then close when the next one arrives (a keep-alive race with the backend).
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await up.read_request(reader)
        writer.transport.abort()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)], retries={"attempts": 0}))
    client = await raw_client(engine.address())
    for _ in range(5):
        r = await client.request("GET", "/")
        assert r.status == 200
        assert r.body == b"ok"
    # Each reuse met a dead connection and was retried once on a fresh one, on the same (only) backend.
    assert up.connections == 5
    assert len(up.received) == 9
    r = await client.request("POST", "/", body=b"x")
    assert r.status == 502  # a POST that was sent is never sent twice


async def test_reset_before_response_retries_get_on_another_backend(scripted, backends, engine_factory):
    async def rude(reader, writer, up):
        await up.read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    up = await scripted(rude)
    good = await backends("good")
    engine = await engine_factory(make_config([("rude", up.address), good]))
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        for _ in range(6):
            assert (await http.get("/")).status_code == 200
    assert len(up.received) >= 3  # the rude backend got its share, and each GET was retried


async def test_post_that_was_sent_is_not_retried(scripted, backends, engine_factory):
    async def rude(reader, writer, up):
        await up.read_request(reader)
        writer.transport.abort()

    up = await scripted(rude)
    good = await backends("good")
    engine = await engine_factory(make_config([("rude", up.address), good]))
    statuses = []
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        for _ in range(4):
            statuses.append((await http.post("/echo", content=b"once")).status_code)
    assert statuses.count(502) == 2  # the two that went to the rude backend
    assert good.requests == 2


async def test_response_timeout_gives_504(backends, engine_factory, raw_client):
    slow = await backends("slow")
    config = make_config([slow], timeouts={"response": "200ms"})
    engine = await engine_factory(config)
    client = await raw_client(engine.address())
    loop = asyncio.get_running_loop()
    start = loop.time()
    r = await client.request("GET", "/delay/3000")
    assert r.status == 504
    assert loop.time() - start < 2.0
    assert (await client.request("GET", "/")).status == 200


async def test_garbage_from_upstream_gives_502(scripted, engine_factory, raw_client):
    async def junk(reader, writer, up):
        await up.read_request(reader)
        writer.write(b"this is not http at all\r\n\r\n")
        await writer.drain()
        await reader.read(1)

    up = await scripted(junk)
    engine = await engine_factory(make_config([("junk", up.address)], retries={"attempts": 0}))
    client = await raw_client(engine.address())
    r = await client.request("GET", "/")
    assert r.status == 502


async def test_truncated_body_is_never_passed_off_as_whole(scripted, engine_factory, raw_client):
    async def truncate(reader, writer, up):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-some")
        await writer.drain()
        writer.transport.abort()

    up = await scripted(truncate)
    engine = await engine_factory(make_config([("t", up.address)]))
    client = await raw_client(engine.address())
    await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    data = b""
    async with asyncio.timeout(5):
        while True:
            try:
                chunk = await client.reader.read(1000)
            except ConnectionResetError:  # cut with a reset (RST): a client reading until close knows too
                break
            if not chunk:
                break
            data += chunk
    assert b"Content-Length: 100" in data
    assert data.endswith(b"only-some")  # and then the connection was cut: the client knows it is short


@pytest.mark.slow
async def test_killed_backend_costs_get_clients_nothing(backends, engine_factory):
    """Under steady GET traffic, kill one of three backends: not one request fails."""
    bs = [await backends(f"b{i}", latency=0.002) for i in range(3)]
    engine = await engine_factory(make_config(bs))
    failures = []
    done = 0

    async def worker(http: httpx.AsyncClient, n: int) -> None:
        nonlocal done
        for _ in range(n):
            r = await http.get("/")
            if r.status_code != 200:
                failures.append(r.status_code)
            done += 1

    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=engine.url(), limits=limits, timeout=10) as http:
        tasks = [asyncio.create_task(worker(http, 150)) for _ in range(8)]
        await wait_for(lambda: done >= 200, what="traffic to flow")
        await bs[1].stop()  # killed: listener gone, open connections cut mid-request
        await asyncio.gather(*tasks)
    assert done == 1200
    assert failures == []
    assert bs[1].requests < 600
