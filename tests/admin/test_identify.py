"""`lbtui ctl` pointed at what is not lbtui's admin API, over real sockets: every command fails with one line
that names the URL and what answered, exits 1, and sends nothing but the identifying `GET /api/v1/`.

ctl runs in-process here (lbtui.admin.ctl.run, on a thread: the servers run on the test's loop) so that every
command meets every server; tests/e2e/test_ctl.py runs it as a user does, as a process of its own.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path

import pytest
import trustme

from lbtui.admin.ctl import run
from lbtui.cli import build_parser
from tests.attached import canary_config, served
from tests.impostors import (
    NGINX_JSON,
    NGINX_STATIC,
    garbage,
    http_answer,
    impostors,
    nginx,
    nginx_tls,
    silent,
    tls_context,
    tls_silent,
)

# Every command, as a deploy script would send it: each must identify the API before it does anything.
COMMANDS = [
    ["state"],
    ["--json", "state"],
    ["drain", "blue-1"],
    ["--json", "drain", "blue-1"],
    ["drain", "blue-1", "--wait", "--timeout", "2s"],
    ["enable", "blue-1"],
    ["disable", "blue-1"],
    ["maint", "blue-1"],
    ["remove", "blue-1"],
    ["weight", "blue-1", "2"],
    ["add", "app", "blue-2", "127.0.0.1:9", "--group", "blue"],
    ["algorithm", "app", "ewma"],
    ["split", "app", "blue=50", "green=50"],
    ["flip", "app"],
    ["reload"],
    ["events"],
    ["requests"],
    ["ramp", "app"],
    ["ramp", "app", "--abort"],
    ["undo"],
]


def ctl(url: str, *argv: str) -> tuple[int, str, str]:
    """`lbtui ctl --admin URL ARGV...` in-process: (exit code, stdout, stderr)."""
    args = build_parser().parse_args(["ctl", "--admin", url, *argv])
    out, err = io.StringIO(), io.StringIO()
    code = run(args, out, err)
    return code, out.getvalue(), err.getvalue()


async def every_command(url: str, *options: str) -> list[tuple[list[str], tuple[int, str, str]]]:
    """Every command against `url`, all at once (each on a thread of its own)."""
    results = await asyncio.gather(*(asyncio.to_thread(ctl, url, *options, *argv) for argv in COMMANDS))
    return list(zip(COMMANDS, results, strict=True))


def assert_refused(
    results: list[tuple[list[str], tuple[int, str, str]]], line: str | re.Pattern[str]
) -> None:
    """Each: exit 1, nothing on stdout, one line on stderr (exactly `line`, or matching it)."""
    for argv, (code, out, err) in results:
        assert (code, out) == (1, ""), (argv, code, out, err)
        assert err.endswith("\n"), (argv, err)
        assert err.count("\n") == 1, (argv, err)
        if isinstance(line, str):
            assert err == line, (argv, err)
        else:
            assert line.fullmatch(err.rstrip("\n")), (argv, err)


def not_lbtui(url: str, found: str) -> str:
    return f"lbtui ctl: {url} is not an lbtui admin API (it answered {found})\n"


async def test_the_listener_of_a_running_lbtui_is_refused_and_nothing_changes(backends) -> None:
    """The issue's case: `ctl --admin` given the proxy's address printed `None: None none -> none`, exit 0."""
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s:
        before = s.engine.call(s.controller.snapshot)
        assert_refused(await every_command(s.proxy), not_lbtui(s.proxy, "200 application/json"))
        # The identifying GET is all the listener was sent: no drain, no weight reached a backend either.
        requests = s.engine.call(s.controller.recent_requests, 1000)
        assert [(r.method, r.target) for r in requests] == [("GET", "/api/v1/")] * len(COMMANDS)
        assert s.engine.call(s.controller.events, 100) == []
        after = s.engine.call(s.controller.snapshot)
        assert [(b.name, b.admin_state, b.weight) for b in after.services[0].backends] == [
            (b.name, b.admin_state, b.weight) for b in before.services[0].backends
        ]
        assert ctl(s.url, "drain", "blue-1") == (0, "blue-1: state ready -> drain\n", "")  # the API itself


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_nginx_is_refused_by_what_it_answered(tmp_path: Path, ca: trustme.CA) -> None:
    log = "access_log {dir}/access-{port}.log;"
    servers = {
        "static": f"{NGINX_STATIC}\n{log}",
        "json": f"{NGINX_JSON}\n{log}",
        "https": f"{nginx_tls(tmp_path, ca)}\n{log}",
    }
    async with nginx(tmp_path, servers) as web:
        static, json_, https = (web.urls[name] for name in ("static", "json", "https"))
        assert_refused(
            await every_command(static),
            re.compile(re.escape(not_lbtui(static, "404 text/html from nginx/")[:-2]) + r"[\d.]+\)"),
        )
        assert_refused(
            await every_command(json_),
            re.compile(re.escape(not_lbtui(json_, "200 application/json from nginx/")[:-2]) + r"[\d.]+\)"),
        )
        # An HTTPS server: nginx answers a plain-HTTP request with its own 400 page.
        assert_refused(
            await every_command(https),
            re.compile(re.escape(not_lbtui(https, "400 text/html from nginx/")[:-2]) + r"[\d.]+\)"),
        )
        for name, port in web.ports.items():
            lines = (tmp_path / f"access-{port}.log").read_text().splitlines()
            assert len(lines) == len(COMMANDS), name
            assert all('"GET /api/v1/ HTTP/1.1"' in line for line in lines), lines


async def test_a_json_server_of_another_shape_is_refused() -> None:
    """`state` printed `no services`, exit 0, against a server answering JSON with no services in it."""
    async with impostors() as start:
        server = await start(http_answer({"status": "ok"}, headers="Server: tiny/1.0\r\n"))
        assert_refused(
            await every_command(server.url), not_lbtui(server.url, "200 application/json from tiny/1.0")
        )
        assert server.requests == ["GET /api/v1/"] * len(COMMANDS)
        error_page = await start(
            http_answer(b"<h1>Not Found</h1>", "404 Not Found", "text/html; charset=utf-8")
        )
        assert_refused(await every_command(error_page.url), not_lbtui(error_page.url, "404 text/html"))


async def test_a_server_that_speaks_no_http_is_refused() -> None:
    async with impostors() as start:
        server = await start(garbage)
        assert_refused(
            await every_command(server.url),
            not_lbtui(server.url, "something that is not HTTP: '???garbage, not HTTP?'"),
        )


async def test_an_https_server_is_named_as_one(ca: trustme.CA) -> None:
    """Python's TLS server closes a plain-HTTP connection without a word: ctl finds out that it speaks TLS."""
    async with impostors() as start:
        server = await start(tls_silent, tls=tls_context(ca))
        assert_refused(
            await every_command(server.url),
            not_lbtui(server.url, "in TLS, as an HTTPS server does; the admin API is plain http"),
        )


async def test_a_server_that_never_answers_costs_the_request_timeout() -> None:
    async with impostors() as start:
        server = await start(silent)
        began = time.monotonic()
        results = await every_command(server.url, "--request-timeout", "300ms")
        elapsed = time.monotonic() - began
        assert_refused(
            results,
            f"lbtui ctl: no answer from {server.url} within 0.3s (it took the connection and said nothing: "
            "is it an lbtui admin API?)\n",
        )
        assert elapsed < 10.0  # 20 commands, each bounded by the 0.3 s timeout (on threads, a few at a time)


async def test_a_future_admin_api_version_is_refused_by_name() -> None:
    async with impostors() as start:
        identity = {"api": "lbtui-admin", "version": 2, "versions": [2], "lbtui": "9.0.0"}
        server = await start(http_answer(identity, headers="X-Lbtui-Admin: 2\r\n"))
        assert_refused(
            await every_command(server.url),
            re.compile(
                re.escape(f"lbtui ctl: {server.url} is an lbtui admin API of version 2; this lbtui (")
                + r"[^)]+"
                + re.escape(") speaks version 1: use the lbtui release of the server")
            ),
        )
        assert server.requests == ["GET /api/v1/"] * len(COMMANDS)


async def test_a_proxy_that_changes_the_json_is_one_line_not_a_traceback(backends, tmp_path: Path) -> None:
    """nginx in front of the real admin API, rewriting its JSON: each read says what was wrong with it."""
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s:
        rewrite = (
            "listen 127.0.0.1:{port};\n"
            f'location / {{ proxy_pass {s.url}; proxy_set_header Accept-Encoding "";\n'
            "sub_filter_types application/json; sub_filter_once off;\n"
            "sub_filter '\"services\":' '\"svcs\":'; sub_filter '\"id\":' '\"ident\":';\n"
            "sub_filter '\"requests\":[' '\"reqs\":['; }"
        )
        async with nginx(tmp_path, {"proxy": rewrite}) as web:
            url = web.urls["proxy"]
            for argv, line in [
                (["state"], "GET /api/v1/state with JSON of another shape (no 'services')"),
                (["--json", "state"], "GET /api/v1/state with JSON of another shape (no 'services')"),
                (
                    ["weight", "blue-1", "3"],
                    "PUT /api/v1/backends/blue-1/weight with JSON of another shape (no 'id')",
                ),
                (["events"], "GET /api/v1/events?limit=20 with JSON of another shape (no 'id')"),
                (["requests"], "GET /api/v1/requests?limit=20 with JSON of another shape (no 'requests')"),
            ]:
                result = await asyncio.to_thread(ctl, url, *argv)
                assert result == (1, "", f"lbtui ctl: {url} answered {line}\n"), argv
            # The API's own refusals still come through as they are.
            result = await asyncio.to_thread(ctl, url, "drain", "nope")
            assert result == (1, "", "lbtui ctl: no backend named 'nope'\n")


async def test_the_header_decides_through_a_proxy(backends, tmp_path: Path) -> None:
    """nginx in front of the real admin API: a proxy that drops the header hides the API; one that says the
    server speaks versions 1 and 2 is still understood; one that says 2 only is refused by name."""
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s:
        block = (
            "listen 127.0.0.1:{port};\n"
            f"location / {{ proxy_pass {s.url}; proxy_hide_header X-Lbtui-Admin; %s }}"
        )
        servers = {
            "stripped": block % "",
            "both": block % "add_header X-Lbtui-Admin '1, 2' always;",
            "future": block % "add_header X-Lbtui-Admin '2' always;",
        }
        async with nginx(tmp_path, servers) as web:
            code, out, err = await asyncio.to_thread(ctl, web.urls["stripped"], "state")
            assert (code, out) == (1, "")
            assert re.fullmatch(
                re.escape(not_lbtui(web.urls["stripped"], "200 application/json from nginx/")[:-2])
                + r"[\d.]+\)\n",
                err,
            ), err
            code, out, err = await asyncio.to_thread(ctl, web.urls["both"], "weight", "blue-1", "4")
            assert (code, out, err) == (0, "blue-1: weight 1 -> 4\n", "")
            code, out, err = await asyncio.to_thread(ctl, web.urls["future"], "weight", "blue-1", "5")
            assert (code, out) == (1, "")
            assert err.startswith(f"lbtui ctl: {web.urls['future']} is an lbtui admin API of version 2; "), (
                err
            )
        assert s.engine.call(s.controller.snapshot).backend("blue-1").weight == 4


async def test_the_header_without_the_identity_is_not_the_api() -> None:
    async with impostors() as start:
        server = await start(http_answer({"api": "something-else"}, headers="X-Lbtui-Admin: 1\r\n"))
        assert_refused(
            await every_command(server.url),
            f"lbtui ctl: {server.url} is not an lbtui admin API (GET /api/v1/ answered JSON of another shape)\n",
        )
        assert server.requests == ["GET /api/v1/"] * len(COMMANDS)
