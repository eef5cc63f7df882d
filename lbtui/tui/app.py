"""The dashboard: the engine runs inside it; every view reads snapshots, every key goes through the Controller.

It shows the status bar, the view chosen (backends, routes, events, access log: lbtui/tui/views/) and the
message line, and steers by key (lbtui/tui/bindings.py). The view shown and the events refresh twice a second;
the text comes from lbtui/tui/format.py. The dashboard hosts the engine (on its own thread, lbtui/threaded.py)
or, with `controller`, steers the one given (`lbtui attach`: the command line passes a RemoteController); it
never imports the admin API, which the command line wires in (ServeOptions.admin_server).

The dashboard's loop never waits on a controller's change: a key's change runs on a thread of its own
(`off_the_loop`), one after another in the order asked (`_change`), its pending text shown at once and its result or refusal when it comes;
`pending_changes` counts those not answered yet. A key's checks read the snapshot the view last drew. Reads
(snapshot, events, recent requests) are the controller's to answer at once: the remote ones answer from what
they polled on their own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.style import Style
from textual.app import App, ComposeResult
from textual.css.query import NoMatches
from textual.theme import Theme
from textual.widgets import ContentSwitcher, Footer, Static

from lbtui.core.algorithms import ALGORITHMS
from lbtui.core.control import ControlError, Controller, Event, ReloadRefused
from lbtui.core.views import Snapshot
from lbtui.serve import Runtime, ServeOptions, tune_gc
from lbtui.threaded import EngineThread, ThreadedController
from lbtui.tui import bindings, themes
from lbtui.tui.commands import DashboardCommands
from lbtui.tui.format import (
    change_text,
    detail_text,
    recent_events_text,
    refused_text,
    reload_text,
    status_level,
    status_line,
)
from lbtui.tui.screens import (
    AddBackendScreen,
    ChoiceScreen,
    ConfirmScreen,
    DetailScreen,
    FilterScreen,
    HelpScreen,
)
from lbtui.tui.table import Table
from lbtui.tui.views import REFRESH_SECONDS
from lbtui.tui.views.backends import RECENT_EVENTS, BackendsView
from lbtui.tui.views.events import EventsView
from lbtui.tui.views.log import LogView
from lbtui.tui.views.routes import RoutesView
from lbtui.tui.views.text import TextPane

T = TypeVar("T")


async def off_the_loop(work: Callable[[], T]) -> T:
    """`work()` on a daemon thread of its own; its result (or exception) back on the running loop.

    Not asyncio.to_thread: a change that waits on an engine that hangs must not hold up quitting (the default
    executor's threads are joined when the loop closes); the controller's own deadline ends it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # cancelled: the dashboard is closing
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as raised:  # handed to the awaiting task, which decides
            error = raised
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop has closed: nobody waits for it any more

    threading.Thread(target=run, name="lbtui-change", daemon=True).start()
    return await future


class Dashboard(App[int]):
    """lbtui's dashboard: the engine runs on a thread of its own inside it, or it steers the controller given."""

    CSS_PATH = Path(__file__).with_name("lbtui.tcss")  # absolute: subclasses elsewhere find it too
    refresh_seconds = REFRESH_SECONDS
    tune_gc = False  # `lbtui` sets it: the process is the engine's, tune its GC as `serve` does
    TITLE = "lbtui"
    COMMANDS = App.COMMANDS | {DashboardCommands}
    BINDINGS = bindings.BINDINGS
    STEERING = bindings.STEERING  # all off with --read-only
    ON_BACKENDS = bindings.ON_BACKENDS  # only where the backends table is

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
        self.pending_changes = 0  # changes asked for whose result is not shown yet
        self._changing = asyncio.Lock()  # one change at a time, in the order asked

    @property
    def runtime(self) -> Runtime | None:
        """The engine and what runs with it (the demo's backends), when the dashboard hosts them."""
        return self.engine.runtime if self.engine is not None else None

    def compose(self) -> ComposeResult:
        yield TextPane("starting…", id="status")
        yield Static("", id="tabs")
        with ContentSwitcher(initial="view-backends", id="views"):
            yield BackendsView(id="view-backends")
            yield RoutesView(id="view-routes")
            yield EventsView(id="view-events")
            yield LogView(id="view-log")
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
        for number, (view, title) in enumerate(bindings.VIEWS, 1):
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
        names = [view for view, _ in bindings.VIEWS]
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
            self.query_one(BackendsView).refresh_from(snapshot, self.palette, self.filter_text)
        elif self.view == "routes":
            self.query_one(RoutesView).refresh_from(snapshot, self.filter_text)
        elif self.view == "log":
            self.query_one(LogView).refresh_from(self.controller, self.filter_text)
        self.refresh_events()

    def refresh_events(self) -> None:
        """The pane under the table (newest few) and the events view (all kept), both newest first."""
        controller = self.controller
        if controller is None:
            return
        events = self.query_one(EventsView).refresh_from(controller, self.filter_text)
        if events is not None:  # None: nothing new since the last time (a new filter resets this)
            text = recent_events_text(events, self.filter_text, RECENT_EVENTS)
            self.query_one(BackendsView).show_recent_events(text)

    def show_text(self, selector: str, text: str) -> None:
        """Update a TextPane only when its text changed: a redraw costs the engine time."""
        self.query_one(selector, TextPane).show(text)

    def selected_backend(self) -> str | None:
        return self.query_one(BackendsView).selected

    def say(self, text: str) -> None:
        self.query_one("#message", Static).update(text)

    def _service_of(self, name: str) -> str | None:
        """The service of a backend row, as the view last drew it (no call to the controller)."""
        snapshot = self._last_snapshot
        if snapshot is None:
            return None
        try:
            return snapshot.backend(name).service
        except KeyError:
            return None

    def _do(self, change: Callable[[], Event], pending: str) -> None:
        """Run a change off the UI loop: `pending` shows at once, then what it did or why not."""
        self._change(change, pending, change_text)

    def _change(self, change: Callable[[], T], pending: str, done: Callable[[T], str]) -> None:
        """Changes run one after another, in the order of the keys, each on a thread of its own (a controller
        may wait on a slow or silent engine: the keys and the redraws go on meanwhile)."""
        self.pending_changes += 1
        self.say(pending)
        self.run_worker(self._apply(change, done), group="changes")

    async def _apply(self, change: Callable[[], T], done: Callable[[T], str]) -> None:
        try:
            async with self._changing:
                try:
                    result = await off_the_loop(change)
                except ReloadRefused as refused:
                    self.say(refused_text(refused))
                    return
                except ControlError as error:  # a refusal, an engine that does not answer
                    self.say(str(error))
                    return
                self.say(done(result))
                self.refresh_view()
        finally:
            self.pending_changes -= 1

    def _confirm_then_do(self, question: str, change: Callable[[], Event], pending: str) -> None:
        """Destructive actions ask first (Cancel focused); the change happens only on yes."""

        def answer(yes: bool | None) -> None:
            if yes:
                self._do(change, pending)

        self.push_screen(ConfirmScreen(question), answer)

    def action_drain(self) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is not None and controller is not None:
            self._do(lambda: controller.drain(name, actor="key"), f"draining {name}…")

    def action_enable(self) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is not None and controller is not None:
            self._do(lambda: controller.enable(name, actor="key"), f"enabling {name}…")

    def action_maint(self) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is not None and controller is not None:
            self._confirm_then_do(
                f"Put {name} in maintenance? It gets no traffic at all.",
                lambda: controller.maint(name, actor="key"),
                f"putting {name} in maintenance…",
            )

    def action_weight(self, delta: int) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is None or controller is None:
            return

        def change() -> Event:
            # Read when the change runs, after the changes queued before it: `+ +` adds two.
            weight = controller.snapshot().backend(name).weight
            return controller.set_weight(name, max(0, weight + delta), actor="key")

        self._do(change, f"{'raising' if delta > 0 else 'lowering'} {name}'s weight…")

    def action_shift(self, points: int) -> None:
        """Move `points` of the split toward the canary group (the split's second group)."""
        name, controller, snapshot = self.selected_backend(), self.controller, self._last_snapshot
        service = self._service_of(name) if name is not None else None
        if service is None or controller is None or snapshot is None:
            return
        split = snapshot.service(service).split
        if not split or len(split) < 2:
            self.say(f"service {service} has no split to shift")
            return

        def change() -> Event:
            # Read when the change runs, after the changes queued before it: `] ]` shifts twice.
            split = controller.snapshot().service(service).split
            if not split or len(split) < 2:
                raise ControlError(f"service {service} has no split to shift")
            (stable, a), (canary, b) = split[0], split[1]
            total = a + b
            moved = max(-b, min(a, points * total // 100 if total else points))
            new = {group: weight for group, weight in split}
            new[stable], new[canary] = a - moved, b + moved
            return controller.set_split(service, new, actor="key")

        self._do(change, f"shifting {abs(points)} points of {service}'s split…")

    def action_flip(self) -> None:
        name, controller = self.selected_backend(), self.controller
        service = self._service_of(name) if name is not None else None
        if service is not None and controller is not None:
            self._confirm_then_do(
                f"Flip service {service}: swap the weights of its two groups?",
                lambda: controller.flip(service, actor="key"),
                f"flipping {service}…",
            )

    def action_remove(self) -> None:
        name, controller = self.selected_backend(), self.controller
        if name is not None and controller is not None:
            self._confirm_then_do(
                f"Remove {name}? It drains first: requests in flight finish, then it is gone.",
                lambda: controller.remove_backend(name, actor="key"),
                f"removing {name}…",
            )

    def action_add(self) -> None:
        controller, snapshot = self.controller, self._last_snapshot
        if controller is None or snapshot is None:
            return
        name = self.selected_backend()
        try:
            backend = snapshot.backend(name) if name is not None else None
        except KeyError:
            backend = None
        if backend is not None:
            service, group = backend.service, backend.group
        else:
            service, group = (snapshot.services[0].name if snapshot.services else ""), "default"

        async def add(service: str, name: str, address: str, group: str, weight: int) -> str | None:
            """Off the UI loop, as every change; the form stays open with the reason if it is refused."""
            self.pending_changes += 1
            try:
                async with self._changing:
                    try:
                        event = await off_the_loop(
                            lambda: controller.add_backend(
                                service, name, address, group or "default", weight, actor="key"
                            )
                        )
                    except ControlError as error:
                        self.say(str(error))  # also where the form was closed meanwhile
                        return str(error)
                    self.say(f"{event.target}: added to {service}")
                    self.refresh_view()
                    return None
            finally:
                self.pending_changes -= 1

        self.push_screen(AddBackendScreen(service, group, add))

    def action_algorithm(self) -> None:
        name, controller, snapshot = self.selected_backend(), self.controller, self._last_snapshot
        service = self._service_of(name) if name is not None else None
        if service is None or controller is None or snapshot is None:
            return
        current = snapshot.service(service).algorithm

        def chosen(algorithm: str | None) -> None:
            if algorithm is not None and algorithm != current:
                self._do(
                    lambda: controller.set_algorithm(service, algorithm, actor="key"),
                    f"setting {service}'s algorithm to {algorithm}…",
                )

        self.push_screen(ChoiceScreen(f"Algorithm of service {service}:", ALGORITHMS, current), chosen)

    def action_ramp(self) -> None:
        """R: start the service's canary ramp (asks first); R while one runs aborts it at once."""
        name, controller, snapshot = self.selected_backend(), self.controller, self._last_snapshot
        service = self._service_of(name) if name is not None else None
        if service is None or controller is None or snapshot is None:
            return
        view = snapshot.service(service)
        if view.ramp is not None and view.ramp.state == "running":
            self._do(lambda: controller.abort_ramp(service, actor="key"), f"aborting {service}'s ramp…")
            return
        if not view.split or len(view.split) != 2:
            self.say(f"service {service} needs a split of two groups to ramp (stable, canary)")
            return
        (stable, _), (canary, _) = view.split
        self._confirm_then_do(
            f"Start a canary ramp on {service}? {canary} goes through the steps of its ramp config, "
            f"and rolls back to {stable} on its own if its 5xx rate or p99 crosses the limits.",
            lambda: controller.start_ramp(service, actor="key"),
            f"starting {service}'s canary ramp…",
        )

    def action_reload(self) -> None:
        """Re-read the config file (Controller.reload: on the engine's thread, or on the server `attach` steers)
        and say what came of it."""
        controller = self.controller
        if controller is not None:
            self._change(lambda: controller.reload(actor="key"), "reloading the config…", reload_text)

    def action_undo(self) -> None:
        controller = self.controller
        if controller is not None:
            self._do(lambda: controller.undo(actor="key"), "undoing the last change…")

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
                self.query_one(EventsView).forget()
                self.query_one(LogView).forget()
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
        self.push_screen(HelpScreen(bindings.help_keys()))

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
