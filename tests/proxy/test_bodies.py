"""Request bodies through the HTTP/1.1 data plane: large chunked uploads and trailers, Expect: 100-continue
(passed on, or refused by the backend), a backend that answers before the body is over (the rest is never parsed
as requests), a broken chunk mid-body, a body pending when the connect fails, uploads to a backend that reads
slowly, and a slow client's upload against the response timeout.

Every test runs against real sockets on 127.0.0.1 (tests/proxy/wire.py's raw client). Waiting is done with
`wait_for` or `asyncio.timeout`, never with a sleep; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import pytest

from tests.conftest import make_config, wait_for
from tests.proxy.wire import SMUGGLE, Keeper, T, get, ok, post, post_chunked, read_head_and_body, sha

# == chunked bodies and trailers =============================================================================


async def test_large_chunked_upload_in_small_chunks_then_keep_alive(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    body = hashlib.sha256(b"seed").digest() * 100_000  # 3.2 MB in 4 KiB chunks
    await s.send(post_chunked("/echo", body, piece=4096))
    r = await s.response()
    assert (r.json()["body_size"], r.json()["body_sha256"]) == (len(body), sha(body))
    # Chunk extensions, and a last chunk with a trailer: still one request, and the connection goes on.
    await s.send(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n" + get("/echo")
    )
    r = await s.response()
    assert r.json()["body_sha256"] == sha(b"hello world")
    r = await s.response()
    assert r.json()["method"] == "GET"
    assert b1.requests == 3


async def test_request_trailers_do_not_corrupt_the_next_requests_headers(backends, engine_factory, stream):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    s = await stream(engine.address())
    await s.send(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: t\r\n\r\n"
    )
    assert (await s.response()).status == 200
    await s.send(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-T: t\r\n\r\n5\r\nworld\r\n0\r\n\r\n"
    )
    r = await s.response()
    assert ["X-T", "t"] in r.json()["headers"]


# == Expect: 100-continue ====================================================================================


async def test_expect_100_continue_waits_for_the_backend(scripted, engine_factory, stream):
    async def script(reader, writer, up):
        for _ in range(100):
            head = await reader.readuntil(b"\r\n\r\n")
            up.received.append(head)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if b"expect: 100-continue" in head.lower():
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            body = await reader.readexactly(length)
            writer.write(ok(b"got:" + body))
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    for i in range(2):
        await s.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        r = await s.response(info=True)
        assert r.status == 100  # the backend's go-ahead reaches the client before it sends the body
        await s.send(b"body%d" % i)
        r = await s.response()
        assert (r.status, r.body) == (200, b"got:body%d" % i)
    assert up.connections == 1


async def test_expect_100_continue_refused_by_the_backend(scripted, engine_factory, stream):
    async def script(reader, writer, up):
        head = await reader.readuntil(b"\r\n\r\n")
        up.received.append(head)
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope")
        await writer.drain()
        data = await reader.read(100_000)
        up.received.append(data)

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\nExpect: 100-continue\r\n\r\n")
    r = await s.response()
    assert (r.status, r.body) == (401, b"nope")
    assert await s.closed()  # the body never came: the connection cannot be used again
    assert engine.controller.snapshot().backend("s1").in_flight == 0


# == an answer before the body is over, a body broken midway =================================================


def early_413(keeper: Keeper):
    async def script(reader, writer, up):
        head = await reader.readuntil(b"\r\n\r\n")
        keeper.requests.append(head)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
        await writer.drain()
        for _ in range(100_000):  # a polite server: reads (and drops) what comes until the proxy closes
            if not await reader.read(65536):
                keeper.closed += 1
                return

    return script


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_early_413_while_body_still_arriving_closes_the_connection(
    scripted, engine_factory, stream, framing
):
    keeper = Keeper()
    up = await scripted(early_413(keeper))
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    if framing == "length":
        start = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n" + SMUGGLE * 10
        rest = SMUGGLE * 100
    else:
        start = b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (
            len(SMUGGLE * 10),
            SMUGGLE * 10,
        )
        rest = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLE), SMUGGLE) + SMUGGLE
    await s.send(start)
    r = await s.response()
    assert (r.status, r.body) == (413, b"too large")
    with contextlib.suppress(ConnectionError):
        await s.send(rest)  # the rest of the body (it looks like requests): must never be parsed as one
    assert await s.closed()
    assert s.buf == b""  # no second response
    assert up.connections == 1
    assert len(keeper.requests) == 1
    await wait_for(lambda: keeper.closed == 1, T, "the upstream connection to close")
    snap = engine.controller.snapshot().backend("s1")
    assert (snap.in_flight, snap.requests, snap.status_classes[4]) == (0, 1, 1)


async def test_malformed_chunk_mid_body_never_returns_the_upstream_connection_to_the_pool(
    scripted, engine_factory, stream
):
    answer = asyncio.Event()
    after: list[bytes] = []

    async def script(reader, writer, up):
        head = await reader.readuntil(b"\r\n\r\n")
        up.received.append(head)
        if up.connections > 1:
            writer.write(ok(b"fresh"))
            await writer.drain()
            await reader.read(1)
            return
        await reader.readuntil(b"hello\r\n")  # the first (valid) chunk, as the proxy forwards it
        await answer.wait()
        writer.write(ok(b"early"))  # answers before the body is over, keeps the connection
        await writer.drain()
        line = await reader.readline()  # the next chunk-size line of the unfinished body, or EOF
        after.append(line)

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await wait_for(lambda: len(up.received) == 1, T, "the request at the backend")
    await s.send(b"ZZZ-not-a-chunk\r\n")
    await wait_for(
        lambda: all(c.parsing is None for c in engine.connections), T, "the proxy to reject the bad chunk"
    )
    answer.set()
    r = await s.response()
    assert r.status == 400  # the client's body is broken: the proxy says so (as nginx and HAProxy do)
    assert await s.closed()
    s2 = await stream(engine.address())
    await s2.send(get("/next"))
    r = await s2.response()
    assert (r.status, r.body) == (200, b"fresh")
    await wait_for(lambda: len(after) == 1, T, "the first upstream connection to end")
    assert after == [b""]  # closed by the proxy, not fed the next request as chunk data


# == a body pending when the connect fails ===================================================================


async def test_large_post_after_connect_failure_keeps_the_connection_usable(
    engine_factory, stream, closed_port
):
    engine = await engine_factory(make_config([("dead", f"127.0.0.1:{closed_port()}")]))
    s = await stream(engine.address())
    await s.send(post("/", b"p" * 70_000))
    r = await s.response()
    assert r.status == 503
    if r.header("Connection") == "close":
        assert await s.closed()
        return
    await s.send(get("/"))
    r = await s.response(timeout=1.0)
    assert r.status == 503


async def test_small_post_after_connect_failure_keeps_the_connection_usable(
    engine_factory, stream, closed_port
):
    engine = await engine_factory(make_config([("dead", f"127.0.0.1:{closed_port()}")]))
    s = await stream(engine.address())
    await s.send(post("/", b"p" * 1000))
    assert (await s.response()).status == 503
    await s.send(get("/"))
    assert (await s.response(timeout=2.0)).status == 503


# == slow readers and slow senders ===========================================================================


async def test_upload_to_a_slow_reading_backend_then_next_request(scripted, engine_factory, stream):
    gate = asyncio.Event()

    async def script(reader, writer, up):
        for _ in range(100):
            head = await reader.readuntil(b"\r\n\r\n")
            up.received.append(head)
            if len(up.received) == 1:
                await gate.wait()  # let the proxy's buffers towards us fill up
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            writer.write(ok(sha(body).encode()))
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    s = await stream(engine.address())
    body = hashlib.sha256(b"up").digest() * (16 * 1024 * 1024 // 32)
    sender = asyncio.create_task(s.send(post("/", body)))
    try:
        await wait_for(lambda: any(c.paused & 1 for c in engine.connections), T, "the client side to pause")
    finally:
        gate.set()
    async with asyncio.timeout(20):
        await sender
    r = await s.response(timeout=20)
    assert r.body == sha(body).encode()
    await s.send(post("/", b"small"))
    r = await s.response()
    assert r.body == sha(b"small").encode()
    assert up.connections == 1


async def test_slow_upload_is_not_cut_by_the_response_timeout(scripted, engine_factory, stream):
    async def script(reader, writer, up):
        head, body = await read_head_and_body(reader)
        up.received.append(head)
        writer.write(ok(b"got %d" % len(body)))
        await writer.drain()
        await reader.read(1)

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)], timeouts={"response": "300ms"}))
    s = await stream(engine.address())
    await s.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n12345")
    # The client is slow: for 0.8 s (over twice the response timeout) the rest of its body does not come.
    # The backend is waiting for it; nobody has anything to answer yet.
    assert await s.quiet(0.8) == b""
    await s.send(b"67890")
    r = await s.response()
    assert (r.status, r.body) == (200, b"got 10")
