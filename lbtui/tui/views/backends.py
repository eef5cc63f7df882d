"""The backends view: the services line, the live backends table and the newest events under it.

A fleet (lbtui/fleet.py) adds the agree column: on how many instances a row's state and weight agree, or
DIVERGED. The table updates in place (only the cells that changed) and keeps the cursor on the same backend. Its trend
column is the request rate since the last refresh, kept here for the last TREND_POINTS refreshes; the sticky
column (while a service has sticky sessions) is the share of the last STICKY_POINTS refreshes' requests that
came by their cookie.
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.style import Style
from textual.app import ComposeResult
from textual.containers import Vertical

from lbtui.core.views import Snapshot
from lbtui.tui.format import backend_cells, matches, services_line, sparkline, sticky_share
from lbtui.tui.table import Table
from lbtui.tui.views import REFRESH_SECONDS
from lbtui.tui.views.text import TextPane

# (key, label, width): fixed widths, so that a growing number never makes the table jump.
COLUMNS = (
    ("name", "backend", 14),
    ("group", "group", 8),
    ("address", "address", 18),
    ("state", "state", 11),
    ("health", "health", 15),  # "going_down 1/3"
    ("weight", "weight", 6),
    ("in_flight", "in flight", 9),
    ("rps", "req/s", 8),
    ("requests", "requests", 9),
    ("errors", "5xx %", 6),
    ("p50", "p50 ms", 7),
    ("p99", "p99 ms", 7),
    ("trend", "req/s, last 6 s", 15),
)
# While a service has sticky sessions, a column after requests: the share of a backend's requests of the last
# 6 s that came by their cookie. A few columns are narrower then, so that the table still fits 160 cells.
_NARROWER = {"address": 15, "health": 14, "requests": 8, "p50": 6, "p99": 6}


def _with_sticky(columns: tuple[tuple[str, str, int], ...]) -> tuple[tuple[str, str, int], ...]:
    out = []
    for key, label, width in columns:
        out.append((key, label, _NARROWER.get(key, width)))
        if key == "requests":
            out.append(("sticky", "sticky", 6))
    return tuple(out)


STICKY_COLUMNS = _with_sticky(COLUMNS)
# An engine that gives only an average latency (HAProxy's rtime): one column that says so, no percentiles.
AVERAGE_COLUMNS = tuple(
    ("avg", "avg ms", 14) if key == "p50" else (key, label, width)
    for key, label, width in COLUMNS
    if key != "p99"
)


def with_agree(columns: tuple[tuple[str, str, int], ...]) -> tuple[tuple[str, str, int], ...]:
    """A fleet's columns: `agree` after weight (on how many instances state and weight agree, or DIVERGED),
    a few others narrower so that the table still fits 160 cells."""
    out = []
    for key, label, width in columns:
        out.append((key, label, _NARROWER.get(key, width)))
        if key == "weight":
            out.append(("agree", "agree", 8))
    return tuple(out)


RECENT_EVENTS = 6  # lines of the events pane under the backends table
TREND_POINTS = 20  # refreshes: 10 s at two a second
STICKY_POINTS = 12  # refreshes: the sticky column's share is of the last 6 s


class BackendsView(Vertical):
    """The services line (#services), the backends table (#backends) and the recent events (#events)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.trends: dict[str, list[float]] = {}
        self._counted: dict[str, tuple[float, int]] = {}  # backend -> (snapshot time, requests) last refresh
        # backend -> (requests, sticky requests) at the last refreshes, oldest first (the sticky column)
        self._sticky_counted: dict[str, list[tuple[int, int]]] = {}

    def compose(self) -> ComposeResult:
        yield TextPane("", id="services")
        yield Table(COLUMNS, id="backends")
        yield TextPane("", id="events")

    @property
    def selected(self) -> str | None:
        """The backend under the cursor."""
        return self.query_one("#backends", Table).cursor_key

    def show_recent_events(self, text: str) -> None:
        self.query_one("#events", TextPane).show(text)

    def refresh_from(self, snapshot: Snapshot, palette: Mapping[str, Style], filter_text: str) -> None:
        self.query_one("#services", TextPane).show(services_line(snapshot))
        table = self.query_one("#backends", Table)
        if any(b.latency_avg_ms is not None for s in snapshot.services for b in s.backends):
            columns = AVERAGE_COLUMNS
        else:
            columns = STICKY_COLUMNS if any(s.sticky for s in snapshot.services) else COLUMNS
        fleet = any(b.instances for s in snapshot.services for b in s.backends)
        table.set_columns(with_agree(columns) if fleet else columns)
        rows = []
        for service in snapshot.services:
            for backend in service.backends:
                if not matches(filter_text, f"{backend.name} {backend.group} {backend.address}"):
                    continue
                cells = backend_cells(backend, palette)
                now = (backend.requests, backend.sticky_requests)
                seen = self._sticky_counted.setdefault(backend.name, [(0, 0)])
                if now[0] < seen[-1][0]:  # counted anew (a new backend of that name, an engine restarted)
                    seen[:] = [(0, 0)]
                if service.sticky:
                    # The share since the oldest point kept (since start, until STICKY_POINTS are kept).
                    cells["sticky"] = sticky_share(now[0] - seen[0][0], now[1] - seen[0][1])
                # The trend is the rate since the last refresh (it drops at once on a drain); req/s is
                # the window's average.
                then, count = self._counted.get(backend.name, (0.0, -1))
                elapsed = snapshot.time - then
                trend = self.trends.setdefault(backend.name, [])
                if count < 0 or elapsed >= REFRESH_SECONDS / 2 or not trend:
                    # A refresh right after a key adds no point: a rate over milliseconds is noise.
                    rate = backend.window.rps if count < 0 else max(0, backend.requests - count) / elapsed
                    self._counted[backend.name] = (snapshot.time, backend.requests)
                    trend.append(rate)
                    del trend[:-TREND_POINTS]
                    seen.append(now)
                    del seen[: -STICKY_POINTS - 1]
                cells["trend"] = sparkline(trend[-12:]) + f" {trend[-1]:.0f}"  # 12 points: 6 s
                rows.append((backend.name, cells))
        table.sync(rows)
