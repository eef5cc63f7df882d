"""The upstream side: one protocol per connection to a backend, and a pool of idle ones per backend.

Invariants:
- A connection serves one exchange at a time (no pipelining upstream) and goes back to the pool only when its
  response was read whole, the request was sent whole, both sides allow keep-alive and the backend is `ready`.
- A connection that receives bytes while idle, fails to parse, or is closed by the peer is never reused.
- A 5xx response that its exchange retries elsewhere (retries.on "5xx", Exchange.retry_5xx) is read to its end
  and dropped; the connection goes back to the pool only when that end came in the same read as its head
  (and the request was sent whole): otherwise it is closed, never waited on.
- A response is passed on whole or visibly cut, never cut and passed off as whole: a body that ends with the
  connection ends there only when the backend closed it (FIN); a reset (RST) cuts it. A response framed in a
  way we cannot pass on (a transfer coding other than chunked, chunked twice) is refused as a bad gateway.
- httptools traps handled here: a response to HEAD has a body by its headers, so we stop the parser after the
  headers and start a new one; a body delimited by the connection closing ends in `connection_lost`; a 1xx
  response ends a message for the parser but not the exchange.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import TYPE_CHECKING, Any, Final

import httptools

from lbtui.core.model import AdminState
from lbtui.http import (
    CHUNKED,
    HOP_BY_HOP,
    LENGTH,
    NEVER_CONNECTION_NAMED,
    NO_BODY,
    PLAIN_CONNECTION,
    SPECIAL_LENGTHS,
    STATUS_LINES,
    UNTIL_CLOSE,
    connection_tokens,
    no_delay,
    status_line,
    without_fields,
)

if TYPE_CHECKING:
    from lbtui.core.model import Backend
    from lbtui.proxy.engine import Engine
    from lbtui.proxy.exchange import Exchange


class _ExtraData(Exception):
    """Raised from the parser callback when bytes follow a complete response."""


class _HeadersDone(Exception):
    """Raised from the parser callback to stop parsing after the headers of a response that has no body."""


class _BadFraming(Exception):
    """Raised from the parser callback when a response's framing cannot be passed on (see on_header)."""


# Upstream failure kinds, as the retry policy names them.
CONNECT_FAILURE: Final = "connect-failure"
RESET: Final = "reset"
BAD_RESPONSE: Final = "gateway-error"
TIMEOUT: Final = "timeout"

READY: Final = AdminState.READY
LINGER_ZERO: Final = struct.pack(
    "ii", 1, 0
)  # struct linger {l_onoff = 1, l_linger = 0}: a close sends an RST


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_complete",
        "_informational",
        "_keep_alive",
        "_reason",
        "_skip_body",
        "closed",
        "connection",
        "drain_reuse",
        "draining",
        "exchange",
        "framing",
        "idle_since",
        "parser",
        "parts",
        "pool",
        "received",
        "requests",
        "transport",
        "upgrade_value",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.parts: list[bytes] = []
        self.framing = UNTIL_CLOSE
        self.connection: bytes | None = None
        self.upgrade_value: bytes | None = None
        self._reason = b""
        self._complete = False
        self._informational = False
        self._keep_alive = False
        self._skip_body = False
        self.closed = False
        self.draining = False  # reading the rest of a 5xx response its exchange dropped (retried elsewhere)
        self.drain_reuse = False  # the request was sent whole: the connection may be kept once drained
        self.received = False  # any byte of the current response seen
        self.requests = 0  # exchanges served, 0 while the first is under way
        self.idle_since = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        no_delay(transport)
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            # Reset (exc), not closed: even a body that ends with the connection is cut then, not whole.
            exchange.upstream_lost(self, exc is not None)

    def still_open(self) -> bool:
        """Whether the backend has not closed or reset this idle connection, by a look at its socket: the end
        of a connection can be there before the event loop has read it (a backend killed, or closing for its
        keep-alive timeout, at that moment). Checked before a request that could not be sent again."""
        transport = self.transport
        if transport is None or self.closed:
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            probe = socket.socket(fileno=sock.fileno())
        except OSError:
            return False  # no socket behind it any more
        try:
            probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # nothing to read: still open
        except OSError:
            return False  # reset
        finally:
            probe.detach()  # the socket stays the transport's
        return False  # its end (or bytes nobody asked for): not to be used

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Close with a reset (RST), not a close: the end of a tunnel whose client reset its side."""
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            transport = self.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
                    except (OSError, ValueError):  # ValueError: uvloop's socket of a transport already closed
                        pass
                transport.abort()

    # -- flow control: the client is slower than the backend, or the reverse ------------------------------
    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause_reading_for(1)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_reading_for(1)

    # -- parsing -------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes while idle (or after a dropped 5xx was read: see on_headers_complete): the peer is out of
            # step with us. Never reuse this connection.
            self.close()
            return
        if exchange.tunnel:
            exchange.client.write(data)
            return
        self.received = True
        client = exchange.client
        # Cork the client: the head and body of a response leave in one system call.
        corked = client.out is None
        if corked:
            client.out = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._complete = False  # the parser ended the 101 message: the exchange goes on, as a tunnel
            exchange.upstream_upgraded(self, data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _ExtraData):
                self._keep_alive = False  # the response is whole; the connection is not to be trusted
            elif isinstance(error.__context__, _HeadersDone):
                self._keep_alive = self.parser.should_keep_alive()
                self.parser = httptools.HttpResponseParser(self)
                self._complete = True
            elif isinstance(error.__context__, _BadFraming):
                self.close()
                self.exchange = None
                exchange.upstream_failed(
                    BAD_RESPONSE, f"invalid response from backend: {error.__context__}", "bad-head"
                )
            else:
                raise
        except httptools.HttpParserError as error:
            if self._complete:
                # Garbage after a whole response: keep the response, drop the connection.
                self._keep_alive = False
            elif self.draining:
                self.draining = False
                self.close()  # junk in a dropped 5xx: its exchange went on elsewhere
            else:
                self.close()
                self.exchange = None
                cause = "bad-body" if exchange.response_started else "bad-head"
                exchange.upstream_failed(BAD_RESPONSE, f"invalid response from backend: {error}", cause)
        finally:
            if self._complete:
                self._complete = False
                self.exchange = None
                if self.draining:
                    self._drained()
                else:
                    exchange.upstream_complete(self, self._keep_alive)
            elif self.draining:
                # The rest of a dropped 5xx did not come with its head: not waited for.
                self.draining = False
                self.close()
            if corked:
                client.uncork()

    def _drained(self) -> None:
        """A dropped 5xx was read to its end: the connection is kept if it may be (as after any response)."""
        self.draining = False
        backend = self.pool.backend
        engine = self.pool.engine
        if self._keep_alive and self.drain_reuse and backend.admin_state is READY and not engine.closing:
            self.pool.release(self, engine.now())
        else:
            self.close()

    def on_message_begin(self) -> None:
        if self._complete:
            # Another message after the whole response, in the same read: the backend is out of step. Keep
            # the response, stop here, and never use this connection again.
            raise _ExtraData

    def begin(self, exchange: Exchange) -> None:
        """`exchange` starts on this connection (Exchange.attach): its response is read from here on."""
        self.exchange = exchange
        self._skip_body = exchange.method == b"HEAD"
        self.received = False
        self.parts = [b""]
        self.framing = UNTIL_CLOSE
        self.connection = None
        self.upgrade_value = None
        self._reason = b""

    # `reset_head` runs after a 1xx: the response's own head follows.
    def reset_head(self) -> None:
        self.parts = [b""]  # the status line goes first once the status is known
        self.framing = UNTIL_CLOSE
        self.connection = None
        self.upgrade_value = None
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in SPECIAL_LENGTHS:  # most names are none of ours: skip lower() and a hash for them
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"transfer-encoding":
                    # Only chunked, once (as nginx): the parser would read any other coding until close,
                    # and the client, who never sees this header, would get the coded bytes as the body.
                    if self.framing == CHUNKED or value.strip().lower() != b"chunked":
                        raise _BadFraming(f"Transfer-Encoding {value.decode('latin-1')!r} (only chunked)")
                    self.framing = CHUNKED
                elif lname == b"connection":
                    c = self.connection
                    self.connection = value if c is None else c + b"," + value
                elif lname == b"upgrade":
                    self.upgrade_value = value
                return
            if lname == b"content-length" and self.framing == UNTIL_CLOSE:
                self.framing = LENGTH
        self.parts += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        exchange = self.exchange
        assert exchange is not None
        parts = self.parts
        parts[0] = STATUS_LINES.get((status, self._reason)) or status_line(status, self._reason)
        connection = self.connection
        if connection is not None and connection.lower() not in PLAIN_CONNECTION:
            named = connection_tokens(connection) - HOP_BY_HOP - NEVER_CONNECTION_NAMED
            if named:  # headers the backend marked as for this connection only: drop them too
                parts = without_fields(parts, named)
        if 100 <= status < 200 and status != 101:
            # A 1xx ends a message for the parser, not the exchange: the real response follows.
            self._informational = True
            exchange.upstream_informational(parts)
            return
        if status >= 500:
            reusable = exchange.request_done or exchange.req_framing == NO_BODY
            if exchange.retry_5xx(self, status):
                # Retried elsewhere: the rest of this response is read and dropped (see data_received).
                self.exchange = None
                self.draining = True
                self.drain_reuse = reusable
                if self._skip_body:
                    raise _HeadersDone
                return
        exchange.upstream_head(self, status, parts, self.framing, self.upgrade_value)
        if self._skip_body and status not in (204, 304):
            raise _HeadersDone

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.upstream_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self.reset_head()
        elif self.exchange is not None or self.draining:
            self._complete = True
            # Read now: the parser forgets it once the message is over.
            self._keep_alive = self.parser.should_keep_alive()


class Pool:
    """Idle keep-alive connections to one backend (newest reused first), and new connections on demand."""

    __slots__ = ("_connecting", "active", "backend", "engine", "idle", "max_idle")

    def __init__(self, backend: Backend, engine: Engine, max_idle: int = 256) -> None:
        self.backend = backend
        self.engine = engine
        self.idle: list[UpstreamConnection] = []
        self.active: set[UpstreamConnection] = set()
        self.max_idle = max_idle
        self._connecting: set[asyncio.Task[Any]] = set()

    def release(self, conn: UpstreamConnection, now: float) -> None:
        self.active.discard(conn)
        if conn.closed:
            return
        if len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        conn.requests += 1
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.active.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def connect(self, exchange: Exchange) -> None:
        task = self.engine.loop.create_task(self._connect(exchange))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, exchange: Exchange) -> None:
        backend = self.backend
        timeout = exchange.service_config_timeouts().connect
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.engine.loop.create_connection(
                    lambda: UpstreamConnection(self), backend.host, backend.port
                )
        except (OSError, TimeoutError) as error:
            if isinstance(error, TimeoutError):
                reason, cause = "timed out", "connect-timeout"
            else:
                reason = error.strerror or str(error)
                cause = "connect-refused" if isinstance(error, ConnectionRefusedError) else "connect-error"
            exchange.connect_failed(
                backend, f"cannot connect to {backend.name} ({backend.address}): {reason}", cause
            )
            return
        if conn.closed:
            exchange.connect_failed(
                backend, f"{backend.name} ({backend.address}) closed the connection at once", "connect-closed"
            )
            return
        self.active.add(conn)
        exchange.attach(conn, reused=False)

    def close_idle(self, older_than: float) -> None:
        for conn in [c for c in self.idle if c.idle_since < older_than]:
            conn.close()

    def close_all(self) -> None:
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
        for task in list(self._connecting):
            task.cancel()

    def close_active(self) -> None:
        for conn in list(self.active):
            conn.close()
