"""One request and its response: the Exchange, and the rules every exchange keeps.

The pieces of the request path (docs/architecture.md follows one request through them):
- proxy/connection.py: the client's connection, its parser callbacks, pipelining and flow control;
- proxy/exchange.py (here): one request and its response, its states and its one end;
- proxy/head.py: the request's head filtered and written again for its backend; the Connection decision;
- proxy/dispatch.py: attempts at backends, retries, the retry budget, the service's queue;
- gateway/pipeline.py: what a route does (auth, rate limit, CORS, cache, sticky, aggregate);
- proxy/upstream.py: the backend's connection and the pool it comes from.

States (the `state` property names them; as h11 writes its states down, each with the calls that leave it):

    HEAD        its request head is being read                          -> WAITING, or refused at its turn
    WAITING     read, waiting for the requests before it (pipelining)   -> start(): ROUTING's outcomes below
    QUEUED      every backend that could take it is at max_connections  -> CONNECTING (serve_queue), DONE (503)
    CONNECTING  a backend is picked, its connection is being made       -> SENT (attach), another attempt
    SENT        the request went to the backend; no response head yet   -> RESPONDING (upstream_head), another
                                                                           attempt (a failure, a 5xx retried)
    RESPONDING  the response is being passed on                         -> DONE (upstream_complete: whole;
                                                                           a cut: aborted), TUNNEL (a 101)
    ASIDE       an aggregate answers it (gateway/aggregate.py)          -> DONE (respond_local)
    TUNNEL      a 101 switched protocols: bytes pass both ways          (the connection's end ends it)
    DONE        answered, or its client left                            (finish ran, once)

start() leads from WAITING to DONE (answered here: a refusal, a gateway policy, a cache hit, no backend),
ASIDE, QUEUED or CONNECTING/SENT (an idle pooled connection is used at once).

Invariants:
- Requests on a connection are answered in the order they arrived (pipelining): one exchange is served at a
  time; later ones are parsed and held, their bodies buffered, until their turn (reading stops while
  PIPELINE_DEPTH requests or PIPELINE_LIMIT body bytes wait).
- After a request with `Connection: close`, or an Upgrade request whose protocol is tunnelled, nothing more is
  parsed as HTTP. Only the protocols its route allows (listener `upgrades`, route `upgrades`; `websocket` by
  default) are offered to the backend; an Upgrade with none of them is dropped and the request served as a
  plain one. A 101 is passed on only for a protocol that was offered; any other is a gateway error (retried
  where retries.on says so, else 502).
- What reaches a backend about the request's origin is lbtui's: the Host in one normal form (http.normal_host,
  400 for a Host that is not one host), X-Forwarded-* and Forwarded from a client only through a listener's
  trusted_proxies, no header named with `_` (listener headers_with_underscores), Content-Length in its
  canonical digits, and a path with no %2F or %5C unless the listener says keep (escaped_slashes).
- Bodies stream both ways with backpressure: a full write buffer on one side pauses reading on the other, so
  memory stays flat whatever the body size.
- A request is retried on another backend only while nothing of its response has reached the client, only
  when what was sent can be sent again (idempotent method, body kept), and never after a POST was sent. A
  retry after a bad or late answer (gateway-error, timeout, a 5xx with retries.on "5xx") needs room in the
  service's retry budget; one after a connection closed or reset before any byte of a response (a backend
  dying) or a failed connect does not. A 5xx that is retried never reaches the client; the last attempt's
  answer always does. A request that cannot be sent again is never written on a pooled connection whose end
  already waits in its socket (UpstreamConnection.still_open).
- A response cut after its head was forwarded is aborted (the client's connection is reset) and counted for its
  backend (`aborted`); every failed attempt is kept for the access log (failed_tries, termination).
- Every exchange ends exactly once, in `finish` (for a response read whole, a cut one, an answer made here,
  a 101 that becomes a tunnel, a client gone), which releases its backend's in-flight count and
  records it: the backend its last attempt (with that attempt's latency), the service and route the answer.
  A tunnel ends when either side closes (the other side is closed too) or resets (the other is reset); that
  end is not a failure of the exchange.
- Sticky sessions (gateway/sticky.py): the backend a request's cookie names (Service.sticky_backend) is tried
  before any algorithm, the cookie never reaches a backend, and a response from a backend the cookie did not
  name sets it. A session whose backend is at max_connections waits for that backend in the service's queue.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Final

from lbtui.core.model import AdminState
from lbtui.gateway.pipeline import keep_or_invalidate, stick, sticky_cookie, take
from lbtui.gateway.routing import response_parts
from lbtui.http import (
    CHUNKED,
    LAST_CHUNK,
    NO_BODY,
    UNTIL_CLOSE,
    chunk_frame,
    error_response,
    protocol_names,
    status_line,
)
from lbtui.proxy.dispatch import attempt, attempt_failed, queue_expired, retry_5xx
from lbtui.proxy.head import compose_request, connection_field, forwarded_fields, rewrite_for
from lbtui.proxy.miniclient import ConnectFailed, Reply
from lbtui.proxy.upstream import BAD_RESPONSE, CONNECT_FAILURE, RESET, TIMEOUT, UpstreamConnection

if TYPE_CHECKING:
    from lbtui.config import RetriesConfig, StickyConfig, TimeoutsConfig
    from lbtui.core.model import Backend, RouteStats, Service
    from lbtui.gateway.cache import Keeping
    from lbtui.gateway.routing import CompiledRoute
    from lbtui.proxy.connection import ClientConnection

# Request body bytes kept so that a failed attempt can be sent again to another backend.
REPLAY_LIMIT: Final = 64 * 1024
# Bytes of a request body we hold while it waits (for its turn, or for a connection) before we stop reading.
PIPELINE_LIMIT: Final = 64 * 1024
# Pipelined requests we hold before we stop reading from the client.
PIPELINE_DEPTH: Final = 16

READY: Final = AdminState.READY
RETRY_AFTER: Final = ((b"Retry-After", b"1"),)

PAUSE_UPSTREAM: Final = 1  # the upstream's write buffer is full
PAUSE_PIPELINE: Final = 2  # requests are queued behind the current one
PAUSE_WAITING: Final = 4  # body arrives before an upstream connection is ready

HEAD: Final = "head"
WAITING: Final = "waiting"
QUEUED: Final = "queued"
CONNECTING: Final = "connecting"
SENT: Final = "sent"
RESPONDING: Final = "responding"
ASIDE: Final = "aside"
TUNNEL: Final = "tunnel"
DONE: Final = "done"


class Exchange:
    """One request and its response."""

    # Defaults live on the class: a new exchange sets only what differs, which keeps the hot path short.
    # (Lists are never shared: the empty defaults are tuples, replaced by a list on first use.)
    url = b""
    method = b""
    version = "1.1"
    keep_alive = True
    upgrade = False  # the parser took it for an upgrade (cleared when no protocol it asks for is tunnelled)
    upgrade_offer = b""  # the protocols of its Upgrade that its route tunnels, sent on (b"": none)
    body_after_upgrade = False  # its Upgrade was dropped, and the parser has yet to read its body
    req_framing = NO_BODY
    request_done = False
    body_pending: tuple[bytes, ...] | list[bytes] = ()  # framed body bytes not yet written upstream
    body_pending_size = 0
    # Framed body bytes sent so far, while small enough to send again; None once they are not.
    replay: tuple[bytes, ...] | list[bytes] | None = ()
    replay_size = 0
    bytes_in = 0
    bytes_out = 0
    service: Service | None = None
    backend: Backend | None = None
    upstream: UpstreamConnection | None = None
    upstream_request = b""
    tried: tuple[Backend, ...] = ()
    attempts = 0  # requests written to a backend so far (a retry resends the kept body)
    fresh_retry = False
    # For the access log, why it did not end well (proxy/accesslog.py): each failed attempt as "backend:cause"
    # (cause: connect-refused, closed-before-head, reset-mid-body, 503, ...; "/reused" on a kept-alive
    # connection), how the exchange ended ("": a response passed on whole), and why its last failure was not
    # tried again (retries exhausted, budget refused, not idempotent, ...).
    failed_tries: tuple[str, ...] = ()
    termination = ""
    retry_verdict = ""
    informed = False  # a 1xx went to the client: something reached it (no retry on a 5xx after that)
    response_started = False
    resp_framing = NO_BODY
    chunk_out = False  # frame the response body in chunks for the client
    status = 0
    started = 0.0
    done = False
    close_after = False
    tunnel = False
    tunnel_pending: tuple[bytes, ...] = ()
    deadline = 0.0  # when the backend's response head is due (0: not waiting); the engine's tick checks
    content_length = 0  # the request's Content-Length, when it has one
    head_size = 0  # bytes of the header fields so far (names, values, ": " and CRLF)
    refused: tuple[int, str] | None = None  # answered by the proxy at its turn: (status, why); see refuse()
    failure: tuple[int, str] | None = None  # the last failed attempt's answer (status, why); see attempt()
    client_addr = b""  # the client's address from a trusted proxy's X-Forwarded-For ("": the peer's)
    retrying = False  # counted in its service's retries_in_flight (the retry budget)
    queue_deadline = 0.0  # waiting in its service's queue (max_connections) until then; 0: not waiting
    route: CompiledRoute | None = None  # set when its route changes the response's headers
    response_extra: tuple[tuple[bytes, bytes], ...] = ()  # for the response: RateLimit-*, CORS grants
    route_stats: RouteStats | None = None  # the numbers of the route that took it
    consumer = b""  # who auth said the client is
    middle = b""  # with routes: the filtered headers, until start() composes the request for the backend
    has_request_id = False
    request_id = b""  # the X-Request-ID made here for it (b"": none made; the client's own is in headers)
    # For the access log (proxy/accesslog.py): when a new upstream connection was asked for, how long the last
    # attempt waited for its connection (0.0 when it reused one), and when the response head came (0.0: none).
    connect_started = 0.0
    connect_time = 0.0
    attempt_started = 0.0  # when its current backend was chosen: what that backend's latency counts from
    head_at = 0.0
    response_timeout = 0.0  # its route's `timeout`, when it has one (else the service's timeouts.response)
    # Answering it off the request path (an aggregate); cancelled if lost.
    task: asyncio.Task[None] | None = None
    retries_config: RetriesConfig | None = None  # its route's retries (None: its service's)
    keeping: Keeping | None = None  # its business with its route's cache (gateway/cache.py)
    sticky: StickyConfig | None = None  # its service's sticky sessions (set at its turn; None: not sticky)
    bound: Backend | None = None  # the backend its sticky cookie named, while it may take it
    strip_cookie = b""  # the cookie the backend must not see (the service's sticky cookie, when sent)

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.headers: list[tuple[bytes, bytes]] = []

    # -- request side ----------------------------------------------------------------------------------
    def request_body(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.bytes_in > self.client.max_body:
            self.client.refuse(self, 413, f"the request body is larger than {self.client.max_body} bytes")
            return
        framed = chunk_frame(data) if self.req_framing == CHUNKED else [data]
        self._send_body(framed, len(data))

    def request_complete(self) -> None:
        self.request_done = True
        if self.req_framing == CHUNKED:
            self._send_body([LAST_CHUNK], 5)
        if self.upstream is not None and not self.response_started and self.service is not None:
            self.deadline = self.client.engine.now() + (
                self.response_timeout or self.service.response_timeout
            )
        if self.done:
            self.client.exchange_finished(self, self.client.engine.now())

    def _send_body(self, framed: list[bytes], size: int) -> None:
        if self.done:
            return  # answered early: the rest of the body is read and dropped
        replay = self.replay
        if replay is not None:
            self.replay_size += size
            if self.replay_size > REPLAY_LIMIT:
                self.replay = None
            else:
                if not replay:
                    self.replay = replay = []
                assert isinstance(replay, list)
                replay.extend(framed)
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.closed:
            upstream.transport.writelines(framed)
        else:
            pending = self.body_pending
            if not pending:
                self.body_pending = pending = []
            assert isinstance(pending, list)
            pending.extend(framed)
            self.body_pending_size += size
            if self.body_pending_size > PIPELINE_LIMIT:
                self.client.pause_reading_for(PAUSE_WAITING)

    def start(self) -> None:
        """This exchange's turn: choose a service and a backend (or answer the refusal of its request)."""
        refused = self.refused
        if refused is not None:
            # (response_extra: a redirect's Location, see on_headers_complete)
            self.respond_error(*refused, extra=self.response_extra)
            return
        router = self.client.engine.router
        service = router.single
        if service is None:
            service = take(self, router)  # the gateway's steps (gateway/pipeline.py)
            if service is None:
                return  # answered there, or handed to its route's aggregate
        elif service.config.sticky is not None:
            stick(self, service)
        self.service = service
        attempt(self)

    # -- its state (the module's docstring) --------------------------------------------------------------
    @property
    def state(self) -> str:
        """Where it is (the module's docstring), from the fields that hold it: for tests and for a reader."""
        if self.tunnel:
            return TUNNEL
        if self.done:
            return DONE
        if not self.method:
            return HEAD
        if self.response_started:
            return RESPONDING
        if self.upstream is not None:
            return SENT
        if self.queue_deadline:
            return QUEUED
        if self.backend is not None:
            return CONNECTING
        if self.task is not None:
            return ASIDE
        return WAITING

    # -- what core and the upstream side ask of it ---------------------------------------------------------
    def attempt(self) -> None:
        """Try (again) to send it to a backend (proxy/dispatch.py): the service's queue calls this."""
        attempt(self)

    def queue_expired(self) -> None:
        queue_expired(self)

    def retry_5xx(self, conn: UpstreamConnection, status: int) -> bool:
        return retry_5xx(self, conn, status)

    def service_config_timeouts(self) -> TimeoutsConfig:
        assert self.service is not None
        return self.service.config.timeouts

    def attach(self, conn: UpstreamConnection, reused: bool) -> None:
        """An upstream connection is ready for this exchange: send the request."""
        now = self.client.engine.now()
        if self.done or self.backend is None or conn.pool.backend is not self.backend:
            conn.pool.release(conn, now)
            return
        self.connect_time = 0.0 if reused else now - self.connect_started
        conn.begin(self)
        self.upstream = conn
        transport = conn.transport
        assert transport is not None
        self.fresh_retry = not reused  # a fresh connection is never retried "fresh" again
        self.attempts += 1
        if self.attempts > 1 and self.replay is not None:
            transport.writelines([self.upstream_request, *self.replay])
        elif self.body_pending:
            transport.writelines([self.upstream_request, *self.body_pending])
        else:
            transport.write(self.upstream_request)
        if self.body_pending:
            self.body_pending = ()
            self.body_pending_size = 0
            self.client.resume_reading_for(PAUSE_WAITING)
        if self.client.write_paused:
            transport.pause_reading()
        if self.request_done or self.req_framing == NO_BODY:
            self.deadline = now + (
                self.response_timeout or self.service.response_timeout  # type: ignore[union-attr]
            )
        # else: the response timeout starts when the body has been sent whole (request_complete)

    def connect_failed(self, backend: Backend, reason: str, cause: str = "connect-failure") -> None:
        if self.done or self.backend is not backend:
            return
        backend.connect_failed()
        attempt_failed(self, CONNECT_FAILURE, reason, cause)

    def expire(self) -> None:
        """The backend's response head did not come in time, or its body stopped moving (the engine's tick)."""
        self.deadline = 0.0
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.exchange = None
            conn.close()
        if self.response_started:
            attempt_failed(self, TIMEOUT, "the backend's response stopped moving", "stalled-mid-body")
        else:
            attempt_failed(self, TIMEOUT, "the backend did not answer in time", "timeout-before-head")

    def upstream_lost(self, conn: UpstreamConnection, reset: bool = False) -> None:
        """The backend closed the connection (`reset`: reset it) before the exchange completed."""
        if self.tunnel:
            # The backend ended the tunnel (upstream_upgraded): so does the client's side, the same way.
            if reset:
                self.client.abort()
            else:
                self.client.close()
            return
        if self.upstream is not conn:
            return
        self.upstream = None
        if self.response_started:
            if self.resp_framing == UNTIL_CLOSE and not reset:
                # A body that ends with the connection: whole.
                if self.chunk_out:
                    self.client.write(LAST_CHUNK)
                self.finish()
                return
            # Reset, or closed short of its framing: cut, never passed off as whole.
            how = "reset" if reset else "closed"
            attempt_failed(self, RESET, f"the backend {how} the connection mid-response", f"{how}-mid-body")
            return
        how = "reset" if reset else "closed"
        # A kept-alive connection that ends before any byte of its response: most likely the backend closed it
        # while it sat idle in the pool, at the moment it was taken (see dispatch.attempt_failed).
        reused = conn.requests > 0 and not conn.received
        attempt_failed(self, RESET, f"the backend {how} the connection", f"{how}-before-head", reused)

    def upstream_failed(self, kind: str, reason: str, cause: str) -> None:
        if self.tunnel:
            self.client.abort()  # the backend reset the tunnel: the client's side is reset too
            return
        self.upstream = None
        attempt_failed(self, kind, reason, cause)

    def upstream_informational(self, parts: list[bytes]) -> None:
        if self.version == "1.0" or self.done:
            return  # HTTP/1.0 clients do not understand 1xx
        self.informed = True
        parts.append(b"\r\n")
        self.client.write(b"".join(parts))

    def upstream_head(
        self,
        conn: UpstreamConnection,
        status: int,
        parts: list[bytes],
        framing: int,
        upgrade_value: bytes | None,
    ) -> None:
        """The backend's response head, its headers already filtered (see UpstreamConnection.on_header)."""
        if self.done:
            return
        client = self.client
        if status == 101:
            switched_to = protocol_names(upgrade_value) if upgrade_value is not None else set()
            if not switched_to or not switched_to <= protocol_names(self.upgrade_offer):
                # A switch the client did not ask for, or to another protocol: the bytes that follow are not HTTP,
                # so that connection is closed and nothing of it reaches the client; a gateway error (retried
                # where retries.on says so, else 502, as HAProxy answers).
                conn.exchange = None
                conn.close()
                asked = self.upgrade_offer.decode("latin-1") or "no upgrade"
                self.upstream_failed(
                    BAD_RESPONSE,
                    f"the backend switched protocols (101) unasked (the request asked for {asked})",
                    "unasked-101",
                )
                return
        self.head_at = client.engine.now()
        self.deadline = 0.0
        self.status = status
        self.response_started = True
        if self.termination:
            self.termination = ""  # an attempt failed before this one: this response is the answer
        if self.method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
            framing = NO_BODY
        if status == 101:
            assert upgrade_value is not None
            if self.sticky is not None:  # a handshake's answer too: its session is the backend that switched
                parts = sticky_cookie(self, parts)
            parts.append(b"Connection: upgrade\r\nUpgrade: " + upgrade_value + b"\r\n")
            parts.append(b"\r\n")
            client.write(b"".join(parts))
            return
        keeping = self.keeping
        if keeping is not None:
            keep_or_invalidate(self, keeping, status, parts, framing)
        route = self.route
        if route is not None:
            parts = response_parts(parts, route.response_remove, route.response_set + self.response_extra)
        if self.sticky is not None:
            parts = sticky_cookie(self, parts)
        self.resp_framing = framing
        if framing in (CHUNKED, UNTIL_CLOSE):
            if self.version == "1.1":
                # Chunked to the client, also when the backend ends its body by closing: keeps keep-alive.
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self.chunk_out = True
            else:
                self.close_after = True  # HTTP/1.0 knows no chunks: the body ends when we close
        connection = connection_field(self)
        if connection:
            parts.append(connection)
        parts.append(b"\r\n")
        client.write_parts(parts)  # (corked, the usual case: joined once with the body)

    def upstream_body(self, data: bytes) -> None:
        if self.done or not data:
            return
        keeping = self.keeping
        if keeping is not None:
            keeping.take(data)  # (read while it may be kept)
        self.bytes_out += len(data)
        if self.chunk_out:
            self.client.write_parts(chunk_frame(data))
        else:
            self.client.write(data)

    def upstream_complete(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        """The backend's response was read whole: its connection goes back to the pool (or is closed: a
        draining backend's, or one the backend will close), its response is kept if its route caches it, and
        the exchange ends (finish)."""
        if self.done:
            conn.close()
            return
        engine = self.client.engine
        now = engine.now()
        backend = self.backend
        self.upstream = None
        if (
            keep_alive
            and self.request_done
            and backend is not None
            and backend.admin_state is READY
            and not engine.closing
        ):
            conn.pool.release(conn, now)
        else:
            conn.close()
        keeping = self.keeping
        if keeping is not None:
            keeping.store(self.status, now)
        if self.chunk_out:
            self.client.write(LAST_CHUNK)
        self.finish(now)

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The backend switched protocols (101): from now on, bytes pass through both ways untouched."""
        if self.done or self.upstream is not conn:
            conn.close()  # a 101 that upstream_head answered with a 502
            return
        if self.status != 101 or not self.upgrade:
            conn.close()
            self.upstream = None
            attempt_failed(self, BAD_RESPONSE, "the backend switched protocols unasked", "unasked-101")
            return
        self.tunnel = True
        conn.pool.active.discard(conn)
        self.client.start_tunnel(self, conn)
        if rest:
            self.client.write(rest)
        if self.tunnel_pending and conn.transport is not None:
            conn.transport.writelines(list(self.tunnel_pending))  # what the client sent after its request
            self.tunnel_pending = ()
        # The exchange ends here, counted and logged as a 101: what ends the tunnel later (either side
        # closing) is no failure of it. The connection is the client's tunnel now (tunnel_to), not the exchange's.
        self.upstream = None
        self.finish()

    def respond_error(
        self,
        status: int,
        detail: str,
        retry_after: bool = False,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer with an error of our own, when nothing of a backend's response was sent."""
        if self.done:
            return
        self.deadline = 0.0
        self.status = status
        connection = connection_field(self)
        if retry_after:
            extra = RETRY_AFTER + extra
        head_only = self.method == b"HEAD"
        self.client.write(
            error_response(status, detail, head_only=head_only, extra=extra, connection=connection)
        )
        self.finish()

    def respond_local(self, status: int, fields: list[bytes], body: bytes, route: CompiledRoute) -> None:
        """Answer with a whole response made here (a cache hit, an aggregate's merged reply) on `route`.

        `fields` are the head's header fields as the upstream side keeps them (name, ": ", value, CRLF for
        each), without framing or Connection; the route's response transforms and this exchange's extra
        headers (RateLimit-*, CORS) are applied, and Content-Length is written here."""
        if self.done:
            return
        self.deadline = 0.0
        self.status = status
        self.response_started = True
        head = [status_line(status), *fields]
        keeping = self.keeping
        if keeping is not None and keeping.key:  # an aggregate's reply to a cache miss
            keeping.store_whole(status, head, body, self.client.engine.now())
        parts = response_parts(head, route.response_remove, route.response_set + self.response_extra)
        if status != 204 and status != 304:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        connection = connection_field(self)
        if connection:
            parts.append(connection)
        parts.append(b"\r\n")
        if self.method != b"HEAD" and status != 204 and status != 304:
            parts.append(body)
            self.bytes_out += len(body)
        self.client.write(b"".join(parts))
        self.finish()

    def _record(self, now: float) -> None:
        """Count the exchange's outcome for its backend (this attempt), its service and its route (the client's
        answer), and keep it in the tail of recent requests."""
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.bytes_in += self.bytes_in
            service = self.service
            assert service is not None  # (a backend is picked from its service)
            service.attempt_ended(backend, self.status, self.attempt_started, now, self.bytes_out)
        stats = self.route_stats
        if stats is not None:
            stats.observe(self.status, now - self.started, now)
        answered = self.service
        if answered is not None:
            answered.observe(self.status, now - self.started, now)
        if self.retrying:
            self.retrying = False
            self.service.retries_in_flight -= 1  # type: ignore[union-attr]
        entry = (
            now,
            self.client_addr or self.client.peer_host,
            self.method,
            self.url,
            self.status,
            backend,
            now - self.started,
            self.bytes_out,
            stats,
            self.consumer,
        )
        engine = self.client.engine
        engine.access_log.append(entry)
        log_queue = engine.log_queue
        if log_queue is not None:  # the access log file's (proxy/accesslog.py), written by the tick
            if len(log_queue) < engine.log_queue_limit:
                log_queue.append((entry, self))
            else:
                engine.access_log_dropped += 1

    def finish(self, now: float = 0.0) -> None:
        """The one end of every exchange (the module's docstring): counted, logged, its connection released,
        and the client's next request started (ClientConnection.exchange_finished)."""
        if self.done:
            return
        self.done = True
        task = self.task
        if task is not None:
            self.task = None
            if task is not asyncio.current_task():
                task.cancel()  # the client left (or the engine stops) while the answer was being made
        if self.body_pending:  # held for a backend that will not get it now
            self.body_pending = ()
            self.body_pending_size = 0
            self.client.resume_reading_for(PAUSE_WAITING)
        self.deadline = 0.0
        if not now:
            now = self.client.engine.now()
        self._record(now)
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.exchange = None
            upstream.close()
        if self.tunnel:
            return
        if self.request_done or self.req_framing == NO_BODY or self.close_after:
            self.client.exchange_finished(self, now)

    def client_lost(self) -> None:
        """The client went away: stop the exchange and close its upstream connection."""
        if self.done:
            return
        self.close_after = True
        if self.termination != "client-timeout":  # (body_timeout cut it: that says more)
            self.termination = "client-closed"
        if not self.response_started:
            self.status = 499  # nginx's "client closed request"
        self.finish()

    # -- what the gateway asks of it (gateway/pipeline.GatewayRequest, gateway/aggregate.AggregateRequest) ----
    def client_address(self) -> bytes:
        return self.client_addr or self.client.peer_host

    def scheme(self) -> bytes:
        return self.client.scheme

    def consumer_of_key(self, key: bytes) -> bytes | None:
        """The consumer an API key names; the key this connection used last (keep-alive) is not looked up again."""
        client = self.client
        known = client.known_key
        if known is not None and hmac.compare_digest(known[0], key):
            return known[1]
        consumer = client.engine.api_keys.consumer(key)
        if consumer is not None:
            client.known_key = (key, consumer)
        return consumer

    def compose_for(self, route: CompiledRoute, consumer: bytes) -> None:
        """The request for the backend, as `route` writes it (proxy/head.py)."""
        if route.transforms_request or self.strip_cookie:
            rewrite_for(self, route, consumer)
        else:
            compose_request(self, self.middle, self.has_request_id)

    def answer_aside(self, route: CompiledRoute) -> None:
        """Its route's aggregate answers it, as a task of the engine's loop (cancelled if the client leaves)."""
        assert route.aggregator is not None
        self.task = self.client.engine.loop.create_task(route.aggregator.answer(self))

    def forwarded_fields(self) -> bytes:
        return forwarded_fields(self)

    def new_request_id(self) -> bytes:
        return self.client.engine.request_ids.next()

    def now(self) -> float:
        return self.client.engine.now()

    async def fetch(
        self,
        backend: Backend,
        request: bytes,
        *,
        max_body: int,
        connect_timeout: float | None,
        reply_timeout: float | None,
        idle_timeout: float,
    ) -> Reply | None:
        """`request` to `backend` on the engine's pool of small-client connections (proxy/miniclient.py), its
        reply read whole; None when no connection could be made."""
        try:
            return await self.client.engine.call_pool.request(
                backend.host,
                backend.port,
                request,
                max_body=max_body,
                connect_timeout=connect_timeout,
                reply_timeout=reply_timeout,
                idle_timeout=idle_timeout,
            )
        except ConnectFailed:
            return None
