"""The balancer's state: services and backends, their clock, and the housekeeping tick.

The data plane reads it (pick a backend, count requests); only the Controller changes it.

The clock (`Balancer.clock`, time.perf_counter by default) is the one clock of every time the core and the
data plane keep: latencies, the stats windows' seconds, deadlines, drain and ejection times, the access
log's entries. It resolves well under a microsecond on every platform (time.monotonic does not on Windows
before Python 3.13; uvloop's loop.time() ticks in whole milliseconds), so a 300 us request is measured as
such. Event loop timers keep the loop's own clock; the two are never compared.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from lbtui.config import Config, RouteConfig
from lbtui.core.model import AdminState, Backend, RouteStats, Service
from lbtui.core.views import ListenerView, RouteView, Snapshot, service_view

# How long a removed backend may drain before it is dropped with requests still in flight.
REMOVE_DEADLINE = 60.0
# How many finished requests the balancer keeps for the dashboard's access log view.
ACCESS_TAIL = 1000


def route_view(route: RouteConfig) -> RouteView:
    m = route.match
    parts = [f"host {m.host}"] if m.host else []
    if m.path is not None:
        parts.append(f"path {m.path}")
    if m.path_prefix is not None:
        parts.append(f"prefix {m.path_prefix}")
    if m.path_regex is not None:
        parts.append(f"regex {m.path_regex}")
    if m.methods:
        parts.append(" ".join(m.methods))
    parts.extend(f"{name}: {value}" for name, value in m.headers)
    parts.extend(f"?{name}={value}" for name, value in m.query)
    if m.case_sensitive:
        parts.append("case-sensitive")
    if route.aggregate:
        target = "aggregate: " + ", ".join(part.service for part in route.aggregate)
    else:
        target = route.service or ""
    policies = []
    if route.strip_prefix:
        policies.append(f"strip {route.strip_prefix}")
    if route.request_headers.set or route.request_headers.remove:
        policies.append("request headers")
    if route.response_headers.set or route.response_headers.remove:
        policies.append("response headers")
    if route.auth is not None:
        policies.append(f"auth {route.auth.type}")
    if route.rate_limit is not None:
        policies.append(f"rate {route.rate_limit.rate:g}/{route.rate_limit.per:g}s")
    if route.cors is not None:
        policies.append("cors")
    if route.cache is not None:
        policies.append(f"cache {route.cache.ttl:g}s")
    if route.retries is not None:
        policies.append(f"retries {route.retries.attempts}")
    return RouteView(route.name, ", ".join(parts) or "everything", target, tuple(policies))


class Balancer:
    def __init__(self, config: Config, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.config = config
        self.started = clock()
        now = self.started
        self.services: dict[str, Service] = {s.name: Service(s, now) for s in config.services}
        self.backends: dict[str, Backend] = {b.name: b for s in self.services.values() for b in s.backends}
        self.listeners: list[ListenerView] = []
        self.routes = tuple(route_view(r) for r in config.routes)
        # Each route's live numbers (by name; the gateway's router counts into them), and the requests no route
        # took: "no route" (404) and "method" (405).
        self.route_stats = {r.name: RouteStats(now, r.name) for r in config.routes}
        self.unmatched: dict[str, int] = {"no route": 0, "method": 0}
        self.connections = 0  # open client connections, kept by the data plane
        # Called with a backend that has just been dropped, so the data plane can close its pool.
        self.on_backend_removed: list[Callable[[Backend], None]] = []
        # Called with a backend the Controller has just added (the data plane starts its health checks).
        self.on_backend_added: list[Callable[[Backend], None]] = []
        # Called with a backend whose admin state has just changed (the data plane closes idle connections).
        self.on_state_change: list[Callable[[Backend], None]] = []
        # Called with (backend, before, after) by the tick when drain-then-remove completes.
        self.on_tick_change: list[Callable[[Backend, str, str], None]] = []
        # The newest finished requests, appended by the data plane: (clock, client address, method, target,
        # status, Backend or None, seconds, bytes sent to the client[, RouteStats or None, consumer bytes]).
        # Read through the Controller.
        self.access_log: deque[tuple[Any, ...]] = deque(maxlen=ACCESS_TAIL)
        # The data plane's own counters for the snapshot's extra["counters"] (connections refused, header
        # timeouts, ...): set by the engine.
        self.counters: Callable[[], dict[str, int]] = dict
        # Called with the clock at the end of every tick (the Controller runs canary ramps from it).
        self.on_tick: list[Callable[[float], None]] = []

    def service_of(self, backend: Backend) -> Service:
        return self.services[backend.service]

    def drop_backend(self, backend: Backend) -> None:
        service = self.services.get(backend.service)
        if service is not None and backend in service.backends:
            service.backends.remove(backend)
            service.changed()
        self.backends.pop(backend.name, None)
        for callback in self.on_backend_removed:
            callback(backend)

    def tick(self) -> None:
        """Housekeeping: drop removed backends once drained (or past their deadline); drain-then-maint."""
        now = self.clock()
        for backend in list(self.backends.values()):
            if (
                backend.maint_when_drained
                and backend.in_flight == 0
                and backend.admin_state is AdminState.DRAIN
            ):
                self.set_admin_state(backend, AdminState.MAINT)
                for callback in self.on_tick_change:
                    callback(backend, "drain", "maint")
            deadline = backend.remove_deadline
            if deadline is not None and (backend.in_flight == 0 or now >= deadline):
                self.drop_backend(backend)
                for callback in self.on_tick_change:
                    callback(backend, "removing", "removed")
        for tick_callback in self.on_tick:
            tick_callback(now)

    def snapshot(self) -> Snapshot:
        now = self.clock()
        return Snapshot(
            time=now,
            uptime=now - self.started,
            listeners=tuple(self.listeners),
            services=tuple(service_view(s, now) for s in self.services.values()),
            connections=self.connections,
            routes=tuple(self.route_stats[r.name].view(r, now) for r in self.routes),
            extra={"unmatched": dict(self.unmatched), "counters": self.counters()},
        )

    def set_admin_state(self, backend: Backend, state: AdminState) -> None:
        if backend.admin_state is state:
            return
        backend.admin_state = state
        backend.maint_when_drained = False
        backend.drain_since = self.clock() if state is AdminState.DRAIN else None
        self.service_of(backend).changed()
        for callback in self.on_state_change:
            callback(backend)
