"""A fleet of real HAProxy processes (tests/haproxy/conftest.py's `haproxy` fixture, each with its own demo
backends of the same names), steered as one by a FleetController; closed at teardown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from lbtui.core.control import Controller
from lbtui.fleet import FleetController
from lbtui.haproxy.controller import HaproxyController
from tests.conftest import DEADLINE
from tests.haproxy.conftest import HAProxy, haproxy

__all__ = ["haproxy"]  # the fixture, for this folder's tests


def url(h: HAProxy) -> str:
    return f"haproxy://{h.socket_path}"


def kill(h: HAProxy) -> None:
    """Kill the HAProxy process from any thread, and return once its admin socket refuses connections (its
    process is gone), within DEADLINE."""
    assert h.proc is not None
    os.kill(h.proc.pid, signal.SIGKILL)
    until = time.monotonic() + DEADLINE
    while time.monotonic() < until:  # polls the condition (the socket refuses), bounded in time
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(h.socket_path))
            except OSError:
                return
        time.sleep(0.01)
    raise AssertionError(f"haproxy {h.socket_path} still answers after SIGKILL")


@pytest.fixture
async def fleets() -> AsyncIterator[Callable[..., FleetController]]:
    """`fleets({"name": controller, ...}, **options)`: a FleetController, closed at teardown."""
    made: list[FleetController] = []

    def make(members: dict[str, Controller], **options: Any) -> FleetController:
        fleet = FleetController(members, **options)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        await asyncio.to_thread(fleet.close)


def controllers(*instances: HAProxy) -> dict[str, Controller]:
    return {url(h): HaproxyController(url(h), poll_seconds=0.1) for h in instances}
