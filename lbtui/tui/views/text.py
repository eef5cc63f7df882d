"""TextPane: a Static that redraws only when its text changed."""

from __future__ import annotations

from textual.widgets import Static


class TextPane(Static):
    """A one-line (or few-line) text: `show` updates it only when the text changed, since a redraw costs the
    engine time.

    The screen's layout is worked out again only when the number of lines changed (these widgets are as wide
    as the screen; only the services line's height follows its text).
    """

    def __init__(self, text: str = "", *, id: str | None = None) -> None:
        super().__init__(text, id=id)
        self.shown: str | None = None  # the text last given to `show` (None: never)

    def show(self, text: str) -> None:
        before = self.shown
        if before != text:
            self.shown = text
            lines_changed = before is None or before.count("\n") != text.count("\n")
            self.update(text, layout=lines_changed)
