"""wrk's output read back (benchmarks/wrk.py): every literal below is what wrk 4.1.0 (Debian) printed for
`wrk -t1 -cN -dDs --timeout T --latency URL`, the options the benchmark runs it with, against nginx
(`return 200` or `return 503`) or small loopback servers that close at once, never answer, or answer after
1.2 s. Nothing here runs wrk."""

from __future__ import annotations

import sys

import pytest

from benchmarks.errors import StartError
from benchmarks.targets import GATEWAY, target_request
from benchmarks.wrk import WRK_TIMEOUT, parse_time_us, parse_wrk, run_wrk, wrk_argv

OK_2C = """\
Running 1s test @ http://127.0.0.1:18111/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    42.61us   50.21us   1.98ms   98.92%
    Req/Sec    45.91k     2.62k   48.19k    90.91%
  Latency Distribution
     50%   38.00us
     75%   44.00us
     90%   54.00us
     99%   94.00us
  49996 requests in 1.10s, 7.68MB read
Requests/sec:  45458.02
Transfer/sec:      6.98MB
"""


OK_WITH_HEADER = """\
Running 1s test @ http://127.0.0.1:18111/api/bench
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    41.28us   56.12us   1.68ms   98.97%
    Req/Sec    48.85k     4.61k   54.21k    72.73%
  Latency Distribution
     50%   36.00us
     75%   40.00us
     90%   52.00us
     99%   98.00us
  53202 requests in 1.10s, 8.17MB read
Requests/sec:  48360.75
Transfer/sec:      7.43MB
"""


MS_200C = """\
Running 1s test @ http://127.0.0.1:18111/
  1 threads and 200 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.03ms    1.14ms  10.14ms   73.28%
    Req/Sec    34.99k     4.57k   41.71k    80.00%
  Latency Distribution
     50%    3.83ms
     75%    4.72ms
     90%    5.48ms
     99%    7.15ms
  35020 requests in 1.02s, 5.38MB read
Requests/sec:  34440.67
Transfer/sec:      5.29MB
"""


SECONDS_SLOW = (
    "Running 3s test @ http://127.0.0.1:18103/\n"
    "  1 threads and 2 connections\n"
    "  Thread Stats   Avg      Stdev     Max   +/- Stdev\n"
    "    Latency     1.20s    95.56us   1.20s    75.00%\n"
    "    Req/Sec     1.00      0.00     1.00    100.00%\n"
    "  Latency Distribution\n"
    "     50%    1.20s \n"
    "     75%    1.20s \n"
    "     90%    1.20s \n"
    "     99%    1.20s \n"
    "  4 requests in 3.01s, 208.00B read\n"
    "Requests/sec:      1.33\n"
    "Transfer/sec:      69.17B\n"
)


MINUTES_SLOW = (
    "Running 1m test @ http://127.0.0.1:18103/\n"
    "  1 threads and 1 connections\n"
    "  Thread Stats   Avg      Stdev     Max   +/- Stdev\n"
    "    Latency     1.20s     1.28ms   1.21s    94.00%\n"
    "    Req/Sec     0.00      0.00     0.00    100.00%\n"
    "  Latency Distribution\n"
    "     50%    1.20s \n"
    "     75%    1.20s \n"
    "     90%    1.20s \n"
    "     99%    1.21s \n"
    "  50 requests in 1.02m, 2.54KB read\n"
    "Requests/sec:      0.82\n"
    "Transfer/sec:      42.61B\n"
)


NON_2XX = """\
Running 1s test @ http://127.0.0.1:18112/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    50.58us  155.32us   4.23ms   99.35%
    Req/Sec    44.85k     3.69k   48.23k    90.91%
  Latency Distribution
     50%   39.00us
     75%   42.00us
     90%   52.00us
     99%  102.00us
  48873 requests in 1.10s, 8.44MB read
  Non-2xx or 3xx responses: 48873
Requests/sec:  44428.83
Transfer/sec:      7.67MB
"""


READ_ERRORS = """\
Running 1s test @ http://127.0.0.1:18101/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 1.10s, 0.00B read
  Socket errors: connect 0, read 5104, write 0, timeout 0
Requests/sec:      0.00
Transfer/sec:       0.00B
"""


TIMEOUTS = """\
Running 3s test @ http://127.0.0.1:18103/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     1.00      0.00     1.00    100.00%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  4 requests in 3.01s, 208.00B read
  Socket errors: connect 0, read 0, write 0, timeout 4
Requests/sec:      1.33
Transfer/sec:      69.13B
"""


REFUSED = """\
unable to connect to 127.0.0.1:18199 Connection refused
"""


@pytest.mark.parametrize(
    ("out", "rps", "p50_us", "p99_us", "requests", "seconds"),
    [
        (OK_2C, 45458.02, 38.0, 94.0, 49996, 1.10),
        (OK_WITH_HEADER, 48360.75, 36.0, 98.0, 53202, 1.10),
        (MS_200C, 34440.67, 3830.0, 7150.0, 35020, 1.02),
        (SECONDS_SLOW, 1.33, 1.2e6, 1.2e6, 4, 3.01),
        (MINUTES_SLOW, 0.82, 1.2e6, 1.21e6, 50, 61.2),
        (NON_2XX, 44428.83, 39.0, 102.0, 48873, 1.10),
        (READ_ERRORS, 0.0, 0.0, 0.0, 0, 1.10),
        (TIMEOUTS, 1.33, 0.0, 0.0, 4, 3.01),
    ],
    ids=["us", "us-path", "ms", "s", "m", "non-2xx", "read-errors", "timeouts"],
)
def test_the_figures_are_read_in_microseconds_and_seconds(out, rps, p50_us, p99_us, requests, seconds):
    res = parse_wrk(out)
    assert res.rps == pytest.approx(rps)
    assert res.p50_us == pytest.approx(p50_us)
    assert res.p99_us == pytest.approx(p99_us)
    assert res.requests == requests
    assert res.seconds == pytest.approx(seconds)


def test_a_clean_run_has_no_errors():
    res = parse_wrk(OK_2C)
    assert res.socket_errors == {}
    assert res.non_2xx_3xx == 0
    assert res.errors == 0


@pytest.mark.parametrize(
    ("out", "socket_errors", "non_2xx_3xx"),
    [(NON_2XX, {}, 48873), (READ_ERRORS, {"read": 5104}, 0), (TIMEOUTS, {"timeout": 4}, 0)],
    ids=["non-2xx", "read-errors", "timeouts"],
)
def test_error_lines_are_counted_and_the_zero_kinds_left_out(out, socket_errors, non_2xx_3xx):
    res = parse_wrk(out)
    assert res.socket_errors == socket_errors
    assert res.non_2xx_3xx == non_2xx_3xx
    assert res.errors == sum(socket_errors.values()) + non_2xx_3xx > 0


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("85.00us", 85.0),
        ("1.23ms", 1230.0),
        ("2.00s", 2e6),
        ("1.02m", 61.2e6),
        ("1.50h", 5400e6),
        ("0.00us", 0.0),
    ],
)
def test_each_time_unit(text, us):
    assert parse_time_us(text) == pytest.approx(us)


def test_output_without_results_is_refused_with_the_output():
    with pytest.raises(ValueError, match="could not parse wrk output") as e:
        parse_wrk(REFUSED)
    assert "Connection refused" in str(e.value)


@pytest.mark.parametrize("missing", ["50%", "99%", " requests in ", "Requests/sec:"])
def test_a_missing_figure_is_refused(missing):
    out = "\n".join(line for line in OK_2C.splitlines() if missing not in line)
    with pytest.raises(ValueError, match="could not parse wrk output"):
        parse_wrk(out)


def test_the_command_line_sends_the_targets_path_and_headers():
    path, headers = target_request(GATEWAY)
    argv = wrk_argv(8080, 50, 10, path, headers)
    assert argv == [
        "wrk",
        "-t1",
        "-c50",
        "-d10s",
        "--timeout",
        WRK_TIMEOUT,
        "--latency",
        "-H",
        "X-API-Key: lbtui-bench-key",
        "http://127.0.0.1:8080/api/bench",
    ]
    assert wrk_argv(9, 1, 3, *target_request("lbtui"))[-1] == "http://127.0.0.1:9/"
    assert "-H" not in wrk_argv(9, 1, 3, *target_request("lbtui"))


def _printing(text: str, code: int = 0) -> list[str]:
    """A stand-in for wrk: prints `text` on stdout (stderr too when it fails) and exits with `code`."""
    program = f"import sys; sys.stdout.write({text!r}); sys.stderr.write({text!r} if {code} else ''); sys.exit({code})"
    return [sys.executable, "-c", program]


def test_running_reads_what_wrk_printed():
    assert run_wrk(_printing(NON_2XX), 1).non_2xx_3xx == 48873


def test_a_failing_wrk_is_a_start_error_with_its_message():
    with pytest.raises(StartError, match=r"wrk failed \(exit 1\)") as e:
        run_wrk(_printing(REFUSED, code=1), 1)
    assert "unable to connect to 127.0.0.1:18199 Connection refused" in str(e.value)


def test_unreadable_output_is_a_start_error():
    with pytest.raises(StartError, match="could not parse wrk output"):
        run_wrk(_printing("Running 1s test\n"), 1)
