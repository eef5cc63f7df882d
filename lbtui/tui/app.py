"""The dashboard: the engine runs inside it; every view reads snapshots, every key goes through the Controller.

It shows the status bar, the live backends table and the events of this run, and steers by key. The table
updates in place (only the cells that changed) twice a second, and keeps the cursor on the same backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, RichLog, Static

from lbtui.core.algorithms import ALGORITHMS
from lbtui.core.control import ControlError, Controller, Event
from lbtui.core.model import BackendView, Snapshot
from lbtui.core.stats import bucket_bounds
from lbtui.serve import Runtime, ServeOptions
from lbtui.tui.commands import DashboardCommands
from lbtui.tui.screens import (
    AddBackendScreen,
    ChoiceScreen,
    ConfirmScreen,
    DetailScreen,
    FilterScreen,
    HelpScreen,
)

REFRESH_SECONDS = 0.5

# (key, label, width): fixed widths, so that a growing number never makes the table jump.
COLUMNS = (
    ("name", "backend", 14),
    ("group", "group", 8),
    ("address", "address", 20),
    ("state", "state", 11),
    ("health", "health", 12),
    ("weight", "weight", 6),
    ("in_flight", "in flight", 9),
    ("rps", "req/s", 8),
    ("requests", "requests", 9),
    ("errors", "5xx %", 6),
    ("p50", "p50 ms", 7),
    ("p99", "p99 ms", 7),
    ("trend", "req/s, last 6 s", 16),
)

SPARKS = "▁▂▃▄▅▆▇█"
TREND_POINTS = 20  # refreshes: 10 s at two a second


def sparkline(values: list[float]) -> str:
    """Block characters scaled to the largest value; never alone: the caller puts the number beside it."""
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))] for v in values)


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


def split_bar(split: tuple[tuple[str, int], ...] | None, width: int = 20) -> str:
    """`blue 90% ██████████████████░░ green 10%` (first group filled): the split in words and a bar."""
    if not split:
        return "no split"
    total = sum(w for _, w in split) or 1
    shares = [(g, 100.0 * w / total) for g, w in split]
    if len(shares) != 2:
        return "  ".join(f"{g} {p:.0f}%" for g, p in shares)
    (a, pa), (b, pb) = shares
    filled = round(width * pa / 100.0)
    return f"{a} {pa:.0f}% {'█' * filled}{'░' * (width - filled)} {b} {pb:.0f}%"


def services_line(snapshot: Snapshot) -> str:
    return "   ".join(f"{s.name}: {s.algorithm}, {split_bar(s.split)}" for s in snapshot.services)


def latency_histogram(counts: tuple[int, ...], rows: int = 8, width: int = 40) -> list[str]:
    """The latency distribution of a window as text bars, in up to `rows` ranges of similar size."""
    nonzero = [i for i, c in enumerate(counts) if c]
    if not nonzero:
        return ["no requests in the window"]
    lo, hi = nonzero[0], nonzero[-1] + 1
    step = max(1, (hi - lo + rows - 1) // rows)
    groups = [(i, min(i + step, hi)) for i in range(lo, hi, step)]
    totals = [sum(counts[a:b]) for a, b in groups]
    peak = max(totals) or 1
    lines = []
    for (a, b), total in zip(groups, totals, strict=True):
        low, high = bucket_bounds(a)[0], bucket_bounds(b - 1)[1]
        bar = "█" * max(1 if total else 0, round(width * total / peak))
        lines.append(f"{low / 1000:>9.2f}-{high / 1000:<9.2f} ms {bar} {total}")
    return lines


def detail_text(snapshot: Snapshot, name: str) -> str:
    try:
        b = snapshot.backend(name)
    except KeyError:
        return f"{name}: removed"
    sc = b.status_classes
    w = b.window
    lines = [
        f"{b.name}  ({b.service}, group {b.group}, {b.address})",
        f"state {b.admin_state}, health {b.health}, weight {b.weight}, in flight {b.in_flight}",
        f"requests {b.requests}   connect failures {b.connect_failures}   EWMA {b.ewma_ms:.2f} ms",
        f"status: 1xx {sc[1]}  2xx {sc[2]}  3xx {sc[3]}  4xx {sc[4]}  5xx {sc[5]}  failed {sc[0]}",
        f"bytes in {b.bytes_in}  out {b.bytes_out}",
        "",
        f"last {w.seconds:.0f} s: {w.requests} requests, {w.rps:.1f} req/s, "
        f"p50 {w.p50_ms:.2f}  p90 {w.p90_ms:.2f}  p99 {w.p99_ms:.2f}  p99.9 {w.p999_ms:.2f} ms",
        "",
        *latency_histogram(w.counts),
        "",
        "escape: back",
    ]
    return "\n".join(lines)


def status_level(snapshot: Snapshot) -> str:
    """ "error" when a service has no backend that can serve, "warning" when one is degraded, else "ok"."""
    level = "ok"
    for service in snapshot.services:
        serving = [
            b for b in service.backends if b.admin_state == "ready" and b.health in ("up", "going_down")
        ]
        if not serving:
            return "error"
        if len(serving) < len(service.backends) or service.window.error_ratio > 0.05:
            level = "warning"
    return level


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
    COMMANDS = App.COMMANDS | {DashboardCommands}
    BINDINGS = [
        Binding("d", "drain", "Drain", id="drain", tooltip="Drain the selected backend: no new requests"),
        Binding("e", "enable", "Enable", id="enable", tooltip="Put the selected backend back in service"),
        Binding("m", "maint", "Maint", id="maint", tooltip="Maintenance: no traffic at all (asks first)"),
        Binding(
            "plus",
            "weight(1)",
            "Weight+",
            key_display="+",
            id="weight_up",
            tooltip="Raise the selected backend's weight",
        ),
        Binding(
            "minus",
            "weight(-1)",
            "Weight-",
            key_display="-",
            id="weight_down",
            tooltip="Lower the selected backend's weight",
        ),
        Binding(
            "right_square_bracket",
            "shift(5)",
            "Canary+5",
            key_display="]",
            id="split_up",
            tooltip="Shift 5 points of the split to the canary group",
        ),
        Binding(
            "left_square_bracket",
            "shift(-5)",
            "Canary-5",
            key_display="[",
            id="split_down",
            tooltip="Shift 5 points of the split back to the stable group",
        ),
        Binding(
            "a",
            "add",
            "Add",
            id="add",
            tooltip="Add a backend (a form: service, name, address, group, weight)",
        ),
        Binding(
            "x",
            "remove",
            "Remove",
            id="remove",
            tooltip="Remove the selected backend: drains first (asks first)",
        ),
        Binding(
            "l", "algorithm", "Algorithm", id="algorithm", tooltip="Choose the service's balancing algorithm"
        ),
        Binding(
            "f",
            "flip",
            "Flip",
            id="flip",
            tooltip="Blue/green flip: swap the split's two groups (asks first)",
        ),
        Binding("u", "undo", "Undo", id="undo", tooltip="Undo the last change"),
        Binding(
            "enter",
            "detail",
            "Detail",
            id="detail",
            tooltip="The selected backend in detail: latency distribution, status codes",
        ),
        Binding(
            "slash",
            "filter",
            "Filter",
            key_display="/",
            id="filter",
            tooltip="Show only backends whose name, group or address contains a text",
        ),
        Binding("p", "pause", "Pause", id="pause", tooltip="Pause or resume refreshing the view"),
        Binding(
            "question_mark", "help", "Help", key_display="?", id="help", tooltip="Every key and what it does"
        ),
        Binding("q", "quit", "Quit", id="quit", tooltip="Drain the engine and quit (asks first)"),
    ]
    # Keys that change the balancer: all off with --read-only.
    STEERING = frozenset(
        {"drain", "enable", "maint", "weight", "shift", "flip", "undo", "remove", "algorithm", "add"}
    )

    def __init__(
        self, options: ServeOptions, say: Callable[[str], None] | None = None, read_only: bool = False
    ) -> None:
        super().__init__()
        self.read_only = read_only
        self.paused = False
        self.filter_text = ""
        self.trends: dict[str, list[float]] = {}
        self.messages: list[str] = []
        self.runtime = Runtime(options, say or self.messages.append)
        self.controller: Controller | None = None
        self._cells: dict[tuple[str, str], object] = {}

    def compose(self) -> ComposeResult:
        yield Static("starting…", id="status")
        yield Static("", id="services")
        yield DataTable(id="backends", cursor_type="row", zebra_stripes=True)
        yield RichLog(id="events", max_lines=500, wrap=False)
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
        engine.controller.listeners.append(self.show_event)
        if self.runtime.traffic is not None:
            self.run_worker(self.runtime.traffic.run(), exclusive=False, group="traffic")
        self.refresh_view()
        self.set_interval(REFRESH_SECONDS, self.refresh_view)
        table.focus()

    def show_event(self, event: Event) -> None:
        """Every change, whoever made it (a key, the engine): who, what, before and after."""
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
        self.query_one("#events", RichLog).write(
            f"{stamp}  {event.actor:<6} {event.action:<9} {event.target:<16} {event.before} -> {event.after}"
        )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.read_only and action in self.STEERING:
            return None  # shown disabled in the footer, does nothing
        return True

    def refresh_view(self) -> None:
        if self.controller is None or self.paused:
            return
        snapshot = self.controller.snapshot()
        status = self.query_one("#status", Static)
        status.update(status_line(snapshot))
        level = status_level(snapshot)
        status.set_class(level == "warning", "warning")
        status.set_class(level == "error", "error")
        self.query_one("#services", Static).update(services_line(snapshot))
        table = self.query_one("#backends", DataTable)
        seen = set()
        with self.batch_update():
            wanted = self.filter_text.lower()
            for service in snapshot.services:
                for backend in service.backends:
                    text = f"{backend.name} {backend.group} {backend.address}".lower()
                    if wanted and wanted not in text:
                        continue
                    seen.add(backend.name)
                    cells = backend_cells(backend)
                    trend = self.trends.setdefault(backend.name, [])
                    trend.append(backend.window.rps)
                    del trend[:-TREND_POINTS]
                    cells["trend"] = sparkline(trend[-12:]) + f" {backend.window.rps:.0f}"  # 12 points: 6 s
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

    def say(self, text: str) -> None:
        self.query_one("#message", Static).update(text)

    def _service_of(self, name: str) -> str | None:
        if self.controller is None:
            return None
        try:
            return self.controller.snapshot().backend(name).service
        except KeyError:
            return None

    def _do(self, change: Callable[[], Event]) -> None:
        try:
            event = change()
        except ControlError as error:
            self.say(str(error))
            return
        self.say(f"{event.target}: {event.action} {event.before} -> {event.after}")
        self.refresh_view()

    def _confirm_then_do(self, question: str, change: Callable[[], Event]) -> None:
        """Destructive actions ask first (Cancel focused); the change happens only on yes."""

        def answer(yes: bool | None) -> None:
            if yes:
                self._do(change)

        self.push_screen(ConfirmScreen(question), answer)

    def action_drain(self) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is not None and controller is not None:
            self._do(lambda: controller.drain(name, actor="key"))

    def action_enable(self) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is not None and controller is not None:
            self._do(lambda: controller.enable(name, actor="key"))

    def action_maint(self) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is not None and controller is not None:
            self._confirm_then_do(
                f"Put {name} in maintenance? It gets no traffic at all.",
                lambda: controller.maint(name, actor="key"),
            )

    def action_weight(self, delta: int) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is None or controller is None:
            return
        weight = controller.snapshot().backend(name).weight
        self._do(lambda: controller.set_weight(name, max(0, weight + delta), actor="key"))

    def action_shift(self, points: int) -> None:
        """Move `points` of the split toward the canary group (the split's second group)."""
        name, controller = self.selected_backend(), self.controller
        service = self._service_of(name) if name is not None else None
        if service is None or controller is None:
            return
        split = controller.snapshot().service(service).split
        if not split or len(split) < 2:
            self.say(f"service {service} has no split to shift")
            return
        (stable, a), (canary, b) = split[0], split[1]
        total = a + b
        moved = max(-b, min(a, points * total // 100 if total else points))
        new = {group: weight for group, weight in split}
        new[stable], new[canary] = a - moved, b + moved
        self._do(lambda: controller.set_split(service, new, actor="key"))

    def action_flip(self) -> None:
        name, controller = self.selected_backend(), self.controller
        service = self._service_of(name) if name is not None else None
        if service is not None and controller is not None:
            self._confirm_then_do(
                f"Flip service {service}: swap the weights of its two groups?",
                lambda: controller.flip(service, actor="key"),
            )

    def action_remove(self) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is not None and controller is not None:
            self._confirm_then_do(
                f"Remove {name}? It drains first: requests in flight finish, then it is gone.",
                lambda: controller.remove_backend(name, actor="key"),
            )

    def action_add(self) -> None:
        controller = self.controller
        if controller is None:
            return
        snapshot = controller.snapshot()
        name = self.selected_backend()
        if name is not None:
            backend = snapshot.backend(name)
            service, group = backend.service, backend.group
        else:
            service, group = (snapshot.services[0].name if snapshot.services else ""), "default"

        def add(service: str, name: str, address: str, group: str, weight: int) -> str | None:
            try:
                event = controller.add_backend(
                    service, name, address, group or "default", weight, actor="key"
                )
            except ControlError as error:
                return str(error)
            self.say(f"{event.target}: added to {service}")
            self.refresh_view()
            return None

        self.push_screen(AddBackendScreen(service, group, add))

    def action_algorithm(self) -> None:
        name, controller = self.selected_backend(), self.controller
        service = self._service_of(name) if name is not None else None
        if service is None or controller is None:
            return
        current = controller.snapshot().service(service).algorithm

        def chosen(algorithm: str | None) -> None:
            if algorithm is not None and algorithm != current:
                self._do(lambda: controller.set_algorithm(service, algorithm, actor="key"))

        self.push_screen(ChoiceScreen(f"Algorithm of service {service}:", ALGORITHMS, current), chosen)

    def action_undo(self) -> None:
        controller = self.controller
        if controller is not None:
            self._do(lambda: controller.undo(actor="key"))

    def action_detail(self) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is not None and controller is not None:
            self.push_screen(DetailScreen(name, lambda n: detail_text(controller.snapshot(), n)))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_detail()  # enter on the table

    def action_filter(self) -> None:
        def apply(text: str | None) -> None:
            if text is not None and text != self.filter_text:
                self.filter_text = text
                self.say(f"filter: {text}" if text else "")
                # Rebuilt once (in config order), then updated in place again.
                self.query_one("#backends", DataTable).clear()
                self._cells.clear()
                self.refresh_view()

        self.push_screen(FilterScreen(self.filter_text), apply)

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.say("paused: the view is frozen (p resumes)" if self.paused else "")
        self.refresh_view()

    def action_help(self) -> None:
        keys = [
            (b.key_display or b.key, b.tooltip or b.description)
            for b in self.BINDINGS
            if isinstance(b, Binding)
        ]
        self.push_screen(HelpScreen(keys))

    async def action_quit(self) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self.run_worker(self._stop(), exclusive=True)

        self.push_screen(
            ConfirmScreen("Quit? The engine stops taking requests and lets those in flight finish."), answer
        )

    async def _stop(self) -> None:
        self.say("draining…")
        await self.runtime.stop()
        self.exit(0)
