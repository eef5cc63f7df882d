"""The benchmark's processes (benchmarks/procs.py): a stopped process leaves nothing behind, a dashboard on a
pty is drained and quit with its keys, readiness is real HTTP, pinning reaches the whole tree, and the gateway
check holds against a real nginx and `lbtui serve` with the configs the benchmark writes."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.configs import gateway_toml, nginx_conf
from benchmarks.cpu import tree_pids
from benchmarks.errors import StartError
from benchmarks.procs import (
    Proc,
    PtyProc,
    build_in_maps,
    check_gateway,
    free_ports,
    http_get,
    process_build,
    set_tree_affinity,
    wait_ready,
)
from benchmarks.targets import BODY, GATEWAY_PATH, REPO, target_request

DEADLINE_S = 10.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (it runs no more)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return raw[raw.rfind(b")") + 2 :].split()[0] == b"Z"


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= p <= 65535 for p in ports)


def test_a_stopped_process_leaves_nothing_it_started(tmp_path):
    log = tmp_path / "sh.log"
    proc = Proc("sh", ["sh", "-c", "sleep 60 & echo $!; wait"], log)
    try:
        wait_until(lambda: log.read_text().strip() != "", "the background sleep's pid")
        child = int(log.read_text().split()[0])
        assert child in tree_pids(proc.pid)
        assert proc.alive()
    finally:
        proc.stop()
    assert not proc.alive()
    wait_until(lambda: gone(child), f"sleep {child} to be killed with its group")


def test_a_process_that_dies_is_named_with_its_last_output(tmp_path):
    proc = Proc(
        "failing",
        [sys.executable, "-c", "print('bad config: port'); raise SystemExit(3)"],
        tmp_path / "f.log",
    )
    try:
        with pytest.raises(StartError) as e:
            wait_ready(proc, free_ports(1)[0])
    finally:
        proc.stop()
    message = str(e.value)
    assert "failing exited with code 3 before it was ready" in message
    assert "    | bad config: port" in message


def test_a_process_that_does_not_answer_is_a_start_error(tmp_path):
    proc = Proc("sleeper", ["sleep", "60"], tmp_path / "s.log")
    port = free_ports(1)[0]
    try:
        with pytest.raises(StartError, match=f"sleeper did not answer GET http://127.0.0.1:{port}/ with 200"):
            wait_ready(proc, port, deadline_s=0.3)
    finally:
        proc.stop()


def test_a_programs_missing_binary_is_a_start_error(tmp_path):
    with pytest.raises(StartError, match="could not run"):
        Proc("nothing", [str(tmp_path / "no-such-program")], tmp_path / "n.log")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pinning_moves_every_thread_of_the_tree(tmp_path):
    log = tmp_path / "sh.log"
    proc = Proc("sh", ["sh", "-c", "sleep 60 & echo $!; wait"], log)
    try:
        wait_until(lambda: log.read_text().strip() != "", "the background sleep's pid")
        child = int(log.read_text().split()[0])
        for cpu in sorted(os.sched_getaffinity(0))[:2]:
            set_tree_affinity(proc.pid, {cpu})
            assert os.sched_getaffinity(proc.pid) == {cpu}
            assert os.sched_getaffinity(child) == {cpu}
    finally:
        proc.stop()


# A stand-in dashboard: in raw mode on its terminal, it paints in colour, asks to confirm on `q`, exits 0 on `y`.
FAKE_DASHBOARD = r"""
import os, sys, tty
tty.setraw(0)
os.write(1, b"\x1b[?1049h\x1b[1;31mready\x1b[0m\r\n" + b"x" * 5000 + b"\r\n")
while True:
    key = os.read(0, 1)
    if key == b"q":
        os.write(1, b"\x1b[7mQuit? y/n\x1b[0m\r\n")
    elif key == b"y":
        sys.exit(0)
"""


def test_a_dashboard_on_a_pty_is_drained_and_quit_with_q_y(tmp_path):
    log = tmp_path / "dash.pty.log"
    proc = PtyProc(
        "dashboard", [sys.executable, "-c", FAKE_DASHBOARD], log, 100, 30, dict(os.environ), tmp_path
    )
    try:
        wait_until(lambda: proc.output_bytes() > 5000, "the dashboard's first paint")
        assert proc.alive()
        assert "    | ready" in proc.log_tail()  # escape sequences removed
    finally:
        proc.stop()
    assert proc.quit_clean is True
    assert not proc.alive()
    assert b"Quit? y/n" in log.read_bytes()


def test_the_pty_has_the_size_asked_for(tmp_path):
    program = "import os; c, r = os.get_terminal_size(0); print(f'size {c}x{r}', flush=True)"
    proc = PtyProc(
        "size", [sys.executable, "-c", program], tmp_path / "p.log", 123, 41, dict(os.environ), tmp_path
    )
    try:
        wait_until(lambda: not proc.alive(), "the program to print its size and exit")
    finally:
        proc.stop()
    assert "size 123x41" in proc.log_tail()


def test_the_build_is_read_from_the_mapped_files():
    # /proc/PID/maps lines (address perms offset dev inode path); the .so is the compiled group's library.
    compiled = (
        "7f3a1c000000-7f3a1c0a0000 r--p 00000000 08:01 1234567                    "
        "/srv/lbtui/lbtui/data_plane__mypyc.cpython-311-x86_64-linux-gnu.so\n"
        "7f3a1c200000-7f3a1c210000 r-xp 00000000 08:01 1234999                    /usr/lib/libc.so.6\n"
    )
    pure = (
        "7f3a1c200000-7f3a1c210000 r-xp 00000000 08:01 1234999                    /usr/lib/libc.so.6\n"
        "7f3a1c300000-7f3a1c310000 r--p 00000000 08:01 1235000                    /srv/lbtui/lbtui/proxy/connection.py\n"
    )
    assert build_in_maps(compiled) == "compiled"
    assert build_in_maps(pure) == "pure Python"
    assert process_build(2**22 + 12345) == "unknown"  # no such process


def test_the_build_read_from_a_process_is_the_one_lbtui_reports():
    """On both builds: when the compiled group's modules change, the benchmark's reading must follow."""
    import lbtui

    build = lbtui.data_plane_build()  # imports the data plane into this process
    assert process_build(os.getpid()) == build


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_the_gateway_answers_as_the_benchmark_checks(tmp_path):
    """nginx and `lbtui serve` with the benchmark's configs: ready through the route with the key, 401 without
    it, the rate limit's header; nginx itself (no gateway) fails the check."""
    b1, b2, port, admin = free_ports(4)
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, [b1, b2]))
    argv = ["nginx", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "nginx-error.log")]
    procs = [Proc("nginx", argv, tmp_path / "nginx.log")]
    try:
        wait_ready(procs[0], b1)
        wait_ready(procs[0], b2)
        (tmp_path / "gw").mkdir()
        toml = tmp_path / "gateway.toml"
        toml.write_text(gateway_toml(tmp_path / "gw", port, admin, [b1, b2]))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        serve = [sys.executable, "-m", "lbtui", "serve", "--config", str(toml)]
        procs.append(Proc("lbtui-gateway", serve, tmp_path / "gw.log", cwd=tmp_path, env=env))
        path, headers = target_request("lbtui-gateway")
        wait_ready(procs[1], port, path=path, headers=headers)
        check_gateway(port)
        assert http_get(port, path=GATEWAY_PATH)[0] == 401
        assert http_get(port, path=GATEWAY_PATH, headers=headers)[1] == BODY
        assert process_build(procs[1].pid) in ("compiled", "pure Python")
        with pytest.raises(StartError, match="without X-API-Key answered 200, not 401"):
            check_gateway(b1)
    finally:
        for proc in reversed(procs):
            proc.stop()
