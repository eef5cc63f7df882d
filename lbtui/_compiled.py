"""The modules that `pip install` compiles with mypyc when it can (see setup.py): the data plane's hot path.

They are compiled as one group, so they are loaded as one: all compiled, or (when any source file is newer
than its compiled module, or LBTUI_PURE=1 is set) all from source. Nothing may be imported here.
"""

COMPILED_MODULES = (
    "lbtui.proxy.client",
    "lbtui.proxy.upstream",
    "lbtui.proxy.http",
    "lbtui.core.stats",
    "lbtui.core.model",
    "lbtui.core.algorithms",
    "lbtui.gateway.routing",
    "lbtui.gateway.auth",
    "lbtui.gateway.ratelimit",
    "lbtui.gateway.cors",
    "lbtui.gateway.cache",
    "lbtui.gateway.sticky",
)
