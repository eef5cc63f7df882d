"""Snapshot tests of the dashboard (pytest-textual-snapshot), rendered from fixed data so they are stable.

The dashboard steers a FixedController: one snapshot with backends in every state, fixed events and requests,
and a clock that does not move. Update the pictures after a deliberate change with
`python -m pytest tests/tui/test_snapshots.py --snapshot-update`, and look at them (the SVGs in
`__snapshots__`) before committing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import pytest
from textual.widgets import Input

from lbtui.core.control import ControlError, Controller, Event
from lbtui.core.stats import SlidingWindow, WindowView, merge_views
from lbtui.core.views import (
    BackendView,
    CheckView,
    ListenerView,
    RampView,
    RequestView,
    RouteView,
    ServiceView,
    Snapshot,
)
from lbtui.tui.app import Dashboard

SIZE = (160, 45)
T0 = 1_790_000_000.0  # a fixed wall clock (UTC), for events, checks and requests


def window(latencies_ms: list[float], errors: int = 0) -> WindowView:
    w = SlidingWindow(now=0.0)
    for i, ms in enumerate(latencies_ms):
        w.record(ms / 1000.0, i < errors, 5.0)
    return w.view(10.0)


def backend(name: str, group: str, port: int, **fields: object) -> BackendView:
    base: dict[str, object] = {
        "name": name,
        "service": "shop",
        "group": group,
        "address": f"127.0.0.1:{port}",
        "weight": 1,
        "admin_state": "ready",
        "health": "up",
        "health_count": 0,
        "in_flight": 0,
        "requests": 1200,
        "status_classes": (0, 0, 1190, 0, 4, 6),
        "bytes_in": 0,
        "bytes_out": 52_000,
        "connect_failures": 0,
        "ewma_ms": 6.2,
        "drain_seconds": None,
        "removing": False,
        "window": window([4.0 + (i % 9) for i in range(60)]),
        "checked": True,
        "checks": tuple(
            CheckView(T0 - 2.0 * i, True, f"200 in {1.5 + i / 10:.1f} ms", 1.5) for i in range(5, 0, -1)
        ),
    }
    base.update(fields)
    return BackendView(**base)  # type: ignore[arg-type]


def fixed_snapshot() -> Snapshot:
    failing = tuple(CheckView(T0 - 1.0, False, "status 503", 2.0) for _ in range(1))
    backends = (
        backend("blue-1", "blue", 9001),
        backend(
            "blue-2",
            "blue",
            9002,
            admin_state="drain",
            drain_seconds=12.4,
            in_flight=3,
            window=window([30.0 + i for i in range(20)]),
        ),
        backend("blue-3", "blue", 9003, admin_state="maint", requests=300, window=window([])),
        backend("blue-4", "blue", 9004, health="going_down", health_count=1, health_of=3, checks=failing),
        backend(
            "blue-5",
            "blue",
            9005,
            health="down",
            requests=40,
            status_classes=(30, 0, 10, 0, 0, 0),
            window=window([], 0),
        ),
        backend("blue-6", "blue", 9006, health="going_up", health_count=1, health_of=2),
        backend(
            "green-1",
            "green",
            9101,
            weight=2,
            window=window([8.0 + (i % 30) * 4 for i in range(40)], errors=3),
        ),
    )
    shop = ServiceView(
        name="shop",
        algorithm="least_connections",
        split=(("blue", 75), ("green", 25)),
        groups=("blue", "green"),
        backup_group=None,
        backends=backends,
        unrouted=0,
        window=merge_views([b.window for b in backends]),
        ramp=RampView("blue", "green", (5, 25, 50, 100), 1, 25, "running", 17.0, 0, ""),
    )
    return Snapshot(
        time=100.0,
        uptime=3723.0,
        listeners=(ListenerView("web", "http", "127.0.0.1:8080"),),
        services=(shop,),
        connections=12,
        extra={"unmatched": {"no route": 4, "method": 1}},
        routes=(
            RouteView(
                "api",
                "prefix /api, GET POST",
                "shop",
                ("auth api_key", "rate 10/1s"),
                window([3.0, 4.0, 5.0, 40.0] * 20),
                (0, 0, 212, 0, 19, 1),
                (("auth", 7), ("rate limit", 12)),
            ),
            RouteView(
                "catalog",
                "prefix /catalog, GET HEAD",
                "shop",
                ("cache 30s",),
                window([0.5, 1.0] * 25),
                (0, 0, 50, 0, 0, 0),
                cache=(38, 12),
            ),
            RouteView("rest", "prefix /", "shop", (), window([2.0, 3.0] * 30), (0, 0, 140, 3, 2, 0)),
        ),
    )


FIXED_EVENTS = [
    Event(4, T0 - 5, "ramp", "ramp", "shop", {"blue": 95, "green": 5}, {"blue": 75, "green": 25}, "step 2/4"),
    Event(3, T0 - 30, "health", "health", "blue-4", "up", "going_down 1/3 (status 503)"),
    Event(2, T0 - 40, "key", "state", "blue-3", "ready", "maint"),
    Event(1, T0 - 50, "key", "state", "blue-2", "ready", "drain"),
]


class FixedController(Controller):
    """The same snapshot, events and requests every time; every change is refused (nothing may move)."""

    def snapshot(self) -> Snapshot:
        return fixed_snapshot()

    def events(self, limit: int = 100) -> list[Event]:
        return FIXED_EVENTS[:limit]

    def recent_requests(self, limit: int = 100) -> list[RequestView]:
        return [
            RequestView(
                T0 - i * 0.05, "127.0.0.1", "GET", f"/products/{i}", 200, f"blue-{1 + i % 2}", "shop", 4.2, 46
            )
            for i in range(min(limit, 12))
        ]

    def _refuse(self, *args: object, **kwargs: object) -> Event:
        raise ControlError("fixed data: nothing changes")

    set_state = drain_then_maint = set_weight = remove_backend = set_algorithm = flip = _refuse  # type: ignore[assignment]
    undo = start_ramp = abort_ramp = reload = _refuse  # type: ignore[assignment]

    def add_backend(
        self,
        service: str,
        name: str,
        address: str,
        group: str = "default",
        weight: int = 1,
        actor: str = "api",
    ) -> Event:
        return self._refuse()

    def set_split(self, service: str, split: Mapping[str, int], actor: str = "api") -> Event:
        return self._refuse()


class FixedDashboard(Dashboard):
    refresh_seconds = 3600.0  # one refresh, at mount: the trend sparkline has exactly one point


@pytest.fixture
def app(monkeypatch) -> FixedDashboard:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield FixedDashboard(None, controller=FixedController())
    monkeypatch.delenv("TZ")
    time.tzset()


def test_dashboard_with_backends_in_every_state(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE)


def test_help_screen(snap_compare, app):
    assert snap_compare(app, press=["question_mark"], terminal_size=SIZE)


def test_add_backend_form(snap_compare, app):
    async def open_form(pilot) -> None:
        await pilot.press("a")
        await pilot.pause()
        for field in pilot.app.screen.query(Input):
            field.cursor_blink = False  # a blinking cursor makes the picture depend on the moment it is taken

    assert snap_compare(app, run_before=open_form, terminal_size=SIZE)


def test_confirm_dialog(snap_compare, app):
    assert snap_compare(app, press=["down", "down", "m"], terminal_size=SIZE)


def test_detail_screen(snap_compare, app):
    assert snap_compare(app, press=["down", "down", "down", "enter"], terminal_size=SIZE)


def test_events_view(snap_compare, app):
    assert snap_compare(app, press=["3"], terminal_size=SIZE)


def test_access_log_view(snap_compare, app):
    assert snap_compare(app, press=["4"], terminal_size=SIZE)


def test_routes_view(snap_compare, app):
    assert snap_compare(app, press=["2"], terminal_size=SIZE)


# -- sticky sessions: the sticky column, the services line and the detail ----------------------------------

STICKY_SHARE = {"blue-1": 780, "blue-2": 1100, "blue-3": 300, "blue-4": 0, "green-1": 1200}


def sticky_snapshot() -> Snapshot:
    """The fixed snapshot with sticky sessions on the shop service: each backend's requests by cookie."""
    snapshot = fixed_snapshot()
    shop = snapshot.services[0]
    backends = tuple(
        dataclasses.replace(b, sticky_requests=STICKY_SHARE.get(b.name, 10), sticky_cookies=40)
        for b in shop.backends
    )
    sticky = dataclasses.replace(
        shop, backends=backends, sticky="lbtui_srv", sticky_moved=12, sticky_unknown=3
    )
    return dataclasses.replace(snapshot, services=(sticky,))


class StickyController(FixedController):
    def snapshot(self) -> Snapshot:
        return sticky_snapshot()


@pytest.fixture
def sticky_app(monkeypatch) -> FixedDashboard:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield FixedDashboard(None, controller=StickyController())
    monkeypatch.delenv("TZ")
    time.tzset()


def test_dashboard_with_sticky_sessions(snap_compare, sticky_app):
    assert snap_compare(sticky_app, terminal_size=SIZE)


def test_detail_screen_with_sticky_sessions(snap_compare, sticky_app):
    assert snap_compare(sticky_app, press=["down", "enter"], terminal_size=SIZE)
