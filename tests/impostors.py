"""Servers that are not lbtui's admin API, for `lbtui ctl --admin URL` and `lbtui attach URL` to be pointed at.

Each runs on 127.0.0.1 on a port of its own, on a loop of its own on a thread of its own (nginx: as a process
of its own): ctl's client and the attached dashboard's controller block the loop that calls them, as they do
in lbtui. Each records the request lines it was sent: a test can tell that nothing but the identifying
`GET /api/v1/` reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

DEADLINE = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Impostor:
    """A TCP server on 127.0.0.1; every connection runs `script(reader, writer, impostor)` on `loop`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        script: Callable[[asyncio.StreamReader, asyncio.StreamWriter, Impostor], Awaitable[None]],
        tls: ssl.SSLContext | None = None,
        port: int = 0,
    ) -> None:
        self.loop = loop
        self.script = script
        self.tls = tls
        self.port = port
        self.requests: list[str] = []  # request lines, as "GET /api/v1/"
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()
        self.stopping = False  # a connection accepted from now on is closed at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _on_loop(self, work: Awaitable[Any]) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_awaited(work), self.loop))

    async def start(self) -> Impostor:
        await self._on_loop(self._start())
        return self

    async def _start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.handlers.add(task)
            try:
                if self.stopping:
                    return  # accepted while the listener closed: closed below
                await self.script(reader, writer, self)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
                pass
            finally:
                writer.close()
                self.handlers.discard(task)

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def read_request(self, reader: asyncio.StreamReader) -> str | None:
        """One request (head and a Content-Length body); its request line, or None at the end."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        method, target = lines[0].split(" ")[:2]
        self.requests.append(f"{method} {target}")
        return self.requests[-1]

    async def stop(self) -> None:
        """Stop listening and end every connection."""
        await self._on_loop(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        if self.server is not None:
            # Stop accepting first, and let the accepts under way attach while the server is still open: in
            # Python 3.11 a connection accepted in the turn the server closes is never closed (its transport
            # cannot attach to a closed server; the socket leaks).
            loop = asyncio.get_running_loop()
            for listener in self.server.sockets:
                loop.remove_reader(listener.fileno())
            await asyncio.sleep(0)
            self.server.close()
            self.server = None
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)


async def _quiet() -> None:
    """Wait (at most DEADLINE) until every other task of the running loop is done."""
    async with asyncio.timeout(DEADLINE):
        while others := {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}:
            await asyncio.wait(others)


async def _awaited(work: Awaitable[Any]) -> Any:
    return await work


def http_answer(
    body: Any, status: str = "200 OK", content_type: str = "application/json", headers: str = ""
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter, Impostor], Awaitable[None]]:
    """A script: every request on a kept-alive connection is answered with the same (JSON) body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, impostor: Impostor) -> None:
        while await impostor.read_request(reader) is not None:
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                f"{headers}\r\n".encode()
                + data
            )
            await writer.drain()

    return script


def fake_lbtui(
    answers: dict[str, Any],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter, Impostor], Awaitable[None]]:
    """A script that passes for lbtui's admin API (its header, its identity) and answers `answers[path]` (JSON;
    404 for other paths): what a proxy in between that rewrites the JSON, or a broken build, would look like."""
    identity = {"api": "lbtui-admin", "version": 1, "versions": [1]}

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, impostor: Impostor) -> None:
        while (line := await impostor.read_request(reader)) is not None:
            path = line.split(" ", 1)[1].split("?", 1)[0]
            if path == "/api/v1/":
                status, value = "200 OK", identity
            elif path in answers:
                status, value = "200 OK", answers[path]
            else:
                status, value = "404 Not Found", {"error": f"no such endpoint: {path}"}
            data = json.dumps(value).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                "X-Lbtui-Admin: 1\r\n\r\n".encode()
                + data
            )
            await writer.drain()

    return script


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, impostor: Impostor) -> None:
    """Bytes that are not HTTP at all, a line of them, then the end (as an SSH or SMTP banner would)."""
    writer.write(b"\x00\xff\x13garbage, not HTTP\x01\r\nmore\r\n")
    await writer.drain()
    await reader.read(65536)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, impostor: Impostor) -> None:
    """Takes the connection and the request, and never answers."""
    while await reader.read(65536):
        pass


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def tls_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, impostor: Impostor) -> None:
    """An HTTPS server (Python's ssl): a plain-HTTP request fails its handshake and the connection closes."""
    await reader.read(65536)


@contextlib.asynccontextmanager
async def impostors() -> AsyncIterator[Callable[..., Awaitable[Impostor]]]:
    """`await start(script, tls=None, port=0)`: an Impostor, running until the end of the block."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="impostors", daemon=True)
    thread.start()
    started: list[Impostor] = []

    async def start(
        script: Callable[..., Awaitable[None]], tls: ssl.SSLContext | None = None, port: int = 0
    ) -> Impostor:
        impostor = await Impostor(loop, script, tls, port).start()
        started.append(impostor)
        return impostor

    try:
        yield start
    finally:
        for impostor in started:
            await impostor.stop()
        # A connection accepted as a listener closed gets its handler a few turns later (which closes it at once):
        # the loop runs until those are done, or its sockets would outlive it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_quiet(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, DEADLINE)
        loop.close()


# -- nginx ---------------------------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Nginx:
    """A real nginx (as a process of its own, `daemon off`) with one `server` block per name, each on a free
    port: `urls[name]`. A block is its body, with `{port}` and `{dir}` (a temporary folder) filled in."""

    def __init__(self, folder: Path, servers: dict[str, str]) -> None:
        binary = nginx_binary()
        if binary is None:
            pytest.skip("nginx is not installed (`apt-get install -y nginx`; .ci/run installs it)")
        self.binary = binary
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in servers}
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}
        (folder / "www").mkdir(parents=True, exist_ok=True)
        blocks = "\n".join(
            "server {\n" + body.replace("{port}", str(self.ports[name])).replace("{dir}", str(folder)) + "\n}"
            for name, body in servers.items()
        )
        temp = " ".join(
            f"{kind}_temp_path {folder}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (folder / "nginx.conf").write_text(
            f"daemon off;\nmaster_process off;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
            "events { worker_connections 64; }\n"
            f"http {{\naccess_log off;\n{temp}\n{blocks}\n}}\n"
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Nginx:
        folder = self.folder
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            *("-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + DEADLINE
        while not all(_listening(port) for port in self.ports.values()):
            if self.proc.returncode is not None:
                log = folder / "error.log"
                raise AssertionError(f"nginx did not start: {log.read_text() if log.exists() else ''}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx did not listen on {self.ports} within {DEADLINE}s")
            await asyncio.sleep(0.02)
        return self

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), DEADLINE)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@contextlib.asynccontextmanager
async def nginx(folder: Path, servers: dict[str, str]) -> AsyncIterator[Nginx]:
    server = Nginx(folder, servers)
    try:
        yield await server.start()
    finally:
        await server.stop()


# The usual nginx: files from a folder that has none of the admin API's paths (404 text/html).
NGINX_STATIC = "listen 127.0.0.1:{port};\nroot {dir}/www;"
# nginx answering JSON of another shape for every path.
NGINX_JSON = (
    "listen 127.0.0.1:{port};\ndefault_type application/json;\n"
    'location / { return 200 \'{"status": "ok", "services": "all of them", "id": 7}\'; }'
)


def nginx_tls(folder: Path, ca: trustme.CA) -> str:
    """An nginx HTTPS server block (it answers a plain-HTTP request with its own 400 page)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    return (
        "listen 127.0.0.1:{port} ssl;\nssl_certificate {dir}/cert.pem;\nssl_certificate_key {dir}/key.pem;\n"
        "root {dir}/www;"
    )
