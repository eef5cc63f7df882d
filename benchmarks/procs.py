"""The processes of a benchmark: starting and stopping them (each in its own session, so Ctrl-C reaches the
runner, not them; nothing a process started outlives its stop()), dashboards on pseudo-terminals, waiting until
a target answers, pinning a process tree to CPUs, and what build of lbtui a process runs.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.cpu import tree_pids
from benchmarks.errors import StartError
from benchmarks.targets import (
    BODY,
    GATEWAY,
    GATEWAY_KEY_HEADER,
    GATEWAY_PATH,
    GATEWAY_RATE,
    REPO,
    target_request,
)

READY_DEADLINE_S = 10.0
DASH_QUIT_DEADLINE_S = 10.0  # how long a dashboard may take to quit with `q` then `y`


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

    def shows(self, text: str) -> bool:
        """Whether `text` is in what it has written lately (escape sequences removed)."""
        with self._lock:
            raw = bytes(self._tail)
        return text in _ESCAPES.sub(b"", raw).decode("utf-8", "replace")

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


def build_in_maps(maps: str) -> str:
    """Which data plane a process loaded, from the text of its /proc/PID/maps: "compiled" if the compiled
    group's shared library (lbtui/data_plane__mypyc.*.so: every compiled module's code, whatever the modules
    are named) is mapped, else "pure Python"."""
    return "compiled" if re.search(r"lbtui/data_plane__mypyc\.[^/\s]*\.so", maps) else "pure Python"


def process_build(pid: int) -> str:
    """Which data plane a running lbtui process loaded: the compiled module mapped in its memory, or not."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    return build_in_maps(maps)


def tool_version(argv: list[str]) -> str:
    """The first three words of what `argv` prints (e.g. `wrk --version`), or "?"."""
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (cp.stdout + cp.stderr).strip().splitlines()
    return " ".join(text[0].split()[:3]) if text else "?"


def lbtui_build() -> str:
    """Which build of the data plane the lbtui runs will use: compiled (mypyc) or pure Python."""
    code = "import lbtui, lbtui.proxy.connection; print(lbtui.data_plane_build())"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"
