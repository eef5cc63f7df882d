"""Where lbtui and a backend could read one request differently (issue 13, from outside corpora and scanners):
the Host's spelling, an encoded slash in the path, Content-Length's digits, header names with `_`, and a
client's own Forwarded. Each case: what the client got, which service's backend got the request, and exactly
what it got; a refusal reaches no backend at all.

The routes are the ones that made nginx behind lbtui serve what lbtui's routes meant to keep apart: a
`host = "admin.example"` route, a `/flag` prefix only for 10.0.0.0/8, and a catch-all.
"""

from __future__ import annotations

from typing import Any

import pytest

from lbtui.config import parse_config
from tests.conftest import wait_for
from tests.proxy.test_upgrades import Switcher, exchange, status

T = 5.0


class Site:
    """An engine in front of three recording backends: `admin` (host admin.example), `flag` (/flag, which only
    10.0.0.0/8 may use: 403 here) and `public` (the rest)."""

    def __init__(self, engine: Any, backends: dict[str, Switcher]) -> None:
        self.engine = engine
        self.backends = backends

    def got(self) -> dict[str, list[Any]]:
        return {name: b.requests() for name, b in self.backends.items() if b.requests()}

    async def ask(self, data: bytes, responses: int = 1) -> tuple[list[bytes], bool]:
        return await exchange(self.engine.address(), data, responses)

    async def refused(self, data: bytes, expected: int = 400) -> bytes:
        """`data` gets `expected`, the connection is closed, and no backend got anything."""
        responses, closed = await self.ask(data)
        assert [status(r) for r in responses] == [expected], responses
        assert closed, responses
        healthy, _ = await self.ask(b"GET /healthy HTTP/1.1\r\nHost: h\r\n\r\n")
        assert [status(r) for r in healthy] == [200]
        assert {name: [r.url for r in got] for name, got in self.got().items()} == {"public": [b"/healthy"]}
        return responses[0]

    async def served_by(self, data: bytes) -> tuple[str, Any]:
        """`data` is answered by one backend: its name and the request it got."""
        responses, _ = await self.ask(data)
        assert [status(r) for r in responses] == [200], responses
        got = self.got()
        assert len(got) == 1, got
        ((name, requests),) = got.items()
        assert len(requests) == 1, requests
        return name, requests[0]


def site_config(addresses: dict[str, str], **listener: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", **listener}],
        "services": {
            name: {"backends": [{"name": name, "address": address}], "retries": {"attempts": 0}}
            for name, address in addresses.items()
        },
        "routes": [
            {"name": "admin", "match": {"host": "admin.example"}, "service": "admin"},
            {
                "name": "flag",
                "match": {"path_prefix": "/flag"},
                "service": "flag",
                "ip_allow": ["10.0.0.0/8"],
            },
            {"name": "public", "match": {"path_prefix": "/"}, "service": "public"},
        ],
    }


@pytest.fixture
async def make_site(scripted, engine_factory):
    async def make(**listener: Any) -> Site:
        backends = {name: Switcher() for name in ("admin", "flag", "public")}
        addresses = {}
        for name, backend in backends.items():
            addresses[name] = (await scripted(backend.script)).address
        engine = await engine_factory(parse_config(site_config(addresses, **listener)))
        return Site(engine, backends)

    return make


def get(host: bytes, target: bytes = b"/x", *fields: bytes) -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: "
        + host
        + b"\r\n"
        + b"".join(f + b"\r\n" for f in fields)
        + b"\r\n"
    )


# -- Host ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "forwarded"),
    [
        pytest.param(b"admin.example", b"admin.example", id="plain"),
        pytest.param(b"admin.example.", b"admin.example", id="trailing-dot"),
        pytest.param(b"ADMIN.Example", b"admin.example", id="upper-case"),
        pytest.param(b"admin%2Eexample", b"admin.example", id="escaped-dot"),
        pytest.param(b"%61dmin.example", b"admin.example", id="escaped-letter"),
        pytest.param(b"admin.example.:8080", b"admin.example:8080", id="trailing-dot-and-port"),
        pytest.param(b"admin.example:0080", b"admin.example:80", id="port-leading-zeros"),
        pytest.param(b"admin.example:", b"admin.example", id="empty-port"),
    ],
)
async def test_spellings_of_a_host_reach_its_route_and_its_backend_in_one_form(make_site, host, forwarded):
    """Found with nginx behind lbtui: `admin.example.` (and the other spellings a resolver or a web server takes
    for the same name) fell through the host route to the catch-all, and nginx served its admin virtual host."""
    site = await make_site()
    name, request = await site.served_by(get(host))
    assert name == "admin"
    assert request.values(b"host") == [forwarded]
    assert request.values(b"x-forwarded-host") == [forwarded]


@pytest.mark.parametrize(
    "host",
    [
        pytest.param(b"admin.example..", id="two-trailing-dots"),
        pytest.param(b"admin..example", id="empty-label"),
        pytest.param(b".admin.example", id="leading-dot"),
        pytest.param(b"admin.example,b", id="comma"),
        pytest.param(b"a,b", id="list"),
        pytest.param(b"a;x", id="semicolon"),
        pytest.param(b"%00", id="escaped-nul"),
        pytest.param(b"admin.example%00", id="name-then-escaped-nul"),
        pytest.param(b"admin%2Fexample", id="escaped-slash"),
        pytest.param(b"admin.example%3A80", id="escaped-colon"),
        pytest.param(b"%C3%A9.example", id="escaped-utf8"),
        pytest.param(b"admin%zzexample", id="broken-escape"),
        pytest.param(b"admin.example:0", id="port-zero"),
        pytest.param(b"admin.example:65536", id="port-too-large"),
        pytest.param(b"admin.example:8x", id="port-not-digits"),
        pytest.param(b"admin.example:80:80", id="two-ports"),
        pytest.param(b"[v1.x]", id="ipvfuture"),
        pytest.param(b"[::1]x", id="junk-after-ip-literal"),
        pytest.param(b"admin!example", id="sub-delim"),
        pytest.param(b"admin~example", id="tilde"),
    ],
)
async def test_a_host_that_is_not_one_host_is_refused(make_site, host):
    """RFC 9110 7.2 / RFC 9112 3.2: 400 to a Host that is not `uri-host [":" port]`; here also to reg-names that
    name no host a resolver would look up (lists, `;`, NUL, non-ASCII bytes), which backends split or cut."""
    site = await make_site()
    await site.refused(get(host))


async def test_an_ip_literal_host_is_written_in_its_compressed_form(make_site):
    site = await make_site()
    name, request = await site.served_by(get(b"[0:0::0001]:8080"))
    assert name == "public"
    assert request.values(b"host") == [b"[::1]:8080"]


@pytest.mark.parametrize(
    ("target", "fields"),
    [
        pytest.param(b"http://admin.example/x", (b"Host: public.example",), id="other-host"),
        pytest.param(b"http://admin.example/x", (b"Host: admin.example:8080",), id="other-port"),
        pytest.param(
            b"http://admin.example/x", (b"Host: admin.example", b"Host: admin.example"), id="two-hosts"
        ),
        pytest.param(b"http://admin.example/x", (b"Host: a,b",), id="bad-host"),
        pytest.param(b"http://admin.example../x", (b"Host: admin.example",), id="bad-authority"),
        pytest.param(b"http://user@admin.example/x", (b"Host: admin.example",), id="userinfo"),
        # HAProxy's reg-test of H1 authority validation (h1_host_normalization.vtc) holds these mismatches too:
        pytest.param(b"http://admin.example:80/x", (b"Host: admin.example:81",), id="port-mismatch"),
        pytest.param(
            b"http://admin.example:8080/x", (b"Host: admin.example",), id="non-default-port-missing"
        ),
        pytest.param(b"http://admin.example/x", (b"Host: admin.example:81",), id="non-default-port-added"),
        pytest.param(b"https://admin.example/x", (b"Host: admin.example:80",), id="http-port-on-https"),
        pytest.param(
            b"http://admin.example/x", (b"Host: admin.example:80", b"Host: admin.example"), id="two-equal"
        ),
    ],
)
async def test_an_absolute_form_target_must_agree_with_its_host(make_site, target, fields):
    """RFC 9112 3.2: a client MUST send, as Host, the target URI's authority. A request whose two disagree is
    refused (as HAProxy does): a router reading one and a backend the other would see two hosts."""
    site = await make_site()
    await site.refused(b"GET " + target + b" HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n")


@pytest.mark.parametrize(
    ("target", "host"),
    [
        pytest.param(b"http://admin.example/x", b"admin.example", id="same"),
        pytest.param(b"http://ADMIN.example./x", b"admin.example", id="same-name"),
        pytest.param(b"http://admin.example/x", b"admin.example:80", id="default-port"),
        pytest.param(b"http://admin.example/x", None, id="no-host-field"),
        # and the ones it takes as equal (a default port, an empty one):
        pytest.param(b"http://admin.example:80/x", b"admin.example", id="default-port-in-target"),
        pytest.param(b"https://admin.example:443/x", b"admin.example", id="https-default-port"),
        pytest.param(b"http://admin.example:/x", b"admin.example", id="empty-port-in-target"),
        pytest.param(b"http://admin.example/x", b"admin.example:", id="empty-port-in-host"),
        pytest.param(b"http://admin.example:80/x", b"admin.example:", id="default-and-empty"),
    ],
)
async def test_an_absolute_form_target_that_agrees_with_its_host_is_served(make_site, target, host):
    site = await make_site()
    fields = b"Host: " + host + b"\r\n" if host is not None else b""
    name, request = await site.served_by(b"GET " + target + b" HTTP/1.1\r\n" + fields + b"\r\n")
    assert name == "admin"
    assert request.url == b"/x"
    assert request.values(b"host") == [target.split(b"/")[2].lower().rstrip(b".").removesuffix(b":")]


# -- an encoded slash in the path ----------------------------------------------------------------------------

ESCAPED = [
    b"/flag%2Fx",
    b"/flag%2fx",
    b"/flag%5Cx",
    b"/flag%5cx",
    b"/public/..%2Fflag",
    b"/x%2F..%2F..%2Fflag",
]


@pytest.mark.parametrize("target", ESCAPED)
async def test_an_encoded_slash_is_refused_by_default(make_site, target):
    """Found with nginx behind lbtui: `/flag%2Fx` missed the `/flag` route (an encoded slash is no separator to
    lbtui) and went to the catch-all, and nginx, which decodes it, served `location /flag`. The default is
    Envoy's REJECT_REQUEST (and Traefik's): nothing ambiguous reaches a backend."""
    site = await make_site()
    response = await site.refused(get(b"h", target))
    assert b"escaped_slashes" in response


@pytest.mark.parametrize("target", ESCAPED)
async def test_an_encoded_slash_unescaped_and_forwarded_meets_the_route_it_names(make_site, target):
    site = await make_site(escaped_slashes="unescape_and_forward")
    responses, _ = await site.ask(get(b"h", target))
    assert [status(r) for r in responses] == [403], responses  # the /flag route's ip_allow
    assert site.got() == {}


async def test_an_encoded_slash_unescaped_and_forwarded_reaches_the_backend_unescaped(make_site):
    site = await make_site(escaped_slashes="unescape_and_forward")
    name, request = await site.served_by(get(b"h", b"/a%2Fb%5Cc?q=%2F"))
    assert name == "public"
    assert request.url == b"/a/b/c?q=%2F"  # the query is left as it is


@pytest.mark.parametrize(
    ("target", "location"),
    [
        pytest.param(b"/flag%2Fx", b"/flag/x", id="slash"),
        pytest.param(b"/a%5Cb?q=%2F", b"/a/b?q=%2F", id="backslash-and-query"),
        pytest.param(b"/public/..%2Fflag", b"/flag", id="dot-segment"),
    ],
)
async def test_an_encoded_slash_is_redirected_unescaped(make_site, target, location):
    """Envoy's UNESCAPE_AND_REDIRECT: 307 to the unescaped path, so every party sees the same one; the connection
    stays open."""
    site = await make_site(escaped_slashes="unescape_and_redirect")
    responses, closed = await site.ask(get(b"h", target) + get(b"h", b"/next"), responses=2)
    assert [status(r) for r in responses] == [307, 200], responses
    assert b"\r\nLocation: " + location + b"\r\n" in responses[0]
    assert not closed
    assert {name: [r.url for r in got] for name, got in site.got().items()} == {"public": [b"/next"]}


async def test_an_encoded_slash_kept_goes_to_the_backend_as_sent(make_site):
    site = await make_site(escaped_slashes="keep")
    name, request = await site.served_by(get(b"h", b"/flag%2fx"))
    assert name == "public"  # an opaque segment: not under /flag
    assert request.url == b"/flag%2Fx"


async def test_a_query_with_an_encoded_slash_is_not_refused(make_site):
    site = await make_site()
    name, request = await site.served_by(get(b"h", b"/search?path=a%2Fb%5Cc"))
    assert name == "public"
    assert request.url == b"/search?path=a%2Fb%5Cc"


# -- Content-Length ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "sent"),
    [(b"005", b"5"), (b"0005", b"5"), (b"010", b"10"), (b"00", b"0"), (b"0", b"0"), (b"5", b"5")],
)
async def test_content_length_is_sent_in_canonical_digits(make_site, given, sent):
    """Found by the smuggling corpora: `Content-Length: 005` went on as it came. Some parsers read a leading 0
    as octal (the HTTP Garden found servers that parse it with strtoll(.., 0): `010` is 8), or refuse it: the
    backend gets the number the proxy framed the body with."""
    site = await make_site()
    body = b"0123456789"[: int(sent)]
    data = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: " + given + b"\r\n\r\n" + body
    _, request = await site.served_by(data)
    assert request.values(b"content-length") == [sent]
    assert request.body == body


# -- header names with `_` -----------------------------------------------------------------------------------

UNDERSCORED = (b"Transfer_Encoding: chunked", b"Content_Length: 40", b"X_Real_IP: 10.0.0.1")


async def test_header_names_with_underscores_are_dropped_and_counted(make_site):
    """nginx's `underscores_in_headers off`, Envoy's DROP_HEADER: CGI, WSGI and PHP read `_` as `-`, so a
    `Transfer_Encoding` or `X_Real_IP` that reached them would frame the body or name the client."""
    site = await make_site()
    _, request = await site.served_by(get(b"h", b"/x", *UNDERSCORED, b"X-Kept: yes"))
    assert all(b"_" not in name for name, _ in request.headers), request.headers
    assert request.values(b"x-kept") == [b"yes"]
    counters = site.engine.counters()
    assert counters["underscore_headers_dropped"] == 3
    assert counters["underscore_requests_refused"] == 0
    snapshot = site.engine.controller.snapshot()
    assert snapshot.extra["counters"]["underscore_headers_dropped"] == 3


async def test_header_names_with_underscores_may_be_kept(make_site):
    site = await make_site(headers_with_underscores="keep")
    _, request = await site.served_by(get(b"h", b"/x", b"X_Real_IP: 10.0.0.1"))
    assert request.values(b"x_real_ip") == [b"10.0.0.1"]
    assert site.engine.counters()["underscore_headers_dropped"] == 0


async def test_header_names_with_underscores_may_be_refused(make_site):
    site = await make_site(headers_with_underscores="reject")
    response = await site.refused(get(b"h", b"/x", b"X_Real_IP: 10.0.0.1"))
    assert b"headers_with_underscores" in response
    assert site.engine.counters()["underscore_requests_refused"] == 1


# -- Forwarded -----------------------------------------------------------------------------------------------

FORGED = b"Forwarded: for=10.0.0.1;host=admin.example;proto=https"


async def test_a_clients_forwarded_is_dropped_like_its_x_forwarded_for(make_site):
    """Found by the corpora: X-Forwarded-* were replaced but Forwarded passed, so a backend that reads RFC 7239
    (Rack 3 prefers it) took the client's word for its address, host and scheme."""
    site = await make_site()
    _, request = await site.served_by(get(b"h", b"/x", FORGED, b"X-Forwarded-For: 10.0.0.2"))
    assert request.values(b"forwarded") == []
    assert request.values(b"x-forwarded-for") == [b"127.0.0.1"]


async def test_lbtui_sends_its_own_forwarded_when_asked(make_site):
    site = await make_site(forwarded=True)
    _, request = await site.served_by(get(b"Public.Example:8080", b"/x", FORGED))
    assert request.values(b"forwarded") == [b'for=127.0.0.1;host="public.example:8080";proto=http']


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        pytest.param(False, [b"for=10.0.0.1;host=admin.example;proto=https"], id="kept"),
        pytest.param(
            True,
            [b"for=10.0.0.1;host=admin.example;proto=https, for=127.0.0.1;host=h;proto=http"],
            id="extended",
        ),
    ],
)
async def test_a_trusted_proxys_forwarded_is_kept(make_site, own, expected):
    site = await make_site(trusted_proxies=["127.0.0.1/32"], forwarded=own)
    _, request = await site.served_by(get(b"h", b"/x", FORGED))
    assert request.values(b"forwarded") == expected


async def test_listener_rules_change_on_reload_for_new_connections(make_site):
    site = await make_site()
    engine = site.engine
    config = engine.config
    listener = config.listeners[0]
    new = parse_config(
        site_config(
            {s.name: f"{s.backends[0].host}:{s.backends[0].port}" for s in config.services},
            escaped_slashes="keep",
        )
    )
    assert new.listeners[0].name == listener.name
    engine.reload(new)
    await wait_for(lambda: engine.listener_configs["web"].escaped_slashes == "keep", T, "the reload")
    name, request = await site.served_by(get(b"h", b"/flag%2Fx"))
    assert (name, request.url) == ("public", b"/flag%2Fx")
