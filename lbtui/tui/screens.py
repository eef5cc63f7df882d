"""Modal screens of the dashboard: confirmation of destructive actions, and the keys help."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static


class ConfirmScreen(ModalScreen[bool]):
    """Names the target; Cancel has the focus; y/enter confirm, n/escape cancel."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes", tooltip="Do it"),
        Binding("n", "answer(False)", "No", id="confirm.no", tooltip="Leave it as it is"),
        Binding("escape", "answer(False)", "Cancel", id="confirm.cancel", tooltip="Leave it as it is"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question")
            yield Static("y: yes    n or escape: no", id="hint")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Yes", id="yes", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class HelpScreen(ModalScreen[None]):
    """Every key of the dashboard, with what it does."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="help.close", tooltip="Back to the dashboard"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def __init__(self, keys: Iterable[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = list(keys)

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(width=10, no_wrap=True)
        keys.add_column()  # long texts wrap under their own column, not under the keys
        for key, text in self.keys:
            keys.add_row(Text(key), Text(text))
        with Vertical(id="dialog"):
            yield Static("lbtui keys\n", id="help-title")
            yield Static(keys, id="help")
            yield Static("\nescape: back", id="help-back")

    def action_close(self) -> None:
        self.dismiss(None)


class ChoiceScreen(ModalScreen[str | None]):
    """Pick one of a few choices (the algorithm of a service): enter picks, escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="choice.cancel", tooltip="Leave it as it is")]

    def __init__(self, title: str, choices: Iterable[str], current: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.choices = list(choices)
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, id="question")
            yield OptionList(*self.choices, id="choices")

    def on_mount(self) -> None:
        options = self.query_one("#choices", OptionList)
        if self.current in self.choices:
            options.highlighted = self.choices.index(self.current)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.choices[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)


class AddBackendScreen(ModalScreen[None]):
    """The add-a-backend form: service, name, address, group, weight. Errors stay in the form."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="add.cancel", tooltip="Close the form, add nothing")]

    def __init__(
        self, service: str, group: str, add: Callable[[str, str, str, str, int], Awaitable[str | None]]
    ) -> None:
        super().__init__()
        self.service = service
        self.group = group
        self.add = add  # an error message, or None once added (off the UI loop: the form waits, the app not)
        self.adding = False

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Add a backend", id="question")
            for field, value, placeholder in (
                ("service", self.service, "service"),
                ("name", "", "e.g. blue-4"),
                ("address", "", "host:port, e.g. 127.0.0.1:9004"),
                ("group", self.group, "default"),
                ("weight", "1", "0 to 1000"),
            ):
                with Horizontal(classes="field"):
                    yield Label(field)
                    yield Input(value=value, placeholder=placeholder, id=field, compact=True)
            yield Static("", id="error")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Add", id="add", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#name", Input).focus()

    def value(self, field: str) -> str:
        return self.query_one(f"#{field}", Input).value.strip()

    def submit(self) -> None:
        """Check the form; then add, off the UI loop (`adding` until the answer: the form keeps its keys)."""
        if self.adding:
            return  # one add at a time: its answer decides whether the form closes
        for field, hint in (("name", "a name, e.g. blue-4"), ("address", "host:port, e.g. 127.0.0.1:9004")):
            if not self.value(field):
                self.query_one("#error", Static).update(f"{field}: required ({hint})")
                self.query_one(f"#{field}", Input).focus()
                return
        try:
            weight = int(self.value("weight") or "1")
        except ValueError:
            self.query_one("#error", Static).update("weight: a whole number from 0 to 1000")
            return
        self.adding = True
        self.query_one("#error", Static).update("adding…")
        fields = (self.value("service"), self.value("name"), self.value("address"), self.value("group"))
        self.run_worker(self._add(*fields, weight), group="add")

    async def _add(self, service: str, name: str, address: str, group: str, weight: int) -> None:
        try:
            error = await self.add(service, name, address, group, weight)
        finally:
            self.adding = False
        if self.app.screen is not self:
            return  # closed meanwhile (escape): the message line says what came of it
        if error is None:
            self.dismiss(None)
        else:
            self.query_one("#error", Static).update(error)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "add":
            self.submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DetailScreen(ModalScreen[None]):
    """One backend in detail: its numbers, status classes and latency distribution; refreshed while open."""

    BINDINGS = [Binding("escape", "close", "Back", id="detail.close", tooltip="Back to the dashboard")]

    def __init__(self, name: str, render: Callable[[str], str]) -> None:
        super().__init__()
        self.backend = name
        self.render_text = render  # backend name -> the text to show (from a fresh snapshot)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.render_text(self.backend), id="detail")

    def on_mount(self) -> None:
        self.set_interval(0.5, self.refresh_text)

    def refresh_text(self) -> None:
        # The timer runs in its own task: it can tick while the screen is dismissed and its widget goes.
        if not self.app.is_running:
            return
        try:
            detail = self.query_one("#detail", Static)
        except NoMatches:
            return
        detail.update(self.render_text(self.backend))

    def action_close(self) -> None:
        self.dismiss(None)


class FilterScreen(ModalScreen[str | None]):
    """Type part of what a row shows (name, group, address, path, status); enter applies, escape clears."""

    BINDINGS = [Binding("escape", "clear", "Clear", id="filter.clear", tooltip="Show every backend again")]

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(
                "Show only rows that contain (a name, group, address, path, status...):", id="question"
            )
            yield Input(value=self.current, id="filter", compact=True)

    def on_mount(self) -> None:
        self.query_one("#filter", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_clear(self) -> None:
        self.dismiss("")
