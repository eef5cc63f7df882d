"""FleetController: several Controllers that front the same services (HAProxy stats sockets, `lbtui serve` admin
APIs, or a mix), steered as one (`lbtui attach URL URL ...`, `lbtui ctl --admin URL --admin URL ...`).

Invariants:
- Every call to a member runs on that member's own thread (one per member, so a member is called from one
  thread, as RemoteController asks), and whoever asks waits for it at most a deadline: a member that hangs or
  is gone costs its own rows, never the others' nor a redraw. A poller asks each member for its snapshot, its
  events and its recent requests every `poll_seconds`, one question at a time per member; snapshot() merges
  the newest answers at once (only the first call waits, for the first answers, at most FIRST_DEADLINE).
- A member is unreachable while its last poll failed or has not answered within POLL_DEADLINE, or its snapshot
  carries `extra["connection_lost"]`: its rows stay (as its last snapshot had them) but its numbers are not
  summed, it agrees with nothing, and `extra["fleet"]` names it (the dashboard's status line says so). With no
  member reachable the snapshot carries `connection_lost`; with none that ever answered, snapshot() raises.
- The merged snapshot has one ServiceView per service name and one BackendView per (service, backend name):
  counts, in flight and rates summed over the reachable members; latency windows merged as histograms where
  every reachable member has them (percentiles of the merged counts, never averaged); else NaN percentiles and
  `latency_avg_ms`, the request-weighted mean of the members' averages (a histogram's own mean for a member
  that has one). State, health and weight are the common value where all reachable members agree; else the
  state or health reads "mixed" and the weight is the most common one; `mixed` names what differs.
  `instances` is the fleet's size and `agreeing` the number of members whose (state, weight) is the most
  common pair (an unreachable member, or one without the row, does not agree). `extra["fleet"]` keeps each
  member's own row for the per-instance detail.
- A change is checked on every member first (Controller.check: reachable now, the target exists, permission);
  a refusal there changes nothing anywhere. Then it is applied on every member at once and read back (the
  member's Event.after against what was asked); if it failed on any, it is rolled back where it succeeded (the
  inverse from that member's Event.before). A rollback that fails, or a member whose outcome is unknown (no
  answer within CALL_DEADLINE), leaves the row (the service, for a service's change) `diverged` until a later
  change of it succeeds on every member or reads of every member, all newer than the failure, show them
  reachable and in agreement. One change is one fleet Event whose note gives each member's outcome; a change
  that failed anywhere then raises, of the first failure's class, with that note. A member the polls cannot
  reach is refused at the check without being asked again.
- Members' own events are merged into events() as they are seen, renumbered in the fleet's order, with
  "on MEMBER" in their note.
- Imports only the core and the config (the command line builds the members).
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

from lbtui.core.control import (
    BACKEND_ACTIONS,
    Conflict,
    ControlError,
    Controller,
    Event,
    Invalid,
    NotFound,
    ReloadResult,
    has_backend,
)
from lbtui.core.loopcall import poster
from lbtui.core.stats import BUCKETS, WindowView, bucket_value_us, merge_views
from lbtui.core.views import BackendView, ListenerView, RequestView, ServiceView, Snapshot

__all__ = ["MIXED", "FleetController", "FleetInfo", "MemberRow", "MemberStatus"]

POLL_SECONDS: Final = 0.5
POLL_DEADLINE: Final = 5.0  # a member whose poll has not answered this long is unreachable
FIRST_DEADLINE: Final = 5.0  # the first snapshot waits this long at most for every member's first answer
CALL_DEADLINE: Final = 10.0  # a change on one member (HaproxyController's own deadline is 8 s)
MAX_EVENTS: Final = 1000
REQUESTS: Final = 200  # recent requests kept per member
MIXED: Final = "mixed"

T = TypeVar("T")
_NAN = float("nan")


class NoAnswer(ControlError):
    """A member did not answer a change within the deadline: whether it was applied there is not known."""


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member as the last poll saw it."""

    name: str
    reachable: bool
    reason: str  # why not reachable ("" when it is)
    engine: str  # what it is (its snapshot's extra["engine"], if it says)


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One member's own row of a merged backend (None: the member has no such backend)."""

    member: str
    reachable: bool
    backend: BackendView | None


@dataclass(frozen=True, slots=True)
class FleetInfo:
    """`Snapshot.extra["fleet"]`: the members, and each merged row per member (keyed by (service, name))."""

    members: tuple[MemberStatus, ...]
    rows: Mapping[tuple[str, str], tuple[MemberRow, ...]] = field(default_factory=dict)
    diverged_services: Mapping[str, str] = field(default_factory=dict)

    @property
    def unreachable(self) -> tuple[MemberStatus, ...]:
        return tuple(m for m in self.members if not m.reachable)


class _Member:
    def __init__(self, name: str, controller: Controller) -> None:
        self.name = name
        self.controller = controller
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lbtui-fleet")
        self.snapshot: Snapshot | None = None
        self.lost = "no answer yet"
        self.answered = False  # a poll has ended (either way) or timed out
        self.requests: list[RequestView] = []
        self.polling: concurrent.futures.Future[None] | None = None
        self.polled_at = 0.0
        self.seen_event = 0  # the newest of its event ids taken into the fleet's log

    @property
    def reachable(self) -> bool:
        return self.snapshot is not None and not self.lost


def _outcome_text(name: str, error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if name in text else f"{name}: {text}"


class FleetController(Controller):
    """The members as one Controller; `members` maps each member's name (its URL) to its Controller.
    Call close() at the end: it closes the members too."""

    def __init__(
        self,
        members: Mapping[str, Controller],
        poll_seconds: float = POLL_SECONDS,
        call_deadline: float = CALL_DEADLINE,
        poll_deadline: float = POLL_DEADLINE,
    ) -> None:
        if not members:
            raise ValueError("a fleet needs at least one member")
        self._members = [_Member(name, controller) for name, controller in members.items()]
        self._poll_seconds = poll_seconds
        self._call_deadline = call_deadline
        self._poll_deadline = poll_deadline
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._changing = threading.Lock()  # one fleet change at a time
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._next_id = 1
        self._subscribers: list[Callable[[Event], None]] = []
        self._undo: list[Event] = []
        # (service, backend) -> why its members are not in step; (service, "") for a service's own settings
        self._diverged: dict[tuple[str, str], str] = {}
        # ... and each member's snapshot time when it was marked: only a newer read of every member clears it
        self._diverged_at: dict[tuple[str, str], tuple[float | None, ...]] = {}
        self._merged_key: tuple[float | None, ...] = ()
        self._merged_time = time.monotonic()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_forever, name="lbtui-fleet-poll", daemon=True)
        self._poller.start()

    @property
    def names(self) -> list[str]:
        return [m.name for m in self._members]

    def close(self) -> None:
        """Stop polling and close every member that can be closed (each on its own thread, within a deadline)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._poller is not threading.current_thread():
            self._poller.join(self._poll_seconds + 1.0)
        closing = []
        for m in self._members:
            close = getattr(m.controller, "close", None)
            if callable(close):
                closing.append(m.executor.submit(close))
        concurrent.futures.wait(closing, timeout=self._call_deadline)
        for m in self._members:
            m.executor.shutdown(wait=False, cancel_futures=True)

    # -- polling -----------------------------------------------------------------------------------------------
    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for m in self._members:
                if m.polling is None or m.polling.done():
                    m.polled_at = now
                    try:
                        m.polling = m.executor.submit(self._poll, m)
                    except RuntimeError:
                        return  # closing
                elif now - m.polled_at > self._poll_deadline:
                    with self._answered:
                        m.lost = f"{m.name}: no answer within {self._poll_deadline:g}s"
                        m.answered = True
                        self._answered.notify_all()
            self._stop.wait(self._poll_seconds)

    def _poll(self, m: _Member) -> None:
        try:
            snapshot = m.controller.snapshot()
            events = m.controller.events(MAX_EVENTS)
            requests = m.controller.recent_requests(REQUESTS)
        except Exception as error:  # ControlError, or an answer the member could not read: said, polls go on
            with self._answered:
                m.lost = _outcome_text(m.name, error)
                m.answered = True
                self._answered.notify_all()
            return
        with self._answered:
            m.snapshot = snapshot
            m.lost = str(snapshot.extra.get("connection_lost") or "")
            m.requests = requests
            m.answered = True
            taken = self._take_events(m, events)
            self._answered.notify_all()
            subscribers = list(self._subscribers)
        for event in taken:
            for callback in subscribers:
                callback(event)

    def _take_events(self, m: _Member, events: list[Event]) -> list[Event]:
        """The member's events not yet taken (its list is newest first), into the fleet's log. Call locked."""
        if events and events[0].id < m.seen_event:
            m.seen_event = 0  # its ids started again (a new process): all it has is new
        taken = []
        for e in reversed(events):
            if e.id <= m.seen_event:
                continue
            note = f"{e.note}; on {m.name}" if e.note else f"on {m.name}"
            taken.append(self._append(Event(0, e.time, e.actor, e.action, e.target, e.before, e.after, note)))
        if events:
            m.seen_event = max(m.seen_event, events[0].id)
        return taken

    def _append(self, event: Event) -> Event:
        event = replace(event, id=self._next_id)
        self._next_id += 1
        self._events.append(event)
        return event

    def _record(self, actor: str, action: str, target: str, before: Any, after: Any, note: str) -> Event:
        with self._lock:
            event = self._append(Event(0, time.time(), actor, action, target, before, after, note))
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(event)
        return event

    # -- reads -------------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._answered:
            self._answered.wait_for(lambda: all(m.answered for m in self._members), FIRST_DEADLINE)
            if all(m.snapshot is None for m in self._members):
                reasons = "; ".join(m.lost for m in self._members)
                raise ControlError(f"no instance of the fleet answered: {reasons}")
            return self._merge()

    def events(self, limit: int = 100) -> list[Event]:
        with self._lock:
            return list(self._events)[::-1][: max(0, limit)]

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """`callback` runs on the subscriber's loop (the one running now) for each new event, in order."""
        post = poster(callback)
        with self._lock:
            self._subscribers.append(post)

    def recent_requests(self, limit: int = 100) -> list[RequestView]:
        with self._lock:
            every = [r for m in self._members for r in m.requests]
        return sorted(every, key=lambda r: r.time, reverse=True)[: max(0, limit)]

    # -- merging -----------------------------------------------------------------------------------------------
    def _merge(self) -> Snapshot:
        """The members' newest snapshots as one. Call locked."""
        members = self._members
        key = tuple(m.snapshot.time if m.snapshot is not None else None for m in members) + tuple(
            float(m.reachable) for m in members
        )
        if key != self._merged_key:  # a new poll somewhere: a new snapshot (`ctl drain --wait` counts them)
            self._merged_key = key
            self._merged_time = time.monotonic()
        live = [m.snapshot for m in members if m.snapshot is not None and m.reachable]
        services: list[ServiceView] = []
        rows: dict[tuple[str, str], tuple[MemberRow, ...]] = {}
        for name in _ordered(s.name for m in members if m.snapshot is not None for s in m.snapshot.services):
            per = [(m, _service(m.snapshot, name)) for m in members]
            services.append(self._merge_service(name, per, rows))
        statuses = tuple(
            MemberStatus(
                m.name,
                m.reachable,
                "" if m.reachable else m.lost,
                str(m.snapshot.extra.get("engine", "")) if m.snapshot is not None else "",
            )
            for m in members
        )
        diverged_services = {s: why for (s, b), why in self._diverged.items() if not b}
        extra: dict[str, Any] = {
            "engine": f"a fleet of {len(members)}: " + ", ".join(m.name for m in members),
            "fleet": FleetInfo(statuses, rows, diverged_services),
        }
        averaged = [
            str(s.extra.get("latency") or "avg")
            for s in live
            if any(b.latency_avg_ms is not None for v in s.services for b in v.backends)
        ]
        if averaged:  # a member with averages only: the rows' avg is a mean (see _latency_avg)
            extra["latency"] = f"{averaged[0]}, request-weighted mean over instances"
        elif live:
            extra["latency"] = "p50/p99 of the instances' histograms added"
        unwired = [s.extra.get("request_log") for s in live]
        if unwired and all(unwired):
            extra["request_log"] = unwired[0]
        unmatched: Counter[Any] = Counter()
        for s in live:
            unmatched.update(dict(s.extra.get("unmatched", {})))
        extra["unmatched"] = dict(unmatched)
        if not live:
            extra["connection_lost"] = "; ".join(m.lost for m in members)
        listeners: dict[tuple[str, str, str, bool], ListenerView] = {}
        for s in live:
            for x in s.listeners:
                listeners.setdefault((x.name, x.mode, x.address, x.tls), x)
        return Snapshot(
            time=self._merged_time,
            uptime=min((s.uptime for s in live), default=0.0),
            listeners=tuple(listeners.values()),
            services=tuple(services),
            connections=sum(s.connections for s in live),
            extra=extra,
        )

    def _merge_service(
        self,
        name: str,
        per: list[tuple[_Member, ServiceView | None]],
        rows: dict[tuple[str, str], tuple[MemberRow, ...]],
    ) -> ServiceView:
        live = [s for m, s in per if s is not None and m.reachable]
        present = [s for _, s in per if s is not None]
        basis = live or present
        first = basis[0]
        backends = []
        for backend in _ordered(b.name for s in present for b in s.backends):
            members = tuple(
                MemberRow(m.name, m.reachable, _backend(s, backend) if s is not None else None)
                for m, s in per
            )
            rows[(name, backend)] = members
            backends.append(self._merge_backend(name, backend, members))
        splits = {s.split for s in live}
        algorithms = {_algorithm(s.algorithm) for s in live}
        if len(live) == len(per) and len(splits) == 1 and len(algorithms) == 1:
            self._in_step((name, ""))  # every member reachable, and in step
        why = self._diverged.get((name, ""), "")
        if why:
            backends = [replace(b, diverged=b.diverged or why) for b in backends]
        classes = _sum_tuples([s.status_classes for s in live], 6)
        return ServiceView(
            name=name,
            algorithm=first.algorithm if len({_algorithm(s.algorithm) for s in basis}) == 1 else MIXED,
            split=first.split,
            groups=tuple(_ordered(g for s in present for g in s.groups)),
            backup_group=_common([s.backup_group for s in basis], None),
            backends=tuple(backends),
            unrouted=sum(s.unrouted for s in live),
            window=_merge_windows([s.window for s in live]),
            ramp=_common([s.ramp for s in basis], None),
            panic=any(s.panic for s in live),
            retries=sum(s.retries for s in live),
            retries_refused=sum(s.retries_refused for s in live),
            queued=sum(s.queued for s in live),
            queue_length=sum(s.queue_length for s in live),
            queue_full=sum(s.queue_full for s in live),
            sticky=_common([s.sticky for s in basis], first.sticky),
            sticky_moved=sum(s.sticky_moved for s in live),
            sticky_unknown=sum(s.sticky_unknown for s in live),
            status_classes=(classes[0], classes[1], classes[2], classes[3], classes[4], classes[5]),
            latency_counts=_sum_counts([s.latency_counts for s in live]),
        )

    def _merge_backend(self, service: str, name: str, members: tuple[MemberRow, ...]) -> BackendView:
        live = [r.backend for r in members if r.backend is not None and r.reachable]
        present = [r.backend for r in members if r.backend is not None]
        first = (live or present)[0]
        pairs = Counter((b.admin_state, b.weight) for b in live)
        if pairs:
            (state, weight), agreeing = pairs.most_common(1)[0]
        else:
            state, weight, agreeing = first.admin_state, first.weight, 0
        states = {b.admin_state for b in live}
        healths = {_health(b.health_label) for b in live}
        mixed = tuple(
            what
            for what, values in (("state", states), ("weight", {b.weight for b in live}), ("health", healths))
            if len(values) > 1
        )
        key = (service, name)
        if agreeing == len(members) and not mixed:
            self._in_step(key)  # every member reachable, with the row, and in step
        addresses = _ordered(b.address for b in present)
        classes = _sum_tuples([b.status_classes for b in live], 6)
        drains = [b.drain_seconds for b in live if b.drain_seconds is not None]
        ejected = [b.ejected_left for b in live if b.ejected_left is not None]
        health = first.health if len(healths) <= 1 else MIXED
        return BackendView(
            name=name,
            service=service,
            group=_common([b.group for b in present], MIXED),
            address=addresses[0] if len(addresses) == 1 else f"{addresses[0]} +{len(addresses) - 1}",
            weight=weight,
            admin_state=state if len(states) <= 1 else MIXED,
            health=health,
            health_count=first.health_count if health != MIXED else 0,
            in_flight=sum(b.in_flight for b in live),
            requests=sum(b.requests for b in live),
            status_classes=(classes[0], classes[1], classes[2], classes[3], classes[4], classes[5]),
            bytes_in=sum(b.bytes_in for b in live),
            bytes_out=sum(b.bytes_out for b in live),
            connect_failures=sum(b.connect_failures for b in live),
            ewma_ms=_weighted_mean([(b.window.requests, b.ewma_ms) for b in live]),
            drain_seconds=max(drains) if drains else None,
            drained=bool(live) and all(b.drained for b in live),
            removing=any(b.removing for b in live),
            window=_merge_windows([b.window for b in live]),
            health_of=first.health_of if health != MIXED else 0,
            checked=any(b.checked for b in present),
            ejected_left=max(ejected) if ejected else None,
            ejections_total=sum(b.ejections_total for b in live),
            aborted=sum(b.aborted for b in live),
            latency_counts=_sum_counts([b.latency_counts for b in live]),
            sticky_requests=sum(b.sticky_requests for b in live),
            sticky_cookies=sum(b.sticky_cookies for b in live),
            latency_avg_ms=_latency_avg(live, present),
            instances=len(members),
            agreeing=agreeing,
            mixed=mixed,
            diverged=self._diverged.get(key, ""),
        )

    def _in_step(self, key: tuple[str, str]) -> None:
        """The members agree on `key` now: no longer diverged, if every member has been read anew since it was
        marked (a read from before the failed rollback says nothing). Call locked."""
        marked = self._diverged_at.get(key)
        if marked is None:
            return
        now = tuple(m.snapshot.time if m.snapshot is not None else None for m in self._members)
        if all(n is not None and n != then for n, then in zip(now, marked, strict=True)):
            del self._diverged[key], self._diverged_at[key]

    def _mark_diverged(self, key: tuple[str, str], why: str) -> None:
        with self._lock:
            self._diverged[key] = why
            self._diverged_at[key] = tuple(
                m.snapshot.time if m.snapshot is not None else None for m in self._members
            )

    # -- changes -----------------------------------------------------------------------------------------------
    def _on_all(
        self, call: Callable[[Controller], T], members: Sequence[_Member] | None = None
    ) -> dict[str, T | ControlError]:
        """`call` on every member at once, each on its own thread; what each answered, or why not."""
        chosen = self._members if members is None else members
        futures: dict[str, concurrent.futures.Future[T]] = {}
        out: dict[str, T | ControlError] = {}
        for m in chosen:
            try:
                futures[m.name] = m.executor.submit(call, m.controller)
            except RuntimeError:
                out[m.name] = ControlError(f"{m.name}: the fleet is closed")
        concurrent.futures.wait(futures.values(), timeout=self._call_deadline)
        for name, future in futures.items():
            if not future.done():
                if future.cancel():  # still queued behind a poll that hangs: never ran
                    out[name] = ControlError(f"{name}: busy, no answer within {self._call_deadline:g}s")
                else:
                    out[name] = NoAnswer(f"{name}: no answer within {self._call_deadline:g}s")
                continue
            error = future.exception()
            if error is None:
                out[name] = future.result()
            elif isinstance(error, ControlError):
                out[name] = error
            else:
                out[name] = ControlError(f"{name}: {type(error).__name__}: {error}")
        return out

    def check(self, action: str, target: str) -> None:
        """Every member's check (a member that the polls cannot reach now is refused without asking); the first
        refusal's class, naming each member that refused."""
        with (
            self._answered
        ):  # a member the polls cannot reach is refused at once, not asked again to time out
            self._answered.wait_for(lambda: all(m.answered for m in self._members), FIRST_DEADLINE)
            down = [
                (m.name, ControlError(m.lost or f"{m.name}: no answer yet"))
                for m in self._members
                if not m.reachable
            ]
        asked = [m for m in self._members if m.name not in dict(down)]
        refusals = down + [
            (name, result)
            for name, result in self._on_all(lambda c: c.check(action, target), asked).items()
            if isinstance(result, ControlError)
        ]
        if refusals:
            text = "; ".join(_outcome_text(name, error) for name, error in refusals)
            raise _like(refusals[0][1], f"not changed on any instance: {text}")

    def _row(self, action: str, target: str) -> tuple[str, str]:
        """The diverged key of a change's target: (service, backend) for a backend's, (service, "") else."""
        if action not in BACKEND_ACTIONS:
            return (target, "")
        with self._lock:
            for m in self._members:
                if m.snapshot is None or not has_backend(m.snapshot, target):
                    continue
                for s in m.snapshot.services:
                    for b in s.backends:
                        if b.name == target or f"{s.name}/{b.name.rpartition('/')[2]}" == target:
                            return (s.name, b.name)
        service, _, name = target.rpartition("/")
        return (service, name)

    def _change(
        self,
        action: str,
        target: str,
        actor: str,
        apply: Callable[[Controller], Event],
        expect: Callable[[Event], bool] | None = None,
        check_target: str | None = None,
        row: tuple[str, str] | None = None,
    ) -> Event:
        """Check on every member, apply on all, read back, roll back where it succeeded if it failed anywhere."""
        with self._changing:
            self.check(action, target if check_target is None else check_target)
            key = row or self._row(action, target)
            results = self._on_all(apply)
            done: dict[str, Event] = {}
            failed: dict[str, ControlError] = {}
            outcomes: dict[str, str] = {}
            for name, result in results.items():
                if isinstance(result, ControlError):
                    failed[name] = result
                    outcomes[name] = f"failed ({result})"
                    continue
                done[name] = result
                outcomes[name] = f"{_value(result.before)} -> {_value(result.after)}"
                if expect is not None and not expect(result):
                    failed[name] = Conflict(f"{name}: read back {_value(result.after)}, not what was asked")
                    outcomes[name] += " (read back: not as asked)"
            befores = [e.before for e in done.values()]
            before: Any = befores[0] if befores and all(b == befores[0] for b in befores) else None
            if not failed:
                after = next(iter(done.values())).after
                with self._lock:
                    self._diverged.pop(key, None)
                    self._diverged_at.pop(key, None)
                note = "; ".join(f"{name}: {text}" for name, text in outcomes.items())
                event = self._record(actor, action, target, before, after, f"on every instance: {note}")
                if actor != "undo" and len(set(map(repr, befores))) == 1:  # one before to go back to
                    self._undo.append(event)
                return event
            diverged = [f"{name}: outcome unknown" for name, e in failed.items() if isinstance(e, NoAnswer)]
            undo = [m for m in self._members if m.name in done]
            inverses = self._on_all(lambda c: _inverse(c, done[self._name_of(c)], actor), undo)
            for name, result in inverses.items():
                if isinstance(result, ControlError):
                    outcomes[name] += f"; rollback failed ({result})"
                    diverged.append(f"{name}: rollback failed")
                else:
                    outcomes[name] += "; rolled back"
            if diverged:
                self._mark_diverged(key, f"{action} failed, " + ", ".join(diverged))
            note = "; ".join(f"{name}: {text}" for name, text in outcomes.items())
            verdict = "DIVERGED" if diverged else "rolled back"
            self._record(actor, action, target, before, before, f"failed on {len(failed)}, {verdict}: {note}")
            raise _like(next(iter(failed.values())), f"{action} {target}: {verdict}: {note}")

    def _name_of(self, controller: Controller) -> str:
        return next(m.name for m in self._members if m.controller is controller)

    def set_state(self, backend: str, state: str, actor: str = "api") -> Event:
        return self._change(
            "state",
            backend,
            actor,
            lambda c: c.set_state(backend, state, actor),
            lambda e: bool(e.after == state),
        )

    def drain_then_maint(self, backend: str, actor: str = "api") -> Event:
        return self._change(
            "drain_then_maint", backend, actor, lambda c: c.drain_then_maint(backend, actor), _drained
        )

    def set_weight(self, backend: str, weight: int, actor: str = "api") -> Event:
        return self._change(
            "weight",
            backend,
            actor,
            lambda c: c.set_weight(backend, weight, actor),
            lambda e: bool(e.after == weight),
        )

    def add_backend(
        self,
        service: str,
        name: str,
        address: str,
        group: str = "default",
        weight: int = 1,
        actor: str = "api",
    ) -> Event:
        return self._change(
            "add",
            name,
            actor,
            lambda c: c.add_backend(service, name, address, group, weight, actor),
            check_target=service,
            row=(service, name),
        )

    def remove_backend(self, backend: str, actor: str = "api") -> Event:
        return self._change("remove", backend, actor, lambda c: c.remove_backend(backend, actor))

    def set_algorithm(self, service: str, algorithm: str, actor: str = "api") -> Event:
        return self._change(
            "algorithm",
            service,
            actor,
            lambda c: c.set_algorithm(service, algorithm, actor),
            lambda e: bool(e.after == algorithm),
        )

    def set_split(self, service: str, split: Mapping[str, int], actor: str = "api") -> Event:
        return self._change("split", service, actor, lambda c: c.set_split(service, split, actor))

    def flip(self, service: str, actor: str = "api") -> Event:
        return self._change("flip", service, actor, lambda c: c.flip(service, actor))

    def start_ramp(self, service: str, actor: str = "api") -> Event:
        return self._change("ramp", service, actor, lambda c: c.start_ramp(service, actor))

    def abort_ramp(self, service: str, actor: str = "api") -> Event:
        return self._change("abort_ramp", service, actor, lambda c: c.abort_ramp(service, actor))

    def undo(self, actor: str = "api") -> Event:
        """Revert the fleet's newest change not yet undone, as a fleet change of its own (actor "undo")."""
        del actor
        while self._undo:
            event = self._undo.pop()
            before = event.before
            if event.action in ("state", "drain_then_maint") and isinstance(before, str):
                return self.set_state(event.target, before, "undo")
            if event.action == "weight" and isinstance(before, int):
                return self.set_weight(event.target, before, "undo")
            if event.action == "add":
                return self.remove_backend(event.target, "undo")
            if event.action == "algorithm" and isinstance(before, str):
                return self.set_algorithm(event.target, before, "undo")
            if event.action in ("split", "flip"):
                return self.set_split(event.target, before or {}, "undo")
        raise Conflict("nothing to undo on the fleet")

    def reload(self, actor: str = "api") -> ReloadResult:
        """Every member reloads its own config; the changes of each, prefixed with its name."""
        results = self._on_all(lambda c: c.reload(actor))
        merged = ReloadResult(source=f"{len(results)} instances")
        refused: list[tuple[str, ControlError]] = []
        for name, result in results.items():
            if isinstance(result, ControlError):
                refused.append((name, result))
                continue
            merged.changes.extend(f"{name}: {line}" for line in result.changes)
            merged.events.extend(result.events)
            merged.restart_needed.extend(f"{name}: {line}" for line in result.restart_needed)
            merged.warnings.extend(f"{name}: {line}" for line in result.warnings)
        if refused:
            text = "; ".join(_outcome_text(name, error) for name, error in refused)
            done = len(results) - len(refused)
            raise _like(refused[0][1], f"reload refused ({done} of {len(results)} reloaded): {text}")
        return merged


# -- helpers -------------------------------------------------------------------------------------------------
def _like(error: ControlError, message: str) -> ControlError:
    """A ControlError of `error`'s kind (NotFound, Conflict, Invalid; a plain one for anything else)."""
    for kind in (NotFound, Conflict, Invalid):
        if type(error) is kind:
            return kind(message)
    return ControlError(message)


def _drained(event: Event) -> bool:
    return bool(event.after == "drain")


def _inverse(controller: Controller, event: Event, actor: str) -> Event:
    """Put back what `event` (a change this controller made) changed."""
    before = event.before
    if event.action == "state":
        return controller.set_state(event.target, before, actor)
    if event.action == "weight":
        return controller.set_weight(event.target, before, actor)
    if event.action == "add":
        return controller.remove_backend(event.target, actor)
    if event.action == "remove" and isinstance(before, dict):
        added = controller.add_backend(
            before["service"], event.target, before["address"], before["group"], before["weight"], actor
        )
        if before.get("state", "ready") != "ready":
            controller.set_state(event.target, before["state"], actor)
        return added
    if event.action == "algorithm":
        return controller.set_algorithm(event.target, before, actor)
    if event.action in ("split", "flip"):
        return controller.set_split(event.target, before or {}, actor)
    if event.action == "ramp":
        return controller.abort_ramp(event.target, actor)
    raise Conflict(f"{event.action} {event.target} cannot be put back")


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return "none" if value is None else str(value)


def _ordered(names: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(names))


def _service(snapshot: Snapshot | None, name: str) -> ServiceView | None:
    if snapshot is None:
        return None
    return next((s for s in snapshot.services if s.name == name), None)


def _backend(service: ServiceView, name: str) -> BackendView | None:
    return next((b for b in service.backends if b.name == name), None)


# HAProxy's `balance` words and lbtui's algorithms that are the same algorithm: a fleet of both is not "mixed".
_SAME_ALGORITHM: Final = {"roundrobin": "round_robin", "leastconn": "least_connections", "source": "ip_hash"}


def _health(label: str) -> str:
    """A health word as both engines mean it: HAProxy's `UP` is lbtui's `up`, and its `no check` (a server without
    checks) counts as up, as a backend of a service without checks does in lbtui."""
    word = label.lower()
    return "up" if word == "no check" else word


def _algorithm(name: str) -> str:
    return _SAME_ALGORITHM.get(name, name)


def _common(values: Sequence[T], otherwise: T) -> T:
    """The value every one has, else `otherwise`."""
    if values and all(v == values[0] for v in values):
        return values[0]
    return otherwise


def _sum_tuples(values: Sequence[tuple[int, ...]], size: int) -> tuple[int, ...]:
    return tuple(sum(v[i] for v in values) for i in range(size))


def _sum_counts(values: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """Latency counts since start summed, where every member has them (else none: a part is not the whole)."""
    if not values or any(len(v) != BUCKETS for v in values):
        return ()
    return _sum_tuples(values, BUCKETS)


def _merge_windows(windows: Sequence[WindowView]) -> WindowView:
    """Histograms merged where every window has one; else counts and rates only, with no percentile."""
    if windows and all(len(w.counts) == BUCKETS for w in windows):
        return replace(merge_views(windows), rps=sum(w.rps for w in windows))
    return WindowView(
        seconds=max((w.seconds for w in windows), default=0.0),
        requests=sum(w.requests for w in windows),
        errors=sum(w.errors for w in windows),
        rps=sum(w.rps for w in windows),
        p50_ms=_NAN,
        p90_ms=_NAN,
        p99_ms=_NAN,
        p999_ms=_NAN,
        counts=(),
    )


def _weighted_mean(parts: Sequence[tuple[int, float]]) -> float:
    """The mean of the values weighted by their requests (equally if none has any); NaN values left out."""
    known = [(weight, value) for weight, value in parts if not math.isnan(value)]
    if not known:
        return _NAN
    total = sum(weight for weight, _ in known)
    if total <= 0:
        return sum(value for _, value in known) / len(known)
    return sum(weight * value for weight, value in known) / total


def _histogram_mean_ms(counts: tuple[int, ...]) -> float:
    total = sum(counts)
    if not total:
        return _NAN
    return sum(bucket_value_us(i) * c for i, c in enumerate(counts) if c) / total / 1000.0


def _latency_avg(live: Sequence[BackendView], present: Sequence[BackendView]) -> float | None:
    """None where no member gives an average only; else the members' averages (a histogram's mean where a
    member has one) weighted by their requests in the window; NaN with no reachable member."""
    if not any(b.latency_avg_ms is not None for b in present):
        return None
    return _weighted_mean(
        [
            (
                b.window.requests,
                b.latency_avg_ms if b.latency_avg_ms is not None else _histogram_mean_ms(b.window.counts),
            )
            for b in live
        ]
    )
