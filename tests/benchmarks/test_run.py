"""The command line (benchmarks/run.py): its options and their checks, the runner's pinning decisions, the
exit codes of main() around a benchmark whose processes and wrk runs are replaced by recorded runs, and that
the scripts still run as scripts (`python benchmarks/run.py`, the dashboard scripts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import Bench, parse_args
from benchmarks.targets import DASHBOARD_MODE_TARGETS, DEFAULT_TARGETS, REPO
from tests.benchmarks.test_report import DEFAULT_REPORT


def test_the_defaults():
    args = parse_args([])
    assert (args.rounds, args.duration, args.connections) == (3, 10, [50, 1])
    assert args.only == list(DEFAULT_TARGETS)
    assert args.pty_size == (160, 45)
    assert args.variant == []
    assert args.c1_shared_cpu is True
    assert args.retry_disturbed is None
    assert (args.check, args.dashboard, args.keep_tmp, args.json) == (False, False, False, None)


def test_the_dashboard_mode_has_its_own_targets():
    assert parse_args(["--dashboard"]).only == list(DASHBOARD_MODE_TARGETS)
    assert parse_args(["--dashboard", "--only", "dashboard,lbtui"]).only == ["lbtui", "dashboard"]


def test_options_are_read():
    args = parse_args(
        [
            "--only",
            " lbtui-gateway, direct ,lbtui",
            "--connections",
            "1,200,",
            "--pty-size",
            "200X50",
            "--variant",
            "shared=python benchmarks/dashboard_shared.py --x 'a b'",
            "--c1-split-cpu",
            "--retry-disturbed",
            "12.5",
        ]
    )
    assert args.only == ["direct", "lbtui", "lbtui-gateway"]  # in the canonical order
    assert args.connections == [1, 200]
    assert args.pty_size == (200, 50)
    assert args.variant == [("shared", ["python", "benchmarks/dashboard_shared.py", "--x", "a b"])]
    assert args.c1_shared_cpu is False
    assert args.retry_disturbed == 12.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--connections", "50,x"], "--connections: comma-separated integers"),
        (["--connections", "0"], "--connections: integers between 1 and 10000"),
        (["--connections", "10001"], "--connections: integers between 1 and 10000"),
        (["--connections", ","], "--connections: integers between 1 and 10000"),
        (["--only", "lbtui,nginx"], "--only: choose from direct, haproxy, lbtui"),
        (["--only", ","], "--only: choose from"),
        (["--pty-size", "160"], "--pty-size: COLSxROWS"),
        (["--pty-size", "19x45"], "--pty-size: 20..1000 columns, 5..500 rows"),
        (["--pty-size", "160x501"], "--pty-size: 20..1000 columns, 5..500 rows"),
        (["--variant", "a b=python x.py"], "--variant: NAME=CMD"),
        (["--variant", "shared="], "--variant: NAME=CMD"),
        (["--variant", "python x.py"], "--variant: NAME=CMD"),
        (["--variant", "a=x", "--variant", "a=y"], "--variant: 'a' twice"),
        (["--rounds", "0"], "--rounds: 1..50"),
        (["--rounds", "51"], "--rounds: 1..50"),
        (["--duration", "0"], "--duration: 1..600 seconds"),
        (["--duration", "601"], "--duration: 1..600 seconds"),
    ],
)
def test_a_bad_option_is_refused_with_its_name(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def bench_of():
    benches: list[Bench] = []

    def make(argv: list[str]) -> Bench:
        benches.append(Bench(parse_args(argv)))
        return benches[-1]

    yield make
    for bench in benches:
        bench.cleanup()
        assert not bench.tmp.exists()


def test_variants_are_dashboard_targets_after_the_others(bench_of):
    bench = bench_of(["--dashboard", "--variant", "shared=python shared.py", "--dashboard-cmd", "lbtui-x -v"])
    assert bench.targets == ["lbtui", "dashboard", "dashboard-unpinned", "variant:shared"]
    assert bench.dash_cmds == {
        "dashboard": ["lbtui-x", "-v"],
        "dashboard-unpinned": ["lbtui-x", "-v"],
        "variant:shared": ["python", "shared.py"],
    }
    assert bench.dashboard_mode is True
    assert bench_of([]).dashboard_mode is False


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs")
def test_where_each_target_runs(bench_of):
    bench = bench_of([])
    assert bench.pinned
    assert bench.home_cpus("direct") == {bench.load_cpu}
    assert bench.home_cpus("lbtui") == {bench.proxy_cpu}
    assert bench.home_cpus("dashboard") == {bench.proxy_cpu}
    assert bench.home_cpus("dashboard-unpinned") == set(os.sched_getaffinity(0))
    # At one connection the proxy joins wrk and nginx on the load CPU, unless --c1-split-cpu.
    assert bench.shares_cpu(1, "lbtui")
    assert bench.shares_cpu(1, "dashboard")
    assert not bench.shares_cpu(50, "lbtui")
    assert not bench.shares_cpu(1, "direct")
    assert not bench.shares_cpu(1, "dashboard-unpinned")
    assert not bench_of(["--c1-split-cpu"]).shares_cpu(1, "lbtui")
    assert bench.pin(3) == ["taskset", "-c", "3"]


# main() with the processes and the wrk runs replaced: the runs are the report test's, as if measured.
MAIN_WITH_RECORDED_RUNS = """
import sys
from benchmarks import run
from benchmarks.errors import StartError
from tests.benchmarks import test_report

how = sys.argv[1]

def start_all(self):
    print(f"  temp dir {self.tmp}")
    if how == "start-error":
        raise StartError("nginx: could not run nginx: no such file")

def measure(self):
    if how == "interrupt":
        raise KeyboardInterrupt
    self.runs.extend(getattr(test_report, how)().runs)

run.lbtui_build = lambda: "pure Python"  # no lbtui is run: no need to ask it
run.Bench.preflight = lambda self: None
run.Bench.start_all = start_all
run.Bench.run = measure
sys.exit(run.main(sys.argv[2:]))
"""


def run_main(how: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = [sys.executable, "-c", MAIN_WITH_RECORDED_RUNS, how, *argv]
    return subprocess.run(code, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)


def temp_dir(out: str) -> Path:
    return Path(next(line for line in out.splitlines() if "temp dir " in line).split("temp dir ")[1])


def test_check_exits_1_when_a_bar_fails_and_json_keeps_every_run(tmp_path):
    out_json = tmp_path / "out.json"
    argv = ["--rounds", "2", "--duration", "3", "--check", "--json", str(out_json)]
    cp = run_main("default_bench", *argv)
    assert cp.returncode == 1, cp.stderr
    assert DEFAULT_REPORT in cp.stdout
    assert cp.stdout.endswith(f"JSON written to {out_json}\n--check: a bar failed\n")
    doc = json.loads(out_json.read_text())
    assert len(doc["runs"]) == 16
    assert doc["summary"]["all_bars_pass"] is False
    assert doc["meta"]["rounds"] == 2
    assert not temp_dir(cp.stdout).exists()


def test_without_check_a_failed_bar_exits_0():
    cp = run_main("default_bench", "--rounds", "2", "--duration", "3")
    assert cp.returncode == 0, cp.stderr
    assert "FAIL" in cp.stdout


def test_check_exits_0_when_every_bar_holds():
    targets = "direct,haproxy,lbtui,lbtui-gateway,dashboard"
    cp = run_main("passing_bench", "--rounds", "1", "--only", targets, "--check")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "--check" not in cp.stdout


def test_what_could_not_start_exits_2_and_leaves_nothing():
    cp = run_main("start-error", "--keep-tmp")
    assert cp.returncode == 2
    assert "ERROR: nginx: could not run nginx: no such file" in cp.stderr
    kept = temp_dir(cp.stdout)
    assert f"temp dir kept: {kept}" in cp.stdout
    kept.rmdir()
    cp = run_main("start-error")
    assert cp.returncode == 2
    assert not temp_dir(cp.stdout).exists()


def test_an_interrupt_exits_130():
    cp = run_main("interrupt")
    assert cp.returncode == 130
    assert "interrupted; stopping everything" in cp.stderr
    assert not temp_dir(cp.stdout).exists()


def test_run_py_runs_as_a_script_from_anywhere(tmp_path):
    script = REPO / "benchmarks" / "run.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cp = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert cp.returncode == 0, cp.stderr
    assert "--retry-disturbed PCT" in cp.stdout
    cp = subprocess.run(
        [sys.executable, str(script), "--only", "nginx"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert cp.returncode == 2
    assert "--only: choose from" in cp.stderr


def test_the_dashboard_variant_script_starts():
    """benchmarks/dashboard_shared.py (run by --variant) imports what it needs from lbtui."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    script = REPO / "benchmarks" / "dashboard_shared.py"
    cp = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert cp.returncode == 0, cp.stderr
    assert "--config" in cp.stdout


def test_the_dashboard_render_script_measures_a_refresh():
    script = REPO / "benchmarks" / "dashboard_render.py"
    cp = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    assert lines[0].startswith("per refresh: refresh_view ")
    assert float(lines[0].split()[3]) > 0  # ms of CPU
    assert lines[1].startswith("  whole cycle ")
