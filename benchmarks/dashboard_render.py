"""CPU per dashboard refresh, in process: what a refresh costs the loop the engine shares.

    python benchmarks/dashboard_render.py

Renders the snapshot tests' fixed dashboard (7 backends) at 160x45 with every number changing on each refresh,
as under load, and prints the CPU time per refresh: `refresh_view` (our code) and the whole cycle (our code plus
Textual's layout and paint). The engine in the same process waits that long on every refresh.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lbtui.core.views import Snapshot
from tests.tui.test_snapshots import FixedController, FixedDashboard, fixed_snapshot

REFRESHES = 40


class Moving(FixedController):
    """The fixed snapshot with every backend's numbers moving on each call."""

    def __init__(self) -> None:
        self.calls = 0

    def snapshot(self) -> Snapshot:
        self.calls += 1
        n = self.calls
        s = fixed_snapshot()
        service = s.services[0]
        backends = tuple(
            dataclasses.replace(
                b,
                requests=b.requests + n * 7,
                in_flight=n % 5,
                window=dataclasses.replace(
                    b.window, rps=b.window.rps + n % 13, p50_ms=1 + n % 9, p99_ms=10 + n % 17
                ),
            )
            for b in service.backends
        )
        service = dataclasses.replace(service, backends=backends)
        return dataclasses.replace(s, services=(service,), uptime=s.uptime + n, time=s.time + 0.5 * n)


async def main() -> None:
    app = FixedDashboard(None, controller=Moving())
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        for _ in range(5):  # warm caches
            app.refresh_view()
            await pilot.pause()
        start = time.process_time()
        ours = 0.0
        for _ in range(REFRESHES):
            t = time.process_time()
            app.refresh_view()
            ours += time.process_time() - t
            await pilot.pause()
        cycle = time.process_time() - start
        start = time.process_time()
        for _ in range(REFRESHES):
            await pilot.pause()
        idle = time.process_time() - start
    print(f"per refresh: refresh_view {ours / REFRESHES * 1000:.2f} ms CPU, ")
    print(f"  whole cycle {(cycle - idle) / REFRESHES * 1000:.2f} ms CPU (Pilot's own pause subtracted)")


if __name__ == "__main__":
    asyncio.run(main())
