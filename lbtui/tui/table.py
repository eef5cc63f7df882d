"""A table that redraws only the rows that changed.

Textual's DataTable keys its render caches on a table-wide update count, so changing one cell re-renders every
cell of every visible row: 17-24 ms of CPU on each refresh of the backends view under load, taken from the
engine that shares the process (`python benchmarks/dashboard_render.py` measures it). This table keeps one
rendered line per row, keyed by what the row shows and how it is styled, and repaints only the lines of rows
whose cells changed. It has what the dashboard uses: fixed-width columns (set_columns changes which), a fixed
header, a row cursor that stays on its row (by key) as rows come and go, zebra stripes, scrolling, and a
`Selected` message on enter or on a click of the selected row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Cell = str | Text
CELL_CACHE = 4096  # drawn cells kept (a few screens' worth); then the cache starts again
Column = tuple[str, str, int]  # key, header label, width in cells (without the padding of one each side)


def _signature(cell: Cell) -> object:
    """What decides how a cell looks: two cells with equal signatures render the same."""
    if isinstance(cell, Text):
        return (cell.plain, str(cell.style), tuple(cell.spans), cell.justify)
    return cell


class Table(ScrollView, can_focus=True):
    """Rows of cells under a header; `sync` sets every row at once and repaints only what changed."""

    DEFAULT_CSS = """
    Table {
        background: $surface;
        color: $foreground;
        height: auto;
        max-height: 100%;
        &:focus {
            background-tint: $foreground 5%;
            & > .table--header {
                background-tint: $foreground 5%;
            }
            & > .table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
        }
        &:dark > .table--even-row {
            background: $surface-darken-1 40%;
        }
        & > .table--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        &:ansi > .table--header {
            background: ansi_bright_blue;
            color: ansi_default;
        }
        & > .table--even-row {
            background: $surface-lighten-1 50%;
        }
        & > .table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """
    COMPONENT_CLASSES = {"table--header", "table--even-row", "table--cursor"}
    BINDINGS = [
        Binding("enter", "select", "Select", show=False),
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "move_to(0)", "First", show=False),
        Binding("end", "move_to(-1)", "Last", show=False),
    ]

    @dataclass
    class Selected(Message):
        """Enter, or a click on the selected row."""

        table: Table
        key: str

        @property
        def control(self) -> Table:
            return self.table

    def __init__(self, columns: Sequence[Column], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns = tuple(columns)
        self._index = {key: i for i, (key, _, _) in enumerate(self.columns)}
        self._keys: list[str] = []
        self._rows: dict[str, tuple[Cell, ...]] = {}
        self._signatures: dict[str, tuple[object, ...]] = {}
        self._lines: dict[str, tuple[object, Strip]] = {}  # row key -> (how it was drawn, the line)
        self._header: tuple[object, Strip] | None = None
        self._cells: dict[object, list[Segment]] = {}  # drawn cells, by what they show and how
        self._cursor = 0
        self.line_width = sum(width + 2 for _, _, width in self.columns)
        self.virtual_size = Size(self.line_width, 1)

    # What the table holds.

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    @property
    def row_count(self) -> int:
        return len(self._keys)

    @property
    def cursor_row(self) -> int:
        return self._cursor

    @property
    def cursor_key(self) -> str | None:
        return self._keys[self._cursor] if self._keys else None

    def get_row(self, key: str) -> list[Cell]:
        return list(self._rows[key])

    def get_row_at(self, index: int) -> list[Cell]:
        return list(self._rows[self._keys[index]])

    def get_cell(self, key: str, column: str) -> Cell:
        return self._rows[key][self._index[column]]

    # Changing it.

    def sync(self, rows: Iterable[tuple[str, Mapping[str, Cell]]]) -> None:
        """Make the table hold exactly `rows`, in that order; repaint only the lines that look different.

        The cursor stays on the row it was on while that row is kept (else at the same place, or the last row).
        """
        before_keys, before_key = self._keys, self.cursor_key
        keys: list[str] = []
        fresh: dict[str, tuple[Cell, ...]] = {}
        changed: set[str] = set()
        for key, cells in rows:
            row = tuple(cells.get(column, "") for column, _, _ in self.columns)
            signature = tuple(_signature(cell) for cell in row)
            if self._signatures.get(key) != signature:
                self._signatures[key] = signature
                changed.add(key)
            keys.append(key)
            fresh[key] = row
        for key in self._rows.keys() - fresh.keys():
            self._signatures.pop(key, None)
            self._lines.pop(key, None)
        self._rows = fresh
        self._keys = keys
        if keys != before_keys:
            self.virtual_size = Size(self.line_width, len(keys) + 1)
            if before_key in fresh:
                self._cursor = keys.index(before_key)
            self._cursor = max(0, min(self._cursor, len(keys) - 1))
            self._scroll_to_cursor()
            self.refresh()  # rows moved: every line may differ (the line cache keeps the cost down)
            return
        for index, key in enumerate(keys):
            if key in changed:
                self._repaint(index + 1)

    def clear(self) -> None:
        self.sync(())

    def set_columns(self, columns: Sequence[Column]) -> None:
        """Show these columns from now on (rows keep the cells of the columns they share; a new column is
        empty until the next sync). Nothing happens when they are the ones shown."""
        columns = tuple(columns)
        if columns == self.columns:
            return
        before = self.columns
        self.columns = columns
        self._index = {key: i for i, (key, _, _) in enumerate(columns)}
        self.line_width = sum(width + 2 for _, _, width in columns)
        self.virtual_size = Size(self.line_width, len(self._keys) + 1)
        for key, row in self._rows.items():
            cells = dict(zip((column for column, _, _ in before), row, strict=True))
            self._rows[key] = tuple(cells.get(column, "") for column, _, _ in columns)
            self._signatures[key] = tuple(_signature(cell) for cell in self._rows[key])
        self._lines.clear()
        self._header = None
        self.refresh()

    def move_cursor(self, row: int) -> None:
        """Put the cursor on row `row` (clamped to the rows there are)."""
        row = max(0, min(row, len(self._keys) - 1))
        if row == self._cursor:
            return
        old, self._cursor = self._cursor, row
        self._repaint(old + 1)
        self._repaint(row + 1)
        self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        visible = max(1, self.scrollable_content_region.height - 1)  # rows under the header
        top = round(self.scroll_y)
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=False)
        elif self._cursor >= top + visible:
            self.scroll_to(y=self._cursor - visible + 1, animate=False)

    # Keys and the mouse.

    def action_move(self, rows: int) -> None:
        self.move_cursor(self._cursor + rows)

    def action_page(self, pages: int) -> None:
        self.move_cursor(self._cursor + pages * max(1, self.scrollable_content_region.height - 1))

    def action_move_to(self, row: int) -> None:
        self.move_cursor(row if row >= 0 else len(self._keys) - 1)

    def action_select(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.Selected(self, key))

    def on_click(self, event: events.Click) -> None:
        y = event.y
        if y < 1:
            return  # the header
        row = round(self.scroll_y) + y - 1
        if row >= len(self._keys):
            return
        if row == self._cursor or event.chain > 1:
            self.move_cursor(row)
            self.action_select()
        else:
            self.move_cursor(row)

    def on_focus(self) -> None:
        self._repaint(self._cursor + 1)  # the cursor's colour says whether the table has the focus

    def on_blur(self) -> None:
        self._repaint(self._cursor + 1)

    def on_resize(self) -> None:
        self._scroll_to_cursor()

    # Drawing.

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()  # a theme or CSS change: every line is drawn anew
        self._cells.clear()
        self._header = None

    def _draw(self, cells: Sequence[Cell], style: Style, post: Style | None = None) -> Strip:
        pad = [Segment(" ", style + post if post is not None else style)]
        segments: list[Segment] = []
        for (_, _, width), cell in zip(self.columns, cells, strict=True):
            segments += pad
            segments += self._cell(cell, width, style, post)
            segments += pad
        return Strip(segments, self.line_width)

    def _cell(self, cell: Cell, width: int, style: Style, post: Style | None) -> list[Segment]:
        """One cell, cut or padded to `width`; cached, as most cells of a row that changed did not."""
        key = (_signature(cell), width, style, post)
        segments = self._cells.get(key)
        if segments is None:
            text = cell.copy() if isinstance(cell, Text) else Text(str(cell))
            text.truncate(width, overflow="ellipsis")
            text.align(text.justify if text.justify in ("left", "center", "right") else "left", width)
            # Every segment gets a style (Textual's filters, NO_COLOR's among them, expect one).
            rendered = text.render(self.app.console)
            segments = list(Segment.apply_style(rendered, style=style, post_style=post))
            if len(self._cells) >= CELL_CACHE:
                self._cells.clear()
            self._cells[key] = segments
        return segments

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        if y == 0:
            header_style = self.get_component_rich_style("table--header")
            if self._header is None or self._header[0] != header_style:
                labels = [Text(label) for _, label, _ in self.columns]
                self._header = (header_style, self._draw(labels, header_style))
            return self._header[1].crop_extend(scroll_x, scroll_x + width, header_style)
        index = scroll_y + y - 1
        if index >= len(self._keys):
            return Strip.blank(width, base)
        key = self._keys[index]
        style = base if index % 2 else self.get_component_rich_style("table--even-row")  # zebra: 0 is even
        post = self.get_component_rich_style("table--cursor") if index == self._cursor else None
        drawn = (self._signatures[key], style, post)
        cached = self._lines.get(key)
        if cached is None or cached[0] != drawn:
            cached = (drawn, self._draw(self._rows[key], style, post))
            self._lines[key] = cached
        return cached[1].crop_extend(scroll_x, scroll_x + width, style if post is None else style + post)

    def _repaint(self, line: int) -> None:
        """Repaint one line of the table (in table lines: the header is 0, the first row 1)."""
        screen_y = line - round(self.scroll_y) if line else 0
        if line and not 1 <= screen_y < self.size.height:
            return  # scrolled out of sight: drawn when scrolled to
        self.refresh(Region(0, screen_y, self.size.width, 1))
