"""lbtui: a load balancer and API gateway that lives in your terminal."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

from lbtui._compiled import COMPILED_MODULES

__version__ = "0.1.0"
__all__ = ["COMPILED_MODULES", "__version__", "data_plane_build"]


def _compiled_paths(name: str) -> tuple[str, str] | None:
    """(compiled module, source file) of one module of the compiled group, if both exist."""
    spec = importlib.machinery.PathFinder.find_spec(
        name, [os.path.join(os.path.dirname(__file__), *name.split(".")[1:-1])]
    )
    if (
        spec is None
        or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
        or not spec.origin
    ):
        return None
    source = os.path.join(os.path.dirname(spec.origin), name.rsplit(".", 1)[1] + ".py")
    return (spec.origin, source) if os.path.exists(source) else None


def _use_source() -> bool:
    """Load the compiled group from source: asked for, or any source edited after it was compiled."""
    if os.environ.get("LBTUI_PURE"):
        return True
    for name in COMPILED_MODULES:
        paths = _compiled_paths(name)
        # Newer by more than a moment: an installer writes both in one go, in any order; an edit comes later.
        if paths is not None and os.path.getmtime(paths[1]) > os.path.getmtime(paths[0]) + 2.0:
            return True
    return False


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


if _use_source():
    sys.meta_path.insert(0, _SourceFinder)


def data_plane_build() -> str:
    """'compiled' when the data plane runs as mypyc-compiled code, else 'pure Python'."""
    module = sys.modules.get("lbtui.proxy.client")
    origin = getattr(module, "__file__", "") or ""
    return "compiled" if origin.endswith((".so", ".pyd")) else "pure Python"
