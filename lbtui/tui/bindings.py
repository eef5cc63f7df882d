"""The dashboard's keys: each key's action, its footer label and its help text, in one list.

The help screen (?) and the command palette (ctrl+p) are made from this list, so a key is described once.
`STEERING` are the actions that change the balancer (all off with --read-only); `ON_BACKENDS` those that act on
the selected backend, off in the other views.
"""

from __future__ import annotations

from textual.binding import Binding, BindingType

# The views, by digit and in `tab` order: (id, title).
VIEWS = (("backends", "Backends"), ("routes", "Routes"), ("events", "Events"), ("log", "Access log"))

BINDINGS: list[BindingType] = [
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

# Keys the help screen lists that are not bindings of the dashboard (Textual's own).
OTHER_KEYS = (
    ("ctrl+p", "Command palette: every action above by name, and the themes"),
    ("escape", "Close a dialog or screen"),
)


def help_keys() -> list[tuple[str, str]]:
    """Every key and what it does, for the help screen."""
    keys = [(b.key_display or b.key, b.tooltip or b.description) for b in BINDINGS if isinstance(b, Binding)]
    return keys + list(OTHER_KEYS)
