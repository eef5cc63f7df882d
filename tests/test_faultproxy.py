"""The fault proxy (tests/faultproxy.py) does what each toxic says, both ways, and cleans up after itself.

The target is an echo server (what goes up comes back down) or a sink that records what it reads, and how its
connection ended. Absences ("nothing arrives") are shown over a short bounded wait; everything else waits on a
condition or a read with a deadline.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from tests.conftest import wait_for
from tests.faultproxy import DOWNSTREAM, UPSTREAM, FaultProxy

T = 5.0  # the bound on any wait that should succeed
QUIET = 0.3  # how long "nothing happens" is watched for
# The latency the timing tests add. A round trip without it must come back sooner: on a busy machine a loopback
# round trip can take a good part of 100 ms, so the added latency is large enough for that bound to be generous.
LATENCY = 0.4


class Target:
    """A TCP server on 127.0.0.1: `echo` sends back what it reads; either way it records reads and endings."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.reads: list[bytes] = []
        self.endings: list[str] = []  # per connection: "eof" or "reset"
        self.accepted = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def received(self) -> bytes:
        return b"".join(self.reads)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            for _ in range(100_000):
                data = await reader.read(65536)
                if not data:
                    self.endings.append("eof")
                    return
                self.reads.append(data)
                if self.echo:
                    writer.write(data)
                    await writer.drain()
        except ConnectionResetError:
            self.endings.append("reset")
        finally:
            writer.close()

    async def start(self) -> Target:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()


@pytest.fixture
async def targets() -> AsyncIterator[list[Target]]:
    started: list[Target] = []
    yield started
    for t in started:
        await t.stop()


@pytest.fixture
async def echo(targets: list[Target]) -> Target:
    t = await Target(echo=True).start()
    targets.append(t)
    return t


@pytest.fixture
async def sink(targets: list[Target]) -> Target:
    t = await Target(echo=False).start()
    targets.append(t)
    return t


class Conn:
    """A client connection through the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_exactly(self, n: int, timeout: float = T) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.reader.readexactly(n)

    async def ending(self, timeout: float = QUIET) -> str:
        """How the connection ends from here: "eof", "reset", or "open" (nothing within `timeout`); any data
        that arrives first is an error."""
        try:
            async with asyncio.timeout(timeout):
                data = await self.reader.read(65536)
        except TimeoutError:
            return "open"
        except ConnectionResetError:
            return "reset"
        assert data == b"", f"unexpected data {data!r}"
        return "eof"

    async def roundtrip(self, data: bytes) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self.send(data)
        assert await self.read_exactly(len(data)) == data
        return loop.time() - start


@pytest.fixture
async def connect() -> AsyncIterator:
    opened: list[Conn] = []

    async def open_(proxy: FaultProxy) -> Conn:
        reader, writer = await asyncio.open_connection(*proxy.addr)
        conn = Conn(reader, writer)
        opened.append(conn)
        return conn

    yield open_
    for c in opened:
        c.writer.close()


async def test_passthrough_both_ways_with_counters(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    a = await connect(proxy)
    b = await connect(proxy)
    await a.roundtrip(b"hello")
    await b.roundtrip(b"x" * 200_000)
    assert proxy.accepted == 2
    assert echo.accepted == 2
    assert proxy.bytes_upstream == proxy.bytes_downstream == 200_005
    assert proxy.open_links == 2
    a.writer.close()
    await wait_for(lambda: proxy.open_links == 1, T, "the closed link to go")
    assert echo.endings == ["eof"]  # the client's close went through as a close


@pytest.mark.parametrize("direction", [UPSTREAM, DOWNSTREAM])
async def test_latency_holds_data_in_one_direction(fault_proxy, echo, connect, direction):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    conn = await connect(proxy)
    assert await conn.roundtrip(b"warm") < LATENCY
    proxy.latency(LATENCY * 1000, direction=direction)
    assert await conn.roundtrip(b"slow") >= LATENCY
    proxy.latency(LATENCY * 1000, direction=UPSTREAM)
    proxy.latency(LATENCY * 1000, direction=DOWNSTREAM)
    assert await conn.roundtrip(b"both") >= 2 * LATENCY
    proxy.clear()
    assert await conn.roundtrip(b"fast") < LATENCY


async def test_latency_is_held_from_arrival_not_one_piece_after_another(fault_proxy, sink, connect):
    proxy = await fault_proxy(("127.0.0.1", sink.port))
    proxy.latency(LATENCY * 1000, direction=UPSTREAM)
    conn = await connect(proxy)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(5):  # five pieces, each held from its own arrival: all there after one latency, not five
        await conn.send(b"%d" % i)
    await wait_for(lambda: sink.received == b"01234", T, "the pieces at the target")
    elapsed = loop.time() - start
    assert LATENCY <= elapsed < 3 * LATENCY


async def test_jitter_varies_latency_around_its_mean(fault_proxy, echo, connect):
    seed = 2
    proxy = await fault_proxy(("127.0.0.1", echo.port), seed=seed)
    proxy.latency(300, jitter_ms=240)
    conn = await connect(proxy)
    rng = random.Random(seed)
    expected = [0.3 + rng.uniform(-0.24, 0.24) for _ in range(4)]  # one draw per piece sent down
    measured = [await conn.roundtrip(b"ping") for _ in range(4)]
    assert all(m >= e - 0.002 for m, e in zip(measured, expected, strict=True)), (measured, expected)
    assert min(expected) < 0.12  # the seed gives both ends of the range
    assert max(expected) > 0.48
    # Less than the mean (by some 200 ms of room): only jitter does that.
    assert measured[expected.index(min(expected))] < 0.3


@pytest.mark.parametrize("direction", [UPSTREAM, DOWNSTREAM])
async def test_slicer_cuts_writes_into_slices_spaced_by_the_delay(fault_proxy, echo, connect, direction):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    proxy.slicer(10, delay_ms=20, direction=direction)
    conn = await connect(proxy)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await conn.send(b"abcdefghij" * 5)
    reads = []
    async with asyncio.timeout(T):
        while sum(map(len, reads)) < 50:
            reads.append(await conn.reader.read(65536))
    assert b"".join(reads) == b"abcdefghij" * 5
    assert loop.time() - start >= 4 * 0.02
    pieces = echo.reads if direction == UPSTREAM else reads
    assert [len(p) for p in pieces] == [10] * 5


@pytest.mark.parametrize("then", ["close", "reset", "hold"])
async def test_limit_data_downstream(fault_proxy, echo, connect, then):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    conn = await connect(proxy)
    await conn.roundtrip(b"before")  # bytes before the toxic do not count toward its limit
    proxy.limit_data(7, then=then)
    await conn.send(b"0123456789ABCDEF")
    assert await conn.read_exactly(7) == b"0123456"
    expected = {"close": "eof", "reset": "reset", "hold": "open"}[then]
    assert await conn.ending(T if then != "hold" else QUIET) == expected
    if then == "hold":
        assert proxy.open_links == 1
        proxy.clear()  # what was held is lost; what comes next goes through
        assert await conn.roundtrip(b"after") >= 0
    else:
        await wait_for(lambda: proxy.open_links == 0, T, "the link to go")
    assert proxy.bytes_downstream == len(b"before") + 7 + (5 if then == "hold" else 0)


async def test_limit_data_upstream_closes_after_the_limit(fault_proxy, sink, connect):
    proxy = await fault_proxy(("127.0.0.1", sink.port))
    proxy.limit_data(4, direction=UPSTREAM)
    conn = await connect(proxy)
    await conn.send(b"abcdefgh")
    assert await conn.ending(T) == "eof"
    await wait_for(lambda: sink.endings == ["eof"], T, "the target to see the close")
    assert sink.received == b"abcd"
    assert proxy.bytes_upstream == 4


async def test_limit_data_zero_with_reset_resets_on_the_first_byte(fault_proxy, sink, connect):
    proxy = await fault_proxy(("127.0.0.1", sink.port))
    proxy.limit_data(0, direction=UPSTREAM, then="reset")
    conn = await connect(proxy)
    assert await conn.ending(QUIET) == "open"  # nothing sent yet: nothing happens
    await conn.send(b"x")
    # An upstream toxic resets the side that receives upstream data (the target); the client gets a close.
    await wait_for(lambda: sink.endings == ["reset"], T, "the target to be reset")
    assert await conn.ending(T) == "eof"
    assert sink.received == b""


async def test_reset_peer_now_resets_open_and_new_connections(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    conn = await connect(proxy)
    await conn.roundtrip(b"alive")
    proxy.reset_peer()
    assert await conn.ending(T) == "reset"
    fresh = await connect(proxy)  # accepted (the port listens), then reset
    assert await fresh.ending(T) == "reset"
    await wait_for(lambda: echo.endings.count("eof") == 2, T, "the target's side to be closed")
    proxy.clear()
    assert await (await connect(proxy)).roundtrip(b"ok") >= 0


async def test_reset_peer_after_a_delay(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    proxy.reset_peer(after_ms=LATENCY * 1000)
    conn = await connect(proxy)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await conn.roundtrip(b"in time") < LATENCY
    assert await conn.ending(T) == "reset"
    assert loop.time() - start >= LATENCY


async def test_reset_peer_upstream_resets_the_target(fault_proxy, sink, connect):
    proxy = await fault_proxy(("127.0.0.1", sink.port))
    conn = await connect(proxy)
    await conn.send(b"seen")
    await wait_for(lambda: sink.received == b"seen", T, "the bytes at the target")
    proxy.reset_peer(direction=UPSTREAM)
    await wait_for(lambda: sink.endings == ["reset"], T, "the target to be reset")
    assert await conn.ending(T) == "eof"


async def test_blackhole_downstream_swallows_and_never_closes(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    proxy.blackhole()
    conn = await connect(proxy)
    await conn.send(b"into the void")
    await wait_for(lambda: echo.received == b"into the void", T, "the request at the target")
    assert await conn.ending(QUIET) == "open"  # the echo came back to the proxy, and went nowhere
    await echo.stop()  # even the target closing is swallowed
    await wait_for(lambda: echo.endings == ["eof"], T, "the target to close")
    assert await conn.ending(QUIET) == "open"
    assert proxy.bytes_downstream == 0


async def test_blackhole_upstream_then_cleared(fault_proxy, sink, connect):
    proxy = await fault_proxy(("127.0.0.1", sink.port))
    proxy.blackhole(direction=UPSTREAM)
    conn = await connect(proxy)
    await conn.send(b"lost")
    assert await conn.ending(QUIET) == "open"
    assert sink.received == b""
    proxy.clear(UPSTREAM)
    await conn.send(b"found")
    await wait_for(lambda: sink.received == b"found", T, "the bytes after the blackhole went")
    assert proxy.bytes_upstream == 5


async def test_down_refuse_then_up_on_the_same_port(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    kept = await connect(proxy)
    port = proxy.port
    await proxy.down("refuse")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*proxy.addr)
    assert await kept.roundtrip(b"still here") >= 0  # existing connections are kept
    await proxy.up()
    assert proxy.port == port
    assert await (await connect(proxy)).roundtrip(b"back") >= 0
    assert proxy.accepted == 2


async def test_down_reset_accepts_then_resets(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    await proxy.down("reset")
    conn = await connect(proxy)
    assert await conn.ending(T) == "reset"
    assert proxy.accepted == 1
    assert echo.accepted == 0  # nothing reached the target
    await proxy.up()
    assert await (await connect(proxy)).roundtrip(b"back") >= 0


async def test_down_blackhole_makes_connects_hang(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    await proxy.down("blackhole")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.open_connection(*proxy.addr), QUIET)
    assert proxy.accepted == 0
    await proxy.up()
    assert await (await connect(proxy)).roundtrip(b"back") >= 0


async def test_down_with_existing_reset_cuts_open_connections(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    conn = await connect(proxy)
    await conn.roundtrip(b"alive")
    await proxy.down("refuse", existing="reset")
    assert await conn.ending(T) == "reset"
    assert proxy.open_links == 0


async def test_a_target_that_refuses_resets_the_client(fault_proxy, connect, closed_port):
    proxy = await fault_proxy(("127.0.0.1", closed_port()))
    conn = await connect(proxy)
    assert await conn.ending(T) == "reset"
    assert proxy.accepted == 1


async def test_a_reset_from_the_target_is_passed_on_as_a_reset(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    conn = await connect(proxy)
    await conn.roundtrip(b"alive")
    w = echo.writers[0]
    w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()
    assert await conn.ending(T) == "reset"


async def test_stop_ends_every_connection_and_task(echo, connect):
    proxy = await FaultProxy(("127.0.0.1", echo.port)).start()
    try:
        conns = [await connect(proxy) for _ in range(3)]
        await conns[0].roundtrip(b"a")
        proxy.blackhole()
        await conns[1].send(b"b")
        await wait_for(lambda: proxy.open_links == 3, T, "three links")
    finally:
        await proxy.stop()
    for c in conns:
        assert await c.ending(T) in ("eof", "reset")
    assert proxy.open_links == 0
    assert not proxy._handlers
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*proxy.addr)


async def test_changing_a_toxic_applies_to_running_connections(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    conn = await connect(proxy)
    assert await conn.roundtrip(b"1") < LATENCY
    proxy.latency(LATENCY * 1000)
    assert await conn.roundtrip(b"2") >= LATENCY
    proxy.latency(0)
    assert await conn.roundtrip(b"3") < LATENCY
    with pytest.raises(ValueError, match="direction"):
        proxy.latency(1, direction="sideways")  # type: ignore[arg-type]


async def test_toxics_of_one_direction_leave_the_other_alone(fault_proxy, echo, connect):
    proxy = await fault_proxy(("127.0.0.1", echo.port))
    proxy.blackhole()  # downstream
    proxy.latency(1, direction=UPSTREAM)
    assert not proxy.toxics[UPSTREAM].blackhole
    assert proxy.toxics[DOWNSTREAM].latency == 0
    conn = await connect(proxy)
    await conn.send(b"up")
    await wait_for(lambda: echo.received == b"up", T, "the bytes at the target")
    assert await conn.ending(QUIET) == "open"  # and the echo swallowed on the way down
