"""Where issue 13's parts meet: sticky sessions, retries (a dying backend, retries.on "5xx"), probes of joining
backends, upgrades and the numbers, each through real sockets. Each test here failed on main at the merge of the
four branches (99d6d2f), and says what it found.

No sleeps as synchronisation: every wait is a read or a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from lbtui.config import parse_config
from tests.conftest import wait_for
from tests.proxy.wire import get, read_head_and_body

T = 5.0
COOKIE = "srv"


def config(backends: list[dict[str, Any]], **service: Any) -> Any:
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {"app": {"algorithm": "round_robin", "backends": backends, **service}},
    }
    return parse_config(data, source="<test>")


def answering(status: int = 200, name: str = "", delay: float = 0.0, cookie: bytes = b""):
    """A keep-alive backend: every request answered `status` (after `delay` seconds), with X-Who: name and,
    when given, a Set-Cookie of its own."""

    async def script(reader, writer, up):
        for _ in range(1000):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            if delay:
                await asyncio.sleep(
                    delay
                )  # the backend's own slowness (what is measured), not a synchronisation
            extra = b"Set-Cookie: " + cookie + b"\r\n" if cookie else b""
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Length: 2\r\nX-Who: %s\r\n%s\r\nok"
                % (status, name.encode(), extra)
            )
            await writer.drain()

    return script


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0)."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def header(head: bytes, name: bytes) -> list[bytes]:
    return [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
        if line.split(b":", 1)[0].strip().lower() == name.lower()
    ]


# == numbers x retries: a backend's latency is its own attempt's =================================================


async def test_a_retried_request_is_not_charged_to_the_backend_that_answered_it(
    scripted, engine_factory, stream
):
    """A GET answered 503 after 1 s by one backend and retried (retries.on "5xx") on a healthy one that answers
    at once: the healthy backend's latency (its window, its Peak-EWMA) is its own attempt's, not the request's
    whole time. Before, each backend was charged from the request's arrival: the healthy one got the failing
    one's 1 s, and ewma (which takes a slower sample at once) steered traffic away from it, to the failing one.
    The service and the client's access log entry keep the whole time."""
    slow = await scripted(answering(503, "slow", delay=1.0))
    good = await scripted(answering(200, "good"))
    engine = await engine_factory(
        config(
            [{"name": "slow", "address": slow.address}, {"name": "good", "address": good.address}],
            retries={"attempts": 1, "on": ["5xx"]},
        )
    )
    s = await stream(engine.address())
    for path in ("/a", "/b"):  # round robin: one of them goes to slow first
        await s.send(get(path))
        r = await s.response()
        assert (r.status, r.header("X-Who")) == (200, "good")
    assert len(slow.received) == 1
    snap = engine.controller.snapshot()
    assert snap.backend("good").window.requests == 2
    # Half the slow one's 1 s: a generous bound for a quick answer on a busy machine.
    assert snap.backend("good").window.p99_ms < 500.0, snap.backend("good").window
    assert snap.backend("slow").window.p99_ms >= 950.0  # its own 1 s
    assert snap.service("app").window.p99_ms >= 950.0  # the client waited that long
    backend = engine.balancer.backends["good"]
    assert backend.ewma_cost(engine.now()) < 0.5


async def test_a_response_timeout_elsewhere_is_not_charged_to_the_backend_that_answered(
    scripted, engine_factory, stream
):
    """The same for a response timeout: 1 s waiting for a silent backend, then the retry's quick answer. The
    answering backend's latency is its own."""

    async def silent(reader, writer, up):
        up.received.append((await read_head_and_body(reader))[0])
        await reader.read()  # never answers

    mute = await scripted(silent)
    good = await scripted(answering(200, "good"))
    engine = await engine_factory(
        config(
            [{"name": "mute", "address": mute.address}, {"name": "good", "address": good.address}],
            timeouts={"response": "1s"},
            retries={"attempts": 1, "on": ["timeout"]},
        )
    )
    s = await stream(engine.address())
    for path in ("/a", "/b"):
        await s.send(get(path))
        r = await s.response()
        assert (r.status, r.header("X-Who")) == (200, "good")
    snap = engine.controller.snapshot()
    assert snap.backend("good").window.p99_ms < 500.0, snap.backend("good").window  # half the timeout
    assert snap.service("app").window.p99_ms >= 950.0


# == probes x retries x sticky ==================================================================================


async def test_a_5xx_retry_the_budget_refuses_does_not_use_up_a_joining_backends_probe(
    scripted, engine_factory, stream
):
    """A backend added at runtime is to get the next request its pool picks (its probe). A sticky GET bound to a
    failing backend is answered 503; retry_5xx picked the next backend (the new one's probe, used up) and only
    then asked the budget, which refused: the probe was spent on a request never sent, and the new backend, at
    weight 1 beside a peer at 50, then waited for the weighted turns."""
    failing = await scripted(answering(503, "failing"))
    peer = await scripted(answering(200, "peer"))
    new = await scripted(answering(200, "new"))
    engine = await engine_factory(
        config(
            [
                {"name": "failing", "address": failing.address, "weight": 1},
                {"name": "peer", "address": peer.address, "weight": 50},
            ],
            algorithm="weighted_round_robin",
            sticky={"cookie": COOKIE},
            retries={"attempts": 2, "on": ["5xx"], "budget_percent": 0, "min_retry_concurrency": 0},
        )
    )
    service = engine.balancer.services["app"]
    value = service.sticky_value_of(engine.balancer.backends["failing"])
    assert value is not None
    engine.controller.add_backend("app", "new", new.address, weight=1)
    s = await stream(engine.address())
    await s.send(get("/bound", f"Cookie: {COOKIE}={value.decode()}\r\n"))
    r = await s.response()
    assert (r.status, r.header("X-Who")) == (503, "failing")  # the budget refused the retry: passed on
    assert service.retries_refused == 1
    await s.send(get("/next"))
    r = await s.response()
    assert r.header("X-Who") == "new"  # its probe: the next request picked goes to it


# == upgrades x chaos x sticky ===================================================================================


def switching(then: str = "wait", cookie: bytes = b""):
    """A backend that answers an Upgrade request with 101 (and a Set-Cookie of its own, when given), then waits
    for the proxy to close, or resets the tunnel once it got its first bytes (`then` = "reset")."""

    async def script(reader, writer, up):
        up.received.append((await read_head_and_body(reader))[0])
        extra = b"Set-Cookie: " + cookie + b"\r\n" if cookie else b""
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n%s\r\n" % extra
        )
        await writer.drain()
        data = await reader.read(100)
        up.received.append(data)
        if then == "reset" and data:
            reset(writer)
            return
        await reader.read()

    return script


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"


async def test_a_backend_that_resets_a_tunnel_resets_the_clients_side(scripted, engine_factory):
    """proxy/exchange.py: a tunnel that one side resets is reset on the other side too (a close is a close). The
    merge routed every end of an upstream connection through upstream_lost, which closes: the client got a clean
    end of stream for a tunnel its backend had reset (the hostile branch reset it, upstream_failed)."""
    up = await scripted(switching("reset"))
    engine = await engine_factory(config([{"name": "ws", "address": up.address}]))
    reader, writer = await asyncio.open_connection(*engine.address())
    try:
        writer.write(UPGRADE + b"\r\n")
        async with asyncio.timeout(T):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(b"frame")
        got: bytes | type[ConnectionResetError] = b""
        async with asyncio.timeout(T):
            try:
                got = await reader.read()
            except ConnectionResetError:
                got = ConnectionResetError
        assert got is ConnectionResetError, f"the client's side ended with {got!r}, not a reset"
    finally:
        writer.close()
    await wait_for(lambda: not engine.connections, T, "both sides gone")
    assert [entry[4] for entry in engine.access_log] == [101]


async def test_a_client_that_resets_a_tunnel_resets_the_backends_side(scripted, engine_factory):
    """The other way: the client resets its side of a tunnel, the backend's side is reset too."""
    ended: list[str] = []

    async def script(reader, writer, up):
        await read_head_and_body(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await writer.drain()
        try:
            while await reader.read(100):
                pass
            ended.append("closed")
        except ConnectionResetError:
            ended.append("reset")

    up = await scripted(script)
    engine = await engine_factory(config([{"name": "ws", "address": up.address}]))
    reader, writer = await asyncio.open_connection(*engine.address())
    writer.write(UPGRADE + b"\r\n")
    async with asyncio.timeout(T):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    reset(writer)
    await wait_for(lambda: bool(ended), T, "the backend's side to end")
    assert ended == ["reset"]


async def test_a_websocket_upgrade_to_a_sticky_service_gets_its_cookie(scripted, engine_factory, stream):
    """A 101 is the response to a sticky request too: it sets the cookie naming the backend that switched (a
    browser keeps cookies from a WebSocket handshake), and a backend's own Set-Cookie of that name never reaches
    the client (gateway/sticky.py: it would replace ours). Before, the 101 path skipped both."""
    ups = [await scripted(switching(cookie=COOKIE.encode() + b"=backend-chose")) for _ in range(2)]
    engine = await engine_factory(
        config(
            [{"name": f"ws{i}", "address": up.address} for i, up in enumerate(ups)], sticky={"cookie": COOKIE}
        )
    )
    service = engine.balancer.services["app"]
    s = await stream(engine.address())
    await s.send(UPGRADE + b"Cookie: other=1\r\n\r\n")
    r = await s.response()
    assert r.status == 101
    switched = "ws0" if ups[0].received else "ws1"
    value = service.sticky_value_of(engine.balancer.backends[switched])
    assert value is not None
    cookies = [v for n, v in r.headers if n.lower() == "set-cookie"]
    assert cookies == [f"{COOKIE}={value.decode()}; Path=/; HttpOnly"], cookies
    # With the cookie, the next handshake goes to the same backend, and sets nothing.
    s2 = await stream(engine.address())
    await s2.send(UPGRADE + f"Cookie: {COOKIE}={value.decode()}\r\n\r\n".encode())
    r2 = await s2.response()
    assert r2.status == 101
    assert not [v for n, v in r2.headers if n.lower() == "set-cookie"]
    up = ups[int(switched[-1])]
    await wait_for(
        lambda: len([h for h in up.received if h.startswith(b"GET")]) == 2, T, "both at one backend"
    )
    assert all(COOKIE.encode() + b"=" not in h for h in up.received)  # and never saw the cookie


# == sticky x retries (these held at the merge; kept as guards of the seam) ======================================


def values(engine: Any, *names: str) -> list[str]:
    service = engine.balancer.services["app"]
    out = []
    for name in names:
        value = service.sticky_value_of(engine.balancer.backends[name])
        assert value is not None
        out.append(value.decode())
    return out


def set_cookie(response: Any) -> str | None:
    for name, value in response.headers:
        if name.lower() == "set-cookie" and value.startswith(COOKIE + "="):
            return value.split("=", 1)[1].split(";", 1)[0]
    return None


def resetting():
    async def script(reader, writer, up):
        up.received.append((await read_head_and_body(reader))[0])
        reset(writer)

    return script


async def test_a_session_whose_backend_dies_or_fails_moves_and_gets_the_new_cookie(
    scripted, engine_factory, stream
):
    """A GET bound to a backend that resets (retried outside the budget) or answers 503 (retries.on "5xx") is
    answered by the other backend, whose cookie the response sets; a POST bound to the resetting one gets 502
    and no cookie (it was sent: never again), on an open connection."""
    dying = await scripted(resetting())
    failing = await scripted(answering(503, "failing"))
    good = await scripted(answering(200, "good"))
    engine = await engine_factory(
        config(
            [
                {"name": "dying", "address": dying.address},
                {"name": "failing", "address": failing.address},
                {"name": "good", "address": good.address},
            ],
            sticky={"cookie": COOKIE},
            retries={"attempts": 2, "on": ["reset", "5xx"], "budget_percent": 0, "min_retry_concurrency": 1},
        )
    )
    on_dying, on_failing, on_good = values(engine, "dying", "failing", "good")
    s = await stream(engine.address())
    for bound in (on_dying, on_failing):
        await s.send(get("/g", f"Cookie: a=1; {COOKIE}={bound}\r\n"))
        r = await s.response()
        assert (r.status, r.header("X-Who"), set_cookie(r)) == (200, "good", on_good)
    await s.send(get("/g", f"Cookie: {COOKIE}={on_good}\r\n"))
    r = await s.response()
    assert (r.status, r.header("X-Who"), set_cookie(r)) == (200, "good", None)
    await s.send(
        f"POST /p HTTP/1.1\r\nHost: h\r\nCookie: {COOKIE}={on_dying}\r\nContent-Length: 4\r\n\r\nbody".encode()
    )
    r = await s.response()
    assert (r.status, set_cookie(r)) == (502, None)
    await s.send(get("/after", f"Cookie: {COOKIE}={on_good}\r\n"))
    assert (await s.response()).status == 200  # the same connection
    assert [h.split(b" ")[0] for h in dying.received] == [b"GET", b"POST"]  # each sent once
    assert all(COOKIE.encode() + b"=" not in h for up in (dying, failing, good) for h in up.received)
    service = engine.balancer.services["app"]
    assert service.retries >= 2  # (the reset's retry may meet failing's 503 first: round robin's turn)
    assert service.retries_in_flight == 0


async def test_a_session_waiting_for_its_full_backend_goes_elsewhere_when_that_backend_dies(
    scripted, engine_factory, stream
):
    """max_connections = 1: a session waits in the queue for its own backend, which is busy; that backend is then
    killed (its in-flight GET reset, new connections refused). The GET in flight is retried on the other
    backend, the waiting one is tried on its own (refused) and then goes to the other too: both 200 with the
    other's cookie, nothing left in flight."""
    gate = asyncio.Event()

    async def busy_then_reset(reader, writer, up):
        up.received.append((await read_head_and_body(reader))[0])
        await gate.wait()
        reset(writer)

    a = await scripted(busy_then_reset)
    b = await scripted(answering(200, "b"))
    engine = await engine_factory(
        config(
            [{"name": "a", "address": a.address}, {"name": "b", "address": b.address}],
            sticky={"cookie": COOKIE},
            max_connections=1,
        )
    )
    on_a, on_b = values(engine, "a", "b")
    service = engine.balancer.services["app"]
    first = await stream(engine.address())
    await first.send(get("/long", f"Cookie: {COOKIE}={on_a}\r\n"))
    await wait_for(lambda: engine.balancer.backends["a"].in_flight == 1, T, "the first GET at a")
    waiting = await stream(engine.address())
    await waiting.send(get("/queued", f"Cookie: {COOKIE}={on_a}\r\n"))
    await wait_for(lambda: bool(service.queue), T, "the session to wait for a")
    assert a.server is not None
    a.server.close()  # a dies: no new connections ...
    gate.set()  # ... and its request in flight is reset
    for s in (first, waiting):
        r = await s.response()
        assert (r.status, r.header("X-Who"), set_cookie(r)) == (200, "b", on_b)
    assert [b_.in_flight for b_ in service.backends] == [0, 0]
    assert not service.queue


# == hostile x the per-connection head cache =======================================================================


async def test_a_client_address_from_a_trusted_proxy_is_never_another_requests(
    scripted, engine_factory, stream
):
    """A trusted proxy (a CDN, another balancer) sends many clients' requests on one kept-alive connection. The
    head cache reuses the filtered headers of a request equal to the previous cached one, and took the client
    address from the connection's last *filtered* request: a request in between that was filtered but not
    cached (its Host rewritten in normal form, since issue 13; or HTTP/1.0) left its address there, and the next
    cached request got it. Here that let a denied client past the route's ip_allow."""
    up = await scripted(answering(200, "up"))
    data = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", "trusted_proxies": ["127.0.0.1"]}],
        "services": {"app": {"backends": [{"name": "up", "address": up.address}]}},
        "routes": [{"match": {"path_prefix": "/"}, "service": "app", "ip_allow": ["10.1.1.1"]}],
    }
    engine = await engine_factory(parse_config(data, source="<test>"))
    s = await stream(engine.address())
    denied = b"GET /admin HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.9\r\n\r\n"
    allowed_other_host_spelling = b"GET /admin HTTP/1.1\r\nHost: H.\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n"
    allowed_http10 = (
        b"GET /admin HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n"
    )
    for between in (allowed_other_host_spelling, allowed_http10):
        await s.send(denied)
        assert (await s.response()).status == 403
        await s.send(between)
        assert (await s.response()).status == 200
        await s.send(denied)  # the same bytes as the first: its head is the cached one
        assert (await s.response()).status == 403
    assert len(up.received) == 2
    clients = [entry[1] for entry in engine.access_log]
    assert clients == [b"192.0.2.9", b"10.1.1.1", b"192.0.2.9"] * 2
