"""[limits]: what a client that sends too much, too many or too slowly gets, and that nothing of it reaches a
backend. Raw sockets on 127.0.0.1; every wait bounded."""

from __future__ import annotations

import asyncio
import resource

from lbtui.config import parse_config
from lbtui.proxy.engine import files_for, raise_open_file_limit
from tests.conftest import wait_for
from tests.proxy.wire import get, post, post_chunked


def limits_config(backend, **limits):
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {"app": {"backends": [{"name": backend.name, "address": backend.address}]}},
            "limits": limits,
        },
        source="<test>",
    )


async def still_serves(engine, stream, backend) -> None:
    """A fresh connection gets a normal answer from the backend."""
    before = backend.requests
    s = await stream(engine.address())
    await s.send(get("/echo/ok"))
    r = await s.response()
    assert r.status == 200
    assert backend.requests == before + 1


async def test_a_request_target_over_max_header_bytes_gets_414(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, max_header_bytes=1024))
    s = await stream(engine.address())
    await s.send(get("/" + "a" * 2000))
    r = await s.response()
    assert r.status == 414
    assert await s.closed()
    assert b1.requests == 0
    await still_serves(engine, stream, b1)


async def test_a_request_line_sent_in_small_pieces_is_cut_off_too(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, max_header_bytes=1024))
    s = await stream(engine.address())
    await s.send(b"GET /")
    for _ in range(40):  # 40 x 100 bytes: the proxy stops it at 1 KiB, never holds it all
        if s.eof:
            break
        await s.send(b"b" * 100)
    r = await s.response()
    assert r.status == 414
    assert await s.closed()
    assert b1.requests == 0


async def test_header_fields_over_max_header_bytes_get_431(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, max_header_bytes=1024))
    s = await stream(engine.address())
    await s.send(get("/", extra="X-Big: " + "v" * 2000 + "\r\n"))
    r = await s.response()
    assert r.status == 431
    assert await s.closed()
    assert b1.requests == 0
    await still_serves(engine, stream, b1)


async def test_more_header_fields_than_max_headers_get_431(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, max_headers=10))
    s = await stream(engine.address())
    await s.send(get("/", extra="".join(f"X-{i}: {i}\r\n" for i in range(12))))
    r = await s.response()
    assert r.status == 431
    assert "more than 10 header fields" in r.body.decode()
    assert await s.closed()
    assert b1.requests == 0


async def test_max_headers_counts_the_host_header_too_and_allows_exactly_the_limit(
    backends, engine_factory, stream
):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, max_headers=10))
    s = await stream(engine.address())
    await s.send(get("/echo", extra="".join(f"X-{i}: {i}\r\n" for i in range(9))))  # Host + 9 = 10
    r = await s.response()
    assert r.status == 200


async def test_a_content_length_over_max_body_gets_413_before_the_body_is_read(
    backends, engine_factory, stream
):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, max_body="1KiB"))
    s = await stream(engine.address())
    # Only the head: the answer must not wait for a body it will not read.
    await s.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4096\r\n\r\n")
    r = await s.response()
    assert r.status == 413
    assert await s.closed()
    assert b1.requests == 0
    await still_serves(engine, stream, b1)


async def test_a_body_at_max_body_passes(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, max_body="1KiB"))
    s = await stream(engine.address())
    await s.send(post("/echo", b"x" * 1024))
    r = await s.response()
    assert r.status == 200
    assert r.json()["body_size"] == 1024


async def test_a_chunked_body_that_grows_past_max_body_gets_413_and_the_backend_never_gets_it_whole(
    backends, engine_factory, stream
):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, max_body="1KiB"))
    s = await stream(engine.address())
    await s.send(post_chunked("/echo", b"y" * 8192, piece=512) + get("/echo/smuggled"))
    r = await s.response()
    assert r.status == 413
    assert await s.closed()
    assert b1.requests == 0  # the backend saw a head and part of a body, then its connection closed
    await still_serves(engine, stream, b1)


async def test_a_refused_request_after_a_good_one_is_answered_in_order(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, max_headers=5))
    s = await stream(engine.address())
    await s.send(get("/echo/first") + get("/second", extra="".join(f"X-{i}: {i}\r\n" for i in range(8))))
    first = await s.response()
    assert (first.status, first.json()["url"]) == (200, "/echo/first")
    second = await s.response()
    assert second.status == 431
    assert await s.closed()
    assert b1.requests == 1


async def test_a_head_that_trickles_in_gets_408_at_header_timeout(backends, engine_factory, stream):
    """Slowloris: a byte now and then keeps the connection active, but the head must be whole in time."""
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, header_timeout="500ms"))
    s = await stream(engine.address())
    loop = asyncio.get_running_loop()
    start = loop.time()
    await s.send(b"GET / HTTP/1.1\r\nHost: h\r\n")
    for _ in range(60):  # one header byte every 50 ms, bounded at 3 s
        await s.send(b"X")
        if await s.quiet(timeout=0.05):
            break
    r = await s.response(timeout=3.0)
    assert r.status == 408
    assert await s.closed()
    assert 0.4 <= loop.time() - start < 3.0
    assert engine.header_timeouts == 1
    assert b1.requests == 0


async def test_limits_header_timeout_gives_408(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, header_timeout="300ms"))
    s = await stream(engine.address())
    await s.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")
    r = await s.response(timeout=3.0)
    assert r.status == 408
    assert await s.closed()


async def test_an_idle_keep_alive_connection_is_closed_quietly_at_client_idle_timeout(
    backends, engine_factory, stream
):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, client_idle_timeout="300ms", header_timeout="5s"))
    s = await stream(engine.address())
    await s.send(get("/echo"))
    assert (await s.response()).status == 200
    assert await s.closed(timeout=3.0)
    assert await s.quiet(timeout=0.05) == b""  # no 408 for a connection between requests


async def test_a_request_body_that_stops_arriving_is_cut_at_client_idle_timeout(
    backends, engine_factory, stream
):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, client_idle_timeout="300ms"))
    s = await stream(engine.address())
    await s.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + b"z" * 10)
    r = await s.response(timeout=3.0)
    assert r.status == 408
    assert await s.closed(timeout=3.0)
    await wait_for(lambda: not engine.connections, 3.0, "the connection to go")
    assert b1.requests == 0
    await still_serves(engine, stream, b1)


async def test_max_connections_turns_the_next_one_away_with_503(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1, max_connections=2))
    held = [await stream(engine.address()) for _ in range(2)]
    for s in held:
        await s.send(get("/echo"))
        assert (await s.response()).status == 200
    extra = await stream(engine.address())
    r = await extra.response()
    assert r.status == 503
    assert r.header("Retry-After") == "1"
    assert await extra.closed()
    assert engine.connections_refused == 1
    held[0].close()
    await wait_for(lambda: len(engine.connections) == 1, 3.0, "a slot to free")
    await still_serves(engine, stream, b1)


def test_the_open_file_limit_is_raised_for_max_connections():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = raise_open_file_limit(10_000)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limit
    assert limit >= soft  # never lowered
    assert limit >= min(hard, files_for(10_000))


async def test_thousands_of_idle_connections_do_not_slow_a_real_request(backends, engine_factory):
    b1 = await backends("b1")
    engine = await engine_factory(limits_config(b1))
    address = engine.address()

    async def timed_gets(n: int) -> float:
        """The median time of n GETs on one keep-alive connection."""
        reader, writer = await asyncio.open_connection(*address)
        loop = asyncio.get_running_loop()
        times = []
        try:
            for _ in range(n):
                started = loop.time()
                writer.write(b"GET /echo/x HTTP/1.1\r\nHost: t\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                times.append(loop.time() - started)
        finally:
            writer.close()
        return sorted(times)[n // 2]

    baseline = await timed_gets(40)
    idle = []
    try:
        for _ in range(2000):  # bounded: 2000 idle clients, each with half a request head or nothing
            _, writer = await asyncio.open_connection(*address)
            idle.append(writer)
        for i, writer in enumerate(idle):
            if i % 2:
                writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n")  # a head that never ends
        await wait_for(lambda: len(engine.connections) >= 2000, what="the idle connections to be accepted")
        crowded = await timed_gets(40)
        # A generous bound: the engine does no work per idle connection per request (only its tick visits
        # them, every 250 ms). Shared CI machines vary, so a ratio and an absolute floor.
        assert crowded < max(5 * baseline, 0.02), (baseline, crowded)
        assert engine.balancer.backends["b1"].requests == 80
    finally:
        for writer in idle:
            writer.close()
