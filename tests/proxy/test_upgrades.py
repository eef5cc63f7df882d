"""Upgrade and 101 (issue 13): only the protocols a route allows are tunnelled, and a 101 nobody asked for is a 502.

What outside corpora found (BishopFox's h2csmuggler and the h2c cases of HTTP request smuggling write-ups): a
proxy that passes `Upgrade: h2c` on and tunnels once the backend answers 101 lets every later request on that
connection (HTTP/2 frames now) past the route's ip_allow, auth and rate limits, with forged X-Consumer and
X-Forwarded-For. Here the backend is scripted: it switches to whatever protocol a request asks for, and records
what it got as HTTP requests and, after a switch, as raw tunnel bytes.

No sleeps: every wait is a read or a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest

from lbtui.config import parse_config
from tests.conftest import wait_for

T = 5.0

# An HTTP/2 client's first bytes after an h2c upgrade, then what an attacker asks for on the new channel (a real
# client sends HEADERS frames; the bytes only have to pass the tunnel, and must never reach the backend here).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2C_SETTINGS = b"AAMAAABkAARAAAAAAAIAAAAA"
SMUGGLED_ADMIN = (
    b"GET /admin/secret HTTP/1.1\r\nHost: h\r\nX-Consumer: root\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
)


@dataclass
class Request:
    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]


@dataclass
class Conn:
    requests: list[Request] = field(default_factory=list)
    tunnel: bytearray = field(default_factory=bytearray)  # bytes after a 101 it sent
    eof: bool = False


class Switcher:
    """A backend that answers 101 to any Upgrade request (switching to its first protocol, or to `switch_to`), or
    to every request when `always` is set (with `upgrade_header`); else 200 with keep-alive."""

    def __init__(self, always: bool = False, upgrade_header: bytes | None = b"websocket") -> None:
        self.conns: list[Conn] = []
        self.always = always
        self.upgrade_header = upgrade_header

    def requests(self) -> list[Request]:
        return [r for c in self.conns for r in c.requests]

    def tunnelled(self) -> bytes:
        return b"".join(bytes(c.tunnel) for c in self.conns)

    def answer(self, request: Request) -> bytes:
        asked = request.values(b"upgrade")
        if self.always or asked:
            upgrade = self.upgrade_header if self.always else asked[0].split(b",")[0].strip()
            head = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            if upgrade is not None:
                head += b"Upgrade: " + upgrade + b"\r\n"
            return head + b"\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-From: upstream\r\n\r\nok"

    async def script(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _up: object) -> None:
        conn = Conn()
        self.conns.append(conn)
        state: dict[str, Any] = {}

        class Parser:
            def on_message_begin(self) -> None:
                state.update(url=b"", headers=[], body=b"")

            def on_url(self, url: bytes) -> None:
                state["url"] += url

            def on_header(self, name: bytes, value: bytes) -> None:
                state["headers"].append((name, value))

            def on_body(self, body: bytes) -> None:
                state["body"] += body

            def on_message_complete(self) -> None:
                method = parser.get_method()
                conn.requests.append(Request(method, state["url"], state["headers"], state["body"]))

        parser = httptools.HttpRequestParser(Parser())
        switched = False
        try:
            for _ in range(10_000):
                data = await reader.read(65536)
                if not data:
                    return
                if switched:
                    conn.tunnel += data
                    continue
                before = len(conn.requests)
                rest = b""
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade as upgrade:
                    rest = data[upgrade.args[0] :]
                except httptools.HttpParserError:
                    return
                for request in conn.requests[before:]:
                    reply = self.answer(request)
                    writer.write(reply)
                    if reply.startswith(b"HTTP/1.1 101"):
                        switched = True
                        conn.tunnel += rest
                        break
                await writer.drain()
        finally:
            conn.eof = True


async def exchange(address: tuple[str, int], data: bytes, responses: int = 1) -> tuple[list[bytes], bool]:
    """Send `data`, read `responses` responses (heads, and bodies by Content-Length), then see whether the proxy
    closes within a moment. Returns the responses and whether the connection was closed."""
    reader, writer = await asyncio.open_connection(*address)
    out: list[bytes] = []
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(
            TimeoutError
        ):  # (fewer responses than asked for: the caller's assert says so)
            async with asyncio.timeout(T):
                for _ in range(responses):
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except asyncio.IncompleteReadError:
                        closed = True
                        break
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    out.append(head + (await reader.readexactly(length) if length else b""))
        if not closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    closed = not await reader.read(65536)
    except ConnectionError:
        closed = True
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return out, closed


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def routed(up: str, **extra: Any) -> dict[str, Any]:
    """An admin route only for 10.0.0.0/8 (so: 403 here), and a public catch-all."""
    return {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", **extra.pop("listener", {})}],
        "services": {"app": {"backends": [{"name": "up", "address": up}], "retries": {"attempts": 0}}},
        "routes": [
            {
                "name": "admin",
                "match": {"path_prefix": "/admin"},
                "service": "app",
                "ip_allow": ["10.0.0.0/8"],
            },
            {"name": "public", "match": {"path_prefix": "/"}, "service": "app", **extra},
        ],
    }


H2C_FORMS = {
    "rfc7540": (b"Upgrade: h2c", b"HTTP2-Settings: " + H2C_SETTINGS, b"Connection: Upgrade, HTTP2-Settings"),
    "no-settings-in-connection": (
        b"Upgrade: h2c",
        b"HTTP2-Settings: " + H2C_SETTINGS,
        b"Connection: Upgrade",
    ),
    "no-settings": (b"Upgrade: h2c", b"Connection: Upgrade"),
    "upper-case": (b"Upgrade: H2C", b"Connection: upgrade"),
    "with-version": (b"Upgrade: h2c/1", b"Connection: upgrade"),
}


@pytest.mark.parametrize("form", list(H2C_FORMS))
async def test_h2c_is_not_tunnelled_and_later_requests_meet_the_route_policies(
    scripted, engine_factory, form
):
    """h2csmuggler's attack: an h2c upgrade on a public route, then requests for /admin on the new channel. The
    upgrade is dropped (no Upgrade, HTTP2-Settings or `Connection: upgrade` reach the backend), the request is
    answered as a plain one, and what follows is read as HTTP: /admin is refused by its ip_allow, and nothing of
    it reaches the backend."""
    switcher = Switcher()
    up = await scripted(switcher.script)
    engine = await engine_factory(parse_config(routed(up.address)))
    head = b"GET /public HTTP/1.1\r\nHost: h\r\n" + b"".join(f + b"\r\n" for f in H2C_FORMS[form]) + b"\r\n"
    responses, _ = await exchange(engine.address(), head + SMUGGLED_ADMIN, responses=2)
    assert [status(r) for r in responses] == [200, 403], responses
    assert b"X-From: upstream" in responses[0]
    (request,) = switcher.requests()
    assert request.url == b"/public"
    assert not request.values(b"upgrade"), request
    assert not request.values(b"http2-settings"), request
    assert all(b"upgrade" not in v.lower() for v in request.values(b"connection")), request
    assert switcher.tunnelled() == b""
    assert engine.balancer.route_stats["admin"].rejected == {"ip": 1}


async def test_h2c_preface_after_a_dropped_upgrade_is_refused_as_http(scripted, engine_factory):
    """The HTTP/2 preface that an h2c client sends after its upgrade is not HTTP/1.1: refused (the parser stops at
    `PRI`: 400), and never passed to the backend."""
    switcher = Switcher()
    up = await scripted(switcher.script)
    engine = await engine_factory(parse_config(routed(up.address)))
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(f + b"\r\n" for f in H2C_FORMS["rfc7540"]) + b"\r\n"
    responses, closed = await exchange(engine.address(), head + H2_PREFACE, responses=2)
    assert [status(r) for r in responses] == [200, 400], responses
    assert closed
    assert len(switcher.requests()) == 1
    assert b"PRI" not in switcher.tunnelled()


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        pytest.param(b"Content-Length: 5", b"hello", id="content-length"),
        pytest.param(b"Transfer-Encoding: chunked", b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", id="chunked"),
    ],
)
async def test_a_request_with_a_body_and_a_dropped_upgrade_is_forwarded_whole(
    scripted, engine_factory, framing, body
):
    """curl --http2 on an http:// URL asks for h2c on a POST too. With h2c dropped it is a plain POST: its body
    reaches the backend whole (the parser ended the request at its head; the body is read after), and the next
    request on the connection is read as one (no byte of the body is taken for a request)."""
    switcher = Switcher()
    up = await scripted(switcher.script)
    engine = await engine_factory(parse_config(routed(up.address)))
    data = (
        b"POST /form HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: " + H2C_SETTINGS + b"\r\n" + framing + b"\r\n\r\n" + body
    )
    second = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    responses, closed = await exchange(engine.address(), data + second, responses=2)
    assert [status(r) for r in responses] == [200, 200], responses
    assert not closed
    assert [(r.method, r.url, r.body) for r in switcher.requests()] == [
        (b"POST", b"/form", b"hello"),
        (b"GET", b"/next", b""),
    ]
    assert not switcher.requests()[0].values(b"upgrade")


async def test_a_body_after_a_dropped_upgrade_may_arrive_later_and_in_pieces(scripted, engine_factory):
    switcher = Switcher()
    up = await scripted(switcher.script)
    engine = await engine_factory(parse_config(routed(up.address)))
    reader, writer = await asyncio.open_connection(*engine.address())
    try:
        writer.write(
            b"PUT /form HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc"
        )
        await writer.drain()
        await wait_for(lambda: len(switcher.conns) == 1, T, "the request head upstream")
        for piece in (b"\r\n", b"2\r\nde\r", b"\n0\r\n", b"\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n"):
            writer.write(piece)
            await writer.drain()
        async with asyncio.timeout(T):
            first = await reader.readuntil(b"ok")
            second = await reader.readuntil(b"ok")
    finally:
        writer.close()
    assert status(first) == 200
    assert status(second) == 200
    assert [(r.url, r.body) for r in switcher.requests()] == [(b"/form", b"abcde"), (b"/next", b"")]


async def test_a_dropped_upgrade_with_connection_close_ends_the_connection_after_its_body(
    scripted, engine_factory
):
    switcher = Switcher()
    up = await scripted(switcher.script)
    engine = await engine_factory(parse_config(routed(up.address)))
    data = (
        b"POST /form HTTP/1.1\r\nHost: h\r\nConnection: upgrade, close\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\n"
        b"hello" + b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    responses, closed = await exchange(engine.address(), data, responses=2)
    assert [status(r) for r in responses] == [200], responses
    assert closed
    assert [(r.url, r.body) for r in switcher.requests()] == [(b"/form", b"hello")]


async def test_websocket_is_tunnelled_by_default(scripted, engine_factory):
    switcher = Switcher()
    up = await scripted(switcher.script)
    engine = await engine_factory(parse_config(routed(up.address)))
    reader, writer = await asyncio.open_connection(*engine.address())
    try:
        writer.write(
            b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n"
            b"HTTP2-Settings: " + H2C_SETTINGS + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        async with asyncio.timeout(T):
            head = await reader.readuntil(b"\r\n\r\n")
        assert status(head) == 101
        assert b"Upgrade: websocket" in head
        writer.write(b"frames")
        await wait_for(lambda: switcher.tunnelled() == b"frames", T, "the frames through the tunnel")
    finally:
        writer.close()
    (request,) = switcher.requests()
    assert request.values(b"upgrade") == [b"websocket"]  # h2c is not offered, and its settings are not sent
    assert not request.values(b"http2-settings")


@pytest.mark.parametrize(
    ("config", "tunnelled"),
    [
        pytest.param({"upgrades": ["h2c"]}, True, id="route-allows-h2c"),
        pytest.param({"upgrades": []}, False, id="route-allows-nothing"),
        pytest.param({"listener": {"upgrades": ["h2c", "websocket"]}}, True, id="listener-allows-h2c"),
        pytest.param({"listener": {"upgrades": ["h2c"]}, "upgrades": ["websocket"]}, False, id="route-wins"),
    ],
)
async def test_the_protocols_tunnelled_are_the_routes_or_the_listeners(
    scripted, engine_factory, config, tunnelled
):
    switcher = Switcher()
    up = await scripted(switcher.script)
    engine = await engine_factory(parse_config(routed(up.address, **config)))
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(f + b"\r\n" for f in H2C_FORMS["rfc7540"]) + b"\r\n"
    responses, _ = await exchange(engine.address(), head)
    (request,) = switcher.requests()
    if tunnelled:
        assert status(responses[0]) == 101
        assert request.values(b"upgrade") == [b"h2c"]
        assert request.values(b"http2-settings") == [H2C_SETTINGS]  # and named in Connection (RFC 7540 3.2.1)
        assert [v.lower() for v in request.values(b"connection")] == [b"upgrade, http2-settings"]
    else:
        assert status(responses[0]) == 200
        assert not request.values(b"upgrade")
        assert not request.values(b"http2-settings")


async def test_a_service_without_routes_follows_its_listeners_upgrades(scripted, engine_factory):
    switcher = Switcher()
    up = await scripted(switcher.script)
    config = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", "upgrades": []}],
        "services": {"app": {"backends": [{"name": "up", "address": up.address}]}},
    }
    engine = await engine_factory(parse_config(config))
    responses, _ = await exchange(
        engine.address(), b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert status(responses[0]) == 200
    assert not switcher.requests()[0].values(b"upgrade")


# -- a 101 nobody asked for ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "switch_to"),
    [
        pytest.param(b"", b"websocket", id="no-upgrade-asked"),
        pytest.param(b"Connection: upgrade\r\nUpgrade: websocket\r\n", b"h2c", id="another-protocol"),
        pytest.param(b"Connection: upgrade\r\nUpgrade: websocket\r\n", None, id="no-upgrade-header"),
        pytest.param(b"Connection: upgrade\r\nUpgrade: h2c\r\n", b"h2c", id="a-dropped-protocol"),
    ],
)
async def test_a_101_the_client_did_not_ask_for_is_a_502(scripted, engine_factory, request_fields, switch_to):
    """docs/limits.md promises 502 for a switch nobody asked for (HAProxy answers so too): never the 101 and then
    a reset. The upstream connection is closed (what follows a 101 is not HTTP) and the backend's tunnel bytes
    never reach the client."""
    switcher = Switcher(always=True, upgrade_header=switch_to)
    up = await scripted(switcher.script)
    engine = await engine_factory(parse_config(routed(up.address)))
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + request_fields + b"\r\n"
    responses, _ = await exchange(engine.address(), data)
    assert [status(r) for r in responses] == [502], responses
    assert b"101" not in responses[0].split(b"\r\n", 1)[0]
    await wait_for(lambda: all(c.eof for c in switcher.conns), T, "the upstream connection closed")
    backend = engine.balancer.backends["up"]
    await wait_for(lambda: backend.in_flight == 0, T, "no request in flight")


async def test_after_an_unasked_101_the_client_connection_still_serves(scripted, engine_factory):
    """A keep-alive client whose plain GET met a switching backend gets its 502, and its next request is served
    (on a new upstream connection: the switched one is closed)."""
    switches = [True]

    class Once(Switcher):
        def answer(self, request: Request) -> bytes:
            self.always = switches.pop() if switches else False
            return super().answer(request)

    switcher = Once(upgrade_header=b"websocket")
    up = await scripted(switcher.script)
    engine = await engine_factory(parse_config(routed(up.address)))
    responses, closed = await exchange(
        engine.address(), b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n", responses=2
    )
    assert [status(r) for r in responses] == [502, 200], responses
    assert not closed
    assert len(switcher.conns) == 2


async def test_an_unasked_101_is_a_gateway_error_that_retries_may_take_elsewhere(scripted, engine_factory):
    """As docs/config.md says of `gateway-error`: a GET that met a switching backend goes to another backend
    when retries.on lists it (the default)."""
    switching, plain = Switcher(always=True), Switcher()
    ups = [await scripted(switching.script), await scripted(plain.script)]
    config = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {
            "app": {"backends": [{"name": f"up{i}", "address": up.address} for i, up in enumerate(ups)]}
        },
    }
    engine = await engine_factory(parse_config(config))
    for path in (b"/a", b"/b"):  # round robin: one of the two is first sent to the switching backend
        responses, _ = await exchange(engine.address(), b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        assert [status(r) for r in responses] == [200], responses
    assert len(switching.requests()) == 1
    assert sorted(r.url for r in plain.requests()) == [b"/a", b"/b"]
    assert engine.balancer.services["app"].retries == 1


@pytest.mark.parametrize("who", ["backend", "client"])
async def test_a_tunnel_that_ends_is_logged_once_as_a_101_and_closes_the_other_side(
    scripted, engine_factory, who
):
    """Found running h2csmuggler against lbtui: when the backend closed a tunnel, the exchange was failed as if
    its response had been cut: a second access-log entry with 502, a 5xx on the route, and the client reset
    (and, when the client was already gone, a traceback from resetting a closed socket)."""
    closing: list[asyncio.StreamWriter] = []

    async def switch_then_wait(reader, writer, _up):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await writer.drain()
        closing.append(writer)
        await reader.read()  # until the proxy closes its side

    up = await scripted(switch_then_wait)
    engine = await engine_factory(parse_config(routed(up.address)))
    reader, writer = await asyncio.open_connection(*engine.address())
    try:
        writer.write(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        async with asyncio.timeout(T):
            assert status(await reader.readuntil(b"\r\n\r\n")) == 101
        await wait_for(lambda: bool(closing), T, "the backend's side of the tunnel")
        if who == "backend":
            closing[0].close()
            async with asyncio.timeout(T):
                assert await reader.read() == b""  # a close, not a reset (which would raise here)
        else:
            writer.close()
        await wait_for(lambda: not engine.connections, T, "both sides closed")
    finally:
        writer.close()
    assert [entry[4] for entry in engine.access_log] == [101]
    assert engine.balancer.route_stats["public"].status_classes[5] == 0
    assert engine.balancer.backends["up"].in_flight == 0
