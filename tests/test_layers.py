"""lbtui's layers hold: import-linter runs the contracts of pyproject.toml ([tool.importlinter]) on lbtui/, and a
broken contract fails the test with import-linter's report (which import, in which file, at which line).

The contracts: the layers (cli; tui | admin | haproxy; fleet; threaded; serve; demo; proxy; features; gateway; core;
config; leaves), no Textual or Rich below the dashboard, the faces reach the engine through the Controller, the
HAProxy client and the fleet stand on the core and below, and no import cycle between lbtui's packages. A second test plants a
violation of each in a copy of lbtui/ and checks that the contracts name it: a contract that cannot fail would prove nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lint-imports, run by this interpreter (its console script is this function).
LINT_IMPORTS = [
    sys.executable,
    "-c",
    "from importlinter.cli import lint_imports_command; lint_imports_command()",
    "--no-cache",  # no cache folder written into the tree (and none shared by parallel runs)
    "--no-logo",
]


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the lbtui package found in `where`, with the contracts of `where`/pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [*LINT_IMPORTS, str(where / "pyproject.toml")],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_are_kept():
    result = lint_imports(ROOT)
    report = result.stdout + result.stderr
    assert "Contracts:" in report, report  # it ran the contracts (not a configuration error)
    assert result.returncode == 0, f"an import contract of pyproject.toml is broken:\n{report}"


PLANTS = {
    # A leaf importing the dashboard (the top of the layers), and Textual. (A leaf, so no cycle comes of it:
    # the cycle below is then the one new cycle, and import-linter names it.)
    "_compiled.py": "\nimport textual\n\nimport lbtui.tui\n",
    # The dashboard importing the data plane directly.
    "tui/planted.py": "import lbtui.gateway\n",
    # The demo importing the runtime, which imports the demo: a cycle between two packages (and a layer broken).
    "demo/planted.py": "from lbtui import serve\n",
    # HAProxy's client importing the data plane (its layer would allow it; its own contract does not).
    "haproxy/planted.py": "import lbtui.proxy\n",
    # The fleet importing a face above it (its layer forbids it) and the data plane (its own contract does).
    "fleet.py": "\nimport lbtui.haproxy\nimport lbtui.proxy\n",
}


def test_the_contracts_catch_planted_violations(tmp_path):
    shutil.copytree(ROOT / "lbtui", tmp_path / "lbtui", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for path, source in PLANTS.items():
        with (tmp_path / "lbtui" / path).open("a") as planted:
            planted.write(source)
    result = lint_imports(tmp_path)
    report = result.stdout + result.stderr
    assert result.returncode == 1, report
    # Each contract names its planted import (so the copy was the package it read).
    layers = report.split("Layers:", 2)[2]  # the broken contract's section, after the summary
    assert "lbtui._compiled -> lbtui.tui (l." in layers, report
    assert "lbtui._compiled -> textual" in report, report
    assert "lbtui.tui.planted -> lbtui.gateway (l.1)" in report, report
    assert "lbtui.demo.planted -> lbtui.serve (l.1)" in layers, report
    assert "lbtui.haproxy.planted -> lbtui.proxy (l.1)" in report, report
    assert "lbtui.fleet -> lbtui.haproxy (l." in layers, report
    assert "lbtui.fleet -> lbtui.proxy (l." in report.split("The fleet steers", 2)[2], report
    cycles = report.split("No cycles are allowed in lbtui.", 1)[1]
    assert re.search(r"\.demo -> \.serve|\.serve -> \.demo", cycles), report
