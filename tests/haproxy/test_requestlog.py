"""HAProxy's request log (lbtui/haproxy/requestlog.py) against real HAProxy processes with the ring `lbtui`
configured as docs/haproxy.md says (tests/haproxy/conftest.py, `ring=True`): per-server p50/p99 against what the
client measured, counts equal to what was sent, recent requests, a HAProxy without the ring, lines that are not
lbtui's in the ring, a restart mid-stream, and the dashboard on it (percentile columns, the access log view).
"""

from __future__ import annotations

import asyncio
import json
import math
import time

from lbtui.core.views import BackendView, Snapshot
from lbtui.haproxy.controller import LATENCY_LABEL, LOG_LATENCY_LABEL, HaproxyController
from lbtui.haproxy.requestlog import (
    BATCH_MIN,
    BATCH_SECONDS,
    LOG_FORMAT,
    MARKER,
    READ_TARGET,
    RequestLog,
    next_read,
    parse_line,
)
from lbtui.haproxy.runtime import RuntimeClient
from lbtui.tui.app import Dashboard
from lbtui.tui.table import Table
from tests.conftest import DEADLINE, wait_for
from tests.haproxy.conftest import HAProxy, _unused_port
from tests.haproxy.test_controller import call, controlling
from tests.haproxy.test_ctl import ctl


async def timed_get(port: int, path: str) -> tuple[float, int, str]:
    """One request through HAProxy (a connection of its own): seconds, status and the server that answered."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(DEADLINE):
            answer = await reader.read(-1)
    finally:
        writer.close()
        await writer.wait_closed()
    seconds = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    server = json.loads(body)["backend"] if body.startswith(b"{") else ""
    return seconds, status, server


def rows(snapshot: Snapshot) -> dict[str, BackendView]:
    return {b.name: b for s in snapshot.services for b in s.backends}


def logged(c: HaproxyController) -> int:
    return sum(b.window.requests for b in rows(c.snapshot()).values())


async def attached(c: HaproxyController) -> None:
    """Until the log's stream is open (requests before it are in no window)."""
    await wait_for(lambda: c.request_log.connected, what="the ring's stream open")


def quantile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1] * 1000.0


async def test_p50_p99_per_server_from_the_log_match_the_client(haproxy):
    h = await haproxy(["a", "b"], ring=True)
    async with controlling(h) as c:
        await attached(c)
        # Two requests in sixteen (one after the other: one to each server) wait 40 ms at the backend; the rest
        # answer at once. One at a time (the client's figures are then not its own loop's queue), 300 in all.
        total = 300
        seen: dict[str, list[float]] = {"a": [], "b": []}
        paths = iter(f"/delay/40?n={i}" if i % 16 < 2 else f"/?n={i}" for i in range(total))

        async def worker() -> None:
            for path in paths:
                seconds, status, server = await timed_get(h.frontend_port, path)
                assert status == 200
                seen[server].append(seconds)

        async with asyncio.timeout(DEADLINE * 3):
            await worker()
        await wait_for(lambda: logged(c) >= total, what="every request in the log's windows")
        snapshot = await call(c.snapshot)
        assert snapshot.extra["latency"] == LOG_LATENCY_LABEL
        assert snapshot.extra["request_log"].startswith("wired: HAProxy ring 'lbtui'")
        by_name = rows(snapshot)
        lines = await call(c.recent_requests, 1000)
        slow = 0
        for name, client in seen.items():
            view = by_name[name]
            assert view.window.requests == len(client), name  # every request counted, no more
            assert view.latency_avg_ms is None  # percentiles, not HAProxy's average
            client_p50, client_p99 = quantile_ms(client, 0.5), quantile_ms(client, 0.99)
            # The window holds every line of the server: its percentiles are those of HAProxy's own figures
            # (to the histogram's 1/64).
            own = [r.duration_ms / 1000.0 for r in lines if r.backend == name]
            assert len(own) == len(client)
            assert math.isclose(view.window.p99_ms, quantile_ms(own, 0.99), rel_tol=1 / 64, abs_tol=0.5)
            assert math.isclose(view.window.p50_ms, quantile_ms(own, 0.5), rel_tol=1 / 64, abs_tol=0.5)
            # Against the client: HAProxy's timers are whole milliseconds and start after the client's connect,
            # and the client shares its loop with the backends: the two are close, not equal.
            assert view.window.p99_ms <= client_p99 * 1.2 + 2.0, (name, view.window.p99_ms, client_p99)
            if (
                sum(1 for seconds in client if seconds >= 0.040) >= len(client) * 0.02
            ):  # its p99 is a slow one
                slow += 1
                assert view.window.p99_ms >= 39.0, (name, view.window.p99_ms)
                gap = client_p99 - view.window.p99_ms
                assert gap <= max(10.0, client_p99 * 0.3), (name, view.window.p99_ms, client_p99)
            assert view.window.p50_ms <= client_p50 + 1.0, (name, view.window.p50_ms, client_p50)
            assert view.window.p50_ms < 10.0, (name, view.window.p50_ms)
            assert view.window.errors == 0
        assert slow >= 1
        service = snapshot.services[0]
        assert service.window.requests == total
        everyone = seen["a"] + seen["b"]
        assert (
            39.0 <= service.window.p99_ms <= quantile_ms(everyone, 0.99) * 1.2 + 2.0
        )  # merged from its servers'
        assert service.window.p90_ms >= 39.0  # an eighth of the requests were the slow ones


async def test_recent_requests_and_ctl_requests_show_the_log(haproxy):
    h = await haproxy(["a", "b"], ring=True)
    before = [
        await timed_get(h.frontend_port, f"/before/{i}") for i in range(3)
    ]  # made before lbtui attached
    async with controlling(h) as c:
        await attached(c)
        after = [await timed_get(h.frontend_port, f"/after/{i}") for i in range(3)]
        await timed_get(h.frontend_port, "/status/404")

        def newest() -> list[str]:
            return [r.target for r in c.recent_requests(20)]

        wanted = {"/status/404", *(f"/after/{i}" for i in range(3)), *(f"/before/{i}" for i in range(3))}
        await wait_for(lambda: set(newest()) == wanted, what="the log's requests")
        listed = await call(c.recent_requests, 20)
        assert len(listed) == len(wanted)
        # Newest first: what came after lbtui attached before what came before (HAProxy writes a line when its
        # request ends, so two requests a moment apart may be in either order).
        assert {r.target for r in listed[:4]} == {"/status/404", "/after/0", "/after/1", "/after/2"}
        served = {f"/before/{i}": s for i, (_, _, s) in enumerate(before)}
        served |= {f"/after/{i}": s for i, (_, _, s) in enumerate(after)}
        for r in listed:
            assert (r.method, r.service) == ("GET", "app")
            assert r.status == (404 if r.target == "/status/404" else 200)
            if r.target != "/status/404":
                assert r.backend == served[r.target]
            assert r.client == "127.0.0.1"
            assert r.duration_ms >= 0
        assert abs(listed[0].time - time.time()) < 60  # HAProxy's wall clock, in seconds
        assert await call(c.recent_requests, 2) == listed[:2]
    # `ctl requests` in a process of its own: it reads the ring's dump, so it lists what came before it ran.
    code, out, err = await ctl("--admin", str(h.unix), "requests")
    assert (code, err) == (0, "")
    for path in ("/before/0", "/after/2", "/status/404"):
        assert path in out


async def test_without_the_ring_the_log_is_not_wired(haproxy):
    h = await haproxy(["a"])
    async with controlling(h) as c:
        await timed_get(h.frontend_port, "/")
        snapshot = await call(c.snapshot)
        assert snapshot.extra["latency"] == LATENCY_LABEL
        log = snapshot.extra["request_log"]
        assert log.startswith("not wired: HAProxy has no ring named 'lbtui'")
        assert "docs/haproxy.md" in log
        assert await call(c.recent_requests, 10) == []
        assert math.isnan(rows(snapshot)["a"].window.p99_ms)


async def test_lines_not_in_lbtuis_format_are_skipped_and_said(haproxy):
    foreign, odd, ghost = (_unused_port() for _ in range(3))
    extra = (
        # lines with no marker: another log-format writing to the same ring
        f'frontend foreign\n  bind 127.0.0.1:{foreign}\n  log-format "GET / from %ci said %ST"\n'
        "  default_backend app\n"
        # lines with the marker whose fields are not numbers
        f'frontend odd\n  bind 127.0.0.1:{odd}\n  log-format "{MARKER} %b %s status? %Ta"\n  default_backend app\n'
        # lines of a server that does not exist
        f'frontend ghost\n  bind 127.0.0.1:{ghost}\n  log-format "{LOG_FORMAT.replace("%b %s", "nosuch ghost")}"\n'
        "  default_backend app\n"
    )
    h = await haproxy(["a"], ring=True, extra=extra)
    async with controlling(h) as c:
        await attached(c)
        for _ in range(3):
            await timed_get(foreign, "/")
        await wait_for(
            lambda: c.snapshot().extra["request_log"].startswith("not wired: the 3 lines in HAProxy's ring"),
            what="the foreign lines read",
        )
        snapshot = await call(c.snapshot)
        assert "not in lbtui's format" in snapshot.extra["request_log"]
        assert snapshot.extra["latency"] == LATENCY_LABEL
        for port in (odd, ghost, h.frontend_port, h.frontend_port):
            await timed_get(port, "/")
        await wait_for(
            lambda: logged(c) == 2 and "4 lines skipped" in c.snapshot().extra["request_log"],
            what="the two real requests counted",
        )
        snapshot = await call(c.snapshot)
        assert snapshot.extra["latency"] == LOG_LATENCY_LABEL
        assert (
            "4 lines skipped" in snapshot.extra["request_log"]
        )  # 3 foreign, 1 odd (ghost is read, not shown)
        assert rows(snapshot)["a"].window.requests == 2
        listed = await call(c.recent_requests, 10)
        assert sorted((r.service, r.backend) for r in listed) == [
            ("app", "a"),
            ("app", "a"),
            ("nosuch", "ghost"),
        ]


def test_any_bytes_fed_to_the_reader_are_counted_never_raised():
    log = RequestLog(RuntimeClient("haproxy:///nonexistent.sock"))
    line = f"{MARKER} app a 200 7|6 120 1796693653800 127.0.0.1 12 GET /x?y=1\n".encode()
    chunks = [
        b"\xff\xfe\x00binary\n",
        line[:10],  # a line cut anywhere waits for its end
        line[10:],
        f"{MARKER} app a 2x0 7\n{MARKER}\n{MARKER} app a 200\n".encode(),
        b"x" * 100_000,  # a line too long to wait for: dropped
        b"\n" + line * 3,
        b"<134>Dec  8 01:00:00 haproxy[1]: " + line,  # a syslog header (a ring not `format raw`): skipped
    ]
    now = time.monotonic()
    for chunk in chunks:
        log.feed(chunk, now)
    log.ring_found = log.connected = True
    assert log.counted == 4
    assert log.skipped == 5  # the binary line, three with the marker but not lbtui's fields, the syslog one
    view = log.window("app", "a", now)
    assert view is not None
    assert view.requests == 4
    assert 6.9 <= view.p50_ms <= 7.1
    assert [r.target for r in log.recent(10)] == ["/x?y=1"] * 4
    assert (
        log.status() == "wired: HAProxy ring 'lbtui', 4 requests read, 5 lines skipped (not lbtui's format)"
    )
    assert parse_line("nothing") is None
    assert parse_line(f"{MARKER} a b c") is None


async def test_a_restart_mid_stream_reconnects_the_reader(haproxy):
    h: HAProxy = await haproxy(["a"], ring=True)
    async with controlling(h) as c:
        await attached(c)
        for i in range(10):
            await timed_get(h.frontend_port, f"/before/{i}")
        await wait_for(lambda: logged(c) == 10, what="the requests before the restart counted")
        await h.restart()
        await wait_for(
            lambda: any(e.action == "restart" for e in c.events()),
            what="the restart noticed by the controller",
        )
        assert h.proc is not None
        pid = h.proc.pid
        await wait_for(
            lambda: c.request_log.connected and c.request_log.stream_pid == pid,
            what="the stream open on the new process",
        )
        for i in range(10):
            await timed_get(h.frontend_port, f"/after/{i}")
        await wait_for(lambda: logged(c) == 20, what="the requests after the restart counted too")
        targets = [r.target for r in await call(c.recent_requests, 50)]
        assert {t.partition("/")[2].partition("/")[0] for t in targets[:10]} == {"after"}
        assert sorted(targets) == sorted(f"/{when}/{i}" for when in ("before", "after") for i in range(10))
        assert (await call(c.snapshot)).extra["request_log"].startswith("wired")


async def test_the_dashboard_shows_the_logs_percentiles_and_requests(haproxy):
    h = await haproxy(["a", "b"], ring=True)
    async with controlling(h) as c:
        await attached(c)
        for i in range(4):
            await timed_get(h.frontend_port, f"/seen/{i}")
        await wait_for(lambda: logged(c) == 4, what="the requests counted")
        app = Dashboard(None, controller=c)
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.pause()
            table = app.query_one("#backends", Table)
            keys = [key for key, _, _ in table.columns]
            assert "p50" in keys
            assert "p99" in keys
            assert "avg" not in keys  # percentiles now, not HAProxy's average
            assert "latency: p50/p99 (HAProxy request log)" in str(app.query_one("#services").render())
            assert str(table.get_cell("a", "p99")) not in ("", "-")
            await pilot.press("4")  # the access log
            access = app.query_one("#access", Table)
            await wait_for(lambda: len(access.keys) == 4, what="the log view's rows")
            shown = {str(access.get_cell(key, "target")) for key in access.keys}
            assert shown == {f"/seen/{i}" for i in range(4)}
            await pilot.press("q", "y")
            await wait_for(lambda: not app.is_running, what="the dashboard to quit")


def test_reads_come_sooner_under_load_so_haproxys_side_never_fills():
    # idle, or a trickle: ten reads a second at most
    assert next_read(0, 0.1) == BATCH_SECONDS
    assert next_read(2_000, 0.1) == BATCH_SECONDS
    # 2.2 MB/s (about 30k requests/s): a read every ~15 ms brings about READ_TARGET, far below a socket's buffer
    wait = next_read(220_000, 0.1)
    assert 0.01 < wait < 0.02
    assert abs(wait * 2_200_000 - READ_TARGET) < READ_TARGET / 100
    # a flood: never a busy loop
    assert next_read(50_000_000, 0.1) == BATCH_MIN
