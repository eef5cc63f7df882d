"""tests/conftest.py's `closed_port`: a connect to it is refused for the whole test, and nobody can take it."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest


def test_a_connect_to_a_closed_port_is_refused_every_time(closed_port):
    port = closed_port()
    for _ in range(20):
        with socket.socket() as client:
            client.settimeout(5.0)
            with pytest.raises(ConnectionRefusedError):
                client.connect(("127.0.0.1", port))


async def test_an_asyncio_connect_to_a_closed_port_is_refused(closed_port):
    port = closed_port()
    async with asyncio.timeout(5.0):
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.parametrize("reuse", [False, True], ids=["plain", "so_reuseaddr"])
def test_no_other_socket_can_bind_a_closed_port(closed_port, reuse):
    port = closed_port()
    with socket.socket() as other:
        if reuse:  # as asyncio.start_server and most servers set it
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError, match=r"(?i)address already in use") as taken:
            other.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE


async def test_no_server_can_start_on_a_closed_port(closed_port):
    port = closed_port()
    with pytest.raises(OSError, match=r"(?i)address already in use") as taken:
        await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    assert taken.value.errno == errno.EADDRINUSE


def test_each_closed_port_is_its_own(closed_port):
    ports = [closed_port() for _ in range(10)]
    assert len(set(ports)) == 10
