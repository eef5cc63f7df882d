"""The data plane's hot path is compiled with mypyc where a C compiler exists, and loads as one group."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from lbtui._compiled import COMPILED_MODULES

CODE = (
    "import importlib, lbtui\n"
    "mods = [importlib.import_module(m) for m in lbtui.COMPILED_MODULES]\n"
    "print(lbtui.data_plane_build(), sorted({m.__file__.endswith('.so') for m in mods}))\n"
)


def run(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(
    bool(os.environ.get("LBTUI_PURE")) or (shutil.which("gcc") is None and shutil.which("cc") is None),
    reason="pure Python asked for, or no C compiler here",
)
def test_installed_with_a_compiler_runs_the_compiled_data_plane():
    env = {k: v for k, v in os.environ.items() if k != "LBTUI_PURE"}
    assert run(env) == "compiled [True]"  # all of the group compiled, none from source


def test_lbtui_pure_loads_the_whole_group_from_source():
    assert run({**os.environ, "LBTUI_PURE": "1"}) == "pure Python [False]"


def test_the_group_is_what_setup_compiles():
    assert "lbtui.proxy.client" in COMPILED_MODULES
    assert all(m.startswith("lbtui.") for m in COMPILED_MODULES)
