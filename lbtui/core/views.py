"""The immutable views a UI reads: one Snapshot of every service, backend, route and listener, built from the
live model (core/model.py) by the balancer's tick and on demand (Balancer.snapshot).

Invariants:
- Views are frozen, slotted dataclasses of plain values and tuples: they cross threads (the dashboard reads
  them on its own loop) and are compared and serialised (admin/schema.py) without touching the engine.
- A snapshot's size grows with backends, not with traffic: latency comes as histogram counts and window
  summaries, never as lists of requests (RequestView: the recent requests the controller keeps, bounded).
- This module reads the model, never changes it, and imports it only for types (model.py imports the views it
  stores: CheckView, RouteView).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lbtui.core.stats import WindowView

if TYPE_CHECKING:
    from lbtui.core.model import Backend, Service


@dataclass(frozen=True, slots=True)
class CheckView:
    """One active health check: when it ran (wall clock), whether it passed, and what it saw."""

    time: float  # time.time() when the check finished
    ok: bool
    detail: str  # "200 in 3.1 ms", "status 503", "connect refused", "timeout after 1s"
    duration_ms: float


@dataclass(frozen=True, slots=True)
class BackendView:
    name: str
    service: str
    group: str
    address: str
    weight: int
    admin_state: str
    health: str
    health_count: int
    in_flight: int
    requests: int
    status_classes: tuple[int, int, int, int, int, int]  # failures with no status, 1xx, 2xx, 3xx, 4xx, 5xx
    bytes_in: int
    bytes_out: int
    connect_failures: int
    ewma_ms: float
    drain_seconds: float | None  # time since drain began
    removing: bool
    window: WindowView
    health_of: int = 0  # the rise or fall that health_count counts toward; 0 when not going up or down
    checks: tuple[CheckView, ...] = ()  # recent active checks, newest last
    checked: bool = False  # whether the service has active health checks
    ejected_left: float | None = None  # seconds until an outlier ejection ends
    slow_share: float | None = None  # the share of its traffic it takes while in slow start (0-1)
    ejections_total: int = 0  # times outlier detection ejected it since start
    aborted: int = 0  # responses cut after their head reached the client (its connection was reset)
    # Latency bucket counts since start (core.stats: BUCKETS long, bucket_bounds); () in views made without one.
    latency_counts: tuple[int, ...] = ()
    sticky_requests: int = 0  # requests it took because their sticky cookie named it, since start
    sticky_cookies: int = 0  # sticky cookies set naming it (sessions that began or moved here), since start
    # An engine that gives only an average latency (HAProxy's `rtime`, over its last 1024 requests) puts it here
    # and leaves the window's percentiles NaN: an average is never shown as a percentile. None: not that engine.
    latency_avg_ms: float | None = None
    # A fleet's row (lbtui/fleet.py), merged across `instances` members (0: not a fleet): on `agreeing` of them
    # its state and weight are the row's (the most common); `mixed` names what differs among them ("state",
    # "weight", "health"); `diverged` says why the fleet could not put them back in step (a rollback that
    # failed), "" while they are.
    instances: int = 0
    agreeing: int = 0
    mixed: tuple[str, ...] = ()
    diverged: str = ""
    # A drain that is over: draining, with nothing in flight (lbtui's engine counts exactly: at once; an engine
    # read by polls, HAProxy, when scur and qcur have stayed 0 on several polls in a row).
    drained: bool = False

    @property
    def health_label(self) -> str:
        """`up`, `down`, `going_down 1/3` while on the way, `ejected 25s`, `up slow 40%`."""
        if self.health_of:
            return f"{self.health} {self.health_count}/{self.health_of}"
        if self.ejected_left is not None:
            return f"{self.health} {math.ceil(self.ejected_left)}s"
        if self.slow_share is not None:
            return f"{self.health} slow {int(self.slow_share * 100)}%"
        return self.health

    @property
    def rps(self) -> float:
        return self.window.rps

    @property
    def p50_ms(self) -> float:
        return self.window.p50_ms

    @property
    def p99_ms(self) -> float:
        return self.window.p99_ms


@dataclass(frozen=True, slots=True)
class RequestView:
    """One finished request, for the access log view."""

    time: float  # wall clock
    client: str
    method: str
    target: str
    status: int  # 0: failed with no status
    backend: str  # "" when no backend took it (no route, none available)
    service: str
    duration_ms: float
    bytes_out: int
    route: str = ""  # the route that took it ("" without routes, or when none did)
    consumer: str = ""  # who auth said it was ("" without auth)


@dataclass(frozen=True, slots=True)
class RampView:
    """A canary ramp: where it is, how long the current step still holds, and how it ended."""

    stable: str
    canary: str
    steps: tuple[int, ...]
    step: int  # index into steps of the share in force
    percent: int  # the canary's share now
    state: str  # "running", "done", "rolled back", "aborted"
    hold_left: float  # seconds until the next step may start (running only)
    waiting_for: int  # canary requests still needed before this step can be judged
    reason: str  # why it rolled back or was aborted; "" otherwise


@dataclass(frozen=True, slots=True)
class ServiceView:
    name: str
    algorithm: str
    split: tuple[tuple[str, int], ...] | None
    groups: tuple[str, ...]
    backup_group: str | None
    backends: tuple[BackendView, ...]
    unrouted: int
    # The answers its clients got (once each, retries or not), as its status_classes; its backends' windows
    # count attempts.
    window: WindowView
    ramp: RampView | None = None
    panic: bool = False  # too few healthy backends: every ready one takes traffic (panic_threshold)
    retries: int = 0  # requests sent again to another backend
    retries_refused: int = 0  # retries the retry budget did not allow
    queued: int = 0  # requests that waited for a backend under max_connections
    queue_length: int = 0  # waiting now
    queue_full: int = 0  # answered 503 at once: the queue was full
    sticky: str | None = None  # the sticky cookie's name (None: no sticky sessions)
    sticky_moved: int = 0  # sticky requests whose backend could not take them: picked anew (cookie set again)
    sticky_unknown: int = 0  # sticky cookies that named no backend of the service (forged, stale, removed)
    # The answers its clients got since start, by class as BackendView's: one per request, however many
    # attempts it took (the backends' status_classes count attempts).
    status_classes: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)
    latency_counts: tuple[int, ...] = ()  # of those answers, since start, as BackendView's

    @property
    def requests(self) -> int:
        """Requests the service answered since start (each once; `unrouted` among them)."""
        return sum(self.status_classes)

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.backends)


@dataclass(frozen=True, slots=True)
class RouteView:
    name: str
    match: str  # the match in words: "host api.local, prefix /api, GET POST"
    target: str  # the service, or "aggregate: users, orders"
    policies: tuple[str, ...]  # "auth api_key", "rate 10/1s", ...
    window: WindowView | None = None  # the route's own requests over the last seconds (rejections included)
    status_classes: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)  # as BackendView's, since start
    rejected: tuple[tuple[str, int], ...] = ()  # answered by the gateway itself, by reason: ("auth", 3), ...
    cache: tuple[int, int] = (0, 0)  # the route's cache: (hits, misses) since start
    latency_counts: tuple[int, ...] = ()  # latency bucket counts since start, as BackendView's


def listener_url(mode: str, tls: bool, address: str) -> str:
    """`http://`, `https://` or `tcp://` and the address: how a listener is reached."""
    scheme = "tcp" if mode == "tcp" else "https" if tls else "http"
    return f"{scheme}://{address}"


@dataclass(frozen=True, slots=True)
class ListenerView:
    name: str
    mode: str
    address: str
    tls: bool = False

    @property
    def url(self) -> str:
        return listener_url(self.mode, self.tls, self.address)


@dataclass(frozen=True, slots=True)
class Snapshot:
    time: float  # monotonic
    uptime: float
    listeners: tuple[ListenerView, ...]
    services: tuple[ServiceView, ...]
    connections: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    routes: tuple[RouteView, ...] = ()

    def backend(self, name: str) -> BackendView:
        for s in self.services:
            for b in s.backends:
                if b.name == name:
                    return b
        raise KeyError(name)

    def service(self, name: str) -> ServiceView:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)


def backend_view(b: Backend, now: float, checked: bool = False) -> BackendView:
    sc = b.status_classes
    return BackendView(
        name=b.name,
        service=b.service,
        group=b.group,
        address=b.address,
        weight=b.weight,
        admin_state=b.admin_state.value,
        health=b.health.value,
        health_count=b.health_count,
        in_flight=b.in_flight,
        requests=b.requests,
        status_classes=(sc[0], sc[1], sc[2], sc[3], sc[4], sc[5]),
        bytes_in=b.bytes_in,
        bytes_out=b.bytes_out,
        connect_failures=b.connect_failures,
        ewma_ms=b.ewma_cost(now) * 1000.0,
        drain_seconds=(now - b.drain_since) if b.drain_since is not None else None,
        drained=b.drain_since is not None and b.in_flight == 0,
        removing=b.remove_deadline is not None,
        window=b.window.view(now),
        health_of=b.health_of,
        checks=b.checks,
        checked=checked,
        ejected_left=max(0.0, b.ejected_until - now) if b.ejected_until else None,
        slow_share=b.slow_share if b.slow_since else None,
        ejections_total=b.ejections_total,
        aborted=b.aborted,
        latency_counts=b.window.totals()[0],
        sticky_requests=b.sticky_requests,
        sticky_cookies=b.sticky_cookies,
    )


def service_view(s: Service, now: float) -> ServiceView:
    checked = s.config.health is not None
    backends = tuple(backend_view(b, now, checked) for b in s.backends)
    sc = s.status_classes
    return ServiceView(
        name=s.name,
        algorithm=s.algorithm_name,
        split=tuple(s.split.items()) if s.split else None,
        groups=tuple(s.groups),
        backup_group=s.backup_group,
        backends=backends,
        unrouted=s.unrouted,
        window=s.window.view(now),
        ramp=s.ramp.view(now) if s.ramp is not None else None,
        panic=s.panic,
        retries=s.retries,
        retries_refused=s.retries_refused,
        queued=s.queued,
        queue_length=len(s.queue) if s.queue else 0,
        queue_full=s.queue_full,
        sticky=s.config.sticky.cookie if s.config.sticky is not None else None,
        sticky_moved=s.sticky_moved,
        sticky_unknown=s.sticky_unknown,
        status_classes=(sc[0], sc[1], sc[2], sc[3], sc[4], sc[5]),
        latency_counts=s.window.totals()[0],
    )
