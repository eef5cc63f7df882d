"""RemoteController: the Controller of a running `lbtui serve`, through its admin API (`lbtui attach`).

Invariants:
- Every request runs on the controller's own asyncio loop, on the "lbtui-attach" thread, over httpx.AsyncClient
  (admin/aclient.py: pooled kept-alive connections, a deadline on every request). No caller ever blocks on a
  socket: a change's caller (the dashboard runs changes off its UI loop) waits for its result at most
  CHANGE_DEADLINE; close() stops the loop, closes the connections and joins the thread.
- The loop polls the server every POLL_SECONDS: the state, then the events after the newest one kept
  (`?since=ID`), and the access log's tail only while someone asked for it in the last INTEREST_SECONDS.
  snapshot(), events() and recent_requests() return the newest polled data at once; only the very first
  snapshot() waits, for the first poll (bounded by FIRST_DEADLINE). A change polls again before it answers, so
  the snapshot after it shows it.
- The first request identifies the API (admin/client.py's ClientBase judges every answer, as for `ctl`):
  against anything that is not lbtui's admin API (or not its version), the first snapshot raises ControlError
  with one line that says what answered, and `lbtui attach` exits with it before drawing anything; such a URL is
  not asked anything again. A change after a failure identifies the server first: no change reaches what was
  not identified.
- A change answers its audit Event; the API's refusal is the ControlError the in-process controller would
  raise, with the server's message, of the class its status says (404 NotFound, 409 Conflict, 400 Invalid; a
  refused reload is ReloadRefused with the file's issues); an unreachable server is a plain ControlError.
- While the server cannot give a snapshot (it stopped, hangs, the network went, what answers on its address now
  is not lbtui's admin API, or its JSON is of another shape), snapshot() is the last one, marked in
  `extra["connection_lost"]` with the reason; the polls go on (at most every RETRY_SECONDS), and the mark goes
  with the first good answer. No
  answer's JSON reaches the dashboard unread: what does not read back into a view is such a failure, never an
  exception. A server that started again (its pid changed, or its uptime went down) has new event ids: the
  events kept are forgotten.
- Events are kept here (the newest MAX_EVENTS); each subscriber gets each new event once, in order, on its own
  loop. httpx is imported when a RemoteController is made, never by `lbtui ctl`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

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
from lbtui.core.views import RequestView, Snapshot

from .client import ApiError, ClientError, NotAdminApi, reload_answer, segment
from .schema import (
    event_from_json,
    refusal_from_json,
    reload_from_json,
    request_from_json,
    snapshot_from_json,
)

if TYPE_CHECKING:
    from .aclient import AsyncAdminClient

TIMEOUT: Final = 3.0  # each request to the server
POLL_SECONDS: Final = 0.3  # how often the state and the new events are asked for
RETRY_SECONDS: Final = 1.0  # how often, while the server cannot be reached
INTEREST_SECONDS: Final = 2.0  # recent_requests() keeps the access log polled this long after it was called
FIRST_DEADLINE_CALLS: Final = 2  # the first snapshot waits for the identity and the state
CHANGE_CALLS: Final = 4  # a change's deadline, in requests: identify, change, the poll after it (bounded)
MAX_EVENTS: Final = 1000  # the API's limit

T = TypeVar("T")

# The API's refusals back into the classes the in-process controller raises (admin/api.py maps them there).
_REFUSALS: Final[dict[int, type[ControlError]]] = {404: NotFound, 409: Conflict, 400: Invalid}


def _event(value: Any) -> Event:
    """An event read back; its id orders and keys what is kept, so it must be a whole number."""
    event = event_from_json(value)
    if isinstance(event.id, bool) or not isinstance(event.id, int):
        raise TypeError("an event's id is not a whole number")
    return event


def _requests(value: Any) -> list[RequestView]:
    return [request_from_json(r) for r in value["requests"]]


class RemoteController(Controller):
    """A Controller over the admin API at `url`; any thread may call it. close() at the end.

    A bad URL raises ClientError (one line)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = TIMEOUT,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        from .aclient import AsyncAdminClient  # httpx imports rich: only where a dashboard attaches

        self._client: AsyncAdminClient = AsyncAdminClient(url, token, actor="key", timeout=timeout)
        self.url = self._client.url
        self._timeout = timeout
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()  # what the polls keep, shared with the callers' threads
        self._last: Snapshot | None = None
        self._pid: object = None  # the server's, from its identity: another pid is another server
        self._lost = ""  # why the server cannot be reached, while it cannot
        self._refused: NotAdminApi | None = None  # the URL was never the API: nothing more is asked
        self._first_poll = threading.Event()
        self._events: dict[int, Event] = {}
        self._newest = 0  # the newest event id kept
        self._synced = 0  # every event up to this id was asked for (what the server dropped is lost)
        self._notified = 0  # the newest event id the subscribers were given
        self._subscribers: list[Callable[[Event], None]] = []
        self._requests: list[RequestView] = []
        self._requests_limit = 0
        self._requests_wanted = -INTEREST_SECONDS  # when recent_requests() was last called (monotonic)
        self._closed = False
        # Loop-thread state (touched only on the controller's loop):
        self._polling: asyncio.Lock | None = None  # one poll at a time: a poll after a change lands last
        self._wake: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lbtui-attach", daemon=True)
        self._thread.start()

    # -- the loop's thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        poller = self._loop.create_task(self._poll_forever())
        try:
            self._loop.run_forever()
        finally:
            poller.cancel()
            finish_tasks(self._loop)
            self._loop.run_until_complete(self._client.aclose())
            finish_tasks(self._loop)
            self._loop.close()

    def close(self) -> None:
        """Stop polling, close the connections, stop the loop and its thread (the server goes on running)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:
            return  # the loop has closed already
        if self._thread is not threading.current_thread():
            self._thread.join(self._timeout + 1.0)

    def _call(self, coro: Coroutine[Any, Any, T], deadline: float) -> T:
        """Run `coro` on the controller's loop; wait for it at most `deadline`. ClientError -> ControlError."""
        closed = f"{self.url}: the connection to it is closed"
        if self._closed:
            coro.close()
            raise ControlError(closed)
        return call_on_loop(
            self._loop, coro, deadline, closed, f"no answer from {self.url} within {deadline:g}s"
        )

    # -- polling -------------------------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        self._wake = asyncio.Event()
        while True:
            started = self._loop.time()
            await self._poll()
            self._first_poll.set()
            if self._refused is not None:
                return  # never the API: nothing more to ask it
            # After a failure, the next try waits longer: a server that is down is not hammered.
            interval = max(self._poll_seconds, RETRY_SECONDS) if self._lost else self._poll_seconds
            try:
                async with asyncio.timeout(max(0.0, interval - (self._loop.time() - started))):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def _poll(self) -> None:
        """Read the state, the new events and (while wanted) the access log; keep them, or say why not."""
        if self._polling is None:
            self._polling = asyncio.Lock()
        async with self._polling:
            try:
                value = await self._client.request("GET", "/api/v1/state")
                snapshot = self._client.parse("GET /api/v1/state", value, snapshot_from_json)
                pid = (self._client.identity or {}).get("pid")
                with self._lock:
                    restarted = self._last is not None and (
                        snapshot.uptime < self._last.uptime or pid != self._pid
                    )
                    if restarted:
                        self._forget_events()  # another server (restarted): its event ids start again from 1
                    self._last, self._pid = snapshot, pid
                await self._fetch_events()
                with self._lock:
                    wanted = time.monotonic() - self._requests_wanted < INTEREST_SECONDS
                    limit = self._requests_limit
                if wanted:
                    path = f"/api/v1/requests?limit={limit}"
                    value = await self._client.request("GET", path)
                    requests = self._client.parse(f"GET {path}", value, _requests)
                    with self._lock:
                        self._requests = requests
            except NotAdminApi as error:
                if self._client.identity is None and self._last is None:
                    self._refused = error
                self._lost = str(error)
            except ClientError as error:
                self._lost = str(error)
            except Exception as error:  # an answer this code cannot read: said, and the polls go on
                self._lost = f"{self.url}: {type(error).__name__}: {error}"
            else:
                self._lost = ""

    async def _fetch_events(self) -> None:
        """Ask for every event after the last one asked for, and keep them (BadAnswer: JSON of another shape)."""
        with self._lock:
            since = self._synced
        path = f"/api/v1/events?limit={MAX_EVENTS}&since={since}"
        value = await self._client.request("GET", path)
        events = self._client.parse(f"GET {path}", value, lambda v: [_event(e) for e in v["events"]])
        self._keep(events, synced=max([since, *(e.id for e in events)]))

    def _keep(self, events: list[Event], synced: int = 0) -> None:
        """Keep `events` (any order), and hand the subscribers, in order, each event newer than the last they had.

        A change's own event may come before the events of others made just before it (they come with the next
        poll): a subscriber gets it once those did, unless the server no longer has them (`synced` is past).
        """
        with self._lock:
            for event in events:
                self._events[event.id] = event
            if len(self._events) > MAX_EVENTS:
                for old in sorted(self._events)[: len(self._events) - MAX_EVENTS]:
                    del self._events[old]
            if self._events:
                self._newest = max(self._newest, max(self._events))
            self._synced = max(self._synced, synced)
            fresh = []
            for i in sorted(i for i in self._events if i > self._notified):
                if i != self._notified + 1 and i > self._synced:
                    break  # the events before this one are yet to come
                fresh.append(self._events[i])
                self._notified = i
            subscribers = list(self._subscribers)
        for event in fresh:
            for callback in subscribers:
                callback(event)

    def _forget_events(self) -> None:
        """(Under self._lock.)"""
        self._events.clear()
        self._newest = self._synced = self._notified = 0

    @property
    def connection_lost(self) -> str:
        """Why the server cannot be reached, while it cannot; "" when it can."""
        return self._lost

    # -- reads ---------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        if not self._first_poll.is_set():
            deadline = self._timeout * FIRST_DEADLINE_CALLS
            if not self._first_poll.wait(deadline + 0.5):
                raise ControlError(f"no answer from {self.url} within {deadline:g}s")
        with self._lock:
            last, lost = self._last, self._lost
        if last is None:
            raise ControlError(lost or f"no answer from {self.url} yet")
        if lost:
            return replace(last, extra={**last.extra, "connection_lost": lost})
        return last

    def recent_requests(self, limit: int = 100) -> list[RequestView]:
        """The access log's tail as last polled; asking keeps it polled (the first ask fetches it soon)."""
        limit = max(1, min(limit, MAX_EVENTS))
        with self._lock:
            lapsed = (
                time.monotonic() - self._requests_wanted >= INTEREST_SECONDS or limit > self._requests_limit
            )
            self._requests_wanted = time.monotonic()
            self._requests_limit = limit
            requests = self._requests[:limit] if not self._lost else []
        if lapsed:
            self._poll_soon()
        return requests

    def events(self, limit: int = 100) -> list[Event]:
        with self._lock:
            ids = sorted(self._events, reverse=True)[:limit]
            return [self._events[i] for i in ids]

    def _poll_soon(self) -> None:
        def wake() -> None:
            if self._wake is not None:
                self._wake.set()

        try:
            self._loop.call_soon_threadsafe(wake)
        except RuntimeError:
            pass  # closed

    # -- push ----------------------------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """`callback` runs on the subscriber's loop (the one running now) for each new event, in order."""
        post = poster(callback)
        with self._lock:
            self._notified = self._newest  # what is kept already is not new
            self._subscribers.append(post)

    # -- changes: each on the loop, then a poll so that the next snapshot shows it ---------------------------
    def _change(self, method: str, path: str, actor: str, body: dict[str, Any] | None = None) -> Event:
        return self._call(self._changed(method, path, actor, body), self._timeout * CHANGE_CALLS)

    async def _changed(self, method: str, path: str, actor: str, body: dict[str, Any] | None) -> Event:
        value = await self._send(method, path, actor, body)
        try:
            event = self._client.parse(f"{method} {path}", value, _event)
        except ClientError as error:
            raise ControlError(str(error)) from None
        self._keep([event])
        await self._read_back()
        return event

    async def _read_back(self) -> None:
        """A poll after a change, so that the next snapshot shows it; bounded: the change is done either way."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._poll()
        except TimeoutError:
            pass  # the next poll shows it

    async def _send(
        self, method: str, path: str, actor: str, body: dict[str, Any] | None, reload: bool = False
    ) -> Any:
        """One change's request; its refusal as the in-process controller's class (a reload's, with the file's
        issues: ReloadRefused), any failure ControlError."""
        if self._refused is not None:
            raise ControlError(str(self._refused))
        try:
            return await self._client.request(method, path, body, actor)
        except ApiError as error:
            issues = error.body.get("issues") if isinstance(error.body, dict) else None
            if reload and error.status == 400 and isinstance(issues, list):
                try:
                    raise refusal_from_json(error.body) from None
                except (KeyError, TypeError, ValueError):
                    raise ControlError(f"reload refused: {error}") from None
            raise _REFUSALS.get(error.status, ControlError)(str(error)) from None
        except ClientError as error:
            self._lost = str(error)
            raise ControlError(str(error)) from None

    # -- changes -------------------------------------------------------------------------------------------
    def set_state(self, backend: str, state: str, actor: str = "api") -> Event:
        action = {"ready": "enable", "drain": "drain", "maint": "maint"}.get(state)
        if action is None:
            raise Invalid(f"{state!r} is not a state (ready, drain, maint)")
        return self._change("POST", f"/api/v1/backends/{segment(backend)}/{action}", actor)

    def drain_then_maint(self, backend: str, actor: str = "api") -> Event:
        return self._change("POST", f"/api/v1/backends/{segment(backend)}/drain-then-maint", actor)

    def set_weight(self, backend: str, weight: int, actor: str = "api") -> Event:
        path = f"/api/v1/backends/{segment(backend)}/weight"
        return self._change("PUT", path, actor, {"weight": weight})

    def add_backend(
        self,
        service: str,
        name: str,
        address: str,
        group: str = "default",
        weight: int = 1,
        actor: str = "api",
    ) -> Event:
        body = {"name": name, "address": address, "group": group, "weight": weight}
        return self._change("POST", f"/api/v1/services/{segment(service)}/backends", actor, body)

    def remove_backend(self, backend: str, actor: str = "api") -> Event:
        return self._change("DELETE", f"/api/v1/backends/{segment(backend)}", actor)

    def set_algorithm(self, service: str, algorithm: str, actor: str = "api") -> Event:
        path = f"/api/v1/services/{segment(service)}/algorithm"
        return self._change("PUT", path, actor, {"algorithm": algorithm})

    def set_split(self, service: str, split: Mapping[str, int], actor: str = "api") -> Event:
        return self._change("PUT", f"/api/v1/services/{segment(service)}/split", actor, dict(split))

    def flip(self, service: str, actor: str = "api") -> Event:
        return self._change("POST", f"/api/v1/services/{segment(service)}/flip", actor)

    def start_ramp(self, service: str, actor: str = "api") -> Event:
        return self._change("POST", f"/api/v1/services/{segment(service)}/ramp", actor)

    def abort_ramp(self, service: str, actor: str = "api") -> Event:
        return self._change("DELETE", f"/api/v1/services/{segment(service)}/ramp", actor)

    def undo(self, actor: str = "api") -> Event:
        return self._change("POST", "/api/v1/undo", actor)

    def reload(self, actor: str = "api") -> ReloadResult:
        """Have the server re-read its config file (POST /api/v1/reload): what changed, with the events of it
        that the server still keeps. A refused file raises ReloadRefused with the file's issues."""
        return self._call(self._reloaded(actor), self._timeout * CHANGE_CALLS)

    async def _reloaded(self, actor: str) -> ReloadResult:
        try:
            answer = await self._send("POST", "/api/v1/reload", actor, None, reload=True)
            self._client.checked("POST /api/v1/reload", answer, reload_answer)
        except ClientError as error:
            raise ControlError(str(error)) from None
        await self._read_back()  # the reload's own events come with it
        try:
            return reload_from_json(answer, self.events(MAX_EVENTS))
        except (KeyError, TypeError, ValueError) as error:
            raise ControlError(f"POST /api/v1/reload: an answer of another shape ({error})") from None
