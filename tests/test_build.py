"""The build: pure Python by default, the data plane compiled with LBTUI_COMPILE=1, and loaded as one group.

The compiled run of .ci/run keeps LBTUI_COMPILE=1 set: there the compiled build must be what runs (a build that
silently fell back to pure Python fails here), and the wheel test builds its wheel compiled. The pure run
(LBTUI_PURE=1) builds the default wheel, the one `pip install .` makes.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

import lbtui
from lbtui._compiled import COMPILED_MODULES, MANIFEST

ROOT = Path(__file__).resolve().parent.parent
SETUP: dict[str, Any] = runpy.run_path(str(ROOT / "setup.py"))  # the build backend's functions; nothing runs
COMPILE_RUN: bool = SETUP["compile_asked"]()
PURE_RUN = bool(os.environ.get("LBTUI_PURE"))

CODE = (
    "import importlib, lbtui\n"
    "mods = [importlib.import_module(m) for m in lbtui.COMPILED_MODULES]\n"
    "print(lbtui.data_plane_build(), sorted({m.__file__.endswith('.so') for m in mods}))\n"
)


def run(code: str, env: dict[str, str], cwd: Path | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


def test_lbtui_pure_loads_the_whole_group_from_source():
    assert run(CODE, {**os.environ, "LBTUI_PURE": "1"}) == "pure Python [False]"


@pytest.mark.skipif(not COMPILE_RUN, reason="not a compiled run (.ci/run's first run sets LBTUI_COMPILE=1)")
def test_the_compiled_run_runs_the_compiled_data_plane():
    # All of the group compiled, none from source. Fails when the install fell back to pure Python (its line in
    # the install's output says why) or a source file changed since it was built (reinstall).
    assert run(CODE, without("LBTUI_PURE")) == "compiled [True]", run(
        "import lbtui; print(lbtui.data_plane_line())", without("LBTUI_PURE")
    )


def test_the_group_is_what_setup_compiles():
    assert SETUP["MODULES"] == COMPILED_MODULES
    assert "lbtui.proxy.connection" in COMPILED_MODULES
    assert all(m.startswith("lbtui.") for m in COMPILED_MODULES)


# ------------------------------------------------------------------------ the stale-source check (MANIFEST)


def package_copy(tmp_path: Path) -> Path:
    """A copy of the lbtui package this test imports (compiled files included), in tmp_path/lbtui."""
    source = Path(lbtui.__file__).parent
    shutil.copytree(source, tmp_path / "lbtui", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_closure_is_every_lbtui_module_the_group_imports():
    closure = SETUP["closure"](str(ROOT))
    for must in (
        "config/__init__.py",
        "config/model.py",
        "config/load.py",
        "tlsfiles.py",
        "proxy/miniclient.py",
        "gateway/aggregate.py",
        "gateway/jwt_auth.py",
    ):
        assert must in closure
    assert "__init__.py" in closure
    assert "proxy/__init__.py" in closure
    assert all(f"{m.replace('.', '/')[len('lbtui/') :]}.py" in closure for m in COMPILED_MODULES)
    # What the group's modules load when imported, from source: all of it must be in the closure (the closure
    # also holds what is imported only for type checking, which the compiled code relies on as well).
    code = (
        "import importlib, sys, lbtui\n"
        "for m in lbtui.COMPILED_MODULES: importlib.import_module(m)\n"
        "print('\\n'.join(sorted(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'lbtui')))\n"
    )
    loaded = run(code, {**os.environ, "LBTUI_PURE": "1", "PYTHONPATH": str(ROOT)}, cwd=ROOT).splitlines()
    package = ROOT / "lbtui"
    assert loaded
    assert {Path(f).relative_to(package).as_posix() for f in loaded} <= set(closure)


def test_an_edit_to_anything_the_group_imports_makes_the_compiled_build_stale(tmp_path):
    # On a copy of the source with a manifest as a compiled build writes it (no compiled files: the check itself).
    root = package_copy(tmp_path)
    (root / "lbtui" / MANIFEST).write_text(SETUP["manifest_text"]([], str(root)))
    why = "import lbtui; print(lbtui._WHY_SOURCE)"
    env = {**without("LBTUI_PURE"), "PYTHONPATH": str(root)}
    assert run(why, env, cwd=root) == "None"
    config = root / "lbtui" / "config" / "values.py"
    config.write_text(config.read_text() + "\n# an edit\n")
    assert run(why, env, cwd=root) == "lbtui/config/values.py changed since it was compiled"
    (root / "lbtui" / MANIFEST).write_text(SETUP["manifest_text"](["proxy/connection.so"], str(root)))
    assert run(why, env, cwd=root) == "proxy/connection.so is missing"
    (root / "lbtui" / MANIFEST).unlink()
    assert run(why, env, cwd=root) == "not compiled"


def test_a_compile_that_failed_at_install_is_named_by_version_and_serve(tmp_path):
    # What a build that was asked to compile and could not leaves in the package (setup.py, write_failure): pip
    # hides the build's output, so the data plane line says it.
    root = package_copy(tmp_path)
    (root / "lbtui" / MANIFEST).write_text("# (comment)\nfailed no working C compiler (cc is missing)\n")
    line = "import lbtui; print(lbtui.data_plane_line())"
    env = {**without("LBTUI_PURE"), "PYTHONPATH": str(root)}
    assert run(line, env, cwd=root) == (
        "data plane: pure Python (the compile at install failed: no working C compiler (cc is missing): "
        "LBTUI_COMPILE=1 pip install . compiles it again)"
    )


def installed_manifest() -> Path | None:
    """The MANIFEST of the compiled build this test imports, if there is one and it is current."""
    path = Path(lbtui.__file__).parent / MANIFEST
    if not path.exists():
        return None
    why = run("import lbtui; print(lbtui._WHY_SOURCE)", without("LBTUI_PURE"))
    return path if why == "None" else None


@pytest.mark.skipif(installed_manifest() is None, reason="no current compiled build here")
def test_an_edit_to_a_copy_of_the_compiled_build_loads_the_group_from_source(tmp_path):
    root = package_copy(tmp_path)
    env = {**without("LBTUI_PURE"), "PYTHONPATH": str(root)}
    assert run(CODE, env, cwd=root) == "compiled [True]"
    # imported by the group, not compiled (the config package: its modules each count; the TLS leaf)
    for name in ("config/__init__.py", "config/routes.py", "tlsfiles.py", "proxy/miniclient.py"):
        path = root / "lbtui" / name
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        assert run(CODE, env, cwd=root) == "pure Python [False]"
        path.write_bytes(original)
    assert run(CODE, env, cwd=root) == "compiled [True]"


@pytest.mark.skipif(installed_manifest() is None, reason="no current compiled build here")
def test_the_build_recorded_the_closure_an_ast_walk_finds_now():
    manifest = installed_manifest()
    assert manifest is not None
    recorded = [line.split()[2] for line in manifest.read_text().splitlines() if line.startswith("source ")]
    assert recorded == SETUP["closure"](str(ROOT))


# ------------------------------------------------------------------------------------ build requirements


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_one_mypy_pin_lints_and_compiles():
    requirements = SETUP["compile_requirements"]()
    mypy = [r for r in requirements if r.startswith("mypy")]
    assert mypy == [
        r for r in pyproject()["project"]["optional-dependencies"]["test"] if r.startswith("mypy")
    ]
    assert mypy[0] == f"mypy=={importlib.metadata.version('mypy')}"  # the mypy installed here, which lints
    assert "mypy" not in " ".join(pyproject()["build-system"]["requires"])  # only when compiling
    # The setuptools the test extra installs for the builds of these tests is the one the build requires.
    (setuptools,) = pyproject()["build-system"]["requires"]
    assert setuptools in pyproject()["project"]["optional-dependencies"]["test"]


def third_party_imports(files: list[Path]) -> set[str]:
    """The top-level modules outside lbtui and the standard library that `files` import."""
    imported: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    return imported - set(sys.stdlib_module_names) - {"lbtui", "__future__"}


def distribution(requirement: str) -> tuple[str, set[str]]:
    """("PyJWT", {"crypto"}) for "PyJWT[crypto]>=2.8"."""
    match = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", requirement)
    assert match
    return match[1], {e.strip() for e in (match[2] or "").split(",") if e.strip()}


def provided_modules(requirement: str) -> set[str]:
    """The top-level modules that installing `requirement` brings: its own, and its extras' dependencies'."""
    name, extras = distribution(requirement)
    dists = {name}
    for dependency in importlib.metadata.requires(name) or []:
        marker = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", dependency)
        if marker is not None and marker[1] in extras:
            dists.add(distribution(dependency)[0])
    modules: set[str] = set()
    for dist in dists:
        files = importlib.metadata.files(dist) or []
        modules |= {
            f.parts[0].removesuffix(".py") for f in files if f.parts and not f.parts[0].endswith("-info")
        }
    return modules


def test_the_compile_requirements_cover_what_the_group_imports():
    """Every third-party module the group's closure imports is typed by a compile requirement, or ignored."""
    third_party = third_party_imports([ROOT / "lbtui" / name for name in SETUP["closure"](str(ROOT))])
    assert {"jwt", "cryptography", "httptools"} <= third_party
    provided = set().union(*(provided_modules(r) for r in SETUP["compile_requirements"]()))
    ignored = {
        module.removesuffix(".*")
        for override in pyproject()["tool"]["mypy"]["overrides"]
        if override.get("ignore_missing_imports")
        for module in override["module"]
    }
    assert third_party - provided - ignored == set()


def test_the_declared_dependencies_are_what_lbtui_imports():
    """Each runtime dependency is imported by lbtui (sniffio is the tests'), and nothing else is."""
    imported = third_party_imports(sorted((ROOT / "lbtui").rglob("*.py")))
    assert "httpx" in imported  # `lbtui attach`'s client (admin/aclient.py)
    assert "sniffio" not in imported
    declared = [
        r for r in pyproject()["project"]["dependencies"] if "win32" not in r or sys.platform != "win32"
    ]
    by_requirement = {r: provided_modules(r) for r in declared}
    assert [r for r, modules in by_requirement.items() if not modules & imported] == []  # each one is used
    assert imported - set().union(*by_requirement.values()) == set()  # and nothing is missing


# ---------------------------------------------------------------------------------------- wheels, for real
# The pure run builds the wheel `pip install .` builds: in a brand-new venv, its build isolated (setuptools alone).
# The compiled run builds it compiled, and the failing compiles, with this environment's mypy and setuptools
# (--no-build-isolation: .ci/run made this venv from scratch and its own install already went through the
# isolated compiled build; a second isolated build environment would only cost time).

needs_compiled_run = pytest.mark.skipif(
    not COMPILE_RUN,
    reason="the compiled run (LBTUI_COMPILE=1, with the test extra's setuptools) builds these",
)


def project_copy(tmp_path: Path) -> Path:
    """The project's files as a fresh clone has them (no build output, no caches), in tmp_path/project."""
    junk = shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "*.so", MANIFEST
    )
    return Path(shutil.copytree(ROOT, tmp_path / "project", ignore=junk))


def new_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin"


def pip(python: Path | str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    out = subprocess.run(
        [str(python), "-m", "pip", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else without("PYTHONPATH"),
        cwd=cwd,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out.stdout + out.stderr


def build_lines(log: str) -> list[str]:
    return [line.strip() for line in log.splitlines() if line.strip().startswith("lbtui build:")]


def build_wheel(project: Path, dist: Path, env: dict[str, str]) -> tuple[Path, str]:
    """Build the project's wheel into `dist`: (the wheel, pip's verbose log)."""
    if COMPILE_RUN:
        log = pip(
            sys.executable,
            "wheel",
            "-v",
            "--no-build-isolation",
            "--no-deps",
            "-w",
            str(dist),
            ".",
            env=env,
            cwd=project,
        )
    else:
        bin_dir = new_venv(dist.parent / "build-venv")
        log = pip(bin_dir / "python", "wheel", "-v", "--no-deps", "-w", str(dist), ".", env=env, cwd=project)
    (wheel,) = dist.glob("lbtui-*.whl")
    return wheel, log


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_wheel_holds_everything_and_runs_from_a_new_venv(tmp_path):
    """The wheel: pure in the pure run (built as a new user's `pip install .` builds it), compiled in the compiled run."""
    project = project_copy(tmp_path)
    env = without("PYTHONPATH", "LBTUI_COMPILE", "LBTUI_PURE")
    if COMPILE_RUN:
        # -O0: what the wheel holds and that it runs is the point here, not its speed (.ci/run's install
        # compiled the same C at -O3); it compiles in a third of the time.
        env.update(LBTUI_COMPILE="1", MYPYC_OPT_LEVEL="0")
    wheel, log = build_wheel(project, tmp_path / "dist", env)
    names = set(zipfile.ZipFile(wheel).namelist())
    themes = {f"lbtui/themes/{p.name}" for p in (ROOT / "themes").glob("*.toml")}
    assert themes
    assert themes <= names
    styles = {f"lbtui/tui/{p.name}" for p in (ROOT / "lbtui" / "tui").glob("*.tcss")}
    assert styles
    assert styles <= names
    assert "lbtui/py.typed" in names
    compiled = {n for n in names if n.endswith(".so")}
    if COMPILE_RUN:
        shims = {f"{m.replace('.', '/')}.cpython" for m in COMPILED_MODULES}
        assert {n.split("-")[0] for n in compiled} >= shims, compiled
        assert any(n.startswith("lbtui/data_plane__mypyc.") for n in compiled)
        assert f"lbtui/{MANIFEST}" in names
        # mypyc ran once, while the wheel was built: not while pip asked for the metadata.
        building = log.index("Building wheel for lbtui")
        assert [log.index(line) > building for line in build_lines(log) if "mypyc" in line] == [True]
    else:
        assert compiled == set()
        assert f"lbtui/{MANIFEST}" not in names
        # The build environment got setuptools, and nothing else (no mypy): that is all a pure build needs.
        installed = [line for line in log.splitlines() if "Successfully installed" in line]
        assert installed
        assert all(
            re.fullmatch(r"\s*Successfully installed setuptools-[0-9.]+", line) for line in installed
        ), installed
        assert build_lines(log) == [
            "lbtui build: pure Python (LBTUI_COMPILE=1 compiles the data plane with mypyc: about twice as fast)"
        ]
    bin_dir = new_venv(tmp_path / "venv")
    pip(bin_dir / "python", "install", str(wheel))  # its dependencies from the configured indexes
    version = subprocess.run(
        [str(bin_dir / "lbtui"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert version.returncode == 0, version.stderr
    expected = "compiled" if COMPILE_RUN else "pure Python"
    assert version.stdout.startswith(f"lbtui {lbtui.__version__}; data plane: {expected} ("), version.stdout


def setuptools_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0,)


NO_MYPYC = """
import json, os, sys, tempfile
class NoMypyc:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] == "mypyc":
            raise AssertionError("mypyc imported while " + STEP)
sys.meta_path.insert(0, NoMypyc)
sys.path.insert(0, os.getcwd())  # as pip's backend-path does
import setup
STEP = "asking for the build requirements"
requires = setup.get_requires_for_build_wheel()
STEP = "preparing the metadata"
setup.prepare_metadata_for_build_wheel(tempfile.mkdtemp())
print(json.dumps(requires))
"""


@pytest.mark.skipif(setuptools_version() < (77,), reason="needs setuptools 77+ here (the test extra has it)")
def test_mypyc_runs_only_while_building_and_is_required_only_to_compile(tmp_path):
    project = project_copy(tmp_path)
    env = without("PYTHONPATH", "LBTUI_COMPILE", "LBTUI_PURE")
    requirements = SETUP["compile_requirements"]()
    for extra, expected in (
        ({}, []),
        ({"LBTUI_COMPILE": "1"}, requirements),
        ({"LBTUI_COMPILE": "1", "LBTUI_PURE": "1"}, []),
    ):
        out = subprocess.run(
            [sys.executable, "-c", NO_MYPYC],
            capture_output=True,
            text=True,
            env={**env, **extra},
            cwd=project,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        requires = json.loads(out.stdout.strip().splitlines()[-1])
        assert [r for r in requires if not r.startswith("setuptools")] == expected
        assert "lbtui build:" not in out.stderr
    assert any(r.startswith("mypy==") for r in requirements)
    assert any(r.startswith("PyJWT[crypto]") for r in requirements)


# ------------------------------------------------------------------------------ a failed compile, for real


def broken_type(project: Path) -> dict[str, str]:
    config = project / "lbtui" / "config" / "model.py"
    config.write_text(config.read_text() + '\nNOT_AN_INT: int = "a str"\n')
    return {}


def failing_compiler(project: Path) -> dict[str, str]:
    # A compiler that compiles the probe but fails on mypyc's C, as a compiler crash or out-of-memory would.
    script = project.parent / "failing-cc"
    script.write_text('#!/bin/sh\ncase "$*" in *__native_*) exit 1;; esac\nexec "$REAL_CC" "$@"\n')
    script.chmod(0o755)
    return {"CC": str(script), "REAL_CC": shutil.which("gcc") or shutil.which("cc") or "cc"}


def no_compiler(project: Path) -> dict[str, str]:
    return {"CC": "false"}


@pytest.mark.slow
@pytest.mark.timeout(900)
@needs_compiled_run
@pytest.mark.parametrize(
    ("case", "line"),
    [
        (broken_type, "mypyc failed (lbtui/config/model.py:"),
        (failing_compiler, "compiling failed ("),
        (no_compiler, "no working C compiler (false cannot compile a file that includes Python.h)"),
    ],
)
def test_a_compile_that_fails_installs_pure_python_and_says_why_in_one_line(tmp_path, case, line):
    project = project_copy(tmp_path)
    env = {**without("PYTHONPATH", "LBTUI_PURE"), "LBTUI_COMPILE": "1", **case(project)}
    wheel, log = build_wheel(project, tmp_path / "dist", env)
    failures = [entry for entry in build_lines(log) if "installing pure Python" in entry]
    assert len(failures) == 1, build_lines(log)
    assert failures[0].startswith(f"lbtui build: {line}"), failures
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".so")]
    note = zipfile.ZipFile(wheel).read(f"lbtui/{MANIFEST}").decode().splitlines()[-1]
    assert (
        note == f"failed {failures[0].removeprefix('lbtui build: ').removesuffix(': installing pure Python')}"
    )
    assert "lbtui/proxy/connection.py" in names
