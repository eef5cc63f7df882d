"""Pipelining, keep-alive and message framing through the HTTP/1.1 data plane: pipelined requests answered in
order whatever happens to the ones before them, keep-alive after every way a response can be framed, upstream
connections reused only when their last response ended cleanly, HEAD, 304 and HTTP/1.0, Connection: close inside
a pipeline, refused upgrades, and framing headers named in Connection (no smuggling either way).

Every test runs against real sockets on 127.0.0.1 (tests/proxy/wire.py's raw client). Waiting is done with
`wait_for` or `asyncio.timeout`, never with a sleep; every loop is bounded.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import make_config, wait_for
from tests.proxy.wire import SMUGGLE, Keeper, T, get, ok, post, post_chunked, read_head_and_body, sha

# == pipelining ==============================================================================================


async def test_pipelined_bodies_content_length_and_chunked_answered_in_order(
    backends, engine_factory, stream
):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    body1 = bytes(range(256)) * 40  # 10 KiB, Content-Length
    body2 = b"chunked-" * 2500  # 20 KB in 1000-byte chunks
    body3 = b"tiny"
    await s.send(
        post("/echo/1", body1)
        + post_chunked("/echo/2", body2)
        + get("/echo/3")
        + post("/echo/4", body3)
        + get("/chunked/3000")
        + post_chunked("/echo/6", b"", extra="X-Empty: 1\r\n")
    )
    r1, r2, r3, r4, r5, r6 = [await s.response() for _ in range(6)]
    assert (r1.status, r1.json()["url"], r1.json()["body_sha256"]) == (200, "/echo/1", sha(body1))
    assert (r2.status, r2.json()["url"], r2.json()["body_sha256"]) == (200, "/echo/2", sha(body2))
    assert (r3.status, r3.json()["url"], r3.json()["body_size"]) == (200, "/echo/3", 0)
    assert (r4.status, r4.json()["url"], r4.json()["body_sha256"]) == (200, "/echo/4", sha(body3))
    assert (r5.status, len(r5.body)) == (200, 3000)
    assert (r6.status, r6.json()["url"], r6.json()["body_size"]) == (200, "/echo/6", 0)
    assert await s.quiet() == b""  # nothing more than the six answers
    assert b1.requests == 6


def path_script(keeper: Keeper, gate: asyncio.Event | None = None):
    """A keep-alive backend that answers by path: /reset aborts, /close closes without answering,
    /slow waits for `gate`; anything else answers its path and the body's size."""

    async def script(reader, writer, up):
        try:
            for _ in range(10_000):
                head, body = await read_head_and_body(reader)
                keeper.requests.append(head)
                path = head.split(b" ")[1]
                if path.startswith(b"/reset"):
                    writer.transport.abort()
                    return
                if path.startswith(b"/close"):
                    return
                if path.startswith(b"/slow") and gate is not None:
                    await gate.wait()
                writer.write(ok(b"%s:%d" % (path, len(body))))
                await writer.drain()
        except asyncio.IncompleteReadError:
            keeper.closed += 1

    return script


async def test_pipelined_requests_behind_failed_ones_are_answered_in_order(scripted, engine_factory, stream):
    keeper = Keeper()
    up = await scripted(path_script(keeper))
    engine = await engine_factory(make_config([("s1", up.address)], retries={"attempts": 0}))
    s = await stream(engine.address())
    await s.send(
        get("/a")
        + post("/reset", b"x" * 100)
        + get("/b")
        + get("/close")
        + post_chunked("/c", b"y" * 3000)
        + post("/d", b"z" * 10)
    )
    got = [await s.response() for _ in range(6)]
    assert [(r.status, r.body if r.status == 200 else b"") for r in got] == [
        (200, b"/a:0"),
        (502, b""),
        (200, b"/b:0"),
        (502, b""),
        (200, b"/c:3000"),
        (200, b"/d:10"),
    ]
    assert await s.quiet() == b""
    await s.send(get("/e"))
    assert (await s.response()).body == b"/e:0"
    assert engine.controller.snapshot().backend("s1").in_flight == 0


async def test_pipelined_requests_get_503_when_the_backend_leaves_mid_pipeline(
    scripted, engine_factory, stream
):
    keeper = Keeper()
    gate = asyncio.Event()
    up = await scripted(path_script(keeper, gate))
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/slow") + get("/x") + post("/y", b"q" * 1000) + post_chunked("/z", b"w" * 500))
    await wait_for(lambda: len(keeper.requests) == 1, T, "the first request at the backend")
    engine.controller.maint("s1")
    gate.set()
    got = [await s.response() for _ in range(4)]
    assert [r.status for r in got] == [200, 503, 503, 503]
    assert got[0].body == b"/slow:0"
    engine.controller.enable("s1")
    await s.send(get("/after"))
    r = await s.response()
    assert (r.status, r.body) == (200, b"/after:0")
    assert len(keeper.requests) == 2  # /x, /y and /z never reached the backend


async def test_pipelined_large_body_answered_503_keeps_connection_usable(scripted, engine_factory, stream):
    keeper = Keeper()
    gate = asyncio.Event()
    up = await scripted(path_script(keeper, gate))
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/slow") + post("/big", b"b" * 70_000))
    await wait_for(lambda: len(keeper.requests) == 1, T, "the first request at the backend")
    engine.controller.maint("s1")
    gate.set()
    assert (await s.response()).status == 200
    r = await s.response()
    assert r.status == 503
    engine.controller.enable("s1")
    if r.header("Connection") == "close":
        assert await s.closed()
        return
    await s.send(get("/after"))
    r = await s.response(timeout=1.0)  # the connection was kept open: it must serve the next request
    assert (r.status, r.body) == (200, b"/after:0")


async def test_truncated_response_in_a_pipeline_never_lets_the_next_answer_through(
    scripted, engine_factory, stream
):
    async def script(reader, writer, up):
        for _ in range(100):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            if b" /truncate " in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-some")
                await writer.drain()
                writer.transport.abort()
                return
            writer.write(ok(b"NEXT-ANSWER"))
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/truncate") + get("/ok") + get("/ok"))
    with pytest.raises(EOFError):
        await s.response()
    assert b"NEXT-ANSWER" not in s.buf
    assert len(up.received) == 1
    snap = engine.controller.snapshot().backend("s1")
    assert (snap.in_flight, snap.requests, snap.status_classes[5]) == (0, 1, 1)


async def test_slow_reader_of_a_big_response_then_pipelined_request(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    size = 12 * 1024 * 1024
    await s.send(get(f"/bytes/{size}") + get("/echo/next") + get(f"/chunked/{size}") + get("/echo/last"))
    # Read nothing until the proxy has had to stop reading the backend.
    await wait_for(lambda: any(c.write_paused for c in engine.connections), T, "the client side to pause")
    r = await s.response(timeout=20)
    assert (r.status, len(r.body), r.body[:1], r.body[-1:]) == (200, size, b"x", b"x")
    assert (await s.response()).json()["url"] == "/echo/next"
    r = await s.response(timeout=20)
    assert (r.status, len(r.body)) == (200, size)
    assert (await s.response()).json()["url"] == "/echo/last"
    assert engine.controller.snapshot().backend("b1").in_flight == 0


# == keep-alive and upstream reuse ===========================================================================


async def test_keep_alive_after_every_response_framing(scripted, engine_factory, stream):
    async def script(reader, writer, up):
        for _ in range(1000):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            path = head.split(b" ")[1]
            if path == b"/cl":
                writer.write(ok(b"length"))
            elif path == b"/chunked":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nchu\r\n4\r\nnked\r\n0\r\n\r\n"
                )
            elif path == b"/close":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close")
                await writer.drain()
                return
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    expected = {"/cl": b"length", "/chunked": b"chunked", "/close": b"until-close"}
    for path in ["/cl", "/chunked", "/close", "/cl", "/close", "/chunked", "/chunked", "/cl"]:
        await s.send(get(path))
        r = await s.response()
        assert (r.status, r.body) == (200, expected[path]), path
        assert r.header("Connection") is None, path
        if path == "/close":
            assert (
                r.header("Transfer-Encoding") == "chunked"
            )  # re-chunked, so the client keeps its connection
    assert not s.eof
    assert up.connections == 3  # one fresh upstream connection after each close-delimited body
    assert engine.controller.snapshot().backend("s1").in_flight == 0


async def test_extra_response_after_response_is_never_delivered(scripted, engine_factory, stream):
    async def script(reader, writer, up):
        first = True
        for _ in range(100):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            path = head.split(b" ")[1]
            if first:  # one write: the answer and a stray response nobody asked for
                writer.write(ok(path) + ok(b"STRAY"))
                first = False
            else:
                writer.write(ok(path))
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/one"))
    r = await s.response()
    assert (r.status, r.body) == (200, b"/one")
    await s.send(get("/two"))
    r = await s.response()
    assert (r.status, r.body) == (200, b"/two")
    assert up.connections == 2  # the connection that sent stray bytes was not reused


async def test_garbage_after_complete_response_keeps_that_response(scripted, engine_factory, stream):
    async def script(reader, writer, up):
        for _ in range(100):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            if len(up.received) == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE")
            else:
                writer.write(ok(b"fresh"))
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)], retries={"attempts": 0}))
    s = await stream(engine.address())
    await s.send(get("/"))
    r = await s.response()
    assert (r.status, r.body) == (200, b"ok")
    await s.send(get("/"))
    r = await s.response()
    assert (r.status, r.body) == (200, b"fresh")
    assert up.connections == 2
    assert engine.controller.snapshot().backend("s1").status_classes[5] == 0


async def test_bytes_on_an_idle_upstream_connection_close_it(scripted, engine_factory, stream):
    sent_stray = asyncio.Event()
    go = asyncio.Event()
    keeper = Keeper()

    async def script(reader, writer, up):
        head, _ = await read_head_and_body(reader)
        up.received.append(head)
        if up.connections == 1:
            writer.write(ok(b"first"))
            await writer.drain()
            await go.wait()
            writer.write(ok(b"STRAY"))  # while the connection is idle in the pool
            await writer.drain()
            sent_stray.set()
            if not await reader.read(1):
                keeper.closed += 1
            return
        for _ in range(100):
            writer.write(ok(b"fresh"))
            await writer.drain()
            head, _ = await read_head_and_body(reader)

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/"))
    assert (await s.response()).body == b"first"
    go.set()
    await wait_for(lambda: keeper.closed == 1, T, "the proxy to close the upstream connection")
    for _ in range(3):
        await s.send(get("/"))
        assert (await s.response()).body == b"fresh"
    assert up.connections == 2


# == HEAD, 304, HTTP/1.0 =====================================================================================


def head_script(head_reply: bytes, get_reply: bytes):
    async def script(reader, writer, up):
        for _ in range(1000):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            writer.write(head_reply if head.startswith(b"HEAD") else get_reply)
            await writer.drain()

    return script


async def test_head_with_chunked_response_then_get_on_same_connections(scripted, engine_factory, stream):
    up = await scripted(
        head_script(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nget\r\n0\r\n\r\n",
        )
    )
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    for _ in range(3):
        await s.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        r = await s.response(head=True)
        assert (r.status, r.header("X-Head")) == (200, "1")
        await s.send(get("/"))
        r = await s.response()
        assert (r.status, r.body) == (200, b"get")
    assert await s.quiet() == b""  # no stray "0\r\n\r\n" after a HEAD answer
    assert up.connections == 1


async def test_head_with_content_length_from_demo_backend(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    await s.send(
        b"HEAD /bytes/5000 HTTP/1.1\r\nHost: h\r\n\r\n"
        + get("/echo")
        + b"HEAD /chunked/10 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    r = await s.response(head=True)
    assert (r.status, r.header("Content-Length")) == (200, "5000")
    r = await s.response()
    assert r.json()["method"] == "GET"
    r = await s.response(head=True)
    assert r.status == 200
    assert await s.quiet() == b""
    assert b1.accepted == 1


async def test_304_with_content_length_has_no_body(scripted, engine_factory, stream):
    up = await scripted(
        head_script(b"", b'HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: "e"\r\n\r\n')
    )
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/", 'If-None-Match: "e"\r\n') * 3)
    for _ in range(3):
        r = await s.response()
        assert (r.status, r.body, r.header("ETag")) == (304, b"", '"e"')
        assert r.header("Transfer-Encoding") is None
    assert await s.quiet() == b""
    assert up.connections == 1


async def test_http10_keep_alive_client(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    for _ in range(3):
        await s.send(get("/echo", "Connection: keep-alive\r\n", version="1.0"))
        r = await s.response()
        assert r.status == 200
        assert r.json()["method"] == "GET"
        assert (r.header("Connection") or "").lower() == "keep-alive"
    # A body the backend chunks: HTTP/1.0 knows no chunks, so it ends with the connection.
    await s.send(get("/chunked/5000", "Connection: keep-alive\r\n", version="1.0"))
    r = await s.response()
    assert (r.status, len(r.body), r.until_close) == (200, 5000, True)
    assert r.header("Transfer-Encoding") is None
    assert (r.header("Connection") or "").lower() == "close"
    assert s.eof
    await wait_for(lambda: engine.controller.snapshot().backend("b1").in_flight == 0, T, "in_flight 0")


async def test_http10_keep_alive_client_is_told_on_every_kind_of_response(backends, engine_factory, stream):
    """One Connection decision for every response (proxy/head.connection_field): a backend's, the proxy's own
    error, and a reply made here all tell an HTTP/1.0 keep-alive client the connection stays open."""
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    await s.send(get("/echo", "Connection: keep-alive\r\n", version="1.0"))
    r = await s.response()
    assert (r.status, (r.header("Connection") or "").lower()) == (200, "keep-alive")
    engine.controller.maint("b1")  # no backend: the proxy answers 503 itself
    await s.send(get("/echo", "Connection: keep-alive\r\n", version="1.0"))
    r = await s.response()
    assert (r.status, (r.header("Connection") or "").lower()) == (503, "keep-alive")
    engine.controller.enable("b1")
    await s.send(get("/echo", "Connection: keep-alive\r\n", version="1.0"))
    assert (await s.response()).status == 200  # the same connection, still open
    assert not s.eof


async def test_http10_client_without_keep_alive(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    await s.send(get("/echo", version="1.0"))
    r = await s.response()
    assert r.status == 200
    assert (r.header("Connection") or "").lower() == "close"
    assert await s.closed()
    s2 = await stream(engine.address())
    await s2.send(b"POST /echo HTTP/1.0\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    r = await s2.response()
    assert r.json()["body_sha256"] == sha(b"abc")
    assert await s2.closed()
    assert b1.requests == 2


# == Connection: close in a pipeline, refused upgrades =======================================================


async def test_pipeline_ending_with_connection_close_is_answered_whole(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    await s.send(get("/echo/a") + post("/echo/b", b"bb", "Connection: close\r\n"))
    r = await s.response()
    assert r.json()["url"] == "/echo/a"
    r = await s.response()
    assert (r.json()["url"], r.header("Connection")) == ("/echo/b", "close")
    assert await s.closed()
    assert b1.requests == 2


async def test_requests_after_connection_close_are_ignored_not_fatal(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    await s.send(get("/echo/a") + post("/echo/b", b"bb", "Connection: close\r\n") + get("/echo/c"))
    r = await s.response()
    assert r.json()["url"] == "/echo/a"
    r = await s.response()
    assert (r.json()["url"], r.header("Connection")) == ("/echo/b", "close")
    assert await s.closed()
    assert s.buf == b""
    assert b1.requests == 2


async def test_refused_upgrade_does_not_smuggle_the_following_bytes(scripted, engine_factory, stream):
    keeper = Keeper()
    up = await scripted(path_script(keeper))
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    r = await s.response()
    assert (r.status, r.body) == (200, b"/ws:0")
    s2 = await stream(engine.address())
    await s2.send(get("/next"))
    assert (await s2.response()).status == 200
    assert keeper.requests
    assert all(b"x-forwarded-for" in h.lower() for h in keeper.requests), [
        h.split(b"\r\n")[0] for h in keeper.requests
    ]


# == framing headers named in Connection =====================================================================


async def test_connection_naming_content_length_does_not_unframe_the_request(
    scripted, engine_factory, stream
):
    keeper = Keeper()
    up = await scripted(path_script(keeper))
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(post("/", SMUGGLE, "Connection: content-length\r\n"))
    r = await s.response()
    assert (r.status, r.body) == (200, b"/:%d" % len(SMUGGLE))
    s2 = await stream(engine.address())
    await s2.send(get("/next"))
    assert (await s2.response()).body == b"/next:0"
    assert [h.split(b"\r\n")[0] for h in keeper.requests] == [b"POST / HTTP/1.1", b"GET /next HTTP/1.1"]


async def test_connection_naming_content_length_does_not_unframe_the_response(
    scripted, engine_factory, stream
):
    async def script(reader, writer, up):
        for _ in range(100):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            path = head.split(b" ")[1]
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: content-length\r\n\r\n%s"
                % (len(path), path)
            )
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/one"))
    r = await s.response(timeout=1.0)
    assert r.body == b"/one"
    assert not r.until_close
    await s.send(get("/two"))
    assert (await s.response(timeout=1.0)).body == b"/two"
