"""The routes view: each route's match, target, policies and traffic, and what no route took."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from lbtui.core.views import Snapshot
from lbtui.tui.format import matches, route_cells, routes_note
from lbtui.tui.table import Table

ROUTE_COLUMNS = (
    ("name", "route", 14),
    ("match", "match", 26),
    ("target", "service", 12),
    ("policies", "policies", 25),
    ("hit", "cache", 6),
    ("rps", "req/s", 7),
    ("p50", "p50 ms", 7),
    ("p99", "p99 ms", 8),
    ("4xx", "4xx", 6),
    ("5xx", "5xx", 6),
    ("rejected", "refused", 24),
)


class RoutesView(Vertical):
    """A note on how routes are tried (#routes-note) over the routes table (#routes)."""

    def compose(self) -> ComposeResult:
        yield Static("", id="routes-note")
        yield Table(ROUTE_COLUMNS, id="routes")

    def refresh_from(self, snapshot: Snapshot, filter_text: str) -> None:
        self.query_one("#routes-note", Static).update(routes_note(snapshot))
        if not snapshot.routes:
            return
        table = self.query_one("#routes", Table)
        table.sync(
            (route.name, route_cells(route))
            for route in snapshot.routes
            if matches(filter_text, route.name, route.match, route.target)
        )
