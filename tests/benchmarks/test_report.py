"""The report (benchmarks/report.py): medians and ranges over rounds, ratios, the bars behind --check, the
printed tables and the JSON document, from runs made up here (no process is started).

The expected tables were printed by the report of the single-file benchmarks/run.py (before the split) from
these same runs: the reshaped report must print them character for character.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import pytest

from benchmarks.report import (
    BAR_CPU_MAX,
    BAR_DASH_P99_DELTA_MS,
    BAR_DASH_RPS_MIN,
    BAR_GW_RPS_MIN,
    BAR_P50_DELTA_US,
    BAR_P99_MAX,
    BAR_RPS_MIN,
    Run,
    dashboard_verdict,
    fmt_pct,
    fmt_us,
    fmt_x,
    gateway_verdict,
    haproxy_verdict,
    json_document,
    med,
    pick,
    ratio,
    report,
)


def run(target: str, c: int, rnd: int, rps: float, p50: float, p99: float, cpu: float, **more: object) -> Run:
    """One run: req/s, p50 and p99 in us, CPU us per request; 3 s of it, no errors unless said."""
    fields: dict[str, object] = {
        "round": rnd,
        "connections": c,
        "target": target,
        "rps": rps,
        "p50_us": p50,
        "p99_us": p99,
        "requests": int(rps * 3),
        "seconds": 3.0,
        "cpu_us_per_req": cpu,
        "cpu_of": "backend nginx" if target == "direct" else target,
        "socket_errors": {},
        "non_2xx_3xx": 0,
        "proxy_cpu_others_pct": 2.0,
        "proxy_cpu_steal_pct": 0.0,
        "build": "" if target in ("direct", "haproxy") else "compiled",
    }
    fields.update(more)
    return Run(**fields)  # type: ignore[arg-type]


@dataclass
class Bench:
    """What the report reads of a benchmark (report.Measured)."""

    runs: list[Run]
    targets: list[str]
    levels: list[int]
    rounds: int
    duration: int = 3
    dashboard_mode: bool = False
    dash_cmds: dict[str, list[str]] = field(default_factory=dict)
    pinned: bool = True
    proxy_cpu: int = 1
    load_cpu: int = 0
    c1_shared_cpu: bool = True
    pty_size: tuple[int, int] = (160, 45)


def default_bench() -> Bench:
    """The default targets at 50 and 1 connections over two rounds; lbtui had read errors in round 2 at c=50,
    the gateway ran on the pure-Python build once, HAProxy's 'others' was unknown once."""
    runs = [
        run("direct", 50, 1, 41446.2, 838, 2560, 11.6, proxy_cpu_others_pct=99.0),
        run("haproxy", 50, 1, 14886.5, 2370, 9390, 41.1, proxy_cpu_others_pct=34.0),
        run("lbtui", 50, 1, 9618.1, 5550, 12350, 60.3),
        run("lbtui-gateway", 50, 1, 8116.0, 6600, 13020, 72.7),
        run("direct", 50, 2, 40001.0, 901, 2700, 12.0),
        run("haproxy", 50, 2, 15100.0, 2300, 9000, 40.0, proxy_cpu_others_pct=None),
        run("lbtui", 50, 2, 9000.0, 5700, 13500, 62.0, socket_errors={"read": 3}),
        run("lbtui-gateway", 50, 2, 6000.0, 7000, 15000, 80.0, build="pure Python"),
        run("direct", 1, 1, 12327.0, 45, 4620, 21.8, proxy_cpu_others_pct=100.0),
        run("haproxy", 1, 1, 8478.0, 111, 530, 60.1),
        run("lbtui", 1, 1, 6236.0, 140, 430, 97.8),
        run("lbtui-gateway", 1, 1, 6027.0, 146, 414, 101.6),
        run("direct", 1, 2, 12000.0, 47, 4000, 22.0),
        run("haproxy", 1, 2, 8400.0, 115, 560, 61.0),
        run("lbtui", 1, 2, 6000.0, 150, 480, 99.0),
        run("lbtui-gateway", 1, 2, 5900.0, 152, 490, 104.0, non_2xx_3xx=5),
    ]
    return Bench(runs, ["direct", "haproxy", "lbtui", "lbtui-gateway"], [50, 1], rounds=2)


def dashboard_bench() -> Bench:
    """Dashboard mode at one level, one round: the unpinned dashboard's 'others' unknown, a variant, and a
    dashboard that had to be killed."""
    cmds = {
        "dashboard": ["python", "-m", "lbtui"],
        "dashboard-unpinned": ["python", "-m", "lbtui"],
        "variant:shared": ["python", "benchmarks/dashboard_shared.py"],
    }
    runs = [
        run("lbtui", 50, 1, 12029.0, 3970, 8030, 81.1, idle_cpu_pct=0.0),
        run(
            "dashboard",
            50,
            1,
            12051.0,
            3900,
            8180,
            82.9,
            idle_cpu_pct=1.5,
            terminal_bytes=16000,
            quit_clean=True,
        ),
        run(
            "dashboard-unpinned",
            50,
            1,
            14874.0,
            3140,
            7460,
            66.3,
            proxy_cpu_others_pct=None,
            idle_cpu_pct=1.0,
            terminal_bytes=16200,
            quit_clean=False,
        ),
        run(
            "variant:shared",
            50,
            1,
            10000.0,
            4800,
            11000,
            99.0,
            idle_cpu_pct=3.0,
            terminal_bytes=30000,
            quit_clean=True,
        ),
    ]
    targets = ["lbtui", "dashboard", "dashboard-unpinned", "variant:shared"]
    return Bench(runs, targets, [50], rounds=1, dashboard_mode=True, dash_cmds=cmds)


DEFAULT_REPORT = """\

====================================================================================================
c=50: wrk -t1 -c50, 3 s x 2 rounds; median [min-max] over rounds
  target                            req/s                     p50                     p99           cpu us/req  others  errors
  direct*             40724 [40001-41446]     870us [838us-901us]  2.63ms [2.56ms-2.70ms]     11.8 [11.6-12.0]     99%  none
  haproxy             14993 [14886-15100]  2.33ms [2.30ms-2.37ms]  9.20ms [9.00ms-9.39ms]     40.5 [40.0-41.1]     34%  none
  lbtui                  9309 [9000-9618]  5.62ms [5.55ms-5.70ms]  12.93ms [12.35ms-13.50ms]     61.1 [60.3-62.0]      2%  FLAGGED: 1 run(s) with errors
  lbtui-gateway          7058 [6000-8116]  6.80ms [6.60ms-7.00ms]  14.01ms [13.02ms-15.00ms]     76.3 [72.7-80.0]      2%  none
  * direct: cpu us/req is the backend nginx's (master + worker), not a proxy's
  others: the most CPU 1 (the proxy's) gave to anything else in a run of that target (other tenants, kernel); high = disturbed

c=50  lbtui/haproxy  req/s 0.62x (bar >= 0.5x)  cpu/req 1.51x (bar <= 1.6x)  p99 1.41x (bar <= 2.5x)  FAIL (lbtui had errors in 1 run(s))
  round 1:  lbtui/haproxy  req/s 0.65x  cpu/req 1.47x  p99 1.32x  PASS
  round 2:  lbtui/haproxy  req/s 0.60x  cpu/req 1.55x  p99 1.50x  FAIL
  rounds passing: 1/2
c=50  gateway/lbtui  req/s 0.76x (bar >= 0.75x)  cpu/req 1.25x (+15.2 us)  p99 1.08x  PASS
  round 1:  gateway/lbtui  req/s 0.84x  cpu/req 1.21x  p99 1.05x  PASS
  round 2:  gateway/lbtui  req/s 0.67x  cpu/req 1.29x  p99 1.11x  FAIL
  rounds passing: 1/2
  WARNING: lbtui and lbtui-gateway did not all load the same data plane: compiled, pure Python

c=1: wrk -t1 -c1, 3 s x 2 rounds; median [min-max] over rounds
  target                            req/s                     p50                     p99           cpu us/req  others  errors
  direct*             12164 [12000-12327]        46us [45us-47us]  4.31ms [4.00ms-4.62ms]     21.9 [21.8-22.0]    100%  none
  haproxy                8439 [8400-8478]     113us [111us-115us]     545us [530us-560us]     60.5 [60.1-61.0]      2%  none
  lbtui                  6118 [6000-6236]     145us [140us-150us]     455us [430us-480us]     98.4 [97.8-99.0]      2%  none
  lbtui-gateway          5964 [5900-6027]     149us [146us-152us]     452us [414us-490us]  102.8 [101.6-104.0]      2%  FLAGGED: 1 run(s) with errors
  * direct: cpu us/req is the backend nginx's (master + worker), not a proxy's
  others: the most CPU 1 (the proxy's) gave to anything else in a run of that target (other tenants, kernel); high = disturbed

c=1   lbtui/haproxy  req/s 0.72x  cpu/req 1.63x  p99 0.83x  (info, no bar at c=1)
c=1   lbtui-direct   p50 +99 us (bar <= +100 us)  PASS
c=1   haproxy-direct p50 +67 us  (info, for scale)
  round 1:  lbtui/haproxy  req/s 0.74x  cpu/req 1.63x  p99 0.81x  lbtui-direct p50 +95 us  PASS
  round 2:  lbtui/haproxy  req/s 0.71x  cpu/req 1.62x  p99 0.86x  lbtui-direct p50 +103 us  FAIL
  rounds passing: 1/2
c=1   gateway/lbtui  req/s 0.97x (bar >= 0.75x)  cpu/req 1.04x (+4.4 us)  p99 0.99x  FAIL (errors in 1 run(s); non-2xx/3xx 5)
  round 1:  gateway/lbtui  req/s 0.97x  cpu/req 1.04x  p99 0.96x  PASS
  round 2:  gateway/lbtui  req/s 0.98x  cpu/req 1.05x  p99 1.02x  FAIL
  rounds passing: 1/2

"""


DASHBOARD_REPORT = """\

====================================================================================================
c=50: wrk -t1 -c50, 3 s x 1 rounds; median [min-max] over rounds
  target                                 req/s                     p50                     p99           cpu us/req  others  idle cpu  tty KB/s  errors
  lbtui                    12029 [12029-12029]  3.97ms [3.97ms-3.97ms]  8.03ms [8.03ms-8.03ms]     81.1 [81.1-81.1]      2%      0.0%         -  none
  dashboard                12051 [12051-12051]  3.90ms [3.90ms-3.90ms]  8.18ms [8.18ms-8.18ms]     82.9 [82.9-82.9]      2%      1.5%       5.2  none
  dashboard-unpinned       14874 [14874-14874]  3.14ms [3.14ms-3.14ms]  7.46ms [7.46ms-7.46ms]     66.3 [66.3-66.3]     n/a      1.0%       5.3  none
  variant:shared           10000 [10000-10000]  4.80ms [4.80ms-4.80ms]  11.00ms [11.00ms-11.00ms]     99.0 [99.0-99.0]      2%      3.0%       9.8  none
  others: the most CPU 1 (the proxy's) gave to anything else in a run of that target (other tenants, kernel); high = disturbed; n/a for the unpinned dashboard
  idle cpu: the target's CPU with no load, just before its run (a dashboard: mostly its refreshes); tty KB/s: what a dashboard wrote to its terminal under load


c=50  dashboard/lbtui           req/s 1.00x (bar >= 0.90x)  p99 +0.15 ms (bar <= +2 ms)  cpu/req 1.02x (+1.8 us)  PASS
  round 1:  dashboard/lbtui           req/s 1.00x  p99 +0.15 ms  cpu/req 1.02x  PASS
  rounds passing: 1/1
c=50  dashboard-unpinned/lbtui  req/s 1.24x (bar >= 0.90x)  p99 -0.57 ms (bar <= +2 ms)  cpu/req 0.82x (-14.8 us)  (info, no bar)
  round 1:  dashboard-unpinned/lbtui  req/s 1.24x  p99 -0.57 ms  cpu/req 0.82x
  dashboard-unpinned: quit with q, y in 0/1 runs; the others were killed
c=50  variant:shared/lbtui      req/s 0.83x (bar >= 0.90x)  p99 +2.97 ms (bar <= +2 ms)  cpu/req 1.22x (+17.9 us)  FAIL  (prototype: not in --check)
  round 1:  variant:shared/lbtui      req/s 0.83x  p99 +2.97 ms  cpu/req 1.22x  FAIL
  rounds passing: 0/1

"""


def test_the_default_report_prints_as_before(capsys):
    summary, all_pass = report(default_bench())
    assert capsys.readouterr().out == DEFAULT_REPORT
    assert all_pass is False
    assert summary["all_bars_pass"] is False


def test_the_dashboard_report_prints_as_before(capsys):
    summary, all_pass = report(dashboard_bench())
    assert capsys.readouterr().out == DASHBOARD_REPORT
    # The variant fails its bars, the unpinned dashboard is not held to them: neither counts.
    assert all_pass is True
    assert summary["levels"]["50"]["ratios"]["variant:shared/lbtui"]["verdict"] == "FAIL"
    assert "verdict" not in summary["levels"]["50"]["ratios"]["dashboard-unpinned/lbtui"]


def test_the_summary_has_medians_and_ranges_over_rounds(capsys):
    summary, _ = report(default_bench())
    capsys.readouterr()
    lbtui = summary["levels"]["50"]["targets"]["lbtui"]
    assert lbtui["rps"] == {"median": pytest.approx(9309.05), "min": 9000.0, "max": 9618.1}
    assert lbtui["p99_us"] == {"median": pytest.approx(12925.0), "min": 12350, "max": 13500}
    assert lbtui["runs_with_errors"] == 1
    assert summary["levels"]["50"]["targets"]["haproxy"]["proxy_cpu_others_pct_max"] == 34.0
    ratios = summary["levels"]["50"]["ratios"]["lbtui/haproxy"]
    assert ratios["rps"] == pytest.approx(9309.05 / 14993.25)
    assert ratios["verdict"] == "FAIL"  # within every bar, but lbtui had errors
    assert summary["levels"]["1"]["ratios"]["lbtui-direct"]["p50_delta_us"] == pytest.approx(145 - 46)
    assert [e["verdict_direct"] for e in summary["levels"]["1"]["per_round"]] == ["PASS", "FAIL"]


def passing_bench() -> Bench:
    """Every bar held with some room, at 50 and 1 connections, in one round, the dashboard included."""
    runs = [
        run("direct", 50, 1, 40000, 800, 2500, 12),
        run("haproxy", 50, 1, 15000, 2300, 9000, 40),
        run("lbtui", 50, 1, 12000, 4000, 12000, 50),
        run("lbtui-gateway", 50, 1, 11000, 4300, 13000, 55),
        run("dashboard", 50, 1, 11500, 4100, 13000, 52, quit_clean=True),
        run("direct", 1, 1, 12000, 45, 400, 20),
        run("haproxy", 1, 1, 8000, 110, 500, 60),
        run("lbtui", 1, 1, 6000, 120, 600, 90),
        run("lbtui-gateway", 1, 1, 5800, 125, 620, 95),
        run("dashboard", 1, 1, 5900, 122, 700, 92, quit_clean=True),
    ]
    targets = ["direct", "haproxy", "lbtui", "lbtui-gateway", "dashboard"]
    cmds = {"dashboard": ["python", "-m", "lbtui"]}
    return Bench(runs, targets, [50, 1], rounds=1, dashboard_mode=True, dash_cmds=cmds)


def _with(bench: Bench, target: str, c: int, **changes: object) -> Bench:
    runs = [replace(r, **changes) if (r.target, r.connections) == (target, c) else r for r in bench.runs]  # type: ignore[arg-type]
    return replace(bench, runs=runs)


def test_all_bars_hold(capsys):
    _, all_pass = report(passing_bench())
    out = capsys.readouterr().out
    assert all_pass is True
    assert "FAIL" not in out


# Each change breaks exactly one bar, just past its limit (the others keep their room).
BROKEN = {
    "lbtui req/s under 0.5x haproxy": ("lbtui", 50, {"rps": 15000 * BAR_RPS_MIN - 1}),
    "lbtui cpu/req over 1.6x haproxy": ("lbtui", 50, {"cpu_us_per_req": 40 * BAR_CPU_MAX + 0.1}),
    "lbtui p99 over 2.5x haproxy": ("lbtui", 50, {"p99_us": 9000 * BAR_P99_MAX + 1}),
    "lbtui errors at c=50": ("lbtui", 50, {"socket_errors": {"timeout": 1}}),
    "lbtui p50 over direct + 100 us": ("lbtui", 1, {"p50_us": 45 + BAR_P50_DELTA_US + 1}),
    "lbtui errors at c=1": ("lbtui", 1, {"non_2xx_3xx": 1}),
    "gateway req/s under 0.75x": ("lbtui-gateway", 50, {"rps": 12000 * BAR_GW_RPS_MIN - 1}),
    "gateway non-2xx": ("lbtui-gateway", 1, {"non_2xx_3xx": 2}),
    "dashboard req/s under 0.9x": ("dashboard", 50, {"rps": 12000 * BAR_DASH_RPS_MIN - 1}),
    "dashboard p99 over +2 ms": ("dashboard", 1, {"p99_us": 600 + BAR_DASH_P99_DELTA_MS * 1000 + 1}),
    "dashboard errors": ("dashboard", 1, {"socket_errors": {"read": 1}}),
}


@pytest.mark.parametrize("broken", BROKEN.values(), ids=BROKEN.keys())
def test_one_broken_bar_fails_check(broken, capsys):
    target, c, changes = broken
    summary, all_pass = report(_with(passing_bench(), target, c, **changes))
    assert all_pass is False
    assert summary["all_bars_pass"] is False
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize(
    "changes",
    [
        {"p99_us": 500 * BAR_P99_MAX * 4},  # at c=1 lbtui/haproxy is information only
        {"rps": 1000},
    ],
)
def test_lbtui_against_haproxy_at_one_connection_is_information(changes, capsys):
    _, all_pass = report(_with(passing_bench(), "lbtui", 1, **changes))
    assert all_pass is True
    assert "(info, no bar at c=1)" in capsys.readouterr().out


def test_the_unpinned_dashboard_is_information():
    bench = passing_bench()
    bench.runs.append(run("dashboard-unpinned", 50, 1, 100, 90000, 99000, 500, quit_clean=True))
    bench.targets.append("dashboard-unpinned")
    bench.dash_cmds["dashboard-unpinned"] = ["python", "-m", "lbtui"]
    assert report(bench)[1] is True


def test_the_verdicts_at_their_limits():
    assert haproxy_verdict(BAR_RPS_MIN, BAR_CPU_MAX, BAR_P99_MAX, 0) == "PASS"
    assert haproxy_verdict(BAR_RPS_MIN - 0.01, 1.0, 1.0, 0) == "FAIL"
    assert haproxy_verdict(1.0, BAR_CPU_MAX + 0.01, 1.0, 0) == "FAIL"
    assert haproxy_verdict(1.0, 1.0, BAR_P99_MAX + 0.01, 0) == "FAIL"
    assert haproxy_verdict(1.0, 1.0, 1.0, 1) == "FAIL"
    assert haproxy_verdict(None, 1.0, 1.0, 0) == "FAIL"  # no reference: no pass
    assert gateway_verdict(BAR_GW_RPS_MIN, 0) == "PASS"
    assert gateway_verdict(BAR_GW_RPS_MIN - 0.01, 0) == "FAIL"
    assert gateway_verdict(1.0, 3) == "FAIL"
    assert gateway_verdict(None, 0) == "FAIL"
    assert dashboard_verdict(BAR_DASH_RPS_MIN, BAR_DASH_P99_DELTA_MS, 0) == "PASS"
    assert dashboard_verdict(BAR_DASH_RPS_MIN - 0.01, 0.0, 0) == "FAIL"
    assert dashboard_verdict(1.0, BAR_DASH_P99_DELTA_MS + 0.01, 0) == "FAIL"
    assert dashboard_verdict(1.0, 0.0, 1) == "FAIL"


def test_ratios_medians_and_picks():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) is None
    runs = default_bench().runs
    assert [r.round for r in pick(runs, "lbtui", 50)] == [1, 2]
    assert [r.rps for r in pick(runs, "lbtui", 50, 2)] == [9000.0]
    assert pick(runs, "lbtui", 7) == []
    assert med(pick(runs, "haproxy", 1), "p50_us") == 113.0
    three = [*pick(runs, "direct", 50), run("direct", 50, 3, 1.0, 1, 1, 1)]
    assert med(three, "rps") == 40001.0  # the middle one, not the mean


@pytest.mark.parametrize(
    ("us", "text"), [(0, "0us"), (85.4, "85us"), (999.4, "999us"), (1000, "1.00ms"), (12345, "12.35ms")]
)
def test_latencies_in_us_below_a_millisecond(us, text):
    assert fmt_us(us) == text


def test_missing_figures_print_as_na():
    assert fmt_x(None) == "n/a"
    assert fmt_x(0.499) == "0.50x"
    assert fmt_pct(None) == "n/a"
    assert fmt_pct(12.6) == "13%"


def test_a_runs_errors_are_named():
    assert run("lbtui", 1, 1, 1, 1, 1, 1).error_text() == "none"
    flagged = run("lbtui", 1, 1, 1, 1, 1, 1, socket_errors={"read": 3, "timeout": 1}, non_2xx_3xx=2)
    assert flagged.errors == 6
    assert flagged.error_text() == "FLAGGED: socket read 3, socket timeout 1, non-2xx/3xx 2"


def test_the_json_document_holds_setup_bars_runs_and_summary(capsys):
    bench = default_bench()
    summary, _ = report(bench)
    capsys.readouterr()
    doc = json.loads(json.dumps(json_document(bench, summary)))
    meta = doc["meta"]
    assert meta["targets"] == bench.targets
    assert meta["connections"] == [50, 1]
    assert (meta["rounds"], meta["duration_s"], meta["warmup_s"]) == (2, 3, 1)
    assert meta["pty_size"] == [160, 45]
    assert meta["bars"]["rps_min"] == BAR_RPS_MIN
    assert meta["bars"]["gateway_rps_min"] == BAR_GW_RPS_MIN
    assert meta["gateway"]["request_path"] == "/api/bench"
    assert len(doc["runs"]) == len(bench.runs)
    assert doc["runs"][6]["socket_errors"] == {"read": 3}
    assert doc["summary"]["all_bars_pass"] is False
    assert json_document(dashboard_bench(), summary)["meta"]["gateway"] is None
