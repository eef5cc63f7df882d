"""wrk: the command line of a run and what its output says (req/s, p50, p99, requests, errors).

The runs use `--latency`, so the output has the percentile lines read here; wrk prints times with a unit
(us, ms, s, m, h) and counts socket errors (connect, read, write, timeout) and non-2xx/3xx answers, which a
run's `errors` adds up. Output it cannot read is a ValueError, a wrk that fails or hangs a StartError.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

from benchmarks.errors import StartError

WARMUP_S = 1
WRK_TIMEOUT = "5s"  # per request, inside wrk; a slower answer counts as a timeout error


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


def wrk_argv(port: int, connections: int, seconds: int, path: str, headers: dict[str, str]) -> list[str]:
    """One thread, `connections` connections for `seconds` s, the latency percentiles, the given headers."""
    return [
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


def run_wrk(argv: list[str], seconds: int) -> WrkResult:
    """Run wrk (`argv`, possibly behind taskset) for a run of `seconds` s and read its output; StartError if it
    fails, prints what cannot be read, or is not done 30 s after the run's end (it is killed then)."""
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
