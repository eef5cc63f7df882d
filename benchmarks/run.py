#!/usr/bin/env python3
"""lbtui vs HAProxy vs direct: the same wrk load against each, interleaved over rounds.

Stdlib only. Needs wrk, nginx and taskset (and haproxy unless excluded with --only) on PATH.
See benchmarks/README.md for what the numbers mean and the bars they are held to.

    python benchmarks/run.py [--rounds 3] [--duration 10] [--connections 50,1] [--json out.json]
                             [--only direct,haproxy,lbtui,lbtui-gateway] [--check]

The gateway case (`lbtui-gateway`, in the default set): the same engine with a route that asks for an API key
and rate-limits per consumer (never hit), against plain lbtui.

The HAProxy request-log case (`--only haproxy,haproxy-logged,haproxy-attached`): HAProxy with lbtui's ring log
and `lbtui attach` reading it, against HAProxy alone.

Dashboard mode: the engine inside the dashboard (`lbtui --config FILE` on a pseudo-terminal) against the
same engine headless (`lbtui serve --config FILE`), same load, same pinning:

    python benchmarks/run.py --dashboard [--rounds 3] [--duration 10] [--pty-size 160x45]
"""

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (python benchmarks/run.py): its package is benchmarks
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.configs import gateway_toml, haproxy_cfg, lbtui_toml, nginx_conf
from benchmarks.cpu import cpu_busy_seconds, others_pct, tree_cpu_seconds
from benchmarks.errors import Interrupted, StartError
from benchmarks.procs import (
    Proc,
    PtyProc,
    check_gateway,
    free_ports,
    lbtui_build,
    process_build,
    set_tree_affinity,
    tool_version,
    wait_ready,
)
from benchmarks.report import (
    BAR_DASH_P99_DELTA_MS,
    BAR_DASH_RPS_MIN,
    BAR_GW_RPS_MIN,
    Run,
    fmt_pct,
    fmt_us,
    json_document,
    report,
)
from benchmarks.targets import (
    ATTACHED,
    DASHBOARD_MODE_TARGETS,
    DASHBOARDS,
    DEFAULT_TARGETS,
    GATEWAY,
    GATEWAY_KEY_HEADER,
    GATEWAY_PREFIX,
    GATEWAY_RATE,
    HAPROXY_LOGGED,
    REPO,
    TARGETS,
    VARIANT,
    is_dashboard,
    target_request,
)
from benchmarks.wrk import WARMUP_S, WrkResult, run_wrk, wrk_argv

# Dashboard runs: the pseudo-terminal, how long the dashboard may idle before the load (its first layout
# and paints are done by then), and how long its idle CPU is sampled (procs.py: how long `q` then `y` may take).
PTY_SIZE = "160x45"
DASH_SETTLE_S = 1.0
IDLE_SAMPLE_S = 2.0
# --retry-disturbed: measure a run at most this many times, pausing in between.
RETRY_ATTEMPTS = 3
RETRY_PAUSE_S = 5.0
# haproxy-attached: `lbtui attach` is ready when its services line names the request log as its latency.
ATTACH_READY_TEXT = "HAProxy request log"
ATTACH_READY_S = 15.0


class Bench:
    """One benchmark: its processes and configs in a temp dir, the pinning, and the runs measured so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.targets: list[str] = list(args.only)
        self.levels: list[int] = args.connections
        self.tmp = Path(tempfile.mkdtemp(prefix="lbtui-bench-"))
        self.procs: list[Proc | PtyProc] = []
        self.ports: dict[str, int] = {}
        self.proc_of: dict[str, Proc] = {}
        self.configs: dict[str, Path] = {}
        self.runs: list[Run] = []
        cpus = sorted(os.sched_getaffinity(0))
        self.all_cpus = set(cpus)
        self.pinned = len(cpus) >= 2 and shutil.which("taskset") is not None
        self.load_cpu = cpus[0]
        self.proxy_cpu = cpus[1] if len(cpus) >= 2 else cpus[0]
        self.dashboard_cmd: list[str] = (
            shlex.split(args.dashboard_cmd) if args.dashboard_cmd else [sys.executable, "-m", "lbtui"]
        )
        # The command of every dashboard target (`--config FILE` is appended).
        self.dash_cmds: dict[str, list[str]] = {
            t: self.dashboard_cmd for t in self.targets if t in DASHBOARDS
        }
        for name, cmd in args.variant:
            self.targets.append(VARIANT + name)
            self.dash_cmds[VARIANT + name] = cmd
        self.dashboard_mode = bool(self.dash_cmds)

    # The setup the report reads (report.Measured), beyond the attributes above.

    @property
    def rounds(self) -> int:
        return int(self.args.rounds)

    @property
    def duration(self) -> int:
        return int(self.args.duration)

    @property
    def c1_shared_cpu(self) -> bool:
        return bool(self.args.c1_shared_cpu)

    @property
    def pty_size(self) -> tuple[int, int]:
        cols, rows = self.args.pty_size
        return cols, rows

    # -- helpers

    def pin(self, cpu: int) -> list[str]:
        return ["taskset", "-c", str(cpu)] if self.pinned else []

    def home_cpus(self, target: str) -> set[int]:
        """Where a target runs (outside the c=1 runs): the proxy CPU, or every CPU for the unpinned one."""
        if target == "direct":
            return {self.load_cpu}
        if target == "dashboard-unpinned" or not self.pinned:
            return set(self.all_cpus)
        return {self.proxy_cpu}

    def start(self, name: str, argv: list[str], **popen: Any) -> Proc:
        proc = Proc(name, argv, self.tmp / f"{name}.log", **popen)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self.args.keep_tmp:
            print(f"temp dir kept: {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- preflight

    def preflight(self) -> None:
        haproxies = {"haproxy", *HAPROXY_LOGGED} & set(self.targets)
        need = ["wrk", "nginx"] + (["haproxy"] if haproxies else [])
        missing = [tool for tool in need if shutil.which(tool) is None]
        if missing:
            raise StartError(f"missing on PATH: {', '.join(missing)} (apt-get install -y wrk haproxy nginx)")
        if "lbtui" in self.targets or GATEWAY in self.targets:
            try:
                cp = subprocess.run(
                    [sys.executable, "-m", "lbtui", "serve", "--help"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    cwd=self.tmp,
                    env=self.lbtui_env(),
                )
                lines = (cp.stderr or cp.stdout).strip().splitlines()
                problem = "" if cp.returncode == 0 else (lines[-1] if lines else f"exit {cp.returncode}")
            except subprocess.TimeoutExpired:
                problem = "timed out after 30 s"
            if problem:
                raise StartError(
                    f"the lbtui engine is not available: `{sys.executable} -m lbtui serve --help` failed: "
                    f"{problem}\n  (`python -m lbtui serve --config FILE` is needed; "
                    "until it exists, run with --only direct,haproxy)"
                )
        if self.dashboard_mode or ATTACHED in self.targets:
            code = "import lbtui.tui.app"
            try:
                cp = subprocess.run(
                    [sys.executable, "-c", code],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    cwd=self.tmp,
                    env=self.lbtui_env(),
                )
                lines = (cp.stderr or cp.stdout).strip().splitlines()
                problem = "" if cp.returncode == 0 else (lines[-1] if lines else f"exit {cp.returncode}")
            except subprocess.TimeoutExpired:
                problem = "timed out after 60 s"
            if problem:
                raise StartError(f"the dashboard is not available: `python -c '{code}'` failed: {problem}")
            for target, cmd in self.dash_cmds.items():
                if shutil.which(cmd[0]) is None:
                    raise StartError(f"{target}: {cmd[0]!r} not found")

    def lbtui_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        return env

    def dashboard_env(self) -> dict[str, str]:
        """lbtui's environment as a 256-colour terminal of the pty's size (nothing overrides the size)."""
        env = self.lbtui_env()
        env["TERM"] = "xterm-256color"
        for name in ("COLUMNS", "LINES", "COLORTERM", "TEXTUAL", "TEXTUAL_DEVTOOLS_PORT"):
            env.pop(name, None)
        return env

    def start_dashboard(self, target: str, rnd: int, connections: int) -> PtyProc:
        """`lbtui --config FILE` on a fresh pty, pinned like `lbtui serve` (or not at all), ready to serve."""
        cols, rows = self.args.pty_size
        cpus = self.home_cpus(target)
        pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if self.pinned else []
        argv = [*pin, *self.dash_cmds[target], "--config", str(self.configs[target])]
        proc = PtyProc(
            target,
            argv,
            self.tmp / f"{target.replace(':', '-')}-r{rnd}-c{connections}.pty.log",
            cols,
            rows,
            env=self.dashboard_env(),
            cwd=self.tmp,
        )
        self.procs.append(proc)
        wait_ready(proc, self.ports[target])
        return proc

    def start_attached(self, rnd: int, connections: int) -> PtyProc:
        """`lbtui attach haproxy:///SOCK` on a fresh pty (not pinned: a user's terminal runs anywhere), ready once
        its services line says the latency is the HAProxy request log's (it reads the ring)."""
        cols, rows = self.args.pty_size
        url = f"haproxy://{self.tmp / (ATTACHED + '.sock')}"
        proc = PtyProc(
            ATTACHED,
            [*self.dashboard_cmd, "attach", url],
            self.tmp / f"{ATTACHED}-r{rnd}-c{connections}.pty.log",
            cols,
            rows,
            env=self.dashboard_env(),
            cwd=self.tmp,
        )
        self.procs.append(proc)
        t0 = time.monotonic()
        while not proc.shows(ATTACH_READY_TEXT):
            if not proc.alive():
                raise StartError(proc.died_message("before it was ready"))
            if time.monotonic() - t0 > ATTACH_READY_S:
                raise StartError(
                    f"{ATTACHED}: `lbtui attach {url}` did not show {ATTACH_READY_TEXT!r} within "
                    f"{ATTACH_READY_S:g} s (the request log not wired?)\n  last lines of its terminal:\n"
                    f"{proc.log_tail()}"
                )
            time.sleep(0.05)
        return proc

    def stop_dashboard(self, proc: PtyProc) -> bool:
        proc.stop()
        self.procs.remove(proc)
        return bool(proc.quit_clean)

    # -- start everything

    def start_all(self) -> None:
        b1, b2, hp, lp, admin, gp, gadmin, *more = free_ports(
            7 + 2 * len(self.dash_cmds) + len(HAPROXY_LOGGED)
        )
        logged_ports, dash_ports = more[: len(HAPROXY_LOGGED)], more[len(HAPROXY_LOGGED) :]
        backends = [b1, b2]

        conf = self.tmp / "nginx.conf"
        conf.write_text(nginx_conf(self.tmp, backends))
        nginx = self.start(
            "nginx",
            [
                *self.pin(self.load_cpu),
                "nginx",
                "-p",
                str(self.tmp),
                "-c",
                str(conf),
                "-e",
                str(self.tmp / "nginx-error.log"),
            ],
        )
        t = wait_ready(nginx, b1)
        wait_ready(nginx, b2)
        self.ports["direct"], self.proc_of["direct"] = b1, nginx
        print(f"  nginx backends on 127.0.0.1:{b1} and :{b2} (ready in {t:.2f} s)")

        if "haproxy" in self.targets:
            cfg = self.tmp / "haproxy.cfg"
            cfg.write_text(haproxy_cfg(hp, backends))
            proc = self.start("haproxy", [*self.pin(self.proxy_cpu), "haproxy", "-f", str(cfg), "-db"])
            t = wait_ready(proc, hp)
            self.ports["haproxy"], self.proc_of["haproxy"] = hp, proc
            print(f"  haproxy on 127.0.0.1:{hp} (ready in {t:.2f} s)")

        # HAProxy with lbtui's request log (a ring and a log-format) and an admin socket: alone, and with
        # `lbtui attach` reading the log (started afresh for each run, like the dashboards).
        for target, port in zip(HAPROXY_LOGGED, logged_ports, strict=True):
            if target not in self.targets:
                continue
            cfg = self.tmp / f"{target}.cfg"
            cfg.write_text(haproxy_cfg(port, backends, stats_socket=self.tmp / f"{target}.sock"))
            proc = self.start(target, [*self.pin(self.proxy_cpu), "haproxy", "-f", str(cfg), "-db"])
            t = wait_ready(proc, port)
            self.ports[target], self.proc_of[target] = port, proc
            print(f"  {target}: haproxy with the ring log on 127.0.0.1:{port} (ready in {t:.2f} s)")
        if ATTACHED in self.targets:
            print(
                f"  {ATTACHED}: {shlex.join(self.dashboard_cmd)} attach haproxy://SOCK on a "
                f"{self.args.pty_size[0]}x{self.args.pty_size[1]} pty, not pinned, started for each run; "
                "its CPU is counted with HAProxy's"
            )

        if "lbtui" in self.targets:
            toml = self.tmp / "lbtui.toml"
            toml.write_text(lbtui_toml(self.tmp, lp, admin, backends))
            argv = [*self.pin(self.proxy_cpu), sys.executable, "-m", "lbtui", "serve", "--config", str(toml)]
            proc = self.start("lbtui", argv, cwd=self.tmp, env=self.lbtui_env())
            t = wait_ready(proc, lp)
            self.ports["lbtui"], self.proc_of["lbtui"] = lp, proc
            self.configs["lbtui"] = toml
            print(
                f"  lbtui on 127.0.0.1:{lp} (ready in {t:.2f} s; data plane {process_build(proc.pid)}; "
                "stderr -> lbtui.log)"
            )

        # The gateway: the same engine and pinning, lbtui's config plus a route with an API key and a rate
        # limit; ready when a GET with the key answers, then checked to refuse one without it.
        if GATEWAY in self.targets:
            (self.tmp / GATEWAY).mkdir(exist_ok=True)
            toml = self.tmp / f"{GATEWAY}.toml"
            toml.write_text(gateway_toml(self.tmp / GATEWAY, gp, gadmin, backends))
            argv = [*self.pin(self.proxy_cpu), sys.executable, "-m", "lbtui", "serve", "--config", str(toml)]
            proc = self.start(GATEWAY, argv, cwd=self.tmp, env=self.lbtui_env())
            path, headers = target_request(GATEWAY)
            t = wait_ready(proc, gp, path=path, headers=headers)
            check_gateway(gp)
            self.ports[GATEWAY], self.proc_of[GATEWAY] = gp, proc
            self.configs[GATEWAY] = toml
            print(
                f"  {GATEWAY} on 127.0.0.1:{gp} (ready in {t:.2f} s; data plane {process_build(proc.pid)}; "
                f"stderr -> {GATEWAY}.log): route {GATEWAY_PREFIX} with api_key auth and a rate limit of "
                f"{GATEWAY_RATE}/s per consumer; wrk asks for {path} with {GATEWAY_KEY_HEADER} "
                "(checked: 401 without it)"
            )

        # The dashboards get the same config (only their ports differ) and are started afresh for each run
        # (so an idle one never sits on the proxy CPU while another target is measured).
        for i, target in enumerate(self.dash_cmds):
            port, admin_port = dash_ports[2 * i], dash_ports[2 * i + 1]
            slug = target.replace(":", "-")
            (self.tmp / slug).mkdir(exist_ok=True)
            toml = self.tmp / f"{slug}.toml"
            toml.write_text(lbtui_toml(self.tmp / slug, port, admin_port, backends))
            self.configs[target], self.ports[target] = toml, port
        if self.dashboard_mode:
            cols, rows = self.args.pty_size
            print(
                f"  dashboards: on a {cols}x{rows} pty (TERM=xterm-256color), started for each run, "
                "quit with q, y after it"
            )
            for target, cmd in self.dash_cmds.items():
                print(f"    {target}: {shlex.join(cmd)} --config FILE")

    # -- load

    def wrk(self, port: int, connections: int, seconds: int, target: str = "") -> WrkResult:
        path, headers = target_request(target)
        argv = [*self.pin(self.load_cpu), *wrk_argv(port, connections, seconds, path, headers)]
        return run_wrk(argv, seconds)

    def measure(self, rnd: int, connections: int, target: str) -> Run:
        for p in self.procs:
            if not p.alive():
                raise StartError(p.died_message("during the benchmark"))
        dash: PtyProc | None = None
        if is_dashboard(target):
            dash = self.start_dashboard(target, rnd, connections)
            proc: Proc | PtyProc = dash
        elif target == ATTACHED:
            dash = self.start_attached(rnd, connections)
            proc = self.proc_of[target]
        else:
            proc = self.proc_of[target]
        try:
            return self._measure(rnd, connections, target, proc, dash)
        finally:
            if dash is not None and dash in self.procs:
                self.stop_dashboard(dash)

    def _measure(
        self, rnd: int, connections: int, target: str, proc: Proc | PtyProc, dash: PtyProc | None
    ) -> Run:
        port = self.ports[target]
        idle_pct = None
        attached = dash if target == ATTACHED else None

        def cpu_seconds() -> float:  # the target's CPU, and an attached dashboard's
            return tree_cpu_seconds(proc.pid) + (tree_cpu_seconds(attached.pid) if attached else 0.0)

        if attached is not None and not self.dashboard_mode:
            time.sleep(DASH_SETTLE_S)
        if self.dashboard_mode and target != "direct":
            # Let a fresh dashboard finish its first layout, then sample what the target costs with no load.
            if dash is not None:
                time.sleep(DASH_SETTLE_S)
            c0, t0 = cpu_seconds(), time.monotonic()
            time.sleep(IDLE_SAMPLE_S)
            idle_pct = (cpu_seconds() - c0) * 100 / (time.monotonic() - t0)
        shared = self.shares_cpu(connections, target)
        if shared:
            set_tree_affinity(proc.pid, {self.load_cpu})
        try:
            self.wrk(port, connections, WARMUP_S, target)  # warm-up, discarded
            out0 = dash.output_bytes() if dash is not None else 0
            before = cpu_seconds()
            attached0 = tree_cpu_seconds(attached.pid) if attached else 0.0
            busy0, steal0 = cpu_busy_seconds(self.proxy_cpu)
            t0 = time.monotonic()
            res = self.wrk(port, connections, self.args.duration, target)
            wall = time.monotonic() - t0
            busy1, steal1 = cpu_busy_seconds(self.proxy_cpu)
            after = cpu_seconds()
            attached1 = tree_cpu_seconds(attached.pid) if attached else 0.0
            out1 = dash.output_bytes() if dash is not None else 0
        finally:
            if shared and proc.alive():
                set_tree_affinity(proc.pid, self.home_cpus(target))
        for p in (proc, attached):
            if p is not None and not p.alive():
                raise StartError(p.died_message("during the benchmark"))
        build = process_build(proc.pid) if target not in ("direct", "haproxy", *HAPROXY_LOGGED) else ""
        cpu_us = (after - before) * 1e6 / max(res.requests, 1)
        # The target's own CPU counts as "others" only when it runs on the proxy CPU alone; for the unpinned
        # dashboard its share of that CPU is unknown, so "others" is too.
        others: float | None
        if target in ("dashboard-unpinned", ATTACHED) and self.pinned and not shared:
            others = None  # where the unpinned process ran is unknown
        else:
            own = after - before if target != "direct" and not shared else 0.0
            others = others_pct(busy1 - busy0, own, wall)
        quit_clean = None
        if dash is not None:
            quit_clean = self.stop_dashboard(dash)
        return Run(
            round=rnd,
            connections=connections,
            target=target,
            rps=res.rps,
            p50_us=res.p50_us,
            p99_us=res.p99_us,
            requests=res.requests,
            seconds=res.seconds,
            cpu_us_per_req=cpu_us,
            cpu_of={"direct": "backend nginx", ATTACHED: "haproxy + lbtui attach"}.get(target, target),
            socket_errors=res.socket_errors,
            non_2xx_3xx=res.non_2xx_3xx,
            proxy_cpu_others_pct=others,
            proxy_cpu_steal_pct=(steal1 - steal0) * 100 / wall,
            build=build,
            idle_cpu_pct=idle_pct,
            terminal_bytes=(out1 - out0) if dash is not None else None,
            quit_clean=quit_clean,
            attached_cpu_us_per_req=(attached1 - attached0) * 1e6 / max(res.requests, 1)
            if attached
            else None,
            attached_cpu_pct=(attached1 - attached0) * 100 / wall if attached else None,
        )

    def measure_settled(self, rnd: int, connections: int, target: str) -> Run:
        """measure(); with --retry-disturbed PCT, again (after a pause) while others took more than PCT% of
        the proxy CPU, up to RETRY_ATTEMPTS in all; the least disturbed attempt is kept."""
        limit = self.args.retry_disturbed
        best: Run | None = None
        run: Run | None = None
        for attempt in range(1, (RETRY_ATTEMPTS if limit is not None else 1) + 1):
            if attempt > 1 and run is not None:
                print(
                    f"  c={connections:<3} {target}: others {fmt_pct(run.proxy_cpu_others_pct)} "
                    f"> {limit:g}%: again in {RETRY_PAUSE_S:g} s",
                    flush=True,
                )
                time.sleep(RETRY_PAUSE_S)
            run = self.measure(rnd, connections, target)
            run.attempts = attempt
            if best is None or (run.proxy_cpu_others_pct or 0.0) < (best.proxy_cpu_others_pct or 0.0):
                best = run
            if limit is None or run.proxy_cpu_others_pct is None or self.shares_cpu(connections, target):
                break  # nothing to judge by: unpinned, or not on the proxy CPU in this run
            if best.proxy_cpu_others_pct is not None and best.proxy_cpu_others_pct <= limit:
                break
        assert best is not None
        assert run is not None
        best.attempts = run.attempts
        return best

    def shares_cpu(self, connections: int, target: str) -> bool:
        """At one connection (unless --c1-split-cpu) the proxy joins wrk and nginx on the load CPU."""
        return (
            self.pinned
            and self.args.c1_shared_cpu
            and connections == 1
            and target not in ("direct", "dashboard-unpinned")
        )

    def run(self) -> None:
        n = len(self.targets)
        width = max(8, *map(len, self.targets))
        for rnd in range(1, self.args.rounds + 1):
            order = [self.targets[(i + rnd - 1) % n] for i in range(n)]
            print(f"round {rnd}/{self.args.rounds}: order {', '.join(order)}")
            for c in self.levels:
                for target in order:
                    run = self.measure_settled(rnd, c, target)
                    self.runs.append(run)
                    extra = f"  (attempt {run.attempts})" if run.attempts > 1 else ""
                    if run.idle_cpu_pct is not None:
                        extra += f"  idle cpu {run.idle_cpu_pct:.1f}%"
                    if run.terminal_bytes is not None:
                        extra += f"  tty {run.terminal_bytes / 1024 / max(run.seconds, 1e-9):.1f} KB/s"
                    if run.attached_cpu_pct is not None:
                        extra += (
                            f"  lbtui attach {run.attached_cpu_us_per_req:.1f} us/req "
                            f"({run.attached_cpu_pct:.1f}% cpu)"
                        )
                    if run.quit_clean is not None:
                        extra += "  quit ok" if run.quit_clean else "  QUIT FAILED (killed)"
                    if run.build and run.build != "compiled":
                        extra += f"  [{run.build}]"
                    print(
                        f"  c={c:<3} {target:<{width}} {run.rps:>9.0f} req/s  "
                        f"p50 {fmt_us(run.p50_us):>8}  "
                        f"p99 {fmt_us(run.p99_us):>8}  cpu {run.cpu_us_per_req:6.1f} us/req"
                        f"{' (backend)' if target == 'direct' else ''}  {run.requests} req  "
                        f"errors: {run.error_text()}  [cpu{self.proxy_cpu}: others "
                        f"{fmt_pct(run.proxy_cpu_others_pct)}, steal {run.proxy_cpu_steal_pct:.0f}%]"
                        f"{extra}",
                        flush=True,
                    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark lbtui against HAProxy and a direct backend with wrk.")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3, at least 1)")
    p.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    p.add_argument("--connections", default="50,1", help="connection levels, comma-separated (default 50,1)")
    p.add_argument("--json", metavar="FILE", help="also write every run and the summary as JSON")
    p.add_argument(
        "--only",
        help=f"targets, comma-separated, of: {','.join(TARGETS)} "
        f"(default {','.join(DEFAULT_TARGETS)}; with --dashboard {','.join(DASHBOARD_MODE_TARGETS)})",
    )
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="dashboard mode: the dashboard (`lbtui --config FILE` on a pty) against headless lbtui; "
        f"targets {','.join(DASHBOARD_MODE_TARGETS)} unless --only says otherwise",
    )
    p.add_argument(
        "--pty-size",
        default=PTY_SIZE,
        metavar="COLSxROWS",
        help=f"the dashboards' terminal (default {PTY_SIZE})",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="also measure CMD (`--config FILE` appended) as the dashboard target `variant:NAME`, pinned "
        "like `dashboard`, interleaved with the others (repeatable; for prototypes)",
    )
    p.add_argument(
        "--dashboard-cmd",
        metavar="CMD",
        help="run this instead of `python -m lbtui` for the dashboards (`--config FILE` is appended), "
        "e.g. to measure a prototype: --dashboard-cmd 'python /tmp/proto.py'",
    )
    p.add_argument("--check", action="store_true", help="exit 1 if a bar fails (or lbtui had errors)")
    # At one connection nothing runs in parallel, and on these VMs a cross-CPU wake-up costs tens of us per
    # hop (HAProxy itself measured +145 us over direct split across CPUs, +28 us sharing one): the latency bar
    # is about the proxy, so by default the c=1 runs put every process on one CPU, HAProxy and lbtui alike.
    p.add_argument(
        "--c1-split-cpu",
        dest="c1_shared_cpu",
        action="store_false",
        help="for the 1-connection runs, keep the proxy on its own CPU (adds cross-CPU wake-ups to latency)",
    )
    p.set_defaults(c1_shared_cpu=True)
    p.add_argument(
        "--retry-disturbed",
        type=float,
        metavar="PCT",
        help=f"measure a run again (up to {RETRY_ATTEMPTS} times in all) while anything else took more than "
        "PCT%% of the proxy CPU during it; keep the least disturbed (for a box shared with others)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    args = p.parse_args(argv)
    try:
        args.connections = [int(x) for x in args.connections.split(",") if x.strip()]
    except ValueError:
        p.error("--connections: comma-separated integers, e.g. 50,1")
    if not args.connections or min(args.connections) < 1 or max(args.connections) > 10000:
        p.error("--connections: integers between 1 and 10000")
    if args.only is None:
        args.only = ",".join(DASHBOARD_MODE_TARGETS if args.dashboard else DEFAULT_TARGETS)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in only if x not in TARGETS]
    if bad or not only:
        p.error(f"--only: choose from {', '.join(TARGETS)} (got {args.only!r})")
    args.only = [t for t in TARGETS if t in only]  # canonical order: as in TARGETS
    try:
        cols, rows = (int(x) for x in args.pty_size.lower().split("x"))
    except ValueError:
        p.error("--pty-size: COLSxROWS, e.g. 160x45")
    if not (20 <= cols <= 1000 and 5 <= rows <= 500):
        p.error("--pty-size: 20..1000 columns, 5..500 rows")
    args.pty_size = (cols, rows)
    variants: list[tuple[str, list[str]]] = []
    for item in args.variant:
        name, sep, cmd = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not shlex.split(cmd):
            p.error(f"--variant: NAME=CMD with NAME of letters, digits, _ . - (got {item!r})")
        if name in (v for v, _ in variants):
            p.error(f"--variant: {name!r} twice")
        variants.append((name, shlex.split(cmd)))
    args.variant = variants
    if not 1 <= args.rounds <= 50:
        p.error("--rounds: 1..50")
    if not 1 <= args.duration <= 600:
        p.error("--duration: 1..600 seconds")
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    bench = Bench(args)
    # This script does little (it waits on wrk) but keep it off the proxy's CPU anyway.
    if bench.pinned:
        os.sched_setaffinity(0, {bench.load_cpu})
    try:
        print("lbtui benchmark")
        print(
            f"  targets: {', '.join(bench.targets)}; connections: {', '.join(map(str, args.connections))}; "
            f"rounds: {args.rounds} (order rotated each round); {args.duration} s per run after a "
            f"{WARMUP_S} s warm-up"
        )
        if bench.pinned:
            print(
                f"  CPU pinning (taskset): the proxy under test (haproxy, lbtui) on CPU {bench.proxy_cpu}; "
                f"wrk, the nginx backends and this script on CPU {bench.load_cpu}"
            )
            if args.c1_shared_cpu:
                print(
                    f"  c=1: the proxy is moved to CPU {bench.load_cpu} too for these runs "
                    "(one request in flight, so no contention; no cross-CPU wake-up per hop)"
                )
            elif 1 in args.connections:
                print(
                    "  note: at c=1 each request crosses CPUs twice (wrk -> proxy -> nginx and back); "
                    "on a VM a cross-CPU wake-up costs tens of us, so c=1 latencies include it "
                    "(the default shares one CPU at c=1; see --c1-split-cpu)"
                )
        else:
            print(
                "  CPU pinning: NOT applied (fewer than 2 CPUs available or no taskset); numbers are rougher"
            )
        print(f"  lbtui data plane: {lbtui_build()} (python -m lbtui with PYTHONPATH={REPO})")
        if GATEWAY in bench.targets:
            print(
                f"  gateway bar: {GATEWAY} req/s >= {BAR_GW_RPS_MIN:.2f}x plain lbtui's, no non-2xx answer "
                f"(route {GATEWAY_PREFIX}, API key, rate limit {GATEWAY_RATE}/s per consumer: never hit)"
            )
        if bench.dashboard_mode:
            print(
                f"  dashboard bars: req/s >= {BAR_DASH_RPS_MIN:.2f}x headless lbtui, p99 <= headless "
                f"+ {BAR_DASH_P99_DELTA_MS:g} ms (the pinned dashboard; the unpinned one is info)"
            )
            if bench.pinned:
                print(
                    f"  dashboard pinning: `dashboard` on CPU {bench.proxy_cpu} like lbtui (the whole process), "
                    f"`dashboard-unpinned` on CPUs {','.join(map(str, sorted(bench.all_cpus)))}"
                )
        print(
            f"  python {platform.python_version()} ({sys.executable}); {tool_version(['wrk', '--version'])}; "
            f"{tool_version(['nginx', '-v'])}"
            + (f"; {tool_version(['haproxy', '-v'])}" if "haproxy" in args.only else "")
        )
        print(
            f"  load average at start: {Path('/proc/loadavg').read_text().split()[:3]}; "
            "expect +-20% between identical runs on a shared box"
        )
        bench.preflight()
        bench.start_all()
        bench.run()
        summary, all_pass = report(bench)
        print(f"load average at end: {Path('/proc/loadavg').read_text().split()[:3]}")
        if args.json:
            doc = json_document(bench, summary)
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
            print(f"JSON written to {args.json}")
        if args.check and not all_pass:
            print("--check: a bar failed")
            return 1
        return 0
    except StartError as e:
        sys.stdout.flush()
        print(f"\nERROR: {e}", file=sys.stderr)
        if bench.procs and not args.keep_tmp:
            print("  (re-run with --keep-tmp to keep configs and logs)", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted):
        sys.stdout.flush()
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
