"""Build: the pure-Python package, plus the data plane's hot path compiled with mypyc where possible.

The compiled modules run the same source about twice as fast. Compiling needs a C compiler; without one, or
with LBTUI_PURE=1 set, the package installs as pure Python and works the same, only slower.
"""

import os
import runpy
import shutil
import sys

from setuptools import find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

MODULES = runpy.run_path(os.path.join("lbtui", "_compiled.py"))["COMPILED_MODULES"]


def _say(message: str) -> None:
    print(f"lbtui build: {message}", file=sys.stderr)


def ext_modules() -> list:
    if os.environ.get("LBTUI_PURE"):
        _say("LBTUI_PURE is set: pure Python")
        return []
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        _say("no C compiler found: pure Python (install gcc and reinstall for the compiled data plane)")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc is not available: pure Python")
        return []
    paths = [name.replace(".", "/") + ".py" for name in MODULES]
    try:
        return mypycify(paths, opt_level="3")
    except Exception as error:  # a mypyc failure must not stop the install: the pure package works
        _say(f"mypyc could not compile ({error}): pure Python")
        return []


class OptionalBuildExt(build_ext):
    """Build the compiled modules, or none of them: a half-built group would not import."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:
            _say(f"compiling failed ({error}): pure Python")
            for path in self.get_outputs():
                for candidate in (path, os.path.join(os.getcwd(), os.path.relpath(path, self.build_lib))):
                    if os.path.exists(candidate):
                        os.remove(candidate)
            self.extensions = []


setup(
    # themes/ (top level, where users find the files to copy) is installed as lbtui/themes/, inside the package,
    # so that a plain `pip install .` finds it (lbtui/tui/themes.py reads it with importlib.resources).
    packages=[*find_namespace_packages(include=["lbtui*"]), "lbtui.themes"],
    package_dir={"lbtui.themes": "themes"},
    ext_modules=ext_modules(),
    cmdclass={"build_ext": OptionalBuildExt},
)
