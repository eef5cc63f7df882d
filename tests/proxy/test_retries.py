"""Retries through real sockets: a backend that dies, a kept-alive connection the backend closed, `retries.on =
["5xx"]`, the retry budget, responses cut after their head, and what the access log says about each.

What is promised (docs/config.md, retries; proxy/exchange.py's invariants):
- An idempotent request whose backend closes or resets its connection before any byte of a response reached the
  client goes to another backend, whatever the budget says, within `attempts`; the client's connection stays open.
- A non-idempotent request that was sent is never sent again: 502 on an open connection. A PUT's body is kept
  for another backend up to a size; past it, a PUT that was sent is not sent again either.
- An idempotent request is tried at most `attempts` + 1 times, each time on another backend.
- A kept-alive connection found closed when it is reused is the pool's race with the backend's keep-alive
  timeout: the request goes once more to the same backend on a new connection, and only that attempt counts for
  the backend (outlier detection never ejects a healthy backend for it).
- With "5xx" in `on`, an idempotent request answered 5xx goes to another backend within attempts and budget; the
  5xx is dropped (its connection kept when it was read whole) and the last attempt's 5xx is passed on.
- A response cut after its head was forwarded is aborted, counted per backend (`aborted`), and logged with its cause.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest

from lbtui.admin.api import AdminServer
from lbtui.config import AdminConfig, parse_config
from tests.conftest import make_config, wait_for
from tests.proxy.wire import get, post, post_chunked, read_head_and_body, sha

T = 5.0


def config(backends: list[tuple[str, str]], access_log: Path | None = None, **service: Any) -> Any:
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {
            "app": {
                "algorithm": "round_robin",
                "backends": [{"name": n, "address": a} for n, a in backends],
                **service,
            }
        },
    }
    if access_log is not None:
        data["access_log"] = {"path": str(access_log), "format": "json"}
    return parse_config(data, source="<test>")


def log_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def answering(status: int = 200, body: bytes = b"ok", name: str = ""):
    """A keep-alive backend: every request answered `status` with `body` (and X-Who: name)."""

    async def script(reader, writer, up):
        for _ in range(1000):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nX-Who: %s\r\n\r\n%s"
                % (status, len(body), name.encode(), body)
            )
            await writer.drain()

    return script


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as the kernel does for a killed process's connection with unread data."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def resetting():
    """A backend that reads each request and resets its connection (as a process killed mid-request can)."""

    async def script(reader, writer, up):
        up.received.append((await read_head_and_body(reader))[0])
        reset(writer)

    return script


# == a backend dies before its response =============================================================================


async def test_a_reset_before_the_head_is_retried_whatever_the_budget(
    scripted, engine_factory, stream, tmp_path
):
    """A budget of 0 still lets a GET whose backend died (connection reset before any byte) go to another one:
    that is a backend's death, not a retry storm. Before, the budget refused it and the client got 502."""
    dying = await scripted(resetting())
    good = await scripted(answering(name="good"))
    path = tmp_path / "access.log"
    engine = await engine_factory(
        config(
            [("dying", dying.address), ("good", good.address)],
            path,
            retries={"attempts": 2, "budget_percent": 0, "min_retry_concurrency": 0},
        )
    )
    s = await stream(engine.address())
    for i in range(4):
        await s.send(get(f"/g{i}"))
        r = await s.response()
        assert (r.status, r.header("X-Who")) == (200, "good")
    assert len(dying.received) == 2  # its two turns, each retried on good
    service = engine.controller.snapshot().service("app")
    assert (service.retries, service.retries_refused) == (2, 0)
    assert engine.balancer.services["app"].retries_in_flight == 0
    assert s.eof is False  # the same client connection served all four
    await wait_for(lambda: len(log_lines(path)) == 4, T, "four access log lines")
    retried = [e for e in log_lines(path) if e["failed_attempts"]]
    assert len(retried) == 2
    for e in retried:
        assert e["status"] == 200
        assert e["termination"] == ""  # it ended well
        assert e["attempts"] == 2
        assert e["failed_attempts"] == ["dying:reset-before-head"]


async def test_a_post_that_was_sent_is_502_on_an_open_connection_and_never_resent(
    scripted, engine_factory, stream, tmp_path
):
    dying = await scripted(resetting())
    good = await scripted(answering(name="good"))
    path = tmp_path / "access.log"
    engine = await engine_factory(config([("dying", dying.address), ("good", good.address)], path))
    s = await stream(engine.address())
    statuses = []
    for i in range(4):
        await s.send(post(f"/p{i}", b"once"))
        statuses.append((await s.response()).status)
    assert statuses == [502, 200, 502, 200]
    assert len(dying.received) == 2  # each POST reached one backend, once
    assert len(good.received) == 2
    await s.send(get("/after"))  # the connection stayed open through both 502s
    assert (await s.response()).status == 200
    await wait_for(lambda: len(log_lines(path)) == 5, T, "five access log lines")
    failed = [e for e in log_lines(path) if e["status"] == 502]
    assert [(e["termination"], e["retry"], e["attempts"]) for e in failed] == [
        ("reset-before-head", "not-idempotent", 1)
    ] * 2
    assert all(e["service"] == "app" for e in failed)


async def test_a_kept_alive_connection_closed_by_the_backend_never_ejects_it(
    scripted, engine_factory, stream, tmp_path
):
    """The backend closes a kept-alive connection when the next request arrives on it (its keep-alive timeout
    fired as the request was sent): the request goes to it again on a new connection. Before, the dead
    connection counted as a gateway error: with consecutive_gateway_errors = 1 the healthy backend was ejected
    and the next request got 503."""

    async def one_per_connection(reader, writer, up):
        head, _ = await read_head_and_body(reader)
        up.received.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_head_and_body(reader)  # the next request on this connection: closed unanswered

    only = await scripted(one_per_connection)
    path = tmp_path / "access.log"
    engine = await engine_factory(
        config(
            [("only", only.address)],
            path,
            outlier={"consecutive_gateway_errors": 1, "consecutive_5xx": 1, "max_ejected_percent": 100},
        )
    )
    s = await stream(engine.address())
    for i in range(4):
        await s.send(get(f"/g{i}"))
        assert (await s.response()).status == 200, i
    view = engine.controller.snapshot().backend("only")
    assert view.health == "up"
    assert view.requests == 4
    assert view.status_classes[0] == 0  # no failure counted for it
    assert view.in_flight == 0
    await wait_for(lambda: len(log_lines(path)) == 4, T, "four access log lines")
    again = [e for e in log_lines(path) if e["failed_attempts"]]
    assert len(again) == 3  # every request after the first met the closed connection
    assert all(e["failed_attempts"] == ["only:closed-before-head/reused"] for e in again)


# == retries.on = ["5xx"] ==========================================================================================


async def test_a_5xx_is_retried_elsewhere_and_its_connection_kept(scripted, engine_factory, stream, tmp_path):
    failing = await scripted(answering(503, b"failing says no", "failing"))
    good = await scripted(answering(200, b"fine", "good"))
    path = tmp_path / "access.log"
    engine = await engine_factory(
        config(
            [("failing", failing.address), ("good", good.address)],
            path,
            retries={"attempts": 1, "on": ["5xx"]},
        )
    )
    s = await stream(engine.address())
    for i in range(6):
        await s.send(get(f"/g{i}"))
        r = await s.response()
        assert (r.status, r.body, r.header("X-Who")) == (200, b"fine", "good")
    assert len(failing.received) == 3  # its three turns, each answered 503, each dropped
    assert failing.connections == 1  # the 503s were read whole: their connection was kept and used again
    snap = engine.controller.snapshot()
    assert snap.backend("failing").status_classes[5] == 3  # counted per attempt on the backend's row
    assert snap.backend("good").status_classes[2] == 6
    assert snap.service("app").retries == 3
    assert snap.service("app").in_flight == 0
    await wait_for(lambda: len(log_lines(path)) == 6, T, "six access log lines")
    retried = [e for e in log_lines(path) if e["failed_attempts"]]
    assert [(e["status"], e["attempts"], e["failed_attempts"]) for e in retried] == [
        (200, 2, ["failing:503"])
    ] * 3


async def test_when_every_attempt_is_5xx_the_last_one_is_passed_on(scripted, engine_factory, stream):
    first = await scripted(answering(500, b"first broke", "first"))
    second = await scripted(answering(502, b"second broke", "second"))
    engine = await engine_factory(
        config([("first", first.address), ("second", second.address)], retries={"attempts": 2, "on": ["5xx"]})
    )
    s = await stream(engine.address())
    await s.send(get("/a"))
    r = await s.response()
    assert (r.status, r.body, r.header("X-Who")) == (502, b"second broke", "second")
    await s.send(get("/b"))
    r = await s.response()  # round robin starts at second this time: first's 500 is the last word
    assert (r.status, r.body, r.header("X-Who")) == (500, b"first broke", "first")
    assert len(first.received) == len(second.received) == 2


async def test_5xx_retries_keep_to_attempts_methods_the_budget_and_the_condition(
    scripted, engine_factory, stream
):
    failing = await scripted(answering(503, b"no", "failing"))
    good = await scripted(answering(200, b"fine", "good"))
    backends = [("failing", failing.address), ("good", good.address)]
    s_no5xx = await stream((await engine_factory(config(backends))).address())
    await s_no5xx.send(get("/x"))
    assert (await s_no5xx.response()).status == 503  # "5xx" not in on (the default): passed on as it is

    engine = await engine_factory(config(backends, retries={"attempts": 0, "on": ["5xx"]}))
    s = await stream(engine.address())
    await s.send(get("/x"))
    assert (await s.response()).status == 503  # attempts = 0: no retry

    engine = await engine_factory(config(backends, retries={"attempts": 2, "on": ["5xx"]}))
    s = await stream(engine.address())
    await s.send(post("/p", b"body"))
    assert (await s.response()).status == 503  # a POST is never sent twice
    await s.send(get("/g"))
    assert (await s.response()).status == 200  # (round robin: good's turn)
    await s.send(get("/g"))
    assert (await s.response()).status == 200  # failing's turn: retried on good

    tight = {"attempts": 2, "on": ["5xx"], "budget_percent": 0, "min_retry_concurrency": 0}
    engine = await engine_factory(config(backends, retries=tight))
    s = await stream(engine.address())
    await s.send(get("/g"))
    assert (await s.response()).status == 503  # the budget refuses it: the 5xx is passed on
    assert engine.controller.snapshot().service("app").retries_refused == 1


async def test_a_5xx_for_head_and_one_whose_body_comes_late_are_retried(scripted, engine_factory, stream):
    async def slow_5xx(reader, writer, up):
        for _ in range(100):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 500 X\r\nContent-Length: 9\r\n\r\n")
                continue
            writer.write(b"HTTP/1.1 500 X\r\nContent-Length: 9\r\n\r\nbro")
            await writer.drain()
            await asyncio.sleep(0.5)  # the rest of the body comes much later than the head
            writer.write(b"ken body")
            await writer.drain()

    slow = await scripted(slow_5xx)
    good = await scripted(answering(200, b"fine", "good"))
    engine = await engine_factory(
        config([("slow", slow.address), ("good", good.address)], retries={"attempts": 1, "on": ["5xx"]})
    )
    s = await stream(engine.address())
    await s.send(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n")
    r = await s.response(head=True)
    assert (r.status, r.header("X-Who")) == (200, "good")
    await s.send(get("/g"))
    assert (await s.response()).status == 200  # good's turn
    await s.send(get("/g"))
    r = await s.response()
    assert (r.status, r.body) == (200, b"fine")  # slow's 500 dropped at its head, not waited for
    assert slow.connections == 1  # the HEAD's 500 was read whole: its connection was kept for the GET
    pool = engine.balancer.backends["slow"].pool
    await wait_for(lambda: not pool.active and not pool.idle, T, "the late body's connection to be closed")
    for _ in range(2):  # good's turn, then slow's: on a new connection
        await s.send(get("/g"))
        assert (await s.response()).status == 200
    assert slow.connections == 2


# == cut after the head =============================================================================================


async def test_a_response_cut_after_its_head_is_counted_shown_and_logged(
    scripted, engine_factory, stream, tmp_path
):
    async def cut(reader, writer, up):
        up.received.append((await read_head_and_body(reader))[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-some")
        await writer.drain()
        reset(writer)

    up = await scripted(cut)
    path = tmp_path / "access.log"
    engine = await engine_factory(config([("cutter", up.address)], path))
    s = await stream(engine.address())
    await s.send(get("/x"))
    data_seen = b""
    async with asyncio.timeout(T):
        while True:
            try:
                chunk = await s.reader.read(1000)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data_seen += chunk
    assert data_seen.endswith(b"only-some")
    view = engine.controller.snapshot().backend("cutter")
    assert view.aborted == 1
    await wait_for(lambda: len(log_lines(path)) == 1, T, "the access log line")
    (line,) = log_lines(path)
    assert (line["termination"], line["failed_attempts"]) == ("reset-mid-body", ["cutter:reset-mid-body"])
    admin = AdminServer(engine.controller, AdminConfig(host="127.0.0.1", port=0, enabled=True), 10.0)
    await admin.start()
    try:
        host, port = admin.address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as http:
            state = (await http.get("/api/v1/state")).json()
            metrics = (await http.get("/metrics")).text
    finally:
        await admin.stop()
    from lbtui.tui.format import detail_text

    (backend,) = [b for s_ in state["services"] for b in s_["backends"] if b["name"] == "cutter"]
    assert backend["aborted"] == 1
    assert (
        'lbtui_backend_responses_aborted_total{service="app",backend="cutter",group="default"} 1' in metrics
    )
    assert "responses cut mid-way 1" in detail_text(engine.controller.snapshot(), "cutter")


async def test_a_post_is_not_sent_on_a_kept_alive_connection_the_backend_has_closed(
    scripted, engine_factory, stream
):
    """The backend answers and closes at once; the client's next request, a POST pipelined behind, is started
    while the end of that connection waits unread in its socket. Before, the POST went out on it and got 502
    (it cannot be sent again); now the socket is looked at first, and the POST goes on a new connection."""

    async def answer_then_close(reader, writer, up):
        head, _ = await read_head_and_body(reader)
        up.received.append(head)
        # The response and the connection's end leave in one segment (corked: the FIN rides on the data), so
        # both are in the proxy's socket when it reads the response.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.write_eof()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    up = await scripted(answer_then_close)
    engine = await engine_factory(config([("only", up.address)]))
    s = await stream(engine.address())
    for i in range(5):
        await s.send(get(f"/g{i}") + post(f"/p{i}", b"once"))
        assert (await s.response()).status == 200
        assert (await s.response()).status == 200, i
    assert len(up.received) == 10  # each request reached the backend once
    assert up.connections == 10


async def test_the_access_log_names_the_client_side_too(scripted, engine_factory, stream, tmp_path):
    """A client whose body stops arriving (408: client-timeout), one that leaves while its backend thinks
    (499: client-closed), and one that gets a response whole (no termination)."""
    gate = asyncio.Event()

    async def slow(reader, writer, up):
        for _ in range(10):
            head, _ = await read_head_and_body(reader)
            up.received.append(head)
            if b"/wait" in head:
                await gate.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    up = await scripted(slow)
    path = tmp_path / "access.log"
    data = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "limits": {"client_idle_timeout": "300ms"},
        "services": {"app": {"backends": [{"name": "b", "address": up.address}]}},
        "access_log": {"path": str(path), "format": "json"},
    }
    engine = await engine_factory(parse_config(data, source="<test>"))
    s = await stream(engine.address())
    await s.send(
        b"POST /stalled HTTP/1.1\r\nHost: h\r\nX-Request-ID: stalled\r\nContent-Length: 10\r\n\r\nabc"
    )
    assert (await s.response()).status == 408
    leaving = await stream(engine.address())
    await leaving.send(get("/wait", "X-Request-ID: leaving\r\n"))
    await wait_for(lambda: len(up.received) == 1, T, "the request at the backend")
    leaving.close()
    await wait_for(lambda: len(log_lines(path)) == 2, T, "two access log lines")
    gate.set()
    whole = await stream(engine.address())
    await whole.send(get("/fine", "X-Request-ID: fine\r\n"))
    assert (await whole.response()).status == 200
    await wait_for(lambda: len(log_lines(path)) == 3, T, "three access log lines")
    ended = {e["request_id"]: (e["status"], e["termination"]) for e in log_lines(path)}
    assert ended == {"stalled": (408, "client-timeout"), "leaving": (499, "client-closed"), "fine": (200, "")}


# == a backend that closes or resets: which methods go elsewhere, how often, and with which bodies ===========


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
