"""The HTTP/1.1 data plane against real backends on loopback: forwarding, framing, keep-alive, streaming."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import resource

import httpx
import pytest

from lbtui.config import LimitsConfig
from tests.conftest import RawClient, make_config, wait_for


async def test_get_round_trip_and_forwarding_headers(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    client = await raw_client(engine.address())
    r = await client.request(
        "GET", "/echo?x=1", {"X-Forwarded-For": "10.9.9.9", "X-Forwarded-Proto": "gopher"}
    )
    assert r.status == 200
    seen = dict((k.lower(), v) for k, v in json.loads(r.body)["headers"])
    # The client is not a trusted proxy (the listener trusts none): its X-Forwarded-For is dropped.
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"  # the client's value is not trusted
    assert seen["x-forwarded-host"] == "test.local"
    assert seen["x-request-id"]  # made when not sent
    assert json.loads(r.body)["url"] == "/echo?x=1"


async def test_request_id_kept_when_sent(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    client = await raw_client(engine.address())
    r = await client.request("GET", "/echo", {"X-Request-ID": "abc-123"})
    ids = [v for k, v in json.loads(r.body)["headers"] if k.lower() == "x-request-id"]
    assert ids == ["abc-123"]


async def test_request_ids_are_unique(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    client = await raw_client(engine.address())
    ids = set()
    for _ in range(20):
        r = await client.request("GET", "/echo")
        ids.update(v for k, v in json.loads(r.body)["headers"] if k.lower() == "x-request-id")
    assert len(ids) == 20


async def test_hop_by_hop_headers_stripped_both_ways(scripted, engine_factory, raw_client):
    async def script(reader, writer, up):
        while True:
            await up.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Secret\r\n"
                b"X-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-Kept: k\r\n\r\nok"
            )
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    client = await raw_client(engine.address())
    await client.send(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Private\r\nX-Private: p\r\n"
        b"Keep-Alive: timeout=9\r\nTE: trailers\r\nProxy-Authorization: x\r\nUpgrade: h2c\r\nX-End: e\r\n\r\n"
    )
    r = await client.read_response()
    assert r.status == 200
    assert r.body == b"ok"
    names = {k.lower() for k, _ in r.headers}
    assert "x-secret" not in names
    assert "keep-alive" not in names
    assert "proxy-authenticate" not in names
    assert r.header("X-Kept") == "k"
    sent = up.received[0].lower()
    for gone in (b"x-private", b"keep-alive", b"te:", b"proxy-authorization", b"upgrade", b"connection:"):
        assert gone not in sent, gone
    assert b"x-end: e" in sent


async def test_keep_alive_reuses_one_upstream_connection(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    client = await raw_client(engine.address())
    for _ in range(50):
        r = await client.request("GET", "/")
        assert r.status == 200
    assert b1.requests == 50
    assert b1.accepted == 1  # the pool reused the same upstream connection
    assert not client.closed


async def test_client_connection_close_is_honoured(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    client = await raw_client(engine.address())
    r = await client.request("GET", "/", {"Connection": "close"})
    assert r.status == 200
    assert r.header("Connection") == "close"
    assert await client.is_closed()


async def test_http10_client_gets_whole_body_and_close(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    client = await raw_client(engine.address())
    await client.send(b"GET /chunked/5000 HTTP/1.0\r\nHost: h\r\n\r\n")
    r = await client.read_response()
    assert r.status == 200
    assert len(r.body) == 5000
    assert r.header("Transfer-Encoding") is None  # HTTP/1.0 knows no chunked encoding


async def test_post_bodies_content_length_and_chunked(backends, engine_factory):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    body = bytes(range(256)) * 4000  # ~1 MB
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        r = await http.post("/echo", content=body)
        assert json.loads(r.content)["body_sha256"] == hashlib.sha256(body).hexdigest()

        async def pieces():
            for i in range(0, len(body), 70000):
                yield body[i : i + 70000]

        r = await http.post("/echo", content=pieces())  # chunked upload
        echoed = json.loads(r.content)
        assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert ["Transfer-Encoding", "chunked"] in echoed["headers"]


async def test_url_and_headers_arriving_byte_by_byte(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    client = await raw_client(engine.address())
    request = (
        b"GET /echo/some/long/path?with=query HTTP/1.1\r\nHost: h\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n"
    )
    for i in range(len(request)):
        client.writer.write(request[i : i + 1])
        await client.writer.drain()
    r = await client.read_response()
    assert r.status == 200
    echoed = json.loads(r.body)
    assert echoed["url"] == "/echo/some/long/path?with=query"
    assert ["X-Long", "v" * 300] in echoed["headers"]


async def test_head_response_has_no_body_and_connection_stays_usable(scripted, engine_factory, raw_client):
    async def script(reader, writer, up):
        while True:
            req = await up.read_request(reader)
            if req.startswith(b"HEAD"):
                # As a real server does: the length of the body a GET would have, and no body.
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget")
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    client = await raw_client(engine.address())
    r = await client.request("HEAD", "/")
    assert r.status == 200
    assert r.header("Content-Length") == "1000"
    r = await client.request("GET", "/")
    assert r.body == b"get"
    assert up.connections == 1  # the upstream connection was reused after HEAD


async def test_204_and_304_have_no_body(scripted, engine_factory, raw_client):
    async def script(reader, writer, up):
        while True:
            req = await up.read_request(reader)
            status = b"204 No Content" if b" /204 " in req else b"304 Not Modified"
            writer.write(b"HTTP/1.1 " + status + b'\r\nETag: "x"\r\n\r\n')
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    client = await raw_client(engine.address())
    for path, status in (("/204", 204), ("/304", 304), ("/204", 204)):
        r = await client.request("GET", path)
        assert r.status == status
        assert r.body == b""
        assert r.header("Transfer-Encoding") is None
    assert up.connections == 1


async def test_1xx_responses_do_not_end_the_exchange(scripted, engine_factory, raw_client):
    async def script(reader, writer, up):
        while True:
            await up.read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")
            await writer.drain()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    client = await raw_client(engine.address())
    r = await client.request("POST", "/", {"Expect": "100-continue"}, body=b"data")
    assert r.informational == [100, 103]
    assert r.status == 200
    assert r.body == b"done"
    r = await client.request("GET", "/")
    assert r.status == 200
    assert r.body == b"done"


async def test_body_delimited_by_close_becomes_chunked(scripted, engine_factory, raw_client):
    async def script(reader, writer, up):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for i in range(5):
            writer.write(b"part%d;" % i)
            await writer.drain()
        writer.close()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    client = await raw_client(engine.address())
    r = await client.request("GET", "/")
    assert r.status == 200
    assert r.body == b"part0;part1;part2;part3;part4;"
    assert r.header("Transfer-Encoding") == "chunked"
    assert not client.closed
    r = await client.request("GET", "/")  # the client connection is still good
    assert r.body == b"part0;part1;part2;part3;part4;"


async def test_pipelined_requests_answered_in_order(backends, engine_factory, raw_client):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    client = await raw_client(engine.address())
    # The first is the slowest: order must still hold.
    paths = ["/delay/50", "/delay/1", "/echo", "/delay/10", "/"]
    await client.send(b"".join(f"GET {p} HTTP/1.1\r\nHost: h\r\n\r\n".encode() for p in paths))
    bodies = []
    data = b""
    async with asyncio.timeout(10):
        while len(bodies) < len(paths):
            chunk = await client.reader.read(65536)
            assert chunk
            data += chunk
            while b"\r\n\r\n" in data:
                head, rest = data.split(b"\r\n\r\n", 1)
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                if len(rest) < length:
                    break
                bodies.append(json.loads(rest[:length]))
                data = rest[length:]
    got = [b.get("path") or b.get("url") for b in bodies]
    assert got == paths


async def test_streaming_large_body_keeps_memory_flat(backends, engine_factory):
    """A 256 MiB response to a slow reader and a 256 MiB upload: the proxy's memory does not follow the body."""
    b1 = await backends("b1")
    size = 256 * 1024 * 1024
    # [limits] max_body (100 MiB by default) would refuse the upload with a 413: raise it for this test.
    config = make_config([b1])
    engine = await engine_factory(dataclasses.replace(config, limits=LimitsConfig(max_body=2 * size)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    reader, writer = await asyncio.open_connection(*engine.address())
    writer.write(f"GET /bytes/{size} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    await writer.drain()
    received = 0
    async with asyncio.timeout(120):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"200 OK" in head
        while received < size:
            chunk = await reader.read(1 << 20)
            assert chunk
            received += len(chunk)
    writer.close()
    assert received == size

    async def upload():
        piece = b"u" * (1 << 20)
        for _ in range(size // len(piece)):
            yield piece

    async with httpx.AsyncClient(base_url=engine.url(), timeout=120) as http:
        r = await http.post("/echo", content=upload())
    assert json.loads(r.content)["body_size"] == size
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB while 2x256 MiB passed"


async def test_websocket_upgrade_is_tunnelled(scripted, engine_factory, raw_client):
    async def script(reader, writer, up):
        req = await up.read_request(reader)
        assert b"upgrade: websocket" in req.lower()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: x\r\n\r\nhello-from-server"
        )
        await writer.drain()
        while True:
            data = await reader.read(100)
            if not data:
                return
            writer.write(b"echo:" + data)
            await writer.drain()

    up = await scripted(script)
    engine = await engine_factory(make_config([("s1", up.address)]))
    client = await raw_client(engine.address())
    await client.send(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    data = b""
    async with asyncio.timeout(5):
        while b"hello-from-server" not in data:
            data += await client.reader.read(100)
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nUpgrade: websocket" in head
    assert data == b"hello-from-server"
    await client.send(b"ping")
    async with asyncio.timeout(5):
        while b"echo:ping" not in data:
            data += await client.reader.read(100)


async def test_round_robin_spreads_over_backends(backends, engine_factory):
    bs = [await backends(f"b{i}") for i in range(3)]
    engine = await engine_factory(make_config(bs))
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        for _ in range(30):
            assert (await http.get("/")).status_code == 200
    assert [b.requests for b in bs] == [10, 10, 10]


async def test_stats_count_requests_and_latency(backends, engine_factory):
    fast = await backends("fast")
    slow = await backends("slow", latency=0.02)
    engine = await engine_factory(make_config([fast, slow]))
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        for _ in range(20):
            await http.get("/")
        for _ in range(4):
            await http.get("/status/503")
    snap = engine.controller.snapshot()
    f, s = snap.backend("fast"), snap.backend("slow")
    assert f.requests + s.requests == 24
    assert f.status_classes[2] + s.status_classes[2] == 20
    assert f.status_classes[5] + s.status_classes[5] == 4
    assert s.window.p50_ms >= 19
    assert f.window.p50_ms < 10
    assert snap.service("app").window.requests == 24
    assert f.in_flight == 0
    assert s.in_flight == 0
    await wait_for(lambda: True)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_methods_pass_through(backends, engine_factory, method):
    b1 = await backends("b1")
    engine = await engine_factory(make_config([b1]))
    async with httpx.AsyncClient(base_url=engine.url()) as http:
        r = await http.request(method, "/echo", content=b"x" if method in ("POST", "PUT", "PATCH") else None)
    assert r.status_code == 200
    assert r.json()["method"] == method


def test_raw_client_importable():
    assert RawClient
