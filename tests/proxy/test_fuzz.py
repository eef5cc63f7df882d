"""What fuzzing the HTTP/1.1 front found going upstream, pinned as plain raw-socket cases (test_hostile's `proxy`
fixture: a recording upstream; the request refused, the connection closed, nothing upstream)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.conftest import make_config
from tests.proxy.test_hostile import HOST, SMUGGLED, message, values

T = 3.0  # the bound on every wait


# -- what the fuzzing found, pinned as plain cases (raw sockets, as in test_hostile) -------------------------


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(b"CONNECT / HTTP/1.1", id="origin-form"),
        pytest.param(b"CONNECT /a?b HTTP/1.1", id="origin-form-query"),
        pytest.param(b"CONNECT h:80 HTTP/1.1", id="authority-form"),
        pytest.param(b"CONNECT http://h/ HTTP/1.1", id="absolute-form"),
    ],
)
async def test_connect_is_refused_and_never_reaches_the_upstream(proxy, start):
    """Found by test_requests_from_the_grammar: `CONNECT /` went upstream (as an upgrade, which opens a tunnel
    when the backend agrees). RFC 9110 9.3.6: CONNECT's target is an authority; a reverse proxy serves none."""
    await proxy.reject(message(HOST, start=start), later=SMUGGLED)


@pytest.mark.parametrize("char", [pytest.param(bytes([c]), id=f"0x{c:02x}") for c in b'"<>\\^`{|}'])
@pytest.mark.parametrize("where", ["path", "query"])
async def test_target_characters_rfc3986_leaves_out_are_refused(proxy, char, where):
    """Found by test_requests_from_the_grammar: `GET /"<>{}|\\^` went upstream as it came. RFC 9112 3.2 (an
    invalid request-target: 400); HAProxy refuses these by default too (option accept-invalid-http-request)."""
    target = b"/hostile" + char if where == "path" else b"/hostile?a=" + char
    await proxy.reject(message(HOST, start=b"GET " + target + b" HTTP/1.1"))


async def test_target_characters_rfc3986_allows_are_forwarded(proxy):
    """The other side of the one above: every character RFC 3986 allows in a path and query still goes through."""
    target = b"/hostile/a-b.c_d~e!f$g&h'i(j)k*l+m,n;o=p:q@r%41?s=t/u?v[w]x%zz"
    _, head, _ = await proxy.forwarded(message(HOST, start=b"GET " + target + b" HTTP/1.1"))
    assert head.startswith(
        b"GET /hostile/a-b.c_d~e!f$g&h'i(j)k*l+m,n;o=p:q@rA?s=t/u?v[w]x%zz HTTP/1.1\r\n"
    ), head


@pytest.mark.parametrize("host", [b"a%zz", b"a%4", b"a%", b"%", b"%g0.example"])
@pytest.mark.parametrize("where", ["host-field", "absolute-form"])
async def test_host_with_a_broken_percent_encoding_is_refused(proxy, host, where):
    """Found by test_requests_from_the_grammar: `Host: a%zz` went upstream. RFC 9112 3.2: a Host that is not
    uri-host [":" port] MUST get a 400; in a reg-name (RFC 3986 3.2.2) `%` starts two hex digits."""
    if where == "host-field":
        data = message(b"Host: " + host, start=b"GET /hostile HTTP/1.1")
    else:
        data = message(HOST, start=b"GET http://" + host + b"/hostile HTTP/1.1")
    await proxy.reject(data)


async def test_host_with_a_percent_encoding_is_forwarded(proxy):
    _, head, _ = await proxy.forwarded(message(b"Host: a%41b.example:8080", start=b"GET /hostile HTTP/1.1"))
    assert values(head, b"host") == [b"a%41b.example:8080"], head


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        pytest.param(b"Content-Length: 1", b"A", id="content-length"),
        pytest.param(b"Content-Length: 35", SMUGGLED, id="content-length-a-request"),
        pytest.param(b"Transfer-Encoding: chunked", b"1\r\n\x00\r\n0\r\n\r\n", id="chunked"),
    ],
)
async def test_upgrade_request_with_a_body_is_refused(proxy, framing, body):
    """Found by test_requests_from_the_grammar: an upgrade request with a chunked body reached the upstream with
    an empty one. httptools ends an upgrade request at its head and hands what follows over as tunnel bytes, so
    the proxy sent the head with its framing and no body (for chunked, its own last chunk)."""
    data = message(
        HOST, b"Connection: upgrade", b"Upgrade: websocket", framing, start=b"GET /hostile HTTP/1.1"
    )
    await proxy.reject(data + body, later=SMUGGLED)


async def test_upgrade_request_with_a_body_never_desyncs_a_pooled_connection(scripted, engine_factory):
    """The harm behind the one above: the backend, told `Content-Length: 1`, answered without upgrading (keep-alive)
    before reading the byte; the proxy pooled the connection as clean, and the backend read the first byte of the
    next client's request as that body (it saw `ET /b`)."""
    seen: list[tuple[bytes, bytes]] = []

    async def ignores_upgrade(reader, writer, _up):  # answers each head at once, and honours Content-Length
        for _ in range(10):
            head = await reader.readuntil(b"\r\n\r\n")
            lengths = values(head, b"content-length")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            body = await reader.readexactly(int(lengths[0])) if lengths else b""
            seen.append((head.split(b"\r\n", 1)[0], body))

    up = await scripted(ignores_upgrade)
    engine = await engine_factory(make_config([("up", up.address)], retries={"attempts": 0}))
    for data in (
        message(HOST, b"Content-Length: 1", b"Connection: upgrade", b"Upgrade: x", start=b"GET /a HTTP/1.1")
        + b"A",
        message(HOST, start=b"GET /b HTTP/1.1"),
    ):
        reader, writer = await asyncio.open_connection(*engine.address())
        try:
            writer.write(data)
            async with asyncio.timeout(T):
                answer = await reader.readuntil(b"\r\n\r\n")
            assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 200 ")), answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    assert seen == [(b"GET /b HTTP/1.1", b"")]
