"""A backend for the chaos tests, run as its own process so that `kill -9` is real: `python -m tests.chaos_backend
NAME PORT LOG`.

It listens on 127.0.0.1:PORT (SO_REUSEADDR: it can start again on the same port right after it was killed),
prints `ready` on stdout once it accepts, and serves HTTP/1.1 with keep-alive:

  GET /healthz         200, or 503 while its health is set down
  PUT /_chaos/health   body "up" or "down": what /healthz answers from now on (sent to it directly, not through
                       the balancer)
  /slow...             the head and half the body, then the rest 20 ms later (a kill can fall between them)
  anything else        after 0-2 ms, 200 with a small body naming the backend, the method and X-Chaos-Id

Before it answers a request it appends `METHOD ID\\n` (ID: the request's X-Chaos-Id, "-" without one) to LOG with
one unbuffered write to a file opened O_APPEND: a line written is in the kernel's hands, and a SIGKILL after it
cannot lose it. A test counts the lines to see how often a request reached a backend (a POST must never reach
one twice).

A connection left idle for IDLE seconds after a response (an optional 4th argument; default: never) is closed,
as servers close idle keep-alive connections: the balancer then meets connections that died while in its pool. A share
CLOSE (an optional 5th argument, 0-1; default 0) of its responses say `Connection: close` and end their
connection, as a server that keeps few connections alive does: the balancer then opens many new ones.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys

import httptools


class Backend:
    def __init__(self, name: str, log_fd: int, idle: float, close_share: float) -> None:
        self.name = name.encode()
        self.log_fd = log_fd
        self.idle = idle
        self.close_share = close_share
        self.healthy = True
        self.rng = random.Random()


class Connection(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.chaos_id = b"-"
        self.body: list[bytes] = []
        # Requests are answered one at a time, in order (a client that pipelines waits its turn).
        self.queue: asyncio.Queue[tuple[bytes, bytes, bytes, bytes, bool] | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)
        if self.idle_timer is not None:
            self.idle_timer.cancel()

    def arm_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.backend.idle > 0 and self.transport is not None:
            self.idle_timer = asyncio.get_running_loop().call_later(self.backend.idle, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.chaos_id = b"-"
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-chaos-id":
            self.chaos_id = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        self.queue.put_nowait((method, self.url, self.chaos_id, b"".join(self.body), keep))

    async def serve(self) -> None:
        backend = self.backend
        while True:
            item = await self.queue.get()
            transport = self.transport
            if item is None or transport is None or transport.is_closing():
                return
            method, url, chaos_id, body, keep = item
            if keep and backend.close_share and backend.rng.random() < backend.close_share:
                keep = False
            os.write(backend.log_fd, b"%s %s\n" % (method, chaos_id))
            connection = b"" if keep else b"Connection: close\r\n"
            if url == b"/healthz":
                status = b"200 OK" if backend.healthy else b"503 Service Unavailable"
                reply = b"ok" if backend.healthy else b"unhealthy"
                transport.write(
                    b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(reply), connection, reply)
                )
            elif url == b"/_chaos/health":
                backend.healthy = body.strip() == b"up"
                transport.write(b"HTTP/1.1 204 No Content\r\n%s\r\n" % connection)
            else:
                await asyncio.sleep(backend.rng.random() * 0.002)
                reply = b"%s %s %s %s\n" % (backend.name, method, url, chaos_id)
                reply = reply * 8
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %s\r\n%s\r\n" % (
                    len(reply),
                    backend.name,
                    connection,
                )
                if url.startswith(b"/slow"):
                    half = len(reply) // 2
                    transport.write(head + reply[:half])
                    await asyncio.sleep(0.02)
                    if transport.is_closing():
                        return
                    transport.write(reply[half:])
                else:
                    transport.write(head + reply)
            if not keep:
                transport.close()
                return
            self.arm_idle()


async def main(name: str, port: int, log_path: str, idle: float, close_share: float) -> None:
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    backend = Backend(name, log_fd, idle, close_share)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    server = await asyncio.get_running_loop().create_server(lambda: Connection(backend), sock=sock)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    parent = os.getppid()
    async with server:
        # A watchdog, not a wait: when the test that started it is gone (it was killed), so is this process.
        while os.getppid() == parent:  # noqa: ASYNC110
            await asyncio.sleep(0.5)


if __name__ == "__main__":
    idle_arg = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    close_arg = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], idle_arg, close_arg))
