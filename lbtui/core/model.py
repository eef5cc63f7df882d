"""Backends, services and their states: the live model the data plane counts on (core/views.py: what a UI reads).

Invariants:
- A backend takes new traffic only when its admin state is `ready` and its health is `up` or `going_down`
  (a check is failing but `fall` is not reached yet, as in HAProxy).
- `drain`: no new traffic; in-flight requests finish; upstream keep-alive connections close after their
  current request. `maint`: no traffic at all; in-flight requests still finish.
- Every change of eligibility or weight bumps the service's `version` (Service.changed, which also works out
  at once who is eligible now), which is how the algorithms know to rebuild what they cache. Only the
  Controller changes states (see control.py); the data plane only counts.
- A backend that becomes eligible while the service runs (added, maint or drain -> ready, down -> up, an
  ejection over, a weight from 0) is probed: the next request its group picks a backend for goes to it (a
  request a sticky cookie binds goes to its own backend; a retry the budget refuses picks none), whatever
  the algorithm, weights, slow start or load (hashing algorithms excepted: they send it the keys that map to
  it, at once), and its latency estimate starts unmeasured (Finagle's Peak-EWMA: an endpoint with no
  sample costs nothing while idle, so it is tried as soon as it is drawn). A seeded estimate that has to
  decay first (tower's, in Linkerd: a default RTT) or the one it had before it left kept it out for tens
  of seconds next to a faster peer; a weighted draw left its first request to chance.
- A snapshot is built from counters and windows; its cost grows with backends, not with traffic.
- Sticky sessions (`sticky`): a cookie's value is an HMAC of the service, the backend's name and address,
  under the service's `secret_env` key or else a random key of this process; it names one backend and reveals
  nothing of it. The backend a cookie names takes the request, before any algorithm, while it is `ready` or
  `drain` (what a drain is for), healthy (or `ready` in panic), not being removed, and its group has a share of
  the split now (see Service.keeps); otherwise the request is picked as any other.
- Two ways of counting, as HAProxy's server and backend rows: a backend counts every attempt sent to it
  (Backend.observe: a connect failure that was retried elsewhere is a failure of that backend), with the
  latency of that attempt alone (not the queue, not other backends' attempts before it); a service,
  like a route, counts every answer its clients got, once (Service.observe: a request that failed on one
  backend and got a 200 from the next is one 2xx). The service's requests, status classes, window, 5xx %
  and latency are the clients'; its backends' add up to its attempts.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import os
import random
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from lbtui.config import BackendConfig, OutlierConfig, ServiceConfig, StickyConfig
from lbtui.core.algorithms import DEFAULT_EWMA_TAU as EWMA_TAU
from lbtui.core.algorithms import Algorithm, ewma_decay, make_algorithm
from lbtui.core.stats import SlidingWindow
from lbtui.core.views import CheckView, RouteView


class Queued(Protocol):
    """A request waiting in its service's queue for a backend under max_connections (the proxy's exchange)."""

    queue_deadline: float  # when it gives up waiting (timeouts.queue); 0.0 once it left the queue

    @property
    def done(self) -> bool: ...  # answered (or its client left) while it waited

    @property
    def bound(self) -> Backend | None: ...  # the backend its sticky cookie binds it to, while it may take it

    def attempt(self) -> None: ...  # pick a backend and send it (or wait again at the queue's head)

    def queue_expired(self) -> None: ...  # waited too long (or its service went): answer 503


class AdminState(enum.StrEnum):
    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


class Health(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    GOING_UP = "going_up"
    GOING_DOWN = "going_down"
    EJECTED = "ejected"


SERVING_HEALTH: Final = frozenset({Health.UP, Health.GOING_DOWN})
_exp = math.exp
HASHING: Final = frozenset({"ip_hash", "consistent_hash"})

# The key of sticky cookie values for services without `secret_env`: sessions last as long as the process
# (reloads keep them; a restart moves each client once).
PROCESS_STICKY_KEY: Final = os.urandom(32)
STICKY_VALUE_CHARS: Final = 24  # hex digits of the HMAC kept: 96 bits


def sticky_value(key: bytes, service: str, backend: str, address: str) -> bytes:
    """What a sticky cookie says to send a client to `backend`: opaque, and not made without the key."""
    message = f"{service}\0{backend}\0{address}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:STICKY_VALUE_CHARS].encode()


def sticky_key(secret_env: str | None) -> bytes:
    """The key of a service's sticky cookie values: its `secret_env` variable's, else this process's."""
    secret = os.environ.get(secret_env) if secret_env else None
    return secret.encode() if secret else PROCESS_STICKY_KEY


class Backend:
    """One upstream server: what the operator set, what checks saw, and live counters."""

    __slots__ = (
        "_ewma",
        "_ewma_time",
        "aborted",
        "admin_state",
        "bytes_in",
        "bytes_out",
        "checks",
        "connect_failures",
        "drain_since",
        "ejected_until",
        "ejection_ended",
        "ejections",
        "ejections_total",
        "fails_5xx",
        "fails_connect",
        "fails_gateway",
        "group",
        "health",
        "health_count",
        "health_of",
        "host",
        "in_flight",
        "maint_when_drained",
        "name",
        "on_outlier",
        "outlier",
        "pool",
        "port",
        "probe",
        "remove_deadline",
        "requests",
        "service",
        "slow_share",
        "slow_since",
        "status_classes",
        "sticky_cookies",
        "sticky_requests",
        "weight",
        "window",
    )

    def __init__(self, config: BackendConfig, service: str, now: float) -> None:
        self.name = config.name
        self.service = service
        self.group = config.group
        self.host = config.host
        self.port = config.port
        self.weight = config.weight
        self.admin_state = AdminState(config.state)
        self.health = Health.UP
        self.health_count = 0  # k of `going_up k/rise` or `going_down k/fall`
        self.health_of = 0  # rise or fall while going up or down, else 0
        self.checks: tuple[CheckView, ...] = ()  # recent active checks, newest last (lbtui.core.health)
        self.in_flight = 0
        self.requests = 0
        self.status_classes = [0, 0, 0, 0, 0, 0]  # index = status // 100; [0] counts failures with no status
        self.bytes_in = 0
        self.bytes_out = 0
        self.connect_failures = 0
        self.aborted = 0  # responses cut after their head was forwarded (the client's connection was reset)
        self.window = SlidingWindow(now=now)
        # Peak-EWMA of latency (seconds); 0.0: no sample yet, which the ewma algorithm treats as free while idle
        # and as one probe at a time otherwise (algorithms.PeakEwma): a new backend is neither shunned nor flooded.
        self._ewma = 0.0
        self._ewma_time = now
        self.probe = False  # eligible lately and no request since: its pool's next pick is it (Service.pick)
        self.drain_since: float | None = now if self.admin_state is AdminState.DRAIN else None
        self.remove_deadline: float | None = None  # set while being removed (draining first)
        self.maint_when_drained = False  # "drain then maint": maint on its own once in-flight is 0
        self.pool: Any = None  # the data plane's connection pool for this backend (opaque to the core)
        # Passive outlier detection (lbtui.core.health.Outliers): the service's limits, consecutive failures
        # of each kind, and the Controller's callback for a run that reaches a limit.
        self.outlier: OutlierConfig | None = None
        self.on_outlier: Any = None  # Callable[[Backend, str], None]
        self.fails_5xx = 0
        self.fails_gateway = 0
        self.fails_connect = 0
        self.ejections = 0  # times ejected lately (each makes the next ejection longer; decays)
        self.ejections_total = 0  # times ejected since start (never decays)
        self.ejected_until = 0.0  # when the ejection under way ends (0: not ejected)
        self.ejection_ended = 0.0  # when the last ejection ended, or the count last decayed
        # Slow start: the share of its normal traffic a recovered backend takes now (1.0: all of it).
        self.slow_share = 1.0
        self.slow_since = 0.0  # when its slow start began (0: not in slow start)
        self.sticky_requests = 0  # requests it took because their sticky cookie named it
        self.sticky_cookies = 0  # sticky cookies set that name it (sessions that began or moved here)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def serving(self) -> bool:
        return self.admin_state is AdminState.READY and self.health in SERVING_HEALTH and self.weight > 0

    def ewma_cost(self, now: float) -> float:
        return ewma_decay(self._ewma, self._ewma_time, now)

    def rejoined(self) -> None:
        """It became eligible again (or for the first time) while its service runs: probe it, unmeasured."""
        self.probe = True
        self._ewma = 0.0  # what it was like before it left says little about it now

    def observe(self, status: int, latency: float, now: float, bytes_out: int) -> None:
        """Count one finished exchange (status 0: it failed before any response)."""
        self.requests += 1
        self.status_classes[status // 100 if 100 <= status < 600 else 0] += 1
        self.bytes_out += bytes_out
        failed = status >= 500 or status == 0
        self.window.record(latency, failed, now)
        if self.outlier is not None:
            if failed:
                self._outlier_failure(status)
            else:
                self.fails_5xx = self.fails_gateway = self.fails_connect = 0
        # Peak-EWMA (algorithms.ewma_update, inlined: once per request): a slower sample is taken at once.
        ewma = self._ewma
        if latency >= ewma:
            self._ewma = latency
        elif now > self._ewma_time:
            w = _exp((self._ewma_time - now) / EWMA_TAU)
            self._ewma = ewma * w + latency * (1.0 - w)
        self._ewma_time = now

    def _outlier_failure(self, status: int) -> None:
        """One more failure in a row (status 0: none came; 502-504 or 0: a gateway error, as Envoy counts)."""
        limits = self.outlier
        assert limits is not None
        self.fails_5xx += 1
        if status == 0 or 502 <= status <= 504:
            self.fails_gateway += 1
        else:
            self.fails_gateway = 0
        if self.fails_5xx >= limits.consecutive_5xx:
            self._outlier(f"{self.fails_5xx} consecutive 5xx")
        elif self.fails_gateway >= limits.consecutive_gateway_errors:
            self._outlier(f"{self.fails_gateway} consecutive gateway errors")

    def connect_failed(self) -> None:
        """A connection to it failed (refused, timed out): counted, and for outlier detection."""
        self.connect_failures += 1
        limits = self.outlier
        if limits is not None:
            self.fails_connect += 1
            if self.fails_connect >= limits.consecutive_connect_failures:
                self._outlier(f"{self.fails_connect} consecutive connect failures")

    def _outlier(self, reason: str) -> None:
        callback = self.on_outlier
        if callback is not None and self.health is not Health.EJECTED:
            callback(self, reason)

    def config(self) -> BackendConfig:
        return BackendConfig(
            name=self.name,
            host=self.host,
            port=self.port,
            group=self.group,
            weight=self.weight,
            state=self.admin_state.value,
        )


class Service:
    """An upstream cluster: backends in config order, groups, split and one algorithm per group."""

    def __init__(self, config: ServiceConfig, now: float) -> None:
        self.name = config.name
        self.config = config
        self.algorithm_name = config.algorithm
        self.hashing = config.algorithm in HASHING  # the data plane computes a hash key only then
        self.response_timeout = config.timeouts.response
        self.backends: list[Backend] = []
        for b in config.backends:
            self.adopt(Backend(b, config.name, now))
        self.split: dict[str, int] | None = dict(config.split) if config.split else None
        self.backup_group = config.backup_group
        self.version = 0
        self.unrouted = 0  # requests answered 503 because no backend was eligible
        self.rng = random.Random()
        self._algorithms: dict[str, Algorithm[Any]] = {}
        self._eligible: dict[str, tuple[Backend, ...]] = {}
        self._all_eligible: tuple[Backend, ...] = ()  # every eligible backend outside the backup group
        self._eligible_version = -1
        self._group_current: dict[str, int] = {}
        self._slow = False  # an eligible backend is in slow start: picks of it are thinned (see pick)
        # The backends eligible at the last refresh (None before the first, at the end of __init__, and again in
        # settle: those there at start are not probed), and how many eligible ones outside the backup group
        # wait for a probe (pick).
        self._was_eligible: frozenset[Backend] | None = None
        self._probes = 0
        self.panic = False  # too few healthy (panic_threshold): every ready backend takes traffic
        self.retries_in_flight = 0  # exchanges of this service retrying now (the retry budget)
        self.retries = 0  # requests sent again to another backend
        self.retries_refused = 0  # retries the budget did not allow
        self.queue: deque[Queued] | None = None  # requests waiting for a backend under max_connections
        self.queued = 0  # requests that waited in the queue
        self.queue_full = 0  # requests answered 503 at once because the queue was full
        # What its clients got, one count per answer whatever the attempts (see observe): since start, lately.
        self.status_classes = [0, 0, 0, 0, 0, 0]  # as Backend.status_classes
        self.window = SlidingWindow(now=now)
        # The canary ramp under way or last run (lbtui.core.ramp.Ramp), owned by the Controller.
        self.ramp: Any = None
        self.sticky_moved = 0  # sticky requests whose backend could not take them: picked anew
        self.sticky_unknown = 0  # sticky cookies that named no backend of this service (forged, stale)
        self._sticky_ids: dict[bytes, Backend] = {}  # cookie value -> backend
        self._sticky_values: dict[Backend, bytes] = {}
        self._sticky_version = -1
        self._sticky_memo: dict[tuple[str, str], bytes] = {}  # (name, address) -> value, under _sticky_key
        self._sticky_key = b""
        self._sticky_config: StickyConfig | None = None  # whose cookie name _sticky_name is
        self._sticky_name = b""
        self._refresh()  # who is eligible at start: a backend that joins later is probed (_find_probes)

    def observe(self, status: int, latency: float, now: float) -> None:
        """Count one answer to a client of this service (status 0: none came), however many backends it took."""
        self.status_classes[status // 100 if 100 <= status < 600 else 0] += 1
        self.window.record(latency, status >= 500 or status == 0, now)

    # -- the data plane's attempts and queue ---------------------------------------------------------------
    def attempt_ended(
        self, backend: Backend, status: int, started: float, now: float, bytes_out: int, counted: bool = True
    ) -> None:
        """An attempt on `backend` (one of this service's, counted in its in_flight since it was sent) is over,
        whoever made it (a proxied request, an aggregate's part): it leaves in_flight, is counted for the
        backend (Backend.observe, its latency from `started`; status 0: no reply) unless not `counted` (a
        pooled connection's race with the backend's keep-alive timeout, tried again), and the room it leaves
        goes to the request at the queue's head."""
        backend.in_flight -= 1
        if counted:
            backend.observe(status, now - started, now, bytes_out)
        if self.queue:
            self.serve_queue()

    def serve_queue(self) -> None:
        """A backend may have room: the longest waiting request tries again (at the queue's head). A sticky
        session waiting for its own backend is passed over while that one is still full."""
        queue = self.queue
        if not queue:
            return
        limit = self.config.max_connections
        index = 0
        while index < len(queue):
            waiter = queue[index]
            if waiter.done:
                del queue[index]
                continue
            bound = waiter.bound
            if bound is not None and limit is not None and bound.in_flight >= limit and self.keeps(bound):
                index += 1
                continue
            del queue[index]
            waiting = len(queue)
            waiter.attempt()
            if len(queue) == waiting:
                waiter.queue_deadline = 0.0  # it has a backend now (or was answered)
            return  # else still no room: it went back to the head of the queue

    def expire_queue(self, now: float) -> None:
        """Answer 503 to requests that waited longer than timeouts.queue (called by the engine's tick)."""
        queue = self.queue
        while queue and (queue[0].done or queue[0].queue_deadline <= now):
            waiter = queue.popleft()
            if not waiter.done:
                waiter.queue_expired()

    # -- changes (called by the Controller only) -------------------------------------------------------
    def adopt(self, backend: Backend) -> None:
        """Take in a backend (at start, or added at runtime) with the service's outlier limits."""
        backend.outlier = self.config.outlier
        self.backends.append(backend)

    def changed(self) -> None:
        self.version += 1
        # At once rather than at the next pick: a backend that leaves and comes back between two requests
        # (maint, then ready) is seen to have rejoined, and gets its probe (_find_probes).
        self._refresh()

    def set_algorithm(self, name: str) -> None:
        self.algorithm_name = name
        self.hashing = name in HASHING
        self._algorithms = {}
        self.changed()

    @property
    def groups(self) -> list[str]:
        seen: dict[str, None] = {}
        for b in self.backends:
            seen.setdefault(b.group, None)
        return list(seen)

    # -- selection (hot path) --------------------------------------------------------------------------
    def _refresh(self) -> dict[str, tuple[Backend, ...]]:
        by_group: dict[str, list[Backend]] = {}
        backup = self.backup_group
        ready = 0  # outside the backup group
        serving = 0  # of those, healthy
        backup_serving = False
        for b in self.backends:
            if b.admin_state is AdminState.READY and b.weight > 0:
                if b.group != backup:
                    ready += 1
                if b.health in SERVING_HEALTH:
                    by_group.setdefault(b.group, []).append(b)
                    if b.group != backup:
                        serving += 1
                    else:
                        backup_serving = True
        threshold = self.config.panic_threshold
        self.panic = bool(threshold and ready and serving * 100 < threshold * ready and not backup_serving)
        if self.panic:
            # Envoy's panic mode: with too few healthy (and no backup group to take over), health is not
            # believed: every ready backend outside the backup group serves.
            by_group = {}
            for b in self.backends:
                if b.admin_state is AdminState.READY and b.weight > 0 and b.group != backup:
                    by_group.setdefault(b.group, []).append(b)
        self._eligible = {g: tuple(bs) for g, bs in by_group.items()}
        self._slow = any(b.slow_since for bs in by_group.values() for b in bs)
        self._find_probes(by_group)
        self._all_eligible = tuple(
            b for g, bs in self._eligible.items() if g != self.backup_group for b in bs
        )
        self._eligible_version = self.version
        return self._eligible

    def settle(self) -> None:
        """Take who is eligible now as the starting set, probing none of them (the engine calls it as it starts
        serving: backends that a state file restored, added or enabled before then are no newcomers)."""
        for b in self.backends:
            b.probe = False
        self._was_eligible = None
        self._refresh()

    def _find_probes(self, by_group: Mapping[str, Sequence[Backend]]) -> None:
        """Mark the backends that became eligible since the last refresh for a probe; count those waiting."""
        eligible = frozenset(b for bs in by_group.values() for b in bs)
        was = self._was_eligible
        probes = 0
        for b in self.backends:
            if b not in eligible:
                b.probe = False  # it gets one when it comes back
                continue
            if was is not None and b not in was:
                b.rejoined()
            if b.probe and b.group != self.backup_group:
                probes += 1
        self._was_eligible = eligible
        self._probes = 0 if self.hashing else probes

    def _pool_key(self, eligible: Mapping[str, tuple[Backend, ...]]) -> str | None:
        """Which group (or "*" for all non-backup groups together) serves the next request."""
        split = self.split
        backup = self.backup_group
        if split:
            live = [(g, w) for g, w in split.items() if w > 0 and g in eligible]
            if live:
                if len(live) == 1:
                    return live[0][0]
                # Smooth weighted round robin between groups: exact proportions, evenly interleaved.
                current = self._group_current
                total = 0
                best = None
                best_value = 0
                for g, w in live:
                    value = current.get(g, 0) + w
                    current[g] = value
                    total += w
                    if best is None or value > best_value:
                        best, best_value = g, value
                assert best is not None
                current[best] = best_value - total
                return best
            # No group of the split can serve: any other group that can, before the backup group.
            for g in eligible:
                if g != backup:
                    return g
            return backup if backup in eligible else None
        if any(g != backup for g in eligible):
            return "*"
        return backup if backup in eligible else None

    def pick(self, key: bytes | None, exclude: Sequence[Backend] = ()) -> Backend | None:
        eligible = self._eligible if self._eligible_version == self.version else self._refresh()
        if not eligible:
            return None
        if (
            not exclude
            and not self.split
            and self._all_eligible
            and self.config.max_connections is None
            and not self._slow
            and not self._probes
        ):
            # The common case: no split, nothing to exclude, no limit: one pool of every eligible backend.
            algorithm = self._algorithms.get("*")
            if algorithm is None:
                algorithm = self._algorithms["*"] = make_algorithm(self.algorithm_name)
            fast: Backend | None = algorithm.pick(self._all_eligible, self.version, key, self.rng)
            return fast
        if exclude:
            eligible = {
                g: kept for g, bs in eligible.items() if (kept := tuple(b for b in bs if b not in exclude))
            }
            if not eligible:
                return None
        pool = self._pool_key(eligible)
        if pool is None:
            return None
        if pool == "*":
            candidates: tuple[Backend, ...] = (
                self._all_eligible
                if not exclude
                else tuple(b for g, bs in eligible.items() if g != self.backup_group for b in bs)
            )
        else:
            candidates = eligible[pool]
        limit = self.config.max_connections
        version = self.version if not exclude else -1 - self.version
        if limit is not None:
            full = tuple(b for b in candidates if b.in_flight < limit)
            if len(full) != len(candidates):
                candidates = full
                version = -1 - self.version - 1_000_000 * len(candidates)
            if not candidates:
                return None
        if self._probes:
            for b in candidates:
                if b.probe:  # eligible lately, no request yet: this one, before any algorithm or slow start
                    b.probe = False
                    self._probes -= 1
                    return b
        # A pick that leaves some out (a retry, slow start's second pick) has an algorithm of its own: shared,
        # its turns would shift the first picks' (round robin would then skip the backend after a dead one).
        slot = pool if not exclude else pool + "\0again"
        algorithm = self._algorithms.get(slot)
        if algorithm is None:
            algorithm = self._algorithms[slot] = make_algorithm(self.algorithm_name)
        picked: Backend | None = algorithm.pick(candidates, version, key, self.rng)
        if (
            picked is not None
            and picked.slow_share < 1.0
            and not self.hashing
            and self.rng.random() >= picked.slow_share
        ):
            # Slow start: a recovering backend keeps a pick with the chance of its share; otherwise the
            # request goes to whoever the algorithm picks among the others (it keeps the pick if none).
            other = self.pick(key, (*exclude, picked))
            if other is not None:
                return other
        return picked

    # -- sticky sessions -------------------------------------------------------------------------------
    def _sticky_table(self) -> dict[bytes, Backend]:
        """Cookie value -> backend, made again when the backends or the config changed (both bump version)."""
        if self._sticky_version != self.version:
            sticky = self.config.sticky
            key = sticky_key(sticky.secret_env if sticky is not None else None)
            if key != self._sticky_key:
                self._sticky_key = key
                self._sticky_memo = {}
            memo = self._sticky_memo
            ids: dict[bytes, Backend] = {}
            values: dict[Backend, bytes] = {}
            for b in self.backends:
                address = b.address
                value = memo.get((b.name, address))
                if value is None:
                    value = memo[(b.name, address)] = sticky_value(key, self.name, b.name, address)
                ids[value] = b
                values[b] = value
            self._sticky_ids = ids
            self._sticky_values = values
            self._sticky_version = self.version
        return self._sticky_ids

    def sticky_cookie(self) -> bytes:
        """The sticky cookie's name (b"": the service has no sticky sessions)."""
        sticky = self.config.sticky
        if sticky is None:
            return b""
        if sticky is not self._sticky_config:
            self._sticky_config = sticky
            self._sticky_name = sticky.cookie.encode()
        return self._sticky_name

    def sticky_value_of(self, backend: Backend) -> bytes | None:
        """The cookie value that names `backend` (None once it is no longer one of this service's)."""
        self._sticky_table()
        return self._sticky_values.get(backend)

    def sticky_backend(self, values: Sequence[bytes]) -> Backend | None:
        """The backend a request's sticky cookie (its `values`, in order) binds it to, if it may take it now
        (see keeps); None to pick as for any request. Counts the cookies that named no backend of this service
        (`sticky_unknown`) and the sessions that must move (`sticky_moved`)."""
        table = self._sticky_table()
        for value in values:
            backend = table.get(value)
            if backend is not None:
                if self.keeps(backend):
                    return backend
                self.sticky_moved += 1
                return None
        self.sticky_unknown += 1
        return None

    def keeps(self, b: Backend) -> bool:
        """Whether a sticky session stays on `b` now: `ready` or `drain` (a drain keeps its sessions, as
        HAProxy's does), healthy (in panic, `ready` is enough, as for any request), not being removed, one of
        this service's, and its group has a share of the split now. Weight 0 keeps sessions too (HAProxy's
        `weight 0`). Not max_connections: a session whose backend is full waits for it (proxy/dispatch.py)."""
        if b.remove_deadline is not None or b.service != self.name or b.admin_state is AdminState.MAINT:
            return False
        eligible = self._eligible if self._eligible_version == self.version else self._refresh()
        if b.health not in SERVING_HEALTH and not (
            self.panic and b.admin_state is AdminState.READY and b.group != self.backup_group
        ):
            return False
        group = b.group
        backup = self.backup_group
        if group == backup:  # the backup group serves only while no other group can
            return not any(g != backup for g in eligible)
        split = self.split
        if split:
            if split.get(group, 0) > 0:
                return True
            # A group of the split at 0 (a flip, the end of a ramp, a rollback) or outside it: its sessions
            # move, unless no group with a share can serve (then the split's fallback serves from it).
            return not any(w > 0 and g in eligible for g, w in split.items())
        return True

    def hash_key_of(self, client: bytes, url: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
        """What ip_hash or consistent_hash (its `hash_key`) hashes for a request from `client` (None: nothing
        to hash, or not a hashing algorithm): the proxy's requests and an aggregate's parts alike."""
        kind = self.algorithm_name
        if kind == "ip_hash":
            return client
        if kind != "consistent_hash":
            return None
        spec = self.config.hash_key or "path"
        if spec == "path":
            return url.split(b"?", 1)[0]
        source, _, name = spec.partition(":")
        wanted = name.lower().encode()
        if source == "header":
            for hname, value in headers:
                if hname.lower() == wanted:
                    return value
            return None
        if source == "cookie":
            for hname, value in headers:
                if hname.lower() == b"cookie":
                    for part in value.split(b";"):
                        k, _, v = part.strip().partition(b"=")
                        if k.lower() == wanted:
                            return v
            return None
        if source == "query":
            _, _, query = url.partition(b"?")
            for part in query.split(b"&"):
                k, _, v = part.partition(b"=")
                if k.lower() == wanted:
                    return v
            return None
        return None

    def has_eligible(self, exclude: Sequence[Backend] = ()) -> bool:
        """Whether a backend not in `exclude` could take traffic, were it not at max_connections."""
        eligible = self._eligible if self._eligible_version == self.version else self._refresh()
        return any(b not in exclude for bs in eligible.values() for b in bs)

    def eligible_now(self) -> int:
        """How many backends take traffic now (refreshing what pick caches; also sets `panic`)."""
        eligible = self._eligible if self._eligible_version == self.version else self._refresh()
        return sum(len(bs) for bs in eligible.values())


class RouteStats:
    """A route's live numbers, counted by the data plane: every answer, and the gateway's refusals by reason."""

    __slots__ = ("cache", "name", "rejected", "status_classes", "window")

    def __init__(self, now: float, name: str = "") -> None:
        self.name = name
        self.window = SlidingWindow(now=now)
        self.status_classes = [0, 0, 0, 0, 0, 0]
        self.rejected: dict[str, int] = {}
        self.cache = [0, 0]  # hits, misses (counted by the data plane when the route has a cache)

    def observe(self, status: int, latency: float, now: float) -> None:
        self.status_classes[status // 100 if 100 <= status < 600 else 0] += 1
        self.window.record(latency, status >= 500 or status == 0, now)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def view(self, route: RouteView, now: float) -> RouteView:
        sc = self.status_classes
        return RouteView(
            route.name,
            route.match,
            route.target,
            route.policies,
            self.window.view(now),
            (sc[0], sc[1], sc[2], sc[3], sc[4], sc[5]),
            tuple(sorted(self.rejected.items())),
            (self.cache[0], self.cache[1]),
            self.window.totals()[0],
        )
