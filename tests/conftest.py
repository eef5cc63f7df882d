"""Fixtures: real backends, a scripted upstream, a raw client, and an engine on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
from hypothesis import settings

from lbtui.config import Config, parse_config
from lbtui.demo.backends import DemoBackend, Profile
from lbtui.proxy.engine import Engine
from tests.faultproxy import FaultProxy

DEADLINE = 10.0

# Hypothesis profiles, for tests that choose one (tests/proxy/test_fuzz.py): "ci" replays the same examples on
# every run (reproducible), "fuzz" draws new ones each run (exploring).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("fuzz", deadline=None, print_blob=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` run first. On several workers (pytest-xdist: .ci/run's `-n 3`), a long test that starts
    near the end keeps one worker busy while the others are done; started first, the short ones fill in around
    it. (`-m "not slow"` leaves them out of a quick run.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the order stays otherwise


async def wait_for(condition: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition") -> None:
    """Wait until `condition()` is true, polling; fail after `timeout` seconds. Never a bare sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def closed_port() -> Iterator[Callable[[], int]]:
    """`closed_port()`: a port on 127.0.0.1 where every TCP connect is refused until the test ends.

    Each port is held by a socket bound without SO_REUSEADDR that never listens: Linux answers a SYN to it with a
    reset (ECONNREFUSED), no other socket can bind the port (SO_REUSEADDR, which asyncio's servers set, needs both
    sides to have it), and no connect picks it as its source port. Binding a port and closing the socket at once
    left it free for a parallel test to take before the test used it.
    """
    held: list[socket.socket] = []

    def take() -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.append(sock)
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

    yield take
    for sock in held:
        sock.close()


def make_config(
    backends: list[tuple[str, str]] | list[DemoBackend] | list[Any],
    algorithm: str = "round_robin",
    **service: Any,
) -> Config:
    entries = []
    for b in backends:
        if isinstance(b, tuple):
            name, address = b
            entries.append({"name": name, "address": address})
        elif isinstance(b, dict):
            entries.append(b)
        else:
            entries.append({"name": b.name, "address": b.address})
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {"app": {"algorithm": algorithm, "backends": entries, **service}},
    }
    return parse_config(data, source="<test>")


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[DemoBackend]]]:
    started: list[DemoBackend] = []

    async def start(name: str, **profile: Any) -> DemoBackend:
        backend = await DemoBackend(name, Profile(**profile)).start()
        started.append(backend)
        return backend

    yield start
    for b in started:
        await b.stop()


@pytest.fixture
async def engine_factory() -> AsyncIterator[Callable[[Config], Awaitable[Engine]]]:
    engines: list[Engine] = []

    async def start(config: Config) -> Engine:
        engine = Engine(config)
        await engine.start()
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        await engine.shutdown(grace=1.0)


# -- raw client -------------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    closed: bool = False
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class _ResponseReader:
    def __init__(self, head_request: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_request = head_request
        self.responses: list[RawResponse] = []
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._info: list[int] = []
        self.done = False

    def on_message_begin(self) -> None:
        self._headers = []
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._info.append(status)
        elif self.head_request or status == 101:
            self.responses.append(RawResponse(status, self._headers, b"", informational=self._info))
            self.done = True
            raise _Stop

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return
        self.responses.append(
            RawResponse(status, self._headers, b"".join(self._body), informational=self._info)
        )
        self._info = []
        self.done = True


class _Stop(Exception):
    pass


class RawClient:
    """A client that writes exact bytes and reads responses with a strict parser; knows if the server closed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawClient:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self, head: bool = False, timeout: float = DEADLINE) -> RawResponse:
        reader = _ResponseReader(head)
        async with asyncio.timeout(timeout):
            while not reader.done:
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    # A body delimited by the connection closing ends here.
                    if reader._headers and not reader.responses:
                        return RawResponse(
                            reader.parser.get_status_code(), reader._headers, b"".join(reader._body), True
                        )
                    raise ConnectionError("the server closed the connection before a whole response")
                try:
                    reader.parser.feed_data(data)
                except httptools.HttpParserCallbackError:
                    break
                if reader.done and len(reader.responses) == 1:
                    # Data after this response belongs to the next one: keep it for the next read.
                    pass
        response = reader.responses[0]
        return response

    async def request(
        self, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None, body: bytes = b""
    ) -> RawResponse:
        lines = [f"{method} {path} HTTP/1.1", "Host: test.local"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body:
            lines.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await self.read_response(head=method == "HEAD")

    async def is_closed(self, timeout: float = DEADLINE) -> bool:
        """True when the server closes the connection (reads until EOF or timeout)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        self.closed = True
                        return True
        except TimeoutError:
            return False
        except ConnectionError:
            self.closed = True
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@pytest.fixture
async def raw_client() -> AsyncIterator[Callable[[tuple[str, int]], Awaitable[RawClient]]]:
    clients: list[RawClient] = []

    async def connect(address: tuple[str, int]) -> RawClient:
        client = await RawClient.connect(address)
        clients.append(client)
        return client

    yield connect
    for c in clients:
        await c.close()


# -- scripted upstream ----------------------------------------------------------------------------------------


class ScriptedUpstream:
    """A TCP server whose every connection runs `script(reader, writer, upstream)`; it records what it received."""

    def __init__(
        self,
        script: Callable[[asyncio.StreamReader, asyncio.StreamWriter, ScriptedUpstream], Awaitable[None]],
    ):
        self.script = script
        self.server: asyncio.Server | None = None
        self.received: list[bytes] = []
        self.connections = 0
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> ScriptedUpstream:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(reader, writer, self)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """Read one request head (and a Content-Length body) and record it."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        self.received.append(head + body)
        return head + body

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedUpstream]]]:
    servers: list[ScriptedUpstream] = []

    async def start(script: Any) -> ScriptedUpstream:
        server = await ScriptedUpstream(script).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        await s.stop()


# -- fault-injecting TCP proxy (tests/faultproxy.py) -------------------------------------------------------


@pytest.fixture
async def fault_proxy() -> AsyncIterator[Callable[..., Awaitable[FaultProxy]]]:
    """`await fault_proxy(target)`: a FaultProxy on 127.0.0.1 in front of `target` (an address, or anything
    with `.address`, such as a demo backend or a scripted upstream); stopped at teardown."""
    proxies: list[FaultProxy] = []

    async def start(target: Any, seed: int = 1) -> FaultProxy:
        proxy = await FaultProxy(target, seed=seed).start()
        proxies.append(proxy)
        return proxy

    yield start
    for p in proxies:
        await p.stop()
