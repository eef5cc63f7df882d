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
  them again. HAProxy gives no percentiles: `latency_avg_ms` carries `rtime` (its average over the last 1024
  requests) and the p50/p99 of the window stay NaN (shown empty), never an average under a percentile's name.
- Polls and changes are serialised on the loop (one lock): a poll never reads a state half-way through a change.
  Every change made here is an Event with before/after read from HAProxy (after: read back). A state or weight
  that differs on a poll from what was known, and that nobody here changed, is an Event of actor
  "haproxy socket" (someone else on the socket); so is a server that appeared or vanished between two polls of
  the same process. A new HAProxy process is an Event "haproxy restarted" with the
  pids before and after.
- Headless: imports nothing of textual, rich or httpx, and nothing above the core but this package.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
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
from lbtui.core.stats import WindowView
from lbtui.core.views import BackendView, RequestView, ServiceView, Snapshot

from .runtime import (
    MAX_WEIGHT,
    Info,
    RuntimeClient,
    RuntimeCommandError,
    RuntimeUnreachable,
    ServerState,
    StatRow,
)

__all__ = ["LATENCY_LABEL", "HaproxyController"]

POLL_SECONDS: Final = 0.5
TIMEOUT: Final = 2.0  # each Runtime API call; a caller waits for a change at most CHANGE_CALLS of them
CHANGE_CALLS: Final = 4  # a change reads the server, changes it and reads it back
QUIET_POLLS: Final = 3  # a drain is over when scur and qcur are 0 on this many polls in a row
DRAIN_DEADLINE: Final = 60.0  # remove / drain-then-maint give up after this long with sessions left
MAX_EVENTS: Final = 1000
LATENCY_LABEL: Final = "avg (HAProxy, last 1024)"
SOCKET_ACTOR: Final = "haproxy socket"
NOT_YET: Final = (
    "is not available on HAProxy yet (lbtui steers HAProxy's servers: state, weight, add, remove)"
)

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


class HaproxyController(Controller):
    """A Controller over one HAProxy at `url` (`haproxy:///path.sock` or `haproxy://HOST:PORT`).

    A bad URL raises ValueError (one line). Call close() at the end."""

    def __init__(self, url: str, timeout: float = TIMEOUT, poll_seconds: float = POLL_SECONDS) -> None:
        self._client = RuntimeClient(url, timeout=timeout)
        self.url = str(self._client.address)
        self._timeout = timeout
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()  # events and subscribers, shared with callers' threads
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._next_id = 1
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
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lbtui-haproxy", daemon=True)
        self._thread.start()

    # -- the loop's thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        poller = self._loop.create_task(self._poll_forever())
        try:
            self._loop.run_forever()
        finally:
            poller.cancel()
            for task in list(self._tasks):
                task.cancel()
            pending = [poller, *self._tasks]
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
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
        if self._closed:
            coro.close()
            raise ControlError(f"{self.url}: the controller is closed")

        async def bounded() -> T:
            async with asyncio.timeout(deadline):
                return await coro

        wrapped = bounded()
        try:
            future = asyncio.run_coroutine_threadsafe(wrapped, self._loop)
        except RuntimeError:  # the loop closed meanwhile
            wrapped.close()
            coro.close()
            raise ControlError(f"{self.url}: the controller is closed") from None
        try:
            return future.result(deadline + 0.5)
        except (TimeoutError, concurrent.futures.TimeoutError):
            future.cancel()
            raise ControlError(f"{self.url}: no answer within {deadline:g}s") from None
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
        now = time.monotonic()
        if self._info is not None and info.restarted_since(self._info):
            self._record(
                "haproxy",
                "restart",
                "haproxy",
                {"pid": self._info.pid},
                {"pid": info.pid},
                "haproxy restarted: its counters start again from zero",
            )
            self._counted.clear()
            self._known.clear()  # its servers are as its config says now: not someone's change
            self._info_seen = False
        self._info = info
        by_server = {(s.backend, s.server): s for s in states}
        known: dict[tuple[str, str], _Known] = {}
        first = self._info_seen is False
        self._info_seen = True
        for key in self._known.keys() - by_server.keys():
            target = self._name_of(key, {**by_server, key: None})
            self._record(SOCKET_ACTOR, "remove", target, "present", None, "seen on the socket: deleted")
        for key, s in by_server.items():
            seen = _Known(_admin_state(s), _int(s.uweight))
            before = self._known.get(key)
            if before is None and not first:
                target = self._name_of(key, by_server)
                after = {
                    "service": key[0],
                    "address": f"{s.addr}:{s.port}",
                    "group": "default",
                    "weight": seen.weight,
                }
                self._record(SOCKET_ACTOR, "add", target, None, after, f"seen on the socket: {seen.state}")
            if before is not None:
                target = self._name_of(key, by_server)
                if before.state != seen.state:
                    self._record(
                        SOCKET_ACTOR, "state", target, before.state, seen.state, "seen on the socket"
                    )
                if before.weight != seen.weight:
                    self._record(
                        SOCKET_ACTOR, "weight", target, before.weight, seen.weight, "seen on the socket"
                    )
            known[key] = seen
        self._known = known
        self._last = self._build(info, rows, by_server, now)
        self._wake_quiet_waiters()

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
            window = _sum_windows([v.window for v in views])
            classes = tuple(sum(v.status_classes[i] for v in views) for i in range(6))
            services.append(
                ServiceView(
                    name=name,
                    algorithm=be.algo or "?",
                    split=None,
                    groups=("default",),
                    backup_group=None,
                    backends=tuple(views),
                    unrouted=0,
                    window=window,
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
                "latency": LATENCY_LABEL,
                "request_log": "not wired: no per-request log or percentiles from HAProxy yet",
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
        window = WindowView(
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
        return BackendView(
            name=name,
            service=r.pxname,
            group="default",
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
            removing=key in self._removing,
            window=window,
            checked=bool(r.check_status),
            latency_avg_ms=float(r.rtime) if r.rtime is not None else None,
        )

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
    def _record(self, actor: str, action: str, target: str, before: Any, after: Any, note: str = "") -> Event:
        with self._lock:
            event = Event(self._next_id, time.time(), actor, action, target, before, after, note)
            self._next_id += 1
            self._events.append(event)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(event)
        return event

    def events(self, limit: int = 100) -> list[Event]:
        with self._lock:
            return list(self._events)[::-1][: max(0, limit)]

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """`callback` runs on the subscriber's loop (the one running now) for each new event, in order."""
        loop = asyncio.get_running_loop()

        def post(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(callback, event)
            except RuntimeError:
                pass  # the subscriber's loop has closed

        with self._lock:
            self._subscribers.append(post)

    def recent_requests(self, limit: int = 100) -> list[RequestView]:
        del limit
        return []  # no request log is wired yet (the snapshot's extra["request_log"] says so)

    # -- reads ---------------------------------------------------------------------------------------------
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
            return replace(last, extra={**last.extra, "connection_lost": lost})
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
        return self._call(self._set_state(key, backend, state, actor))

    async def _set_state(
        self, key: tuple[str, str], target: str, state: str, actor: str, note: str = ""
    ) -> Event:
        async with self._lock_changes():
            before = await self._read(key)
            await self._client.set_state(key[0], key[1], state)
            after = await self._read(key)
            self._known[key] = after
            return self._record(actor, "state", target, before.state, after.state, note)

    def set_weight(self, backend: str, weight: int, actor: str = "api") -> Event:
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise Invalid(f"a HAProxy weight is an integer 0-{MAX_WEIGHT}, not {weight!r}")
        key = self._resolve(backend)
        return self._call(self._set_weight(key, backend, weight, actor))

    async def _set_weight(self, key: tuple[str, str], target: str, weight: int, actor: str) -> Event:
        async with self._lock_changes():
            before = await self._read(key)
            await self._client.set_weight(key[0], key[1], weight)
            after = await self._read(key)
            self._known[key] = after
            return self._record(actor, "weight", target, before.weight, after.weight)

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
        event = await self._set_state(key, target, "drain", actor, "then maint once drained")
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
        if group != "default":
            raise Invalid("groups are not available on HAProxy yet: add the server without --group")
        return self._call(self._add(service, name, address, weight, actor))

    async def _add(self, service: str, name: str, address: str, weight: int, actor: str) -> Event:
        async with self._lock_changes():
            await self._client.add_server(service, name, address)
            key = (service, name)
            if weight != 1:
                await self._client.set_weight(service, name, weight)
            after = await self._read(key)
            self._known[key] = after
            return self._record(
                actor,
                "add",
                name,
                None,
                {"service": service, "address": address, "group": "default", "weight": after.weight},
            )

    def remove_backend(self, backend: str, actor: str = "api") -> Event:
        """Drain now; once scur and qcur stay 0 (or DRAIN_DEADLINE passes: then it stays drained), maint and
        `del server` follow on the controller's loop, each an event."""
        key = self._resolve(backend)
        return self._call(self._remove(key, backend, actor))

    async def _remove(self, key: tuple[str, str], target: str, actor: str) -> Event:
        if key in self._removing:
            raise Conflict(f"{target!r} is being removed already")
        await self._set_state(key, target, "drain", actor, "removing")
        self._removing.add(key)
        self._spawn(self._remove_when_quiet(key, target, actor))
        return self._record(actor, "remove", target, "drain", "removing")

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
            self._record(actor, "remove", target, "removing", None, "deleted")
        except (RuntimeUnreachable, RuntimeCommandError, TimeoutError) as error:
            self._record(actor, "remove", target, "removing", "failed", str(error))
        finally:
            self._removing.discard(key)

    # -- what HAProxy cannot do at runtime, or lbtui does not do on it yet ----------------------------------
    def set_algorithm(self, service: str, algorithm: str, actor: str = "api") -> Event:
        raise Invalid(
            f"HAProxy cannot change `balance` at runtime: set `balance {algorithm}` in backend {service}'s config "
            "and reload HAProxy"
        )

    def set_split(self, service: str, split: Mapping[str, int], actor: str = "api") -> Event:
        raise Invalid(f"split {NOT_YET}")

    def flip(self, service: str, actor: str = "api") -> Event:
        raise Invalid(f"flip {NOT_YET}")

    def start_ramp(self, service: str, actor: str = "api") -> Event:
        raise Invalid(f"a canary ramp {NOT_YET}")

    def abort_ramp(self, service: str, actor: str = "api") -> Event:
        raise Invalid(f"a canary ramp {NOT_YET}")

    def undo(self, actor: str = "api") -> Event:
        raise Invalid(f"undo {NOT_YET}")

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
