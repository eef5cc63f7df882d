"""The core never imports the UI: each headless module loads with textual and rich absent from sys.modules
(and httpx, which imports rich)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEADLESS = [
    "lbtui.config",
    "lbtui.features",
    "lbtui.core.model",
    "lbtui.core.algorithms",
    "lbtui.core.stats",
    "lbtui.core.balancer",
    "lbtui.core.control",
    "lbtui.http",
    "lbtui.proxy.connection",
    "lbtui.proxy.exchange",
    "lbtui.proxy.head",
    "lbtui.proxy.dispatch",
    "lbtui.gateway.pipeline",
    "lbtui.proxy.upstream",
    "lbtui.proxy.engine",
    "lbtui.proxy.tcp",
    "lbtui.proxy.tls",
    "lbtui.proxy.miniclient",
    "lbtui.gateway.routing",
    "lbtui.gateway.auth",
    "lbtui.gateway.cors",
    "lbtui.gateway.jwt_auth",
    "lbtui.gateway.ratelimit",
    "lbtui.gateway.aggregate",
    "lbtui.demo.backends",
    "lbtui.demo.traffic",
    "lbtui.admin.api",
    "lbtui.admin.schema",
    "lbtui.admin.client",
    "lbtui.admin.remote",
    "lbtui.admin.ctl",
    "lbtui.admin.metrics",
    "lbtui.haproxy.runtime",
    "lbtui.serve",
    "lbtui.threaded",
    "lbtui.cli",
]


@pytest.mark.parametrize("module", HEADLESS)
def test_headless_module_imports_no_ui(module):
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'httpx'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} pulled in {out.stdout.strip()}"


def test_serve_runs_without_textual_importable(tmp_path):
    """`lbtui check` (and the engine) work where textual cannot even be imported."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[services.a]\n[[services.a.backends]]\nname = "a"\naddress = "127.0.0.1:1"\n')
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('textual', 'rich'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from lbtui.cli import main\n"
        f"sys.exit(main(['check', {str(cfg)!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
