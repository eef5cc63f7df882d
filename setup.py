"""Build lbtui: pure Python by default, the data plane's hot path compiled with mypyc on request.

`pip install .` installs pure Python: it needs setuptools alone and takes seconds. `LBTUI_COMPILE=1 pip install .`
also compiles the modules of lbtui/_compiled.py with mypyc (about twice as fast; mypy ships its mypyc build the
same way, behind MYPY_USE_MYPYC=1). LBTUI_PURE=1 wins over LBTUI_COMPILE.

This file is also the project's PEP 517 build backend (pyproject.toml: build-backend = "setup", backend-path =
["."]): setuptools' own, plus build requirements that depend on LBTUI_COMPILE. Invariants:
- Imported as the backend, it only defines functions. setuptools.build_meta runs it as __main__ for every step;
  mypyc and the compiler run only in the steps that build (BUILD_COMMANDS), never while pip asks for the build
  requirements or the metadata.
- An optional compile never fails an install. Whatever goes wrong (no working C compiler or Python.h, no mypyc,
  type errors, which mypyc reports as a SystemExit, any exception, a failing C compile), the package is built as
  pure Python and one line on stderr says why (pip shows it with -v). The same reason is written into the
  package (MANIFEST: `failed REASON`), so `lbtui serve` and `lbtui --version` say it too.
- A compiled build writes MANIFEST (lbtui/_compiled.py) next to the compiled modules: the compiled files, and the
  sha256 of every lbtui source file the group imports, directly or not (an AST walk of the imports, `closure`).
  lbtui/__init__.py loads the whole group from source when any of them differs or is missing.
- An editable install (pip install -e) that does not compile removes the compiled modules an earlier one left in
  lbtui/, so the build one asked for is the one that runs.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import os
import runpy
import sys
import tempfile
import time
from typing import Any

from setuptools import build_meta

HERE = os.path.dirname(os.path.abspath(__file__))
_COMPILED = runpy.run_path(os.path.join(HERE, "lbtui", "_compiled.py"))
MODULES: tuple[str, ...] = _COMPILED["COMPILED_MODULES"]
GROUP: str = _COMPILED["GROUP"]
MANIFEST: str = _COMPILED["MANIFEST"]

# The setuptools commands that build (build_meta runs bdist_wheel and editable_wheel; the rest are by hand).
BUILD_COMMANDS = {"bdist_wheel", "editable_wheel", "build", "build_ext", "install", "develop"}


def opt_level() -> str:
    """The C compiler's -O level: 3, mypyc's default (measured no slower to compile than -O2), unless
    MYPYC_OPT_LEVEL says otherwise (as in mypy's own build; 0 compiles about 2.5 times faster, for
    checking a build rather than running it)."""
    level = os.environ.get("MYPYC_OPT_LEVEL", "3").strip()
    return level if level in ("0", "1", "2", "3") else "3"


def say(message: str) -> None:
    print(f"lbtui build: {message}", file=sys.stderr, flush=True)


# Why a compile that was asked for fell back to pure Python: written into the package (MANIFEST, `failed ...`),
# so that `lbtui --version` and `lbtui serve` can say it long after pip hid the build's output.
_failed: list[str] = []


def fall_back(reason: str) -> None:
    """The one line of a compile that cannot be done; the build goes on as pure Python."""
    _failed[:] = [_one_line(reason)]
    say(f"{_failed[0]}: installing pure Python")


def write_failure(*roots: str) -> None:
    """Record in each root's lbtui/ why the compile asked for did not happen (see lbtui/__init__.py)."""
    if not _failed:
        return
    for root in roots:
        folder = os.path.join(root, "lbtui")
        if os.path.isdir(folder):
            with open(os.path.join(folder, MANIFEST), "w") as file:
                file.write(
                    f"# LBTUI_COMPILE=1 was asked for; this build is pure Python.\nfailed {_failed[0]}\n"
                )


def compile_asked() -> bool:
    """LBTUI_COMPILE is set (not to 0, false or no), and LBTUI_PURE is not (set at all: as lbtui reads it)."""
    compile_it = os.environ.get("LBTUI_COMPILE", "").strip().lower() not in ("", "0", "false", "no")
    return compile_it and not os.environ.get("LBTUI_PURE")


# ------------------------------------------------------------------------------------ the build backend


def compile_requirements() -> list[str]:
    """What a compiling build needs besides setuptools, read from pyproject.toml ([tool.lbtui.compile] says why)."""
    import tomllib

    with open(os.path.join(HERE, "pyproject.toml"), "rb") as file:
        pyproject = tomllib.load(file)
    project = pyproject["project"]
    needed = pyproject["tool"]["lbtui"]["compile"]
    requirements = [
        *_pick(project["optional-dependencies"][needed["mypy-from-extra"]], ["mypy"]),
        *_pick(project["dependencies"], needed["type-check-needs"]),
    ]
    return requirements


def _pick(requirements: list[str], names: list[str]) -> list[str]:
    """The requirements of `requirements` for the distributions `names` (each must be there: one place, one pin)."""

    def name_of(requirement: str) -> str:
        end = len(requirement)
        for mark in "[<>=!~; ":
            if mark in requirement:
                end = min(end, requirement.index(mark))
        return requirement[:end].lower().replace("_", "-")

    picked = []
    for name in names:
        found = [r for r in requirements if name_of(r) == name.lower().replace("_", "-")]
        if len(found) != 1:
            raise RuntimeError(f"pyproject.toml: expected one requirement for {name!r}, found {found}")
        picked.append(found[0])
    return picked


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    requirements = build_meta.get_requires_for_build_wheel(config_settings)
    return [*requirements, *compile_requirements()] if compile_asked() else requirements


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    requirements = build_meta.get_requires_for_build_editable(config_settings)
    return [*requirements, *compile_requirements()] if compile_asked() else requirements


get_requires_for_build_sdist = build_meta.get_requires_for_build_sdist
prepare_metadata_for_build_wheel = build_meta.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = build_meta.prepare_metadata_for_build_editable
build_wheel = build_meta.build_wheel
build_editable = build_meta.build_editable
build_sdist = build_meta.build_sdist


# ------------------------------------------------------------------------------- what the group imports


def module_path(root: str, name: str) -> str | None:
    """The source file of module `name` under `root` (the folder that holds lbtui/), if it is a module there."""
    base = os.path.join(root, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def closure(root: str = HERE, modules: tuple[str, ...] = MODULES) -> list[str]:
    """Every lbtui module the group imports, directly or not, with the packages that hold them.

    The names are paths relative to lbtui/ ("config.py", "proxy/__init__.py"). Every import statement counts,
    wherever it is (in a function, under TYPE_CHECKING): each can carry a type that the compiled code relies on.
    """
    todo = list(modules)
    seen: dict[str, str] = {}
    while todo:
        name = todo.pop()
        path = module_path(root, name)
        if path is None or path in seen.values():
            continue
        seen[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:end]) for end in range(1, len(parts))]
        package = parts if path.endswith("__init__.py") else parts[:-1]
        with open(path, "rb") as file:
            tree = ast.parse(file.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.split(".")[0] == "lbtui"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module.split(".") if node.module else []
                if node.level:
                    base = package[: len(package) - node.level + 1] + base
                if base[:1] == ["lbtui"]:
                    # `from lbtui.x import y`: y is a module of lbtui.x or a name in it; module_path tells.
                    todo += [".".join(base)] + [".".join([*base, alias.name]) for alias in node.names]
    lbtui_dir = os.path.join(root, "lbtui")
    return sorted(os.path.relpath(path, lbtui_dir).replace(os.sep, "/") for path in seen.values())


def sha256(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def manifest_text(compiled: list[str], root: str = HERE) -> str:
    lines = [
        "# What the compiled data plane was built from: setup.py writes it, lbtui/__init__.py checks it at import.",
        *(f"compiled {name}" for name in compiled),
        *(f"source {sha256(os.path.join(root, 'lbtui', name))} {name}" for name in closure(root)),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- compiling


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def probe_compiler() -> None:
    """Compile a file that includes Python.h, as the build will: raises (one line) if the compiler cannot."""
    import sysconfig

    from setuptools._distutils import ccompiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler: Any = ccompiler.new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as scratch:
        source = os.path.join(scratch, "probe.c")
        with open(source, "w") as file:
            file.write("#include <Python.h>\nint lbtui_probe(void) { return Py_IsInitialized(); }\n")
        try:
            compiler.compile([source], output_dir=scratch, include_dirs=[sysconfig.get_paths()["include"]])
        except Exception as error:
            raise RuntimeError(
                f"{compiler.compiler_so[0]} cannot compile a file that includes Python.h"
            ) from error


def mypyc_extensions() -> list[Any]:
    """The group as extensions to build, or [] (with the line that says why) when it cannot be compiled."""
    try:
        probe_compiler()
    except Exception as error:
        fall_back(f"no working C compiler ({error})")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as error:
        fall_back(f"mypyc is not available ({error})")
        return []
    messages = io.StringIO()
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(messages):
            extensions = mypycify(
                [name.replace(".", "/") + ".py" for name in MODULES],
                opt_level=opt_level(),
                # One C file per module, compiled in parallel (CompileDataPlane): about half the time on 2 cores.
                multi_file=True,
                group_name=GROUP,
            )
    except (Exception, SystemExit) as error:  # type errors end mypyc with SystemExit
        errors = [line for line in messages.getvalue().splitlines() if ": error:" in line]
        detail = errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "") if errors else ""
        fall_back(f"mypyc failed ({_one_line(detail or repr(error))})")
        return []
    say(f"mypyc type-checked the group and wrote its C in {time.monotonic() - started:.1f} s")
    # mypyc puts the group's headers next to its C file (build/lbtui/), which the per-module files include.
    for extension in extensions:
        if extension.name == f"{GROUP}__mypyc":
            extension.include_dirs.append(os.path.join("build", *GROUP.split(".")[:-1]))
    return extensions


def _compile_in_parallel(compiler: Any, workers: int) -> None:
    """Make `compiler` compile the files of one extension `workers` at a time, largest first.

    distutils compiles them one after another; the group's C is one file per module, the largest a quarter of it.
    """
    from concurrent.futures import ThreadPoolExecutor

    from setuptools._distutils.errors import CompileError

    def compile(
        sources: list[str],
        output_dir: str | None = None,
        macros: Any = None,
        include_dirs: Any = None,
        debug: bool = False,
        extra_preargs: Any = None,
        extra_postargs: Any = None,
        depends: Any = None,
    ) -> list[str]:
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs
        )
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
        jobs = sorted(build.items(), key=lambda job: -os.path.getsize(job[1][0]))
        with ThreadPoolExecutor(workers) as pool:
            done = [
                pool.submit(compiler._compile, obj, src, ext, cc_args, extra_postargs, pp_opts)
                for obj, (src, ext) in jobs
            ]
            for (_, (src, _)), job in zip(jobs, done, strict=True):
                try:
                    job.result()
                except Exception as error:  # the compiler's own messages are above, in the build's output
                    for waiting in done:
                        waiting.cancel()
                    raise CompileError(f"{compiler.compiler_so[0]} failed on {src}") from error
        return objects

    compiler.compile = compile


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def remove_inplace_build(root: str = HERE) -> None:
    """Remove the compiled group and its manifest that an earlier in-place (editable) build left in lbtui/."""
    import glob
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    names = [*MODULES, f"{GROUP}__mypyc"]
    found = [
        path
        for name in names
        for path in glob.glob(os.path.join(root, *name.split(".")) + ".*" + os.path.splitext(suffix)[1])
    ]
    manifest = os.path.join(root, "lbtui", MANIFEST)
    if os.path.exists(manifest):
        found.append(manifest)
    for path in found:
        os.remove(path)
    if found:
        say(f"removed the compiled data plane of an earlier build from {os.path.join(root, 'lbtui')}")


def main() -> None:
    from setuptools import find_namespace_packages, setup
    from setuptools.command.build_ext import build_ext
    from setuptools.command.build_py import build_py

    class BuildPy(build_py):
        """The package's files, plus the note of a compile that was asked for and fell back (write_failure)."""

        def run(self) -> None:
            super().run()
            write_failure(HERE if getattr(self, "editable_mode", False) else self.build_lib)

    class CompileDataPlane(build_ext):
        """Build the compiled modules in parallel, or none of them: a half-built group would not import."""

        def build_extensions(self) -> None:
            _compile_in_parallel(self.compiler, _cpus())
            self.parallel = self.parallel or _cpus()  # the small shims of the modules, side by side too
            super().build_extensions()

        def run(self) -> None:
            started = time.monotonic()
            try:
                super().run()
            except Exception as error:
                fall_back(f"compiling failed ({_one_line(str(error))})")
                for path in self.get_outputs():
                    for candidate in (path, os.path.join(HERE, os.path.relpath(path, self.build_lib))):
                        if os.path.exists(candidate):
                            os.remove(candidate)
                self.extensions = []
                write_failure(*((self.build_lib, HERE) if self.inplace else (self.build_lib,)))
                return
            if not self.extensions:
                return
            files = [self.get_ext_filename(self.get_ext_fullname(e.name)) for e in self.extensions]
            text = manifest_text([os.path.relpath(f, "lbtui").replace(os.sep, "/") for f in files])
            for root in (self.build_lib, HERE) if self.inplace else (self.build_lib,):
                with open(os.path.join(root, "lbtui", MANIFEST), "w") as file:
                    file.write(text)
            say(
                f"compiled the data plane ({len(MODULES)} modules, -O{opt_level()}) in "
                f"{time.monotonic() - started:.1f} s, {_cpus()} files at a time"
            )

    building = bool(BUILD_COMMANDS & set(sys.argv[1:]))
    extensions: list[Any] = []
    if building:
        if compile_asked():
            extensions = mypyc_extensions()
        elif os.environ.get("LBTUI_PURE"):
            say("pure Python (LBTUI_PURE is set)")
        else:
            say("pure Python (LBTUI_COMPILE=1 compiles the data plane with mypyc: about twice as fast)")
        if not extensions and "editable_wheel" in sys.argv[1:]:
            remove_inplace_build()
    setup(
        # themes/ (top level, where users find the files to copy) is installed as lbtui/themes/, inside the
        # package, so that a plain `pip install .` finds it (lbtui/tui/themes.py reads it with importlib.resources).
        packages=[*find_namespace_packages(include=["lbtui*"]), "lbtui.themes"],
        package_dir={"lbtui.themes": "themes"},
        ext_modules=extensions,
        cmdclass={"build_ext": CompileDataPlane, "build_py": BuildPy},
    )


if __name__ == "__main__":
    main()
