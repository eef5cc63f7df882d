"""The small client lbtui makes its own requests with (proxy/miniclient.py), against scripted servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from lbtui.proxy.miniclient import BadReply, ConnectFailed, KeepAlivePool, ReplyTimeout
from tests.conftest import wait_for

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def where(up) -> tuple[str, int]:
    return "127.0.0.1", up.port


@pytest.fixture
def pool() -> Iterator[KeepAlivePool]:
    pool = KeepAlivePool()
    yield pool
    pool.close()


async def test_keep_alive_reuse_and_a_body_that_ends_with_the_connection(scripted, pool):
    async def kept(reader, writer, up):
        while True:
            await up.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    async def until_close(reader, writer, up):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nall of ")
        await writer.drain()
        writer.write(b"this")

    up = await scripted(kept)
    for _ in range(3):
        reply = await pool.request(*where(up), GET)
        assert (reply.status, reply.body) == (200, b"hello")
    assert up.connections == 1
    closing = await scripted(until_close)
    reply = await pool.request(*where(closing), GET)
    assert (reply.body, reply.header(b"x-a")) == (b"all of this", b"1")
    assert pool.idle.get(where(closing)) == []  # not kept: it ended with the connection


async def test_bounds_and_failures(scripted, pool):
    async def big(reader, writer, up):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)

    async def silent(reader, writer, up):
        await up.read_request(reader)
        await reader.read()

    async def junk(reader, writer, up):
        await up.read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")

    with pytest.raises(BadReply, match="larger than 10 bytes"):
        await pool.request(*where(await scripted(big)), GET, max_body=10)
    with pytest.raises(ReplyTimeout):
        await pool.request(*where(await scripted(silent)), GET, reply_timeout=0.1)
    with pytest.raises(BadReply, match="invalid reply"):
        await pool.request(*where(await scripted(junk)), GET)
    up = await scripted(silent)
    await up.stop()
    with pytest.raises(ConnectFailed):
        await pool.request(*where(up), GET, connect_timeout=1.0)
    assert not pool.busy


async def test_a_connection_out_of_step_is_not_reused(scripted, pool):
    async def extra(reader, writer, up):
        while True:
            await up.read_request(reader)
            # A reply, then bytes nobody asked for, in the same write.
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"
            )

    up = await scripted(extra)
    for _ in range(2):
        reply = await pool.request(*where(up), GET)
        assert reply.body == b"1"
    assert up.connections == 2


async def test_a_stale_kept_connection_is_replaced_once(scripted, pool):
    async def once(reader, writer, up):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.readuntil(b"\r\n\r\n")  # the next request on this connection: hang up

    up = await scripted(once)
    for _ in range(3):
        assert (await pool.request(*where(up), GET)).body == b"ok"
    assert up.connections == 3


async def test_close_ends_busy_connections_too(scripted, pool):
    async def silent(reader, writer, up):
        await up.read_request(reader)
        await reader.read()

    up = await scripted(silent)
    task = asyncio.get_running_loop().create_task(pool.request(*where(up), GET))
    await wait_for(lambda: pool.busy and up.received, what="a request under way")
    pool.close()
    with pytest.raises(BadReply):
        await task
    assert not pool.busy
    assert not pool.idle


async def test_close_to_a_server_closes_its_busy_connections_after_their_reply(scripted, pool):
    go = asyncio.Event()

    async def slow(reader, writer, up):
        while True:
            await up.read_request(reader)
            await go.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    up = await scripted(slow)
    asking = asyncio.ensure_future(pool.request(*where(up), GET))
    await wait_for(lambda: len(up.received) == 1, what="the request arrives")
    pool.close_to(*where(up))  # the backend is drained while the call is under way
    go.set()
    reply = await asking
    assert reply.body == b"ok"  # the call under way is answered
    assert not pool.idle.get(where(up))  # and its connection is not kept for another
    assert not pool.busy
