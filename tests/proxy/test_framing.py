"""Review of the HTTP/1.1 data plane: pipelining, keep-alive, framing, bodies, drains, retries, stats, shutdown.

Every test runs against real sockets on 127.0.0.1. Waiting is done with `wait_for` or `asyncio.timeout`, never
with a sleep; every loop is bounded. Tests marked xfail(strict=True) show a bug that is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
from dataclasses import dataclass, field

import pytest

from tests.conftest import make_config, wait_for

T = 5.0  # the bound on any single wait in this file


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a client that reads a stream of responses (pipelining, extra bytes, 1xx) -----------------------------


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    until_close: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def json(self) -> dict:
        return json.loads(self.body)


class Stream:
    """Exact bytes out; responses parsed one by one from a buffer that keeps whatever follows them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.eof = False

    @classmethod
    async def open(cls, address: tuple[str, int]) -> Stream:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _fill(self) -> None:
        if self.eof:
            raise EOFError("the server closed the connection")
        try:
            data = await self.reader.read(1 << 20)
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
            raise EOFError("the server closed the connection")
        self.buf += data

    async def _need(self, marker: bytes) -> int:
        for _ in range(100_000):
            at = self.buf.find(marker)
            if at >= 0:
                return at
            await self._fill()
        raise AssertionError("unbounded read")

    async def _exactly(self, n: int) -> bytes:
        for _ in range(100_000):
            if len(self.buf) >= n:
                data, self.buf = self.buf[:n], self.buf[n:]
                return data
            await self._fill()
        raise AssertionError("unbounded read")

    async def response(self, head: bool = False, info: bool = False, timeout: float = T) -> Resp:
        """The next response. `head`: it answers a HEAD (no body). `info`: return a 1xx instead of skipping it."""
        async with asyncio.timeout(timeout):
            for _ in range(100):
                at = await self._need(b"\r\n\r\n")
                block, self.buf = self.buf[:at], self.buf[at + 4 :]
                lines = block.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ")[1])
                headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
                resp = Resp(status, headers)  # type: ignore[arg-type]
                if 100 <= status < 200 and status != 101:
                    if info:
                        return resp
                    continue
                break
            else:
                raise AssertionError("too many 1xx")
            te = (resp.header("Transfer-Encoding") or "").lower()
            cl = resp.header("Content-Length")
            if head or status in (204, 304) or status == 101:
                return resp
            if te:
                assert te == "chunked", te
                body = []
                for _ in range(1_000_000):
                    at = await self._need(b"\r\n")
                    size = int(self.buf[:at].split(b";")[0], 16)
                    self.buf = self.buf[at + 2 :]
                    if size == 0:
                        for _ in range(100):
                            at = await self._need(b"\r\n")
                            line, self.buf = self.buf[:at], self.buf[at + 2 :]
                            if not line:
                                break
                            n, _, v = line.decode("latin-1").partition(":")
                            resp.trailers.append((n.strip(), v.strip()))
                        break
                    body.append(await self._exactly(size))
                    assert await self._exactly(2) == b"\r\n"
                resp.body = b"".join(body)
            elif cl is not None:
                resp.body = await self._exactly(int(cl))
            else:
                for _ in range(1_000_000):
                    try:
                        await self._fill()
                    except EOFError:
                        break
                resp.body, self.buf = self.buf, b""
                resp.until_close = True
            return resp

    async def closed(self, timeout: float = 2.0) -> bool:
        """True when the server closes the connection; any bytes before the close stay in `buf`."""
        try:
            async with asyncio.timeout(timeout):
                for _ in range(100_000):
                    await self._fill()
        except EOFError:
            return True
        except TimeoutError:
            return False
        return False

    async def quiet(self, timeout: float = 0.3) -> bytes:
        """What arrives within `timeout` (used to show that nothing more arrives)."""
        with contextlib.suppress(TimeoutError, EOFError):
            async with asyncio.timeout(timeout):
                for _ in range(100_000):
                    await self._fill()
        return self.buf

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def stream():
    opened: list[Stream] = []

    async def connect(address: tuple[str, int]) -> Stream:
        s = await Stream.open(address)
        opened.append(s)
        return s

    yield connect
    for s in opened:
        s.close()


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: h\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def post_chunked(path: str, body: bytes, piece: int = 1000, extra: str = "") -> bytes:
    chunks = [
        b"%x\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece]) for i in range(0, len(body), piece)
    ]
    head = f"POST {path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n{extra}\r\n".encode()
    return head + b"".join(chunks) + b"0\r\n\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Keeper:
    """A scripted backend's per-connection bookkeeping: requests seen, and connections it saw closed."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.closed = 0


async def read_head_and_body(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request (head, de-chunked body) as a backend reads it."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    body = b""
    if b"transfer-encoding: chunked" in lower:
        parts = []
        for _ in range(1_000_000):
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                body = await reader.readexactly(int(line.split(b":", 1)[1]))
    return head, body


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


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


# == keep-alive and upstream reuse ===============================================================================


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


# == HEAD, 304, HTTP/1.0 ===========================================================================================


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


# == request bodies ==================================================================================================


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


SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"


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


async def test_large_post_after_connect_failure_keeps_the_connection_usable(engine_factory, stream):
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


async def test_small_post_after_connect_failure_keeps_the_connection_usable(engine_factory, stream):
    engine = await engine_factory(make_config([("dead", f"127.0.0.1:{closed_port()}")]))
    s = await stream(engine.address())
    await s.send(post("/", b"p" * 1000))
    assert (await s.response()).status == 503
    await s.send(get("/"))
    assert (await s.response(timeout=2.0)).status == 503


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


# == drains ========================================================================================================


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


# == retries =======================================================================================================


def close_without_answer(when: str):
    async def script(reader, writer, up):
        if when == "after-request":
            head, body = await read_head_and_body(reader)
            up.received.append(head + body)
        # returning closes the connection (FIN), no answer

    return script


@pytest.mark.parametrize("when", ["after-request", "on-accept"])
async def test_get_retried_and_post_not_when_backend_closes_without_answering(
    scripted, backends, engine_factory, stream, when
):
    up = await scripted(close_without_answer(when))
    good = await backends("good")
    engine = await engine_factory(make_config([("rude", up.address), good]))
    s = await stream(engine.address())
    for i in range(6):
        await s.send(get(f"/g{i}"))
        r = await s.response()
        assert (r.status, r.json()["path"]) == (200, f"/g{i}")
    assert up.connections >= 3  # the rude backend got its turns, and each GET went on to the good one
    assert good.requests == 6
    statuses = []
    for _ in range(4):
        await s.send(post("/echo", b"once"))
        r = await s.response()
        statuses.append(r.status)
        if r.status == 200:
            assert r.json()["body_sha256"] == sha(b"once")
    if when == "after-request":
        assert sorted(statuses) == [200, 200, 502, 502]  # a POST that was sent is never sent twice
    else:  # closed before the request was written: the proxy may see it as a failed connect, and retry
        assert set(statuses) <= {200, 502}
        assert statuses.count(200) >= 2
    assert good.requests == 6 + statuses.count(200)
    snap = engine.controller.snapshot()
    assert snap.backend("rude").in_flight == 0
    assert snap.backend("good").in_flight == 0
    assert snap.backend("rude").status_classes[0] == snap.backend("rude").requests == up.connections


async def test_get_retried_on_reset_after_request_post_is_not(scripted, backends, engine_factory, stream):
    async def rude(reader, writer, up):
        head, body = await read_head_and_body(reader)
        up.received.append(head + body)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST

    up = await scripted(rude)
    good = await backends("good")
    engine = await engine_factory(make_config([("rude", up.address), good]))
    s = await stream(engine.address())
    for i in range(4):
        await s.send(get(f"/g{i}"))
        assert (await s.response()).json()["path"] == f"/g{i}"
    statuses = []
    for _ in range(4):
        await s.send(post("/echo", b"once"))
        statuses.append((await s.response()).status)
    assert sorted(statuses) == [200, 200, 502, 502]
    assert good.requests == 6  # 4 GETs + 2 POSTs; no POST sent twice
    assert len(up.received) == 4


# == clients that go away ==========================================================================================


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


# == stats =========================================================================================================


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


# == shutdown ======================================================================================================


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


# == more: replays, Connection: close in a pipeline, refused upgrades, limits ======================================


@pytest.mark.parametrize(("size", "replayed"), [(10_000, True), (100_000, False)])
async def test_put_body_is_replayed_on_another_backend_only_when_kept(
    scripted, backends, engine_factory, stream, size, replayed
):
    async def rude(reader, writer, up):
        head, body = await read_head_and_body(reader)
        up.received.append(head + body)
        writer.transport.abort()

    up = await scripted(rude)
    good = await backends("good")
    engine = await engine_factory(make_config([("rude", up.address), good], algorithm="round_robin"))
    s = await stream(engine.address())
    body = hashlib.sha256(b"put").digest() * (size // 32)
    statuses = []
    for _ in range(2):  # round robin: one of the two goes to the rude backend first
        for framed in (post("/echo", body), post_chunked("/echo", body, piece=3000)):
            await s.send(framed.replace(b"POST", b"PUT", 1))
            r = await s.response()
            statuses.append(r.status)
            if r.status == 200:
                assert (r.json()["method"], r.json()["body_sha256"]) == ("PUT", sha(body))
    assert len(up.received) >= 2
    assert all(sha(x.split(b"\r\n\r\n", 1)[1]) == sha(body) for x in up.received)
    if replayed:
        assert statuses == [200] * 4
    else:  # too big to keep: a PUT that was sent cannot be sent again
        assert statuses.count(502) == len(up.received)
        assert statuses.count(200) == 4 - len(up.received)
    snap = engine.controller.snapshot()
    assert snap.backend("rude").in_flight == snap.backend("good").in_flight == 0


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


# == backpressure across exchanges ===================================================================================


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


@pytest.mark.parametrize("attempts", [0, 1, 2])
async def test_retries_are_bounded_by_attempts(scripted, engine_factory, stream, attempts):
    seen: list[bytes] = []

    async def rude(reader, writer, up):
        head, _ = await read_head_and_body(reader)
        seen.append(head)
        writer.transport.abort()

    ups = [await scripted(rude) for _ in range(4)]
    engine = await engine_factory(
        make_config([(f"r{i}", u.address) for i, u in enumerate(ups)], retries={"attempts": attempts})
    )
    s = await stream(engine.address())
    await s.send(get("/"))
    r = await s.response()
    assert r.status == 502
    assert len(seen) == attempts + 1
    assert len({u.port for u in ups if u.connections}) == attempts + 1  # each try on another backend
    snap = engine.controller.snapshot().service("app")
    assert sum(b.status_classes[0] for b in snap.backends) == attempts + 1
    assert snap.in_flight == 0


# == framing headers named in Connection ===========================================================================


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
