"""The dashboard's table: only rows that changed are drawn again; the cursor stays on its row."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region

from lbtui.tui.table import Table
from tests.conftest import wait_for

COLUMNS = (("name", "name", 8), ("count", "count", 6))


class Counting(Table):
    """Counts the rows it draws."""

    drawn: list[str]

    def _draw(self, cells, style, post=None):
        self.drawn.append(str(cells[0]))
        return super()._draw(cells, style, post)


class Host(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.selected: list[str] = []

    def compose(self) -> ComposeResult:
        table = Counting(COLUMNS, id="t")
        table.drawn = []
        yield table

    def on_table_selected(self, message: Table.Selected) -> None:
        self.selected.append(message.key)


def rows(n: int, bump: dict[int, int] | None = None):
    bump = bump or {}
    return [(f"r{i}", {"name": f"r{i}", "count": str(i + bump.get(i, 0))}) for i in range(n)]


def screen_text(app: App) -> str:
    """What the table shows, line by line, as drawn for the screen."""
    table = app.query_one(Table)
    return "\n".join(
        strip.text for strip in table.render_lines(Region(0, 0, table.size.width, table.size.height))
    )


async def test_a_changed_cell_redraws_its_row_only():
    app = Host()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(Table)
        table.sync(rows(5))
        await pilot.pause()
        assert sorted(table.drawn) == ["name", "r0", "r1", "r2", "r3", "r4"]  # the header and each row once
        table.drawn.clear()
        table.sync(rows(5, bump={3: 100}))
        await pilot.pause()
        assert table.drawn == ["r3"]
        assert str(table.get_cell("r3", "count")) == "103"
        table.drawn.clear()
        table.sync(rows(5, bump={3: 100}))  # nothing changed: nothing drawn
        await pilot.pause()
        assert table.drawn == []


async def test_a_style_change_alone_redraws_the_row():
    app = Host()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(Table)
        table.sync([("a", {"name": Text("a", style="red"), "count": "1"})])
        await pilot.pause()
        table.drawn.clear()
        table.sync([("a", {"name": Text("a", style="green"), "count": "1"})])
        await pilot.pause()
        assert table.drawn == ["a"]


async def test_the_cursor_stays_on_its_row_as_rows_come_and_go():
    app = Host()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(Table)
        table.sync(rows(4))
        table.move_cursor(2)
        assert table.cursor_key == "r2"
        table.sync([("new", {"name": "new"}), *rows(4)])  # a row above: the cursor moves down with r2
        assert (table.cursor_row, table.cursor_key) == (3, "r2")
        table.sync([r for r in rows(4) if r[0] != "r2"])  # its row gone: the same place
        assert table.cursor_key == "r3"
        table.sync(rows(1))
        assert table.cursor_key == "r0"
        table.clear()
        assert (table.cursor_key, table.row_count) == (None, 0)
        await pilot.pause()


async def test_keys_move_the_cursor_and_enter_selects():
    app = Host()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(Table)
        table.sync(rows(30))
        table.focus()
        await pilot.press("down", "down")
        assert table.cursor_row == 2
        await pilot.press("up")
        assert table.cursor_row == 1
        await pilot.press("end")
        assert table.cursor_key == "r29"
        await pilot.pause()
        assert table.scroll_y > 0
        assert "r29" in screen_text(app)  # scrolled to show the cursor
        assert "count" in screen_text(app).splitlines()[0]  # the header stays on top
        await pilot.press("home")
        assert table.cursor_row == 0
        await pilot.press("pagedown")
        assert table.cursor_row == 11  # one screen of rows: 12 lines less the header
        await pilot.press("enter")
        await wait_for(lambda: app.selected == ["r11"], what="Selected for r11")


async def test_a_click_moves_the_cursor_and_a_second_click_selects():
    app = Host()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(Table)
        table.sync(rows(5))
        await pilot.pause()
        await pilot.click(Table, offset=(2, 3))  # line 3: the header, r0, r1, r2
        assert table.cursor_key == "r2"
        assert app.selected == []
        await pilot.click(Table, offset=(2, 3))
        await wait_for(lambda: app.selected == ["r2"], what="Selected for r2")
        await pilot.click(Table, offset=(2, 0))  # the header: nothing
        assert table.cursor_key == "r2"


async def test_long_cells_are_cut_with_an_ellipsis_and_columns_keep_their_place():
    app = Host()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(Table)
        table.sync([("a", {"name": "a-very-long-name", "count": "7"})])
        await pilot.pause()
        line = screen_text(app).splitlines()[1]
        assert line.startswith(" a-very-…  7 ")  # 8 cells, a space either side


async def test_set_columns_keeps_the_rows_and_the_cursor():
    app = Host()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(Table)
        table.sync(rows(3))
        table.move_cursor(2)
        await pilot.pause()
        wider = (("name", "name", 8), ("extra", "extra", 5), ("count", "count", 6))
        table.set_columns(wider)
        assert table.line_width == 8 + 5 + 6 + 6
        assert table.get_row("r1") == ["r1", "", "1"]  # the shared columns kept, the new one empty
        assert table.cursor_key == "r2"
        await pilot.pause()
        assert screen_text(app).splitlines()[0].split() == ["name", "extra", "count"]
        table.sync([(key, {**cells, "extra": "x"}) for key, cells in rows(3)])
        await pilot.pause()
        assert screen_text(app).splitlines()[1].split() == ["r0", "x", "0"]
        table.drawn.clear()
        table.set_columns(wider)  # the same columns: nothing is drawn again
        await pilot.pause()
        assert table.drawn == []
        table.set_columns(COLUMNS)
        await pilot.pause()
        assert screen_text(app).splitlines()[1].split() == ["r0", "0"]
