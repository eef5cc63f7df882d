"""The access log view: the newest finished requests, newest first (the engine's access log's tail)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical

from lbtui.core.control import Controller
from lbtui.core.views import RequestView
from lbtui.tui.format import matches, request_cells
from lbtui.tui.table import Table

LOG_COLUMNS = (
    ("time", "time", 12),
    ("client", "client", 15),
    ("method", "method", 7),
    ("target", "target", 36),
    ("status", "status", 6),
    ("route", "route", 12),
    ("consumer", "consumer", 12),
    ("backend", "backend", 14),
    ("ms", "ms", 8),
    ("bytes", "bytes", 9),
)
LOG_ROWS = 200


class LogView(Vertical):
    """The requests table (#access), rebuilt only when a request finished since the last refresh."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._newest: RequestView | None = None  # the newest request when the log was last shown

    def compose(self) -> ComposeResult:
        yield Table(LOG_COLUMNS, id="access")

    def forget(self) -> None:
        """Show the requests again at the next refresh (the filter changed)."""
        self._newest = None

    def refresh_from(self, controller: Controller, filter_text: str) -> None:
        requests = controller.recent_requests(LOG_ROWS)
        newest = requests[0] if requests else None
        if newest == self._newest:
            return
        self._newest = newest
        shown = (request_cells(request) for request in requests)
        wanted = (
            c
            for c in shown
            if matches(
                filter_text, c["client"], c["target"], c["backend"], c["status"], c["route"], c["consumer"]
            )
        )
        # Rows are keyed by place, newest first: the cursor stays at its place as requests arrive.
        self.query_one("#access", Table).sync((str(i), cells) for i, cells in enumerate(wanted))
