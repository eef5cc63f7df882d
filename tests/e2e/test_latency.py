"""Latency is measured to the microsecond: `lbtui serve` (on uvloop, whose loop clock ticks in whole
milliseconds) in front of a backend that answers in a known few hundred microseconds.

Every bound here is causal, not a guess about the machine: the proxy's interval for a request (its arrival to
the response's end) holds the backend's own interval for it (its arrival there to the answer written), and is
held by the client's (request sent to response read). So for each request
    backend's time <= proxy's duration <= client's round trip,
whatever the load. A clock that ticks in milliseconds breaks it both ways (0.0, or 1 ms for a 400 us trip).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RawClient, wait_for
from tests.e2e.test_ctl import read_lines_until, run_ctl, start_serve
from tests.e2e.test_serve import stop

SERVICE_SECONDS = 0.0003  # the backend busy-waits this long before it answers: a known 300 us
REQUESTS = 200
US = 1e-6  # the access log's unit (its durations are rounded to the microsecond)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not on Windows")


class TimedBackend(asyncio.Protocol):
    """HTTP/1.1 keep-alive: each request (no body) is answered SERVICE_SECONDS after its head arrived, and
    how long it took here, measured as the proxy's clock would be, is kept by X-Request-ID."""

    served: dict[str, float]

    def __init__(self, served: dict[str, float]) -> None:
        self.served = served
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        arrived = time.perf_counter()
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            request_id = ""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"x-request-id":
                    request_id = value.strip().decode()
            answered = arrived
            while (
                answered - arrived < SERVICE_SECONDS
            ):  # busy: a sleep ends whenever the loop gets round to it
                answered = time.perf_counter()
            # Read before the write: once written, the proxy may have the answer before this process runs again.
            self.served[request_id] = answered - arrived
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            arrived = time.perf_counter()


@pytest.fixture
async def timed_backend() -> AsyncIterator[tuple[str, dict[str, float]]]:
    served: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: TimedBackend(served), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}", served
    server.close()
    await server.wait_closed()


async def ctl(admin: str, *args: str) -> str:
    code, out, err = await run_ctl(admin, *args)
    assert code == 0, err
    return out


async def test_latency_of_a_sub_millisecond_backend_is_measured_to_the_microsecond(
    tmp_path: Path, timed_backend: tuple[str, dict[str, float]]
) -> None:
    address, served = timed_backend
    log_path = tmp_path / "access.log"
    config = tmp_path / "lbtui.toml"
    config.write_text(
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n'
        '[admin]\nbind = "127.0.0.1:0"\n'  # the port it got is read from what serve says
        f'[access_log]\npath = "{log_path}"\nformat = "json"\n'
        '[services.app]\nhealth = { path = "/healthz", interval = "200ms", timeout = "200ms" }\n'
        f'[[services.app.backends]]\nname = "b1"\naddress = "{address}"\n'
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = start_serve(config, env)
    try:
        found = await read_lines_until(proc, ["listener web on ", "admin API on "])
        host, port = found["listener web on "].removeprefix("http://").rsplit(":", 1)
        admin = found["admin API on "]
        client = await RawClient.connect((host, int(port)))
        round_trips: dict[str, float] = {}
        try:
            for i in range(REQUESTS):
                request_id = f"timed-{i}"
                sent = time.perf_counter()
                response = await client.request("GET", "/", {"X-Request-ID": request_id})
                round_trips[request_id] = time.perf_counter() - sent
                assert response.status == 200
        finally:
            await client.close()

        # The access log: every request's duration between the backend's time and the client's round trip.
        def logged() -> dict[str, dict]:  # type: ignore[type-arg]
            if not log_path.exists():
                return {}
            lines = [json.loads(line) for line in log_path.read_text().splitlines() if line]
            return {e["request_id"]: e for e in lines if e["request_id"].startswith("timed-")}

        await wait_for(
            lambda: len(logged()) == REQUESTS, what="the access log (written by the engine's tick)"
        )
        entries = logged()
        assert len(entries) == REQUESTS
        for request_id, entry in entries.items():
            backend, trip = served[request_id], round_trips[request_id]
            assert backend - US <= entry["duration"] <= trip + US, (request_id, backend, entry, trip)
            assert entry["upstream_header"] <= entry["duration"]
        durations = sorted(e["duration"] for e in entries.values())
        median = statistics.median(durations)
        # About 0.5 ms; 10 ms is a generous bound for a busy machine (the bounds above are the exact ones).
        assert SERVICE_SECONDS <= median < 0.010, durations

        # The admin API: the backend's p50 (from the stats histogram, exact to 1/64) where the requests were.
        async with httpx.AsyncClient(base_url=admin, timeout=10) as http:
            state = (await http.get("/api/v1/state")).json()
        b1 = state["services"][0]["backends"][0]
        p50_ms = b1["window"]["p50_ms"]
        client_median = statistics.median(round_trips.values())
        assert SERVICE_SECONDS * 1000 * (1 - 1 / 64) <= p50_ms <= client_median * 1000 * (1 + 1 / 64)
        # About 0.5 ms here (0.3 in the backend, the rest ours); 10 ms: generous for a busy machine.
        assert p50_ms < 10.0, (p50_ms, client_median)
        # The health checks ran against the same backend: their durations are real, not whole milliseconds.
        checks = [c["duration_ms"] for c in b1["checks"]]
        assert checks
        assert all(d >= SERVICE_SECONDS * 1000 for d in checks), checks
        assert any(d != round(d) for d in checks), checks

        # `lbtui ctl requests`: the ms column, to the 10 us, never 0.00.
        out = await ctl(admin, "requests")
        rows = [line.split() for line in out.splitlines()[1:] if "/" in line]
        assert rows
        shown = [float(row[-1]) for row in rows]
        assert all(ms >= SERVICE_SECONDS * 1000 - 0.01 for ms in shown), out
        assert statistics.median(shown) < 10.0, out
    finally:
        stop(proc)
