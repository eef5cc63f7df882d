#!/usr/bin/env python3
"""lbtui vs HAProxy vs direct: the same wrk load against each, interleaved over rounds.

Stdlib only. Needs wrk, nginx and taskset (and haproxy unless excluded with --only) on PATH.
See benchmarks/README.md for what the numbers mean and the bars they are held to.

    python benchmarks/run.py [--rounds 3] [--duration 10] [--connections 50,1] [--json out.json]
                             [--only direct,haproxy,lbtui,lbtui-gateway] [--check]

The gateway case (`lbtui-gateway`, in the default set): the same engine with a route that asks for an API key
and rate-limits per consumer (never hit), against plain lbtui.

Dashboard mode: the engine inside the dashboard (`lbtui --config FILE` on a pseudo-terminal) against the
same engine headless (`lbtui serve --config FILE`), same load, same pinning:

    python benchmarks/run.py --dashboard [--rounds 3] [--duration 10] [--pty-size 160x45]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BODY = b"hello, world\n"
# The dashboard targets: `lbtui --config FILE` (the engine inside the dashboard) on a pseudo-terminal, pinned
# exactly like `lbtui serve` (the whole process on the proxy CPU), and, for information, not pinned at all.
DASHBOARDS = ("dashboard", "dashboard-unpinned")
# The gateway target: `lbtui serve` like `lbtui`, same backends, same pinning, with one route (path_prefix)
# that asks for an API key and rate-limits per consumer; wrk sends the key and a path the route takes. The
# limit is far above what one CPU can serve, so it is never hit (a 429 would be a non-2xx error).
GATEWAY = "lbtui-gateway"
GATEWAY_PREFIX = "/api"
GATEWAY_PATH = "/api/bench"
GATEWAY_KEY_HEADER = "X-API-Key"
GATEWAY_KEY = "lbtui-bench-key"  # not a secret: the config holds its SHA-256, as a real one would
GATEWAY_RATE = 1_000_000  # requests per second for the one consumer (and the burst)
TARGETS = ("direct", "haproxy", "lbtui", GATEWAY, *DASHBOARDS)
DEFAULT_TARGETS = ("direct", "haproxy", "lbtui", GATEWAY)
DASHBOARD_MODE_TARGETS = ("lbtui", *DASHBOARDS)  # --dashboard
VARIANT = "variant:"  # --variant NAME=CMD adds the target "variant:NAME": CMD pinned like `dashboard`


def is_dashboard(target: str) -> bool:
    return target in DASHBOARDS or target.startswith(VARIANT)


def target_request(target: str) -> tuple[str, dict[str, str]]:
    """The path every request to a target asks for, and the headers it carries (beyond wrk's own)."""
    if target == GATEWAY:
        return GATEWAY_PATH, {GATEWAY_KEY_HEADER: GATEWAY_KEY}
    return "/", {}


CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_DEADLINE_S = 10.0
WARMUP_S = 1
WRK_TIMEOUT = "5s"  # per request, inside wrk; a slower answer counts as a timeout error

# The bars (README.md). Concurrent levels (c > 1) compare lbtui with HAProxy; c = 1 compares with direct.
BAR_RPS_MIN = 0.5  # lbtui req/s >= 0.5x HAProxy's
BAR_CPU_MAX = 1.6  # lbtui CPU time per request <= 1.6x HAProxy's
BAR_P99_MAX = 2.5  # lbtui p99 <= 2.5x HAProxy's
BAR_P50_DELTA_US = 100.0  # at one connection: lbtui p50 <= direct p50 + 100 us
# The dashboard bars (ARCHITECTURE section 2): the dashboard (pinned like `lbtui serve`) against headless lbtui.
BAR_DASH_RPS_MIN = 0.90  # dashboard req/s >= 0.90x headless
BAR_DASH_P99_DELTA_MS = 2.0  # dashboard p99 <= headless p99 + 2 ms
# The gateway bar (issue 5): route + API key + rate limit (not hit) keeps req/s within 25% of plain lbtui's.
BAR_GW_RPS_MIN = 0.75

# Dashboard runs: the pseudo-terminal, how long the dashboard may idle before the load (its first layout
# and paints are done by then), how long its idle CPU is sampled, and how long `q` then `y` may take.
PTY_SIZE = "160x45"
DASH_SETTLE_S = 1.0
IDLE_SAMPLE_S = 2.0
DASH_QUIT_DEADLINE_S = 10.0
# --retry-disturbed: measure a run at most this many times, pausing in between.
RETRY_ATTEMPTS = 3
RETRY_PAUSE_S = 5.0


class StartError(Exception):
    """Something could not be started (or died): exit 2 with the message."""


class Interrupted(Exception):
    """SIGTERM: treated like Ctrl-C."""


# --------------------------------------------------------------------------------------------- processes


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bind to port 0, read it, close; all held open until the end)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Proc:
    """A child process in its own session (so Ctrl-C reaches us, not it); output to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, **popen: Any) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **popen,
            )
        except OSError as e:
            self._log.close()
            raise StartError(f"{name}: could not run {' '.join(argv)}: {e}") from e
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = text.splitlines()[-lines:]
        return "\n".join("    | " + line for line in tail) if tail else "    | (empty log)"

    def died_message(self, when: str) -> str:
        return (
            f"{self.name} exited with code {self.popen.returncode} {when}.\n"
            f"  command: {' '.join(self.argv)}\n  last lines of its output ({self.log_path.name}):\n"
            f"{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM to the process group we created (pgid == our child's pid), then SIGKILL after 5 s."""
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.popen.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; make sure nothing it left in its group (e.g. an nginx worker) survives.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            break
        if self.popen.returncode is None:
            try:
                self.popen.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()


# Escape sequences (CSI, OSC, DCS/APC/PM/SOS, charset selection, single-character ones) in terminal output.
_ESCAPES = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\|[()][0-9A-Za-z]|.)"
)


class PtyProc:
    """A dashboard on a pseudo-terminal of a fixed size, the terminal of its own session (as in a real one).

    A thread of this script reads (drains) the terminal's master side all the time, as a terminal emulator
    would, so the dashboard never blocks on its output; it counts the bytes and keeps the last ones for the
    log. Keys are written to the master side. Same interface as Proc (stop() quits the dashboard with its
    own keys first).
    """

    KEEP_BYTES = 256 * 1024

    def __init__(
        self, name: str, argv: list[str], log_path: Path, cols: int, rows: int, env: dict[str, str], cwd: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.bytes_out = 0
        self.quit_clean: bool | None = None
        self._tail = bytearray()
        self._lock = threading.Lock()
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        # `setsid -c`: a new session whose controlling terminal is the pty (so the dashboard gets SIGHUP if
        # this script vanishes, as with a closed terminal window); it execs, so the pid stays the dashboard's.
        setsid = shutil.which("setsid")
        full = [setsid, "-c", *argv] if setsid else argv
        try:
            self.popen = subprocess.Popen(
                full,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=setsid is None,
                env=env,
                cwd=cwd,
            )
        except OSError as e:
            os.close(master)
            raise StartError(f"{name}: could not run {' '.join(full)}: {e}") from e
        finally:
            os.close(slave)
        self.master = master
        self.pid = self.popen.pid
        self._reader = threading.Thread(target=self._drain, name=f"{name}-pty", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave side is closed (the dashboard exited)
                return
            if not data:
                return
            with self._lock:
                self.bytes_out += len(data)
                self._tail += data
                if len(self._tail) > 2 * self.KEEP_BYTES:
                    del self._tail[: -self.KEEP_BYTES]

    def output_bytes(self) -> int:
        with self._lock:
            return self.bytes_out

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of its output as text (escape sequences removed): e.g. an error before the UI."""
        with self._lock:
            raw = bytes(self._tail[-16384:])
        text = _ESCAPES.sub(b"", raw).decode("utf-8", "replace").replace("\r", "\n")
        tail = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
        return "\n".join("    | " + line for line in tail) if tail else "    | (no output)"

    def died_message(self, when: str) -> str:
        return (
            f"{self.name} exited with code {self.popen.returncode} {when}.\n"
            f"  command: {' '.join(self.argv)}\n  last lines of its terminal:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Quit as a user does (`q`, then `y` to confirm; twice if need be), else SIGTERM, then SIGKILL."""
        if self.alive():
            t0 = time.monotonic()
            clean = False
            while not clean and time.monotonic() - t0 < DASH_QUIT_DEADLINE_S:
                try:
                    self.send(b"q")
                    time.sleep(0.5)  # the confirmation screen is up by then
                    self.send(b"y")
                except OSError:
                    break
                try:
                    self.popen.wait(timeout=max(0.1, DASH_QUIT_DEADLINE_S / 2 - 0.5))
                    clean = self.popen.returncode == 0
                    break
                except subprocess.TimeoutExpired:
                    continue
            self.quit_clean = clean
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.returncode is not None:
                break
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.popen.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                continue
        try:  # nothing it started may survive it
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reader.join(timeout=2.0)
        try:
            os.close(self.master)
        except OSError:
            pass
        with self._lock:
            self.log_path.write_bytes(bytes(self._tail))


def http_get(
    port: int, timeout: float = 1.0, path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, bytes, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.headers
    finally:
        conn.close()


def wait_ready(
    proc: Proc | PtyProc,
    port: int,
    deadline_s: float = READY_DEADLINE_S,
    successes: int = 2,
    path: str = "/",
    headers: dict[str, str] | None = None,
) -> float:
    """Poll with real HTTP GETs until `successes` consecutive 200s with the expected body; return seconds."""
    t0 = time.monotonic()
    last = "no answer yet"
    ok = 0
    while time.monotonic() - t0 < deadline_s:
        if not proc.alive():
            raise StartError(proc.died_message("before it was ready"))
        try:
            status, body, _ = http_get(port, path=path, headers=headers)
            if status == 200 and body == BODY:
                ok += 1
                if ok >= successes:
                    return time.monotonic() - t0
                continue
            last = f"HTTP {status}, body {body[:80]!r}"
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        ok = 0
        time.sleep(0.05)
    raise StartError(
        f"{proc.name} did not answer GET http://127.0.0.1:{port}{path} with 200 {BODY!r} "
        f"within {deadline_s:.0f} s "
        f"(last: {last}).\n  command: {' '.join(proc.argv)}\n  last lines of its output:\n{proc.log_tail()}"
    )


def check_gateway(port: int) -> None:
    """The gateway's policies are on the measured path: without the key 401; with it 200, the backend's body
    and the rate limit's `RateLimit-Limit` header with the configured limit."""
    url = f"GET http://127.0.0.1:{port}{GATEWAY_PATH}"
    try:
        status, _, _ = http_get(port, path=GATEWAY_PATH)
        if status != 401:
            raise StartError(f"{GATEWAY}: {url} without {GATEWAY_KEY_HEADER} answered {status}, not 401")
        status, body, headers = http_get(port, path=GATEWAY_PATH, headers=target_request(GATEWAY)[1])
    except (OSError, http.client.HTTPException) as e:
        raise StartError(f"{GATEWAY}: {url} failed: {type(e).__name__}: {e}") from e
    limit = headers.get("RateLimit-Limit")
    if status != 200 or body != BODY or limit != str(GATEWAY_RATE):
        raise StartError(
            f"{GATEWAY}: {url} with the key answered {status}, body {body[:80]!r}, RateLimit-Limit {limit!r} "
            f"(expected 200, {BODY!r}, {GATEWAY_RATE})"
        )


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime in clock ticks) for every process we can read."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        rest = raw[raw.rfind(b")") + 2 :].split()
        # rest[0] is field 3 (state); ppid is field 4, utime field 14, stime field 15 (proc(5)).
        try:
            table[int(entry)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
        except (IndexError, ValueError):
            continue
    return table


def tree_pids(root: int) -> list[int]:
    """`root` and its live descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def set_tree_affinity(root: int, cpus: set[int]) -> None:
    """Move every thread of `root` and its descendants to `cpus` (what `taskset -a -p -c CPUS PID` does)."""
    for pid in tree_pids(root):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def process_build(pid: int) -> str:
    """Which data plane a running lbtui process loaded: the compiled module mapped in its memory, or not."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    return "compiled" if re.search(r"lbtui/proxy/client\.[^/\s]*\.so", maps) else "pure Python"


def cpu_busy_seconds(cpu: int) -> tuple[float, float]:
    """(busy, steal) seconds of one CPU since boot, from /proc/stat (busy: user nice system irq softirq)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:9]]
                return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, v[7] / CLK_TCK
    return 0.0, 0.0


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of `root` and all its live descendants (all threads included), in seconds."""
    table = _proc_table()
    if root not in table:
        raise StartError(f"process {root} is gone")
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += table[pid][1]
        stack.extend(children.get(pid, ()))
    return total / CLK_TCK


# ------------------------------------------------------------------------------------------------- wrk


def parse_time_us(text: str) -> float:
    """wrk's time format ('85.00us', '1.23ms', '2.00s', '1.00m', '1.00h') to microseconds."""
    for unit, factor in (("us", 1.0), ("ms", 1e3), ("s", 1e6), ("m", 60e6), ("h", 3600e6)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)  # pragma: no cover - wrk always prints a unit


@dataclass
class WrkResult:
    rps: float
    p50_us: float
    p99_us: float
    requests: int
    seconds: float
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx


def parse_wrk(out: str) -> WrkResult:
    rps = p50 = p99 = seconds = None
    requests = None
    sock: dict[str, int] = {}
    non2xx = 0
    for line in out.splitlines():
        s = line.strip()
        parts = s.split()
        if s.startswith("50%") and len(parts) == 2:
            p50 = parse_time_us(parts[1])
        elif s.startswith("99%") and len(parts) == 2:
            p99 = parse_time_us(parts[1])
        elif " requests in " in s:
            # "123456 requests in 5.00s, 12.34MB read"
            requests = int(parts[0])
            seconds = parse_time_us(parts[3].rstrip(",")) / 1e6
        elif s.startswith("Socket errors:"):
            # "Socket errors: connect 0, read 0, write 0, timeout 0"
            for item in s.split(":", 1)[1].split(","):
                kind, n = item.split()
                sock[kind] = int(n)
        elif s.startswith("Non-2xx or 3xx responses:"):
            non2xx = int(parts[-1])
        elif s.startswith("Requests/sec:"):
            rps = float(parts[1])
    if rps is None or p50 is None or p99 is None or requests is None or seconds is None:
        raise ValueError("could not parse wrk output:\n" + out)
    return WrkResult(rps, p50, p99, requests, seconds, {k: v for k, v in sock.items() if v}, non2xx)


# ---------------------------------------------------------------------------------------------- configs


def nginx_conf(tmp: Path, ports: list[int]) -> str:
    servers = "\n".join(
        f"""    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "hello, world\\n"; }}
    }}"""
        for port in ports
    )
    return f"""# generated by benchmarks/run.py
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
{"user root;" if os.geteuid() == 0 else ""}
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
{servers}
}}
"""


def haproxy_cfg(port: int, backends: list[int]) -> str:
    servers = "\n".join(f"    server b{i} 127.0.0.1:{p}" for i, p in enumerate(backends, 1))
    return f"""# generated by benchmarks/run.py
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend web
    bind 127.0.0.1:{port}
    default_backend bench

backend bench
    balance roundrobin
{servers}
"""


def lbtui_toml(tmp: Path, port: int, admin_port: int, backends: list[int]) -> str:
    out = [
        "# generated by benchmarks/run.py",
        "[[listeners]]",
        'name = "web"',
        f'bind = "127.0.0.1:{port}"',
        'mode = "http"',
        "",
        "[admin]  # explicit free port: never collide with another instance on the default",
        f'bind = "127.0.0.1:{admin_port}"',
        "",
        "[state]  # keep runtime state inside the temp dir",
        f"file = {json.dumps(str(tmp / 'lbtui.state.json'))}",
        "",
        "[services.bench]",
        'algorithm = "round_robin"',
    ]
    for i, p in enumerate(backends, 1):
        out += ["", "[[services.bench.backends]]", f'name = "b{i}"', f'address = "127.0.0.1:{p}"']
    return "\n".join(out) + "\n"


def gateway_toml(tmp: Path, port: int, admin_port: int, backends: list[int]) -> str:
    """lbtui_toml's config plus a consumer and one route over the same service: API key, rate limit."""
    digest = hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()
    out = [
        "",
        "[[consumers]]",
        'name = "bench"',
        f'api_key_sha256 = "{digest}"  # the key wrk sends in {GATEWAY_KEY_HEADER}',
        "",
        "[[routes]]",
        'name = "api"',
        f'match = {{ path_prefix = "{GATEWAY_PREFIX}" }}',
        'service = "bench"',
        f'auth = {{ type = "api_key", header = "{GATEWAY_KEY_HEADER}" }}',
        f'rate_limit = {{ rate = {GATEWAY_RATE}, per = "1s", key = "consumer" }}  # never hit',
    ]
    return lbtui_toml(tmp, port, admin_port, backends) + "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------- the bench


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


class Bench:
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
        need = ["wrk", "nginx"] + (["haproxy"] if "haproxy" in self.targets else [])
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
        if self.dashboard_mode:
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

    def stop_dashboard(self, proc: PtyProc) -> bool:
        proc.stop()
        self.procs.remove(proc)
        return bool(proc.quit_clean)

    # -- start everything

    def start_all(self) -> None:
        b1, b2, hp, lp, admin, gp, gadmin, *dash_ports = free_ports(7 + 2 * len(self.dash_cmds))
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
        argv = [
            *self.pin(self.load_cpu),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            WRK_TIMEOUT,
            "--latency",
            *(arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")),
            f"http://127.0.0.1:{port}{path}",
        ]
        limit = seconds + 30
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired as e:
            raise StartError(f"wrk did not finish within {limit} s: {' '.join(argv)}") from e
        finally:
            if proc.poll() is None:  # timeout or Ctrl-C: never leave wrk behind
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise StartError(f"wrk failed (exit {proc.returncode}): {' '.join(argv)}\n{err or out}")
        try:
            return parse_wrk(out)
        except ValueError as e:
            raise StartError(str(e)) from e

    def measure(self, rnd: int, connections: int, target: str) -> Run:
        for p in self.procs:
            if not p.alive():
                raise StartError(p.died_message("during the benchmark"))
        dash: PtyProc | None = None
        if is_dashboard(target):
            dash = self.start_dashboard(target, rnd, connections)
            proc: Proc | PtyProc = dash
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
        if self.dashboard_mode and target != "direct":
            # Let a fresh dashboard finish its first layout, then sample what the target costs with no load.
            if dash is not None:
                time.sleep(DASH_SETTLE_S)
            c0, t0 = tree_cpu_seconds(proc.pid), time.monotonic()
            time.sleep(IDLE_SAMPLE_S)
            idle_pct = (tree_cpu_seconds(proc.pid) - c0) * 100 / (time.monotonic() - t0)
        shared = self.shares_cpu(connections, target)
        if shared:
            set_tree_affinity(proc.pid, {self.load_cpu})
        try:
            self.wrk(port, connections, WARMUP_S, target)  # warm-up, discarded
            out0 = dash.output_bytes() if dash is not None else 0
            before = tree_cpu_seconds(proc.pid)
            busy0, steal0 = cpu_busy_seconds(self.proxy_cpu)
            t0 = time.monotonic()
            res = self.wrk(port, connections, self.args.duration, target)
            wall = time.monotonic() - t0
            busy1, steal1 = cpu_busy_seconds(self.proxy_cpu)
            after = tree_cpu_seconds(proc.pid)
            out1 = dash.output_bytes() if dash is not None else 0
        finally:
            if shared and proc.alive():
                set_tree_affinity(proc.pid, self.home_cpus(target))
        if not proc.alive():
            raise StartError(proc.died_message("during the benchmark"))
        build = process_build(proc.pid) if target not in ("direct", "haproxy") else ""
        cpu_us = (after - before) * 1e6 / max(res.requests, 1)
        # The target's own CPU counts as "others" only when it runs on the proxy CPU alone; for the unpinned
        # dashboard its share of that CPU is unknown, so "others" is too.
        others: float | None
        if target == "dashboard-unpinned" and self.pinned and not shared:
            others = None
        else:
            own = after - before if target != "direct" and not shared else 0.0
            others = max(0.0, (busy1 - busy0) - own) * 100 / wall
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
            cpu_of="backend nginx" if target == "direct" else target,
            socket_errors=res.socket_errors,
            non_2xx_3xx=res.non_2xx_3xx,
            proxy_cpu_others_pct=others,
            proxy_cpu_steal_pct=(steal1 - steal0) * 100 / wall,
            build=build,
            idle_cpu_pct=idle_pct,
            terminal_bytes=(out1 - out0) if dash is not None else None,
            quit_clean=quit_clean,
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


# ------------------------------------------------------------------------------------------- reporting


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


def report(bench: Bench) -> tuple[dict[str, Any], bool]:
    """Print the tables and ratio lines; return (summary for JSON, all bars passed)."""
    runs, args = bench.runs, bench.args
    summary: dict[str, Any] = {"levels": {}}
    all_pass = True
    print()
    print("=" * 100)
    for c in bench.levels:
        level: dict[str, Any] = {"targets": {}, "ratios": {}, "per_round": []}
        summary["levels"][str(c)] = level
        print(f"c={c}: wrk -t1 -c{c}, {args.duration} s x {args.rounds} rounds; median [min-max] over rounds")
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
        for rnd in range(1, args.rounds + 1):
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
        if not lb:
            print(f"{head}(lbtui not measured: no ratio lines)")
        if lb and pick(runs, GATEWAY, c):
            all_pass &= report_gateway(bench, c, level)
        if lb and any(pick(runs, d, c) for d in bench.dash_cmds):
            all_pass &= report_dashboards(bench, c, level)
        print()
    summary["all_bars_pass"] = all_pass
    return summary, all_pass


def gateway_verdict(rps: float | None, errors: int) -> str:
    return "PASS" if rps is not None and rps >= BAR_GW_RPS_MIN and not errors else "FAIL"


def report_gateway(bench: Bench, c: int, level: dict[str, Any]) -> bool:
    """The gateway line of one level: lbtui-gateway against plain lbtui, from the medians; True if the bar
    holds. Any non-2xx/3xx answer in a gateway run (a 429 would mean the rate limit was hit, a 401 the key
    refused) or socket error fails it."""
    runs, args = bench.runs, bench.args
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
    for rnd in range(1, args.rounds + 1):
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


def report_dashboards(bench: Bench, c: int, level: dict[str, Any]) -> bool:
    """The dashboard lines of one level: each dashboard against headless lbtui; True if the bars hold.

    Only the pinned dashboard is held to the bars (it has the CPU budget `lbtui serve` has); the unpinned one
    is information: what a user gets whose dashboard may use another CPU (here: the load generator's).
    Variants (prototypes) are pinned like the dashboard and shown with a verdict, which --check ignores.
    """
    runs, args = bench.runs, bench.args
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
        for rnd in range(1, args.rounds + 1):
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


def tool_version(argv: list[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (cp.stdout + cp.stderr).strip().splitlines()
    return " ".join(text[0].split()[:3]) if text else "?"


# ------------------------------------------------------------------------------------------------ main


def lbtui_build() -> str:
    """Which build of the data plane the lbtui runs will use: compiled (mypyc) or pure Python."""
    code = "import lbtui, lbtui.proxy.client; print(lbtui.data_plane_build())"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


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
            doc = {
                "meta": {
                    "targets": bench.targets,
                    "connections": args.connections,
                    "rounds": args.rounds,
                    "duration_s": args.duration,
                    "warmup_s": WARMUP_S,
                    "pinned": bench.pinned,
                    "c1_shared_cpu": args.c1_shared_cpu,
                    "pty_size": list(args.pty_size),
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
