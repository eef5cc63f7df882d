"""Small HTTP/1.1 servers on loopback: the demo's backends, and the tests' too.

Each answers with its own latency profile and error rate, and knows a few paths:
  /healthz          200 "ok", or 503 "unhealthy" while the backend's `healthy` flag is False
  /echo             JSON: the backend's name, method, path, headers and the body's size and sha256
  /bytes/N          N bytes of body (Content-Length), written in 64 KiB pieces with backpressure
  /chunked/N        N bytes of body, chunked
  /delay/MS         answers after MS milliseconds
  /status/CODE      answers with that status
  anything else     JSON {"backend": name, "path": path}
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import dataclass, field

import httptools


@dataclass
class Profile:
    """How a demo backend behaves: latency (seconds, log-normal around `latency`) and 5xx rate."""

    latency: float = 0.0
    jitter: float = 0.0  # sigma of the log-normal; 0 = always `latency`
    error_rate: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self) -> float:
        if self.latency <= 0:
            return 0.0
        if self.jitter <= 0:
            return self.latency
        return self.latency * self.rng.lognormvariate(0.0, self.jitter)


class _BackendProtocol(asyncio.Protocol):
    def __init__(self, server: DemoBackend) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = hashlib.sha256()
        self.body_size = 0
        self.queue: asyncio.Queue[tuple[bytes, bytes, list[tuple[bytes, bytes]], int, str, bool] | None] = (
            asyncio.Queue()
        )
        self.task: asyncio.Task[None] | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        self.server.connections.add(self)
        self.server.accepted += 1
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.can_write.set()
        self.queue.put_nowait(None)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = hashlib.sha256()
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.update(body)
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        self.server.requests += 1
        self.server.received.append((self.parser.get_method(), self.url, list(self.headers)))
        del self.server.received[:-1000]
        self.queue.put_nowait(
            (
                self.parser.get_method(),
                self.url,
                self.headers,
                self.body_size,
                self.body.hexdigest(),
                self.parser.should_keep_alive(),
            )
        )

    async def serve(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None or self.transport is None or self.transport.is_closing():
                return
            method, url, headers, size, digest, keep_alive = item
            self.server.in_flight += 1
            try:
                await self.answer(method, url, headers, size, digest, keep_alive)
            finally:
                self.server.in_flight -= 1
            if not keep_alive:
                self.transport.close()
                return

    async def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        await self.can_write.wait()

    async def answer(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        size: int,
        digest: str,
        keep_alive: bool,
    ) -> None:
        server = self.server
        path = url.split(b"?", 1)[0].decode("latin-1")
        conn = b"" if keep_alive else b"Connection: close\r\n"
        head = method == b"HEAD"
        if path == "/healthz":
            if server.healthy:
                await self.reply(200, b"ok\n", conn, head)
            else:
                await self.reply(503, b"unhealthy\n", conn, head)
            return
        delay = server.profile.delay()
        if path.startswith("/delay/"):
            delay = _int(path[7:]) / 1000.0
        if delay > 0:
            await asyncio.sleep(delay)
        if server.profile.error_rate and server.profile.rng.random() < server.profile.error_rate:
            await self.reply(500, b'{"error": "demo failure"}\n', conn, head)
            return
        if path.startswith("/status/"):
            await self.reply(_int(path[8:]) or 200, b"", conn, head)
            return
        if path.startswith("/bytes/") or path.startswith("/chunked/"):
            chunked = path.startswith("/chunked/")
            total = _int(path.split("/", 2)[2])
            framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % total
            await self.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Backend: "
                + server.name.encode()
                + b"\r\n"
                + framing
                + conn
                + b"\r\n"
            )
            if head:
                return
            piece = b"x" * 65536
            left = total
            while left > 0:
                part = piece[: min(left, 65536)]
                left -= len(part)
                await self.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            if chunked:
                await self.write(b"0\r\n\r\n")
            return
        if path == "/echo" or path.startswith("/echo/"):
            body = json.dumps(
                {
                    "backend": server.name,
                    "method": method.decode(),
                    "url": url.decode("latin-1"),
                    "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers],
                    "body_size": size,
                    "body_sha256": digest,
                }
            ).encode()
        else:
            body = json.dumps({"backend": server.name, "path": path}).encode()
        await self.reply(200, body + b"\n", conn, head, content_type=b"application/json")

    async def reply(
        self, status: int, body: bytes, conn: bytes, head: bool, content_type: bytes = b"text/plain"
    ) -> None:
        no_body = status in (204, 304) or status < 200
        length = b"" if no_body else b"Content-Length: %d\r\n" % len(body)
        await self.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nX-Backend: %s\r\n%s%s\r\n%s"
            % (
                status,
                _reason(status),
                content_type,
                self.server.name.encode(),
                length,
                conn,
                b"" if head or no_body else body,
            )
        )


def _int(text: str) -> int:
    try:
        return max(0, int(text))
    except ValueError:
        return 0


def _reason(status: int) -> bytes:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


class DemoBackend:
    """One demo backend: an HTTP/1.1 server on 127.0.0.1 with a name and a Profile."""

    def __init__(self, name: str, profile: Profile | None = None, host: str = "127.0.0.1", port: int = 0):
        self.name = name
        self.profile = profile or Profile()
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None
        self.connections: set[_BackendProtocol] = set()
        self.requests = 0
        self.accepted = 0
        self.in_flight = 0
        self.received: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] = []
        self.healthy = True  # False: /healthz answers 503 (everything else as before)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> DemoBackend:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _BackendProtocol(self), self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut every open connection (as a killed process would)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
            if conn.task is not None:
                conn.task.cancel()
        self.connections.clear()
        await asyncio.sleep(0)
