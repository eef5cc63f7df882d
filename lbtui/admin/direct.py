"""ControllerClient: `lbtui ctl`'s client over a Controller it was handed (HAProxy's, built by lbtui/cli.py), in
place of the admin API's AdminClient.

Invariants:
- The same methods as AdminClient's that `ctl` calls, answering the same JSON as the admin API would
  (admin/schema.py): `ctl`'s output and exit codes are the same whatever it steers.
- `drain --wait` on a polled engine: each `backend()` read is a poll of its own, and `quiet_reads` of them in a
  row with nothing in flight make it drained.
- A refusal is an ApiError of the status the admin API gives its class (NotFound 404, Conflict 409, Invalid 400);
  any other ControlError (unreachable, no answer in time) is an Unreachable: one line, exit 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from lbtui.core.control import Conflict, ControlError, Controller, Invalid, NotFound, has_backend
from lbtui.core.ramp import DONE, RUNNING

from .client import ApiError, Unreachable
from .schema import backend_json, event_json, request_json, snapshot_json

T = TypeVar("T")
ACTOR: Final = "ctl"
REMOVE_WAIT: Final = 90.0  # past the controller's own deadline for a drain (HAProxy's: 60 s)
WAIT_POLL: Final = 0.1
NEW_POLL_WAIT: Final = 5.0  # backend() waits this long at most for a new poll
MAX_EVENTS: Final = 1000
_STATUS: dict[type[ControlError], int] = {NotFound: 404, Conflict: 409, Invalid: 400}


class ControllerClient:
    """AdminClient's face over `controller`; close() closes the controller."""

    # `ctl drain --wait`: a polled engine (HAProxy) is drained once nothing is in flight on this many polls in a
    # row (a request between two polls is not seen by either).
    quiet_reads = 3

    def __init__(self, controller: Controller, close: Callable[[], None]) -> None:
        self.controller = controller
        self._close = close
        self._read_at = -1.0  # the time of the snapshot backend() read last

    def close(self) -> None:
        self._close()

    def _do(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except ControlError as error:
            status = next((s for kind, s in _STATUS.items() if isinstance(error, kind)), None)
            if status is None:
                raise Unreachable(str(error)) from None
            raise ApiError(status, str(error)) from None

    def state(self) -> Any:
        return snapshot_json(self._do(self.controller.snapshot))

    def backend(self, name: str) -> Any:
        """The backend as the next snapshot has it: each read is a poll of its own (see quiet_reads), so this
        waits for a snapshot newer than the last one read (at most NEW_POLL_WAIT)."""
        deadline = time.monotonic() + NEW_POLL_WAIT
        snapshot = self._do(self.controller.snapshot)
        while snapshot.time == self._read_at and time.monotonic() < deadline:
            time.sleep(WAIT_POLL / 2)
            snapshot = self._do(self.controller.snapshot)
        self._read_at = snapshot.time
        for service in snapshot.services:
            for b in service.backends:
                if b.name == name or f"{b.service}/{b.name.rpartition('/')[2]}" == name:
                    return backend_json(b)
        raise ApiError(404, f"no backend named {name!r}")

    def events(self, limit: int = 100) -> Any:
        return {"events": [event_json(e) for e in self._do(lambda: self.controller.events(limit))]}

    def requests(self, limit: int = 20) -> Any:
        requests = self._do(lambda: self.controller.recent_requests(limit))
        log = self._do(self.controller.snapshot).extra.get("request_log")
        if not requests and isinstance(log, str) and log.startswith("not wired"):  # none will ever come
            raise ApiError(409, f"no requests to list: the request log is {log}")
        return {"requests": [request_json(r) for r in requests]}

    def set_state(self, name: str, action: str) -> Any:
        state = {"enable": "ready", "drain": "drain", "maint": "maint"}.get(action, action)
        return event_json(self._do(lambda: self.controller.set_state(name, state, ACTOR)))

    def set_weight(self, name: str, weight: int) -> Any:
        return event_json(self._do(lambda: self.controller.set_weight(name, weight, ACTOR)))

    def add_backend(self, service: str, name: str, address: str, group: str, weight: int) -> Any:
        return event_json(
            self._do(lambda: self.controller.add_backend(service, name, address, group, weight, ACTOR))
        )

    def remove_backend(self, name: str) -> Any:
        """The removal's first event; `ctl` exits after it, so this waits (within REMOVE_WAIT) for the
        controller's last event of the removal (deleted, or why not): a removal that runs in this process, as
        HAProxy's does, would otherwise stop half-way."""
        event = self._do(lambda: self.controller.remove_backend(name, ACTOR))
        # A fleet (lbtui/fleet.py) has as many removals as members: each may end with its own event, and the
        # fleet's row goes once it is gone everywhere (an lbtui member's removal ends on its server, unsaid).
        members = len(getattr(self.controller, "names", ())) or 1
        deadline = time.monotonic() + REMOVE_WAIT
        while time.monotonic() < deadline:
            events = self._do(lambda: self.controller.events(MAX_EVENTS))
            ended = sum(
                1
                for e in events
                if e.id > event.id
                and e.action == "remove"
                and e.target == event.target
                and e.before == "removing"
            )
            if ended >= members or (
                members > 1 and not has_backend(self._do(self.controller.snapshot), name)
            ):
                break
            time.sleep(WAIT_POLL)
        return event_json(event)

    def set_algorithm(self, service: str, algorithm: str) -> Any:
        return event_json(self._do(lambda: self.controller.set_algorithm(service, algorithm, ACTOR)))

    def set_split(self, service: str, split: dict[str, int]) -> Any:
        return event_json(self._do(lambda: self.controller.set_split(service, split, ACTOR)))

    def flip(self, service: str) -> Any:
        return event_json(self._do(lambda: self.controller.flip(service, ACTOR)))

    def reload(self) -> Any:
        return self._do(lambda: self.controller.reload(ACTOR)).json()

    def start_ramp(self, service: str) -> Any:
        return event_json(self._do(lambda: self.controller.start_ramp(service, ACTOR)))

    def follow_ramp(self, service: str, start: Any, show: Callable[[Any], object]) -> int:
        """The ramp `start` began runs on this process's controller (HAProxy's has no engine of its own to run
        it): stay until it ends, showing each of its events; 0 once done, 1 rolled back or aborted. Ctrl-C aborts
        it (the split goes back to what it was before the ramp)."""
        last = int(start["id"])
        shown_by = time.monotonic() + NEW_POLL_WAIT  # the ramp is on the snapshot after the next poll
        try:
            while True:
                events = self._do(lambda: self.controller.events(MAX_EVENTS))
                for e in reversed(events):
                    if e.id > last and e.action == "ramp" and e.target == service:
                        show(event_json(e))
                        last = e.id
                view = next(
                    (v for v in self._do(self.controller.snapshot).services if v.name == service), None
                )
                if view is None or (view.ramp is None and time.monotonic() > shown_by):
                    return 1
                if view.ramp is not None and view.ramp.state != RUNNING:
                    return 0 if view.ramp.state == DONE else 1
                time.sleep(WAIT_POLL)
        except KeyboardInterrupt:
            show(self.abort_ramp(service))
            return 1

    def abort_ramp(self, service: str) -> Any:
        return event_json(self._do(lambda: self.controller.abort_ramp(service, ACTOR)))

    def undo(self) -> Any:
        return event_json(self._do(lambda: self.controller.undo(ACTOR)))
