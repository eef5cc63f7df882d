"""The client's side: one protocol per client connection to an http listener, one Exchange per request.

Invariants (with those of proxy/exchange.py, which each request keeps):
- Requests on a connection are answered in the order they arrived (pipelining): one exchange is served at a
  time (`current`); later ones are parsed and held (`pending`), their bodies buffered, until their turn
  (reading stops while PIPELINE_DEPTH requests or PIPELINE_LIMIT body bytes wait).
- A request is refused at its turn (`refuse`): nothing of it reaches a backend, and nothing after it is read.
  What the parser takes it for decides the status: 400 (RFC 9112), 414, 431, 413, 505.
- After a request with `Connection: close`, or an Upgrade request whose protocol is tunnelled, nothing more is
  parsed as HTTP (`last_request`, `upgrading`).
- Reading pauses for reasons kept as a bitmask (`paused`: PAUSE_*); it resumes when none is left.
- Writes made while the upstream side hands over a read (UpstreamConnection.data_received) are corked (`out`)
  and go out as one buffer (`uncork`).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import TYPE_CHECKING

import httptools

from lbtui.http import (
    CHUNKED,
    NO_BODY,
    TARGET_BYTES,
    WELL_FORMED_VERSION,
    TrustedProxies,
    error_response,
    escaped_slash,
    no_delay,
    normal_host,
    normalize_target,
    unescape_slashes,
    upgrade_offer,
)
from lbtui.proxy.exchange import PAUSE_PIPELINE, PIPELINE_DEPTH, RETRY_AFTER, Exchange
from lbtui.proxy.head import build_upstream_head
from lbtui.proxy.upstream import LINGER_ZERO, UpstreamConnection

if TYPE_CHECKING:
    from lbtui.config import ListenerConfig
    from lbtui.gateway.routing import CompiledRoute
    from lbtui.proxy.engine import Engine


class StopParsing(Exception):
    """Raised in a parser callback to stop reading requests from a connection (see ClientConnection.refuse)."""


class ClientConnection(asyncio.Protocol):
    """A connection from a client to one of our http listeners."""

    def __init__(self, engine: Engine, listener: ListenerConfig) -> None:
        self.engine = engine
        self.listener = listener
        self.tls = listener.tls is not None
        self.scheme = b"https" if self.tls else b"http"
        # The listener's request rules, as the running config has them (a reload changes them for new connections).
        settings = engine.listener_configs.get(listener.name) or listener
        self.upgrades = settings.upgrades  # tunnelled for routes that do not say
        self.escaped_slashes = settings.escaped_slashes
        self.underscores = settings.headers_with_underscores
        self.send_forwarded = settings.forwarded
        self.in_own_head = False  # the parser reads a head of our own (read_body_after_upgrade)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Exchange | None = None
        self.current: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.peer_host = b""
        # Set when the peer is one of the listener's trusted_proxies: then its X-Forwarded-For is believed.
        self.trusted: TrustedProxies | None = None
        self.forwarded_client = b""  # the client address that X-Forwarded-For gives (trusted peers only)
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.out: list[bytes] | None = None  # writes held while corked
        self.last_active = 0.0
        self.tunnel_to: UpstreamConnection | None = None
        self.upgrading: Exchange | None = None  # an Upgrade request waiting for its 101
        self.last_request = False  # a request said `Connection: close` (or the parser failed): read no more
        # The last request's headers and what they became for the backend (see build_upstream_head): filtered
        # headers, had an id, body framing, Content-Length, the sticky cookie stripped, the forwarded client.
        self.head_cache: tuple[list[tuple[bytes, bytes]], bytes, bool, int, int, bytes, bytes] | None = None
        # The same for a route's rewrite (proxy/head.py, rewrite_for): route, headers, rewritten, filtered, had an id.
        self.rewrite_cache: (
            tuple[CompiledRoute, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bytes, bool] | None
        ) = None
        # The API key this connection used, and its consumer.
        self.known_key: tuple[bytes, bytes] | None = None
        limits = engine.config.limits
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.max_body = limits.max_body
        self.head_started = 0.0  # when the first byte of a request head not yet complete arrived (0: none)
        self.head_received = 0  # bytes received while in a request head (bounds what the parser holds)

    # -- lifecycle -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_host = str(peer[0]).encode()
            trusted = self.engine.trusted_proxies.get(self.listener.name)
            if trusted is not None and trusted.contains(self.peer_host):
                self.trusted = trusted
        no_delay(transport)
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]
        self.last_active = self.engine.now()
        if len(self.engine.connections) >= self.engine.config.limits.max_connections:
            # Over [limits] max_connections: say so and close, rather than take what we cannot serve.
            self.closed = True
            transport.write(error_response(503, "too many connections", close=True, extra=RETRY_AFTER))  # type: ignore[attr-defined]
            transport.close()
            self.engine.connections_refused += 1
            return
        self.engine.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self not in self.engine.connections:
            return  # refused at connection_made (over max_connections)
        self.closed = True
        self.engine.connection_closed(self)
        tunnel = self.tunnel_to
        if tunnel is not None:
            self.tunnel_to = None
            if exc is not None:
                tunnel.abort()  # the client reset the tunnel: so is the backend's side
            else:
                tunnel.close()
        if self.current is not None:
            self.current.client_lost()
        for exchange in self.pending:
            exchange.done = True
        self.pending.clear()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.uncork()
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection with a reset (RST), not a close: a response cut short must not look whole, even
        to a client that reads its body until the connection closes (HTTP/1.0, or no framing). What was written
        while corked goes first, so the client sees the same cut however the backend's bytes were split."""
        if self.transport is not None:
            self.uncork()
            self.closed = True
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
                except (OSError, ValueError):  # ValueError: uvloop's socket of a transport already closed
                    pass
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return self.current is None and self.parsing is None and self.tunnel_to is None

    # -- writing and flow control ------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        out = self.out
        if out is not None:
            out.append(data)
        elif not self.closed and self.transport is not None:
            self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        out = self.out
        if out is not None:
            out.extend(data)
        elif not self.closed and self.transport is not None:
            self.transport.writelines(data)

    def write_parts(self, parts: list[bytes]) -> None:
        """Write `parts` as one buffer: kept with what else is written while corked, else joined now."""
        out = self.out
        if out is not None:
            out += parts
        elif not self.closed and self.transport is not None:
            self.transport.write(b"".join(parts))

    def uncork(self) -> None:
        """Send what was written while corked (`out` set: see UpstreamConnection.data_received) at once."""
        out = self.out
        self.out = None
        if out and not self.closed and self.transport is not None:
            # One buffer, not a vector of small ones: a plain write costs the kernel less than writev.
            if len(out) == 1:
                self.transport.write(out[0])
            elif len(out) <= 64:
                self.transport.write(b"".join(out))
            else:
                self.transport.writelines(out)

    def pause_writing(self) -> None:
        self.write_paused = True
        upstream = self.tunnel_to or (self.current.upstream if self.current is not None else None)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        upstream = self.tunnel_to or (self.current.upstream if self.current is not None else None)
        if upstream is not None and upstream.transport is not None:
            upstream.transport.resume_reading()

    def pause_reading_for(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # -- parsing -------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel_to
        if tunnel is not None:
            if tunnel.transport is not None:
                tunnel.transport.write(data)
            return
        self.last_active = self.engine.now()
        upgrading = self.upgrading
        if upgrading is not None:
            # After an Upgrade request nothing is parsed as HTTP: the bytes wait for the backend's 101, and are
            # dropped with the connection if it refuses.
            upgrading.tunnel_pending = (*upgrading.tunnel_pending, data)
            return
        parsing = self.parsing
        if self.last_request and parsing is None:
            return  # after `Connection: close` (or HTTP/1.0): nothing more is read as a request (its body is)
        if parsing is None or not parsing.method:  # in a request head (or about to start one)
            if not self.head_started:
                self.head_started = self.last_active  # [limits] header_timeout runs from here (the tick)
            self.head_received += len(data)
        # Each turn of the loop parses what is left of `data`: more than one only after an Upgrade request that is
        # served as a plain one (the parser stops at its head and is fed the rest again), so it ends.
        while True:
            try:
                self.parser.feed_data(data)
                if self.head_received > self.max_header_bytes:
                    self.head_too_large()
            except StopParsing:
                pass  # a request was refused (refuse): nothing more is read
            except httptools.HttpParserUpgrade as upgrade:
                rest = data[upgrade.args[0] :]
                exchange = self.upgrading
                if exchange is None:  # no protocol it asked for is tunnelled: read on as HTTP
                    self.read_body_after_upgrade()
                    # (after `Connection: close` only the request's own body; the parser then stops at its end)
                    if rest and (not self.last_request or self.parsing is not None):
                        data = rest
                        continue
                elif rest:
                    exchange.tunnel_pending = (*exchange.tunnel_pending, rest)
            except httptools.HttpParserError as error:
                if self.last_request:
                    return  # bytes after the last request of the connection: ignored, not an error
                self.bad_request(error, data)
            return

    def read_body_after_upgrade(self) -> None:
        """The parser ends an Upgrade request at its head: when that request goes on as a plain one with a body
        (its Upgrade dropped, on_headers_complete), a head of our own with the same framing makes the parser read
        that body next; its callbacks are skipped (`in_own_head`), the body goes to the request."""
        exchange = self.parsing
        if exchange is None or not exchange.body_after_upgrade:
            return
        exchange.body_after_upgrade = False
        if exchange.req_framing == CHUNKED:
            framing = b"Transfer-Encoding: chunked"
        else:
            framing = b"Content-Length: %d" % exchange.content_length
        close = b"" if exchange.keep_alive else b"\r\nConnection: close"
        self.in_own_head = True
        # A new parser: the old one may be past the end of the connection (an Upgrade request with `close`).
        self.parser = httptools.HttpRequestParser(self)
        self.parser.feed_data(b"PUT / HTTP/1.1\r\n" + framing + close + b"\r\n\r\n")

    def header_timeout(self) -> None:
        """[limits] header_timeout passed before the request head was complete (slowloris): 408, close."""
        self.engine.header_timeouts += 1
        self.last_request = True
        self.write(error_response(408, "the request head did not arrive in time", close=True))
        self.close()

    def body_timeout(self) -> None:
        """The request's body stopped arriving for [limits] client_idle_timeout: 408 if nothing of the response
        was sent yet, and close either way (its backend connection, holding half a body, is closed too)."""
        self.last_request = True
        current = self.current
        if current is not None and not current.done:
            current.termination = "client-timeout"
        if current is not None and not current.response_started and not current.done:
            current.respond_error(408, "the request body stopped arriving")
        else:
            self.abort()

    def head_too_large(self) -> None:
        """A request head past [limits] max_header_bytes: 414 while in the request line, else 431."""
        exchange = self.parsing
        if exchange is None:  # bytes that never became a request line
            exchange = self.parsing = Exchange(self)
        if exchange.method:
            return  # the head was complete after all (the bytes counted were body)
        if exchange.headers:
            self.refuse(
                exchange, 431, f"the request's header fields are larger than {self.max_header_bytes} bytes"
            )
        else:
            self.refuse(exchange, 414, f"the request line is longer than {self.max_header_bytes} bytes")

    def refuse(self, exchange: Exchange, status: int, detail: str) -> None:
        """Answer `exchange` with `status` at its turn and read nothing more from this connection.

        Called while parsing (it ends by raising StopParsing, which data_received takes as the end of input):
        nothing of a refused request reaches a backend, and none of its bytes are read as a next request.
        """
        self.last_request = True
        exchange.keep_alive = False
        queued = exchange is self.current or exchange in self.pending
        if exchange is self.parsing:
            self.parsing = None  # the parser stops here: nothing more of this request is read either
        if exchange.done:
            raise StopParsing
        if exchange is self.current:
            if exchange.response_started:
                exchange.close_after = True  # the backend answered already: cut the connection at the end
            else:
                exchange.respond_error(status, detail)
        else:
            if exchange.refused is None:
                exchange.refused = (status, detail)
            if not queued:  # refused before its head was complete: queue it now
                exchange.started = self.last_active
                if self.current is None:
                    self.current = exchange
                    exchange.start()
                else:
                    self.pending.append(exchange)
        raise StopParsing

    def bad_request(self, error: Exception, data: bytes = b"") -> None:
        """The client sent what is not HTTP/1.1: the request it broke in is answered 400 at its turn (505 for a
        well-formed version we do not serve), after the requests before it, and nothing more is read."""
        detail = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        status = 400
        if detail == "Invalid HTTP version" and WELL_FORMED_VERSION.search(data):
            status, detail = 505, "this HTTP version is not supported (HTTP/1.1 is)"
        exchange = self.parsing
        if exchange is None:  # broken at the start of a new request
            exchange = self.parsing = Exchange(self)
        try:
            self.refuse(exchange, status, f"bad request: {detail}")
        except StopParsing:
            pass

    # No on_message_begin callback (one Python call less per request): a request starts with its URL.
    def on_url(self, url: bytes) -> None:
        if self.in_own_head:
            return  # (read_body_after_upgrade)
        exchange = self.parsing
        if exchange is None:
            self.parsing = exchange = Exchange(self)
            exchange.url = url
            if not self.head_started:
                self.head_started = self.last_active  # a pipelined request: its head began in this read
        else:
            exchange.url += url  # the URL can arrive in pieces
        if len(exchange.url) > self.max_header_bytes:
            self.refuse(exchange, 414, f"the request target is longer than {self.max_header_bytes} bytes")
        if url.find(b"#") >= 0:  # (find, not `in`: see below)
            self.refuse(exchange, 400, "a request target has no fragment (#)")
        if url.translate(None, TARGET_BYTES):  # what is left is not allowed (RFC 9112 3.2: 400)
            self.refuse(exchange, 400, "the request target has a character that RFC 3986 does not allow")

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.parsing
        if exchange is not None and not exchange.method:  # after the head (method known): trailers, dropped
            headers = exchange.headers
            if name.find(b"_") < 0 or self.underscores == "keep":
                headers.append((name, value))
            elif self.underscores == "drop":
                # Some stacks read `_` as `-` (CGI, WSGI, PHP): `Transfer_Encoding` must not reach them as framing.
                self.engine.underscore_headers_dropped += 1
            else:
                self.engine.underscore_requests_refused += 1
                self.refuse(exchange, 400, "a header field name has '_' (listener headers_with_underscores)")
            size = exchange.head_size = exchange.head_size + len(name) + len(value) + 4
            if size > self.max_header_bytes:
                self.refuse(
                    exchange,
                    431,
                    f"the request's header fields are larger than {self.max_header_bytes} bytes",
                )
            if len(headers) > self.max_headers:
                self.refuse(exchange, 431, f"the request has more than {self.max_headers} header fields")

    def on_headers_complete(self) -> None:
        if self.in_own_head:
            self.in_own_head = False  # (read_body_after_upgrade): the body that follows is the request's
            return
        exchange = self.parsing
        assert exchange is not None
        parser = self.parser
        exchange.method = parser.get_method()
        exchange.version = parser.get_http_version()
        exchange.keep_alive = parser.should_keep_alive() and not self.engine.closing
        exchange.upgrade = parser.should_upgrade()
        if exchange.version != "1.1":
            self.check_version(exchange)
        url = exchange.url
        if url[:1] != b"/":
            self.origin_form(exchange)
            url = exchange.url
        redirect = b""
        # Whether the target may change under normalize_target. bytes.find, not `in`: CPython's `sub in some_bytes`
        # first tries `sub` as an int, and raises and clears a TypeError (with a formatted message) before it
        # searches: twice the cost, on every request.
        if url.find(b"%") >= 0 or url.find(b"/.") >= 0 or url.find(b"//") >= 0:
            normal = normalize_target(url)
            if normal is None:
                self.refuse(exchange, 400, "the request target has a broken %-encoding")
            else:
                if escaped_slash(normal) and self.escaped_slashes != "keep":
                    # `/flag%2Fx` is `/flag/x` to servers that decode it (nginx, for one): routing and the
                    # backend would disagree about the path (Envoy's path_with_escaped_slashes_action).
                    if self.escaped_slashes == "reject":
                        self.refuse(
                            exchange,
                            400,
                            "the path has an encoded slash or backslash (%2F, %5C) (listener escaped_slashes)",
                        )
                    normal = unescape_slashes(normal)
                    if self.escaped_slashes == "unescape_and_redirect":
                        redirect = normal
                exchange.url = normal
        build_upstream_head(exchange)  # also learns the body's framing, needed before its turn
        self.head_started = 0.0
        self.head_received = 0
        if exchange.refused is not None:
            self.refuse(exchange, *exchange.refused)
        if exchange.content_length > self.max_body:
            self.refuse(exchange, 413, f"the request body is larger than {self.max_body} bytes")
        if redirect:  # answered at its turn, as a refusal, but the connection stays open
            exchange.refused = (307, "the path had an encoded slash or backslash: ask for it unescaped")
            exchange.response_extra = ((b"Location", redirect),)
        exchange.started = self.last_active  # when its bytes arrived: queueing behind others counts too
        if exchange.upgrade:
            if exchange.method == b"CONNECT":  # the parser takes every CONNECT for an upgrade
                # RFC 9110 9.3.6: its target is an authority (refused in origin_form); with a path it is invalid.
                self.refuse(exchange, 400, "CONNECT needs an authority as its target, and is not served")
            offer = b"" if redirect else self.upgrade_offer_for(exchange)
            if offer:
                if exchange.req_framing != NO_BODY:
                    # The parser ends an upgrade request at its head: its body would pass as tunnel bytes while the
                    # backend waits for it (and reads the next client's request as the rest of it).
                    self.refuse(exchange, 400, "an upgrade request with a body is not served")
                exchange.upgrade_offer = offer
                build_upstream_head(exchange, cache=False)  # again, now with the Upgrade it sends on
                exchange.keep_alive = False
                self.upgrading = exchange
            else:
                # Nothing it asks for is tunnelled here (an h2c tunnel would carry requests past every policy):
                # a plain request, its Upgrade (and HTTP2-Settings) dropped. The parser ended it at its head;
                # its body is read next (read_body_after_upgrade), and then the requests after it.
                exchange.upgrade = False
                if exchange.req_framing != NO_BODY:
                    exchange.body_after_upgrade = True
        if not exchange.keep_alive:
            self.last_request = True
        if self.current is None:
            self.current = exchange
            exchange.start()
        else:
            self.pending.append(exchange)
            # Queued requests are held, their bodies too; read on (so a closing client is noticed) until
            # too many wait, then stop reading until they are answered.
            if len(self.pending) >= PIPELINE_DEPTH:
                self.pause_reading_for(PAUSE_PIPELINE)

    def upgrade_offer_for(self, exchange: Exchange) -> bytes:
        """What of the request's Upgrade goes to the backend: the protocols its route tunnels (route `upgrades`,
        else its listener's), b"" for none (and for a request no route takes: it gets its 404 at its turn)."""
        asked = b", ".join(v for n, v in exchange.headers if n.lower() == b"upgrade")
        allowed = None
        router = self.engine.router
        if router.single is None:
            route = router.route(exchange)
            if route is None:
                return b""
            allowed = route.upgrades
        if allowed is None:
            allowed = frozenset(p.encode() for p in self.upgrades)
        return upgrade_offer(asked, allowed)

    def check_version(self, exchange: Exchange) -> None:
        """HTTP/1.0 is served (as 1.1 to the backend); 0.9 is refused; 2.0 over this text protocol is 505."""
        version = exchange.version
        if version == "0.9":
            self.refuse(exchange, 400, "HTTP/0.9 requests (no version) are not supported")
        elif version != "1.0":
            self.refuse(exchange, 505, f"HTTP/{version} is not supported here (HTTP/1.1 is)")

    def origin_form(self, exchange: Exchange) -> None:
        """A request target other than a path (RFC 9112 3.2): absolute-form becomes origin-form, its authority
        the Host; `*` only for OPTIONS; anything else is refused. A Host field beside an absolute-form target
        must name the same host (3.2: a client MUST send the target's authority as Host; HAProxy refuses a
        mismatch too), else 400: the route and the backend would see different hosts."""
        url = exchange.url
        if url == b"*":
            if exchange.method != b"OPTIONS":
                self.refuse(exchange, 400, "the request target * is only for OPTIONS")
            return
        scheme, sep, rest = url.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            self.refuse(exchange, 400, "the request target is neither a path nor an absolute http(s) URL")
        authority, slash, path = rest.partition(b"/")
        authority, question, query = authority.partition(b"?")
        normal = normal_host(authority) if authority and authority.find(b"@") < 0 else None
        if not normal:
            self.refuse(exchange, 400, "the request target's authority is not a valid host[:port]")
            return
        hosts = [v for n, v in exchange.headers if n.lower() == b"host"]
        if len(hosts) > 1:
            self.refuse(exchange, 400, "more than one Host header field")
        if hosts:
            default = b":443" if scheme.lower() == b"https" else b":80"
            given = normal_host(hosts[0])
            if given is None or given.removesuffix(default) != normal.removesuffix(default):
                self.refuse(exchange, 400, "the Host header field does not name the request target's host")
        exchange.url = b"/" + path + (b"?" + query if question else b"") if (slash or question) else b"/"
        exchange.headers = [(n, v) for n, v in exchange.headers if n.lower() != b"host"]
        exchange.headers.append((b"Host", normal))

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is not None:
            exchange.request_body(body)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is not None and exchange.body_after_upgrade:
            return  # the parser's end of an Upgrade request served as a plain one: its body is still to come
        self.parsing = None
        if exchange is not None:
            if exchange.req_framing == NO_BODY and not exchange.done:
                exchange.request_done = True  # Exchange.request_complete, for the common bodiless case
            else:
                exchange.request_complete()

    # -- sequencing ----------------------------------------------------------------------------------------
    def exchange_finished(self, exchange: Exchange, now: float) -> None:
        if exchange is not self.current:
            return
        self.current = None
        self.last_active = now
        engine = self.engine
        if exchange.close_after or not exchange.keep_alive or engine.closing:
            self.close()
            if engine.closing:
                engine.connection_idle(self)
            return
        if self.pending:
            self.current = self.pending.popleft()
            if len(self.pending) < PIPELINE_DEPTH:
                self.resume_reading_for(PAUSE_PIPELINE)
            self.current.start()
        elif self.paused:
            self.resume_reading_for(PAUSE_PIPELINE)

    def start_tunnel(self, exchange: Exchange, upstream: UpstreamConnection) -> None:
        self.tunnel_to = upstream
        self.upgrading = None
        self.current = None
        self.parsing = None
