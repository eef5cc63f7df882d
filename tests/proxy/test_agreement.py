"""Routing and the backend cannot disagree (issue 13): requests drawn from the spellings that smuggling and
normalisation corpora use (the HTTP Garden's trophies, h2csmuggler, nginx's and Envoy's normalisation notes:
trailing dots, %-escapes, case, ports, lists, encoded slashes and backslashes, dot segments, `_` header
names, leading zeros, Upgrade tokens), judged by how a lenient web server behind lbtui would read them.

The site: `host = "admin.example"` and `path_prefix = "/flag"` are routes only 10.0.0.0/8 may use (403 here);
everything else goes to a public backend that records what it gets. The oracle reads each request the public
backend got as nginx (and IIS, and WSGI) would: the host lower-cased, its escapes decoded, one trailing dot
dropped; the path with every %-escape decoded, `\\` taken for `/`, `//` merged and dot segments resolved;
`_` in a header name read as `-`. Whatever the spelling, the public backend must never get a request that such
a server would serve as the admin host or under /flag, nor a header that such a server reads as framing or as
the client's address, nor a tunnel. Independent of lbtui's own normalisation code: a model of the backend.

Reproducible by default (the "ci" profile of tests/conftest.py); LBTUI_FUZZ_PROFILE=fuzz LBTUI_FUZZ_SCALE=10 to
explore.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbtui.config import parse_config
from lbtui.proxy.engine import Engine
from tests.conftest import ScriptedUpstream
from tests.proxy.test_upgrades import Switcher, status

PROFILE = settings.get_profile(os.environ.get("LBTUI_FUZZ_PROFILE", "ci"))
SCALE = float(os.environ.get("LBTUI_FUZZ_SCALE", "1"))


class Site:
    def __init__(self, runner: asyncio.Runner, engine: Engine, public: Switcher) -> None:
        self.runner = runner
        self.engine = engine
        self.public = public


@pytest.fixture
def site() -> Iterator[Site]:
    runner = asyncio.Runner()
    public = Switcher()
    upstream = ScriptedUpstream(public.script)
    engine: Engine | None = None
    try:
        runner.run(upstream.start())
        config = {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {"app": {"backends": [{"name": "up", "address": upstream.address}]}},
            "routes": [
                {
                    "name": "admin",
                    "match": {"host": "admin.example"},
                    "service": "app",
                    "ip_allow": ["10.0.0.0/8"],
                },
                {
                    "name": "flag",
                    "match": {"path_prefix": "/flag"},
                    "service": "app",
                    "ip_allow": ["10.0.0.0/8"],
                },
                {"name": "public", "match": {"path_prefix": "/"}, "service": "app"},
            ],
        }
        engine = Engine(parse_config(config))
        runner.run(engine.start())
        yield Site(runner, engine, public)
    finally:
        if engine is not None:
            runner.run(engine.shutdown(grace=0.5))
        runner.run(upstream.stop())
        runner.close()


# -- how a lenient server behind the proxy reads what it got ----------------------------------------------------


def lenient_host(value: bytes) -> bytes:
    host = unquote_to_bytes(value).lower()
    if host.startswith(b"["):
        return host.partition(b"]")[0] + b"]"
    host = host.partition(b":")[0]
    return host[:-1] if host.endswith(b".") else host


def lenient_path(target: bytes) -> bytes:
    path = unquote_to_bytes(target.partition(b"?")[0]).replace(b"\\", b"/").lower()
    out: list[bytes] = []
    for segment in path.split(b"/"):
        if segment == b"..":
            if out:
                out.pop()
        elif segment not in (b"", b"."):
            out.append(segment)
    return b"/" + b"/".join(out)


FRAMING_OR_ORIGIN = {b"transfer-encoding", b"content-length", b"x-real-ip", b"x-forwarded-for", b"forwarded"}


def problems_with(request: Any, sent_forwarded: bool) -> list[str]:
    out = []
    hosts = request.values(b"host")
    if len(hosts) != 1:
        out.append(f"Host fields: {hosts}")
    elif lenient_host(hosts[0]) == b"admin.example":
        out.append(f"the admin host reached the public backend as {hosts[0]!r}")
    path = lenient_path(request.url)
    if path == b"/flag" or path.startswith(b"/flag/"):
        out.append(f"/flag reached the public backend as {request.url!r}")
    for name, _ in request.headers:
        read_as = name.lower().replace(b"_", b"-")
        if b"_" in name and read_as in FRAMING_OR_ORIGIN:
            out.append(f"{name!r} (read as {read_as!r}) reached the backend")
    if request.values(b"forwarded") and not sent_forwarded:
        out.append("a Forwarded the client wrote reached the backend")
    for value in request.values(b"x-forwarded-for"):
        if value != b"127.0.0.1":
            out.append(f"X-Forwarded-For {value!r}")
    for value in request.values(b"content-length"):
        if value != str(len(request.body)).encode():
            out.append(f"Content-Length {value!r} for a body of {len(request.body)}")
    if request.values(b"upgrade"):
        out.append(f"Upgrade {request.values(b'upgrade')} offered")  # this site allows none: see below
    return out


# -- what clients send ---------------------------------------------------------------------------------------

LABELS = [
    b"admin",
    b"ADMIN",
    b"Admin",
    b"%61dmin",
    b"adm%69n",
    b"%41DMIN",
    b"example",
    b"EXAMPLE",
    b"ex%61mple",
]
DOTS = [b".", b"%2E", b"%2e", b"..", b""]
HOST_ENDS = [
    b"",
    b".",
    b"..",
    b":80",
    b":080",
    b":",
    b":0",
    b":65536",
    b",x",
    b";x",
    b"%00",
    b"%2F",
    b"@x",
    b".",
]
SEGMENTS = [b"flag", b"FLAG", b"fl%61g", b"%66lag", b"x", b"..", b".", b"%2e%2e", b"%2E", b"", b"public"]
SLASHES = [b"/", b"%2F", b"%2f", b"%5C", b"%5c", b"//", b"/./", b"%252F"]
UNDERSCORED = [
    b"Transfer_Encoding: chunked",
    b"Content_Length: 3",
    b"X_Real_IP: 10.0.0.1",
    b"X_Forwarded_For: 1.2.3.4",
]
ORIGIN = [b"Forwarded: for=10.0.0.1;host=admin.example", b"X-Forwarded-For: 10.0.0.1", b"X-Real-IP: 10.0.0.1"]
UPGRADES = [
    b"Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
    b"Connection: upgrade, HTTP2-Settings\r\nUpgrade: H2C",
]
LENGTHS = [b"3", b"03", b"003", b"0003"]


@st.composite
def hosts(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        name = (
            draw(st.sampled_from(LABELS[:6]))
            + draw(st.sampled_from(DOTS))
            + draw(st.sampled_from(LABELS[6:]))
        )
    else:
        name = draw(
            st.sampled_from([b"public.example", b"127.0.0.1", b"[::1]", b"x.admin.example", b"admin"])
        )
    return name + draw(st.sampled_from(HOST_ENDS))


@st.composite
def targets(draw: st.DrawFn) -> bytes:
    parts = draw(
        st.lists(st.tuples(st.sampled_from(SLASHES), st.sampled_from(SEGMENTS)), min_size=1, max_size=4)
    )
    path = b"".join(slash + segment for slash, segment in parts)
    if not path.startswith(b"/"):
        path = b"/" + path
    return path + draw(st.sampled_from([b"", b"?q=%2Fflag", b"?a=1"]))


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    host = draw(hosts())
    target = draw(targets())
    if draw(st.integers(0, 4)) == 0:  # absolute-form, with or without a Host beside it
        target = b"http://" + draw(hosts()) + target
    fields = [b"Host: " + host] if draw(st.integers(0, 9)) else []
    fields += draw(st.lists(st.sampled_from(UNDERSCORED + ORIGIN + UPGRADES), max_size=3, unique=True))
    body = b""
    if draw(st.booleans()):
        body = b"abc"
        fields.append(b"Content-Length: " + draw(st.sampled_from(LENGTHS)))
    method = b"POST" if body else draw(st.sampled_from([b"GET", b"OPTIONS", b"DELETE"]))
    fields = draw(st.permutations(fields))
    head = method + b" " + target + b" HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    return head + body, any(f.startswith(b"Forwarded") for f in fields)


# -- the test ----------------------------------------------------------------------------------------------------


async def ask(address: tuple[str, int], data: bytes) -> bytes:
    """Send `data` and read one response (its head, and a body by Content-Length)."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        async with asyncio.timeout(5.0):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\ncontent-length: *([0-9]+)", head, re.IGNORECASE)
            return head + (await reader.readexactly(int(length.group(1))) if length else b"")
    finally:
        writer.close()


@settings(
    PROFILE,
    max_examples=max(1, int(300 * SCALE)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(request=requests())
def test_no_spelling_reaches_what_the_routes_keep_apart(site: Site, request: tuple[bytes, bool]) -> None:
    data, sent_forwarded = request
    before = len(site.public.requests())
    response = site.runner.run(ask(site.engine.address(), data))
    got = site.public.requests()[before:]
    code = status(response)
    assert code != 101, (data, response)  # nothing here tunnels: the route allows no h2c
    if not got:
        assert code != 200, (data, response)
        return
    assert len(got) == 1, (data, got)
    problems = problems_with(got[0], sent_forwarded)
    assert not problems, (data, got[0], problems)
    assert not re.search(rb"%(2f|5c)", got[0].url.partition(b"?")[0], re.IGNORECASE), (data, got[0].url)
