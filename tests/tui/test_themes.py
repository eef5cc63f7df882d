"""Dashboard themes: the shipped files, their errors, `--theme`, live switching, NO_COLOR."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from rich.style import Style
from textual.geometry import Region
from textual.theme import BUILTIN_THEMES, ThemeProvider

from lbtui.cli import main
from lbtui.core.stats import BUCKETS, bucket_index, window_view
from lbtui.core.views import BackendView
from lbtui.serve import ServeOptions
from lbtui.tui import themes
from lbtui.tui.app import Dashboard
from lbtui.tui.format import backend_cells
from lbtui.tui.table import Table
from tests.conftest import make_config, wait_for
from tests.tui.keys import press
from tests.tui.test_app import SIZE, quit_app

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("dark", "light", "high-contrast")


@contextlib.asynccontextmanager
async def themed(config, theme="dark"):
    """The dashboard on a real engine with a theme; quit (confirmed) at the end."""
    app = Dashboard(ServeOptions(config=config), theme=theme)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        yield app, pilot
        await quit_app(app, pilot)


def colour_of(cell) -> str | None:
    """The colour of a table cell's text, as #rrggbb (None when it has none)."""
    styles = [span.style for span in cell.spans]
    if not styles or styles[0].color is None:
        return None
    return styles[0].color.triplet.hex.upper()


def hues(table) -> set[str]:
    """Every colour in the rendered table that is not a grey (#rrggbb)."""
    found = set()
    for strip in table.render_lines(Region(0, 0, table.size.width, table.size.height)):
        for segment in strip:
            for colour in (segment.style.color, segment.style.bgcolor) if segment.style else ():
                if colour is not None and colour.triplet is not None and len(set(colour.triplet)) > 1:
                    found.add(colour.triplet.hex.upper())
    return found


def view(health="up", state="ready", p_ms=5.0, requests=100, errors=0) -> BackendView:
    counts = [0] * BUCKETS
    counts[bucket_index(int(p_ms * 1000))] = requests
    return BackendView(
        name="x",
        service="s",
        group="g",
        address="127.0.0.1:1",
        weight=1,
        admin_state=state,
        health=health,
        health_count=0,
        in_flight=0,
        requests=requests,
        status_classes=(0, 0, requests - errors, 0, 0, errors),
        bytes_in=0,
        bytes_out=0,
        connect_failures=0,
        ewma_ms=1.0,
        drain_seconds=None,
        removing=False,
        window=window_view(10.0, requests, errors, counts),
    )


# -- the files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_theme_loads_and_sets_every_semantic_variable(name):
    assert set(SHIPPED) <= set(themes.shipped_names())
    theme = themes.load_theme(name)
    assert theme.name == name
    assert theme.dark is (name != "light")
    assert set(themes.SEMANTIC_VARIABLES) <= set(theme.variables)


def test_colours_live_in_the_theme_files_not_in_code():
    hex_in_python = re.compile(r"""["']#[0-9A-Fa-f]{6}(?:[0-9A-Fa-f]{2})?["']""")
    hex_in_tcss = re.compile(r":[^;{]*#[0-9A-Fa-f]{3,8}\b")
    for path in (REPO / "lbtui").rglob("*.py"):
        assert not hex_in_python.search(path.read_text()), path
    for path in (REPO / "lbtui").rglob("*.tcss"):
        assert not hex_in_tcss.search(path.read_text()), path


def test_a_broken_theme_names_the_file_the_key_and_the_fix(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\nprimry = "#112233"\nprimary = "#112233"\n'
        '[variables]\nhealth-down = "redd"\nhealth-upp = "#00ff00"\n'
    )
    with pytest.raises(themes.ThemeError) as caught:
        themes.load_theme(str(path))
    lines = str(caught.value).splitlines()
    assert f"{path}: primry: unknown key; did you mean 'primary'?" in lines
    assert f"{path}: variables.health-down: 'redd' is not a colour; did you mean 'red'?" in lines
    assert f"{path}: variables.health-upp: unknown variable; did you mean 'health-up'?" in lines


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = [\n", "not valid TOML"),
        ('name = "x"\n', "primary: missing"),
        ('primary = "#112233"\ndark = "yes"\n', "dark: 'yes' is not true or false"),
        ('primary = "#112233"\ntext_alpha = 3\n', "text_alpha: 3 is not a number from 0 to 1"),
        ('primary = "#112233"\nname = "two words"\n', "name: 'two words' is not a theme name"),
    ],
)
def test_each_kind_of_mistake_is_reported(tmp_path, text, message):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(themes.ThemeError) as caught:
        themes.load_theme_file(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_a_users_copy_loads_by_path(tmp_path):
    text = (REPO / "themes" / "dark.toml").read_text()
    text = text.replace('name = "dark"', 'name = "mine"').replace(
        'health-up = "#3FB950"', 'health-up = "#00AA00"'
    )
    path = tmp_path / "mine.toml"
    path.write_text(text)
    theme = themes.load_theme(str(path))
    assert (theme.name, theme.variables["health-up"]) == ("mine", "#00AA00")


def test_textual_themes_get_our_variables_from_their_base_colours():
    nord = BUILTIN_THEMES["nord"]
    defaults = themes.semantic_defaults(nord)
    assert set(defaults) == set(themes.SEMANTIC_VARIABLES)
    generated = nord.to_color_system().generate()
    assert defaults["health-up"] == generated["success"]
    assert defaults["health-down"] == generated["error"]


# -- the command line ------------------------------------------------------------------------------------------


def test_unknown_theme_says_which_exist_and_exits_non_zero(capsys):
    assert main(["--theme", "drak"]) == 2
    err = capsys.readouterr().err
    assert "unknown theme 'drak'; did you mean 'dark'?" in err
    assert "dark, high-contrast, light" in err
    assert "nord" in err  # Textual's own work too
    assert "Traceback" not in err


def test_broken_theme_file_is_an_error_message_and_exit_1(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('primary = "blu"\n')
    assert main(["--theme", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: primary: 'blu' is not a colour" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, "dark"),
        (["--theme", "light"], {}, "light"),
        ([], {"LBTUI_THEME": "high-contrast"}, "high-contrast"),
    ],
)
def test_the_theme_reaches_the_dashboard(monkeypatch, args, env, expected):
    started = []
    monkeypatch.delenv("LBTUI_THEME", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(
        Dashboard, "run", lambda self, **run_options: started.append(self.start_theme.name) or 0
    )
    assert main([*args, "--demo"]) == 0
    assert started == [expected]


def test_an_empty_no_color_leaves_colour_on(monkeypatch):
    """no-color.org: only a non-empty NO_COLOR counts (Textual alone would take any)."""
    seen = []
    monkeypatch.setenv("NO_COLOR", "")
    monkeypatch.setattr(Dashboard, "run", lambda self, **run_options: seen.append(self.no_color) or 0)
    assert main(["--demo"]) == 0
    assert seen == [False]


# -- the table ---------------------------------------------------------------------------------------------------


def test_latency_and_5xx_cells_turn_warn_then_bad_past_the_thresholds():
    warn, bad = Style.parse("yellow"), Style.parse("red")
    palette = {"latency-warn": warn, "latency-bad": bad, "errors-warn": warn, "errors-bad": bad}
    assert isinstance(backend_cells(view(p_ms=20), palette)["p99"], str)  # plain: green is for health only
    assert backend_cells(view(p_ms=200), palette)["p99"].spans[0].style == warn
    assert backend_cells(view(p_ms=800), palette)["p50"].spans[0].style == bad
    assert backend_cells(view(errors=0), palette)["errors"] == "0.0"
    assert backend_cells(view(errors=2), palette)["errors"].spans[0].style == warn
    assert backend_cells(view(errors=9), palette)["errors"].spans[0].style == bad


async def test_the_dashboard_uses_its_theme_and_recolours_live(backends):
    bs = [await backends("b0"), await backends("b1")]
    async with themed(make_config(bs), theme="light") as (app, pilot):
        table = app.query_one("#backends", Table)
        assert app.theme == "light"
        assert colour_of(table.get_cell("b0", "health")) == "#1C7C33"  # light.toml's health-up
        assert "#1C7C33" in hues(table)  # on screen too (b1's row: the cursor row takes the cursor's colours)

        app.theme = "high-contrast"
        await wait_for(
            lambda: colour_of(table.get_cell("b0", "health")) == "#00FF66", what="high-contrast's health-up"
        )
        assert str(table.get_cell("b0", "health")) == "up"

        app.theme = "nord"  # Textual's own: our variables come from its base colours
        nord_success = BUILTIN_THEMES["nord"].to_color_system().generate()["success"]
        await wait_for(
            lambda: colour_of(table.get_cell("b0", "health")) == nord_success, what="nord's success"
        )

        await press(pilot, "d")
        app.theme = "dark"
        await wait_for(
            lambda: colour_of(table.get_cell("b0", "state")) == "#58A6FF", what="dark's health-drain"
        )


async def test_the_palette_theme_list_offers_lbtuis_themes(backends):
    b = await backends("b0")
    async with themed(make_config([b])) as (app, pilot):
        commands = dict(ThemeProvider(app.screen).commands)
        assert set(SHIPPED) <= set(commands)
        commands["high-contrast"]()  # what choosing it in ctrl+p, "Theme", does
        await pilot.pause()
        assert app.theme == "high-contrast"


async def test_no_color_renders_without_colour_and_keeps_the_words(backends, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    b0, b1 = await backends("b0"), await backends("b1")
    async with themed(make_config([b0, b1])) as (app, pilot):
        assert app.no_color
        await press(pilot, "down", "d")
        table = app.query_one("#backends", Table)
        await wait_for(lambda: str(table.get_cell("b1", "state")).startswith("drain"), what="drain")
        assert colour_of(table.get_cell("b1", "state")) is None
        strips = table.render_lines(Region(0, 0, table.size.width, table.size.height))
        text = "\n".join(strip.text for strip in strips)
        assert "ready" in text
        assert "drain" in text
        assert " up " in text
        assert hues(table) == set()  # Textual's NO_COLOR filter: greys only, our styles included
