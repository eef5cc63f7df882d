"""A small HTTP/1.1 client for the requests lbtui makes itself: an aggregate route's parts
(gateway/aggregate.py) and the demo's traffic (demo/traffic.py). asyncio and httptools only: importing httpx
would pull in rich, which the headless engine must not load.

Invariants:
- One request at a time on a connection. A connection goes back to the idle list only when its reply was read
  whole, both sides allow keep-alive, and nothing came after the reply; bytes that arrive while it is idle, or
  the peer closing it, drop it at once.
- Bounded: at most `per_host` idle connections per address (LIFO: few stay warm); an idle connection older
  than the caller's `idle_timeout` is closed when next looked at; a reply body over `max_body` fails the
  request. A request that fails, times out or is cancelled closes its connection (it is never reused).
- A request on a reused connection that fails before any byte of the reply is sent once more on a new
  connection: the server may have closed it while idle, the race every keep-alive client has. Callers send
  only requests that may be sent twice (GET).
- `close()` closes every connection, idle or busy, and any connection handed back afterwards.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httptools

from lbtui.http import no_delay

DEFAULT_MAX_BODY = 8 * 1024 * 1024


class ClientError(OSError):
    """A request made with this client failed."""


class ConnectFailed(ClientError):
    """No connection could be made: nothing was sent."""


class BadReply(ClientError):
    """The server's reply was not a whole HTTP/1.1 response within bounds."""


class ReplyTimeout(ClientError):
    """The reply did not come whole within the caller's reply_timeout."""


class _Stale(BadReply):
    """A reused connection was closed before any byte of the reply: send again on a new connection."""


class _TooLarge(Exception):
    """Raised in a parser callback: the body passed max_body."""


class _AfterReply(Exception):
    """Raised in a parser callback: another message started after the whole reply."""


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of the header `name` (lower case), or None."""
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


class _Link(asyncio.Protocol):
    """One connection to a server, and the reply it is reading."""

    def __init__(self, pool: KeepAlivePool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.served = 0  # replies read whole on it before the current one
        self.retired = False  # closed once its current reply is read (its server was drained or removed)
        self.idle_since = 0.0
        self.waiter: asyncio.Future[Reply] | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.received = False  # a byte of the current reply came
        self.complete = False
        self.keep_alive = False
        self.until_close = True  # the body ends when the server closes (no Content-Length, not chunked)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.max_body = DEFAULT_MAX_BODY

    # -- lifecycle ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        no_delay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self.status and self.until_close and not self.complete:
            self._done()  # a body delimited by the connection closing (a FIN, not a reset) ends here
        elif not self.received and self.served:
            waiter.set_exception(_Stale("the server closed a kept-alive connection"))
        else:
            reason = f"reset: {exc}" if exc is not None else "closed"
            waiter.set_exception(BadReply(f"the connection was {reason} before a whole reply"))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    # -- one request ---------------------------------------------------------------------------------------
    def send(self, request: bytes, max_body: int) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.parser = httptools.HttpResponseParser(self)
        self.received = self.complete = self.keep_alive = False
        self.until_close = True
        self.status = self.size = 0
        self.headers = []
        self.body = []
        self.max_body = max_body
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.close()  # bytes while idle (or after the reply): the server is out of step with us
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _TooLarge):
                self._fail(f"the reply body is larger than {self.max_body} bytes")
            elif isinstance(error.__context__, _AfterReply):
                self.keep_alive = False  # the reply is whole; the connection is not to be trusted
            else:
                self._fail(f"invalid reply: {error.__context__ or error}")
        except httptools.HttpParserUpgrade:
            self._fail("the server switched protocols unasked")
        except httptools.HttpParserError as error:
            if not self.complete:
                self._fail(f"invalid reply: {error}")
            self.keep_alive = False  # garbage after a whole reply: keep the reply, drop the connection
        if self.complete and not waiter.done():
            self._done()

    def _fail(self, reason: str) -> None:
        waiter = self.waiter
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(BadReply(reason))

    def _done(self) -> None:
        waiter = self.waiter
        assert waiter is not None
        waiter.set_result(Reply(self.status, self.headers, b"".join(self.body)))

    # -- parser callbacks ---------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            raise _AfterReply

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"content-length" or lname == b"transfer-encoding":
            self.until_close = False
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.headers = []  # an interim response (100 Continue...): the reply follows
            return
        self.status = status
        if status in (204, 304):
            self.until_close = False

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            raise _TooLarge
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status:  # not the end of an interim response
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive() and not self.until_close


class KeepAlivePool:
    """Connections to any number of servers (by host and port): idle ones kept for reuse, busy ones tracked."""

    def __init__(self, per_host: int = 16) -> None:
        self.per_host = per_host
        self.idle: dict[tuple[str, int], list[_Link]] = {}
        self.busy: set[_Link] = set()
        self.connects = 0  # connections opened (a measure of how much reuse there is)
        self.closed = False

    async def request(
        self,
        host: str,
        port: int,
        request: bytes,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        connect_timeout: float | None = None,
        reply_timeout: float | None = None,
        idle_timeout: float = 60.0,
    ) -> Reply:
        """Send `request` (a whole request head, no body) to host:port and read the reply, whole within
        `reply_timeout` of being sent (None: no limit of its own).

        Raises ConnectFailed (nothing was sent), BadReply or ReplyTimeout; cancellation closes the connection."""
        key = (host, port)
        link = self._take(key, asyncio.get_running_loop().time() - idle_timeout)
        if link is not None:
            try:
                return await self._exchange(link, request, max_body, reply_timeout)
            except _Stale:
                pass  # closed by the server while idle: once more on a new connection
        link = await self._connect(key, connect_timeout)
        try:
            return await self._exchange(link, request, max_body, reply_timeout)
        except _Stale as error:  # cannot happen on a new connection; said plainly if it does
            raise BadReply(str(error)) from None

    def close_to(self, host: str, port: int) -> None:
        """Close the connections to host:port (a backend that was removed, drained or put in maint): the idle
        ones now, the busy ones when their reply is read."""
        for link in self.idle.pop((host, port), []):
            link.close()
        for link in self.busy:
            if link.key == (host, port):
                link.retired = True

    def close(self) -> None:
        """Close every connection, and those handed back from now on."""
        self.closed = True
        for links in list(self.idle.values()):
            for link in list(links):
                link.close()
        self.idle.clear()
        for link in list(self.busy):
            link.close()

    def forget(self, link: _Link) -> None:
        self.busy.discard(link)
        links = self.idle.get(link.key)
        if links is not None and link in links:
            links.remove(link)

    # -----------------------------------------------------------------------------------------------------
    def _take(self, key: tuple[str, int], stale_before: float) -> _Link | None:
        links = self.idle.get(key)
        while links:
            link = links.pop()  # the newest first
            if link.closed:
                continue
            if link.idle_since < stale_before:
                link.close()  # and every older one with it: they are staler still
                for older in list(links):
                    older.close()
                return None
            self.busy.add(link)
            return link
        return None

    async def _connect(self, key: tuple[str, int], within: float | None) -> _Link:
        loop = asyncio.get_running_loop()
        host, port = key
        try:
            async with asyncio.timeout(within):
                _, link = await loop.create_connection(lambda: _Link(self, key), host, port)
        except TimeoutError:
            raise ConnectFailed(f"cannot connect to {host}:{port}: timed out") from None
        except OSError as error:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {error.strerror or error}") from None
        self.connects += 1
        if self.closed:
            link.close()
            raise ConnectFailed("the client is closed (the engine stops)")
        if link.closed:
            raise ConnectFailed(f"{host}:{port} closed the connection at once")
        self.busy.add(link)
        return link

    async def _exchange(self, link: _Link, request: bytes, max_body: int, within: float | None) -> Reply:
        try:
            async with asyncio.timeout(within):
                reply = await link.send(request, max_body)
        except TimeoutError:
            link.close()
            raise ReplyTimeout(f"no whole reply within {within:g}s") from None
        except BaseException:
            link.close()  # failed, timed out or cancelled: whatever it holds is not to be read by another
            raise
        self.busy.discard(link)
        links = self.idle.setdefault(link.key, [])
        if (
            link.keep_alive
            and not link.retired
            and not link.closed
            and not self.closed
            and len(links) < self.per_host
        ):
            link.served += 1
            link.idle_since = asyncio.get_running_loop().time()
            links.append(link)
        else:
            link.close()
        return reply
