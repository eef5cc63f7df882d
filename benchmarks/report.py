"""What is made of the runs: the record of each run (Run), medians and ranges over rounds, the ratios against
HAProxy, direct and headless lbtui, the bars (benchmarks/README.md) and their verdicts, the printed tables, and
the JSON document of --json.

Every ratio is lbtui's (or the gateway's, a dashboard's) value over the reference's, None where the reference
is 0. A verdict is "PASS" or "FAIL"; a run with any socket error or non-2xx/3xx answer fails its bar. Only the
bars of lbtui against HAProxy (c > 1) and direct (c = 1), of the gateway and of the pinned dashboard count for
--check; the unpinned dashboard and the variants are information.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from benchmarks.targets import (
    ATTACHED,
    GATEWAY,
    GATEWAY_KEY_HEADER,
    GATEWAY_PATH,
    GATEWAY_PREFIX,
    GATEWAY_RATE,
    LOGGED,
    VARIANT,
)
from benchmarks.wrk import WARMUP_S

# The bars (README.md). Concurrent levels (c > 1) compare lbtui with HAProxy; c = 1 compares with direct.
BAR_RPS_MIN = 0.5  # lbtui req/s >= 0.5x HAProxy's
BAR_CPU_MAX = 1.6  # lbtui CPU time per request <= 1.6x HAProxy's
BAR_P99_MAX = 2.5  # lbtui p99 <= 2.5x HAProxy's
BAR_P50_DELTA_US = 100.0  # at one connection: lbtui p50 <= direct p50 + 100 us
# The dashboard bars (benchmarks/README.md: the dashboard costs the engine at most 10%): the dashboard (pinned like `lbtui serve`) against headless lbtui.
BAR_DASH_RPS_MIN = 0.90  # dashboard req/s >= 0.90x headless
BAR_DASH_P99_DELTA_MS = 2.0  # dashboard p99 <= headless p99 + 2 ms
# The gateway bar (issue 5): route + API key + rate limit (not hit) keeps req/s within 25% of plain lbtui's.
BAR_GW_RPS_MIN = 0.75
# The HAProxy request-log bar (issue 15): HAProxy with the ring log wired and `lbtui attach` reading it keeps
# req/s within 2% of HAProxy alone.
BAR_ATTACHED_RPS_MIN = 0.98


@dataclass
class Run:
    round: int
    connections: int
    target: str
    rps: float
    p50_us: float
    p99_us: float
    requests: int
    seconds: float
    cpu_us_per_req: float
    cpu_of: str
    socket_errors: dict[str, int]
    non_2xx_3xx: int
    # Share of the proxy CPU used by anything but the target during the run (the box is shared), and the
    # hypervisor's steal on it. A high value means the run was disturbed. None when the target is not pinned
    # (then its own share of that CPU is unknown).
    proxy_cpu_others_pct: float | None
    proxy_cpu_steal_pct: float
    # lbtui targets: the data plane the process loaded ("compiled" / "pure Python"); "" for the others.
    build: str = ""
    # Dashboard mode only: the target's CPU use while idle (no load) just before the run, in % of one CPU
    # (for a dashboard: mostly its refreshes); the bytes a dashboard wrote to its terminal during the measured
    # run (it was refreshing); whether it quit with `q`, `y` and exit code 0 within the deadline.
    idle_cpu_pct: float | None = None
    terminal_bytes: int | None = None
    quit_clean: bool | None = None
    # haproxy-attached only: the CPU of `lbtui attach` alone (it is in cpu_us_per_req too), per request and in %
    # of one CPU over the measured run.
    attached_cpu_us_per_req: float | None = None
    attached_cpu_pct: float | None = None
    attempts: int = 1  # --retry-disturbed: how many times this run was measured (the least disturbed is kept)

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx

    def error_text(self) -> str:
        if not self.errors:
            return "none"
        parts = [f"socket {k} {v}" for k, v in self.socket_errors.items()]
        if self.non_2xx_3xx:
            parts.append(f"non-2xx/3xx {self.non_2xx_3xx}")
        return "FLAGGED: " + ", ".join(parts)


class Measured(Protocol):
    """What the report reads of a benchmark (run.Bench): its setup and its runs."""

    @property
    def runs(self) -> list[Run]: ...
    @property
    def targets(self) -> list[str]: ...
    @property
    def levels(self) -> list[int]: ...
    @property
    def rounds(self) -> int: ...
    @property
    def duration(self) -> int: ...
    @property
    def dashboard_mode(self) -> bool: ...
    @property
    def dash_cmds(self) -> dict[str, list[str]]: ...
    @property
    def pinned(self) -> bool: ...
    @property
    def proxy_cpu(self) -> int: ...
    @property
    def load_cpu(self) -> int: ...
    @property
    def c1_shared_cpu(self) -> bool: ...
    @property
    def pty_size(self) -> tuple[int, int]: ...


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def fmt_us(us: float) -> str:
    return f"{us:.0f}us" if us < 1000 else f"{us / 1000:.2f}ms"


def fmt_x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def pick(runs: list[Run], target: str, c: int, rnd: int | None = None) -> list[Run]:
    return [r for r in runs if r.target == target and r.connections == c and (rnd is None or r.round == rnd)]


def med(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def haproxy_verdict(rps: float | None, cpu: float | None, p99: float | None, errors: int) -> str:
    ok = (
        rps is not None
        and cpu is not None
        and p99 is not None
        and rps >= BAR_RPS_MIN
        and cpu <= BAR_CPU_MAX
        and p99 <= BAR_P99_MAX
        and errors == 0
    )
    return "PASS" if ok else "FAIL"


def report(bench: Measured) -> tuple[dict[str, Any], bool]:
    """Print the tables and ratio lines; return (summary for JSON, all bars passed)."""
    runs = bench.runs
    summary: dict[str, Any] = {"levels": {}}
    all_pass = True
    print()
    print("=" * 100)
    for c in bench.levels:
        level: dict[str, Any] = {"targets": {}, "ratios": {}, "per_round": []}
        summary["levels"][str(c)] = level
        print(
            f"c={c}: wrk -t1 -c{c}, {bench.duration} s x {bench.rounds} rounds; median [min-max] over rounds"
        )
        width = max(8, *(len(t) + 1 for t in bench.targets))
        dash_cols = f"  {'idle cpu':>8}  {'tty KB/s':>8}" if bench.dashboard_mode else ""
        print(
            f"  {'target':<{width}} {'req/s':>24}  {'p50':>22}  {'p99':>22}  {'cpu us/req':>19}  "
            f"{'others':>6}{dash_cols}  errors"
        )
        for t in bench.targets:
            rs = pick(runs, t, c)
            if not rs:
                continue
            row: dict[str, Any] = {}
            cells = []
            for attr, fmt in (
                ("rps", lambda v: f"{v:.0f}"),
                ("p50_us", fmt_us),
                ("p99_us", fmt_us),
                ("cpu_us_per_req", lambda v: f"{v:.1f}"),
            ):
                vals = [getattr(r, attr) for r in rs]
                m = statistics.median(vals)
                row[attr] = {"median": m, "min": min(vals), "max": max(vals)}
                cells.append(f"{fmt(m)} [{fmt(min(vals))}-{fmt(max(vals))}]")
            nerr = sum(1 for r in rs if r.errors)
            row["runs_with_errors"] = nerr
            known = [r.proxy_cpu_others_pct for r in rs if r.proxy_cpu_others_pct is not None]
            others = max(known) if known else None
            row["proxy_cpu_others_pct_max"] = others
            extra = ""
            if bench.dashboard_mode:
                idle = [r.idle_cpu_pct for r in rs if r.idle_cpu_pct is not None]
                tty = [
                    r.terminal_bytes / 1024 / max(r.seconds, 1e-9) for r in rs if r.terminal_bytes is not None
                ]
                row["idle_cpu_pct"] = statistics.median(idle) if idle else None
                row["terminal_kb_per_s"] = statistics.median(tty) if tty else None
                extra = "  " + (f"{statistics.median(idle):>7.1f}%" if idle else f"{'-':>8}")
                extra += "  " + (f"{statistics.median(tty):>8.1f}" if tty else f"{'-':>8}")
            level["targets"][t] = row
            label = t + ("*" if t == "direct" else "")
            print(
                f"  {label:<{width}} {cells[0]:>24}  {cells[1]:>22}  {cells[2]:>22}  {cells[3]:>19}  "
                f"{fmt_pct(others):>6}{extra}  "
                f"{'FLAGGED: ' + str(nerr) + ' run(s) with errors' if nerr else 'none'}"
            )
        if "direct" in bench.targets:
            print("  * direct: cpu us/req is the backend nginx's (master + worker), not a proxy's")
        print(
            f"  others: the most CPU {bench.proxy_cpu} (the proxy's) gave to anything else in a run of that "
            "target (other tenants, kernel); high = disturbed"
            + ("; n/a for the unpinned dashboard" if "dashboard-unpinned" in bench.targets else "")
        )
        if bench.dashboard_mode:
            print(
                "  idle cpu: the target's CPU with no load, just before its run (a dashboard: mostly its "
                "refreshes); tty KB/s: what a dashboard wrote to its terminal under load"
            )

        head = f"c={c}".ljust(6)
        lb = pick(runs, "lbtui", c)
        lb_err = sum(1 for r in lb if r.errors)
        err_note = f" (lbtui had errors in {lb_err} run(s))" if lb_err else ""
        print()
        if lb and pick(runs, "haproxy", c):
            hp = pick(runs, "haproxy", c)
            rr = ratio(med(lb, "rps"), med(hp, "rps"))
            cr = ratio(med(lb, "cpu_us_per_req"), med(hp, "cpu_us_per_req"))
            pr = ratio(med(lb, "p99_us"), med(hp, "p99_us"))
            level["ratios"]["lbtui/haproxy"] = {"rps": rr, "cpu_per_req": cr, "p99": pr}
            if c > 1:
                verdict = haproxy_verdict(rr, cr, pr, lb_err)
                all_pass &= verdict == "PASS"
                level["ratios"]["lbtui/haproxy"]["verdict"] = verdict
                print(
                    f"{head}lbtui/haproxy  req/s {fmt_x(rr)} (bar >= {BAR_RPS_MIN}x)  "
                    f"cpu/req {fmt_x(cr)} (bar <= {BAR_CPU_MAX}x)  p99 {fmt_x(pr)} (bar <= {BAR_P99_MAX}x)  "
                    f"{verdict}{err_note}"
                )
            else:
                print(
                    f"{head}lbtui/haproxy  req/s {fmt_x(rr)}  cpu/req {fmt_x(cr)}  p99 {fmt_x(pr)}  "
                    "(info, no bar at c=1)"
                )
        if c == 1 and lb and pick(runs, "direct", c):
            d = med(lb, "p50_us") - med(pick(runs, "direct", c), "p50_us")
            verdict = "PASS" if d <= BAR_P50_DELTA_US and not lb_err else "FAIL"
            all_pass &= verdict == "PASS"
            level["ratios"]["lbtui-direct"] = {"p50_delta_us": d, "verdict": verdict}
            print(
                f"{head}lbtui-direct   p50 {d:+.0f} us (bar <= +{BAR_P50_DELTA_US:.0f} us)  "
                f"{verdict}{err_note}"
            )
        if c == 1 and pick(runs, "haproxy", c) and pick(runs, "direct", c):
            d = med(pick(runs, "haproxy", c), "p50_us") - med(pick(runs, "direct", c), "p50_us")
            level["ratios"]["haproxy-direct"] = {"p50_delta_us": d}
            print(f"{head}haproxy-direct p50 {d:+.0f} us  (info, for scale)")

        # Per round: the two targets compared ran minutes apart at most, so this spread is the honest one.
        for rnd in range(1, bench.rounds + 1):
            lbr, hpr, dr = (pick(runs, t, c, rnd) for t in ("lbtui", "haproxy", "direct"))
            if not lbr or not (hpr or dr):
                continue
            entry: dict[str, Any] = {"round": rnd}
            line = f"  round {rnd}:"
            if hpr:
                rr = ratio(lbr[0].rps, hpr[0].rps)
                cr = ratio(lbr[0].cpu_us_per_req, hpr[0].cpu_us_per_req)
                pr = ratio(lbr[0].p99_us, hpr[0].p99_us)
                entry.update(rps=rr, cpu_per_req=cr, p99=pr)
                line += f"  lbtui/haproxy  req/s {fmt_x(rr)}  cpu/req {fmt_x(cr)}  p99 {fmt_x(pr)}"
                if c > 1:
                    v = haproxy_verdict(rr, cr, pr, lbr[0].errors)
                    entry["verdict"] = v
                    line += f"  {v}"
            if c == 1 and dr:
                d = lbr[0].p50_us - dr[0].p50_us
                v = "PASS" if d <= BAR_P50_DELTA_US and not lbr[0].errors else "FAIL"
                entry.update(p50_delta_us=d, verdict_direct=v)
                line += f"  lbtui-direct p50 {d:+.0f} us  {v}"
            level["per_round"].append(entry)
            print(line)
        verdicts = [e.get("verdict", e.get("verdict_direct")) for e in level["per_round"]]
        verdicts = [v for v in verdicts if v]
        if verdicts:
            print(f"  rounds passing: {verdicts.count('PASS')}/{len(verdicts)}")
        if pick(runs, "haproxy", c) and any(pick(runs, t, c) for t in (LOGGED, ATTACHED)):
            all_pass &= report_attached(bench, c, level)
        elif not lb:
            print(f"{head}(lbtui not measured: no ratio lines)")
        if lb and pick(runs, GATEWAY, c):
            all_pass &= report_gateway(bench, c, level)
        if lb and any(pick(runs, d, c) for d in bench.dash_cmds):
            all_pass &= report_dashboards(bench, c, level)
        print()
    summary["all_bars_pass"] = all_pass
    return summary, all_pass


def attached_verdict(rps: float | None, errors: int) -> str:
    return "PASS" if rps is not None and rps >= BAR_ATTACHED_RPS_MIN and not errors else "FAIL"


def report_attached(bench: Measured, c: int, level: dict[str, Any]) -> bool:
    """The request-log lines of one level: HAProxy with the ring log (haproxy-logged: information) and with
    `lbtui attach` reading it (haproxy-attached: the bar) against HAProxy alone; the medians, then each round.
    True if the bar holds (or haproxy-attached was not measured)."""
    runs = bench.runs
    head = f"c={c}".ljust(6)
    hp = pick(runs, "haproxy", c)
    ok = True
    for target in (LOGGED, ATTACHED):
        tr = pick(runs, target, c)
        if not tr:
            continue
        name = f"{target}/haproxy"
        errs = sum(1 for r in tr if r.errors)
        rr = ratio(med(tr, "rps"), med(hp, "rps"))
        cr = ratio(med(tr, "cpu_us_per_req"), med(hp, "cpu_us_per_req"))
        dc = med(tr, "cpu_us_per_req") - med(hp, "cpu_us_per_req")
        pr = ratio(med(tr, "p99_us"), med(hp, "p99_us"))
        entry: dict[str, Any] = {"rps": rr, "cpu_per_req": cr, "cpu_delta_us": dc, "p99": pr}
        if target == ATTACHED:
            verdict = attached_verdict(rr, errs)
            entry["verdict"] = verdict
            ok = verdict == "PASS"
            bar = f" (bar >= {BAR_ATTACHED_RPS_MIN:.2f}x)"
        else:
            verdict, bar = "(info)", ""
        own = [r.attached_cpu_us_per_req for r in tr if r.attached_cpu_us_per_req is not None]
        share = [r.attached_cpu_pct for r in tr if r.attached_cpu_pct is not None]
        if own and share:
            entry["lbtui_cpu_us_per_req"] = statistics.median(own)
            entry["lbtui_cpu_pct"] = statistics.median(share)
        level["ratios"][name] = entry
        note = f" (errors in {errs} run(s))" if errs else ""
        if own and share:
            note += f"  [lbtui attach: {statistics.median(own):.1f} us/req, {statistics.median(share):.1f}% of a CPU]"
        print(
            f"{head}{name}  req/s {fmt_x(rr)}{bar}  cpu/req {fmt_x(cr)} ({dc:+.1f} us)  p99 {fmt_x(pr)}  "
            f"{verdict}{note}"
        )
        per_round = []
        for rnd in range(1, bench.rounds + 1):
            a, b = pick(runs, target, c, rnd), pick(runs, "haproxy", c, rnd)
            if not a or not b:
                continue
            rr = ratio(a[0].rps, b[0].rps)
            cr = ratio(a[0].cpu_us_per_req, b[0].cpu_us_per_req)
            dc = a[0].cpu_us_per_req - b[0].cpu_us_per_req
            pr = ratio(a[0].p99_us, b[0].p99_us)
            v = attached_verdict(rr, a[0].errors) if target == ATTACHED else ""
            per_round.append({"round": rnd, "rps": rr, "cpu_per_req": cr, "p99": pr, "verdict": v or None})
            print(
                f"  round {rnd}:  {name}  req/s {fmt_x(rr)}  cpu/req {fmt_x(cr)} ({dc:+.1f} us)  "
                f"p99 {fmt_x(pr)}  {v}".rstrip()
            )
        level[f"per_round_{target}"] = per_round
        if target == ATTACHED and per_round:
            passing = sum(1 for e in per_round if e["verdict"] == "PASS")
            print(f"  rounds passing: {passing}/{len(per_round)}")
    return ok


def gateway_verdict(rps: float | None, errors: int) -> str:
    return "PASS" if rps is not None and rps >= BAR_GW_RPS_MIN and not errors else "FAIL"


def report_gateway(bench: Measured, c: int, level: dict[str, Any]) -> bool:
    """The gateway line of one level: lbtui-gateway against plain lbtui, from the medians; True if the bar
    holds. Any non-2xx/3xx answer in a gateway run (a 429 would mean the rate limit was hit, a 401 the key
    refused) or socket error fails it."""
    runs = bench.runs
    head = f"c={c}".ljust(6)
    gw, lb = pick(runs, GATEWAY, c), pick(runs, "lbtui", c)
    name = "gateway/lbtui"
    errs = sum(1 for r in gw if r.errors)
    non2xx = sum(r.non_2xx_3xx for r in gw)
    rr = ratio(med(gw, "rps"), med(lb, "rps"))
    cr = ratio(med(gw, "cpu_us_per_req"), med(lb, "cpu_us_per_req"))
    dc = med(gw, "cpu_us_per_req") - med(lb, "cpu_us_per_req")
    pr = ratio(med(gw, "p99_us"), med(lb, "p99_us"))
    verdict = gateway_verdict(rr, errs)
    level["ratios"][name] = {
        "rps": rr,
        "cpu_per_req": cr,
        "cpu_delta_us": dc,
        "p99": pr,
        "non_2xx_3xx": non2xx,
        "runs_with_errors": errs,
        "verdict": verdict,
    }
    note = f" (errors in {errs} run(s); non-2xx/3xx {non2xx})" if errs else ""
    print(
        f"{head}{name}  req/s {fmt_x(rr)} (bar >= {BAR_GW_RPS_MIN:.2f}x)  cpu/req {fmt_x(cr)} ({dc:+.1f} us)  "
        f"p99 {fmt_x(pr)}  {verdict}{note}"
    )
    per_round = []
    for rnd in range(1, bench.rounds + 1):
        a, b = pick(runs, GATEWAY, c, rnd), pick(runs, "lbtui", c, rnd)
        if not a or not b:
            continue
        rr = ratio(a[0].rps, b[0].rps)
        cr = ratio(a[0].cpu_us_per_req, b[0].cpu_us_per_req)
        pr = ratio(a[0].p99_us, b[0].p99_us)
        v = gateway_verdict(rr, a[0].errors)
        per_round.append({"round": rnd, "rps": rr, "cpu_per_req": cr, "p99": pr, "verdict": v})
        print(f"  round {rnd}:  {name}  req/s {fmt_x(rr)}  cpu/req {fmt_x(cr)}  p99 {fmt_x(pr)}  {v}")
    level["per_round_gateway"] = per_round
    if per_round:
        passing = sum(1 for e in per_round if e["verdict"] == "PASS")
        print(f"  rounds passing: {passing}/{len(per_round)}")
    builds = sorted({r.build for r in gw + lb if r.build})
    if len(builds) > 1:
        print(f"  WARNING: lbtui and {GATEWAY} did not all load the same data plane: {', '.join(builds)}")
    return verdict == "PASS"


def dashboard_verdict(rps: float | None, p99_delta_ms: float, errors: int) -> str:
    ok = rps is not None and rps >= BAR_DASH_RPS_MIN and p99_delta_ms <= BAR_DASH_P99_DELTA_MS and not errors
    return "PASS" if ok else "FAIL"


def report_dashboards(bench: Measured, c: int, level: dict[str, Any]) -> bool:
    """The dashboard lines of one level: each dashboard against headless lbtui; True if the bars hold.

    Only the pinned dashboard is held to the bars (it has the CPU budget `lbtui serve` has); the unpinned one
    is information: what a user gets whose dashboard may use another CPU (here: the load generator's).
    Variants (prototypes) are pinned like the dashboard and shown with a verdict, which --check ignores.
    """
    runs = bench.runs
    head = f"c={c}".ljust(6)
    lb = pick(runs, "lbtui", c)
    passed = True
    width = max(25, *(len(d) + 7 for d in bench.dash_cmds))
    print()
    for d in bench.dash_cmds:
        ds = pick(runs, d, c)
        if not ds:
            continue
        name = f"{d}/lbtui"
        held = d == "dashboard" or d.startswith(VARIANT)
        errs = sum(1 for r in ds if r.errors)
        rr = ratio(med(ds, "rps"), med(lb, "rps"))
        dp = (med(ds, "p99_us") - med(lb, "p99_us")) / 1000
        cr = ratio(med(ds, "cpu_us_per_req"), med(lb, "cpu_us_per_req"))
        dc = med(ds, "cpu_us_per_req") - med(lb, "cpu_us_per_req")
        entry: dict[str, Any] = {"rps": rr, "p99_delta_ms": dp, "cpu_per_req": cr, "cpu_delta_us": dc}
        line = (
            f"{head}{name:<{width}} req/s {fmt_x(rr)} (bar >= {BAR_DASH_RPS_MIN:.2f}x)  p99 {dp:+.2f} ms "
            f"(bar <= +{BAR_DASH_P99_DELTA_MS:g} ms)  cpu/req {fmt_x(cr)} ({dc:+.1f} us)"
        )
        if held:
            verdict = dashboard_verdict(rr, dp, errs)
            entry["verdict"] = verdict
            if d == "dashboard":
                passed &= verdict == "PASS"
            line += f"  {verdict}" + (f" (errors in {errs} run(s))" if errs else "")
            line += "  (prototype: not in --check)" if d != "dashboard" else ""
        else:
            line += "  (info, no bar)" + (f" (errors in {errs} run(s))" if errs else "")
        level["ratios"][name] = entry
        print(line)
        per_round = []
        for rnd in range(1, bench.rounds + 1):
            a, b = pick(runs, d, c, rnd), pick(runs, "lbtui", c, rnd)
            if not a or not b:
                continue
            rr = ratio(a[0].rps, b[0].rps)
            dp = (a[0].p99_us - b[0].p99_us) / 1000
            cr = ratio(a[0].cpu_us_per_req, b[0].cpu_us_per_req)
            e: dict[str, Any] = {"round": rnd, "rps": rr, "p99_delta_ms": dp, "cpu_per_req": cr}
            text = f"  round {rnd}:  {name:<{width}} req/s {fmt_x(rr)}  p99 {dp:+.2f} ms  cpu/req {fmt_x(cr)}"
            if held:
                e["verdict"] = dashboard_verdict(rr, dp, a[0].errors)
                text += f"  {e['verdict']}"
            per_round.append(e)
            print(text)
        level.setdefault("per_round_dashboard", {})[d] = per_round
        verdicts = [e["verdict"] for e in per_round if "verdict" in e]
        if verdicts:
            print(f"  rounds passing: {verdicts.count('PASS')}/{len(verdicts)}")
        quits = [r.quit_clean for r in ds]
        if not all(quits):
            print(
                f"  {d}: quit with q, y in {sum(map(bool, quits))}/{len(quits)} runs; the others were killed"
            )
    builds = sorted({r.build for r in runs if r.connections == c and r.build})
    if len(builds) > 1:
        print(f"  WARNING: the lbtui processes did not all load the same data plane: {', '.join(builds)}")
    return passed


def json_document(bench: Measured, summary: dict[str, Any]) -> dict[str, Any]:
    """The --json document: the setup and bars (meta), every run, and the summary report() returned."""
    return {
        "meta": {
            "targets": bench.targets,
            "connections": bench.levels,
            "rounds": bench.rounds,
            "duration_s": bench.duration,
            "warmup_s": WARMUP_S,
            "pinned": bench.pinned,
            "c1_shared_cpu": bench.c1_shared_cpu,
            "pty_size": list(bench.pty_size),
            "dashboard_cmds": bench.dash_cmds,
            "env_LBTUI_PURE": os.environ.get("LBTUI_PURE"),
            "proxy_cpu": bench.proxy_cpu,
            "load_cpu": bench.load_cpu,
            "python": platform.python_version(),
            "bars": {
                "rps_min": BAR_RPS_MIN,
                "cpu_max": BAR_CPU_MAX,
                "p99_max": BAR_P99_MAX,
                "p50_delta_us_max": BAR_P50_DELTA_US,
                "dashboard_rps_min": BAR_DASH_RPS_MIN,
                "dashboard_p99_delta_ms_max": BAR_DASH_P99_DELTA_MS,
                "gateway_rps_min": BAR_GW_RPS_MIN,
            },
            "gateway": {
                "route_path_prefix": GATEWAY_PREFIX,
                "request_path": GATEWAY_PATH,
                "auth": "api_key",
                "key_header": GATEWAY_KEY_HEADER,
                "rate_limit_per_s": GATEWAY_RATE,
            }
            if GATEWAY in bench.targets
            else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "runs": [asdict(r) for r in bench.runs],
        "summary": summary,
    }
