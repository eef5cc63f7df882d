"""The engine: listeners, connections, pools and the housekeeping tick around one Balancer.

Graceful shutdown (SIGTERM) follows uvicorn and HAProxy: stop accepting, close idle client connections, let
in-flight exchanges finish (their replies carry `Connection: close`), then close what is left at the deadline.
A tcp connection (proxy/tcp.py) counts as in flight until it ends; TLS handshakes under way are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from lbtui.config import Config, ListenerConfig
from lbtui.core.balancer import Balancer
from lbtui.core.control import InProcessController
from lbtui.core.model import AdminState, Backend
from lbtui.core.views import ListenerView, listener_url
from lbtui.gateway.auth import ApiKeys
from lbtui.gateway.routing import Router
from lbtui.http import RequestIds, TrustedProxies
from lbtui.proxy.accesslog import QUEUE_LIMIT, AccessLog
from lbtui.proxy.connection import ClientConnection
from lbtui.proxy.health import HealthChecker
from lbtui.proxy.miniclient import KeepAlivePool
from lbtui.proxy.tcp import TcpConnection
from lbtui.proxy.tls import TLSAccept, TLSFileError, load_server_context
from lbtui.proxy.upstream import Pool

if TYPE_CHECKING:
    from collections.abc import Callable

    from lbtui.core.control import ReloadResult
    from lbtui.proxy.exchange import Exchange

log = logging.getLogger("lbtui")

TICK_SECONDS = 0.25
CALL_POOL_PER_BACKEND = 32  # idle connections kept per backend for aggregate parts


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def files_for(max_connections: int) -> int:
    """Open files a full house needs: each client connection and its upstream one, and some to spare."""
    return 2 * max_connections + 256


def raise_open_file_limit(max_connections: int) -> int:
    """Raise the soft open-file limit toward what [limits] max_connections needs (as HAProxy does at start),
    up to the hard limit; never lower it. Returns the soft limit now."""
    try:
        import resource
    except ImportError:  # not a Unix
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = files_for(max_connections)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


class Engine:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.balancer = Balancer(config)
        self.controller = InProcessController(self.balancer)
        self.router = Router(
            config.routes, self.balancer.services, self.balancer.route_stats, self.balancer.unmatched
        )
        self.request_ids = RequestIds()
        # Keep-alive connections for the requests the gateway makes itself (aggregate routes' parts).
        self.call_pool = KeepAlivePool(per_host=CALL_POOL_PER_BACKEND)
        self.api_keys = ApiKeys(config.consumers)
        self.trusted_proxies = {
            listener.name: TrustedProxies(listener.trusted_proxies)
            for listener in config.listeners
            if listener.trusted_proxies
        }
        self.connections: set[ClientConnection] = set()
        self.tcp_connections: set[TcpConnection] = set()  # open on tcp listeners (both sides not yet gone)
        self.handshakes: set[asyncio.Task[None]] = set()  # TLS handshakes under way (proxy/tls.py)
        self.servers: list[asyncio.Server] = []
        # By listener name (a reload keeps or stops them).
        self.listener_servers: dict[str, asyncio.Server] = {}
        self.listener_configs: dict[str, ListenerConfig] = {}  # each running listener's config, by name
        # Listeners being started (see start_listener).
        self._starting: dict[str, tuple[asyncio.Task[asyncio.Server], socket.socket]] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.closing = False
        self.open_file_limit = -1  # the soft RLIMIT_NOFILE after start (-1: not known)
        self.connections_refused = 0  # turned away over [limits] max_connections
        self.header_timeouts = 0  # closed with a 408: the request head did not arrive in time
        self.tls_handshake_failures = 0  # closed before any request: the TLS handshake failed or timed out
        # Request header fields named with `_` (listener headers_with_underscores): dropped, or their request refused.
        self.underscore_headers_dropped = 0
        self.underscore_requests_refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._next_sweep = 0.0  # when the rate-limit buckets are next swept
        # Responses under way at the last tick: bytes moved and since when (see _watch_stall).
        self._progress: dict[Exchange, tuple[int, float]] = {}
        # The clock of every time the data plane keeps (latencies, deadlines the tick checks, idle times): the
        # balancer's (time.perf_counter), never the loop's, whose ticks uvloop counts in whole milliseconds.
        # Only timers (call_at, call_later, asyncio.sleep, asyncio.timeout) use loop.time(); no value of one
        # clock is ever compared with the other.
        self.now: Callable[[], float] = self.balancer.clock
        self.tick_interval = self.tick_interval_for(config)
        self.access_log = self.balancer.access_log  # the data plane appends one tuple per finished request
        # [access_log]: the file's queue (None: no file), which the request path appends to and the tick drains.
        self.access_file = AccessLog(config.access_log) if config.access_log.path is not None else None
        self.log_queue = self.access_file.queue if self.access_file is not None else None
        self.log_queue_limit = QUEUE_LIMIT
        self.access_log_dropped = 0  # lines the full queue turned away
        self._access_errors_told = 0
        self.balancer.counters = self.counters
        self.balancer.on_backend_removed.append(self._backend_removed)
        self.balancer.on_state_change.append(self._state_changed)
        self.health = HealthChecker(self.balancer, self.controller)

    @staticmethod
    def tick_interval_for(config: Config) -> float:
        # Response timeouts (the queue's, and the idle timeouts of tcp listeners' services) are checked by the
        # tick, with no timer per request or connection: tick often enough for the shortest.
        tcp_services = {listener.service for listener in config.listeners if listener.mode == "tcp"}
        shortest = min(
            [s.timeouts.response for s in config.services]
            + [s.timeouts.queue for s in config.services if s.max_connections is not None]
            + [s.timeouts.idle for s in config.services if s.name in tcp_services]
            + [r.timeout for r in config.routes if r.timeout],
            default=TICK_SECONDS * 4,
        )
        return max(0.01, min(TICK_SECONDS, shortest / 4))

    def reload(self, config: Config) -> ReloadResult:
        """Apply a new, validated config to the running engine (proxy/reload.py says what changes how).
        ReloadRefused, with nothing changed, when a new listener cannot be opened. Call on the engine's loop."""
        from lbtui.proxy.reload import apply

        result = apply(self, config)
        raise_open_file_limit(config.limits.max_connections)
        return result

    def counters(self) -> dict[str, int]:
        """The data plane's counters for snapshots (Snapshot.extra["counters"]; admin/metrics.py)."""
        return {
            "connections_refused": self.connections_refused,
            "header_timeouts": self.header_timeouts,
            "tls_handshake_failures": self.tls_handshake_failures,
            "access_log_dropped": self.access_log_dropped,
            "underscore_headers_dropped": self.underscore_headers_dropped,
            "underscore_requests_refused": self.underscore_requests_refused,
        }

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the engine is not started"
        return self._loop

    def make_pool(self, backend: Backend) -> Pool:
        pool = Pool(backend, self)
        backend.pool = pool
        return pool

    def _state_changed(self, backend: Backend) -> None:
        # drain and maint: keep-alive connections close after their current request; idle ones at once.
        if backend.admin_state is not AdminState.READY:
            if backend.pool is not None:
                backend.pool.close_all()
            self.call_pool.close_to(backend.host, backend.port)

    def _backend_removed(self, backend: Backend) -> None:
        if backend.pool is not None:
            backend.pool.close_all()
        self.call_pool.close_to(backend.host, backend.port)
        for conn in [c for c in self.tcp_connections if c.backend is backend]:
            conn.abort()  # a removed backend is gone: its tcp connections too (it drained first)

    # -- start and stop -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self.open_file_limit = raise_open_file_limit(self.config.limits.max_connections)
        self._loop = asyncio.get_running_loop()
        for backend in self.balancer.backends.values():
            self.make_pool(backend)
        for service in self.balancer.services.values():
            service.settle()  # what a state file restored is the starting set: no backend of it is probed
        try:
            for listener in self.config.listeners:
                await self._listen(listener)
        except BaseException:
            self.close_servers()
            raise
        self._ticker = self.loop.create_task(self.run_ticks())
        self.health.start()

    async def _listen(self, listener: ListenerConfig) -> None:
        server = await self.loop.create_server(
            self.protocol_factory(listener),
            listener.host,
            listener.port,
            reuse_address=True,
            backlog=2048,
        )
        self.servers.append(server)
        self._listening(listener, server.sockets[0], server)

    def _listening(self, listener: ListenerConfig, sock: Any, server: asyncio.Server | None) -> None:
        if server is not None:
            self.listener_servers[listener.name] = server
        self.listener_configs[listener.name] = listener
        host, port = sock.getsockname()[:2]
        self.addresses[listener.name] = (host, port)
        self.balancer.listeners.append(
            ListenerView(listener.name, listener.mode, format_address(host, port), listener.tls is not None)
        )

    def start_listener(
        self, listener: ListenerConfig, sock: socket.socket, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        """Serve `listener` on `sock`, bound and listening already (a reload binds before it changes anything):
        connections wait in the backlog until the server, made on the loop's next turn, accepts them."""
        task = self.loop.create_task(self.loop.create_server(factory, sock=sock, backlog=2048))
        self._starting[listener.name] = (task, sock)

        def started(done: asyncio.Task[asyncio.Server]) -> None:
            if self._starting.get(listener.name, (None,))[0] is done:
                del self._starting[listener.name]
            if done.cancelled() or done.exception() is not None:
                sock.close()
                return
            server = done.result()
            if self.closing or self.listener_configs.get(listener.name) is not listener:
                server.close()  # stopped (or shut down) before it started
                return
            self.servers.append(server)
            self.listener_servers[listener.name] = server

        task.add_done_callback(started)
        self._listening(listener, sock, None)

    def stop_listener(self, name: str) -> None:
        """Stop accepting on listener `name` (if it runs); its idle connections close, busy ones after their
        current exchange; tcp connections run until they end."""
        from lbtui.proxy.reload import retire

        server = self.listener_servers.pop(name, None)
        if server is not None:
            server.close()
            if server in self.servers:
                self.servers.remove(server)
        starting = self._starting.pop(name, None)
        if starting is not None:
            starting[0].cancel()
            starting[1].close()
        self.listener_configs.pop(name, None)
        self.addresses.pop(name, None)
        self.balancer.listeners = [view for view in self.balancer.listeners if view.name != name]
        for conn in [c for c in self.connections if c.listener.name == name]:
            retire(conn)

    def protocol_factory(self, listener: ListenerConfig) -> Callable[[], asyncio.Protocol]:
        """What makes the protocol of each accepted connection. OSError when a TLS file cannot be loaded."""
        make_protocol: Callable[[], asyncio.Protocol]
        if listener.mode == "tcp":
            make_protocol = lambda: TcpConnection(self, listener)  # noqa: E731
        else:
            make_protocol = lambda: ClientConnection(self, listener)  # noqa: E731
        if listener.tls is not None:
            try:
                context = load_server_context(
                    listener.tls.cert, listener.tls.key, alpn=("http/1.1",) if listener.mode == "http" else ()
                )
            except TLSFileError as error:  # the files changed since the config was checked
                raise OSError(f"listener {listener.name!r}: {error}") from None
            timeout = self.config.limits.header_timeout
            plain = make_protocol
            make_protocol = lambda: TLSAccept(self, context, plain, timeout)  # noqa: E731
        return make_protocol

    def address(self, listener: str | None = None) -> tuple[str, int]:
        if listener is None:
            return next(iter(self.addresses.values()))
        return self.addresses[listener]

    def url(self, listener: str | None = None) -> str:
        host, port = self.address(listener)
        config = next((c for c in self.config.listeners if c.name == listener), self.config.listeners[0])
        return listener_url(config.mode, config.tls is not None, format_address(host, port))

    def close_servers(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []
        self.listener_servers = {}
        for task, sock in self._starting.values():
            task.cancel()
            sock.close()
        self._starting = {}

    async def run_ticks(self) -> None:
        """Housekeeping until cancelled: drained removals, idle connections, timeouts."""
        while True:
            await asyncio.sleep(self.tick_interval)
            self.tick()

    def tick(self) -> None:
        self.balancer.tick()
        now = self.now()
        if self.access_file is not None:
            self._write_access_log(now)
        if now >= self._next_sweep:
            self._next_sweep = now + 10.0
            self.router.sweep(now)
        for queued in self.balancer.services.values():
            if queued.queue:
                queued.expire_queue(now)
                queued.serve_queue()  # a backend may have room now that none freed (enabled, up again)
        progress: dict[Exchange, tuple[int, float]] = {}
        for backend in self.balancer.backends.values():
            pool = backend.pool
            if pool is None:
                continue
            for conn in list(pool.active):
                exchange = conn.exchange
                if exchange is None:
                    continue
                if exchange.deadline:
                    if now >= exchange.deadline:
                        exchange.expire()
                elif exchange.response_started and not exchange.done:
                    self._watch_stall(exchange, now, progress)
            if pool.idle:
                service = self.balancer.services.get(backend.service)
                idle = service.config.timeouts.idle if service is not None else 60.0
                pool.close_idle(now - idle)
        self._progress = progress
        limits = self.config.limits
        idle_deadline = now - limits.client_idle_timeout
        header_deadline = now - limits.header_timeout
        for conn in list(self.connections):
            if conn.tunnel_to is not None or conn.closed:
                continue
            if conn.current is not None:
                current = conn.current
                stalled = not current.request_done and conn.parsing is current and not conn.paused
                if stalled and conn.last_active < idle_deadline:
                    conn.body_timeout()  # its request body stopped arriving: [limits] client_idle_timeout
                continue
            if conn.head_started and conn.head_started < header_deadline and not conn.pending:
                conn.header_timeout()  # slowloris: the head did not arrive whole in time (408)
            elif conn.parsing is None and not conn.head_started and conn.last_active < idle_deadline:
                conn.close()  # idle between requests: closed quietly, as HAProxy and nginx do
        for tcp in list(self.tcp_connections):
            service = tcp.service
            tcp.check_idle(
                now, service.config.timeouts.idle if service is not None else limits.client_idle_timeout
            )

    def _write_access_log(self, now: float) -> None:
        access_file = self.access_file
        assert access_file is not None
        access_file.tick(time.time() - now)
        # Failed writes (in the writer thread): told once each.
        if access_file.errors > self._access_errors_told:
            log.warning("access log %s: %s", access_file.path, access_file.last_error)
            self._access_errors_told = access_file.errors

    def _watch_stall(
        self, exchange: Exchange, now: float, progress: dict[Exchange, tuple[int, float]]
    ) -> None:
        """A response whose head came but whose body stops moving (no byte either way) for the service's response
        timeout is cut, as nginx's proxy_read_timeout and HAProxy's timeout server do: a stalled backend does
        not hold a client forever. Waiting on a slow client does not count."""
        moved = exchange.bytes_in + exchange.bytes_out
        seen = self._progress.get(exchange)
        if seen is None or seen[0] != moved or exchange.client.write_paused:
            progress[exchange] = (moved, now)
        elif exchange.service is not None and now - seen[1] >= (
            exchange.response_timeout or exchange.service.response_timeout
        ):
            exchange.expire()  # the client sees the response cut (reset), never passed off as whole
        else:
            progress[exchange] = seen

    def connection_opened(self, conn: ClientConnection) -> None:
        self.connections.add(conn)
        self.balancer.connections = len(self.connections) + len(self.tcp_connections)
        if self.closing:
            conn.close()

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        self.balancer.connections = len(self.connections) + len(self.tcp_connections)
        self._wake_idle_waiters()

    def tcp_opened(self, conn: TcpConnection) -> None:
        self.tcp_connections.add(conn)
        self.balancer.connections = len(self.connections) + len(self.tcp_connections)

    def tcp_closed(self, conn: TcpConnection) -> None:
        self.tcp_connections.discard(conn)
        self.balancer.connections = len(self.connections) + len(self.tcp_connections)
        self._wake_idle_waiters()

    def connection_idle(self, conn: ClientConnection) -> None:
        if self.closing:
            conn.close()
            self._wake_idle_waiters()

    def _wake_idle_waiters(self) -> None:
        if self.closing and not self.tcp_connections and not any(not c.idle for c in self.connections):
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.balancer.backends.values())

    async def shutdown(self, grace: float = 10.0, on_progress: Callable[[str], None] | None = None) -> bool:
        """Stop accepting, finish in-flight exchanges, close idle connections. True if all finished in time."""
        self.closing = True
        self.close_servers()
        for handshake in list(self.handshakes):
            handshake.cancel()
        await self.health.stop()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        busy = [c for c in self.connections if not c.idle]
        finished = True
        if busy or self.tcp_connections:
            if on_progress is not None:
                if busy:
                    on_progress(
                        f"waiting for {len(busy)} connection(s) with requests in flight (up to {grace:g}s)"
                    )
                if self.tcp_connections:
                    on_progress(
                        f"waiting for {len(self.tcp_connections)} tcp connection(s) to end (up to {grace:g}s)"
                    )
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._idle_waiters.append(waiter)
            self._wake_idle_waiters()
            try:
                await asyncio.wait_for(waiter, grace)
            except TimeoutError:
                finished = False
        for conn in list(self.connections):
            if finished and not conn.idle:
                continue
            conn.abort() if not conn.idle else conn.close()
        for tcp in list(self.tcp_connections):
            tcp.abort()  # still open at the deadline
        for backend in self.balancer.backends.values():
            if backend.pool is not None:
                backend.pool.close_all()
                backend.pool.close_active()
        self.call_pool.close()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        # Let the transports run their close callbacks.
        await asyncio.sleep(0)
        if self.access_file is not None:  # the last lines, written before shutdown returns
            offset = time.time() - self.now()
            await asyncio.to_thread(self.access_file.close, offset)
        return finished
