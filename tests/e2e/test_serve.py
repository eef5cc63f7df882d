"""Whole-process tests: `lbtui serve` and `lbtui check` as a user runs them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def lbtui(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "lbtui", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=kwargs.get("cwd", ROOT),
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=15)  # also closes the pipes


def write_config(tmp_path: Path, backends: list, extra: str = "") -> Path:
    lines = [
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n',
        "[services.app]\n",
        'algorithm = "round_robin"\n',
    ]
    lines.append(extra)
    for b in backends:
        lines.append(f'\n[[services.app.backends]]\nname = "{b.name}"\naddress = "{b.address}"\n')
    path = tmp_path / "lbtui.toml"
    path.write_text("".join(lines))
    return path


async def read_listen_url(proc: subprocess.Popen, timeout: float = 15.0) -> str:
    """The URL that `serve` prints on stderr once it listens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    assert proc.stderr is not None
    while loop.time() < deadline:
        line = await loop.run_in_executor(None, proc.stderr.readline)
        if not line:
            break
        proc.seen_lines = [*getattr(proc, "seen_lines", []), line]  # type: ignore[attr-defined]
        if "listener web on " in line:
            return line.split(" on ", 1)[1].strip()
    raise AssertionError("serve did not print its listener")


async def test_sigterm_finishes_in_flight_then_exits(tmp_path, backends):
    slow = await backends("slow")
    proc = lbtui("serve", "--config", str(write_config(tmp_path, [slow])), "--grace", "10s")
    try:
        url = await read_listen_url(proc)
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            in_flight = asyncio.create_task(http.get("/delay/1500"))
            await wait_for(lambda: slow.in_flight == 1, what="the slow request to reach the backend")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            response = await in_flight
            assert response.status_code == 200  # finished, not cut
            assert response.headers.get("connection") == "close"
        # New connections are refused once draining began.
        await wait_for(lambda: proc.poll() is not None, timeout=10, what="serve to exit")
        assert proc.returncode == 0
        assert time.monotonic() - started < 8
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(timeout=2) as http:
                await http.get(url)
    finally:
        stop(proc)


async def test_sigterm_deadline_cuts_what_is_left(tmp_path, backends):
    slow = await backends("slow")
    proc = lbtui("serve", "--config", str(write_config(tmp_path, [slow])), "--grace", "300ms")
    try:
        url = await read_listen_url(proc)
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            stuck = asyncio.create_task(http.get("/delay/8000"))
            await wait_for(lambda: slow.in_flight == 1, what="the request to reach the backend")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: proc.poll() is not None, timeout=5, what="serve to exit at its deadline")
            assert time.monotonic() - started < 3
            with pytest.raises(httpx.HTTPError):
                await stuck
    finally:
        stop(proc)


async def test_demo_serves_traffic_and_prints_where():
    proc = lbtui("serve", "--demo", "--traffic", "30")
    try:
        url = await read_listen_url(proc)
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            seen = set()
            for _ in range(60):
                r = await http.get("/products")
                if r.status_code == 200:
                    seen.add(r.json()["backend"])
            assert {"blue-1", "blue-2", "blue-3"} <= seen  # the split sends most to blue, round the group
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        # Not communicate(): it reads the raw pipe and would miss what readline() already buffered.
        err = "".join(proc.seen_lines) + proc.stderr.read()
        assert "demo: service 'shop'" in err
        assert "try: curl" in err
        assert "Traceback" not in err
        assert proc.returncode == 0
    finally:
        stop(proc)


def test_check_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[services.shop]\nalgoritm = "round_robin"\n[[services.shop.backends]]\nname = "a"\naddress = "127.0.0.1:1"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "lbtui", "check", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    assert "services.shop.algoritm" in proc.stderr
    assert "did you mean 'algorithm'?" in proc.stderr
    assert str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_check_accepts_a_good_file(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[services.shop]\n[[services.shop.backends]]\nname = "a"\naddress = "127.0.0.1:1"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "lbtui", "check", str(good)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_serve_with_a_bad_config_exits_cleanly(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    proc = subprocess.run(
        [sys.executable, "-m", "lbtui", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_on_a_busy_port_says_so(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'[[listeners]]\nbind = "127.0.0.1:{port}"\n[services.a]\n[[services.a.backends]]\nname = "a"\naddress = "127.0.0.1:1"\n'
        )
        proc = subprocess.run(
            [sys.executable, "-m", "lbtui", "serve", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_and_serve_refuse_what_this_version_cannot_do(tmp_path):
    cfg = tmp_path / "auth.toml"
    cfg.write_text(
        '[[listeners]]\nbind = "127.0.0.1:0"\n'
        '[services.a]\n[[services.a.backends]]\nname = "a"\naddress = "127.0.0.1:1"\n'
        '[[routes]]\nmatch = { host = "*.example.com" }\nservice = "a"\n'
        '[[consumers]]\nname = "x"\napi_key_env = "X_KEY_NOT_SET_ANYWHERE"\n'
    )
    for command in (["check", str(cfg)], ["serve", "--config", str(cfg)]):
        proc = subprocess.run(
            [sys.executable, "-m", "lbtui", *command], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 1, command
        assert "wildcard" not in proc.stderr  # wildcard hosts are served (gateway/routing.py)
        assert (
            "consumers[0].api_key_env: the environment variable 'X_KEY_NOT_SET_ANYWHERE' is not set"
            in proc.stderr
        )
        assert "Traceback" not in proc.stderr


def test_check_warns_about_keys_it_ignores(tmp_path):
    cfg = tmp_path / "sticky.toml"
    backend = '[[services.a.backends]]\nname = "a"\naddress = "127.0.0.1:1"\n'
    tcp = '[[listeners]]\nname = "db"\nbind = "127.0.0.1:0"\nmode = "tcp"\nservice = "a"\n'
    cfg.write_text(tcp + '[services.a]\nsticky = { cookie = "srv" }\n' + backend)
    proc = subprocess.run(
        [sys.executable, "-m", "lbtui", "check", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert "warning: services.a.sticky: has no effect: no http route sends requests to this service" in (
        proc.stderr
    )
    # Behind an http listener, sticky sessions work: nothing to warn about.
    cfg.write_text('[services.a]\nsticky = { cookie = "srv" }\n' + backend)
    proc = subprocess.run(
        [sys.executable, "-m", "lbtui", "check", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert "warning" not in proc.stderr


def test_dashboard_options_parse():
    from lbtui.cli import build_parser

    args = build_parser().parse_args(["--demo", "--read-only"])
    assert args.demo
    assert args.read_only
    assert args.command is None
