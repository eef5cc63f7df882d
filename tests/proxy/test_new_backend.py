"""A new or re-enabled backend gets traffic at once, whatever the algorithm, the weights and slow start.

Light traffic (20 requests a second, one at a time), a peer with a much higher weight that has been serving
for a while, then a backend joins: added at runtime, back from maint or drain, healthy again, or its ejection
over. Its first proxied request must come within a second. (Seeded or stale latency estimates kept ewma from
trying it for tens of seconds; weighted picks left it to chance.)

For the hashing algorithms a backend gets the keys that map to it, and nothing else: "at once" means the first
such key goes to it. The requests cycle through KEYS keys (paths, and client addresses from a trusted proxy)
and the peer's weight is only twice the new one's: some of the eight map to the new backend (the ring depends
on the names alone, so that is the same on every run), and one of them comes within eight requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from lbtui.config import parse_config
from lbtui.core.algorithms import ALGORITHMS
from lbtui.demo.backends import DemoBackend
from lbtui.proxy.engine import Engine
from tests.conftest import RawClient, wait_for

RATE = 20.0  # requests a second
BOUND = 1.0  # seconds: a generous bound for "at once"
HASHING = ("ip_hash", "consistent_hash")
KEYS = 8


def config(peer: DemoBackend, algorithm: str, **service: Any) -> Any:
    """One service with `peer` at a weight well above 1 (twice 1 for the hashing algorithms)."""
    weight = 2 if algorithm in HASHING else 50
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", "trusted_proxies": ["127.0.0.1"]}],
        "services": {
            "app": {
                "algorithm": algorithm,
                "backends": [{"name": "peer", "address": peer.address, "weight": weight}],
                **service,
            }
        },
    }
    if algorithm == "consistent_hash":
        data["services"]["app"]["hash_key"] = "path"
    return parse_config(data, source="<test>")


def proxied(backend: DemoBackend) -> int:
    """Requests the proxy sent it (its health checks left out)."""
    return sum(1 for _, url, _ in backend.received if not url.startswith(b"/healthz"))


class Traffic:
    """GETs at RATE a second, one at a time, cycling through KEYS keys (path and client address); bounded.
    Keeps, for each answer, when it ended (wall clock, as the audit log's events) and which backend gave it."""

    def __init__(self, engine: Engine, limit: int = 400) -> None:
        self.engine = engine
        self.limit = limit
        self.sent = 0
        self.statuses: list[int] = []
        self.answers: list[tuple[float, str]] = []  # (time.time() at its end, the backend's name)
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        client = await RawClient.connect(self.engine.address())
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            for i in range(self.limit):
                headers = {"X-Forwarded-For": f"10.0.0.{i % KEYS}"}
                response = await client.request("GET", f"/key/{i % KEYS}", headers)
                self.sent += 1
                self.statuses.append(response.status)
                self.answers.append((time.time(), response.header("X-Backend") or ""))
                next_at += 1.0 / RATE
                await asyncio.sleep(max(0.0, next_at - loop.time()))  # pacing, not waiting for anything
        finally:
            await client.close()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def traffic() -> AsyncIterator[Callable[[Engine], Traffic]]:
    running: list[Traffic] = []

    def start(engine: Engine) -> Traffic:
        t = Traffic(engine)
        t.start()
        running.append(t)
        return t

    yield start
    for t in running:
        await t.stop()


def joined_at(engine: Engine, action: str) -> float:
    """When (wall clock) the audit log says the newest `action` event of backend `new` happened."""
    return next(e.time for e in engine.controller.events() if e.target == "new" and e.action == action)


async def first_answer_after(load: Traffic, since: float) -> float:
    """Seconds from `since` (wall clock) to the end of the first answer backend `new` gave (up to 10 s)."""

    def first() -> float | None:
        return next((t for t, name in load.answers if name == "new" and t > since), None)

    await wait_for(lambda: first() is not None, timeout=10.0, what="an answer from the new backend")
    found = first()
    assert found is not None
    return found - since


async def warm_up(traffic: Traffic, peer: DemoBackend) -> None:
    """The peer has served (and been measured) for a while before anything joins."""
    await wait_for(lambda: proxied(peer) >= 10, what="the peer to serve 10 requests")


@pytest.mark.parametrize("slow_start", ["0s", "30s"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_an_added_backend_gets_a_request_within_a_second(
    algorithm: str,
    slow_start: str,
    backends: Callable[..., Awaitable[DemoBackend]],
    engine_factory: Callable[..., Awaitable[Engine]],
    traffic: Callable[[Engine], Traffic],
) -> None:
    peer = await backends("peer")
    new = await backends("new")
    engine = await engine_factory(config(peer, algorithm, slow_start=slow_start))
    load = traffic(engine)
    await warm_up(load, peer)

    engine.controller.add_backend("app", "new", new.address, weight=1)
    waited = await first_answer_after(load, joined_at(engine, "add"))
    assert waited < BOUND, f"{algorithm}: the new backend's first request came after {waited:.2f}s"
    assert set(load.statuses) == {200}


async def leave_and_return(engine: Engine, new: DemoBackend, how: str) -> float:
    """Take `new` out of rotation `how`, then let it back; returns when (wall clock) it was back."""
    controller = engine.controller
    b = engine.balancer.backends["new"]
    if how in ("maint", "drain"):
        controller.set_state("new", how)
        controller.set_state("new", "ready")
        return joined_at(engine, "state")
    if how == "down":
        new.healthy = False
        await wait_for(lambda: b.health.value == "down", what="the health checks to see it down")
        new.healthy = True
        await wait_for(lambda: b.health.value == "up", what="the health checks to see it up")
        return joined_at(engine, "health")
    assert how == "ejected"  # its first answers were 500s (consecutive_5xx = 1)
    await wait_for(lambda: b.health.value == "ejected", what="the outlier detection to eject it")
    new.profile.error_rate = 0.0
    await wait_for(lambda: b.health.value == "up", what="the ejection to end")
    return joined_at(engine, "health")


@pytest.mark.parametrize("how", ["maint", "drain", "down", "ejected"])
@pytest.mark.parametrize("algorithm", ["ewma", "weighted_round_robin", "random"])
async def test_a_backend_back_in_rotation_gets_a_request_within_a_second(
    algorithm: str,
    how: str,
    backends: Callable[..., Awaitable[DemoBackend]],
    engine_factory: Callable[..., Awaitable[Engine]],
    traffic: Callable[[Engine], Traffic],
) -> None:
    peer = await backends("peer")
    new = await backends("new")
    engine = await engine_factory(
        config(
            peer,
            algorithm,
            slow_start="30s",
            health={"path": "/healthz", "interval": "50ms", "timeout": "50ms", "rise": 1, "fall": 1},
            outlier={"consecutive_5xx": 1, "base_ejection": "300ms", "max_ejected_percent": 50},
        )
    )
    if how == "ejected":
        new.profile.error_rate = 1.0  # until it is ejected (leave_and_return)
    engine.controller.add_backend("app", "new", new.address, weight=1)
    load = traffic(engine)
    await wait_for(lambda: proxied(new) >= 1 and proxied(peer) >= 10, what="both to serve")

    back = await leave_and_return(engine, new, how)
    waited = await first_answer_after(load, back)
    assert waited < BOUND, f"{algorithm}, back from {how}: its first request came after {waited:.2f}s"
