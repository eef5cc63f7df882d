"""The events view: every audited change the controller keeps, newest first (who, what, before -> after)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical

from lbtui.core.control import Controller, Event
from lbtui.tui.format import event_cells, matches
from lbtui.tui.table import Table

EVENT_COLUMNS = (
    ("id", "#", 5),
    ("time", "time", 8),
    ("actor", "who", 6),
    ("action", "what", 9),
    ("target", "target", 16),
    ("change", "before -> after", 44),
    ("note", "note", 60),
)
KEPT_EVENTS = 500  # the view keeps what the controller keeps, no more


class EventsView(Vertical):
    """The events table (#events-table). It asks the controller for the events only when a new one came."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._newest = -1  # the newest event id when the events were last shown

    def compose(self) -> ComposeResult:
        yield Table(EVENT_COLUMNS, id="events-table")

    def forget(self) -> None:
        """Show the events again at the next refresh (the filter changed)."""
        self._newest = -1

    def refresh_from(self, controller: Controller, filter_text: str) -> list[Event] | None:
        """Show the events that match the filter, newest first, and return them; None when no event came
        since the last time (nothing changed)."""
        newest = controller.events(1)
        newest_id = newest[0].id if newest else 0
        if newest_id == self._newest:
            return None
        self._newest = newest_id
        events = [e for e in controller.events(KEPT_EVENTS) if matches(filter_text, *event_cells(e).values())]
        self.query_one("#events-table", Table).sync((str(e.id), event_cells(e)) for e in events)
        return events
