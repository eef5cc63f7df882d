"""Layer 4: `mode = "tcp"` listeners balance whole TCP connections over one service's backends.

Invariants:
- One TcpConnection per accepted client. It picks a backend with the service's algorithm (Service.pick, so
  drain, maint, down and ejected backends are skipped, and a split applies); ip_hash and consistent_hash hash
  the client's address. It connects within the service's `timeouts.connect`, then copies bytes both ways,
  untouched, until both directions are done. Until a backend is connected the client is not read (beyond
  one read, kept and sent first).
- A failed connect (refused, unreachable, timed out) is tried again on another backend: the client has sent
  nothing upstream yet, so that is always safe. A backend is tried at most once per connection, so there are
  at most as many attempts as the service has backends.
- No backend can take the connection: the client connection is closed at once, counted in the service's
  `unrouted` (as an http request answered 503 is).
- Backpressure: a write buffer past WRITE_HIGH on one side pauses reading on the other, so memory per
  connection stays bounded whatever is transferred.
- Half-close: EOF from one side becomes write_eof on the other; the connection ends when both sides have sent
  EOF, or when either side closes or resets. (asyncio's TLS transport has no half-close: on a TLS listener an
  EOF from either side ends the connection.)
- Idle: no byte either way for the service's `timeouts.idle` closes both sides. The engine's tick checks
  (Engine.tick): no timer per connection and no clock read per read, only a counter.
- drain and maint leave open connections alone (they end when their peers end them); new connections go to
  other backends. A removed backend's connections are closed when it is dropped (Balancer.drop_backend). At
  shutdown the listener stops accepting, open connections may finish within the grace period, and those
  still open at the deadline are aborted (Engine.shutdown).

What the per-backend counters mean for tcp (the dashboard shows them as it shows requests):
- in_flight: connections open to the backend, from the connect attempt on.
- requests: connections that ended, plus connect attempts that failed; the window's rps counts them when
  they end; latency is a connection's whole duration (connect to close), and so is what `ewma` weighs.
- bytes_in: client to backend; bytes_out: backend to client; both counted as the bytes pass, so a long
  connection shows progress before it ends.
- status, recorded once per connection (Service.attempt_ended, as for http attempts) by this convention:
  200  proxied: it ended by EOF or close from either side, by the client's reset, the idle timeout, or the
       operator (removal, shutdown deadline): the backend did its part;
  502  the backend reset the connection (counted as an error, like a gateway error in http);
  0    a connect attempt failed (also in connect_failures): an error on the backend tried.
- the service counts each client connection once (Service.observe), with the status the access log gets:
  a connect refused by one backend and taken by the next is that backend's failure, the service's success.
- the access log (the dashboard's requests view) gets one line per connection: method `TCP`, target the
  listener's name, the status above, or 503 when no backend could be connected (the service's `unrouted`),
  or 499 when the client left while its backend was being connected (on no backend's row).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lbtui.http import no_delay

if TYPE_CHECKING:
    from lbtui.config import ListenerConfig
    from lbtui.core.model import Backend, Service
    from lbtui.proxy.engine import Engine

WRITE_HIGH = 256 * 1024  # bytes in one side's write buffer before the other side stops being read

PAUSE_CONNECTING = 1  # no backend connected yet
PAUSE_UPSTREAM_FULL = 2  # the backend's write buffer is full

OK = 200
BACKEND_RESET = 502
CONNECT_FAILED = 0
CLIENT_LEFT = 499  # access log only
NO_BACKEND = 503  # access log only: no backend could be connected (the service's unrouted counts it)


class TcpUpstream(asyncio.Protocol):
    """The backend side of one proxied connection; everything it sees goes to its TcpConnection."""

    __slots__ = ("closed", "conn", "eof", "lost", "transport")

    def __init__(self, conn: TcpConnection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.closed = False  # closing or closed: write nothing more
        self.lost = False  # connection_lost came: the socket is gone
        self.eof = False  # the backend sent EOF

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        no_delay(transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH)  # type: ignore[attr-defined]
        self.conn.upstream_connected(self)

    def data_received(self, data: bytes) -> None:
        self.conn.from_upstream(data)

    def eof_received(self) -> bool | None:
        return self.conn.upstream_eof()

    def pause_writing(self) -> None:
        self.conn.pause_reading_for(PAUSE_UPSTREAM_FULL)

    def resume_writing(self) -> None:
        self.conn.resume_reading_for(PAUSE_UPSTREAM_FULL)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.lost = True
        self.conn.upstream_lost(self, exc)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()


class TcpConnection(asyncio.Protocol):
    """A client connection to a tcp listener, and the backend connection it is proxied to."""

    __slots__ = (
        "activity",
        "attempt_started",
        "backend",
        "bytes_in",
        "bytes_out",
        "client_eof",
        "client_open",
        "connected",
        "connecting",
        "engine",
        "finished",
        "half_close",
        "listener",
        "paused",
        "peer_host",
        "pending",
        "quiet_since",
        "seen_activity",
        "service",
        "started",
        "status",
        "transport",
        "tried",
        "upstream",
    )

    def __init__(self, engine: Engine, listener: ListenerConfig) -> None:
        self.engine = engine
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.service: Service | None = None
        self.backend: Backend | None = None  # the backend being connected to, or connected
        self.upstream: TcpUpstream | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.tried: tuple[Backend, ...] = ()
        self.pending: list[bytes] = []  # client bytes read before the backend was connected
        self.peer_host = b""
        self.paused = 0
        self.half_close = True  # whether the client's transport can write EOF (TLS cannot)
        self.client_open = False
        self.client_eof = False
        self.connected = False  # a backend connection was made (the status then means something)
        self.finished = False
        self.status = OK
        self.started = 0.0
        self.attempt_started = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        # Reads either way: the tick compares it with seen_activity to find idle connections.
        self.activity = 0
        self.seen_activity = -1
        self.quiet_since = 0.0

    # -- client side -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        engine = self.engine
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_host = str(peer[0]).encode()
        limits = engine.config.limits
        service = engine.balancer.services.get(self.listener.service or "")
        if engine.closing or service is None:
            transport.close()
            return
        if len(engine.connections) + len(engine.tcp_connections) >= limits.max_connections:
            engine.connections_refused += 1  # over [limits] max_connections: nothing to say in tcp, so close
            transport.close()
            return
        no_delay(transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH)  # type: ignore[attr-defined]
        self.half_close = transport.can_write_eof()  # type: ignore[attr-defined]
        self.client_open = True
        self.service = service
        self.paused = PAUSE_CONNECTING
        transport.pause_reading()  # type: ignore[attr-defined]
        self.started = self.quiet_since = engine.now()
        engine.tcp_opened(self)
        self.connect_next()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.activity += 1
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.closed:
            backend = self.backend
            if backend is not None:
                backend.bytes_in += len(data)
            upstream.transport.write(data)
        elif upstream is None:
            # Sent before the backend is connected: kept, and reading stops. (uvloop starts reading after
            # connection_made whatever it asked for; a TLS handover replays what came with the handshake.)
            self.pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.client_eof:
            return True
        self.client_eof = True
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.closed:
            if upstream.eof:
                self.close()
                return None
            upstream.transport.write_eof()
        if not self.half_close:
            return None  # the transport closes; connection_lost closes the backend side
        return True

    def pause_writing(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.eof:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        upstream = self.upstream
        if (
            upstream is not None
            and upstream.transport is not None
            and not upstream.eof
            and not upstream.closed
        ):
            upstream.transport.resume_reading()

    def pause_reading_for(self, reason: int) -> None:
        if not self.paused and not self.client_eof and self.client_open and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.client_eof and self.client_open and self.transport is not None:
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.client_open:
            return  # turned away in connection_made
        self.client_open = False
        if self.connecting is not None:
            self.connecting.cancel()
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            if exc is not None:
                upstream.abort()  # the client reset: so does the backend side
            else:
                upstream.close()  # what the client sent still reaches the backend
        self.finish()

    # -- choosing and connecting a backend -----------------------------------------------------------------
    def connect_next(self) -> None:
        service = self.service
        assert service is not None
        backend = service.pick(self.peer_host if service.hashing else None, self.tried)
        if backend is None:
            service.unrouted += 1
            self.close()
            return
        self.backend = backend
        backend.in_flight += 1
        self.attempt_started = self.engine.now()
        self.connecting = self.engine.loop.create_task(
            self._connect(backend, service.config.timeouts.connect)
        )

    async def _connect(self, backend: Backend, connect_timeout: float) -> None:
        try:
            async with asyncio.timeout(connect_timeout):
                await self.engine.loop.create_connection(
                    lambda: TcpUpstream(self), backend.host, backend.port
                )
        except asyncio.CancelledError:
            self.connecting = None  # the client went away (connection_lost cancels)
            self.finish()
            raise
        except Exception:  # refused, unreachable, timed out, a name that does not resolve
            self.connecting = None
            self.connect_failed(backend)
            return
        self.connecting = None
        if not self.client_open:
            upstream = self.upstream
            if upstream is not None:
                upstream.close()
            self.finish()

    def connect_failed(self, backend: Backend) -> None:
        now = self.engine.now()
        backend.connect_failed()  # counted, and for outlier detection
        service = self.service
        assert service is not None  # a backend was picked from it
        service.attempt_ended(backend, CONNECT_FAILED, self.attempt_started, now, 0)
        self.backend = None
        self.tried = (*self.tried, backend)
        if self.client_open:
            self.connect_next()
        else:
            self.finish()

    def upstream_connected(self, upstream: TcpUpstream) -> None:
        self.upstream = upstream
        self.connected = True
        if not self.client_open:
            upstream.close()
            return
        transport = upstream.transport
        assert transport is not None
        if self.pending:
            pending, self.pending = self.pending, []
            if self.backend is not None:
                self.backend.bytes_in += sum(len(data) for data in pending)
            transport.writelines(pending)
        if self.client_eof:
            transport.write_eof()
        self.resume_reading_for(PAUSE_CONNECTING)

    # -- backend side ----------------------------------------------------------------------------------
    def from_upstream(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.activity += 1
        backend = self.backend
        if backend is not None:
            backend.bytes_out += len(data)
        if self.client_open and self.transport is not None:
            self.transport.write(data)

    def upstream_eof(self) -> bool | None:
        upstream = self.upstream
        if upstream is None or upstream.eof:
            return True
        upstream.eof = True
        if self.client_eof or not self.half_close:
            self.close()  # both directions done (or the client cannot be half-closed): close, flushing
            return None
        if self.client_open and self.transport is not None:
            self.transport.write_eof()
        return True  # the client may still send: keep writing to the backend

    def upstream_lost(self, upstream: TcpUpstream, exc: Exception | None) -> None:
        if upstream is not self.upstream:
            return
        if exc is not None and self.client_open:
            self.status = BACKEND_RESET
        if self.client_open and self.transport is not None:
            self.close_client()
        self.finish()

    def close_client(self) -> None:
        """Close the client side, flushing what the backend sent (its connection_lost follows)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    # -- ending ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close both sides, sending what is buffered first."""
        self.close_client()
        upstream = self.upstream
        if upstream is not None:
            upstream.close()

    def abort(self) -> None:
        """Close both sides at once (shutdown deadline, backend removed, idle timeout)."""
        if self.transport is not None:
            self.transport.abort()
        upstream = self.upstream
        if upstream is not None:
            upstream.abort()

    def check_idle(self, now: float, idle: float) -> None:
        """Called by the engine's tick: abort when no byte went either way for `idle` seconds."""
        if self.activity != self.seen_activity:
            self.seen_activity = self.activity
            self.quiet_since = now
        elif now - self.quiet_since >= idle:
            self.abort()

    def finish(self) -> None:
        """Count the connection once both sockets are gone (and no connect is under way).

        Until then it stays in Engine.tcp_connections, where the idle check can still abort a side that
        never finishes closing (a peer that stopped reading what is left to send)."""
        if self.finished or self.client_open or self.connecting is not None:
            return
        upstream = self.upstream
        if upstream is not None and not upstream.lost:
            return
        self.finished = True
        engine = self.engine
        now = engine.now()
        backend = self.backend
        service = self.service
        if backend is not None:
            self.backend = None
            status = self.status if self.connected else CLIENT_LEFT
            assert service is not None  # a backend was picked from it
            # Counted for the backend only once connected (bytes were counted as they passed).
            service.attempt_ended(backend, status, self.started, now, 0, counted=self.connected)
        else:
            status = NO_BACKEND
        if service is not None:  # once per connection, whatever the connect attempts (as an http answer)
            service.observe(status, now - self.started, now)
        engine.access_log.append(
            (
                now,
                self.peer_host,
                b"TCP",
                self.listener.name.encode(),
                status,
                backend,
                now - self.started,
                self.bytes_out,
            )
        )
        engine.tcp_closed(self)
