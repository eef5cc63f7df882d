"""lbtui: a load balancer and API gateway that lives in your terminal.

Importing lbtui decides, once, where the modules of the compiled group (lbtui/_compiled.py) come from: their
compiled modules when a compiled build's MANIFEST is here and every file it lists is as it was built (the compiled
files exist; each source file of what the group imports has the recorded sha256), else their .py files. The group
is all compiled or all from source, never mixed: compiled code was built against the types of the whole closure.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

from lbtui._compiled import COMPILED_MODULES, MANIFEST

__version__ = "0.1.0"
__all__ = ["COMPILED_MODULES", "__version__", "data_plane_build", "data_plane_line"]

_HERE = os.path.dirname(__file__)


def _compiled_paths(name: str) -> tuple[str, str] | None:
    """(compiled module, source file) of one module of the compiled group, if both exist."""
    spec = importlib.machinery.PathFinder.find_spec(name, [os.path.join(_HERE, *name.split(".")[1:-1])])
    if (
        spec is None
        or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
        or not spec.origin
    ):
        return None
    source = os.path.join(os.path.dirname(spec.origin), name.rsplit(".", 1)[1] + ".py")
    return (spec.origin, source) if os.path.exists(source) else None


def _why_source() -> str | None:
    """Why the compiled group is loaded from source (None: it is not). Costs one read and ~30 hashes."""
    if os.environ.get("LBTUI_PURE"):
        return "LBTUI_PURE is set"
    try:
        with open(os.path.join(_HERE, MANIFEST), encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return "not compiled"
    import hashlib

    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "failed":  # LBTUI_COMPILE=1 was asked for and could not be done (setup.py, write_failure)
            return f"the compile at install failed: {rest}"
        if kind == "compiled" and not os.path.exists(os.path.join(_HERE, rest)):
            return f"{rest} is missing"
        if kind == "source":
            digest, _, name = rest.partition(" ")
            try:
                with open(os.path.join(_HERE, name), "rb") as source:
                    if hashlib.sha256(source.read()).hexdigest() == digest:
                        continue
            except OSError:
                pass
            return f"lbtui/{name} changed since it was compiled"
    return None


class _SourceFinder:
    """Loads the compiled group's modules from their .py files (ahead of the .so that would win otherwise)."""

    @classmethod
    def find_spec(
        cls, name: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in COMPILED_MODULES:
            return None
        paths = _compiled_paths(name)
        if paths is None:
            return None
        return importlib.util.spec_from_file_location(name, paths[1])


_WHY_SOURCE = _why_source()
if _WHY_SOURCE is not None:
    sys.meta_path.insert(0, _SourceFinder)


def data_plane_build() -> str:
    """'compiled' when the data plane runs as mypyc-compiled code, else 'pure Python' (imports it to know)."""
    import importlib

    module = importlib.import_module("lbtui.proxy.connection")
    origin = getattr(module, "__file__", "") or ""
    return "compiled" if origin.endswith((".so", ".pyd")) else "pure Python"


def data_plane_line() -> str:
    """One line: which data plane runs, and how to get the other."""
    if data_plane_build() == "compiled":
        return "data plane: compiled (mypyc; LBTUI_PURE=1 runs it from source)"
    compile_it = "LBTUI_COMPILE=1 pip install . compiles it with mypyc, about twice as fast"
    if _WHY_SOURCE == "LBTUI_PURE is set" and os.path.exists(os.path.join(_HERE, MANIFEST)):
        how = "LBTUI_PURE is set; without it, the compiled build runs"
    elif _WHY_SOURCE not in (None, "not compiled", "LBTUI_PURE is set"):
        how = f"{_WHY_SOURCE}: LBTUI_COMPILE=1 pip install . compiles it again"
    else:
        how = compile_it
    return f"data plane: pure Python ({how})"
