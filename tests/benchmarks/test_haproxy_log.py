"""The HAProxy request-log case of the benchmark (issue 15: the dashboard attached to HAProxy, with the ring log
wired, costs HAProxy at most 2% of its req/s): its config is HAProxy's with lbtui's ring log and an admin socket
(accepted by `haproxy -c`, the same format lbtui reads), its targets are chosen with --only, and its bar is judged
from the runs (made up here: no process is started)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from benchmarks.configs import haproxy_cfg
from benchmarks.report import BAR_ATTACHED_RPS_MIN, attached_verdict, report
from benchmarks.run import parse_args
from benchmarks.targets import ATTACHED, DEFAULT_TARGETS, LOG_FORMAT, LOGGED, RING
from lbtui.haproxy import requestlog
from tests.benchmarks.test_report import Bench, run

PROXY, BACKENDS = 18000, [18002, 18003]


def test_the_log_format_and_ring_are_lbtuis():
    assert (LOG_FORMAT, RING) == (requestlog.LOG_FORMAT, requestlog.RING)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")
def test_haproxy_accepts_the_config_with_the_ring_log(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_cfg(PROXY, BACKENDS, stats_socket=tmp_path / "admin.sock"))
    cp = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    text = cfg.read_text()
    assert f"stats socket {tmp_path / 'admin.sock'} mode 600 level admin" in text
    assert f"ring {RING}\n    format raw\n" in text
    assert f"log ring@{RING} local0 info" in text
    assert f'log-format "{LOG_FORMAT}"' in text
    plain = haproxy_cfg(PROXY, BACKENDS)  # the reference HAProxy logs nothing
    assert "ring" not in plain
    assert "log" not in plain.replace("# generated", "")


def test_the_targets_are_chosen_with_only():
    assert LOGGED not in DEFAULT_TARGETS
    assert ATTACHED not in DEFAULT_TARGETS
    args = parse_args(["--only", f"{ATTACHED},haproxy,{LOGGED}"])
    assert args.only == ["haproxy", LOGGED, ATTACHED]


def attached_bench(rps: dict[int, tuple[float, float, float]]) -> Bench:
    """haproxy, haproxy-logged and haproxy-attached at c=50 over the rounds: req/s of each per round."""
    runs = []
    for rnd, (alone, logged, attached) in rps.items():
        runs += [
            run("haproxy", 50, rnd, alone, 3000, 9000, 30.0),
            run(LOGGED, 50, rnd, logged, 3000, 9000, 30.5),
            run(
                ATTACHED,
                50,
                rnd,
                attached,
                3000,
                9000,
                32.0,
                cpu_of="haproxy + lbtui attach",
                attached_cpu_us_per_req=1.5 + rnd / 10,
                attached_cpu_pct=1.2 + rnd / 10,
            ),
        ]
    return Bench(runs, ["haproxy", LOGGED, ATTACHED], [50], len(rps))


def test_the_bar_is_judged_on_the_medians_and_each_round_is_shown(capsys):
    bench = attached_bench({1: (10000, 9950, 9900), 2: (10000, 9900, 9600), 3: (10000, 10000, 9850)})
    summary, ok = report(bench)
    out = capsys.readouterr().out
    assert ok
    ratios = summary["levels"]["50"]["ratios"]
    assert ratios[f"{ATTACHED}/haproxy"]["rps"] == pytest.approx(0.985)
    assert ratios[f"{ATTACHED}/haproxy"]["verdict"] == "PASS"
    assert ratios[f"{ATTACHED}/haproxy"]["cpu_delta_us"] == pytest.approx(2.0)
    assert "verdict" not in ratios[f"{LOGGED}/haproxy"]  # information
    assert (
        f"c=50  {ATTACHED}/haproxy  req/s 0.98x (bar >= 0.98x)  cpu/req 1.07x (+2.0 us)  p99 1.00x  PASS"
        "  [lbtui attach: 1.7 us/req, 1.4% of a CPU]"
    ) in out
    assert ratios[f"{ATTACHED}/haproxy"]["lbtui_cpu_pct"] == pytest.approx(1.4)
    assert f"  round 2:  {ATTACHED}/haproxy  req/s 0.96x  cpu/req 1.07x (+2.0 us)  p99 1.00x  FAIL" in out
    assert "  rounds passing: 2/3" in out
    assert f"c=50  {LOGGED}/haproxy  req/s 0.99x  cpu/req 1.02x (+0.5 us)  p99 1.00x  (info)" in out


def test_the_bar_fails_below_its_limit_and_with_errors(capsys):
    _, ok = report(attached_bench({1: (10000, 10000, 9700)}))
    assert not ok
    assert attached_verdict(BAR_ATTACHED_RPS_MIN, 0) == "PASS"
    assert attached_verdict(BAR_ATTACHED_RPS_MIN - 0.001, 0) == "FAIL"
    assert attached_verdict(1.0, 1) == "FAIL"
    assert attached_verdict(None, 0) == "FAIL"
    capsys.readouterr()
