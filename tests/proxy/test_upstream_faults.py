"""Upstream faults, through the fault proxy (tests/faultproxy.py) and scripted upstreams.

For each fault: what the client gets (status; whether the response is whole; whether its connection is cut when
a response was cut, so that it can tell), what the backend's stats record, and that a bad upstream connection
is never used again (the upstream connections accepted are counted on the next request).

The answers, and where they come from:
- refused: the next backend, for any method (nothing was sent); none left: 503 with Retry-After.
- connect timeout (a blackholed port): as refused, 503 when none is left (HAProxy: 503 on connect timeouts).
- response timeout (a blackholed or slow response): 504 (HAProxy: 504 on `timeout server`); retried only when
  `retries.on` names "timeout".
- reset or closed before the head: an idempotent request goes to another backend; a POST that was sent: 502.
- anything after the head (reset, close, junk, a stall of `timeouts.response`): the client's connection is cut
  with a reset, and a chunked response never ends with its last chunk: a cut response never looks whole.
- not HTTP, or framing we cannot pass on (Content-Length and Transfer-Encoding together, Content-Length twice
  or invalid, a transfer coding other than chunked): 502. With both Content-Length and Transfer-Encoding, RFC
  9112 6.3 lets a recipient read the body as chunked and close after; we refuse the response instead, as nginx
  does (and llhttp, our parser): a response framed two ways came from a broken or hostile server, and whichever
  way we read it, another hop may read it the other way.
- bytes after a whole response: the response is delivered; the connection is not used again.
- When retries find no backend left, the client gets the last attempt's failure (502, 504, or 503 for a
  connect failure), not a 503 "no backend could take the request".
"""

from __future__ import annotations

import asyncio

import httptools
import pytest

from tests.conftest import make_config, wait_for
from tests.faultproxy import UPSTREAM
from tests.proxy.wire import Stream, get, post, read_head_and_body

T = 5.0  # the bound on any single wait in this file
RESPONSE_TIMEOUT = 0.3
TIMEOUTS = {"connect": "200ms", "response": "300ms"}


def config(entries, **service):
    service.setdefault("timeouts", TIMEOUTS)
    return make_config(entries, **service)


async def read_to_end(s: Stream, timeout: float = T) -> tuple[bytes, str]:
    """Everything the client receives until its connection ends, and how it ended: "eof" or "reset"."""
    data, s.buf = s.buf, b""
    async with asyncio.timeout(timeout):
        for _ in range(1_000_000):
            try:
                chunk = await s.reader.read(65536)
            except ConnectionResetError:
                return data, "reset"
            if not chunk:
                return data, "eof"
            data += chunk
    raise AssertionError("unbounded read")


def is_whole(data: bytes) -> bool:
    """Whether a strict parser finds one complete response in `data` (HTTP/1.1: framed by length or chunks)."""
    complete: list[bool] = []

    class Events:
        def on_message_complete(self) -> None:
            complete.append(True)

    try:
        httptools.HttpResponseParser(Events()).feed_data(data)
    except httptools.HttpParserError:
        return False
    return bool(complete)


def response(framing: str, body: bytes, piece: int = 1000) -> bytes:
    """A 200 with `body`, framed by Content-Length, chunks, or the end of the connection."""
    if framing == "length":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    if framing == "chunked":
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece])
            for i in range(0, len(body), piece)
        )
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body


def head_size(framing: str) -> int:
    return response(framing, b"").index(b"\r\n\r\n") + 4


def answering(framing: str, body: bytes):
    """A backend that answers every request with `response(framing, body)` (and closes after an unframed one)."""

    async def script(reader, writer, up):
        for _ in range(100):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            writer.write(response(framing, body))
            await writer.drain()
            if framing == "close":
                return

    return script


def replying(reply: bytes):
    """A backend that answers every request with `reply`, exact bytes, and keeps the connection."""

    async def script(reader, writer, up):
        for _ in range(100):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            writer.write(reply)
            await writer.drain()

    return script


def stats(engine, name: str):
    return engine.controller.snapshot().backend(name)


BODY = bytes(range(256)) * 80  # 20480 bytes


# == refused =========================================================================================================


async def test_refused_backend_is_skipped_for_any_method_and_taken_back_when_up(
    backends, fault_proxy, engine_factory, stream
):
    a = await backends("a")
    b = await backends("b")
    proxy = await fault_proxy(a)
    engine = await engine_factory(config([("a", proxy.address), b]))
    await proxy.down("refuse")
    s = await stream(engine.address())
    for i in range(3):
        await s.send(get(f"/g{i}"))
        r = await s.response()
        assert (r.status, r.json()["backend"]) == (200, "b")
        await s.send(post("/echo", b"body"))
        r = await s.response()
        assert (r.status, r.json()["backend"]) == (200, "b")  # nothing was sent to a: a POST moves on too
    assert proxy.accepted == 0
    assert b.requests == 6
    assert stats(engine, "a").connect_failures >= 1
    await proxy.up()
    for i in range(4):
        await s.send(get(f"/back{i}"))
        assert (await s.response()).status == 200
    assert a.requests >= 1  # a takes its turns again once it accepts
    assert proxy.accepted == 1  # over one kept-alive connection


async def test_every_backend_refused_503_retry_after_and_the_client_connection_stays(
    backends, fault_proxy, engine_factory, stream
):
    a = await backends("a")
    b = await backends("b")
    pa, pb = await fault_proxy(a), await fault_proxy(b)
    engine = await engine_factory(config([("a", pa.address), ("b", pb.address)]))
    await pa.down("refuse")
    await pb.down("refuse")
    s = await stream(engine.address())
    for method in ("GET", "POST"):
        await s.send(get("/") if method == "GET" else post("/", b"x"))
        r = await s.response()
        assert r.status == 503, method
        assert r.header("Retry-After") == "1"
        assert r.header("Connection") is None  # our own 503 keeps the client's connection
    snap = engine.controller.snapshot()
    assert (snap.backend("a").connect_failures, snap.backend("b").connect_failures) == (2, 2)
    assert snap.service("app").in_flight == 0
    await pb.up()
    await s.send(get("/"))
    r = await s.response()
    assert (r.status, r.json()["backend"]) == (200, "b")
    assert pb.accepted == 1


# == blackholed ======================================================================================================


async def test_connect_timeout_moves_any_method_to_the_next_backend(
    backends, fault_proxy, engine_factory, stream
):
    a = await backends("a")
    b = await backends("b")
    proxy = await fault_proxy(a)
    await proxy.down("blackhole")  # connects to a hang: its accept queue is full
    engine = await engine_factory(config([("a", proxy.address), b]))
    s = await stream(engine.address())
    loop = asyncio.get_running_loop()
    for request in (get("/"), post("/echo", b"body"), get("/"), post("/echo", b"body")):
        start = loop.time()
        await s.send(request)
        r = await s.response()
        assert (r.status, r.json()["backend"]) == (200, "b")
        assert loop.time() - start < 2.0
    assert b.requests == 4
    assert proxy.accepted == 0
    assert stats(engine, "a").connect_failures >= 2  # round robin gave a two of the four first


async def test_connect_timeout_everywhere_gives_503(backends, fault_proxy, engine_factory, stream):
    a = await backends("a")
    b = await backends("b")
    pa, pb = await fault_proxy(a), await fault_proxy(b)
    await pa.down("blackhole")
    await pb.down("blackhole")
    engine = await engine_factory(config([("a", pa.address), ("b", pb.address)]))
    s = await stream(engine.address())
    loop = asyncio.get_running_loop()
    start = loop.time()
    await s.send(get("/"))
    r = await s.response()
    elapsed = loop.time() - start
    assert r.status == 503  # as HAProxy answers when connect timeouts use up its retries
    assert r.header("Retry-After") == "1"
    assert 0.4 <= elapsed < 3.0  # one connect timeout (200 ms) per backend
    assert (stats(engine, "a").connect_failures, stats(engine, "b").connect_failures) == (1, 1)
    assert a.requests == b.requests == 0


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_blackholed_response_gives_504_and_the_connection_is_dropped(
    backends, fault_proxy, engine_factory, stream, method
):
    a = await backends("a")
    proxy = await fault_proxy(a)
    engine = await engine_factory(config([("a", proxy.address)]))
    proxy.blackhole()  # the request reaches a; its answer goes nowhere
    s = await stream(engine.address())
    loop = asyncio.get_running_loop()
    start = loop.time()
    await s.send(get("/") if method == "GET" else post("/echo", b"body"))
    r = await s.response()
    assert r.status == 504
    assert RESPONSE_TIMEOUT <= loop.time() - start < 2.0
    assert a.requests == 1
    await wait_for(lambda: proxy.open_links == 0, T, "the timed-out upstream connection to be closed")
    proxy.clear()
    await s.send(get("/"))  # the client's connection is still good (our own 504)
    assert (await s.response()).status == 200
    assert proxy.accepted == 2  # a new upstream connection: the one that timed out was not pooled
    snap = stats(engine, "a")
    assert snap.status_classes[0] == 1  # the timed-out attempt
    assert snap.in_flight == 0


@pytest.mark.parametrize("retry_on_timeout", [False, True])
async def test_response_timeout_is_retried_only_when_configured(
    backends, fault_proxy, engine_factory, stream, retry_on_timeout
):
    a = await backends("a")
    b = await backends("b")
    proxy = await fault_proxy(a)
    on = ["connect-failure", "reset", "gateway-error"] + (["timeout"] if retry_on_timeout else [])
    engine = await engine_factory(config([("a", proxy.address), b], retries={"attempts": 2, "on": on}))
    proxy.blackhole()
    s = await stream(engine.address())
    await s.send(get("/"))  # round robin: a first
    r = await s.response()
    if retry_on_timeout:
        assert (r.status, r.json()["backend"]) == (200, "b")
    else:
        assert r.status == 504
        assert b.requests == 0
    assert a.requests == 1


# == latency =========================================================================================================


@pytest.mark.parametrize("direction", [UPSTREAM, "downstream"])
async def test_latency_within_the_response_timeout_is_served_beyond_it_is_504(
    backends, fault_proxy, engine_factory, stream, direction
):
    a = await backends("a")
    proxy = await fault_proxy(a)
    engine = await engine_factory(config([("a", proxy.address)]))
    s = await stream(engine.address())
    proxy.latency(100, jitter_ms=20, direction=direction)
    for _ in range(3):
        await s.send(get("/"))
        assert (await s.response()).status == 200
    assert proxy.accepted == 1
    proxy.latency(700, direction=direction)
    await s.send(get("/"))
    assert (await s.response()).status == 504
    proxy.clear()
    await wait_for(lambda: proxy.open_links == 0, T, "the late connection to be closed")
    await s.send(get("/"))
    assert (await s.response()).status == 200
    assert proxy.accepted == 2  # the connection whose answer came late was not used again


# == reset or closed before the head ==================================================================================


@pytest.mark.parametrize("after", [0, 12], ids=["at-first-byte", "mid-status-line"])
async def test_reset_before_the_head_get_goes_elsewhere_post_sent_once_is_502(
    backends, fault_proxy, engine_factory, stream, after
):
    a = await backends("a")
    b = await backends("b")
    proxy = await fault_proxy(a)
    engine = await engine_factory(config([("a", proxy.address), b]))
    proxy.limit_data(
        after, then="reset"
    )  # a reads the request and answers; `after` bytes of it pass, then RST
    s = await stream(engine.address())
    for i in range(4):
        await s.send(get(f"/g{i}"))
        r = await s.response()
        assert (r.status, r.json()["backend"]) == (200, "b")
    gets_at_a = a.requests
    assert gets_at_a >= 2
    statuses = []
    for _ in range(4):
        await s.send(post("/echo", b"once"))
        r = await s.response()
        statuses.append(r.status)
        assert r.status == 502 or r.json()["backend"] == "b"
    posts_at_a = a.requests - gets_at_a
    assert statuses.count(502) == posts_at_a >= 1  # each POST that reached a was answered 502, never resent
    assert b.requests == 4 + statuses.count(200)
    assert proxy.accepted == a.requests  # a new connection each time: a reset one is never pooled
    snap = stats(engine, "a")
    assert snap.status_classes[0] == a.requests
    assert snap.in_flight == 0


# == cut after the head: reset, close, stall, junk ==================================================================


@pytest.mark.parametrize("end", ["close", "reset"])
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_response_cut_after_the_head(scripted, fault_proxy, engine_factory, stream, framing, end):
    up = await scripted(answering(framing, BODY))
    proxy = await fault_proxy(up)
    engine = await engine_factory(config([("s1", proxy.address)]))
    proxy.limit_data(head_size(framing) + 5000, then=end)
    s = await stream(engine.address())
    await s.send(get("/"))
    if framing == "close" and end == "close":
        # A body that ends with the connection ends at its close: nobody can tell this cut from a whole body.
        r = await s.response()
        assert (r.status, r.body, r.header("Transfer-Encoding")) == (200, BODY[:5000], "chunked")
        assert stats(engine, "s1").status_classes[2] == 1
    else:
        data, ending = await read_to_end(s)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert not is_whole(data)
        assert ending == "reset"  # cut with an RST: even a client reading until close can tell
        assert not data.endswith(b"0\r\n\r\n")  # the re-chunked body never gets its last chunk
        assert stats(engine, "s1").status_classes[5] == 1
    assert stats(engine, "s1").in_flight == 0
    proxy.clear()
    s2 = await stream(engine.address())
    await s2.send(get("/"))
    r = await s2.response()
    assert (r.status, r.body) == (200, BODY)
    assert proxy.accepted == up.connections == 2


@pytest.mark.parametrize("end", ["close", "reset"])
async def test_cut_chunked_response_to_an_http10_client_is_a_reset(
    scripted, fault_proxy, engine_factory, stream, end
):
    """An HTTP/1.0 client reads the body until the connection closes: only a reset tells it the body is cut."""
    up = await scripted(answering("chunked", BODY))
    proxy = await fault_proxy(up)
    engine = await engine_factory(config([("s1", proxy.address)]))
    s = await stream(engine.address())
    await s.send(get("/", version="1.0"))
    data, ending = await read_to_end(s)
    assert (ending, data.endswith(BODY)) == ("eof", True)  # whole: a plain close ends it
    proxy.limit_data(head_size("chunked") + 5000, then=end)
    s = await stream(engine.address())
    await s.send(get("/", version="1.0"))
    data, ending = await read_to_end(s)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert ending == "reset"
    assert len(data) < len(BODY)


async def test_stalled_body_is_cut_after_the_response_timeout(backends, fault_proxy, engine_factory, stream):
    a = await backends("a")
    proxy = await fault_proxy(a)
    engine = await engine_factory(config([("a", proxy.address)]))
    proxy.limit_data(5000, then="hold")  # the head and some body pass, then nothing more (nothing closed)
    s = await stream(engine.address())
    loop = asyncio.get_running_loop()
    await s.send(get("/bytes/100000"))
    await s._need(b"\r\n\r\n")
    start = loop.time()
    data, ending = await read_to_end(s)
    assert ending == "reset"
    assert RESPONSE_TIMEOUT - 0.05 <= loop.time() - start < 3.0  # (start: the head seen, a little late)
    assert b"Content-Length: 100000" in data
    assert not is_whole(data)
    assert stats(engine, "a").status_classes[5] == 1
    await wait_for(lambda: proxy.open_links == 0, T, "the stalled upstream connection to be closed")


async def test_slow_client_is_not_taken_for_a_stalled_backend(backends, engine_factory, stream):
    a = await backends("a")
    engine = await engine_factory(config([a]))
    s = await stream(engine.address())
    size = 16 * 1024 * 1024
    await s.send(get(f"/bytes/{size}"))
    await s._need(b"\r\n\r\n")
    conn = next(iter(engine.connections))
    await wait_for(lambda: conn.write_paused, T, "the proxy to wait on the client")
    await asyncio.sleep(3 * RESPONSE_TIMEOUT)  # the client reads nothing for a while: it is slow, not stalled
    r = await s.response()
    assert (r.status, len(r.body)) == (200, size)


@pytest.mark.parametrize(
    "junk",
    [
        b"7\r\nnot-hex\r\nzz\r\n",  # a chunk size that is not one
        b"5\r\nhello\r\n0\r\nbroken trailer\r\n\r\n",  # a trailer that is not a field
    ],
    ids=["bad-chunk-size", "bad-trailer"],
)
async def test_junk_in_a_chunked_body_cuts_the_response(scripted, engine_factory, stream, junk):
    up = await scripted(replying(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + junk))
    engine = await engine_factory(config([("s1", up.address)]))
    s = await stream(engine.address())
    await s.send(get("/"))
    data, ending = await read_to_end(s)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert ending == "reset"
    assert not is_whole(data)
    s2 = await stream(engine.address())
    await s2.send(get("/"))
    await read_to_end(s2)
    assert up.connections == 2  # the connection that sent junk was not used again


# == not HTTP, or framed in a way we cannot pass on ==================================================================

BAD_RESPONSES = {
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "tls-alert": b"\x15\x03\x01\x00\x02\x02\x28" * 4,
    "status-2000": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "cl-then-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-then-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "cl-twice-same": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "cl-twice-different": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nok",
    "cl-list": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    "cl-negative": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
    "cl-hex": b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok",
    "cl-empty": b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nok",
    "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nGZIP-BYTES",
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "te-chunked-twice": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    ),
    "header-without-colon": b"HTTP/1.1 200 OK\r\nNoColonHere\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("name", list(BAD_RESPONSES))
async def test_bad_response_from_the_only_backend_is_502(scripted, engine_factory, stream, name):
    up = await scripted(replying(BAD_RESPONSES[name]))
    engine = await engine_factory(config([("s1", up.address)]))  # default retries: none to go to
    s = await stream(engine.address())
    for i in range(2):
        await s.send(get("/"))
        r = await s.response()
        assert r.status == 502, r.body
        assert r.header("Retry-After") is None
        assert b"invalid response from backend" in r.body
        assert up.connections == i + 1  # a new upstream connection each time: the bad one is not reused
    assert not await s.closed(0.05)  # our own 502 keeps the client's connection
    snap = stats(engine, "s1")
    assert (snap.requests, snap.status_classes[0], snap.status_classes[2], snap.in_flight) == (2, 2, 0, 0)


@pytest.mark.parametrize("name", ["not-http", "cl-then-te", "cl-twice-different", "te-gzip"])
async def test_bad_response_get_goes_elsewhere_post_is_502(scripted, backends, engine_factory, stream, name):
    up = await scripted(replying(BAD_RESPONSES[name]))
    good = await backends("good")
    engine = await engine_factory(config([("bad", up.address), good]))
    s = await stream(engine.address())
    for _ in range(4):
        await s.send(get("/"))
        r = await s.response()
        assert (r.status, r.json()["backend"]) == (200, "good")
    statuses = []
    for _ in range(4):
        await s.send(post("/echo", b"once"))
        statuses.append((await s.response()).status)
    assert sorted(statuses) == [200, 200, 502, 502]
    assert good.requests == 6
    assert len(up.received) == up.connections == 4  # one request per connection: none reused


# == bytes after a whole response =====================================================================================


@pytest.mark.parametrize("arrival", ["same-read", "later-read"])
@pytest.mark.parametrize(
    "extra",
    [b"GARBAGE", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY"],
    ids=["garbage", "stray-response"],
)
async def test_bytes_after_a_whole_chunked_response(
    scripted, fault_proxy, engine_factory, stream, arrival, extra
):
    whole = response("chunked", b"the answer", piece=4)
    up = await scripted(replying(whole + extra))
    proxy = await fault_proxy(up)
    if arrival == "later-read":
        proxy.slicer(len(whole), delay_ms=30)  # the response in one write, what follows it 30 ms later
    engine = await engine_factory(config([("s1", proxy.address)]))
    s = await stream(engine.address())
    await s.send(get("/"))
    r = await s.response()
    assert (r.status, r.body) == (200, b"the answer")
    await wait_for(lambda: proxy.open_links == 0, T, "the connection that sent more to be closed")
    assert proxy.bytes_downstream == len(whole + extra)
    proxy.clear()
    await s.send(get("/"))
    r = await s.response()
    assert (r.status, r.body) == (200, b"the answer")  # not STRAY: a new connection
    assert up.connections == 2
    snap = stats(engine, "s1")
    assert (snap.status_classes[2], snap.status_classes[5]) == (2, 0)


# == slow drip =======================================================================================================


@pytest.mark.parametrize("path", ["/bytes/4096", "/chunked/4096"])
async def test_slow_drip_response_arrives_whole_and_its_connection_is_kept(
    backends, fault_proxy, engine_factory, stream, path
):
    a = await backends("a")
    proxy = await fault_proxy(a)
    engine = await engine_factory(config([("a", proxy.address)]))
    proxy.slicer(32, delay_ms=3)  # 32 bytes every 3 ms: longer in all than the response timeout
    s = await stream(engine.address())
    loop = asyncio.get_running_loop()
    start = loop.time()
    await s.send(get(path))
    r = await s.response()
    assert (r.status, r.body) == (200, b"x" * 4096)
    assert loop.time() - start > RESPONSE_TIMEOUT  # a body that keeps moving is never cut
    proxy.clear()
    await s.send(get(path))
    assert (await s.response()).body == b"x" * 4096
    assert proxy.accepted == 1  # a good connection is kept and used again
    assert stats(engine, "a").status_classes[2] == 2


# == under load ======================================================================================================


async def test_killing_backends_under_load_costs_get_clients_nothing(
    backends, fault_proxy, engine_factory, stream
):
    """Keep-alive GET traffic from a few clients to three backends; one is reset (its open connections and every
    new one), then another is blackholed (its answers vanish, its connects hang). Retries answer every GET, given
    "timeout" among their conditions (short timeouts), and a retry budget that covers the clients (the default,
    20% of requests in flight but at least 3, refuses a few retries here, by design). Bounded: 1500 requests or
    8 s."""
    clients = 6
    bs = [await backends(f"b{i}") for i in range(3)]
    proxies = [await fault_proxy(b) for b in bs]
    retries = {
        "attempts": 2,
        "on": ["connect-failure", "reset", "gateway-error", "timeout"],
        "min_retry_concurrency": clients,
    }
    entries = [(f"b{i}", p.address) for i, p in enumerate(proxies)]
    engine = await engine_factory(config(entries, retries=retries))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8.0
    limit = 1500
    done = 0
    failures: list[tuple[int, bytes]] = []
    after_blackhole = 0
    blackholed = asyncio.Event()

    async def client() -> None:
        nonlocal done, after_blackhole
        s = await stream(engine.address())
        while done < limit and loop.time() < deadline:
            if blackholed.is_set() and after_blackhole >= 60:
                return  # each GET that meets the blackhole waits a response timeout: enough are seen
            await s.send(get(f"/n{done}"))
            r = await s.response()
            if r.status != 200:
                failures.append((r.status, r.body))
            done += 1
            if blackholed.is_set():
                after_blackhole += 1

    workers = [asyncio.create_task(client()) for _ in range(clients)]
    try:
        await wait_for(lambda: done >= 300, T, "traffic to flow")
        await proxies[0].down("reset", existing="reset")  # b0: its connections reset, new ones reset at once
        reset_at = done
        await wait_for(lambda: done >= reset_at + 300, T, "traffic after the reset")
        proxies[1].blackhole()  # b1: answers vanish on its open connections...
        await proxies[1].down("blackhole")  # ...and connects to it hang
        blackholed.set()
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
    assert failures == []
    assert after_blackhole >= 60
    snap = engine.controller.snapshot()
    assert snap.backend("b0").status_classes[0] >= 1  # it failed attempts, and they were retried
    assert snap.backend("b1").status_classes[0] >= 1  # timed out (or could not connect), and retried
    assert snap.service("app").retries_refused == 0
    assert snap.service("app").in_flight == 0
    assert proxies[0].open_links == 0


async def test_round_robin_with_a_dead_backend_shares_its_turns_fairly(
    backends, fault_proxy, engine_factory, stream
):
    bs = [await backends(f"b{i}") for i in range(3)]
    dead = await fault_proxy(bs[0])
    await dead.down("refuse")
    engine = await engine_factory(config([("b0", dead.address), bs[1], bs[2]]))
    s = await stream(engine.address())
    for _ in range(30):
        await s.send(get("/"))
        assert (await s.response()).status == 200
    assert bs[1].requests >= 10  # fair: 15 and 15; today b1 gets none and b2 all 30
    assert bs[2].requests >= 10
