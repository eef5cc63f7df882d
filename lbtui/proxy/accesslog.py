"""The access log file ([access_log]): one line per finished request, JSON or Apache combined.

Invariants:
- The request path only appends (entry, exchange) to a bounded list (Exchange._record); when the list is full,
  the line is dropped and counted (Engine.access_log_dropped), never waited for.
- The engine's tick formats what the list holds and hands the lines to one writer thread: the event loop never
  waits on the disk. While a write is under way, lines keep collecting (up to the bound) for the next tick.
- The file is opened for appending, so logrotate's copytruncate works as it is; with logrotate's default
  (rename, then create), the writer sees that the path names another file (its inode changed, or it is gone)
  before each write and opens the path again, so no SIGHUP is needed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Any

from lbtui.config import AccessLogConfig

if TYPE_CHECKING:
    from lbtui.proxy.exchange import Exchange

QUEUE_LIMIT = 65536  # lines waiting for the tick; beyond, new ones are dropped (and counted)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _seconds(value: float | None, places: int) -> float | None:
    return None if value is None else round(max(0.0, value), places)


def fields(entry: tuple[Any, ...], exchange: Exchange, wall_offset: float) -> dict[str, Any]:
    """One finished request's fields: `entry` is what Exchange._record keeps, `exchange` the request."""
    at, client, method, target, status, backend, seconds, size, stats, consumer = entry[:10]
    request_id = exchange.request_id or _header(exchange.headers, b"x-request-id") or b""
    attached = exchange.attempts > 0  # a backend was sent the request
    head_at = exchange.head_at
    service = exchange.service  # (its last attempt failed: no backend in the entry, its service still)
    return {
        "time": at + wall_offset,
        "client": _text(client),
        "method": _text(method),
        "target": _text(target),
        "protocol": f"HTTP/{exchange.version}",
        "status": status,
        "bytes_sent": size,
        "route": stats.name if stats is not None else "",
        "consumer": consumer.decode("utf-8", "replace"),
        "service": backend.service if backend is not None else service.name if service is not None else "",
        "backend": backend.name if backend is not None else "",
        "request_id": _text(request_id),
        # Seconds: connecting to the backend (0 on a kept-alive connection), from the request's arrival to
        # the backend's response head, and to the response's end; None where there was none.
        "upstream_connect": exchange.connect_time if attached else None,
        "upstream_header": head_at - exchange.started if head_at and attached else None,
        "duration": seconds,
        "referer": _text(_header(exchange.headers, b"referer") or b""),
        "user_agent": _text(_header(exchange.headers, b"user-agent") or b""),
        # Why it did not end well, as HAProxy's termination state says it: how it ended ("" when a response
        # was passed on whole), why the last failure was not tried again, the requests sent to backends, and
        # each failed attempt as backend:cause.
        "termination": exchange.termination,
        "retry": exchange.retry_verdict,
        "attempts": exchange.attempts,
        "failed_attempts": list(exchange.failed_tries),
    }


def json_line(f: dict[str, Any]) -> str:
    out = dict(f)
    out["time"] = iso_time(f["time"])
    for key in ("upstream_connect", "upstream_header", "duration"):
        out[key] = _seconds(f[key], 6)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def iso_time(wall: float) -> str:
    t = time.gmtime(wall)
    millis = int((wall % 1.0) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{millis:03d}Z"


def _quoted(value: str) -> str:
    """Apache's escaping inside a quoted field: quotes, backslashes and control characters."""
    out = []
    for ch in value:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _bare(value: str) -> str:
    """A key=value value: "-" when empty; quoted when it holds a space, quote or control character."""
    if not value:
        return "-"
    if any(ch in ' "\\' or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return '"' + _quoted(value) + '"'
    return value


def combined_line(f: dict[str, Any]) -> str:
    """Apache's combined format, then route, service, backend, request id and the durations as key=value."""
    t = time.gmtime(f["time"])
    stamp = f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    request = f"{f['method']} {f['target']} {f['protocol']}"
    status = f["status"] or "-"

    def seconds(key: str) -> str:
        # To the microsecond (Apache's %D): a loopback request takes a few hundred.
        value = _seconds(f[key], 6)
        return "-" if value is None else f"{value:.6f}"

    return (
        f"{f['client']} - {_bare(f['consumer'])} [{stamp}] "
        f'"{_quoted(request)}" {status} {f["bytes_sent"]} '
        f'"{_quoted(f["referer"]) or "-"}" "{_quoted(f["user_agent"]) or "-"}" '
        f"route={_bare(f['route'])} service={_bare(f['service'])} backend={_bare(f['backend'])} "
        f"request_id={_bare(f['request_id'])} upstream_connect={seconds('upstream_connect')} "
        f"upstream_header={seconds('upstream_header')} duration={seconds('duration')} "
        f"termination={_bare(f['termination'])} retry={_bare(f['retry'])} attempts={f['attempts']} "
        f"failed_attempts={_bare(','.join(f['failed_attempts']))}"
    )


FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {"json": json_line, "combined": combined_line}


class AccessLog:
    """The file side: lines formatted at each tick, written and flushed by one thread."""

    def __init__(self, config: AccessLogConfig) -> None:
        assert config.path is not None
        self.path = config.path
        self.format = FORMATS[config.format]
        self.queue: list[tuple[tuple[Any, ...], Exchange]] = []
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lbtui-access-log")
        self._writing: Future[None] | None = None
        self._file: IO[str] | None = None
        self._inode = -1
        self.errors = 0  # writes that failed (the lines are lost; reported once by the tick)
        self.last_error = ""
        self.closed = False
        if self.path != "-":
            try:
                self._open()  # at start: a bad path fails the start, not the first request
            except OSError as error:
                raise OSError(f"cannot open the access log {self.path}: {error.strerror or error}") from None

    def _open(self) -> None:
        file = open(self.path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115 (kept open)
        self._file = file
        self._inode = os.fstat(file.fileno()).st_ino

    def _reopen_if_rotated(self) -> None:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = -1
        if inode != self._inode or self._file is None:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._open()

    def _write_entries(self, items: list[tuple[tuple[Any, ...], Exchange]], wall_offset: float) -> None:
        """In the writer thread: format the finished requests' lines and write them (the engine's loop only
        hands them over: a backlog after a slow disk never stops it for long)."""
        self._write([self.format(fields(entry, exchange, wall_offset)) for entry, exchange in items])

    def _write(self, lines: list[str]) -> None:
        """In the writer thread: append the lines, flush once."""
        try:
            if self.path == "-":
                sys.stderr.write("\n".join(lines) + "\n")
                sys.stderr.flush()
                return
            self._reopen_if_rotated()
            file = self._file
            assert file is not None
            file.write("\n".join(lines) + "\n")
            file.flush()
        except (OSError, ValueError) as error:
            self.errors += 1
            self.last_error = str(error)

    def tick(self, wall_offset: float) -> None:
        """Format what the queue holds and hand it to the writer (unless it is still busy with the last)."""
        if self.closed or not self.queue or (self._writing is not None and not self._writing.done()):
            return
        items = self.queue.copy()  # (the engine appends to this very list: emptied, never replaced)
        self.queue.clear()
        self._writing = self._writer.submit(self._write_entries, items, wall_offset)

    def close(self, wall_offset: float) -> None:
        """Write what is left and close the file (waits for the writer: at shutdown only)."""
        if self.closed:
            return
        if self._writing is not None:
            self._writing.result()
            self._writing = None
        self.tick(wall_offset)
        self.closed = True
        self._writer.shutdown(wait=True)
        self._writing = None
        if self._file is not None:
            self._file.close()
            self._file = None
