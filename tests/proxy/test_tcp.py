"""tcp listeners (layer 4) against small echo servers on loopback: balancing, failover, backpressure, half-close,
drain, counters, no backend, idle timeout and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from lbtui.config import Config, parse_config
from lbtui.proxy.engine import Engine
from lbtui.proxy.tcp import PAUSE_UPSTREAM_FULL, WRITE_HIGH
from tests.conftest import wait_for

DEADLINE = 5.0


class EchoServer:
    """Says `<name>\\n` on connect, echoes every byte, and on EOF says `bye` and closes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        self.open = 0
        self.received = 0
        self.handlers: set[asyncio.Task[Any]] = set()
        self.small_buffers = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> EchoServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.accepted += 1
        self.open += 1
        if self.small_buffers:
            small_buffers(writer.transport)
        try:
            writer.write(self.name.encode() + b"\n")
            while data := await reader.read(65536):
                self.received += len(data)
                writer.write(data)
                await writer.drain()  # backpressure: stop reading while the proxy does not take the echo
            writer.write(b"bye")
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()
            self.handlers.discard(task)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.handlers):
                task.cancel()
            await self.server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[Callable[[str], Awaitable[EchoServer]]]:
    servers: list[EchoServer] = []

    async def start(name: str) -> EchoServer:
        server = await EchoServer(name).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def tcp_config(
    backends: list[tuple[str, str] | dict[str, Any]],
    algorithm: str = "round_robin",
    tls: dict[str, str] | None = None,
    **service: Any,
) -> Config:
    entries = [{"name": b[0], "address": b[1]} if isinstance(b, tuple) else b for b in backends]
    listener: dict[str, Any] = {"name": "db", "bind": "127.0.0.1:0", "mode": "tcp", "service": "db"}
    if tls is not None:
        listener["tls"] = tls
    return parse_config(
        {
            "listeners": [listener],
            "services": {"db": {"algorithm": algorithm, "backends": entries, **service}},
        },
        source="<test>",
    )


class Client:
    """A plain TCP client of the tcp listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, engine: Engine, **kwargs: Any) -> Client:
        kwargs.setdefault("limit", 1 << 20)
        reader, writer = await asyncio.open_connection(*engine.address("db"), **kwargs)
        return cls(reader, writer)

    async def greeting(self) -> str:
        async with asyncio.timeout(DEADLINE):
            return (await self.reader.readline()).decode().strip()

    async def roundtrip(self, data: bytes) -> bytes:
        self.writer.write(data)
        async with asyncio.timeout(DEADLINE):
            return await self.reader.readexactly(len(data))

    async def read_to_end(self) -> bytes:
        async with asyncio.timeout(DEADLINE):
            return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    clients: list[Client] = []

    async def open_one(engine: Engine, **kwargs: Any) -> Client:
        client = await Client.connect(engine, **kwargs)
        clients.append(client)
        return client

    yield open_one
    for client in clients:
        await client.close()


# -- balancing ------------------------------------------------------------------------------------------------


async def test_round_robin_by_connection(echo, engine_factory, connect):
    a, b = await echo("a"), await echo("b")
    engine = await engine_factory(tcp_config([("a", a.address), ("b", b.address)]))
    assert engine.url("db").startswith("tcp://")
    seen = []
    for _ in range(4):
        client = await connect(engine)
        seen.append(await client.greeting())
        assert await client.roundtrip(b"ping") == b"ping"
    assert seen == ["a", "b", "a", "b"]
    snapshot = engine.balancer.snapshot()
    assert [listener.mode for listener in snapshot.listeners] == ["tcp"]
    assert snapshot.backend("a").in_flight == 2  # open connections
    assert snapshot.connections == 4


async def test_ip_hash_sticks_to_one_backend(echo, engine_factory, connect):
    servers = [await echo(name) for name in ("a", "b", "c")]
    engine = await engine_factory(tcp_config([(s.name, s.address) for s in servers], algorithm="ip_hash"))
    seen = set()
    for _ in range(6):
        client = await connect(engine)
        seen.add(await client.greeting())
        await client.close()
    assert len(seen) == 1  # every connection comes from 127.0.0.1


async def test_refused_backend_is_skipped(echo, engine_factory, connect, closed_port):
    good = await echo("good")
    engine = await engine_factory(
        tcp_config([("dead", f"127.0.0.1:{closed_port()}"), ("good", good.address)])
    )
    for _ in range(4):
        client = await connect(engine)
        assert await client.greeting() == "good"
        assert await client.roundtrip(b"x" * 100) == b"x" * 100
    dead = engine.balancer.backends["dead"]
    # Round robin offered it every other time; each time the next backend took the connection.
    assert dead.connect_failures == 2
    assert dead.in_flight == 0
    assert dead.status_classes[0] == 2  # a failed connect counts as a failure with no status
    assert engine.balancer.services["db"].unrouted == 0


async def test_a_refusing_backend_is_ejected_by_outlier_detection(echo, engine_factory, connect, closed_port):
    good = await echo("good")
    engine = await engine_factory(
        tcp_config(
            [("dead", f"127.0.0.1:{closed_port()}"), ("good", good.address)],
            outlier={"consecutive_connect_failures": 2},
        )
    )
    for _ in range(6):
        client = await connect(engine)
        assert await client.greeting() == "good"
    dead = engine.balancer.backends["dead"]
    assert engine.balancer.snapshot().backend("dead").health == "ejected"
    assert dead.connect_failures == 2  # not offered again once ejected


async def test_connect_timeout_moves_on_to_the_next_backend(echo, engine_factory, connect):
    good = await echo("good")
    # A listener that never accepts, its queue already full: the kernel drops further SYNs, so a connect to it
    # neither succeeds nor fails until the proxy's timeouts.connect runs out.
    stuck = socket.socket()
    filler = socket.socket()
    try:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(0)
        filler.connect(stuck.getsockname())
        engine = await engine_factory(
            tcp_config(
                [("stuck", f"127.0.0.1:{stuck.getsockname()[1]}"), ("good", good.address)],
                timeouts={"connect": "200ms"},
            )
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        client = await connect(engine)
        assert await client.greeting() == "good"
        assert 0.15 < loop.time() - started < 2.0
        assert engine.balancer.backends["stuck"].connect_failures == 1
        assert engine.balancer.backends["stuck"].in_flight == 0
    finally:
        filler.close()
        stuck.close()


async def test_every_backend_refusing_closes_the_client(engine_factory, connect, closed_port):
    ports = [closed_port(), closed_port()]
    engine = await engine_factory(
        tcp_config([("x", f"127.0.0.1:{ports[0]}"), ("y", f"127.0.0.1:{ports[1]}")])
    )
    client = await connect(engine)
    assert await client.read_to_end() == b""
    await wait_for(lambda: not engine.tcp_connections, what="the connection to be gone")
    backends = engine.balancer.backends
    assert backends["x"].connect_failures == backends["y"].connect_failures == 1  # one attempt each
    assert engine.balancer.services["db"].unrouted == 1


async def test_no_backend_available_closes_at_once(echo, engine_factory, connect):
    a = await echo("a")
    engine = await engine_factory(tcp_config([{"name": "a", "address": a.address, "state": "maint"}]))
    client = await connect(engine)
    assert await client.read_to_end() == b""
    assert a.accepted == 0
    assert engine.balancer.services["db"].unrouted == 1
    await wait_for(lambda: not engine.tcp_connections, what="the connection to be gone")
    log = engine.controller.recent_requests(1)
    assert (log[0].method, log[0].status, log[0].backend) == ("TCP", 503, "")


# -- bytes ------------------------------------------------------------------------------------------------------


def small_buffers(transport: Any) -> None:
    """Shrink a socket's kernel buffers (loopback autotunes them to megabytes), so that a transfer of a few
    MB fills them and what the proxy does when they are full shows."""
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)


async def test_large_transfer_both_ways_with_backpressure(echo, engine_factory, connect):
    a = await echo("a")
    a.small_buffers = True
    engine = await engine_factory(tcp_config([("a", a.address)]))
    client = await connect(engine, limit=64 * 1024)
    assert await client.greeting() == "a"
    [conn] = engine.tcp_connections
    assert conn.upstream is not None
    for transport in (client.writer.transport, conn.transport, conn.upstream.transport):
        small_buffers(transport)
    payload = os.urandom(16 * 1024 * 1024)
    client.writer.write(payload)  # all at once, and nothing is read for now: the proxy must hold back
    await wait_for(
        lambda: conn.paused & PAUSE_UPSTREAM_FULL, what="the proxy to stop reading the client (backend full)"
    )
    assert conn.transport is not None
    assert conn.upstream is not None
    assert conn.upstream.transport is not None
    bound = WRITE_HIGH + 512 * 1024  # the high-water mark and one read's worth
    assert conn.transport.get_write_buffer_size() <= bound
    assert conn.upstream.transport.get_write_buffer_size() <= bound
    assert a.received < len(payload)  # the backend stopped too: nothing piles up anywhere
    async with asyncio.timeout(DEADLINE):
        echoed = await client.reader.readexactly(len(payload))
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    client.writer.write_eof()
    assert await client.read_to_end() == b"bye"


async def test_bytes_sent_before_the_backend_is_connected_arrive_in_order(echo, engine_factory, connect):
    a = await echo("a")
    engine = await engine_factory(tcp_config([("a", a.address)]))
    reader, writer = await asyncio.open_connection(*engine.address("db"))
    try:
        writer.write(b"first ")  # at once, while the proxy is still connecting to the backend
        writer.write(b"second")
        writer.write_eof()
        async with asyncio.timeout(DEADLINE):
            assert await reader.read() == b"a\nfirst secondbye"
    finally:
        writer.close()


async def test_half_close_by_the_client(echo, engine_factory, connect):
    a = await echo("a")
    engine = await engine_factory(tcp_config([("a", a.address)]))
    client = await connect(engine)
    assert await client.greeting() == "a"
    client.writer.write(b"last words")
    client.writer.write_eof()  # done sending, still listening
    # The echo, then what the backend sent after our EOF.
    assert await client.read_to_end() == b"last wordsbye"
    await wait_for(lambda: not engine.tcp_connections, what="the connection to be counted")


async def test_half_close_by_the_backend(scripted, engine_factory, connect):
    async def script(reader, writer, up):
        writer.write(b"hello")
        writer.write_eof()  # the backend is done sending but reads on
        up.received.append(await reader.read())
        writer.close()

    up = await scripted(script)
    engine = await engine_factory(tcp_config([("s", up.address)]))
    client = await connect(engine)
    assert await client.read_to_end() == b"hello"  # EOF reaches the client
    client.writer.write(b"the client still talks")
    client.writer.write_eof()
    await wait_for(lambda: up.received == [b"the client still talks"], what="the backend to read it all")
    await wait_for(lambda: not engine.tcp_connections, what="the connection to end")


async def test_stats_count_connections_and_bytes(echo, engine_factory, connect):
    a = await echo("a")
    engine = await engine_factory(tcp_config([("a", a.address)]))
    for size in (10, 1000):
        client = await connect(engine)
        await client.greeting()
        assert await client.roundtrip(b"z" * size) == b"z" * size
        backend = engine.balancer.backends["a"]
        assert backend.in_flight == 1
        assert backend.bytes_in >= size  # counted as the bytes pass, before the connection ends
        client.writer.write_eof()
        assert await client.read_to_end() == b"bye"
        await client.close()
    await wait_for(lambda: not engine.tcp_connections, what="both connections to end")
    view = engine.balancer.snapshot().backend("a")
    assert view.in_flight == 0
    assert view.requests == 2
    assert view.status_classes[2] == 2  # proxied connections count as successes
    assert view.bytes_in == 1010
    assert view.bytes_out == 1010 + 2 * len(b"a\nbye")
    assert view.window.requests == 2
    assert view.window.errors == 0
    log = engine.controller.recent_requests(2)
    assert [(r.method, r.target, r.status, r.backend) for r in log] == [("TCP", "db", 200, "a")] * 2


async def test_backend_reset_counts_as_an_error(scripted, engine_factory, connect):
    async def script(reader, writer, up):
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST

    up = await scripted(script)
    engine = await engine_factory(tcp_config([("s", up.address)]))
    client = await connect(engine)
    client.writer.write(b"?")
    with contextlib.suppress(ConnectionError):
        await client.read_to_end()
    await wait_for(lambda: not engine.tcp_connections, what="the connection to end")
    view = engine.balancer.snapshot().backend("s")
    assert view.status_classes[5] == 1
    assert view.window.errors == 1


# -- states, timeouts, shutdown -------------------------------------------------------------------------------


async def test_drain_keeps_open_connections_and_sends_new_ones_elsewhere(echo, engine_factory, connect):
    a, b = await echo("a"), await echo("b")
    engine = await engine_factory(tcp_config([("a", a.address), ("b", b.address)]))
    first = await connect(engine)
    assert await first.greeting() == "a"
    engine.controller.drain("a")
    for _ in range(3):
        other = await connect(engine)
        assert await other.greeting() == "b"
    assert await first.roundtrip(b"still here") == b"still here"  # the drained backend's connection goes on
    assert engine.balancer.backends["a"].in_flight == 1
    first.writer.write_eof()
    assert await first.read_to_end() == b"bye"
    await wait_for(lambda: engine.balancer.backends["a"].in_flight == 0, what="the drained connection to end")


async def test_maint_lets_open_connections_finish(echo, engine_factory, connect):
    a = await echo("a")
    engine = await engine_factory(tcp_config([("a", a.address)]))
    first = await connect(engine)
    assert await first.greeting() == "a"
    engine.controller.maint("a")
    assert await first.roundtrip(b"in flight") == b"in flight"
    refused = await connect(engine)
    assert await refused.read_to_end() == b""
    assert a.accepted == 1


async def test_removed_backend_connections_close_when_it_is_dropped(echo, engine_factory, connect):
    a, b = await echo("a"), await echo("b")
    engine = await engine_factory(tcp_config([("a", a.address), ("b", b.address)]))
    client = await connect(engine)
    assert await client.greeting() == "a"
    backend = engine.balancer.backends["a"]
    engine.balancer.drop_backend(backend)  # what the tick does once a removal's deadline has passed
    with contextlib.suppress(ConnectionError):
        assert await client.read_to_end() == b""
    await wait_for(lambda: backend.in_flight == 0, what="its connection to be closed")


async def test_idle_connection_is_closed(echo, engine_factory, connect):
    a = await echo("a")
    engine = await engine_factory(tcp_config([("a", a.address)], timeouts={"idle": "200ms"}))
    client = await connect(engine)
    assert await client.greeting() == "a"
    with contextlib.suppress(ConnectionError):
        assert await client.read_to_end() == b""  # nothing sent either way: closed within about 0.2 s
    await wait_for(lambda: a.open == 0, what="the backend side to be closed too")


async def test_shutdown_stops_listening_and_closes_at_the_deadline(echo, connect):
    a = await echo("a")
    engine = Engine(tcp_config([("a", a.address)]))
    await engine.start()
    address = engine.address("db")
    client = await connect(engine)
    assert await client.greeting() == "a"
    progress: list[str] = []
    finished = await engine.shutdown(grace=0.2, on_progress=progress.append)
    assert finished is False  # the connection was still open at the deadline
    assert progress == ["waiting for 1 tcp connection(s) to end (up to 0.2s)"]
    with contextlib.suppress(ConnectionError):
        assert await client.read_to_end() == b""
    await wait_for(lambda: a.open == 0, what="the backend side to be closed")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*address)


async def test_shutdown_waits_for_a_connection_that_ends_in_time(echo, connect):
    a = await echo("a")
    engine = Engine(tcp_config([("a", a.address)]))
    await engine.start()
    client = await connect(engine)
    assert await client.greeting() == "a"

    async def finish_soon() -> bytes:
        await wait_for(lambda: engine.closing, what="shutdown to begin")
        client.writer.write_eof()
        return await client.read_to_end()

    ending = asyncio.create_task(finish_soon())
    assert await engine.shutdown(grace=DEADLINE) is True
    assert await ending == b"bye"


# -- TLS on a tcp listener ------------------------------------------------------------------------------------


async def test_tls_terminated_tcp_listener(echo, engine_factory, connect, tmp_path: Path):
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    a = await echo("a")
    engine = await engine_factory(tcp_config([("a", a.address)], tls={"cert": str(cert), "key": str(key)}))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    client = await connect(engine, ssl=context, server_hostname="localhost")
    assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() is None  # no ALPN on tcp
    assert await client.greeting() == "a"
    assert await client.roundtrip(b"secret") == b"secret"
    await client.close()
    await wait_for(lambda: not engine.tcp_connections, what="the connection to end")
    assert engine.balancer.backends["a"].bytes_in == len(b"secret")
