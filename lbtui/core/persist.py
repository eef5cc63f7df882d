"""Runtime state that survives a restart: `[state].file`, written after every change, restored at start.

What the file keeps is what an operator decided at runtime and the config does not say: per service its
algorithm and split; per config backend its admin state and weight; the backends added at runtime; the config
backends removed at runtime. Only differences from the config are written, so a value set back to the
config's is the config's again, and an edit of the config takes effect at the next start for everything
that was not changed at runtime. Where both say something, the file wins: that is its point.

What checks observed (health, outlier ejections, slow start, panic) is not kept: it is observed again. A canary
ramp is not resumed: while one is under way the file keeps the split from before it, so a restart mid-ramp
ends where an abort would. "Drain then maint" is kept as maint, and a backend being removed as removed.

The file is replaced atomically (a temporary file in the same directory, fsync, rename, fsync of the
directory): a crash leaves the old file or the new one, never half of one. A file that cannot be read as
state is reported in one line, moved aside to FILE.corrupt-<time> (never deleted), and the balancer starts
from the config. Entries that no longer fit the config (a service or backend gone, a value out of range) are
skipped with a warning naming their key path; the next write leaves them out.

Writes come from the Controller's events: a change asks for a write at the end of the current loop callback
(so the several events of one operation make one write), at most one write per MIN_INTERVAL; changes closer
together are written by the balancer's tick, and whatever is left at a clean shutdown by flush().
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from lbtui.core.control import ControlError, Event, InProcessController
from lbtui.core.model import AdminState, Backend, Service
from lbtui.core.ramp import RUNNING

VERSION = 1
MIN_INTERVAL = 0.1  # seconds between two writes at most once; rapid changes are coalesced by the tick
ACTOR = "state"  # the actor of the events a restore records
# Events that record an observation, not a decision: they change nothing the file keeps.
OBSERVED = frozenset({"health", "panic"})
SERVICE_KEYS = ("algorithm", "split", "backends", "added", "removed")
BACKEND_KEYS = ("state", "weight")
ADDED_KEYS = ("name", "address", "group", "weight", "state")


class StateFileError(Exception):
    """The file is not lbtui state (not JSON, another version, the wrong shape); the message says why."""


# -- what is kept -----------------------------------------------------------------------------------------
def _state_of(backend: Backend) -> str:
    if backend.maint_when_drained and backend.admin_state is AdminState.DRAIN:
        return AdminState.MAINT.value  # drain-then-maint: once restarted, nothing is in flight
    return backend.admin_state.value


def _effective_split(service: Service) -> dict[str, int] | None:
    ramp = service.ramp
    if ramp is not None and ramp.state == RUNNING:
        before: dict[str, int] | None = ramp.before
        return dict(before) if before else None
    return dict(service.split) if service.split else None


def capture(services: dict[str, Service]) -> dict[str, Any]:
    """The `services` part of the file: how each service differs from its config now (empty ones left out)."""
    out: dict[str, Any] = {}
    for s in services.values():
        config = s.config
        entry: dict[str, Any] = {}
        if s.algorithm_name != config.algorithm:
            entry["algorithm"] = s.algorithm_name
        split = _effective_split(s)
        if split != (dict(config.split) if config.split else None):
            entry["split"] = split
        configured = {b.name: b for b in config.backends}
        kept: set[str] = set()
        changed: dict[str, Any] = {}
        added: list[dict[str, Any]] = []
        for b in s.backends:
            if b.remove_deadline is not None:
                continue  # being removed: gone by the next start
            state = _state_of(b)
            c = configured.get(b.name)
            if c is not None and (c.host, c.port, c.group) == (b.host, b.port, b.group):
                kept.add(b.name)
                diff: dict[str, Any] = {}
                if state != c.state:
                    diff["state"] = state
                if b.weight != c.weight:
                    diff["weight"] = b.weight
                if diff:
                    changed[b.name] = diff
            else:
                added.append(
                    {
                        "name": b.name,
                        "address": b.address,
                        "group": b.group,
                        "weight": b.weight,
                        "state": state,
                    }
                )
        if changed:
            entry["backends"] = changed
        if added:
            entry["added"] = added
        removed = [name for name in configured if name not in kept]
        if removed:
            entry["removed"] = removed
        if entry:
            out[s.name] = entry
    return out


# -- the file ---------------------------------------------------------------------------------------------
def encode(services: dict[str, Any], wall_time: float) -> bytes:
    written = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_time))
    document = {"version": VERSION, "written": written, "services": services}
    return (json.dumps(document, indent=2, sort_keys=False) + "\n").encode()


def write_atomic(path: str, data: bytes) -> None:
    """Replace `path` by `data` so that a crash at any point leaves the old file or the new one whole."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # a platform whose directories cannot be opened: the rename is as durable as it gets
    try:
        os.fsync(dir_fd)  # the rename itself is durable only once the directory is
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _expect(value: Any, kind: type, path: str, what: str) -> None:
    if not isinstance(value, kind):
        raise StateFileError(f"{path}: expected {what}, got {type(value).__name__}")


def parse(data: bytes) -> dict[str, Any]:
    """The `services` part of a state file's bytes; StateFileError when it is not a state file of ours."""
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise StateFileError("not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as error:
        raise StateFileError(f"not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(document, dict):
        raise StateFileError(f"expected a JSON object at the top, got {type(document).__name__}")
    if "version" not in document:
        raise StateFileError("no version number")
    version = document["version"]
    if isinstance(version, bool) or version != VERSION:
        raise StateFileError(f"version {version!r}; this lbtui reads version {VERSION}")
    services: dict[str, Any] = document.get("services", {})
    _expect(services, dict, "services", "an object")
    for name, entry in services.items():
        base = f"services.{name}"
        _expect(entry, dict, base, "an object")
        if "backends" in entry:
            _expect(entry["backends"], dict, f"{base}.backends", "an object")
            for backend, values in entry["backends"].items():
                _expect(values, dict, f"{base}.backends.{backend}", "an object")
        if "added" in entry:
            _expect(entry["added"], list, f"{base}.added", "a list")
            for i, item in enumerate(entry["added"]):
                _expect(item, dict, f"{base}.added[{i}]", "an object")
        if "removed" in entry:
            _expect(entry["removed"], list, f"{base}.removed", "a list")
            for i, item in enumerate(entry["removed"]):
                _expect(item, str, f"{base}.removed[{i}]", "a backend name")
    return services


def read(path: str) -> dict[str, Any] | None:
    """The `services` part of the file at `path`; None when there is no file. StateFileError, OSError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return parse(data)


def set_aside(path: str, wall_time: float) -> str:
    """Move a file that is not state out of the way, keeping it for a human: FILE.corrupt-<time>."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(wall_time))
    target = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.lexists(target):
        n += 1
        target = f"{path}.corrupt-{stamp}-{n}"
    os.rename(path, target)
    return target


# -- restore ----------------------------------------------------------------------------------------------
def restore(controller: InProcessController, services: dict[str, Any]) -> tuple[int, list[str]]:
    """Apply a file's `services` over the balancer through `controller` (actor "state").

    Returns how many changes were made and a warning per entry skipped, each starting with its key path.
    Order: removals (so that a replaced backend's name is free), additions, states and weights, algorithms,
    splits (which may name the group of an added backend).
    """
    balancer = controller.balancer
    warnings: list[str] = []
    changes = 0

    def attempt(path: str, change: Callable[..., Event], *args: Any) -> bool:
        nonlocal changes
        try:
            change(*args, ACTOR)
        except ControlError as error:
            warnings.append(f"{path}: {error}")
            return False
        changes += 1
        return True

    states = {state.value for state in AdminState}
    for name, entry in services.items():
        base = f"services.{name}"
        service = balancer.services.get(name)
        if service is None:
            warnings.append(f"{base}: no service {name!r} in the config")
            continue
        for key in entry:
            if key not in SERVICE_KEYS:
                warnings.append(f"{base}.{key}: not a key of a service's state")
        configured = {b.name for b in service.config.backends}
        present = {b.name for b in service.backends}
        for i, backend in enumerate(entry.get("removed", ())):
            if backend in configured and backend in present:
                attempt(f"{base}.removed[{i}]", controller.remove_backend, backend)
        for i, item in enumerate(entry.get("added", ())):
            path = f"{base}.added[{i}]"
            unknown = [key for key in item if key not in ADDED_KEYS]
            backend = item.get("name")
            state = item.get("state", AdminState.READY.value)
            if unknown:
                warnings.append(f"{path}: unknown key {unknown[0]!r}")
            elif not isinstance(backend, str) or not isinstance(item.get("address"), str):
                warnings.append(f"{path}: needs a name and an address")
            elif state not in states:
                warnings.append(f"{path}.state: {state!r} is not a state (ready, drain, maint)")
            elif backend in balancer.backends:
                warnings.append(f"{path}: backend {backend!r} is in the config now; the config's is kept")
            elif (
                attempt(
                    path,
                    controller.add_backend,
                    name,
                    backend,
                    item["address"],
                    item.get("group", "default"),
                    item.get("weight", 1),
                )
                and state != AdminState.READY.value
            ):
                attempt(f"{path}.state", controller.set_state, backend, state)
        for backend, values in entry.get("backends", {}).items():
            path = f"{base}.backends.{backend}"
            b = balancer.backends.get(backend)
            if b is None or b.service != name:
                warnings.append(f"{path}: no backend {backend!r} in service {name!r} of the config")
                continue
            for key in values:
                if key not in BACKEND_KEYS:
                    warnings.append(f"{path}.{key}: not a key of a backend's state")
            if "weight" in values and values["weight"] != b.weight:
                attempt(f"{path}.weight", controller.set_weight, backend, values["weight"])
            if "state" in values and values["state"] != b.admin_state.value:
                attempt(f"{path}.state", controller.set_state, backend, values["state"])
        if "algorithm" in entry and entry["algorithm"] != service.algorithm_name:
            algorithm = entry["algorithm"]
            if isinstance(algorithm, str):
                attempt(f"{base}.algorithm", controller.set_algorithm, name, algorithm)
            else:
                warnings.append(f"{base}.algorithm: expected a name, got {algorithm!r}")
        if "split" in entry:
            split = entry["split"]
            current = dict(service.split) if service.split else None
            if split is not None and not isinstance(split, dict):
                warnings.append(f"{base}.split: expected an object or null, got {split!r}")
            elif (split or None) != current:
                attempt(f"{base}.split", controller.set_split, name, split or {})
    return changes, warnings


# -- the store --------------------------------------------------------------------------------------------
class StateFile:
    """The state file of one balancer: restored by start(), written after changes, flushed at shutdown.

    `schedule(fn)` runs `fn` soon, after the current callback (the event loop's call_soon); without it, only
    the balancer's tick writes. `say` reports, one line each, what a human should know.
    """

    def __init__(
        self,
        path: str,
        controller: InProcessController,
        say: Callable[[str], None],
        schedule: Callable[[Callable[[], None]], object] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.controller = controller
        self.balancer = controller.balancer
        self.say = say
        self.schedule = schedule
        self.wall_clock = wall_clock
        self.dirty = False
        self.failing = False  # the last write failed (said once; tried again at each change and at exit)
        self.last_write = -MIN_INTERVAL  # the balancer's clock at the last write attempt
        self.last_written: dict[str, Any] | None = None  # what the file holds, as far as we know
        self.write_seconds: list[float] = []  # how long each write took, newest last (the last 100)
        self._scheduled = False

    # -- start --------------------------------------------------------------------------------------------
    def start(self, fresh: bool = False) -> None:
        """Restore the file over the config (unless `fresh`), then write after every change from now on."""
        if fresh:
            self.say(
                f"state: --fresh: {self.path} not read; the config as written, and the next change replaces the file"
            )
        else:
            self._restore()
        self.controller.subscribe(self.changed)
        self.balancer.on_tick.append(self.tick)

    def _restore(self) -> None:
        name = os.path.basename(self.path)
        try:
            services = read(self.path)
        except StateFileError as error:
            self._corrupt(str(error))
            return
        except OSError as error:
            self.say(f"state: cannot read {self.path}: {error.strerror or error}; starting from the config")
            return
        if services is None:
            self.say(f"state: no {self.path} yet; starting from the config")
            return
        self.last_written = services
        try:
            with self.controller.noting(f"restored from {name}"):
                changes, warnings = restore(self.controller, services)
        except (TypeError, ValueError, AttributeError, KeyError) as error:
            # A value of a shape restore did not expect (a list where a name goes...): what was applied stays,
            # and the file is set aside for a human, never fatal.
            self._corrupt(f"a value of the wrong kind ({error})")
            return
        for warning in warnings:
            self.say(f"state: {self.path}: {warning}; skipped")
        if changes:
            self.say(f"state: restored {changes} change{'s' if changes != 1 else ''} from {self.path}")
        else:
            self.say(f"state: {self.path}: nothing to restore (the config as written)")
        if warnings:
            self.last_written = None  # the next change rewrites the file without what was skipped

    def _corrupt(self, problem: str) -> None:
        try:
            target = set_aside(self.path, self.wall_clock())
        except OSError as error:
            self.say(
                f"state: {self.path} is not lbtui state: {problem}; it could not be moved aside "
                f"({error.strerror or error}); starting from the config"
            )
            return
        self.say(
            f"state: {self.path} is not lbtui state: {problem}; moved to {target}; starting from the config"
        )

    # -- writes -------------------------------------------------------------------------------------------
    def changed(self, event: Event) -> None:
        """A Controller event: a decision is written soon; an observation (health, panic) is not."""
        if event.action in OBSERVED:
            return
        self.dirty = True
        if self.schedule is not None and not self._scheduled:
            self._scheduled = True
            self.schedule(self._soon)

    def _soon(self) -> None:
        self._scheduled = False
        if self.dirty and (self.failing or self.balancer.clock() - self.last_write >= MIN_INTERVAL):
            self.write()
        # else: the tick writes it, MIN_INTERVAL after the last write

    def tick(self, now: float) -> None:
        if self.dirty and not self.failing and now - self.last_write >= MIN_INTERVAL:
            self.write()

    def flush(self) -> None:
        """Write what is not written yet (at a clean shutdown)."""
        if self.dirty:
            self.write(at_exit=True)

    def write(self, at_exit: bool = False) -> bool:
        """Write the state now if it differs from what the file holds; False when the write failed."""
        self.dirty = False
        self.last_write = self.balancer.clock()
        services = capture(self.balancer.services)
        if services == self.last_written and not self.failing:
            return True
        started = time.perf_counter()
        try:
            write_atomic(self.path, encode(services, self.wall_clock()))
        except OSError as error:
            self.dirty = True
            if at_exit:
                self.say(
                    f"state: cannot write {self.path}: {error.strerror or error}; the latest changes are lost"
                )
            elif not self.failing:
                self.say(
                    f"state: cannot write {self.path}: {error.strerror or error}; runtime changes will not "
                    "survive a restart until it can be written (tried again at each change)"
                )
            self.failing = True
            return False
        self.write_seconds = [*self.write_seconds[-99:], time.perf_counter() - started]
        if self.failing:
            self.failing = False
            self.say(f"state: {self.path} written again")
        self.last_written = services
        return True
