"""Dashboard themes: TOML files -> Textual themes, with lbtui's semantic colour variables.

A theme file (`themes/*.toml` in the repository, `lbtui/themes/` in the wheel, or any file a user copied)
holds Textual's base colours and a `[variables]` table of the semantic variables below. Colours live in those
files only: the code names a variable (`health-down`), never a colour. Themes without our variables (Textual's
own: nord, gruvbox, ...) get them from their base colours (`semantic_defaults`). A bad file is reported as
`ThemeError` with the file, the key and what is wrong; nothing here lets a traceback reach the user.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Protocol

from rich.style import Style
from textual.color import Color, ColorParseError
from textual.theme import BUILTIN_THEMES, Theme

DEFAULT_THEME = "dark"

# Our variables: name -> (what it colours, the base colour a theme without it uses). docs/themes.md says more.
SEMANTIC_VARIABLES: dict[str, tuple[str, str]] = {
    "health-up": ("health up (checks pass); also the admin state ready", "success"),
    "health-going": ("health on its way: going_up k/rise, going_down k/fall", "warning"),
    "health-down": ("health down (checks fail)", "error"),
    "health-ejected": ("ejected by passive outlier detection", "error"),
    "health-drain": ("admin state drain: no new requests, in flight ones finish", "primary"),
    "health-maint": ("admin state maint: no traffic at all", "foreground-muted"),
    "latency-warn": ("p50/p99 past the warning threshold", "warning"),
    "latency-bad": ("p50/p99 past the bad threshold", "error"),
    "errors-warn": ("5xx % past the warning threshold", "warning"),
    "errors-bad": ("5xx % past the bad threshold", "error"),
}

# Without colour (NO_COLOR) the words carry the meaning; the worst states are bold as well.
NO_COLOR_STYLES = {
    "health-down": "bold",
    "health-ejected": "bold",
    "latency-bad": "bold",
    "errors-bad": "bold",
}

# Keys of a theme file besides [variables]: Textual's Theme fields.
COLOUR_KEYS = (
    "primary",
    "secondary",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
    "success",
    "warning",
    "error",
)
NUMBER_KEYS = ("luminosity_spread", "text_alpha")
KEYS = ("name", "dark", *COLOUR_KEYS, *NUMBER_KEYS, "variables")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
COLOUR_HINT = "use #rrggbb, rgb(r, g, b), hsl(h, s%, l%) or a colour name"


@dataclass(frozen=True)
class ThemeIssue:
    """One problem in one theme file: where (file, key) and what is wrong, with a fix when there is one."""

    file: str
    key: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"
        return f"{text}; {self.hint}" if self.hint else text


class ThemeError(Exception):
    """Every problem found in one theme file."""

    def __init__(self, issues: Iterable[ThemeIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class UnknownThemeError(LookupError):
    """A theme name that is neither lbtui's, nor Textual's, nor a file."""

    def __init__(self, name: str) -> None:
        self.name = name
        ours, textual = shipped_names(), sorted(BUILTIN_THEMES)
        close = difflib.get_close_matches(name, [*ours, *textual], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        super().__init__(
            f"unknown theme {name!r}; {hint}lbtui's themes: {', '.join(ours)}; "
            f"Textual's: {', '.join(textual)}; or the path of a .toml theme file"
        )


def shipped_dir() -> Traversable:
    """The themes that come with lbtui: inside the installed package, else the source checkout's themes/."""
    packaged = resources.files("lbtui") / "themes"
    if packaged.is_dir():
        return packaged
    # Running from a source checkout (or an editable install older than themes/): the repository's folder.
    return Path(__file__).resolve().parents[2] / "themes"


def shipped_names() -> list[str]:
    folder = shipped_dir()
    if not folder.is_dir():
        return []
    return sorted(entry.name[: -len(".toml")] for entry in folder.iterdir() if entry.name.endswith(".toml"))


def shipped_themes() -> list[Theme]:
    folder = shipped_dir()
    return [load_theme_file(folder / f"{name}.toml") for name in shipped_names()]


def load_theme(name_or_path: str) -> Theme:
    """A theme by name (lbtui's, then Textual's) or by the path of a .toml file (a user's copy)."""
    if name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path:
        return load_theme_file(Path(name_or_path))
    if name_or_path in shipped_names():
        return load_theme_file(shipped_dir() / f"{name_or_path}.toml")
    if name_or_path in BUILTIN_THEMES:
        return BUILTIN_THEMES[name_or_path]
    raise UnknownThemeError(name_or_path)


def load_theme_file(path: Traversable | Path) -> Theme:
    """Read and check one theme file; every problem is collected into one ThemeError."""
    file = str(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ThemeError([ThemeIssue(file, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ThemeError([ThemeIssue(file, "", f"cannot read it ({error})")]) from None
    except tomllib.TOMLDecodeError as error:
        raise ThemeError([ThemeIssue(file, "", f"not valid TOML: {error}")]) from None
    return _theme(data, file, default_name=Path(path.name).stem)


class _Problem(Protocol):
    def __call__(self, key: str, message: str, hint: str = "") -> None: ...


def _theme(data: dict[str, object], file: str, default_name: str) -> Theme:
    issues: list[ThemeIssue] = []

    def problem(key: str, message: str, hint: str = "") -> None:
        issues.append(ThemeIssue(file, key, message, hint))

    for key in data:
        if key not in KEYS:
            problem(key, "unknown key", _did_you_mean(key, KEYS))

    name = data.get("name", default_name)
    if not isinstance(name, str) or not NAME.match(name):
        problem("name", f"{name!r} is not a theme name", "use letters, digits, '-' and '_', e.g. \"my-dark\"")
        name = default_name
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        problem("dark", f"{dark!r} is not true or false", "true for light text on a dark background")
        dark = True

    colours: dict[str, str] = {}
    for key in COLOUR_KEYS:
        if key in data:
            value = _colour(data[key], key, problem)
            if value is not None:
                colours[key] = value
    if "primary" not in data:
        problem("primary", "missing", 'every theme needs one: primary = "#rrggbb"')

    numbers: dict[str, float] = {}
    for key in NUMBER_KEYS:
        if key in data:
            number = data[key]
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0 <= number <= 1:
                problem(key, f"{number!r} is not a number from 0 to 1")
            else:
                numbers[key] = float(number)

    variables: dict[str, str] = {}
    table = data.get("variables", {})
    if not isinstance(table, dict):
        problem("variables", "not a table", 'write [variables] on its own line, then name = "#rrggbb" lines')
        table = {}
    known = _variable_names()
    for key, raw in table.items():
        where = f"variables.{key}"
        if key not in known:
            problem(where, "unknown variable", _did_you_mean(key, [*SEMANTIC_VARIABLES, *sorted(known)]))
            continue
        value = _colour(raw, where, problem)
        if value is not None:
            variables[key] = value

    if issues:
        raise ThemeError(issues)
    assert isinstance(name, str)
    return Theme(
        name=name,
        dark=dark,
        variables=variables,
        **colours,  # type: ignore[arg-type]
        **numbers,  # type: ignore[arg-type]
    )


def _colour(value: object, key: str, problem: _Problem) -> str | None:
    if not isinstance(value, str):
        problem(key, f"{value!r} is not a colour", f'write it as a string: {key.split(".")[-1]} = "#rrggbb"')
        return None
    try:
        Color.parse(value)
    except ColorParseError as error:
        hint = f"did you mean {error.suggested_color!r}?" if error.suggested_color else COLOUR_HINT
        problem(key, f"{value!r} is not a colour", hint)
        return None
    return value


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def _variable_names() -> set[str]:
    """Ours, plus Textual's own colour variables (a theme may set e.g. footer-key-foreground too)."""
    return set(SEMANTIC_VARIABLES) | set(BUILTIN_THEMES["textual-dark"].to_color_system().generate())


def semantic_defaults(theme: Theme) -> dict[str, str]:
    """Our variables for a theme that does not set them: taken from its own base colours."""
    generated = theme.to_color_system().generate()
    return {name: generated[base] for name, (_, base) in SEMANTIC_VARIABLES.items()}


def palette(variables: Mapping[str, str], no_color: bool = False) -> dict[str, Style]:
    """Rich styles for our variables, from the app's current theme variables (`App.get_css_variables()`).

    Table cells are Rich text, which cannot name a theme variable, so the dashboard looks the colours up here
    whenever the theme changes. A translucent colour is blended onto the background, as the CSS would.
    """
    if no_color:
        return {name: Style.parse(NO_COLOR_STYLES.get(name, "none")) for name in SEMANTIC_VARIABLES}
    background = _parse(variables.get("background", ""))
    styles: dict[str, Style] = {}
    for name in SEMANTIC_VARIABLES:
        colour = _parse(variables.get(name, ""))
        if colour is None:
            continue  # the word alone says it
        if colour.a < 1 and background is not None:
            colour = background + colour
        styles[name] = Style(color=colour.rich_color)
    return styles


def _parse(value: str) -> Color | None:
    try:
        return Color.parse(value)
    except ColorParseError:
        return None
