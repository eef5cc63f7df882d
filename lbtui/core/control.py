"""The Controller: the only way state changes, and the audit log of every change.

The interface speaks in names, states, weights, splits and algorithms, never in engine objects, so that the
same dashboard and keys can steer the embedded balancer (InProcessController), the engine on its own thread
(lbtui/threaded.py), a running `lbtui serve` through its admin API (lbtui/admin/remote.py), or later another
engine.

A refusal is a ControlError whose message says why, of the class that says what kind of refusal it is:
NotFound (no such backend or service), Conflict (not now: under way, already so, being removed), Invalid (a
value that is never right here), ReloadRefused (a config that cannot be applied; its `issues` say where). The
admin API answers each with its HTTP status (404, 409, 400) by class, never by reading the message.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lbtui.config import ALGORITHMS, ConfigError, ConfigIssue, parse_backend
from lbtui.core.balancer import REMOVE_DEADLINE, Balancer
from lbtui.core.health import HealthState, ejection_time, may_eject, next_state, remember, slow_share
from lbtui.core.model import AdminState, Backend, Health, Service
from lbtui.core.ramp import ABORTED, RUNNING, Ramp
from lbtui.core.views import CheckView, RequestView, Snapshot, service_view


class ControlError(Exception):
    """A request the controller refuses; the message says why, the subclass what kind of refusal it is."""


class NotFound(ControlError):
    """No backend or service of that name."""


class Conflict(ControlError):
    """Not now, though it may be later: a ramp under way, a backend being removed, nothing left to undo."""


class Invalid(ControlError):
    """A value that is not right for its target (a state, a weight, an algorithm, a split)."""


class ReloadRefused(Invalid):
    """The new config cannot be applied (a bad file, a socket that cannot be bound, a TLS file that cannot be
    loaded): nothing changed. `issues` name the file and key path, as a ConfigError's do."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


@dataclass(frozen=True, slots=True)
class Event:
    """One audited change: who did what to which target, and the value before and after."""

    id: int
    time: float  # wall clock (time.time())
    actor: str  # "key", "api", "ctl", "reload", "health", "undo", ...
    action: str  # "state", "weight", "add", "remove", "algorithm", "split", "flip", ...
    target: str  # backend or service name
    before: Any
    after: Any
    note: str = ""  # what a number alone does not say: a ramp's step, why it rolled back

    def describe(self) -> str:
        text = f"{self.actor}: {self.action} {self.target}: {self.before} -> {self.after}"
        return f"{text} ({self.note})" if self.note else text


@dataclass
class ReloadResult:
    """What a reload of the config file changed (proxy/reload.py makes it; the API, ctl and the UI show it)."""

    source: str
    changes: list[str] = field(default_factory=list)  # one line per change, for the API, ctl and the UI
    events: list[Event] = field(default_factory=list)  # the audit events the reload made
    restart_needed: list[str] = field(default_factory=list)  # what only a restart applies
    warnings: list[str] = field(default_factory=list)  # changes that could not be made (and why)

    def summary(self) -> str:
        if not self.changes and not self.restart_needed:
            return f"reloaded {self.source}: nothing changed"
        text = f"reloaded {self.source}: {len(self.changes)} change{'s' if len(self.changes) != 1 else ''}"
        if self.restart_needed:
            text += f"; restart needed for {', '.join(r.split(':', 1)[0] for r in self.restart_needed)}"
        return text

    def json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "summary": self.summary(),
            "changes": list(self.changes),
            "restart_needed": list(self.restart_needed),
            "warnings": list(self.warnings),
            "events": [event.id for event in self.events],
        }


# check()'s actions: the Controller methods' names for what they change, by the kind of target they name.
BACKEND_ACTIONS = frozenset({"state", "weight", "remove", "drain_then_maint"})
SERVICE_ACTIONS = frozenset({"add", "algorithm", "split", "flip", "ramp", "abort_ramp"})


def has_backend(snapshot: Snapshot, name: str) -> bool:
    """Whether `name` is a backend row of the snapshot, by its name or as SERVICE/NAME (HAProxy's BE/SRV)."""
    return any(
        b.name == name or f"{b.service}/{b.name.rpartition('/')[2]}" == name
        for s in snapshot.services
        for b in s.backends
    )


class Controller(abc.ABC):
    """What a UI or API may do to a balancer."""

    @abc.abstractmethod
    def snapshot(self) -> Snapshot: ...

    def check(self, action: str, target: str) -> None:
        """Raise the ControlError that `action` (BACKEND_ACTIONS or SERVICE_ACTIONS) on `target` would meet now,
        changing nothing: the engine cannot be reached (its snapshot is the last one, marked `connection_lost`),
        or there is no such backend (service, for a service's action). A controller that can also ask whether
        it may change things (HAProxy's socket level) adds that. A fleet checks every member before it changes
        any (lbtui/fleet.py)."""
        snapshot = self.snapshot()
        lost = snapshot.extra.get("connection_lost")
        if lost:
            raise ControlError(str(lost))
        if action in SERVICE_ACTIONS:
            if not any(s.name == target for s in snapshot.services):
                raise NotFound(f"no service named {target!r}")
        elif action in BACKEND_ACTIONS:
            if not has_backend(snapshot, target):
                raise NotFound(f"no backend named {target!r}")
        else:
            raise Invalid(f"{action!r} is not an action to check")

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """Call `callback` with every new event as it happens, where the controller can (UIs poll anyway)."""
        del callback  # by default, nothing pushes: a UI sees new events when it polls events()

    @abc.abstractmethod
    def set_state(self, backend: str, state: str, actor: str = "api") -> Event: ...

    def drain(self, backend: str, actor: str = "api") -> Event:
        return self.set_state(backend, AdminState.DRAIN.value, actor)

    def enable(self, backend: str, actor: str = "api") -> Event:
        return self.set_state(backend, AdminState.READY.value, actor)

    def maint(self, backend: str, actor: str = "api") -> Event:
        return self.set_state(backend, AdminState.MAINT.value, actor)

    @abc.abstractmethod
    def drain_then_maint(self, backend: str, actor: str = "api") -> Event:
        """Drain now, and move to maint on its own once nothing is in flight (HAProxy's drain-then-maint)."""

    @abc.abstractmethod
    def set_weight(self, backend: str, weight: int, actor: str = "api") -> Event: ...

    @abc.abstractmethod
    def add_backend(
        self,
        service: str,
        name: str,
        address: str,
        group: str = "default",
        weight: int = 1,
        actor: str = "api",
    ) -> Event: ...

    @abc.abstractmethod
    def remove_backend(self, backend: str, actor: str = "api") -> Event: ...

    @abc.abstractmethod
    def set_algorithm(self, service: str, algorithm: str, actor: str = "api") -> Event: ...

    @abc.abstractmethod
    def set_split(self, service: str, split: Mapping[str, int], actor: str = "api") -> Event: ...

    @abc.abstractmethod
    def flip(self, service: str, actor: str = "api") -> Event: ...

    @abc.abstractmethod
    def start_ramp(self, service: str, actor: str = "api") -> Event:
        """Start the service's canary ramp (its `ramp` config) from the first step above the canary's share."""

    @abc.abstractmethod
    def abort_ramp(self, service: str, actor: str = "api") -> Event:
        """Stop the ramp under way and put the split back as it was before the ramp began."""

    @abc.abstractmethod
    def events(self, limit: int = 100) -> list[Event]:
        """The newest `limit` events, newest first."""

    @abc.abstractmethod
    def recent_requests(self, limit: int = 100) -> list[RequestView]:
        """The newest `limit` finished requests, newest first."""

    @abc.abstractmethod
    def undo(self, actor: str = "api") -> Event:
        """Revert the newest change not yet undone."""

    @abc.abstractmethod
    def reload(self, actor: str = "api") -> ReloadResult:
        """Re-read the config file the engine started with and apply it: what changed. ReloadRefused, with
        nothing changed, when it cannot be applied. `actor` is who asked; the changes are audited as actor
        "reload", whoever asked (as a SIGHUP's are)."""


class InProcessController(Controller):
    """The Controller of the embedded balancer. Call it from the event loop that runs the data plane."""

    def __init__(self, balancer: Balancer, history: int = 1000, wall_clock: Callable[[], float] = time.time):
        self.balancer = balancer
        self._events: deque[Event] = deque(maxlen=history)
        self._undo: list[Event] = []
        self._next_id = 1
        self._wall_clock = wall_clock
        self._offset = wall_clock() - balancer.clock()  # see _wall_offset
        self.listeners: list[Callable[[Event], None]] = []
        balancer.on_tick_change.append(self._on_tick_change)
        balancer.on_tick.append(self._tick_ramps)
        balancer.on_tick.append(self._tick_health)
        for backend in balancer.backends.values():
            backend.on_outlier = self._outlier
        self._panic: dict[str, bool] = {}  # the panic mode last audited, per service
        self._note = ""  # added to the note of every event recorded now (see noting)
        # Re-reads the config file and applies it (ReloadRefused when it cannot): set by the runtime that runs
        # this engine (lbtui/serve.py's Runtime.reload), which knows the file; None: there is nothing to reload.
        self.reloader: Callable[[], ReloadResult] | None = None

    # -- helpers -------------------------------------------------------------------------------------
    def _backend(self, name: str) -> Backend:
        backend = self.balancer.backends.get(name)
        if backend is None:
            raise NotFound(f"no backend named {name!r}")
        return backend

    def _service(self, name: str) -> Service:
        service = self.balancer.services.get(name)
        if service is None:
            known = ", ".join(sorted(self.balancer.services)) or "none"
            raise NotFound(f"no service named {name!r} (services: {known})")
        return service

    @contextlib.contextmanager
    def noting(self, note: str) -> Iterator[None]:
        """Every event recorded inside carries `note` too: a restore says where its changes came from."""
        outer, self._note = self._note, note
        try:
            yield
        finally:
            self._note = outer

    def record(
        self,
        actor: str,
        action: str,
        target: str,
        before: Any,
        after: Any,
        undoable: bool = True,
        note: str = "",
    ) -> Event:
        if self._note:
            note = f"{note}; {self._note}" if note else self._note
        event = Event(self._next_id, self._wall_clock(), actor, action, target, before, after, note)
        self._next_id += 1
        self._events.append(event)
        if undoable and actor != "undo":
            self._undo.append(event)
            del self._undo[:-100]
        for listener in self.listeners:
            listener(event)
        if action != "panic":
            # What changed may have moved a service in or out of panic: audited now, right after its cause,
            # rather than at the next tick (the services line would show PANIC before the events did).
            for service in self.balancer.services.values():
                self._audit_panic(service)
        return event

    def _on_tick_change(self, backend: Backend, before: str, after: str) -> None:
        action = "remove" if after == "removed" else "state"
        self.record("engine", action, backend.name, before, after, undoable=False)

    def health_check(self, backend: str, check: CheckView) -> Event | None:
        """Apply one active check's result (the data plane's checker calls this); audit a change of health.

        A change bumps the service's version, since eligibility depends on health. Returns the event, if any.
        """
        b = self._backend(backend)
        service = self.balancer.service_of(b)
        config = service.config.health
        if config is None:
            raise Invalid(f"service {service.name!r} has no health check")
        b.checks = remember(b.checks, check)
        before = HealthState(b.health, b.health_count, b.health_of)
        after = next_state(before, check.ok, config.rise, config.fall)
        if after == before:
            return None
        b.health, b.health_count, b.health_of = after.health, after.count, after.of
        if after.health is Health.UP and before.health in (Health.DOWN, Health.GOING_UP):
            self._slow_start(b, service)
        service.changed()
        return self.record(
            "health", "health", b.name, before.label, f"{after.label} ({check.detail})", undoable=False
        )

    # -- passive health: outlier ejection and slow start ------------------------------------------------
    def _outlier(self, b: Backend, reason: str) -> None:
        """A backend's run of failures reached its limit (called by the data plane, mid-request)."""
        service = self.balancer.services.get(b.service)
        limits = b.outlier
        if service is None or limits is None or b.health is Health.EJECTED:
            return
        b.fails_5xx = b.fails_gateway = b.fails_connect = 0  # a run that may not eject starts over
        ejected = sum(1 for x in service.backends if x.health is Health.EJECTED)
        if not may_eject(len(service.backends), ejected, limits.max_ejected_percent):
            return
        now = self.balancer.clock()
        b.ejections += 1
        b.ejections_total += 1
        seconds = ejection_time(limits.base_ejection, limits.max_ejection, b.ejections)
        before = HealthState(b.health, b.health_count, b.health_of).label
        b.health, b.health_count, b.health_of = Health.EJECTED, 0, 0
        b.ejected_until = now + seconds
        b.slow_since, b.slow_share = 0.0, 1.0
        service.changed()
        self.record(
            "outlier", "health", b.name, before, f"ejected for {seconds:g}s ({reason})", undoable=False
        )

    def _slow_start(self, b: Backend, service: Service) -> None:
        period = service.config.slow_start
        if period > 0:
            b.slow_since = self.balancer.clock()
            b.slow_share = slow_share(0.0, period)
            service.changed()

    def _tick_health(self, now: float) -> None:
        """End ejections that are over, let the ejection count decay, move slow starts on, audit panic."""
        for s in self.balancer.services.values():
            period = s.config.slow_start
            limits = s.config.outlier
            for b in s.backends:
                if b.ejected_until and now >= b.ejected_until:
                    b.ejected_until = 0.0
                    b.ejection_ended = now
                    if b.health is Health.EJECTED:
                        b.health = Health.UP
                        s.changed()
                        self.record(
                            "outlier", "health", b.name, "ejected", "up (ejection over)", undoable=False
                        )
                        self._slow_start(b, s)
                elif (
                    b.ejections
                    and limits is not None
                    and b.health is not Health.EJECTED
                    and now - b.ejection_ended >= limits.base_ejection
                ):
                    b.ejections -= 1  # a quiet base_ejection: the next ejection is one step shorter
                    b.ejection_ended = now
                if b.slow_since:
                    share = slow_share(now - b.slow_since, period)
                    b.slow_share = share
                    if share >= 1.0:
                        b.slow_since = 0.0
                        s.changed()
            self._audit_panic(s)

    def _audit_panic(self, s: Service) -> None:
        """Record a change of the service's panic mode since the last audit (each tick, and after each event:
        Service.changed works panic out at once, and the dashboard shows it as soon as it is on)."""
        if not s.config.panic_threshold:
            return
        s.eligible_now()
        if s.panic != self._panic.get(s.name, False):
            self._panic[s.name] = s.panic
            self.record(
                "engine",
                "panic",
                s.name,
                "off" if s.panic else "on",
                "on" if s.panic else "off",
                undoable=False,
                note=f"under {s.config.panic_threshold}% healthy: every ready backend takes traffic"
                if s.panic
                else "enough healthy again",
            )

    # -- the interface -------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return self.balancer.snapshot()

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        self.listeners.append(callback)

    def set_state(self, backend: str, state: str, actor: str = "api") -> Event:
        b = self._backend(backend)
        try:
            new = AdminState(state)
        except ValueError:
            raise Invalid(f"{state!r} is not a state (ready, drain, maint)") from None
        if b.remove_deadline is not None:
            raise Conflict(f"backend {backend!r} is being removed")
        before = b.admin_state.value
        self.balancer.set_admin_state(b, new)
        if before == AdminState.MAINT.value and new is AdminState.READY:
            self._slow_start(b, self.balancer.service_of(b))  # back from maintenance, as in HAProxy
        return self.record(actor, "state", backend, before, new.value)

    def drain_then_maint(self, backend: str, actor: str = "api") -> Event:
        event = self.set_state(backend, AdminState.DRAIN.value, actor)
        b = self._backend(backend)
        b.maint_when_drained = True
        if b.in_flight == 0:
            self.balancer.tick()
        return event

    def set_weight(self, backend: str, weight: int, actor: str = "api") -> Event:
        b = self._backend(backend)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1000:
            raise Invalid(f"weight must be an integer from 0 to 1000, got {weight!r}")
        before = b.weight
        b.weight = weight
        self.balancer.service_of(b).changed()
        return self.record(actor, "weight", backend, before, weight)

    def add_backend(
        self,
        service: str,
        name: str,
        address: str,
        group: str = "default",
        weight: int = 1,
        actor: str = "api",
    ) -> Event:
        s = self._service(service)
        try:
            config = parse_backend(
                {"name": name, "address": address, "group": group, "weight": weight}, s.config, "<runtime>"
            )
        except ConfigError as e:
            # A name that a backend of the service's config has is taken (not now, as a runtime backend's is).
            taken = any(other.name == name for other in s.config.backends)
            raise (Conflict if taken else Invalid)(
                "; ".join(f"{i.key_path.removeprefix('backend.')}: {i.message}" for i in e.issues)
            ) from None
        if config.name in self.balancer.backends:
            raise Conflict(f"a backend named {config.name!r} exists already")
        backend = Backend(config, s.name, self.balancer.clock())
        s.adopt(backend)
        backend.on_outlier = self._outlier
        self.balancer.backends[backend.name] = backend
        self._slow_start(backend, s)
        s.changed()
        for callback in self.balancer.on_backend_added:
            callback(backend)
        after = {
            "service": s.name,
            "address": backend.address,
            "group": backend.group,
            "weight": backend.weight,
        }
        return self.record(actor, "add", backend.name, None, after)

    def remove_backend(self, backend: str, actor: str = "api") -> Event:
        b = self._backend(backend)
        if b.remove_deadline is not None:
            raise Conflict(f"backend {backend!r} is being removed already")
        before = {
            "service": b.service,
            "address": b.address,
            "group": b.group,
            "weight": b.weight,
            "state": b.admin_state.value,
        }
        # Removing drains first: no new traffic, in-flight finishes, then the tick drops it.
        self.balancer.set_admin_state(b, AdminState.DRAIN)
        b.remove_deadline = self.balancer.clock() + REMOVE_DEADLINE
        if b.in_flight == 0:
            self.balancer.drop_backend(b)
        return self.record(actor, "remove", backend, before, None)

    def set_algorithm(self, service: str, algorithm: str, actor: str = "api") -> Event:
        s = self._service(service)
        if algorithm not in ALGORITHMS:
            raise Invalid(f"{algorithm!r} is not an algorithm ({', '.join(ALGORITHMS)})")
        if algorithm == "consistent_hash" and not s.config.hash_key:
            raise Invalid(f"service {service!r} has no hash_key, which consistent_hash needs")
        before = s.algorithm_name
        s.set_algorithm(algorithm)
        return self.record(actor, "algorithm", service, before, algorithm)

    def set_split(self, service: str, split: Mapping[str, int], actor: str = "api") -> Event:
        s = self._service(service)
        self._stop_ramp_for(s, actor)
        groups = set(s.groups)
        clean: dict[str, int] = {}
        for group, weight in split.items():
            if group not in groups:
                raise Invalid(f"service {service!r} has no group {group!r} (groups: {', '.join(s.groups)})")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise Invalid(f"split weight for {group!r} must be an integer >= 0, got {weight!r}")
            clean[group] = weight
        if clean and not any(clean.values()):
            raise Invalid("a split needs at least one group with a weight above 0")
        before = dict(s.split) if s.split else None
        s.split = clean or None
        s.changed()
        return self.record(actor, "split", service, before, dict(clean) if clean else None)

    def flip(self, service: str, actor: str = "api") -> Event:
        s = self._service(service)
        if not s.split or len(s.split) != 2:
            raise Conflict(f"service {service!r} needs a split of exactly two groups to flip")
        (a, wa), (b, wb) = s.split.items()
        self._stop_ramp_for(s, actor)
        before = dict(s.split)
        s.split = {a: wb, b: wa}
        s.changed()
        return self.record(actor, "flip", service, before, dict(s.split))

    # -- canary ramps ---------------------------------------------------------------------------------
    def start_ramp(self, service: str, actor: str = "api") -> Event:
        s = self._service(service)
        if s.ramp is not None and s.ramp.state == RUNNING:
            raise Conflict(f"a canary ramp is under way on {service!r} (R aborts it)")
        if not s.split or len(s.split) != 2:
            raise Conflict(f"service {service!r} needs a split of exactly two groups to ramp")
        (stable, stable_weight), (canary, canary_weight) = s.split.items()
        total = stable_weight + canary_weight
        share = 100.0 * canary_weight / total if total else 0.0
        config = s.config.ramp
        first = next((i for i, percent in enumerate(config.steps) if percent > share), None)
        if first is None:
            raise Conflict(f"{canary} has {share:.0f}% of {service!r} already: no step above it")
        now = self.balancer.clock()
        requests = sum(b.requests for b in s.backends if b.group == canary)
        ramp = Ramp(config, stable, canary, dict(s.split), first, now, requests)
        s.ramp = ramp
        steps = " -> ".join(f"{p}%" for p in config.steps[first:])
        return self._ramp_split(
            s, ramp.first_split(), actor, f"start: {canary} {steps}, {config.hold:g}s each"
        )

    def abort_ramp(self, service: str, actor: str = "api") -> Event:
        s = self._service(service)
        ramp = s.ramp
        if ramp is None or ramp.state != RUNNING:
            raise Conflict(f"no canary ramp is under way on {service!r}")
        ramp.finish(ABORTED, f"by {actor}")
        return self._ramp_split(s, ramp.before or {}, actor, "aborted: split as before the ramp")

    def _ramp_split(self, s: Service, split: dict[str, int], actor: str, note: str) -> Event:
        before = dict(s.split) if s.split else None
        s.split = dict(split) or None
        s.changed()
        return self.record(actor, "ramp", s.name, before, split, undoable=False, note=note)

    def _stop_ramp_for(self, s: Service, actor: str) -> None:
        """A split changed by hand ends the ramp there: the operator has taken over."""
        ramp = s.ramp
        if ramp is not None and ramp.state == RUNNING and actor != "ramp":
            ramp.finish(ABORTED, f"split changed by {actor}")
            split = dict(s.split) if s.split else None
            self.record(actor, "ramp", s.name, split, split, undoable=False, note="aborted: split changed")

    def _tick_ramps(self, now: float) -> None:
        for s in list(self.balancer.services.values()):
            ramp = s.ramp
            if ramp is None or ramp.state != RUNNING:
                continue
            decision = ramp.advance(service_view(s, now), now)
            if decision is None:
                continue
            if decision.split is not None:
                self._ramp_split(s, decision.split, "ramp", decision.note)
            else:
                split = dict(s.split) if s.split else None
                self.record("ramp", "ramp", s.name, split, split, undoable=False, note=decision.note)

    def events(self, limit: int = 100) -> list[Event]:
        return list(reversed(self._events))[:limit]

    def _wall_offset(self) -> float:
        """The wall clock minus the balancer's monotonic one: kept while the two agree within a second, so that
        a request's time reads the same on every call (the admin API's and the engine's lists match), and taken
        anew after the wall clock is stepped."""
        offset = self._wall_clock() - self.balancer.clock()
        if abs(offset - self._offset) > 1.0:
            self._offset = offset
        return self._offset

    def recent_requests(self, limit: int = 100) -> list[RequestView]:
        log = self.balancer.access_log
        offset = self._wall_offset()  # the entries carry the monotonic clock
        out = []
        for index in range(len(log) - 1, max(-1, len(log) - 1 - limit), -1):
            entry = log[index]
            at, client, method, target, status, backend, seconds, size = entry[:8]
            route = entry[8] if len(entry) > 8 and entry[8] is not None else None
            consumer = entry[9] if len(entry) > 9 else b""
            out.append(
                RequestView(
                    time=at + offset,
                    client=client.decode("latin-1"),
                    method=method.decode("latin-1"),
                    target=target.decode("latin-1"),
                    status=status,
                    backend=backend.name if backend is not None else "",
                    service=backend.service if backend is not None else "",
                    duration_ms=seconds * 1000.0,
                    bytes_out=size,
                    route=route.name if route is not None else "",
                    consumer=consumer.decode("utf-8", "replace"),
                )
            )
        return out

    def reload(self, actor: str = "api") -> ReloadResult:
        del actor  # the reload's changes are audited as "reload", whoever asked
        if self.reloader is None:
            raise Conflict("this instance has no config file to reload")
        return self.reloader()

    def undo(self, actor: str = "api") -> Event:
        while self._undo:
            event = self._undo.pop()
            try:
                return self._revert(event)
            except ControlError:
                continue  # the target is gone (removed since): nothing to revert, try the one before
        raise Conflict("nothing to undo")

    def _revert(self, event: Event) -> Event:
        if event.action == "state":
            return self.set_state(event.target, event.before, "undo")
        if event.action == "weight":
            return self.set_weight(event.target, event.before, "undo")
        if event.action == "add":
            return self.remove_backend(event.target, "undo")
        if event.action == "remove":
            before = event.before
            ev = self.add_backend(
                before["service"], event.target, before["address"], before["group"], before["weight"], "undo"
            )
            if before["state"] != AdminState.READY.value:
                self.balancer.set_admin_state(self._backend(event.target), AdminState(before["state"]))
            return ev
        if event.action == "algorithm":
            return self.set_algorithm(event.target, event.before, "undo")
        if event.action in ("split", "flip"):
            return self.set_split(event.target, event.before or {}, "undo")
        raise Invalid(f"cannot undo {event.action}")
