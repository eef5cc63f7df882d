"""A fleet of two real `lbtui serve` engines (admin APIs on threads of their own): latency histograms merged, not
averaged; a split, a flip and undo applied to both."""

from __future__ import annotations

import asyncio

import httpx

from lbtui.admin.remote import RemoteController
from lbtui.core.stats import percentiles_us
from lbtui.core.views import Snapshot
from tests.attached import Served, canary_config, served
from tests.conftest import wait_for


def engine_state(s: Served) -> Snapshot:
    return s.engine.call(s.controller.snapshot)


async def test_two_engines_merge_histograms_and_change_together(backends, fleets):
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as one, served(canary_config(blue, green)) as two:
        for s, count in ((one, 7), (two, 13)):
            async with httpx.AsyncClient(base_url=s.proxy) as http:
                for i in range(count):
                    assert (await http.get(f"/r{i}")).status_code == 200
        fleet = fleets({one.url: RemoteController(one.url), two.url: RemoteController(two.url)})

        def summed() -> int:
            return fleet.snapshot().service("app").requests

        await wait_for(lambda: summed() == 20, what="20 requests summed")
        merged = fleet.snapshot().backend("blue-1")
        windows = [engine_state(s).backend("blue-1").window for s in (one, two)]
        counts = tuple(a + b for a, b in zip(windows[0].counts, windows[1].counts, strict=True))
        assert merged.window.counts == counts  # the histograms added
        assert merged.window.requests == sum(w.requests for w in windows)
        p50, p99 = percentiles_us(counts, sum(counts), (0.5, 0.99))
        assert (merged.window.p50_ms, merged.window.p99_ms) == (p50 / 1000.0, p99 / 1000.0)
        assert merged.latency_avg_ms is None  # percentiles, so no average column
        assert (merged.instances, merged.agreeing) == (2, 2)

        event = await asyncio.to_thread(fleet.set_split, "app", {"blue": 50, "green": 50}, "key")
        assert (event.before, event.after) == ({"blue": 90, "green": 10}, {"blue": 50, "green": 50})
        assert [dict(engine_state(s).service("app").split or ()) for s in (one, two)] == [
            {"blue": 50, "green": 50}
        ] * 2
        await asyncio.to_thread(fleet.set_weight, "green-1", 4, "key")
        undone = await asyncio.to_thread(fleet.undo, "key")
        assert (undone.actor, undone.action, undone.after) == ("undo", "weight", 1)
        assert [engine_state(s).backend("green-1").weight for s in (one, two)] == [1, 1]
        undone = await asyncio.to_thread(fleet.undo, "key")
        assert (undone.action, undone.after) == ("split", {"blue": 90, "green": 10})
        assert [dict(engine_state(s).service("app").split or ()) for s in (one, two)] == [
            {"blue": 90, "green": 10}
        ] * 2
