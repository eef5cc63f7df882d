"""The audit file of one HAProxy target: every change lbtui made on it (and the restarts and changes by others it
saw), one JSON line each, shared by every lbtui process that steers that HAProxy (the dashboard, each `ctl`).

Where: `$LBTUI_HAPROXY_AUDIT_DIR`, else `$XDG_STATE_HOME/lbtui/haproxy`, else `~/.local/state/lbtui/haproxy`;
the file is named from the target's URL (`haproxy:///run/haproxy/admin.sock` ->
`run_haproxy_admin.sock.jsonl`, `haproxy://127.0.0.1:9999` -> `127.0.0.1_9999.jsonl`).

Invariants:
- Every read and write of the file happens under an exclusive flock of its `.lock` file (never of the data file
  itself: a trim replaces the data file). A line is written whole, with O_APPEND, by one write.
- Ids are the file's: a new event's id is one more than the highest id in the file, read under the lock just
  before it is written, so ids are unique and rising across processes. Lines already read are not read again
  (an id at or below the highest one read is skipped, so a trim that rewrote the file adds nothing twice).
- Bounded: once the file has more than twice `keep` lines, the newest `keep` are written to a new file that
  replaces it (atomically, os.replace).
- A file that cannot be written (a read-only home, a full disk) never stops a change: the event is kept in
  memory, and `problem` says why the audit is not kept.
- A line carries the Event's fields and: `pid` (the process that wrote it), `undoable`, `undoes` (the id an undo
  reverted), `weights` (servers' weights after a split), `ramp` (a ramp's state and the split before it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from lbtui.core.control import Event

__all__ = ["AUDIT_DIR_ENV", "KEEP", "AuditLog", "Entry", "audit_dir", "audit_path"]

AUDIT_DIR_ENV: Final = "LBTUI_HAPROXY_AUDIT_DIR"
KEEP: Final = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the file: the event and what lbtui needs besides (who wrote it, undo, split weights)."""

    event: Event
    pid: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def undoable(self) -> bool:
        return bool(self.extra.get("undoable"))

    @property
    def undoes(self) -> int | None:
        value = self.extra.get("undoes")
        return value if isinstance(value, int) else None

    def json(self) -> str:
        e = self.event
        line = {
            "id": e.id,
            "time": e.time,
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "before": e.before,
            "after": e.after,
            "note": e.note,
            "pid": self.pid,
            **self.extra,
        }
        return json.dumps(line, separators=(",", ":"), default=str)


def _entry(line: str) -> Entry | None:
    try:
        data = json.loads(line)
        event = Event(
            int(data["id"]),
            float(data["time"]),
            str(data["actor"]),
            str(data["action"]),
            str(data["target"]),
            data.get("before"),
            data.get("after"),
            str(data.get("note", "")),
        )
        known = {"id", "time", "actor", "action", "target", "before", "after", "note", "pid"}
        extra = {k: v for k, v in data.items() if k not in known}
        return Entry(event, int(data.get("pid", 0)), extra)
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign line: skipped, never fatal


def audit_dir() -> Path:
    given = os.environ.get(AUDIT_DIR_ENV)
    if given:
        return Path(given).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "lbtui" / "haproxy"


def audit_path(url: str, folder: Path | None = None) -> Path:
    """The audit file of the HAProxy at `url` (its canonical form: `haproxy:///path` or `haproxy://host:port`)."""
    where = url.removeprefix("haproxy://").strip("/") or "haproxy"
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", where).strip("_") or "haproxy"
    return (folder or audit_dir()) / f"{name}.jsonl"


class AuditLog:
    """The audit file at `path`, as this process has read it (call from one thread at a time)."""

    def __init__(self, path: Path, keep: int = KEEP) -> None:
        self.path = path
        self.keep = keep
        self.problem = ""  # why the file is not kept ("" while it is)
        self.pid = os.getpid()
        self._last_id = 0  # the highest id read or written
        self._offset = 0
        self._inode = -1
        self._depth = 0
        self._lock_fd = -1
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            self.problem = f"cannot keep the audit file {path}: {error.strerror or error}"

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file's lock (re-entrant within this object): what is read inside is not changed by another
        process until the end."""
        if self._lock_fd < 0:
            yield
            return
        if self._depth == 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def read_new(self) -> list[Entry]:
        """The lines written since the last read (by any process), oldest first."""
        if self._lock_fd < 0:
            return []
        with self.locked():
            try:
                with open(self.path, "rb") as stream:
                    stat = os.fstat(stream.fileno())
                    if stat.st_ino != self._inode or stat.st_size < self._offset:
                        self._inode, self._offset = stat.st_ino, 0  # trimmed (replaced): read it again
                    stream.seek(self._offset)
                    data = stream.read()
            except FileNotFoundError:
                return []
            except OSError as error:
                self.problem = f"cannot read the audit file {self.path}: {error.strerror or error}"
                return []
            end = data.rfind(b"\n") + 1  # a line being written (none should be: the lock) waits for its end
            self._offset += end
            found = []
            for raw in data[:end].decode("utf-8", "replace").splitlines():
                entry = _entry(raw)
                if entry is not None and entry.event.id > self._last_id:
                    self._last_id = entry.event.id
                    found.append(entry)
            return found

    def append(self, make: Callable[[int], Entry]) -> tuple[list[Entry], Entry]:
        """Write the entry `make(id)` makes with the next id: (the lines others wrote before it, the entry)."""
        with self.locked():
            others = self.read_new()
            entry = make(self._last_id + 1)
            self._last_id = entry.event.id
            if self._lock_fd < 0:
                return others, entry
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    data = (entry.json() + "\n").encode()
                    os.write(fd, data)
                    stat = os.fstat(fd)
                finally:
                    os.close(fd)
                if stat.st_ino == self._inode and stat.st_size == self._offset + len(data):
                    self._offset = stat.st_size
                self._inode = stat.st_ino if self._inode in (-1, stat.st_ino) else self._inode
                self.problem = ""
                self._trim()
            except OSError as error:
                self.problem = f"cannot write the audit file {self.path}: {error.strerror or error}"
            return others, entry

    def _trim(self) -> None:
        try:
            with open(self.path, "rb") as stream:
                lines = stream.read().splitlines(keepends=True)
        except OSError:
            return
        if len(lines) <= 2 * self.keep:
            return
        temporary = self.path.with_name(f"{self.path.name}.{self.pid}.{time.monotonic_ns()}.tmp")
        with open(temporary, "wb") as stream:
            stream.writelines(lines[-self.keep :])
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)
        self._inode, self._offset = -1, 0  # the next read reads it anew (and skips what it has read by id)
