"""Hostile and malformed requests (RFC 9112, RFC 9110): one raw-socket test per case, as HAProxy's and Envoy's
suites test them: the status the client got, whether the connection was closed, and that nothing reached the
upstream.

How "nothing reached the upstream" is proved:
- The upstream records every byte of every connection and parses it with its own parser.
- Before the hostile request, one request warms the pool: a request the proxy forwards is then written at once
  on the idle pooled connection (not after an asynchronous connect that a quick 400 could still cancel).
- After it, a fresh connection must get a 200 from the upstream (the proxy is still healthy).
- Then the upstream must have seen exactly those two requests and not one byte more, and the proxy must count
  exactly those two requests for its backend, with none in flight.
An error found in a chunked body, after the head was forwarded (a streaming proxy forwards the head as soon as it
has it), is held to the streaming equivalent: the upstream never gets a whole request nor a byte of what follows
the bad chunk, and the proxy closes that upstream connection.

No sleeps: every wait is a read or a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httptools
import pytest

from lbtui.config import parse_config
from tests.conftest import make_config, wait_for

T = 3.0  # the bound on waiting for a response
EARLY = 1.5  # the bound on waiting for the proxy's own immediate answer, before more bytes are sent
CLOSE_WAIT = 1.0  # the bound on waiting for the proxy to close a connection (it closes at once when right)

HOST = b"Host: h"
HEALTHY = b"GET /healthy HTTP/1.1\r\nHost: h\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
UPSTREAM_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-From: upstream\r\n\r\nok"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"


def message(*fields: bytes, start: bytes = b"POST /hostile HTTP/1.1", body: bytes = b"") -> bytes:
    """A request made of exact bytes: a start line, header field lines, the empty line, a body."""
    return start + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


# -- the upstream: records everything, answers each whole request 200 -------------------------------------------


class UpstreamConn:
    """One connection to the upstream: its bytes, and what the upstream's own parser made of them."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.urls: list[bytes] = []
        self.url = b""
        self.in_message = False
        self.completed = 0
        self.error: str | None = None
        self.eof = False
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.in_message = True
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.in_message = False
        self.urls.append(self.url)
        self.completed += 1


class Recorder:
    def __init__(self) -> None:
        self.conns: list[UpstreamConn] = []

    async def script(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _up: object) -> None:
        conn = UpstreamConn()
        self.conns.append(conn)
        try:
            for _ in range(100_000):
                data = await reader.read(65536)
                if not data:
                    return
                conn.raw += data
                before = conn.completed
                try:
                    conn.parser.feed_data(data)
                except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
                    conn.error = f"{type(error).__name__}: {error}"
                    return
                for _ in range(conn.completed - before):
                    writer.write(UPSTREAM_OK)
                await writer.drain()
        finally:
            conn.eof = True

    def leaks(self, partial_ok: bool = False) -> list[bytes]:
        """The bytes of each upstream connection that got anything but whole `/healthy` requests.

        `partial_ok`: a connection that got part of one request is fine once the proxy closed it (but never with
        a byte of the request smuggled behind it).
        """
        out = []
        for c in self.conns:
            others = [u for u in c.urls if u != b"/healthy"]
            partial = c.in_message or c.error is not None
            smuggled = b"/smuggled" in c.raw
            if others or smuggled or (partial and not (partial_ok and c.eof)):
                raw = bytes(c.raw)
                while raw.startswith(b"GET /healthy ") and b"\r\n\r\n" in raw:
                    raw = raw.split(b"\r\n\r\n", 1)[1]
                out.append(raw[:300])
        return out

    def request(self, path: bytes) -> tuple[bytes, bytes] | None:
        """The head the upstream got for `path` (from its request line), and the bytes after it."""
        for c in self.conns:
            raw = bytes(c.raw)
            at = raw.find(b" " + path + b" ")
            if at < 0:
                at = raw.find(b" " + path)
            if at >= 0:
                start = raw.rfind(b"\r\n", 0, at)
                start = 0 if start < 0 else start + 2
                end = raw.find(b"\r\n\r\n", at)
                if end < 0:
                    return raw[start:], b""
                return raw[start : end + 4], raw[end + 4 :]
        return None


def fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines if line)]


def values(head: bytes, name: bytes) -> list[bytes]:
    return [v for n, v in fields(head) if n == name]


# -- the client side -----------------------------------------------------------------------------------------


@dataclass
class Seen:
    status: int | None  # None: no response at all
    closed: bool
    response: bytes  # the first response
    after: bytes  # anything the proxy sent after it (a second response would be a smuggled one's)
    waited: bool = True  # whether the close was waited for (not after a 2xx where a close was not asked)

    def __str__(self) -> str:
        state = (
            "closed"
            if self.closed
            else "left open"
            if self.waited
            else "open (a 2xx: the close not waited for)"
        )
        return f"status {self.status}, {state}, response {self.response[:90]!r}" + (
            f", then {self.after[:120]!r}" if self.after else ""
        )


def response_length(buf: bytes) -> int | None:
    """The length of the first whole response in `buf` (Content-Length framed, as all responses here are)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    total = end + 4 + length
    return total if len(buf) >= total else None


async def read_some(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read(65536)
    except ConnectionError:
        return b""


class Proxy:
    def __init__(self, engine, recorder: Recorder) -> None:
        self.engine = engine
        self.recorder = recorder
        self.health_requests = 0

    @property
    def backend(self):
        return self.engine.balancer.backends["up"]

    async def probe(self, data: bytes, later: bytes = b"", wait_close: bool | None = True) -> Seen:
        """Send `data`, read one response; if still open send `later`; then see whether the proxy closes.

        `wait_close` None: wait for the close only after an answer that is not a 2xx.
        """
        reader, writer = await asyncio.open_connection(*self.engine.address())
        buf = b""
        closed = False
        try:
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EARLY if later else T):
                    while response_length(buf) is None:
                        chunk = await read_some(reader)
                        if not chunk:
                            closed = True
                            break
                        buf += chunk
            length = response_length(buf) or len(buf)
            status = None
            if buf.startswith(b"HTTP/1.") and response_length(buf) is not None:
                status = int(buf.split(b" ", 2)[1])
            if not closed and later:
                writer.write(later)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
            if wait_close is None:
                wait_close = status is None or not 200 <= status < 300
            if not closed and wait_close:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_WAIT):
                        for _ in range(100_000):
                            chunk = await read_some(reader)
                            if not chunk:
                                closed = True
                                break
                            buf += chunk
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return Seen(status, closed, buf[:length], buf[length:], waited=bool(wait_close))

    async def healthy(self) -> None:
        """A fresh connection gets a normal 200 from the upstream."""
        seen = await self.probe(HEALTHY, wait_close=False)
        self.health_requests += 1
        assert seen.status == 200, f"the proxy is not healthy after the case: {seen}"
        assert b"X-From: upstream" in seen.response, seen
        assert seen.response.endswith(b"ok"), seen

    def problems(self, seen: Seen, statuses: tuple[int | None, ...], partial_ok: bool = False) -> list[str]:
        out = []
        if seen.status not in statuses:
            out.append(f"status {seen.status} (wanted one of {statuses})")
        if not seen.closed:
            out.append("the connection was not closed")
        if seen.after:
            out.append(f"more was sent after the response: {seen.after[:120]!r}")
        leaks = self.recorder.leaks(partial_ok)
        if leaks:
            out.append(f"the upstream received {leaks}")
        in_flight = self.engine.in_flight()
        if not partial_ok and (self.backend.requests != self.health_requests or in_flight):
            out.append(
                f"the proxy counted {self.backend.requests} requests for the backend "
                f"({self.health_requests} health requests), {in_flight} in flight"
            )
        return out

    async def reject(
        self,
        data: bytes,
        statuses: tuple[int | None, ...] = (400,),
        later: bytes = b"",
        partial_ok: bool = False,
    ) -> None:
        """`data` is refused with one of `statuses`, the connection closed, and nothing reached the upstream.

        (After a 2xx, a failure already, the close is not waited for: that keeps the known bugs quick.)
        """
        seen = await self.probe(data, later=later, wait_close=None)
        await self.healthy()
        if partial_ok:  # what reached the upstream must end: wait (bounded) for the proxy to close it
            with contextlib.suppress(AssertionError):
                await wait_for(
                    lambda: all(c.eof for c in self.recorder.conns if c.in_message), T, "upstream close"
                )
        problems = self.problems(seen, statuses, partial_ok)
        assert not problems, f"{seen}: " + "; ".join(problems)

    async def forwarded(self, data: bytes, path: bytes = b"/hostile") -> tuple[Seen, bytes, bytes]:
        """`data` is answered by the upstream: what the client saw, and the head and rest the upstream got."""
        seen = await self.probe(data, wait_close=False)
        await self.healthy()
        assert seen.status == 200, seen
        assert b"X-From: upstream" in seen.response, seen
        got = self.recorder.request(path)
        assert got is not None, f"{seen}; the upstream never got {path!r}: {self.recorder.leaks()}"
        return seen, got[0], got[1]


@pytest.fixture
async def proxy(scripted, engine_factory) -> Proxy:
    recorder = Recorder()
    up = await scripted(recorder.script)
    engine = await engine_factory(make_config([("up", up.address)], retries={"attempts": 0}))
    p = Proxy(engine, recorder)
    await p.healthy()  # the pool now holds one idle connection to the upstream
    pool = engine.balancer.backends["up"].pool
    await wait_for(lambda: len(pool.idle) == 1, T, "one idle pooled connection")
    return p


async def either_rejected_or(
    proxy: Proxy, data: bytes, statuses: tuple[int, ...] = (400,)
) -> tuple[Seen, bytes, bytes] | None:
    """For cases where the RFC allows a refusal or a repaired forward: None if refused (and checked as such)."""
    seen = await proxy.probe(data, wait_close=None)
    await proxy.healthy()
    if seen.status != 200:
        problems = proxy.problems(seen, statuses)
        assert not problems, f"{seen}: " + "; ".join(problems)
        return None
    got = proxy.recorder.request(b"/hostile")
    assert b"X-From: upstream" in seen.response, seen
    assert got is not None, (seen, proxy.recorder.leaks())
    return seen, got[0], got[1]


# -- Content-Length with Transfer-Encoding ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            message(HOST, b"Content-Length: 40", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
            id="cl-then-te",
        ),
        pytest.param(
            message(HOST, b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n" + SMUGGLED),
            id="te-then-cl",
        ),
        pytest.param(
            message(HOST, b"Content-Length: 0", b"Transfer-Encoding: chunked", body=CHUNKED_HELLO + SMUGGLED),
            id="cl-zero-and-te",
        ),
        pytest.param(
            message(
                HOST,
                b"Content-Length: 5",
                b"Transfer-Encoding: chunked",
                start=b"POST /hostile HTTP/1.0",
                body=b"hello" + SMUGGLED,
            ),
            id="http10-cl-and-te",
        ),
    ],
)
async def test_content_length_with_transfer_encoding_is_refused(proxy, data):
    """RFC 9112 6.3: a request with both may be an attack; a server MAY reject it; an intermediary that does not
    must drop Content-Length and close after. Rejecting is what HAProxy and Envoy do: 400 and close."""
    await proxy.reject(data)


# -- Transfer-Encoding other than chunked ---------------------------------------------------------------------


def te(*codings: bytes, body: bytes = CHUNKED_HELLO + SMUGGLED) -> bytes:
    return message(HOST, *(b"Transfer-Encoding: " + c for c in codings), body=body)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(te(b"gzip"), id="gzip"),
        pytest.param(te(b"chunked, gzip"), id="chunked-gzip"),
        pytest.param(te(b"gzip, chunked", body=CHUNKED_HELLO), id="gzip-chunked"),
        pytest.param(te(b"identity"), id="identity"),
        pytest.param(
            te(b"identity, chunked", body=CHUNKED_HELLO),
            id="identity-chunked",
        ),
        pytest.param(te(b"xchunked"), id="xchunked"),
        pytest.param(te(b"chunkedx"), id="chunkedx"),
        pytest.param(te(b"chunked, chunked"), id="chunked-twice-in-one"),
        pytest.param(te(b'"chunked"'), id="quoted"),
        pytest.param(te(b""), id="empty"),
        pytest.param(te(b"\x0bchunked"), id="vtab-chunked"),
        pytest.param(te(b"chunked\x00"), id="chunked-nul"),
        pytest.param(te(b"chunked", b"chunked"), id="two-headers-chunked-chunked"),
        pytest.param(
            te(b"gzip", b"chunked", body=CHUNKED_HELLO),
            id="two-headers-gzip-chunked",
        ),
        pytest.param(te(b"chunked", b"gzip"), id="two-headers-chunked-gzip"),
        pytest.param(te(b"chunked", b"identity"), id="two-headers-chunked-identity"),
        pytest.param(te(b"chunked", b""), id="two-headers-chunked-empty"),
    ],
)
async def test_transfer_encoding_other_than_chunked_is_refused(proxy, data):
    """RFC 9112 6.3: chunked not the final coding -> 400 and close; 6.1: a coding not understood -> 501;
    7: chunked MUST NOT be applied twice. Either way nothing is forwarded."""
    await proxy.reject(data, statuses=(400, 501))


@pytest.mark.parametrize(
    "coding",
    [
        pytest.param(b"CHUNKED", id="upper"),
        pytest.param(b"Chunked", id="mixed-case"),
        pytest.param(b"chunked ", id="trailing-ows"),
        pytest.param(b"\tchunked", id="leading-htab"),
    ],
)
async def test_transfer_encoding_chunked_spelled_legally_is_forwarded_rechunked(proxy, coding):
    """RFC 9112 7: coding names are case-insensitive; OWS around a field value is not part of it."""
    _, head, rest = await proxy.forwarded(te(coding, body=CHUNKED_HELLO))
    assert values(head, b"transfer-encoding") == [b"chunked"], head
    assert rest.startswith(CHUNKED_HELLO), rest


async def test_http10_with_transfer_encoding_is_not_smuggled(proxy):
    """RFC 9112 6.1: an HTTP/1.0 request with Transfer-Encoding has faulty framing: the server may answer it, but
    must close the connection after it; what follows must never be read as a request."""
    data = message(HOST, b"Transfer-Encoding: chunked", start=b"POST /hostile HTTP/1.0", body=b"0\r\n\r\n")
    seen = await proxy.probe(data + SMUGGLED, wait_close=True)
    await proxy.healthy()
    assert seen.closed, seen
    assert not seen.after, seen
    assert not any(b"/smuggled" in c.raw for c in proxy.recorder.conns)


# -- Content-Length values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param([b"5", b"6"], id="two-different"),
        pytest.param([b"6", b"5"], id="two-different-reversed"),
        pytest.param([b"1, 2"], id="list-1-2"),
        pytest.param([b"5, 6"], id="list-5-6"),
        pytest.param([b"abc"], id="non-numeric"),
        pytest.param([b"-5"], id="negative"),
        pytest.param([b"+5"], id="plus-sign"),
        pytest.param([b"0x5"], id="hex"),
        pytest.param([b"5.0"], id="decimal"),
        pytest.param([b"1e1"], id="exponent"),
        pytest.param([b"5 5"], id="space-inside"),
        pytest.param([b"5a"], id="trailing-letter"),
        pytest.param([b""], id="empty"),
        pytest.param([b"\x0b5"], id="vtab"),
        pytest.param([b"5\x00"], id="nul"),
        pytest.param([b"18446744073709551616"], id="2-to-the-64"),
        pytest.param([b"99999999999999999999999999"], id="overflow"),
    ],
)
async def test_bad_content_length_is_refused(proxy, lengths):
    """RFC 9112 6.3 (5): an invalid Content-Length in a request -> 400 and close."""
    data = message(HOST, *(b"Content-Length: " + v for v in lengths), body=b"hello" + SMUGGLED)
    await proxy.reject(data)


@pytest.mark.parametrize(
    "lengths",
    [pytest.param([b"5", b"5"], id="two-identical-fields"), pytest.param([b"5, 5"], id="identical-list")],
)
async def test_identical_content_lengths_are_refused_or_forwarded_as_one(proxy, lengths):
    """RFC 9110 8.6: a recipient may take identical values as one Content-Length (or reject the message); what
    goes upstream must then carry one Content-Length, never two nor a list."""
    got = await either_rejected_or(
        proxy, message(HOST, *(b"Content-Length: " + v for v in lengths), body=b"hello")
    )
    if got is not None:
        _, head, rest = got
        assert values(head, b"content-length") == [b"5"], head
        assert rest.startswith(b"hello"), rest


# -- chunked framing -------------------------------------------------------------------------------------------


def chunked(body: bytes) -> bytes:
    return message(HOST, b"Transfer-Encoding: chunked", body=body + SMUGGLED)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"g\r\nhello\r\n0\r\n\r\n", id="non-hex-size"),
        pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="negative-size"),
        pytest.param(b"+5\r\nhello\r\n0\r\n\r\n", id="plus-size"),
        pytest.param(b"0x5\r\nhello\r\n0\r\n\r\n", id="0x-size"),
        pytest.param(b" 5\r\nhello\r\n0\r\n\r\n", id="leading-space-size"),
        pytest.param(b"10000000000000000\r\nhello\r\n0\r\n\r\n", id="size-2-to-the-64"),
        pytest.param(b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", id="size-overflow"),
        pytest.param(b"\r\nhello\r\n0\r\n\r\n", id="empty-size"),
        pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="no-crlf-after-data"),
        pytest.param(b"3\r\nhello\r\n0\r\n\r\n", id="data-longer-than-size"),
        pytest.param(b"5\r\nhello\n0\r\n\r\n", id="bare-lf-after-data"),
        pytest.param(b"5\nhello\r\n0\r\n\r\n", id="bare-lf-after-size"),
        pytest.param(b"5\rhello\r\n0\r\n\r\n", id="bare-cr-after-size"),
        pytest.param(b"5;a=\x01\r\nhello\r\n0\r\n\r\n", id="ext-ctl-byte"),
        pytest.param(b"5;a=\x00\r\nhello\r\n0\r\n\r\n", id="ext-nul"),
        pytest.param(b"5;a\rb\r\nhello\r\n0\r\n\r\n", id="ext-bare-cr"),
        pytest.param(b"5;a=b c\r\nhello\r\n0\r\n\r\n", id="ext-space-in-value"),
        pytest.param(b"5;\r\nhello\r\n0\r\n\r\n", id="ext-empty-name"),
        pytest.param(b"5\r\nhello\r\n0\r\nX: \x01\r\n\r\n", id="trailer-ctl-byte"),
        pytest.param(b"5\r\nhello\r\n0\r\n", id="last-chunk-without-final-crlf"),
    ],
)
async def test_bad_chunked_framing_is_refused(proxy, body):
    """RFC 9112 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF, chunk-size = 1*HEXDIG. A bad chunk
    -> 400 and close; the upstream never gets a whole request nor the request after the bad chunk."""
    await proxy.reject(chunked(body), partial_ok=True)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"5;name=value\r\nhello\r\n0\r\n\r\n", id="token-ext"),
        pytest.param(b'5;a="b;c\\"d"\r\nhello\r\n0;last=1\r\n\r\n', id="quoted-ext"),
        pytest.param(b"5;a=1;b=2\r\nhello\r\n0\r\n\r\n", id="two-exts"),
    ],
)
async def test_chunk_extensions_are_never_forwarded_raw(proxy, body):
    """RFC 9112 7.1.1: a recipient ignores extensions it does not understand; the proxy re-frames the body, so the
    upstream gets plain chunks: no extension, no bytes the proxy did not parse itself."""
    _, head, rest = await proxy.forwarded(message(HOST, b"Transfer-Encoding: chunked", body=body))
    assert values(head, b"transfer-encoding") == [b"chunked"], head
    assert rest.startswith(CHUNKED_HELLO), rest
    assert b";" not in rest.split(b"GET /healthy", 1)[0], rest


# -- header field syntax -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([HOST, b"X-A: a", b" b"], id="sp-fold"),
        pytest.param([HOST, b"X-A: a", b"\tb"], id="htab-fold"),
        pytest.param([HOST, b"X-A:", b" b"], id="fold-after-empty-value"),
    ],
)
async def test_obs_fold_is_refused_or_unfolded(proxy, lines):
    """RFC 9112 5.2: a server that receives obs-fold MUST reject it with 400, or (a proxy) replace each obs-fold
    with SP before forwarding. Never forwarded as a folded line."""
    got = await either_rejected_or(proxy, message(*lines))
    if got is not None:
        _, head, _ = got
        assert b"\r\n " not in head, head
        assert b"\r\n\t" not in head, head


async def test_obs_fold_of_a_framing_header_is_refused(proxy):
    """A folded Content-Length reads `5 6` once unfolded: invalid either way."""
    await proxy.reject(message(HOST, b"Content-Length: 5", b" 6", body=b"hello" + SMUGGLED))


async def test_whitespace_before_the_first_header_is_refused_or_ignored(proxy):
    """RFC 9112 2.2: whitespace between the start line and the first field: reject, or drop those lines."""
    got = await either_rejected_or(proxy, message(b" X-Evil: 1", HOST, start=b"GET /hostile HTTP/1.1"))
    if got is not None:
        _, head, _ = got
        assert b"x-evil" not in head.lower(), head


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(message(b"Host : h"), id="host"),
        pytest.param(message(HOST, b"X-A : b"), id="x-a"),
        pytest.param(message(HOST, b"X-A\t: b"), id="x-a-htab"),
        pytest.param(message(HOST, b"Content-Length : 5", body=b"hello" + SMUGGLED), id="content-length"),
        pytest.param(
            message(HOST, b"Transfer-Encoding : chunked", body=CHUNKED_HELLO + SMUGGLED),
            id="transfer-encoding",
        ),
    ],
)
async def test_whitespace_between_field_name_and_colon_is_refused(proxy, data):
    """RFC 9112 5.1: a server MUST reject, with 400, any request with whitespace between a field name and colon."""
    await proxy.reject(data)


@pytest.mark.parametrize(
    "byte",
    [
        pytest.param(b, id=f"0x{b[0]:02x}")
        for b in (b"\x00", b"\x01", b"\x08", b"\x0b", b"\x0c", b"\r", b"\x0e", b"\x1f", b"\x7f")
    ],
)
async def test_control_byte_in_a_field_value_is_refused(proxy, byte):
    """RFC 9110 5.5: field values are VCHAR, obs-text, SP and HTAB; CR, LF and NUL MUST be rejected (or, for
    the other controls, replaced by SP): a proxy must never pass them on. HAProxy and Envoy answer 400."""
    await proxy.reject(message(HOST, b"X-A: a" + byte + b"b"))


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"X A: b", id="space"),
        pytest.param(b"X\x00A: b", id="nul"),
        pytest.param(b"X\x7fA: b", id="del"),
        pytest.param(b"X@A: b", id="at"),
        pytest.param(b"X(A): b", id="parens"),
        pytest.param(b": b", id="empty-name"),
        pytest.param(b"X-A", id="no-colon"),
    ],
)
async def test_bad_field_name_is_refused(proxy, line):
    """RFC 9110 5.1: field-name = token."""
    await proxy.reject(message(HOST, line))


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(b"GET /a\rb HTTP/1.1", id="bare-cr-in-target"),
        pytest.param(b"GET /hostile HTTP/1.1\rX-A: b", id="bare-cr-ending-the-line"),
        pytest.param(b"GET /a\x00b HTTP/1.1", id="nul-in-target"),
        pytest.param(b"GET /a\x01b HTTP/1.1", id="ctl-in-target"),
        pytest.param(b"GET /a\x7fb HTTP/1.1", id="del-in-target"),
        pytest.param(b"GE\x00T /hostile HTTP/1.1", id="nul-in-method"),
        pytest.param(b"GET /hostile HTTP/1.1\x00", id="nul-after-version"),
    ],
)
async def test_control_byte_in_the_request_line_is_refused(proxy, start):
    """RFC 9112 2.2 and 3: a bare CR is invalid; the request line has no place for controls."""
    await proxy.reject(message(HOST, start=start))


# -- Host ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hosts",
    [
        pytest.param([], id="missing"),
        pytest.param([b"h", b"h"], id="two-identical"),
        pytest.param([b"h", b"other"], id="two-different"),
        pytest.param([b"a, b"], id="list"),
        pytest.param([b"a b"], id="space"),
        pytest.param([b"a/b"], id="slash"),
        pytest.param([b"a@b"], id="userinfo"),
        pytest.param([b"a:b"], id="bad-port"),
        pytest.param([b"[::1"], id="unclosed-ip-literal"),
        pytest.param([b"a#b"], id="hash"),
        pytest.param([b"a?b"], id="question-mark"),
    ],
)
async def test_bad_host_is_refused(proxy, hosts):
    """RFC 9112 3.2: a server MUST respond 400 to an HTTP/1.1 request without Host, and to any request with more
    than one Host field line or an invalid Host value (uri-host [ ":" port ], RFC 3986)."""
    await proxy.reject(message(*(b"Host: " + h for h in hosts), start=b"GET /hostile HTTP/1.1"))


async def test_two_hosts_on_http10_are_refused(proxy):
    """RFC 9112 3.2: "any request message that contains more than one Host header field line": 1.0 too."""
    await proxy.reject(message(b"Host: a", b"Host: b", start=b"GET /hostile HTTP/1.0"))


async def test_http10_without_host_is_forwarded_with_one_host(proxy):
    """HTTP/1.0 needs no Host; but the proxy forwards in HTTP/1.1, where a client MUST send Host (RFC 9112 3.2),
    so the upstream gets exactly one Host field (empty, or the proxy's choice)."""
    _, head, _ = await proxy.forwarded(message(start=b"GET /hostile HTTP/1.0"))
    assert head.startswith(b"GET /hostile HTTP/1.1\r\n"), head
    assert len(values(head, b"host")) == 1, head


# -- request line ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HELLO\r\n\r\n", id="word"),
        pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32, id="tls-client-hello"),
        pytest.param(b"GET\r\nHost: h\r\n\r\n", id="method-only"),
        pytest.param(b"/hostile HTTP/1.1\r\nHost: h\r\n\r\n", id="no-method"),
        pytest.param(b" GET /hostile HTTP/1.1\r\nHost: h\r\n\r\n", id="leading-space"),
        pytest.param(b"GET /hostile HTTP/1.1 x\r\nHost: h\r\n\r\n", id="word-after-version"),
        pytest.param(b"G@T /hostile HTTP/1.1\r\nHost: h\r\n\r\n", id="method-not-a-token"),
        pytest.param(
            b"GET /hostile\r\nHost: h\r\n\r\n",
            id="no-version-http09",
        ),
        pytest.param(b"GET /hostile http/1.1\r\nHost: h\r\n\r\n", id="lowercase-http"),
        pytest.param(b"GET /hostile HTTP/1\r\nHost: h\r\n\r\n", id="version-1"),
        pytest.param(b"GET /hostile HTTP/1.\r\nHost: h\r\n\r\n", id="version-1-dot"),
        pytest.param(b"GET /hostile HTTP/1.1.1\r\nHost: h\r\n\r\n", id="version-1-1-1"),
        pytest.param(b"GET /hostile HTTP/01.1\r\nHost: h\r\n\r\n", id="version-01-1"),
        pytest.param(b"GET /hostile HTTP/1.10\r\nHost: h\r\n\r\n", id="version-1-10"),
        pytest.param(b"GET /hostile HTTP/1.a\r\nHost: h\r\n\r\n", id="version-1-a"),
        pytest.param(b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", id="space-in-target"),
        pytest.param(b"GET hostile HTTP/1.1\r\nHost: h\r\n\r\n", id="target-without-slash"),
        pytest.param(
            b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
            id="asterisk-not-options",
        ),
        pytest.param(
            b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n",
            id="fragment-in-target",
        ),
    ],
)
async def test_bad_request_line_is_refused(proxy, data):
    """RFC 9112 3: request-line = method SP request-target SP HTTP-version; HTTP-version = "HTTP/" DIGIT "." DIGIT
    (case-sensitive); 3.2: request-target forms; an invalid request line -> 400 (or 301 for a target with
    spaces)."""
    await proxy.reject(data, statuses=(400, 301) if b"/a b" in data else (400,))


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(
            b"HTTP/2.0",
        ),
        pytest.param(b"HTTP/3.0"),
        pytest.param(b"HTTP/9.9"),
    ],
)
async def test_unsupported_major_version_gets_505(proxy, version):
    """RFC 9110 15.6.6: 505 for a major version the server does not support; nothing can be parsed after it."""
    await proxy.reject(message(HOST, start=b"GET /hostile " + version), statuses=(505,))


async def test_higher_minor_version_is_served_as_http11_or_refused_with_505(proxy):
    """RFC 9110 2.5 / RFC 9112 2.3: a recipient SHOULD process an HTTP/1.x request with a higher minor version as
    the highest 1.x it supports; 505 is the refusal for a version it will not serve. Never a 400: the line is
    well-formed."""
    got = await either_rejected_or(proxy, message(HOST, start=b"GET /hostile HTTP/1.2"), statuses=(505,))
    if got is not None:
        _, head, _ = got
        assert head.startswith(b"GET /hostile HTTP/1.1\r\n"), head


@pytest.mark.parametrize("method", [b"get", b"Get", b"FOO"])
async def test_unknown_method_is_refused_or_forwarded_unchanged(proxy, method):
    """RFC 9110 9.1: methods are case-sensitive tokens: `get` is not GET but an unknown method. An origin server
    SHOULD answer 501 (or 405); an intermediary may forward it. Sane means: a clean refusal with nothing upstream,
    or a forward with the method unchanged (never rewritten to GET); never a crash."""
    got = await either_rejected_or(
        proxy, message(HOST, start=method + b" /hostile HTTP/1.1"), statuses=(400, 405, 501)
    )
    if got is not None:
        _, head, _ = got
        assert head.startswith(method + b" /hostile HTTP/1.1\r\n"), head


async def test_absolute_form_with_a_different_host_never_reaches_the_upstream_ambiguous(proxy):
    """RFC 9112 3.2.2: with an absolute-form target, Host is ignored and replaced by the target's authority. The
    upstream must never get a target naming one host with a Host naming another (routing confusion): refused,
    or forwarded with Host = other.example."""
    data = message(HOST, start=b"GET http://other.example/hostile HTTP/1.1")
    seen = await proxy.probe(data, wait_close=None)
    await proxy.healthy()
    if seen.status != 200:
        problems = proxy.problems(seen, (400,))
        assert not problems, f"{seen}: " + "; ".join(problems)
        return
    got = proxy.recorder.request(b"http://other.example/hostile") or proxy.recorder.request(b"/hostile")
    assert got is not None, proxy.recorder.leaks()
    assert values(got[0], b"host") == [b"other.example"], got[0]


# -- an early answer must not turn a body into a request ------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(message(HOST, b"X-A: a\x01b", b"Content-Length: 35"), id="bad-field-byte"),
        pytest.param(
            message(b"Content-Length: 35"),
            id="missing-host",
        ),
        pytest.param(
            message(HOST, b"Content-Length: 35", start=b"POST /hostile HTTP/2.0"),
            id="http20",
        ),
        pytest.param(message(HOST, b"Transfer-Encoding: gzip"), id="te-gzip"),
    ],
)
async def test_refused_request_body_sent_after_the_answer_is_never_a_request(proxy, head):
    """The client sends the body after our early 4xx/5xx: the body (a whole request) must not be parsed as one,
    so the connection must be closed (nothing after a framing error can be trusted)."""
    assert len(SMUGGLED) == 35
    statuses = (505,) if b"HTTP/2.0" in head else (400, 501)
    await proxy.reject(head, statuses=statuses, later=SMUGGLED)


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        pytest.param(b"Content-Length: 35", SMUGGLED, id="content-length"),
        pytest.param(b"Transfer-Encoding: chunked", b"23\r\n" + SMUGGLED + b"\r\n0\r\n\r\n", id="chunked"),
    ],
)
@pytest.mark.parametrize("when", ["with-head", "after-answer", "after-answer-expect-100"])
async def test_early_503_never_lets_the_body_be_read_as_a_request(proxy, framing, body, when):
    """No backend available: a 503 comes before the body is read. Whether the proxy then closes or reads the body
    away, the body (a whole request) must never be parsed as the next request."""
    proxy.engine.controller.maint("up")
    extra = [b"Expect: 100-continue"] if when == "after-answer-expect-100" else []
    head = message(HOST, framing, *extra)
    if when == "with-head":
        seen = await proxy.probe(head + body, wait_close=None)
    else:
        seen = await proxy.probe(head, later=body, wait_close=None)
    proxy.engine.controller.enable("up")
    await proxy.healthy()
    assert seen.status == 503, seen
    assert not seen.after, seen
    assert proxy.recorder.leaks() == []
    assert proxy.backend.requests == proxy.health_requests


async def test_malformed_pipelined_request_does_not_spoil_the_one_before_it(proxy):
    """A good request then, pipelined behind it, a malformed one: the good one is answered by the upstream, then
    400 and close; the malformed one reaches nothing. (Answering the good one 400 after it was forwarded would
    tell the client it failed when the upstream may have acted on it.)"""
    data = message(HOST, start=b"GET /first HTTP/1.1") + message(
        HOST, b"X-A: a\x01b", start=b"GET /hostile HTTP/1.1"
    )
    seen = await proxy.probe(data, wait_close=True)
    await proxy.healthy()
    first = proxy.recorder.request(b"/first")
    assert seen.status == 200, seen
    assert b"X-From: upstream" in seen.response, seen
    assert seen.after.startswith(b"HTTP/1.1 400 "), seen
    assert seen.closed, seen
    assert first is not None
    assert proxy.recorder.request(b"/hostile") is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(message(HOST, b"Connection: close", b"Content-Length: 5"), id="connection-close"),
        pytest.param(message(HOST, b"Content-Length: 5", start=b"POST /hostile HTTP/1.0"), id="http10"),
    ],
)
async def test_body_of_the_last_request_arriving_after_its_head_is_forwarded(proxy, data):
    """Found on the way (not hostile): the last request of a connection means no request after it, not no more
    bytes of it. Its body, sent once the head has gone upstream, must follow it and be answered."""
    reader, writer = await asyncio.open_connection(*proxy.engine.address())
    try:
        writer.write(data)
        await writer.drain()
        await wait_for(lambda: proxy.recorder.request(b"/hostile") is not None, T, "the head upstream")
        writer.write(b"hello")
        await writer.drain()
        await wait_for(
            lambda: any(b"/hostile" in c.urls for c in proxy.recorder.conns),
            EARLY,
            "the whole request upstream",
        )
        async with asyncio.timeout(T):
            response = await reader.read(65536)
        assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    got = proxy.recorder.request(b"/hostile")
    assert got is not None
    assert got[1].startswith(b"hello"), got


# -- early answers: a request with a body answered before its body is read ---------------------------------


@pytest.fixture
async def routed(scripted, engine_factory) -> Proxy:
    """The recording upstream behind a route for /healthy only: anything else is the proxy's own 404."""
    recorder = Recorder()
    up = await scripted(recorder.script)
    config = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                "app": {"backends": [{"name": "up", "address": up.address}], "retries": {"attempts": 0}}
            },
            "routes": [{"match": {"path": "/healthy"}, "service": "app"}],
            "limits": {"max_body": 64},
        },
        source="<test>",
    )
    p = Proxy(await engine_factory(config), recorder)
    await p.healthy()
    return p


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # 404: no route. The body is a whole request: it must never be read as the next one.
        (b"POST /nowhere HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED, 404),
        (
            b"POST /nowhere HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(SMUGGLED)
            + SMUGGLED
            + b"\r\n0\r\n\r\n",
            404,
        ),
        # 413: a Content-Length over [limits] max_body, answered before the body is read.
        (
            b"POST /healthy HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n"
            + SMUGGLED
            + b"x" * (100 - len(SMUGGLED)),
            413,
        ),
        # 413: a chunked body that grows past max_body.
        (
            b"POST /healthy HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"50\r\n"
            + b"y" * 80
            + b"\r\n"
            + b"%x\r\n" % len(SMUGGLED)
            + SMUGGLED
            + b"\r\n0\r\n\r\n",
            413,
        ),
    ],
    ids=["404-content-length", "404-chunked", "413-content-length", "413-chunked"],
)
async def test_an_early_answer_never_reads_the_body_as_a_request(routed, data, status):
    seen = await routed.probe(data)
    await routed.healthy()
    assert seen.status == status, seen
    assert not seen.after, seen  # exactly one response: the body's request was never answered
    assert not any(b"/smuggled" in c.raw for c in routed.recorder.conns)


async def test_a_404_to_a_request_with_a_body_keeps_no_half_read_state(routed):
    """Even sent in pieces, the body after a 404 is never parsed as a request head."""
    reader, writer = await asyncio.open_connection(*routed.engine.address())
    try:
        writer.write(b"POST /nowhere HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert head.startswith(b"HTTP/1.1 404 ")
        with contextlib.suppress(ConnectionError):
            writer.write(SMUGGLED)  # the body, after the answer
            await writer.drain()
        rest = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(CLOSE_WAIT):
                while chunk := await reader.read(65536):
                    rest += chunk
        assert b"HTTP/1.1" not in rest.split(b"\r\n\r\n", 1)[-1]  # no second response
    finally:
        writer.close()
    await routed.healthy()
    assert not any(b"/smuggled" in c.raw for c in routed.recorder.conns)
