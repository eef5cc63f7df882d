"""The modules that `LBTUI_COMPILE=1 pip install .` compiles with mypyc (see setup.py): the data plane's hot path.

They are compiled as one group, so they are loaded as one (lbtui/__init__.py): all compiled, or all from source
when LBTUI_PURE=1 is set or any file MANIFEST lists is missing or differs (an edit to a module of the group or to
one it imports, directly or not). Nothing may be imported here: setup.py reads this file before lbtui exists.
"""

COMPILED_MODULES = (
    "lbtui.proxy.connection",
    "lbtui.proxy.exchange",
    "lbtui.proxy.head",
    "lbtui.proxy.dispatch",
    "lbtui.proxy.upstream",
    "lbtui.http",
    "lbtui.core.stats",
    "lbtui.core.model",
    "lbtui.core.views",
    "lbtui.core.algorithms",
    "lbtui.gateway.pipeline",
    "lbtui.gateway.routing",
    "lbtui.gateway.auth",
    "lbtui.gateway.ratelimit",
    "lbtui.gateway.cors",
    "lbtui.gateway.cache",
    "lbtui.gateway.sticky",
)

# The group's shared library is lbtui/data_plane__mypyc.*.so; each module of the group gets a small shim next to
# its .py file that loads it.
GROUP = "lbtui.data_plane"

# Written next to the compiled modules by a compiled build (lbtui/_compiled_build.txt): see setup.py.
MANIFEST = "_compiled_build.txt"
