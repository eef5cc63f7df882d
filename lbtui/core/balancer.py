"""The balancer's state: services and backends, their clock, and the housekeeping tick.

The data plane reads it (pick a backend, count requests); only the Controller changes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lbtui.config import Config
from lbtui.core.model import (
    AdminState,
    Backend,
    ListenerView,
    Service,
    Snapshot,
    service_view,
)

# How long a removed backend may drain before it is dropped with requests still in flight.
REMOVE_DEADLINE = 60.0


class Balancer:
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.config = config
        self.started = clock()
        now = self.started
        self.services: dict[str, Service] = {s.name: Service(s, now) for s in config.services}
        self.backends: dict[str, Backend] = {b.name: b for s in self.services.values() for b in s.backends}
        self.listeners: list[ListenerView] = []
        self.connections = 0  # open client connections, kept by the data plane
        # Called with a backend that has just been dropped, so the data plane can close its pool.
        self.on_backend_removed: list[Callable[[Backend], None]] = []
        # Called with a backend whose admin state has just changed (the data plane closes idle connections).
        self.on_state_change: list[Callable[[Backend], None]] = []
        # Called with (backend, before, after) by the tick when drain-then-remove completes.
        self.on_tick_change: list[Callable[[Backend, str, str], None]] = []

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

    def snapshot(self) -> Snapshot:
        now = self.clock()
        return Snapshot(
            time=now,
            uptime=now - self.started,
            listeners=tuple(self.listeners),
            services=tuple(service_view(s, now) for s in self.services.values()),
            connections=self.connections,
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
