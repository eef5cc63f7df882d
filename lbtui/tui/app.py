"""The dashboard: the engine runs inside it; every view reads snapshots, every key goes through the Controller.

This first version shows the status bar and the live backends table and steers drain and enable. The table
updates in place (only the cells that changed) twice a second, and keeps the cursor on the same backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from lbtui.core.control import ControlError, Controller
from lbtui.core.model import BackendView, Snapshot
from lbtui.serve import Runtime, ServeOptions

REFRESH_SECONDS = 0.5

# (key, label, width): fixed widths, so that a growing number never makes the table jump.
COLUMNS = (
    ("name", "backend", 16),
    ("group", "group", 8),
    ("address", "address", 22),
    ("state", "state", 11),
    ("health", "health", 14),
    ("weight", "weight", 6),
    ("in_flight", "in flight", 9),
    ("rps", "req/s", 8),
    ("requests", "requests", 10),
    ("errors", "5xx %", 6),
    ("p50", "p50 ms", 7),
    ("p99", "p99 ms", 7),
)

# HAProxy's colours, always with a word: the colour is never the only sign.
STATE_STYLE = {"ready": "green", "drain": "blue", "maint": "grey50"}
HEALTH_STYLE = {"up": "green", "down": "red", "going_up": "yellow", "going_down": "yellow", "ejected": "red"}


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def backend_cells(b: BackendView) -> dict[str, str | Text]:
    """The table cells of one backend, by column key."""
    state = b.admin_state
    if state == "drain" and b.drain_seconds is not None:
        state = f"drain {b.drain_seconds:.0f}s"
    health = b.health if not b.health_count else f"{b.health} {b.health_count}"
    errors = b.status_classes[5] + b.status_classes[0]
    total = b.requests
    return {
        "name": b.name,
        "group": b.group,
        "address": b.address,
        "state": Text(state, style=STATE_STYLE.get(b.admin_state, "")),
        "health": Text(health, style=HEALTH_STYLE.get(b.health, "")),
        "weight": str(b.weight),
        "in_flight": str(b.in_flight),
        "rps": f"{b.window.rps:.1f}",
        "requests": str(total),
        "errors": f"{100.0 * b.window.error_ratio:.1f}" if b.window.requests else "-",
        "p50": _ms(b.window.p50_ms) if b.window.requests else "-",
        "p99": _ms(b.window.p99_ms) if b.window.requests else "-",
    } | ({"errors": f"{100.0 * errors / total:.1f}"} if total and not b.window.requests else {})


def status_line(snapshot: Snapshot) -> str:
    listeners = "  ".join(f"{v.name} http://{v.address}" for v in snapshot.listeners) or "no listener"
    requests = sum(s.window.requests for s in snapshot.services)
    errors = sum(s.window.errors for s in snapshot.services)
    rps = sum(s.window.rps for s in snapshot.services)
    p99 = max((s.window.p99_ms for s in snapshot.services), default=0.0)
    uptime = time.strftime("%H:%M:%S", time.gmtime(snapshot.uptime))
    ratio = f"{100.0 * errors / requests:.1f}%" if requests else "-"
    return f"{listeners} │ {rps:.1f} req/s │ 5xx {ratio} │ p99 {_ms(p99)} ms │ up {uptime}"


class Dashboard(App[int]):
    """lbtui's dashboard, with the engine running in the same event loop."""

    CSS_PATH = "lbtui.tcss"
    TITLE = "lbtui"
    BINDINGS = [
        Binding("d", "drain", "Drain", id="drain", tooltip="Drain the selected backend: no new requests"),
        Binding("e", "enable", "Enable", id="enable", tooltip="Put the selected backend back in service"),
        Binding("q", "quit", "Quit", id="quit", tooltip="Drain the engine and quit"),
    ]

    def __init__(self, options: ServeOptions, say: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.messages: list[str] = []
        self.runtime = Runtime(options, say or self.messages.append)
        self.controller: Controller | None = None
        self._cells: dict[tuple[str, str], object] = {}

    def compose(self) -> ComposeResult:
        yield Static("starting…", id="status")
        yield DataTable(id="backends", cursor_type="row", zebra_stripes=True)
        yield Static("", id="message")
        yield Footer()

    async def on_mount(self) -> None:
        table = self.query_one("#backends", DataTable)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        if not await self.runtime.start():
            self.exit(1, message="\n".join(self.messages))
            return
        engine = self.runtime.engine
        assert engine is not None
        self.controller = engine.controller
        if self.runtime.traffic is not None:
            self.run_worker(self.runtime.traffic.run(), exclusive=False, group="traffic")
        self.refresh_view()
        self.set_interval(REFRESH_SECONDS, self.refresh_view)
        table.focus()

    def refresh_view(self) -> None:
        if self.controller is None:
            return
        snapshot = self.controller.snapshot()
        self.query_one("#status", Static).update(status_line(snapshot))
        table = self.query_one("#backends", DataTable)
        seen = set()
        with self.batch_update():
            for service in snapshot.services:
                for backend in service.backends:
                    seen.add(backend.name)
                    cells = backend_cells(backend)
                    if backend.name not in table.rows:
                        table.add_row(*(cells[key] for key, _, _ in COLUMNS), key=backend.name)
                        for key, _, _ in COLUMNS:
                            self._cells[(backend.name, key)] = cells[key]
                        continue
                    for key, _, _ in COLUMNS:
                        value = cells[key]
                        if self._cells.get((backend.name, key)) != value:
                            self._cells[(backend.name, key)] = value
                            table.update_cell(backend.name, key, value)
            for row in [r for r in table.rows if r.value not in seen]:
                table.remove_row(row)

    def selected_backend(self) -> str | None:
        table = self.query_one("#backends", DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def _act(self, verb: Callable[[str], object], past: str) -> None:
        name = self.selected_backend()
        if name is None or self.controller is None:
            return
        try:
            verb(name)
        except ControlError as error:
            self.query_one("#message", Static).update(f"{name}: {error}")
            return
        self.query_one("#message", Static).update(f"{name}: {past}")
        self.refresh_view()

    def action_drain(self) -> None:
        assert self.controller is not None
        controller = self.controller
        self._act(lambda name: controller.drain(name, actor="key"), "draining")

    def action_enable(self) -> None:
        assert self.controller is not None
        controller = self.controller
        self._act(lambda name: controller.enable(name, actor="key"), "enabled")

    async def action_quit(self) -> None:
        self.query_one("#message", Static).update("draining…")
        await self.runtime.stop()
        self.exit(0)
