"""The dashboard: the engine runs inside it; every view reads snapshots, every key goes through the Controller.

It shows the status bar, the live backends table and the events of this run, and steers by key. The table
updates in place (only the cells that changed) twice a second, and keeps the cursor on the same backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from rich.style import Style
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.theme import Theme
from textual.widgets import ContentSwitcher, Footer, Static

from lbtui.core.algorithms import ALGORITHMS
from lbtui.core.control import ControlError, Controller, Event, ReloadRefused, ReloadResult
from lbtui.core.model import BackendView, RampView, RequestView, RouteView, ServiceView, Snapshot
from lbtui.core.stats import bucket_bounds
from lbtui.serve import Runtime, ServeOptions, tune_gc
from lbtui.threaded import EngineThread, ThreadedController
from lbtui.tui import themes
from lbtui.tui.commands import DashboardCommands
from lbtui.tui.screens import (
    AddBackendScreen,
    ChoiceScreen,
    ConfirmScreen,
    DetailScreen,
    FilterScreen,
    HelpScreen,
)
from lbtui.tui.table import Table

REFRESH_SECONDS = 0.5

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

# The views, by digit and in `tab` order: (id, title).
VIEWS = (("backends", "Backends"), ("routes", "Routes"), ("events", "Events"), ("log", "Access log"))
EVENT_COLUMNS = (
    ("id", "#", 5),
    ("time", "time", 8),
    ("actor", "who", 6),
    ("action", "what", 9),
    ("target", "target", 16),
    ("change", "before -> after", 44),
    ("note", "note", 60),
)
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
RECENT_EVENTS = 6  # lines of the events pane under the backends table

SPARKS = "▁▂▃▄▅▆▇█"
TREND_POINTS = 20  # refreshes: 10 s at two a second
STICKY_POINTS = 12  # refreshes: the sticky column's share is of the last 6 s


def sparkline(values: list[float]) -> str:
    """Block characters scaled to the largest value; never alone: the caller puts the number beside it."""
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))] for v in values)


# HAProxy's colours, as the theme's semantic variables (themes/*.toml), always with a word: the colour is
# never the only sign.
STATE_STYLE = {"ready": "health-up", "drain": "health-drain", "maint": "health-maint"}
HEALTH_STYLE = {
    "up": "health-up",
    "down": "health-down",
    "going_up": "health-going",
    "going_down": "health-going",
    "ejected": "health-ejected",
}
# Latency and 5xx cells take latency-warn / errors-warn at these, then latency-bad / errors-bad; below, no
# colour (green is for health only).
LATENCY_WARN_MS = 100.0
LATENCY_BAD_MS = 500.0
ERRORS_WARN_PERCENT = 1.0
ERRORS_BAD_PERCENT = 5.0


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _past(
    value: float, text: str, kind: str, limits: tuple[float, float], palette: Mapping[str, Style]
) -> str | Text:
    """`text` in the `{kind}-bad` style at or past the bad limit, `{kind}-warn` at or past the warning one."""
    warn, bad = limits
    level = "bad" if value >= bad else "warn" if value >= warn else ""
    style = palette.get(f"{kind}-{level}") if level else None
    return Text.styled(text, style) if style else text


def sticky_share(requests: int, sticky: int) -> str:
    """The share of `requests` that came by their sticky cookie, in percent ("-" without requests)."""
    return f"{round(100 * sticky / requests)}%" if requests > 0 else "-"


def backend_cells(
    b: BackendView, palette: Mapping[str, Style] | None = None, sticky: bool = False
) -> dict[str, str | Text]:
    """The table cells of one backend, by column key, coloured by `palette` (semantic variable -> style);
    with `sticky` (its service has sticky sessions), the share of its requests since start that came by their
    cookie (the dashboard shows that of the last seconds).

    Styles are spans (Text.styled), so a cell whose colour changed compares unequal and is redrawn.
    """
    colours = palette or {}
    state = b.admin_state
    if state == "drain" and b.drain_seconds is not None:
        state = f"drain {b.drain_seconds:.0f}s"
    health = b.health_label
    errors = b.status_classes[5] + b.status_classes[0]
    total = b.requests
    w = b.window
    # 5xx % of the window; with nothing in it, of every request so far.
    percent = 100.0 * w.error_ratio if w.requests else 100.0 * errors / total if total else None
    latency = (LATENCY_WARN_MS, LATENCY_BAD_MS)
    cells: dict[str, str | Text] = {
        "name": b.name,
        "group": b.group,
        "address": b.address,
        "state": Text.styled(state, colours.get(STATE_STYLE.get(b.admin_state, ""), "")),
        "health": Text.styled(health, colours.get(HEALTH_STYLE.get(b.health, ""), "")),
        "weight": str(b.weight),
        "in_flight": str(b.in_flight),
        "rps": f"{b.window.rps:.1f}",
        "requests": str(total),
        "errors": "-"
        if percent is None
        else _past(percent, f"{percent:.1f}", "errors", (ERRORS_WARN_PERCENT, ERRORS_BAD_PERCENT), colours),
        "p50": _past(w.p50_ms, _ms(w.p50_ms), "latency", latency, colours) if w.requests else "-",
        "p99": _past(w.p99_ms, _ms(w.p99_ms), "latency", latency, colours) if w.requests else "-",
    }
    if sticky:
        cells["sticky"] = sticky_share(total, b.sticky_requests)
    return cells


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


def ramp_text(ramp: RampView | None) -> str:
    """A canary ramp in words: its progress and countdown, or how it ended."""
    if ramp is None:
        return ""
    if ramp.state == "running":
        steps = "/".join(str(p) for p in ramp.steps)
        wait = f", waiting for {ramp.waiting_for} requests" if ramp.waiting_for else ""
        return (
            f"ramp {ramp.step + 1}/{len(ramp.steps)} ({steps}%): {ramp.canary} {ramp.percent}%, "
            f"next in {ramp.hold_left:.0f}s{wait} (R aborts)"
        )
    if ramp.state == "done":
        return f"ramp done: {ramp.canary} {ramp.percent}%"
    return f"ramp {ramp.state}: {ramp.reason}"


def service_text(s: ServiceView) -> str:
    notes = [ramp_text(s.ramp)]
    if s.panic:
        notes.append("PANIC: too few healthy, every ready backend serves")
    if s.queue_length:
        notes.append(f"queue {s.queue_length}")
    if s.sticky:
        moves = [f"{n} {what}" for n, what in ((s.sticky_moved, "moved"), (s.sticky_unknown, "unknown")) if n]
        notes.append(f"sticky {s.sticky}" + (f" ({', '.join(moves)})" if moves else ""))
    return f"{s.name}: {s.algorithm}, {split_bar(s.split)}" + "".join(f"  │ {n}" for n in notes if n)


def services_line(snapshot: Snapshot) -> str:
    return "\n".join(service_text(s) for s in snapshot.services)


def _value(value: object) -> str:
    """An event's before or after value, short: dicts as `blue 90 green 10`."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def event_cells(event: Event) -> dict[str, str]:
    return {
        "id": str(event.id),
        "time": time.strftime("%H:%M:%S", time.localtime(event.time)),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "change": f"{_value(event.before)} -> {_value(event.after)}",
        "note": event.note,
    }


def event_line(event: Event) -> str:
    cells = event_cells(event)
    line = f"{cells['time']}  {event.actor:<6} {event.action:<9} {event.target:<16} {cells['change']}"
    return f"{line}  ({event.note})" if event.note else line


def cache_hits(route: RouteView) -> str:
    """The share of a route's cache lookups that were hits ("-" before any, or without a cache)."""
    hits, misses = route.cache
    return f"{100 * hits // (hits + misses)}%" if hits + misses else "-"


def request_cells(r: RequestView) -> dict[str, str]:
    stamp = time.strftime("%H:%M:%S", time.localtime(r.time)) + f".{int(r.time % 1 * 1000):03d}"
    return {
        "time": stamp,
        "client": r.client,
        "method": r.method,
        "target": r.target,
        "status": str(r.status) if r.status else "fail",
        "route": r.route or "-",
        "consumer": r.consumer or "-",
        "backend": r.backend or "-",
        "ms": _ms(r.duration_ms),
        "bytes": str(r.bytes_out),
    }


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
        lines.append(f"{low / 1000:>8.2f} - {high / 1000:>8.2f} ms {bar} {total}")
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
        f"state {b.admin_state}, health {b.health_label}, weight {b.weight}, in flight {b.in_flight}",
        f"requests {b.requests}   connect failures {b.connect_failures}   EWMA {b.ewma_ms:.2f} ms",
        f"status: 1xx {sc[1]}  2xx {sc[2]}  3xx {sc[3]}  4xx {sc[4]}  5xx {sc[5]}  failed {sc[0]}",
        f"bytes in {b.bytes_in}  out {b.bytes_out}   responses cut mid-way {b.aborted}",
        *sticky_lines(snapshot, b),
        "",
        f"last {w.seconds:.0f} s: {w.requests} requests, {w.rps:.1f} req/s, "
        f"p50 {w.p50_ms:.2f}  p90 {w.p90_ms:.2f}  p99 {w.p99_ms:.2f}  p99.9 {w.p999_ms:.2f} ms",
        "",
        *latency_histogram(w.counts),
        "",
        *check_history(b),
        "",
        "escape: back",
    ]
    return "\n".join(lines)


def sticky_lines(snapshot: Snapshot, b: BackendView) -> list[str]:
    """A backend's sticky sessions since start, when its service has them."""
    try:
        cookie = snapshot.service(b.service).sticky
    except KeyError:
        cookie = None
    if not cookie:
        return []
    return [
        f"sticky {cookie}: {b.sticky_requests} of {b.requests} requests by cookie "
        f"({sticky_share(b.requests, b.sticky_requests)}), {b.sticky_cookies} sessions set here"
    ]


def check_history(b: BackendView, rows: int = 10) -> list[str]:
    """The newest active health checks of a backend, newest first."""
    if not b.checked:
        return ["health checks: none (the service has no `health` config; the backend counts as up)"]
    if not b.checks:
        return ["health checks: none yet"]
    lines = [f"health checks, newest first (last {min(rows, len(b.checks))} of {len(b.checks)} kept):"]
    for check in reversed(b.checks[-rows:]):
        stamp = time.strftime("%H:%M:%S", time.localtime(check.time))
        lines.append(f"  {stamp}  {'pass' if check.ok else 'FAIL':<4}  {check.detail}")
    return lines


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


def status_line(snapshot: Snapshot, flags: tuple[str, ...] = ()) -> str:
    listeners = "  ".join(f"{v.name} {v.url}" for v in snapshot.listeners) or "no listener"
    requests = sum(s.window.requests for s in snapshot.services)
    errors = sum(s.window.errors for s in snapshot.services)
    rps = sum(s.window.rps for s in snapshot.services)
    p99 = max((s.window.p99_ms for s in snapshot.services), default=0.0)
    uptime = time.strftime("%H:%M:%S", time.gmtime(snapshot.uptime))
    ratio = f"{100.0 * errors / requests:.1f}%" if requests else "-"
    latency = f"{_ms(p99)} ms" if requests else "-"
    line = f"{listeners} │ {rps:.1f} req/s │ 5xx {ratio} │ p99 {latency} │ up {uptime}"
    return " │ ".join((line, *flags))


class Dashboard(App[int]):
    """lbtui's dashboard, with the engine running in the same event loop."""

    CSS_PATH = Path(__file__).with_name("lbtui.tcss")  # absolute: subclasses elsewhere find it too
    refresh_seconds = REFRESH_SECONDS
    tune_gc = False  # `lbtui` sets it: the process is the engine's, tune its GC as `serve` does
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
            show=False,  # the footer has + and the help both; room for ? and q
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
            show=False,
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
        Binding(
            "R",
            "ramp",
            "Ramp",
            id="ramp",
            tooltip="Start a canary ramp on the selected backend's service (asks first); R again aborts it",
        ),
        Binding("u", "undo", "Undo", id="undo", tooltip="Undo the last change"),
        Binding(
            "r",
            "reload",
            "Reload",
            show=False,
            id="reload",
            tooltip="Reload the config file: what changed, or the file's errors (the running config stays)",
        ),
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
            tooltip="Show only the rows that contain a text: backends, routes, events, access log",
        ),
        Binding("p", "pause", "Pause", id="pause", tooltip="Pause or resume refreshing the view"),
        Binding(
            "j", "cursor(1)", "Down", show=False, id="cursor_down", tooltip="Cursor down (or the down arrow)"
        ),
        Binding("k", "cursor(-1)", "Up", show=False, id="cursor_up", tooltip="Cursor up (or the up arrow)"),
        Binding(
            "tab",
            "next_view",
            "Views",
            id="next_view",
            priority=True,
            tooltip="Next view: backends, routes, events, access log (or 1-4)",
        ),
        *(
            Binding(
                str(number),
                f"view('{view}')",
                title,
                show=False,
                id=f"view_{view}",
                tooltip=f"The {title.lower()} view",
            )
            for number, (view, title) in enumerate(VIEWS, 1)
        ),
        Binding(
            "question_mark", "help", "Help", key_display="?", id="help", tooltip="Every key and what it does"
        ),
        Binding("q", "quit", "Quit", id="quit", tooltip="Drain the engine and quit (asks first)"),
    ]
    # Keys that change the balancer: all off with --read-only.
    STEERING = frozenset(
        {"drain", "enable", "maint", "weight", "shift", "flip", "undo", "remove", "algorithm", "add", "ramp"}
        | {"reload"}
    )
    # Keys that only make sense where the backends table is.
    ON_BACKENDS = (STEERING - {"undo", "reload"}) | {"detail"}

    def __init__(
        self,
        options: ServeOptions | None,
        say: Callable[[str], None] | None = None,
        read_only: bool = False,
        theme: Theme | str = themes.DEFAULT_THEME,
        controller: Controller | None = None,
    ) -> None:
        """The engine of `options` runs inside; or, with `controller`, the dashboard steers that one."""
        super().__init__()
        # Themes are read here, before anything is drawn: a bad file is a ThemeError, never a broken screen.
        self.start_theme = themes.load_theme(theme) if isinstance(theme, str) else theme
        self.shipped_themes = themes.shipped_themes()
        self.palette: dict[str, Style] = {}  # semantic variable -> style, from the current theme
        self.read_only = read_only
        self.paused = False
        self.filter_text = ""
        self.trends: dict[str, list[float]] = {}
        self._counted: dict[str, tuple[float, int]] = {}  # backend -> (snapshot time, requests) last refresh
        # backend -> (requests, sticky requests) at the last refreshes, oldest first (the sticky column)
        self._sticky_counted: dict[str, list[tuple[int, int]]] = {}
        self._last_snapshot: Snapshot | None = None
        self.messages: list[str] = []
        # The engine runs on a thread of its own, so a redraw never holds up a request (lbtui/threaded.py).
        self.engine = (
            EngineThread(options or ServeOptions(), say or self.messages.append)
            if controller is None
            else None
        )
        self.controller: Controller | None = controller
        self.view = "backends"
        self._events_newest = -1  # the newest event id when the events were last shown
        self._texts: dict[
            str, str
        ] = {}  # what each one-line widget shows, so an unchanged one is not redrawn
        self._log_newest: RequestView | None = None

    @property
    def runtime(self) -> Runtime | None:
        """The engine and what runs with it (the demo's backends), when the dashboard hosts them."""
        return self.engine.runtime if self.engine is not None else None

    def compose(self) -> ComposeResult:
        yield Static("starting…", id="status")
        yield Static("", id="tabs")
        with ContentSwitcher(initial="view-backends", id="views"):
            with Vertical(id="view-backends"):
                yield Static("", id="services")
                yield Table(COLUMNS, id="backends")
                yield Static("", id="events")
            with Vertical(id="view-routes"):
                yield Static("", id="routes-note")
                yield Table(ROUTE_COLUMNS, id="routes")
            with Vertical(id="view-events"):
                yield Table(EVENT_COLUMNS, id="events-table")
            with Vertical(id="view-log"):
                yield Table(LOG_COLUMNS, id="access")
        yield Static("", id="message")
        yield Footer(compact=True)

    def get_theme_variable_defaults(self) -> dict[str, str]:
        """Our semantic variables for themes that do not set them (Textual's own), from their base colours."""
        return themes.semantic_defaults(self.current_theme)

    def recolour(self, theme: Theme | None = None) -> None:
        """The table's colours from the current theme; run again whenever the theme changes (ctrl+p, Theme)."""
        self.palette = themes.palette(self.get_css_variables(), no_color=self.no_color)
        self.refresh_view()

    async def on_mount(self) -> None:
        for theme in (*self.shipped_themes, self.start_theme):
            self.register_theme(theme)  # so the palette's theme list offers them, next to Textual's
        self.theme = self.start_theme.name
        self.show_tabs()
        self.theme_changed_signal.subscribe(self, self.recolour)
        self.recolour()  # after the columns: it refreshes the view
        engine = self.engine
        if engine is not None:
            if not await engine.start():
                self.exit(1)  # the command line prints why (self.messages)
                return
            assert engine.runtime.engine is not None
            self.controller = ThreadedController(engine, engine.runtime.engine.controller)
            if self.tune_gc:
                tune_gc()
        assert self.controller is not None
        self.controller.subscribe(self.show_event)
        self.refresh_view()
        self.set_interval(self.refresh_seconds, self.refresh_view)
        self.query_one("#backends", Table).focus()

    def show_event(self, event: Event) -> None:
        """Every change, whoever made it (a key, the engine, a ramp, a check) shows at once, newest first."""
        if self.paused or not self.is_running:
            return
        try:
            self.refresh_events()
        except NoMatches:
            pass  # the dashboard is closing: its widgets are gone

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("next_view", "view") and self.screen.is_modal:
            return False  # a form's tab moves between its fields
        if self.read_only and action in self.STEERING:
            return None  # shown disabled in the footer, does nothing
        if action in self.ON_BACKENDS and self.view != "backends":
            return None
        return True

    def show_tabs(self) -> None:
        parts = []
        for number, (view, title) in enumerate(VIEWS, 1):
            label = f" {number} {title} "
            parts.append(f"[reverse]{label}[/]" if view == self.view else label)
        self.query_one("#tabs", Static).update("".join(parts) + "   [dim]tab: next view[/]")

    def action_view(self, view: str) -> None:
        if view == self.view:
            return
        self.view = view
        self.query_one("#views", ContentSwitcher).current = f"view-{view}"
        self.show_tabs()
        self.refresh_bindings()
        self.refresh_view()
        focus = {"backends": "#backends", "routes": "#routes", "events": "#events-table", "log": "#access"}
        self.query_one(focus[view], Table).focus()

    def action_next_view(self) -> None:
        names = [view for view, _ in VIEWS]
        self.action_view(names[(names.index(self.view) + 1) % len(names)])

    def refresh_view(self) -> None:
        # The refresh timer runs in its own task: it can tick while the app shuts down and its widgets go.
        if self.controller is None or self.paused or not self.is_running:
            return
        status = self.query_one("#status", Static)
        try:
            snapshot = self.controller.snapshot()
        except ControlError as error:  # a remote engine (`lbtui attach`) that has not answered yet
            self.show_text("#status", f"no connection: {error}")
            status.set_class(True, "error")
            return
        self._last_snapshot = snapshot
        # A remote controller's last snapshot, when the engine cannot be reached now (admin/remote.py).
        lost = snapshot.extra.get("connection_lost")
        flags = self.flags() + ((f"CONNECTION LOST (retrying): {lost}",) if lost else ())
        self.show_text("#status", status_line(snapshot, flags))
        level = "error" if lost else status_level(snapshot)
        status.set_class(level == "warning", "warning")
        status.set_class(level == "error", "error")
        if self.view == "backends":
            self.refresh_backends(snapshot)
        elif self.view == "routes":
            self.refresh_routes(snapshot)
        elif self.view == "log":
            self.refresh_log()
        self.refresh_events()

    def _wanted(self, *texts: str) -> bool:
        wanted = self.filter_text.lower()
        return not wanted or any(wanted in text.lower() for text in texts)

    def refresh_events(self) -> None:
        """The pane under the table (newest few) and the events view (all kept), both newest first."""
        controller = self.controller
        if controller is None:
            return
        newest = controller.events(1)
        newest_id = newest[0].id if newest else 0
        if newest_id == self._events_newest:
            return  # nothing new since the last time (a new filter resets this)
        self._events_newest = newest_id
        kept = controller.events(500)
        events = [e for e in kept if self._wanted(*event_cells(e).values())]
        empty = f"no event matches the filter {self.filter_text!r}" if self.filter_text else "no events yet"
        self.show_text("#events", "\n".join(event_line(e) for e in events[:RECENT_EVENTS]) or empty)
        # The view keeps what the controller keeps, no more.
        self.query_one("#events-table", Table).sync((str(e.id), event_cells(e)) for e in events)

    def show_text(self, selector: str, text: str) -> None:
        """Update a one-line (or few-line) widget only when its text changed: a redraw costs the engine time.

        The screen's layout is worked out again only when the number of lines changed (the widgets are as wide
        as the screen; only the services line's height follows its text).
        """
        before = self._texts.get(selector)
        if before != text:
            self._texts[selector] = text
            lines_changed = before is None or before.count("\n") != text.count("\n")
            self.query_one(selector, Static).update(text, layout=lines_changed)

    def refresh_routes(self, snapshot: Snapshot) -> None:
        table = self.query_one("#routes", Table)
        note = self.query_one("#routes-note", Static)
        if not snapshot.routes:
            names = ", ".join(s.name for s in snapshot.services)
            note.update(f"no routes: every request goes to the one service ({names})")
            return
        unmatched = snapshot.extra.get("unmatched", {})
        counts = ", ".join(f"{why} {n}" for why, n in unmatched.items() if n)
        note.update(
            "routes are tried most specific first: host, exact path, longest prefix, regex"
            + (f"  │ no route took: {counts}" if counts else "")
        )
        rows = []
        for route in snapshot.routes:
            if not self._wanted(route.name, route.match, route.target):
                continue
            w = route.window
            sc = route.status_classes
            cells = {
                "name": route.name,
                "match": route.match,
                "target": route.target,
                "policies": ", ".join(route.policies) or "-",
                "hit": cache_hits(route),
                "rps": f"{w.rps:.1f}" if w else "-",
                "p50": _ms(w.p50_ms) if w and w.requests else "-",
                "p99": _ms(w.p99_ms) if w and w.requests else "-",
                "4xx": str(sc[4]),
                "5xx": str(sc[5]),
                "rejected": ", ".join(f"{why} {n}" for why, n in route.rejected) or "-",
            }
            rows.append((route.name, cells))
        table.sync(rows)

    def refresh_log(self) -> None:
        """The newest requests, newest first; rebuilt only when a request finished since the last refresh."""
        controller = self.controller
        if controller is None:
            return
        requests = controller.recent_requests(LOG_ROWS)
        newest = requests[0] if requests else None
        if newest == self._log_newest:
            return
        self._log_newest = newest
        shown = (request_cells(request) for request in requests)
        wanted = (
            c
            for c in shown
            if self._wanted(c["client"], c["target"], c["backend"], c["status"], c["route"], c["consumer"])
        )
        # Rows are keyed by place, newest first: the cursor stays at its place as requests arrive.
        self.query_one("#access", Table).sync((str(i), cells) for i, cells in enumerate(wanted))

    def refresh_backends(self, snapshot: Snapshot) -> None:
        self.show_text("#services", services_line(snapshot))
        table = self.query_one("#backends", Table)
        table.set_columns(STICKY_COLUMNS if any(s.sticky for s in snapshot.services) else COLUMNS)
        rows = []
        for service in snapshot.services:
            for backend in service.backends:
                if not self._wanted(f"{backend.name} {backend.group} {backend.address}"):
                    continue
                cells = backend_cells(backend, self.palette)
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

    def selected_backend(self) -> str | None:
        return self.query_one("#backends", Table).cursor_key

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
        note = f" ({event.note})" if event.note else ""
        self.say(f"{event.target}: {event.action} {_value(event.before)} -> {_value(event.after)}{note}")
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

    def action_ramp(self) -> None:
        """R: start the service's canary ramp (asks first); R while one runs aborts it at once."""
        name, controller = self.selected_backend(), self.controller
        service = self._service_of(name) if name is not None else None
        if service is None or controller is None:
            return
        view = controller.snapshot().service(service)
        if view.ramp is not None and view.ramp.state == "running":
            self._do(lambda: controller.abort_ramp(service, actor="key"))
            return
        if not view.split or len(view.split) != 2:
            self.say(f"service {service} needs a split of two groups to ramp (stable, canary)")
            return
        (stable, _), (canary, _) = view.split
        self._confirm_then_do(
            f"Start a canary ramp on {service}? {canary} goes through the steps of its ramp config, "
            f"and rolls back to {stable} on its own if its 5xx rate or p99 crosses the limits.",
            lambda: controller.start_ramp(service, actor="key"),
        )

    def action_reload(self) -> None:
        """Re-read the config file (Controller.reload) and say what came of it."""
        controller = self.controller
        if controller is None:
            return
        try:
            result: ReloadResult = controller.reload(actor="key")
        except ReloadRefused as error:
            count = len(error.issues)
            first = f": {error.issues[0]}" if error.issues else ""
            self.say(
                f"reload refused, the running config stays ({count} problem{'s' if count != 1 else ''}){first}"
            )
            return
        except ControlError as error:
            self.say(str(error))
            return
        shown = "; ".join(result.changes[:3]) + (" …" if len(result.changes) > 3 else "")
        self.say(f"{result.summary()}: {shown}" if shown else result.summary())
        self.refresh_view()

    def action_undo(self) -> None:
        controller = self.controller
        if controller is not None:
            self._do(lambda: controller.undo(actor="key"))

    def action_detail(self) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is not None and controller is not None:
            self.push_screen(DetailScreen(name, lambda n: detail_text(controller.snapshot(), n)))

    def on_table_selected(self, event: Table.Selected) -> None:
        if event.table.id == "backends":
            self.action_detail()  # enter on a backend

    def action_filter(self) -> None:
        def apply(text: str | None) -> None:
            if text is not None and text != self.filter_text:
                self.filter_text = text
                self.say(f"filter: {text}" if text else "")
                self._events_newest = -1
                self._log_newest = None
                self.refresh_view()

        self.push_screen(FilterScreen(self.filter_text), apply)

    def action_cursor(self, rows: int) -> None:
        table = self.focused
        if isinstance(table, Table):
            table.move_cursor(table.cursor_row + rows)

    def flags(self) -> tuple[str, ...]:
        return (("PAUSED",) if self.paused else ()) + (("READ-ONLY",) if self.read_only else ())

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.say("paused: the view is frozen (p resumes)" if self.paused else "")
        if self.paused and self._last_snapshot is not None:
            self.show_text("#status", status_line(self._last_snapshot, self.flags()))
        self.refresh_view()

    def action_help(self) -> None:
        keys = [
            (b.key_display or b.key, b.tooltip or b.description)
            for b in self.BINDINGS
            if isinstance(b, Binding)
        ]
        keys += [
            ("ctrl+p", "Command palette: every action above by name, and the themes"),
            ("escape", "Close a dialog or screen"),
        ]
        self.push_screen(HelpScreen(keys))

    async def action_quit(self) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self.run_worker(self._stop(), exclusive=True)

        if self.engine is None:
            question = "Quit? The engine it is attached to goes on running."
        else:
            question = "Quit? The engine stops taking requests and lets those in flight finish."
        self.push_screen(ConfirmScreen(question), answer)

    async def _stop(self) -> None:
        if self.engine is not None:
            self.say("draining…")
            await self.engine.stop()
        self.exit(0)
