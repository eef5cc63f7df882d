"""The dashboard's `r`: reload the config file on the engine's thread, and say what came of it."""

from __future__ import annotations

from pathlib import Path

from lbtui.config import load_config
from lbtui.tui.app import Dashboard
from tests.tui.keys import press
from tests.tui.test_app import running


def write(path: Path, backends: list, algorithm: str = "round_robin") -> None:
    lines = [
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n',
        f'[services.app]\nalgorithm = "{algorithm}"\n',
    ]
    for b in backends:
        lines.append(f'\n[[services.app.backends]]\nname = "{b.name}"\naddress = "{b.address}"\n')
    path.write_text("".join(lines))


def message(app: Dashboard) -> str:
    return str(app.query_one("#message").render())


async def test_r_reloads_the_config_file(backends, tmp_path: Path) -> None:
    b0, b1 = await backends("b0"), await backends("b1")
    path = tmp_path / "lbtui.toml"
    write(path, [b0])
    async with running(load_config(path)) as (app, pilot):
        write(path, [b0, b1])
        await press(pilot, "r")
        assert "reloaded" in message(app)
        assert "backend b1: added" in message(app)
        assert [b.name for b in app.controller.snapshot().service("app").backends] == ["b0", "b1"]
        assert {e.actor for e in app.controller.events()} == {"reload"}

        write(path, [b0], algorithm="fastest")
        await press(pilot, "r")
        assert "reload refused" in message(app)
        assert "services.app.algorithm" in message(app)
        assert [b.name for b in app.controller.snapshot().service("app").backends] == ["b0", "b1"]


async def test_r_is_off_when_read_only(backends, tmp_path: Path) -> None:
    b0, b1 = await backends("b0"), await backends("b1")
    path = tmp_path / "lbtui.toml"
    write(path, [b0])
    async with running(load_config(path), read_only=True) as (app, pilot):
        write(path, [b0, b1])
        await press(pilot, "r")
        assert [b.name for b in app.controller.snapshot().service("app").backends] == ["b0"]
