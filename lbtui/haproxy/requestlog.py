"""HAProxy's request log, read from a `ring` over the Runtime API: every request counted per server, so the p50/p99
of a server are exact, and the newest requests listed.

HAProxy writes one line per request into a ring named RING (`log ring@lbtui ...` with LOG_FORMAT, see
docs/haproxy.md); `show events lbtui -w -n` on the stats socket streams the new lines of that ring for as long as
the connection stays open. RequestLog holds that one connection and reads it in bulk.

Invariants:
- One streaming connection at a time, on the caller's asyncio loop (the controller's). Before each connection the
  ring is looked for with `show events`; with no ring named RING the log is not wired, and it is looked for again
  every RECHECK_SECONDS (a reload may add it). A connection that closes or fails is opened again after a backoff
  (RETRY_MIN doubling to RETRY_MAX, back to RETRY_MIN once lines have come). `reconnect(pid)` (the controller's,
  on a new HAProxy process) closes the current one at once unless it reads that process already (`show info`
  right after a stream opens says whose it is). HAProxy 2.6 does not close an idle `-w` stream on its CLI timeout
  (measured: 45 s idle), but whatever closes it, it is opened again.
- The windows count what the stream (`-n`: new lines only) brings: what HAProxy logged while no stream was open
  (between a close and the next connection, or before lbtui attached) is in no window. For recent(), the first
  connection also reads the ring's dump once (`show events RING`) and puts the lines the stream has not brought
  before them (each line is unique by HAProxy's request counter %rt): `ctl requests` lists requests made before
  it ran. `ready` is set once the ring has been looked for (and that dump read, if there is one).
- The stream is read every BATCH_SECONDS, or more often under load: as often as it takes for a read to bring
  about READ_TARGET bytes at the rate lines came in the last read (one wake-up and one read of all that waits);
  HAProxy's side of the socket never fills, and an idle stream costs ten wake-ups a second. A
  chunk is counted in bulk: per line one `partition` at the "|" that ends the four fields the windows need, a
  Counter groups equal heads (HAProxy's times are whole milliseconds: a chunk holds few distinct ones), and each
  distinct head is parsed once and counted with one `SlidingWindow.record_many` (core/stats.py: the windows
  lbtui's own engine keeps, same length). Lines are counted in the window of the moment they were read (one
  clock read per chunk). Nothing else is parsed until `recent()` asks: the newest KEEP_BYTES of lines are kept
  as they came.
- The windows are keyed by the names' bytes as HAProxy wrote them; `window()` takes str names.
- Lines that are not lbtui's (no MARKER at the start: HAProxy's ring must be `format raw`; a field that is not a
  number) are counted as `skipped`, never raised; a request that no server took (`<NOSRV>`) is listed but counted
  in no server's window. At most MAX_SERVERS windows exist (lines of further servers are counted as
  `overflow`): garbage in the ring cannot grow memory without bound.
- Windows belong to (backend, server) names, not to a HAProxy process: after a restart the new process's lines
  add to the same windows, which forget the old ones as they slide.
- Everything but `recent()` runs on the loop's thread; `recent()` may be called from any thread (one lock, taken
  once per chunk by the reader).
- HAProxy never waits for a reader: a ring full of lines not yet read loses lines ("N dropped" in `show events`,
  read when a stream opens and every RECHECK_SECONDS while it is open); the status says how many it dropped while
  this reader's stream was open.
- Headless: imports nothing of textual, rich or httpx, and nothing above the core but this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections import Counter, deque
from typing import Any, Final

from lbtui.core.stats import SlidingWindow, WindowView, window_view
from lbtui.core.views import RequestView

from .runtime import RuntimeApiError, RuntimeClient, UnixAddress

__all__ = [
    "KEEP_BYTES",
    "LOG_FORMAT",
    "MARKER",
    "RING",
    "RequestLog",
    "next_read",
    "parse_line",
]

RING: Final = "lbtui"
MARKER: Final = "lbtui1"  # the format's name and version: the first word of every line lbtui reads
# What HAProxy writes per request (`log-format` in haproxy.cfg): the fields the windows need first.
# %b backend, %s server, %ST status (-1: none), %Ta total active time in ms (-1: aborted), %Tr the server's response
# time in ms, %B bytes to the client, %Ts%ms the wall clock in ms, %ci client, %rt the process's request counter
# (it makes each line unique: the ring's dump and its stream are merged by line), %HM method, %HU the URI.
# The four the windows need end at "|": a chunk is grouped by what comes before it without parsing the rest.
LOG_FORMAT: Final = f"{MARKER} %b %s %ST %Ta|%Tr %B %Ts%ms %ci %rt %HM %HU"
KEEP_BYTES: Final = 256 * 1024  # the newest lines read, kept for recent() (over a thousand lines)
MAX_SERVERS: Final = 4096
MAX_LINE: Final = 64 * 1024  # an unfinished line longer than this is dropped, not buffered on
BATCH_SECONDS: Final = 0.1  # the stream is read at least this often (see _stream)
# A read should take about this much: far less than a unix socket's buffer (about 200 KB), which HAProxy's CLI
# must not find full (a full buffer costs HAProxy a wake-up per log line it cannot send: measured, 30% of its
# throughput at 30k requests/s with reads 0.1 s apart).
READ_TARGET: Final = 32 * 1024
BATCH_MIN: Final = 0.005
READ_SIZE: Final = 4 * 1024 * 1024
RECEIVE_BUFFER: Final = 1024 * 1024
RETRY_MIN: Final = 0.2
RETRY_MAX: Final = 5.0
RECHECK_SECONDS: Final = 5.0
NO_SERVER: Final = "<NOSRV>"
DOC: Final = "docs/haproxy.md, 'The request log'"

_MARK = MARKER + " "
_MARKER = MARKER.encode()
_DROPPED = re.compile(r"(\d+) dropped")
_NO_SERVER = NO_SERVER.encode()


def next_read(size: int, seconds: float) -> float:
    """How long to wait before the next read, after one of `size` bytes that came over `seconds`: long enough
    for about READ_TARGET bytes at that rate, between BATCH_MIN and BATCH_SECONDS."""
    if size <= 0 or seconds <= 0:
        return BATCH_SECONDS
    return max(BATCH_MIN, min(BATCH_SECONDS, READ_TARGET * seconds / size))


def parse_line(line: str) -> RequestView | None:
    """One line of the ring as a RequestView; None for a line that is not in LOG_FORMAT."""
    if not line.startswith(_MARK):
        return None
    head, _, tail = line.partition("|")
    fields = head.split(" ")
    parts = tail.split(" ", 6)
    if len(fields) != 5 or len(parts) < 6:
        return None
    _, backend, server, status, total = fields
    _response, size, stamp, client, _counter, method, *rest = parts
    try:
        code, ms, sent, wall = int(status), int(total), int(size), int(stamp)
    except ValueError:
        return None
    return RequestView(
        time=wall / 1000.0,
        client=client,
        method=method,
        target=rest[0] if rest else "",
        status=max(code, 0),  # HAProxy's -1: no response, lbtui's 0
        backend="" if server == NO_SERVER else server,
        service=backend,
        duration_ms=float(max(ms, 0)),
        bytes_out=max(sent, 0),
    )


class RequestLog:
    """The request log of the HAProxy that `client` talks to, read from its ring RING once `run()` runs."""

    def __init__(self, client: RuntimeClient) -> None:
        self._client = client
        self._windows: dict[tuple[bytes, bytes], SlidingWindow] = {}
        self._chunks: deque[bytes] = deque()  # the newest lines read, in the chunks they came in
        self._held = 0  # bytes in _chunks
        self._raw_lock = threading.Lock()
        self._tail = b""
        self._socket: socket.socket | None = None
        self._history_read = False
        self.ready = threading.Event()
        self._started = time.monotonic()
        self.ring_found = False  # the last `show events` listed RING
        self.connected = False
        self.connections = 0  # streams opened so far
        self.stream_pid: int | None = None  # the HAProxy process the stream reads (None: not known)
        self.counted = 0  # lines counted in a server's window
        self.unrouted = 0  # lines of requests no server took
        self.skipped = 0  # lines not in LOG_FORMAT: the ring carries something else too (or only)
        self.overflow = 0  # lines of servers beyond MAX_SERVERS
        self.reason = "not read yet"  # why it is not wired (or not connected), when it is not
        self._dropped = 0  # HAProxy's count of lines it dropped from the ring, at the last look
        self._dropped_base = 0  # that count when the current stream opened

    # -- what the controller reads ---------------------------------------------------------------------------
    @property
    def wired(self) -> bool:
        """The ring exists and what it carries is lbtui's format (or nothing yet)."""
        return self.ring_found and not (self.skipped and not self.counted and not self.unrouted)

    def status(self) -> str:
        """One line for the snapshot's extra["request_log"]: starts with "wired" or "not wired"."""
        if not self.ring_found:
            return f"not wired: {self.reason} ({DOC})"
        if not self.wired:
            return (
                f"not wired: the {self.skipped} lines in HAProxy's ring {RING!r} are not in lbtui's format: set "
                f"its log-format and `format raw` ({DOC})"
            )
        text = f"wired: HAProxy ring {RING!r}, {self.counted + self.unrouted} requests read"
        skipped = self.skipped + self.overflow
        if skipped:
            text += f", {skipped} lines skipped (not lbtui's format)"
        if self.dropped:
            text += f", {self.dropped} dropped by HAProxy (read too slowly for the ring's size)"
        if not self.connected:
            text += f"; not connected: {self.reason}"
        return text

    @property
    def dropped(self) -> int:
        """Lines HAProxy dropped from the ring while this stream was open (never negative: a new process's
        count starts again)."""
        return max(0, self._dropped - self._dropped_base)

    def window(self, backend: str, server: str, now: float) -> WindowView | None:
        """The server's window from the log (empty if no line of it came yet); None while the log is not
        wired."""
        if not self.wired:
            return None
        key = (backend.encode(), server.encode())
        found = self._windows.get(key)
        if found is None:
            if len(self._windows) >= MAX_SERVERS:
                return window_view(1.0, 0, 0, ())
            # A server no line came for yet: its window has covered the time since the log started.
            found = self._windows[key] = SlidingWindow(now=min(self._started, now))
        return found.view(now)

    def recent(self, limit: int) -> list[RequestView]:
        """The newest `limit` requests, newest first (any thread)."""
        with self._raw_lock:
            held = b"".join(self._chunks)
        lines = held.decode("utf-8", "replace").split("\n")
        out: list[RequestView] = []
        for line in reversed(lines):
            if len(out) >= limit:
                break
            view = parse_line(line)
            if view is not None:
                out.append(view)
        return out

    # -- reading ---------------------------------------------------------------------------------------------
    def feed(self, data: bytes, now: float) -> None:
        """Count what the ring sent (any cut: an unfinished line waits for its end)."""
        if self._tail:
            data = self._tail + data
        end = data.rfind(b"\n")
        if end < 0:
            self._tail = data if len(data) <= MAX_LINE else b""
            return
        self._tail = data[end + 1 :]
        body = data[: end + 1]
        lines = body.split(b"\n")
        lines.pop()  # the empty one after the last newline
        groups = Counter([line.partition(b"|")[0] for line in lines])
        groups.pop(b"", None)
        windows = self._windows
        for key, count in groups.items():
            fields = key.split(b" ")
            if len(fields) != 5 or fields[0] != _MARKER:
                self.skipped += count
                continue
            _, backend, server, status, total = fields
            try:
                code, ms = int(status), int(total)
            except ValueError:
                self.skipped += count
                continue
            window = windows.get((backend, server))
            if window is None:
                if server == _NO_SERVER:
                    self.unrouted += count
                    continue
                if len(windows) >= MAX_SERVERS:
                    self.overflow += count
                    continue
                window = windows[backend, server] = SlidingWindow(now=now)
            window.record_many(
                ms * 0.001 if ms > 0 else 0.0, count if code >= 500 or code < 100 else 0, count, now
            )
            self.counted += count
        with self._raw_lock:
            self._keep_raw(body[-KEEP_BYTES:])

    def _keep_raw(self, chunk: bytes, newest: bool = True) -> None:
        """Keep a chunk of lines for recent(), the oldest chunks going once KEEP_BYTES are held (lock held)."""
        if newest:
            self._chunks.append(chunk)
        else:
            self._chunks.appendleft(chunk)
        self._held += len(chunk)
        while len(self._chunks) > 1 and self._held - len(self._chunks[0]) >= KEEP_BYTES:
            self._held -= len(self._chunks.popleft())

    def reconnect(self, pid: int) -> None:
        """HAProxy process `pid` is a new one: close the stream unless it is that process's already (a stream
        that closed with the old process may have been opened again before the controller noticed); `run()`
        opens a new one."""
        if self._socket is not None and self.stream_pid != pid:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)  # the read waiting on it ends, as at a close
            self.connected = False

    async def run(self) -> None:
        """Read the ring until cancelled: look for it, stream it, reconnect after a backoff."""
        delay = RETRY_MIN
        while True:
            try:
                await self.look()
                if not self.ring_found:
                    self.reason = f"HAProxy has no ring named {RING!r}"
                    self.ready.set()
                    await asyncio.sleep(RECHECK_SECONDS)
                    continue
                self._dropped_base = self._dropped  # what HAProxy dropped before this stream is not ours
                if await self._stream():
                    delay = RETRY_MIN
                self.reason = "the stream closed"
            except (RuntimeApiError, OSError, TimeoutError) as error:
                self.reason = str(error) or type(error).__name__
                self.ready.set()
            finally:
                self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _read_history(self) -> None:
        """The ring's dump, once, before what the stream brought (for recent(), never for the windows)."""
        try:
            answer = await self._client.command(f"show events {RING}")
        except RuntimeApiError:
            self.ready.set()
            return
        self._history_read = True
        dump = answer.encode("utf-8", "replace")
        lines = dump[-KEEP_BYTES:].split(b"\n")[1 if len(dump) > KEEP_BYTES else 0 :]  # not a line cut short
        with self._raw_lock:
            seen = set(b"".join(self._chunks).split(b"\n"))
            older = [line for line in lines if line and line not in seen]
            if older:
                self._keep_raw(b"\n".join(older) + b"\n", newest=False)
        self.ready.set()

    async def look(self) -> None:
        """Look for the ring now with `show events` (the controller's first poll: its snapshot then says whether
        it is wired), and read how many lines HAProxy has dropped from it (a reader too slow for its size)."""
        answer = await self._client.command("show events")
        for line in answer.splitlines()[1:]:
            name, _, rest = line.partition(":")
            if name.strip() == RING:
                self.ring_found = True
                dropped = _DROPPED.search(rest)
                self._dropped = int(dropped.group(1)) if dropped else self._dropped
                return
        self.ring_found = False
        self.reason = f"HAProxy has no ring named {RING!r}"

    async def _watch(self) -> None:
        """While a stream is open: what HAProxy dropped, every RECHECK_SECONDS."""
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            with contextlib.suppress(RuntimeApiError):
                await self.look()

    async def _connect(self) -> socket.socket:
        """A non-blocking socket connected to the stats socket (within the client's deadline)."""
        loop = asyncio.get_running_loop()
        address = self._client.address
        async with asyncio.timeout(self._client.timeout):
            if isinstance(address, UnixAddress):
                family, target = socket.AF_UNIX, address.path
                where: Any = target
            else:
                infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
                family, _, _, _, where = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                await loop.sock_connect(sock, where)
            except BaseException:
                sock.close()
                raise
        return sock

    async def _stream(self) -> bool:
        """One connection: `show events RING -w -n` until it closes. True if any line came.

        Read every BATCH_SECONDS at most, not as each line comes: what HAProxy sends meanwhile waits in the
        socket's buffers, so a read takes hundreds of lines at once; under load the reads come sooner, so that
        each brings about READ_TARGET bytes and HAProxy never finds the socket full."""
        loop = asyncio.get_running_loop()
        sock = await self._connect()
        self._socket = sock
        self._tail = b""
        got = False
        history: asyncio.Task[None] | None = None
        watch = loop.create_task(self._watch())
        try:
            await loop.sock_sendall(sock, f"show events {RING} -w -n\n".encode())
            try:  # which process took the stream (the same one answers this, but across a restart)
                self.stream_pid = (await self._client.show_info()).pid
            except RuntimeApiError:
                self.stream_pid = None
            self.connected = True
            self.connections += 1
            if not self._history_read:
                history = loop.create_task(self._read_history())
            else:
                self.ready.set()
            monotonic = time.monotonic
            read_at = monotonic()
            while chunk := await loop.sock_recv(sock, READ_SIZE):
                now = monotonic()
                self.feed(chunk, now)
                got = True
                await asyncio.sleep(next_read(len(chunk), now - read_at))
                read_at = now
        finally:
            helpers = [task for task in (watch, history) if task is not None]
            for task in helpers:
                task.cancel()
            # awaited: a helper left pending when the loop closes is "destroyed but pending" on stderr (`ctl`)
            await asyncio.gather(*helpers, return_exceptions=True)
            self._socket = None
            sock.close()
        return got
