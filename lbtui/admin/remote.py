"""RemoteController: the Controller of a running `lbtui serve`, through its admin API (`lbtui attach`).

The dashboard calls a Controller synchronously, several times a second, from its own event loop; this one
answers each call with one request on one kept-alive connection (admin/client.py, stdlib only), so the dashboard
runs unchanged against a remote engine.

- A change answers its audit Event; the API's refusal is the ControlError the in-process controller would
  raise, with the server's message, of the class its status says (404 NotFound, 409 Conflict, 400 Invalid; a
  refused reload is ReloadRefused with the file's issues); an unreachable server is a plain ControlError.
- The first request identifies the API (admin/client.py): against anything that is not lbtui's admin API (or
  not its version), the first snapshot raises ControlError with one line that says what answered, and
  `lbtui attach` exits with it before drawing anything.
- A snapshot the server cannot give (it stopped, the network went, or what answers on its address now is not
  lbtui's admin API, or its JSON is of another shape) is the last one, marked in `extra["connection_lost"]`
  with the reason; the dashboard shows that and goes on. No answer's JSON reaches the dashboard unread: what
  does not read back into a view is such a failure, never an exception. Requests are tried again at most
  every RETRY_SECONDS, so a server that hangs costs the dashboard one timeout per retry, not per redraw.
- Events are kept here (the newest MAX_EVENTS) and fetched by what is new (`?since=ID`); `subscribe` polls on a
  thread of its own, with its own connection, and hands each new event to the subscriber's loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
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
from lbtui.core.views import RequestView, Snapshot

from .client import AdminClient, ApiError, ClientError, segment
from .schema import (
    event_from_json,
    refusal_from_json,
    reload_from_json,
    request_from_json,
    snapshot_from_json,
)

TIMEOUT: Final = 3.0  # a redraw waits this long at most for a server that does not answer
# After a failure, the next try waits this long (the last snapshot shows meanwhile).
RETRY_SECONDS: Final = 1.0
IDLE_SECONDS: Final = 5.0  # a connection unused this long may have been closed by the server: open a new one
POLL_SECONDS: Final = 0.25  # how often subscribe asks for new events
EVENTS_FRESH: Final = 0.1  # events() asks the server again only after this long
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


class RemoteController(Controller):
    """A Controller over the admin API at `url`. Call it from one thread (the dashboard's); close() at the end."""

    def __init__(self, url: str, token: str | None = None, timeout: float = TIMEOUT) -> None:
        self.url = url
        self._token = token
        self._timeout = timeout
        self._client = AdminClient(url, token, actor="key", timeout=timeout)
        self.url = self._client.url
        self._last_used = 0.0
        self._last: Snapshot | None = None
        self._failed_at: float | None = None  # when the last request failed to reach the server
        self._lost = ""  # why, while it lasts
        self._lock = threading.Lock()  # the events kept and the subscribers, shared with the poller
        self._events: dict[int, Event] = {}
        self._newest = 0  # the newest event id kept
        self._synced = 0  # every event up to this id was asked for (what the server dropped is lost)
        self._notified = 0  # the newest event id the subscribers were given
        self._events_at = -1.0
        self._subscribers: list[Callable[[Event], None]] = []
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- plumbing --------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, actor: str = "key", body: dict[str, Any] | None = None) -> Any:
        now = time.monotonic()
        if self._failed_at is not None and now - self._failed_at < RETRY_SECONDS:
            raise ControlError(self._lost)
        if now - self._last_used > IDLE_SECONDS:
            self._client.close()  # the server closes idle connections: a change must not land on a dead one
        self._client.actor = actor
        try:
            value = self._client.request(method, path, body)
        except ApiError as error:
            self._last_used = time.monotonic()
            raise _REFUSALS.get(error.status, ControlError)(str(error)) from None
        except ClientError as error:
            self._failed_at = time.monotonic()
            self._lost = str(error)
            raise ControlError(self._lost) from None
        self._last_used = time.monotonic()
        self._failed_at = None
        self._lost = ""
        return value

    def _read(
        self,
        method: str,
        path: str,
        parse: Callable[[Any], T],
        actor: str = "key",
        body: dict[str, Any] | None = None,
    ) -> T:
        """`_request`, its answer read by `parse`; JSON of another shape fails as an unreachable server does."""
        value = self._request(method, path, actor, body)
        try:
            return self._client.parse(f"{method} {path}", value, parse)
        except ClientError as error:
            self._failed_at = time.monotonic()
            self._lost = str(error)
            raise ControlError(self._lost) from None

    def _change(self, method: str, path: str, actor: str, body: dict[str, Any] | None = None) -> Event:
        event = self._read(method, path, _event, actor, body)
        self._keep([event])
        return event

    @property
    def connection_lost(self) -> str:
        """Why the server cannot be reached, while it cannot; "" when it can."""
        return self._lost

    def close(self) -> None:
        """Stop polling and close the connections (the server goes on running)."""
        self._stop.set()
        poller, self._poller = self._poller, None
        if poller is not None and poller is not threading.current_thread():
            poller.join(TIMEOUT + POLL_SECONDS)
        self._client.close()

    # -- reads ---------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        try:
            snapshot = self._read("GET", "/api/v1/state", snapshot_from_json)
        except ControlError as error:
            if self._last is None:
                raise
            return replace(self._last, extra={**self._last.extra, "connection_lost": str(error)})
        if self._last is not None and snapshot.uptime < self._last.uptime:
            self._forget_events()  # another server (restarted): its event ids start again from 1
        self._last = snapshot
        return snapshot

    def recent_requests(self, limit: int = 100) -> list[RequestView]:
        path = f"/api/v1/requests?limit={max(1, min(limit, MAX_EVENTS))}"
        try:
            return self._read("GET", path, lambda value: [request_from_json(r) for r in value["requests"]])
        except ControlError:
            return []  # the snapshot says the connection is lost

    def events(self, limit: int = 100) -> list[Event]:
        if time.monotonic() - self._events_at >= EVENTS_FRESH:
            self._events_at = time.monotonic()
            try:
                self._fetch_events(self._request)
            except (ControlError, ClientError):
                pass  # the events kept so far, until the server answers again
        with self._lock:
            ids = sorted(self._events, reverse=True)[:limit]
            return [self._events[i] for i in ids]

    def _fetch_events(self, request: Callable[[str, str], Any]) -> None:
        """Ask for every event after the last one asked for, and keep them (BadAnswer: JSON of another shape)."""
        with self._lock:
            since = self._synced
        path = f"/api/v1/events?limit={MAX_EVENTS}&since={since}"
        events = self._client.parse(
            f"GET {path}", request("GET", path), lambda value: [_event(e) for e in value["events"]]
        )
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
        with self._lock:
            self._events.clear()
            self._newest = self._synced = self._notified = 0

    # -- push ----------------------------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """`callback` runs on the subscriber's loop (the one running now) for each new event, in order."""
        loop = asyncio.get_running_loop()

        def post(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(callback, event)
            except RuntimeError:
                self._stop.set()  # the subscriber's loop has closed: nobody is left to tell

        with self._lock:
            self._notified = self._newest  # what is kept already is not new
            self._subscribers.append(post)
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="lbtui-attach-events", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        # http.client is one thread's: a connection of its own. The dashboard's client identified the URL.
        client = AdminClient(self.url, self._token, timeout=self._timeout, identify=False)
        try:
            while not self._stop.wait(POLL_SECONDS):
                try:
                    self._fetch_events(client.request)
                except ClientError:
                    client.close()  # the snapshot says so; try again on the next round
        finally:
            client.close()

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
        now = time.monotonic()
        if now - self._last_used > IDLE_SECONDS:
            self._client.close()
        self._client.actor = actor
        try:
            answer = self._client.reload()
        except ApiError as error:
            self._last_used = time.monotonic()
            body = error.body
            if error.status == 400 and isinstance(body, dict) and isinstance(body.get("issues"), list):
                try:
                    refused = refusal_from_json(body)
                except (KeyError, TypeError, ValueError):
                    raise ControlError(f"reload refused: {error}") from None
                raise refused from None
            raise _REFUSALS.get(error.status, ControlError)(str(error)) from None
        except ClientError as error:
            raise ControlError(str(error)) from None
        self._last_used = time.monotonic()
        self._events_at = -1.0  # the reload's own events: asked for now
        events = self.events(MAX_EVENTS)
        try:
            return reload_from_json(answer, events)
        except (KeyError, TypeError, ValueError) as error:
            raise ControlError(f"POST /api/v1/reload: an answer of another shape ({error})") from None
