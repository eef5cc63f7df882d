"""The configs the benchmark writes (benchmarks/configs.py) are accepted by the programs that read them:
`haproxy -c`, `nginx -t` and `lbtui check` (each skipped where the program is not installed), and say what
the benchmark relies on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.configs import gateway_toml, haproxy_cfg, lbtui_toml, nginx_conf
from benchmarks.targets import GATEWAY_KEY_HEADER, GATEWAY_PREFIX, GATEWAY_RATE

PROXY, ADMIN, BACKENDS = 18000, 18001, [18002, 18003]


def _check(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")
def test_haproxy_accepts_its_config(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_cfg(PROXY, BACKENDS))
    cp = _check(["haproxy", "-c", "-f", str(cfg)], tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    text = cfg.read_text()
    assert f"bind 127.0.0.1:{PROXY}" in text
    assert "server b1 127.0.0.1:18002" in text
    assert "server b2 127.0.0.1:18003" in text


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")
def test_haproxy_check_can_fail(tmp_path):
    """The check above means something: haproxy -c refuses a config with a mistake in it."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_cfg(PROXY, BACKENDS).replace("balance roundrobin", "balance roundrobbin"))
    assert _check(["haproxy", "-c", "-f", str(cfg)], tmp_path).returncode != 0


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_nginx_accepts_its_config(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, BACKENDS))
    argv = ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "nginx-error.log")]
    cp = _check(argv, tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    text = conf.read_text()
    for port in BACKENDS:
        assert f"listen 127.0.0.1:{port};" in text
    assert 'return 200 "hello, world\\n";' in text
    assert ("user root;" in text) == (os.geteuid() == 0)


def _lbtui_check(path: Path) -> subprocess.CompletedProcess[str]:
    return _check([sys.executable, "-m", "lbtui", "check", str(path)], path.parent)


def test_lbtui_accepts_its_config(tmp_path):
    toml = tmp_path / "lbtui.toml"
    toml.write_text(lbtui_toml(tmp_path, PROXY, ADMIN, BACKENDS))
    cp = _lbtui_check(toml)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "1 listener(s), 1 service(s), 2 backend(s), 0 route(s)" in cp.stdout
    text = toml.read_text()
    assert f'bind = "127.0.0.1:{ADMIN}"' in text  # never the default admin port of another instance
    assert str(tmp_path / "lbtui.state.json") in text  # the state stays in the temp dir


def test_lbtui_accepts_the_gateways_config(tmp_path):
    toml = tmp_path / "gateway.toml"
    toml.write_text(gateway_toml(tmp_path, PROXY, ADMIN, BACKENDS))
    cp = _lbtui_check(toml)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "1 listener(s), 1 service(s), 2 backend(s), 1 route(s)" in cp.stdout
    text = toml.read_text()
    assert f'path_prefix = "{GATEWAY_PREFIX}"' in text
    assert f'header = "{GATEWAY_KEY_HEADER}"' in text
    assert f"rate = {GATEWAY_RATE}," in text


def test_lbtui_check_can_fail(tmp_path):
    toml = tmp_path / "lbtui.toml"
    toml.write_text(lbtui_toml(tmp_path, PROXY, ADMIN, BACKENDS).replace("round_robin", "round_robbin"))
    assert _lbtui_check(toml).returncode == 1
