"""HaproxyController: the Controller of one running HAProxy, through its Runtime API (`lbtui attach haproxy://...`,
`lbtui ctl --admin haproxy://...`).

Invariants:
- Every Runtime API call runs on the controller's own asyncio loop, on the "lbtui-haproxy" thread, under a
  deadline; a caller on another thread (the dashboard's loop, `ctl`) waits for its result at most that deadline
  and never blocks on a socket itself. close() stops the loop and joins the thread.
- The loop polls HAProxy every POLL_SECONDS (`show info`, `show stat`, `show servers state`); snapshot() returns
  the newest polled snapshot at once (only the first call waits, for the first poll, within the deadline). While
  HAProxy cannot be reached the last snapshot stays, with `extra["connection_lost"]` saying why, and a change
  raises ControlError with the reason.
- Mapping: each HAProxy backend is a ServiceView (frontends skipped, and a proxy that is a frontend with no
  servers, such as a stats page); each of its servers a BackendView. The admin state (ready/drain/maint) comes
  from `show servers state`, the health column is HAProxy's own status word ("UP", "DOWN 1/3", "NOLB", "MAINT",
  "no check"). In flight is `scur`; the queue (`qcur`) of the backend and its servers is the service's
  `queue_length` (a row has no queue column). Requests are `stot`; req/s and 5xx % are deltas between two polls
  and are never negative: a counter that goes down, or a new HAProxy process (`Info.restarted_since`), starts
  them again. HAProxy gives no percentiles: without its request log `latency_avg_ms` carries `rtime` (its
  average over the last 1024 requests) and the p50/p99 of the window stay NaN (shown empty), never an average
  under a percentile's name. With the request log wired (a ring named `lbtui`, requestlog.py) each server's
  window is the log's (every request counted, exact p50/p99, as lbtui's own engine), a service's is merged from
  its servers', `latency_avg_ms` is None, and recent_requests lists the log's newest lines.
- Polls and changes are serialised on the loop (one lock): a poll never reads a state half-way through a change.
  Every change made here is an Event with before/after read from HAProxy (after: read back), appended to the
  target's audit file (audit.py) that every lbtui process on that HAProxy shares: the file's events are this
  controller's too (read at start and before each poll and change), and what another lbtui process changed is
  known here, not news. A state or weight that differs on two polls in a row from what was known, that nobody
  here changed and no audit line explains, is an Event of actor "haproxy socket" (someone else on the socket); so
  is a server that appeared or vanished. A new HAProxy process is an Event "restart" with the pids before and
  after. A change or restart another lbtui process recorded already is not recorded again.
- Groups come from the groups file (groups.py; none: every server in "default"), or from add_backend's group
  (kept in the audit file). A service's split is its groups' shares of the ready servers' weights; set_split,
  flip, a ramp's steps and undo set weights (split.py: every raise before any lowering, never all-zero), read them
  back and record one event. A ramp (core.ramp.Ramp) is judged at each poll, on the loop, on each group's requests
  and 5xx since its step began (HAProxy's counters) and the rows' p99 where known; it runs in the process that
  started it. undo reverts the newest undoable change in the audit file (made through lbtui, by any process) that
  no undo line names.
- Headless: imports nothing of textual, rich or httpx, and nothing above the core but this package.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TypeVar

from lbtui.core.control import (
    Conflict,
    ControlError,
    Controller,
    Event,
    Invalid,
    NotFound,
    ReloadResult,
)
from lbtui.core.loopcall import call_on_loop, finish_tasks, poster
from lbtui.core.ramp import ABORTED, RUNNING, Ramp
from lbtui.core.stats import WindowView, merge_views
from lbtui.core.views import BackendView, RequestView, ServiceView, Snapshot

from .audit import AuditLog, Entry, audit_path
from .groups import DEFAULT_GROUP, Groups
from .requestlog import RequestLog
from .runtime import (
    MAX_WEIGHT,
    Info,
    RuntimeClient,
    RuntimeCommandError,
    RuntimeUnreachable,
    ServerState,
    StatRow,
)
from .split import Member, SplitRefused, ordered, plan, shares

__all__ = ["LATENCY_LABEL", "LOG_LATENCY_LABEL", "HaproxyController"]

POLL_SECONDS: Final = 0.5
TIMEOUT: Final = 2.0  # each Runtime API call; a caller waits for a change at most CHANGE_CALLS of them
CHANGE_CALLS: Final = 4  # a change reads the server, changes it and reads it back
QUIET_POLLS: Final = 3  # a drain is over when scur and qcur are 0 on this many polls in a row
DRAIN_DEADLINE: Final = 60.0  # remove / drain-then-maint give up after this long with sessions left
MAX_EVENTS: Final = 1000
# seconds: a change or restart seen here that another lbtui process recorded this recently is the same one
SEEN_TWICE: Final = 30.0
LATENCY_LABEL: Final = "avg (HAProxy, last 1024)"
LOG_LATENCY_LABEL: Final = "p50/p99 (HAProxy request log)"
SOCKET_ACTOR: Final = "haproxy socket"

T = TypeVar("T")
_NAN = float("nan")


@dataclass(frozen=True, slots=True)
class _Known:
    """What the last poll (or a change made here) knows of one server."""

    state: str
    weight: int


def _admin_state(s: ServerState) -> str:
    return "maint" if s.in_maint else "drain" if s.draining else "ready"


def _int(value: int | None) -> int:
    return value or 0


def _running(pid: int) -> bool:
    """Whether process `pid` runs on this machine (the audit file is local: its writers are too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, another user's
    return True


def _key(value: Any) -> tuple[str, str] | None:
    """An audit line's server key ([backend, server]) as a tuple; None for anything else."""
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[0], value[1]
    return None


class HaproxyController(Controller):
    """A Controller over one HAProxy at `url` (`haproxy:///path.sock` or `haproxy://HOST:PORT`).

    A bad URL raises ValueError (one line). Call close() at the end."""

    def __init__(
        self,
        url: str,
        timeout: float = TIMEOUT,
        poll_seconds: float = POLL_SECONDS,
        groups: Groups | None = None,
        audit_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self._client = RuntimeClient(url, timeout=timeout)
        self.url = str(self._client.address)
        self._timeout = timeout
        self._poll_seconds = poll_seconds
        self._groups = groups or Groups()
        self._lock = threading.Lock()  # events and subscribers, shared with callers' threads
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._entries: deque[Entry] = deque(maxlen=MAX_EVENTS)  # the audit's lines: undo reads them
        self._audit = AuditLog(Path(audit_file) if audit_file is not None else audit_path(self.url))
        # servers added into a group their name does not match (from the audit file, and add_backend)
        self._assigned: dict[tuple[str, str], str] = {}
        self._absorb(self._audit.read_new(), history=True)
        self._subscribers: list[Callable[[Event], None]] = []
        self._last: Snapshot | None = None
        self._lost = ""
        self._first_poll = threading.Event()
        self._closed = False
        # Loop-thread state (touched only on the controller's loop):
        self._known: dict[tuple[str, str], _Known] = {}
        self._info: Info | None = None
        self._info_seen = False  # a poll has read this process's servers (the next poll's new ones are news)
        self._counted: dict[tuple[str, str], tuple[float, int, int]] = {}  # (time, stot, 5xx) last poll
        self._names: dict[str, tuple[str, str]] = {}  # row name -> (backend, server), from the last poll
        self._drain_since: dict[tuple[str, str], float] = {}
        self._quiet: dict[tuple[str, str], int] = {}  # polls in a row with scur and qcur at 0
        self._removing: set[tuple[str, str]] = set()
        self._quiet_waiters: list[tuple[tuple[str, str], asyncio.Future[None]]] = []
        self._changes: asyncio.Lock | None = None
        # a change seen once on the socket, not recorded yet (see _poll); None: the server vanished
        self._suspect: dict[tuple[str, str], _Known | None] = {}
        self._remembered: dict[tuple[str, str], int] = {}  # each server's last weight above 0
        self._algorithms: dict[str, str] = {}  # backend -> `show stat`'s algo, from the last poll
        self._addresses: dict[tuple[str, str], str] = {}  # server -> ADDR:PORT, from the last poll
        self._ramps: dict[str, Ramp] = {}
        self._ramp_marks: dict[str, dict[tuple[str, str], tuple[int, int]]] = {}  # (stot, 5xx) at step start
        self._log = RequestLog(self._client)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lbtui-haproxy", daemon=True)
        self._thread.start()

    # -- the loop's thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        poller = self._loop.create_task(self._poll_forever())
        self._spawn(self._log.run())
        try:
            self._loop.run_forever()
        finally:
            poller.cancel()
            finish_tasks(self._loop)
            self._loop.close()

    def close(self) -> None:
        """Stop polling, stop the loop and its thread (HAProxy goes on running)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:
            return  # the loop has closed already
        if self._thread is not threading.current_thread():
            self._thread.join(self._timeout * CHANGE_CALLS + 1.0)
        self._audit.close()

    def _lock_changes(self) -> asyncio.Lock:
        if self._changes is None:
            self._changes = asyncio.Lock()
        return self._changes

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the controller's loop; wait for it at most the deadline of a change."""
        deadline = self._timeout * CHANGE_CALLS
        closed = f"{self.url}: the controller is closed"
        if self._closed:
            coro.close()
            raise ControlError(closed)
        try:
            return call_on_loop(
                self._loop, coro, deadline, closed, f"{self.url}: no answer within {deadline:g}s"
            )
        except RuntimeUnreachable as error:
            raise ControlError(str(error)) from None
        except RuntimeCommandError as error:
            text = str(error)
            kind = NotFound if "No such" in text else Conflict
            raise kind(text) from None
        except ValueError as error:
            raise Invalid(str(error)) from None

    # -- polling -------------------------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        while True:
            started = self._loop.time()
            try:
                async with self._lock_changes():
                    await self._poll()
                self._lost = ""
            except (RuntimeUnreachable, RuntimeCommandError, TimeoutError) as error:
                self._lost = str(error) or f"{self.url}: no answer within {self._timeout:g}s"
            except Exception as error:  # an answer this code cannot read: said, and the polls go on
                self._lost = f"{self.url}: {type(error).__name__}: {error}"
            finally:
                self._first_poll.set()
            await asyncio.sleep(max(0.0, self._poll_seconds - (self._loop.time() - started)))

    async def _poll(self) -> None:
        async with asyncio.timeout(self._timeout * 3):
            info = await self._client.show_info()
            rows = await self._client.show_stat()
            states = await self._client.show_servers_state()
            if self._last is None:
                await self._log.look()
        now = time.monotonic()
        # What other lbtui processes did (their audit lines) is theirs: not a change "seen on the socket".
        self._absorb(self._audit.read_new())
        if self._info is not None and info.restarted_since(self._info):
            self._log.reconnect(info.pid)  # the new process has a ring of its own
            self._record(
                "haproxy",
                "restart",
                "haproxy",
                {"pid": self._info.pid},
                {"pid": info.pid},
                "haproxy restarted: its counters start again from zero",
                seen=True,
            )
            self._counted.clear()
            for service in list(self._ramps):  # a new process has its config's weights, not the ramp's
                self._stop_ramp(service, "haproxy restarted: the weights are its config's again")
            self._known.clear()  # its servers are as its config says now: not someone's change
            self._suspect.clear()
            self._info_seen = False
        self._info = info
        by_server = {(s.backend, s.server): s for s in states}
        known: dict[tuple[str, str], _Known] = {}
        first = self._info_seen is False
        self._info_seen = True
        # A change seen on the socket is recorded on the second poll that sees it, unless another lbtui's audit
        # line has explained it by then (it writes its line after reading its change back).
        for key in self._known.keys() - by_server.keys():
            if key not in self._suspect:
                self._suspect[key] = None
                known[key] = self._known[key]
                continue
            del self._suspect[key]
            target = self._name_of(key, {**by_server, key: None})
            self._record(
                SOCKET_ACTOR, "remove", target, "present", None, "seen on the socket: deleted", seen=True
            )
        for key, s in by_server.items():
            seen = _Known(_admin_state(s), _int(s.uweight))
            if seen.weight > 0:
                self._remembered[key] = seen.weight
            before = self._known.get(key)
            changed = (before is None and not first) or (before is not None and before != seen)
            if changed and self._suspect.get(key, False) != seen:
                self._suspect[key] = seen
                if before is not None:
                    known[key] = before
                continue
            self._suspect.pop(key, None)
            if before is None and not first:
                target = self._name_of(key, by_server)
                after = {
                    "service": key[0],
                    "address": f"{s.addr}:{s.port}",
                    "group": self._groups.group_of(key[0], key[1], self._assigned),
                    "weight": seen.weight,
                }
                self._record(
                    SOCKET_ACTOR, "add", target, None, after, f"seen on the socket: {seen.state}", seen=True
                )
            if before is not None:
                target = self._name_of(key, by_server)
                if before.state != seen.state:
                    self._record(
                        SOCKET_ACTOR,
                        "state",
                        target,
                        before.state,
                        seen.state,
                        "seen on the socket",
                        seen=True,
                    )
                if before.weight != seen.weight:
                    self._record(
                        SOCKET_ACTOR,
                        "weight",
                        target,
                        before.weight,
                        seen.weight,
                        "seen on the socket",
                        seen=True,
                    )
                    self._stop_ramp(key[0], "weights changed on the socket")
            known[key] = seen
        self._known = known
        self._last = self._build(info, rows, by_server, now)
        self._wake_quiet_waiters()
        await self._tick_ramps(now)

    def _name_of(self, key: tuple[str, str], servers: Mapping[tuple[str, str], object]) -> str:
        """A server's row name: its own name where no other backend has a server of that name, else BE/SRV."""
        backend, server = key
        clash = sum(1 for _, other in servers if other == server) > 1
        return f"{backend}/{server}" if clash else server

    def _build(
        self, info: Info, rows: list[StatRow], states: Mapping[tuple[str, str], ServerState], now: float
    ) -> Snapshot:
        frontends = {r.pxname for r in rows if r.type == "frontend"}
        servers: dict[str, list[StatRow]] = {}
        backend_rows: dict[str, StatRow] = {}
        for r in rows:
            if r.type == "server":
                servers.setdefault(r.pxname, []).append(r)
            elif r.type == "backend":
                backend_rows[r.pxname] = r
        names: dict[str, tuple[str, str]] = {}
        logged = self._log.wired
        services = []
        counted: dict[tuple[str, str], tuple[float, int, int]] = {}
        for name, be in backend_rows.items():
            members = servers.get(name, [])
            if not members and name in frontends:
                continue  # a `listen` with no servers: a stats page, not a service
            views = []
            for r in members:
                key = (name, r.svname)
                row_name = self._name_of(key, states) if key in states else r.svname
                names[row_name] = key
                names[f"{name}/{r.svname}"] = key
                views.append(self._backend_view(row_name, r, states.get(key), now, counted))
            window = (merge_views if logged else _sum_windows)([v.window for v in views])
            classes = tuple(sum(v.status_classes[i] for v in views) for i in range(6))
            self._algorithms[name] = be.algo
            groups = self._service_groups(name, [v.group for v in views])
            split = None
            if len(groups) > 1:
                weighed = [Member(v.name, v.group, v.weight, v.admin_state == "ready", 0) for v in views]
                split = tuple(shares(weighed, groups).items())
            ramp = self._ramps.get(name)
            services.append(
                ServiceView(
                    name=name,
                    algorithm=be.algo or "?",
                    split=split,
                    groups=groups,
                    backup_group=None,
                    backends=tuple(views),
                    unrouted=0,
                    window=window,
                    ramp=ramp.view(now) if ramp is not None else None,
                    queue_length=_int(be.qcur) + sum(_int(r.qcur) for r in members),
                    status_classes=(classes[0], classes[1], classes[2], classes[3], classes[4], classes[5]),
                )
            )
        self._counted = counted
        self._names = names
        connections = sum(_int(r.scur) for r in rows if r.type == "frontend")
        return Snapshot(
            time=now,
            uptime=float(info.uptime_sec),
            listeners=(),
            services=tuple(services),
            connections=connections,
            extra={
                "engine": f"HAProxy {info.version} (pid {info.pid}) at {self.url}",
                "latency": LOG_LATENCY_LABEL if logged else LATENCY_LABEL,
                "request_log": self._log.status(),
            },
        )

    def _backend_view(
        self,
        name: str,
        r: StatRow,
        state: ServerState | None,
        now: float,
        counted: dict[tuple[str, str], tuple[float, int, int]],
    ) -> BackendView:
        key = (r.pxname, r.svname)
        stot, errors = _int(r.stot), _int(r.hrsp_5xx)
        then = self._counted.get(key)
        counted[key] = (now, stot, errors)
        if then is None or stot < then[1] or errors < then[2] or now <= then[0]:
            seconds, requests, failed = 0.0, 0, 0  # counted anew: no rate until the next poll
        else:
            seconds, requests, failed = now - then[0], stot - then[1], errors - then[2]
        logged = self._log.window(r.pxname, r.svname, now)
        window = logged or WindowView(
            seconds=seconds,
            requests=requests,
            errors=failed,
            rps=requests / seconds if seconds > 0 else 0.0,
            p50_ms=_NAN,
            p90_ms=_NAN,
            p99_ms=_NAN,
            p999_ms=_NAN,
            counts=(),
        )
        admin = _admin_state(state) if state is not None else "ready"
        if admin == "drain":
            since = self._drain_since.setdefault(key, now)
        else:
            self._drain_since.pop(key, None)
            since = None
        quiet = _int(r.scur) == 0 and _int(r.qcur) == 0
        self._quiet[key] = self._quiet.get(key, 0) + 1 if quiet else 0
        self._addresses[key] = r.addr
        return BackendView(
            name=name,
            service=r.pxname,
            group=self._groups.group_of(key[0], key[1], self._assigned),
            address=r.addr,
            weight=_int(state.uweight) if state is not None else _int(r.uweight),
            admin_state=admin,
            health=r.status or "?",
            health_count=0,
            in_flight=_int(r.scur),
            requests=stot,
            status_classes=(
                0,
                _int(r.hrsp_1xx),
                _int(r.hrsp_2xx),
                _int(r.hrsp_3xx),
                _int(r.hrsp_4xx),
                errors,
            ),
            bytes_in=_int(r.bin),  # as lbtui's own: what clients sent through it
            bytes_out=_int(r.bout),
            connect_failures=_int(r.econ),
            ewma_ms=_NAN,
            drain_seconds=now - since if since is not None else None,
            drained=since is not None and self._quiet[key] >= QUIET_POLLS,
            removing=key in self._removing,
            window=window,
            checked=bool(r.check_status),
            latency_avg_ms=float(r.rtime) if r.rtime is not None and logged is None else None,
        )

    def _service_groups(self, service: str, present: list[str]) -> tuple[str, ...]:
        """The groups file's groups of `service` (in its order) and "default" where a server is in it."""
        named = self._groups.of(service).names
        if DEFAULT_GROUP in present and DEFAULT_GROUP not in named:
            named = (*named, DEFAULT_GROUP)
        return named or (DEFAULT_GROUP,)

    def _wake_quiet_waiters(self) -> None:
        waiting = []
        for key, future in self._quiet_waiters:
            if future.done():
                continue
            if self._quiet.get(key, 0) >= QUIET_POLLS or key not in self._known:
                future.set_result(None)
            else:
                waiting.append((key, future))
        self._quiet_waiters = waiting

    # -- events --------------------------------------------------------------------------------------------
    def _record(
        self,
        actor: str,
        action: str,
        target: str,
        before: Any,
        after: Any,
        note: str = "",
        *,
        seen: bool = False,
        **extra: Any,
    ) -> Event:
        """Record an event here and in the audit file. `seen`: something this controller saw rather than did
        (someone on the socket, a restart): skipped when another lbtui process recorded it already. `extra`:
        what the audit line carries besides the event (undoable, undoes, key, weights, ramp, assigned)."""
        if seen:
            for entry in reversed(self._entries):
                e = entry.event
                same = (e.actor, e.action, e.target, e.before, e.after) == (
                    actor,
                    action,
                    target,
                    before,
                    after,
                )
                if same and entry.pid != self._audit.pid and abs(e.time - time.time()) < SEEN_TWICE:
                    return e
        others, entry = self._audit.append(
            lambda id: Entry(
                Event(id, time.time(), actor, action, target, before, after, note), self._audit.pid, extra
            )
        )
        self._absorb(others)
        self._keep(entry)
        return entry.event

    def _keep(self, entry: Entry) -> None:
        with self._lock:
            self._events.append(entry.event)
            self._entries.append(entry)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(entry.event)

    def _absorb(self, entries: list[Entry], history: bool = False) -> None:
        """Take in audit lines other processes wrote: their events join ours, and what they changed is known
        here (so this controller does not report it as a change seen on the socket). `history`: the lines
        read at start, before any poll: nothing to apply but the groups given to added servers."""
        for entry in entries:
            e = entry.event
            key = _key(entry.extra.get("key"))
            if key is not None and e.action == "add" and isinstance(entry.extra.get("assigned"), str):
                self._assigned[key] = entry.extra["assigned"]
            if key is not None and e.action == "remove" and e.after is None:
                self._assigned.pop(key, None)
            if not history:
                self._apply_seen(entry, key)
                self._keep(entry)
            else:
                with self._lock:
                    self._events.append(e)
                    self._entries.append(entry)

    def _apply_seen(self, entry: Entry, key: tuple[str, str] | None) -> None:
        e = entry.event
        if key is not None:
            known = self._known.get(key)
            if e.action == "state" and isinstance(e.after, str):
                self._known[key] = _Known(e.after, known.weight if known else 0)
            elif e.action == "weight" and isinstance(e.after, int):
                self._known[key] = _Known(known.state if known else "ready", e.after)
            elif e.action == "add" and isinstance(e.after, dict):
                self._known[key] = _Known("ready", int(e.after.get("weight", 1)))
            elif e.action == "remove" and e.after is None:
                self._known.pop(key, None)
        weights = entry.extra.get("weights")
        if isinstance(weights, dict):
            for name, weight in weights.items():
                server_key = _key(name.split("/", 1) if isinstance(name, str) else None)
                known = self._known.get(server_key) if server_key is not None else None
                if server_key is not None and known is not None and isinstance(weight, int):
                    self._known[server_key] = _Known(known.state, weight)
        if e.action in ("split", "flip", "ramp") and e.target in self._ramps:
            split = e.after if isinstance(e.after, dict) else None
            self._stop_ramp(e.target, f"{e.action} by {e.actor} in another lbtui process", split=split)

    def events(self, limit: int = 100) -> list[Event]:
        with self._lock:
            return list(self._events)[::-1][: max(0, limit)]

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """`callback` runs on the subscriber's loop (the one running now) for each new event, in order."""
        post = poster(callback)
        with self._lock:
            self._subscribers.append(post)

    def recent_requests(self, limit: int = 100) -> list[RequestView]:
        """The request log's newest requests, newest first ([] while it is not wired: the snapshot's
        extra["request_log"] says why)."""
        if not self._closed:
            self._log.ready.wait(self._timeout)  # the first look for the ring (and its dump), if not done yet
        return self._log.recent(max(0, limit))

    # -- reads ---------------------------------------------------------------------------------------------
    @property
    def request_log(self) -> RequestLog:
        """The reader of HAProxy's request log (its counters and state: read-only outside the loop)."""
        return self._log

    @property
    def connection_lost(self) -> str:
        return self._lost

    def snapshot(self) -> Snapshot:
        if not self._first_poll.wait(self._timeout * 3 + 0.5):
            raise ControlError(f"{self.url}: no answer within {self._timeout * 3:g}s")
        last, lost = self._last, self._lost
        if last is None:
            raise ControlError(lost or f"{self.url}: no answer yet")
        if lost:
            last = replace(last, extra={**last.extra, "connection_lost": lost})
        if self._audit.problem:  # events are kept, in this process only
            last = replace(last, extra={**last.extra, "audit": self._audit.problem})
        return last

    # -- changes -------------------------------------------------------------------------------------------
    def check(self, action: str, target: str) -> None:
        """As every Controller's, and the stats socket must be `level admin` (`show cli level`, HAProxy 2.0+):
        at level operator or user HAProxy answers every change "Permission denied"."""
        super().check(action, target)
        level = self._call(self._client.command("show cli level")).strip() or "unknown"
        if level != "admin":
            raise Conflict(f"{self.url}: the stats socket is at level {level}: changes need `level admin`")

    def _resolve(self, name: str) -> tuple[str, str]:
        """A row name, or BACKEND/SERVER, to HAProxy's (backend, server), by the last poll."""
        if self._closed:
            raise ControlError(f"{self.url}: the controller is closed")
        self.snapshot()  # the first poll has been made (or the reason it could not)
        key = self._names.get(name)
        if key is not None:
            return key
        if "/" in name:
            backend, _, server = name.partition("/")
            return backend, server  # HAProxy says if it has none such
        matches = [k for k in self._names.values() if k[1] == name]
        if len(set(matches)) > 1:
            raise Conflict(f"{name!r} is a server of several backends: name it BACKEND/{name}")
        raise NotFound(f"no server named {name!r} on {self.url}")

    async def _read(self, key: tuple[str, str]) -> _Known:
        for s in await self._client.show_servers_state(key[0]):
            if s.server == key[1]:
                return _Known(_admin_state(s), _int(s.uweight))
        raise RuntimeCommandError(f"No such server: {key[0]}/{key[1]}")

    def set_state(self, backend: str, state: str, actor: str = "api") -> Event:
        if state not in ("ready", "drain", "maint"):
            raise Invalid(f"{state!r} is not a state (ready, drain, maint)")
        key = self._resolve(backend)
        return self._call(self._set_state(key, backend, state, actor, undoable=True))

    async def _set_state(
        self, key: tuple[str, str], target: str, state: str, actor: str, note: str = "", **extra: Any
    ) -> Event:
        async with self._lock_changes():
            before = await self._read(key)
            await self._client.set_state(key[0], key[1], state)
            after = await self._read(key)
            self._known[key] = after
            return self._record(actor, "state", target, before.state, after.state, note, key=key, **extra)

    def set_weight(self, backend: str, weight: int, actor: str = "api") -> Event:
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise Invalid(f"a HAProxy weight is an integer 0-{MAX_WEIGHT}, not {weight!r}")
        key = self._resolve(backend)
        return self._call(self._set_weight(key, backend, weight, actor, undoable=True))

    async def _set_weight(
        self, key: tuple[str, str], target: str, weight: int, actor: str, note: str = "", **extra: Any
    ) -> Event:
        async with self._lock_changes():
            before = await self._read(key)
            await self._client.set_weight(key[0], key[1], weight)
            after = await self._read(key)
            self._known[key] = after
            return self._record(actor, "weight", target, before.weight, after.weight, note, key=key, **extra)

    async def _until_quiet(self, key: tuple[str, str]) -> bool:
        """True once scur and qcur have been 0 on QUIET_POLLS polls in a row; False at DRAIN_DEADLINE."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._quiet[key] = 0  # count from now: polls before the drain do not count
        self._quiet_waiters.append((key, future))
        try:
            async with asyncio.timeout(DRAIN_DEADLINE):
                await future
        except TimeoutError:
            return False
        return True

    def drain_then_maint(self, backend: str, actor: str = "api") -> Event:
        key = self._resolve(backend)
        return self._call(self._drain_then_maint(key, backend, actor))

    async def _drain_then_maint(self, key: tuple[str, str], target: str, actor: str) -> Event:
        event = await self._set_state(key, target, "drain", actor, "then maint once drained", undoable=True)
        self._spawn(self._maint_when_quiet(key, target, actor))
        return event

    async def _maint_when_quiet(self, key: tuple[str, str], target: str, actor: str) -> None:
        if not await self._until_quiet(key):
            self._record(actor, "state", target, "drain", "drain", f"still in use after {DRAIN_DEADLINE:g}s")
            return
        try:
            await self._set_state(key, target, "maint", actor, "drained")
        except (RuntimeUnreachable, RuntimeCommandError, TimeoutError) as error:
            self._record(actor, "state", target, "drain", "drain", f"maint failed: {error}")

    def add_backend(
        self,
        service: str,
        name: str,
        address: str,
        group: str = "default",
        weight: int = 1,
        actor: str = "api",
    ) -> Event:
        known = self._groups.known(service)
        if group not in known:
            raise Invalid(f"backend {service} has no group {group!r} (groups: {', '.join(known)})")
        return self._call(self._add(service, name, address, weight, actor, group, undoable=True))

    async def _add(
        self, service: str, name: str, address: str, weight: int, actor: str, group: str, **extra: Any
    ) -> Event:
        async with self._lock_changes():
            await self._client.add_server(service, name, address)
            key = (service, name)
            if weight != 1:
                await self._client.set_weight(service, name, weight)
            after = await self._read(key)
            self._known[key] = after
            note = extra.pop("note", "")
            if self._groups.group_of(service, name, {}) != group:
                self._assigned[key] = group
                extra["assigned"] = group
                kept = f"{name} is not in {group} by the groups file: kept in {group} for this HAProxy (its audit file)"
                note = f"{note}; {kept}" if note else kept
            return self._record(
                actor,
                "add",
                name,
                None,
                {"service": service, "address": address, "group": group, "weight": after.weight},
                note,
                key=key,
                **extra,
            )

    def remove_backend(self, backend: str, actor: str = "api") -> Event:
        """Drain now; once scur and qcur stay 0 (or DRAIN_DEADLINE passes: then it stays drained), maint and
        `del server` follow on the controller's loop, each an event."""
        key = self._resolve(backend)
        return self._call(self._remove(key, backend, actor, undoable=True))

    async def _remove(self, key: tuple[str, str], target: str, actor: str, **extra: Any) -> Event:
        if key in self._removing:
            raise Conflict(f"{target!r} is being removed already")
        drained = await self._set_state(key, target, "drain", actor, "removing")
        self._removing.add(key)
        self._spawn(self._remove_when_quiet(key, target, actor))
        known = self._known.get(key)
        before = {
            "service": key[0],
            "server": key[1],
            "address": self._addresses.get(key, ""),
            "group": self._groups.group_of(key[0], key[1], self._assigned),
            "weight": known.weight if known is not None else 1,
            "state": drained.before,
        }
        note = extra.pop("note", "")
        return self._record(actor, "remove", target, before, "removing", note, key=key, **extra)

    async def _remove_when_quiet(self, key: tuple[str, str], target: str, actor: str) -> None:
        try:
            if not await self._until_quiet(key):
                self._record(
                    actor, "remove", target, "removing", "drain", f"still in use after {DRAIN_DEADLINE:g}s"
                )
                return
            await self._set_state(key, target, "maint", actor, "removing: drained")
            async with self._lock_changes():
                await self._client.del_server(key[0], key[1])
                self._known.pop(key, None)
                self._assigned.pop(key, None)
            self._record(actor, "remove", target, "removing", None, "deleted", key=key)
        except (RuntimeUnreachable, RuntimeCommandError, TimeoutError) as error:
            self._record(actor, "remove", target, "removing", "failed", str(error))
        finally:
            self._removing.discard(key)

    # -- splits, flips and canary ramps (by weights: lbtui/haproxy/split.py) ----------------------------------
    async def _members(self, service: str) -> list[Member]:
        states = await self._client.show_servers_state(service)
        if not states:
            raise NotFound(f"no backend named {service!r} with servers on {self.url}")
        return [
            Member(
                s.server,
                self._groups.group_of(service, s.server, self._assigned),
                _int(s.uweight),
                _admin_state(s) == "ready",
                _int(s.iweight),
                self._remembered.get((service, s.server), 0),
            )
            for s in states
        ]

    def _split_groups(self, service: str) -> tuple[str, ...]:
        for view in self.snapshot().services:
            if view.name == service:
                return view.groups
        known = ", ".join(v.name for v in self.snapshot().services) or "none"
        raise NotFound(f"no service named {service!r} (services: {known})")

    def _check_split(self, service: str, split: Mapping[str, int]) -> dict[str, int]:
        groups = self._split_groups(service)
        if len(groups) < 2:
            raise Invalid(
                f"service {service!r} has one group ({groups[0]}): name its servers' groups in the groups file "
                "(--haproxy-groups) to split it"
            )
        clean: dict[str, int] = {}
        for group, percent in split.items():
            if group not in groups:
                raise Invalid(f"service {service!r} has no group {group!r} (groups: {', '.join(groups)})")
            if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
                raise Invalid(f"a share on HAProxy is a percent 0-100, not {percent!r} (for {group})")
            clean[group] = percent
        missing = [g for g in groups if g not in clean]
        if missing:
            raise Invalid(
                f"name every group of {service!r}: {', '.join(missing)} missing (e.g. blue=90 green=10)"
            )
        if sum(clean.values()) != 100:
            raise Invalid(f"the shares of a split on HAProxy add up to 100, not {sum(clean.values())}")
        return {g: clean[g] for g in groups}

    async def _write_split(
        self, service: str, split: Mapping[str, int]
    ) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Set the weights that make `split` (the changes lock held): the split before, the one read back, and
        the servers' weights read back. Raises first, then lowers; if HAProxy refuses one, the weights changed
        so far are put back."""
        members = await self._members(service)
        groups = list(split)
        before = shares(members, groups)
        target = plan(members, split, service, self._algorithms.get(service, ""))
        now = {m.server: m.weight for m in members}
        done: list[str] = []
        try:
            for server, weight in ordered(now, target):
                await self._client.set_weight(service, server, weight)
                done.append(server)
        except RuntimeCommandError as error:
            changed = {server: target[server] for server in done}
            for server, weight in ordered(changed, {server: now[server] for server in done}):
                await self._client.set_weight(service, server, weight)
            if "static" in str(error).lower():
                raise SplitRefused(
                    f"backend {service}: HAProxy accepts only weights 0% and 100% here (a static algorithm, e.g."
                    " `balance source` with map-based hashing): only all of it to one group; change `balance` or"
                    " `hash-type consistent` in haproxy.cfg and reload HAProxy for a finer split"
                ) from None
            raise
        read = await self._members(service)
        for m in read:
            key = (service, m.server)
            known = self._known.get(key)
            if known is not None:
                self._known[key] = _Known(known.state, m.weight)
        return before, shares(read, groups), {f"{service}/{m.server}": m.weight for m in read}

    def set_split(self, service: str, split: Mapping[str, int], actor: str = "api") -> Event:
        clean = self._check_split(service, split)
        return self._call(self._set_split(service, clean, actor, "split"))

    async def _set_split(
        self, service: str, split: dict[str, int], actor: str, action: str, **extra: Any
    ) -> Event:
        async with self._lock_changes():
            if actor != "ramp":
                self._stop_ramp(service, f"split changed by {actor}", actor)
            before, after, weights = await self._write_split(service, split)
            note = extra.pop("note", "")
            undoable = extra.pop("undoable", True)
            return self._record(
                actor, action, service, before, after, note, weights=weights, undoable=undoable, **extra
            )

    def flip(self, service: str, actor: str = "api") -> Event:
        view = next((v for v in self.snapshot().services if v.name == service), None)
        if view is None:
            self._split_groups(service)  # NotFound, naming the services
        if view is None or view.split is None or len(view.split) != 2:
            raise Conflict(f"service {service!r} needs a split of exactly two groups to flip")
        (a, wa), (b, wb) = view.split
        return self._call(self._set_split(service, {a: wb, b: wa}, actor, "flip"))

    def start_ramp(self, service: str, actor: str = "api") -> Event:
        view = next((v for v in self.snapshot().services if v.name == service), None)
        if view is None:
            self._split_groups(service)
        assert view is not None
        return self._call(self._start_ramp(view, actor))

    async def _start_ramp(self, view: ServiceView, actor: str) -> Event:
        service = view.name
        ramp_now = self._ramps.get(service)
        if ramp_now is not None and ramp_now.state == RUNNING:
            raise Conflict(f"a canary ramp is under way on {service!r} (R aborts it)")
        elsewhere = self._ramp_elsewhere(service, alive=True)
        if elsewhere is not None:
            raise Conflict(
                f"a canary ramp is under way on {service!r} in another lbtui process (pid {elsewhere.pid}):"
                " `lbtui ctl ramp --abort` stops it"
            )
        if view.split is None or len(view.split) != 2:
            raise Conflict(f"service {service!r} needs a split of exactly two groups to ramp")
        (stable, _), (canary, share) = view.split
        config = self._groups.of(service).ramp
        first = next((i for i, percent in enumerate(config.steps) if percent > share), None)
        if first is None:
            raise Conflict(f"{canary} has {share}% of {service!r} already: no step above it")
        now = time.monotonic()
        requests = sum(b.requests for b in view.backends if b.group == canary)
        ramp = Ramp(config, stable, canary, dict(view.split), first, now, requests)
        steps = " -> ".join(f"{p}%" for p in config.steps[first:])
        note = f"start: {canary} {steps}, {config.hold:g}s each"
        if all(math.isnan(b.window.p99_ms) for b in view.backends):
            note += "; judged on 5xx only (no p99 from HAProxy without its request log)"
        async with self._lock_changes():
            self._ramps[service] = ramp
            self._mark_step(service)
            try:
                before, after, weights = await self._write_split(service, ramp.first_split())
            except BaseException:
                del self._ramps[service]
                raise
            return self._record(
                actor, "ramp", service, before, after, note, weights=weights, ramp=self._ramp_meta(ramp)
            )

    def _ramp_meta(self, ramp: Ramp) -> dict[str, Any]:
        return {"state": ramp.state, "before": ramp.before}

    def _ramp_elsewhere(self, service: str, alive: bool = False) -> Entry | None:
        """The newest ramp line of `service` by another process, if it says that ramp is running (`alive`: and
        that process is still running on this machine)."""
        with self._lock:
            entries = list(self._entries)
        for entry in reversed(entries):
            if entry.event.target != service or entry.event.action not in ("ramp", "split", "flip"):
                continue
            meta = entry.extra.get("ramp")
            if entry.pid != self._audit.pid and isinstance(meta, dict) and meta.get("state") == RUNNING:
                return entry if not alive or _running(entry.pid) else None
            return None
        return None

    def _mark_step(self, service: str) -> None:
        """The servers' (stot, 5xx) now: the ramp judges the step on what they served since."""
        self._ramp_marks[service] = {
            key: (stot, errors) for key, (_, stot, errors) in self._counted.items() if key[0] == service
        }

    def _judged_view(self, service: str, view: ServiceView) -> ServiceView:
        """`view` with each row's window counting the requests and 5xx since the step began (HAProxy's counters)
        and the row's own p99 (NaN without the request log: the judge then looks at 5xx only)."""
        marks = self._ramp_marks.get(service, {})
        rows = []
        for b in view.backends:
            key = self._names.get(b.name) or (service, b.name)
            now = self._counted.get(key)
            if now is None:
                rows.append(b)
                continue
            # A server not counted when the step began (added since) has served all of its requests in it.
            mark = marks.get(key, (0, 0))
            requests, errors = now[1] - mark[0], now[2] - mark[1]
            if requests < 0 or errors < 0:  # counters started again (a restart): from zero
                requests, errors = now[1], now[2]
            # `stot` counts a request when it begins, `hrsp_5xx` when it is answered: never more errors than
            # requests in a window that began between the two.
            errors = min(errors, requests)
            rows.append(replace(b, window=replace(b.window, requests=requests, errors=errors)))
        return replace(view, backends=tuple(rows))

    async def _tick_ramps(self, now: float) -> None:
        """Each poll (the changes lock held): judge every running ramp on HAProxy's numbers, apply its split."""
        if self._last is None:
            return
        for view in self._last.services:
            ramp = self._ramps.get(view.name)
            if ramp is None or ramp.state != RUNNING:
                continue
            step = ramp.step
            decision = ramp.advance(self._judged_view(view.name, view), now)
            if ramp.step != step:
                self._mark_step(view.name)
            if decision is None:
                continue
            split = dict(view.split) if view.split else None
            if decision.split is None:
                self._record(
                    "ramp", "ramp", view.name, split, split, decision.note, ramp=self._ramp_meta(ramp)
                )
                continue
            try:
                before, after, weights = await self._write_split(view.name, decision.split)
            except (RuntimeUnreachable, RuntimeCommandError, TimeoutError, SplitRefused) as error:
                ramp.finish(ABORTED, f"HAProxy refused the split: {error}")
                self._record(
                    "ramp", "ramp", view.name, split, split, f"aborted: {error}", ramp=self._ramp_meta(ramp)
                )
                continue
            self._record(
                "ramp",
                "ramp",
                view.name,
                before,
                after,
                decision.note,
                weights=weights,
                ramp=self._ramp_meta(ramp),
            )

    def _stop_ramp(
        self, service: str, reason: str, actor: str = "ramp", split: dict[str, int] | None = None
    ) -> None:
        """A split changed by hand (here, on the socket, or by another lbtui) ends the ramp: the operator has
        taken over. `split`: the split now, where known better than by the last poll."""
        ramp = self._ramps.get(service)
        if ramp is None or ramp.state != RUNNING:
            return
        ramp.finish(ABORTED, reason)
        if split is None:
            view = next((v for v in self._last.services if v.name == service), None) if self._last else None
            split = dict(view.split) if view is not None and view.split else None
        self._record(actor, "ramp", service, split, split, f"aborted: {reason}", ramp=self._ramp_meta(ramp))

    def abort_ramp(self, service: str, actor: str = "api") -> Event:
        self._split_groups(service)
        return self._call(self._abort_ramp(service, actor))

    async def _abort_ramp(self, service: str, actor: str) -> Event:
        async with self._lock_changes():
            ramp = self._ramps.get(service)
            note = "aborted: split as before the ramp"
            if ramp is not None and ramp.state == RUNNING:
                ramp.finish(ABORTED, f"by {actor}")
                back = ramp.before or {}
                meta = self._ramp_meta(ramp)
            else:
                self._absorb(self._audit.read_new())
                elsewhere = self._ramp_elsewhere(service)
                if elsewhere is None:
                    raise Conflict(f"no canary ramp is under way on {service!r}")
                before_ramp = elsewhere.extra["ramp"].get("before")
                back = dict(before_ramp) if isinstance(before_ramp, dict) else {}
                meta = {"state": ABORTED, "before": back}
                note += f" (the ramp ran in lbtui process {elsewhere.pid})"
            before, after, weights = await self._write_split(service, back)
            return self._record(actor, "ramp", service, before, after, note, weights=weights, ramp=meta)

    # -- undo ---------------------------------------------------------------------------------------------
    def undo(self, actor: str = "api") -> Event:
        """Revert the newest change made through lbtui on this HAProxy (by any lbtui process: the audit file)
        not undone yet; a change seen on the socket is not lbtui's to undo."""
        if self._closed:
            raise ControlError(f"{self.url}: the controller is closed")
        self.snapshot()
        return self._call(self._undo(actor))

    async def _undo(self, actor: str) -> Event:
        del actor  # an undo is audited as actor "undo", as on lbtui's engine
        with self._audit.locked():  # two `ctl undo` at once never undo the same change
            self._absorb(self._audit.read_new())
            with self._lock:
                entries = list(self._entries)
            undone = {e.undoes for e in entries if e.undoes is not None}
            for entry in reversed(entries):
                if not entry.undoable or entry.event.id in undone:
                    continue
                try:
                    return await self._revert(entry)
                except NotFound:
                    continue  # its server is gone (deleted since): nothing to revert, the one before
            raise Conflict("nothing to undo")

    async def _revert(self, entry: Entry) -> Event:
        e = entry.event
        key = _key(entry.extra.get("key"))
        note = f"undoes #{e.id} ({e.actor}: {e.action} {e.target})"
        if e.action in ("state", "weight") and key is not None:
            if not any(k == key for k in self._names.values()):
                raise NotFound(f"{e.target} is gone")
            if e.action == "state":
                return await self._set_state(key, e.target, str(e.before), "undo", note, undoes=e.id)
            return await self._set_weight(key, e.target, int(e.before), "undo", note, undoes=e.id)
        if e.action == "add" and key is not None:
            if not any(k == key for k in self._names.values()):
                raise NotFound(f"{e.target} is gone")
            return await self._remove(key, e.target, "undo", note=note, undoes=e.id)
        if e.action == "remove" and key is not None and isinstance(e.before, dict):
            if key in self._removing or any(k == key for k in self._names.values()):
                raise Conflict(f"{e.target} is still being removed: undo it once `del server` is done")
            b = e.before
            group = str(b.get("group", DEFAULT_GROUP))
            if group not in self._groups.known(key[0]):
                group = DEFAULT_GROUP
            event = await self._add(
                key[0],
                key[1],
                str(b["address"]),
                int(b.get("weight", 1)),
                "undo",
                group,
                note=note,
                undoes=e.id,
            )
            if b.get("state") in ("drain", "maint"):
                await self._set_state(key, e.target, str(b["state"]), "undo", note)
            return event
        if e.action in ("split", "flip") and isinstance(e.before, dict):
            split = self._check_split(e.target, e.before)
            return await self._set_split(
                e.target, split, "undo", e.action, note=note, undoes=e.id, undoable=False
            )
        raise Invalid(f"cannot undo {e.action}")

    # -- what HAProxy cannot do at runtime -------------------------------------------------------------------
    def set_algorithm(self, service: str, algorithm: str, actor: str = "api") -> Event:
        raise Invalid(
            f"HAProxy cannot change `balance` at runtime: set `balance {algorithm}` in backend {service}'s config "
            "and reload HAProxy"
        )

    def reload(self, actor: str = "api") -> ReloadResult:
        raise Invalid(
            "reload is HAProxy's own (`systemctl reload haproxy`); lbtui does not manage its config yet"
        )


def _sum_windows(windows: list[WindowView]) -> WindowView:
    requests = sum(w.requests for w in windows)
    seconds = max((w.seconds for w in windows), default=0.0)
    return WindowView(
        seconds=seconds,
        requests=requests,
        errors=sum(w.errors for w in windows),
        rps=sum(w.rps for w in windows),
        p50_ms=_NAN,
        p90_ms=_NAN,
        p99_ms=_NAN,
        p999_ms=_NAN,
        counts=(),
    )
