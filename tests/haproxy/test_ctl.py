"""`lbtui ctl --admin haproxy://...` against a real HAProxy: the admin API's output and exit codes, each change read
back with the Runtime API client. Each run is a process of its own (`python -m lbtui`), as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from lbtui.demo.backends import Profile
from lbtui.haproxy.runtime import ServerState
from tests.conftest import DEADLINE
from tests.haproxy.conftest import HAProxy
from tests.haproxy.test_runtime import get

ROOT = Path(__file__).resolve().parents[2]


async def ctl(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LBTUI_ADMIN", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lbtui",
        "ctl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(DEADLINE * 3):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def server_state(h: HAProxy, server: str) -> ServerState:
    return next(s for s in await h.client().show_servers_state("app") if s.server == server)


async def test_state_json_has_the_admin_apis_shape(haproxy):
    h = await haproxy(["a", "b"])
    for _ in range(4):
        assert (await get(h.frontend_port))[0] == 200
    code, out, err = await ctl("--admin", str(h.unix), "state", "--json")
    assert (code, err) == (0, "")
    state = json.loads(out)
    assert state["version"] == 1
    [app] = state["services"]
    assert (app["name"], app["algorithm"], app["requests"]) == ("app", "roundrobin", 4)
    assert [(b["name"], b["admin_state"], b["health"], b["requests"]) for b in app["backends"]] == [
        ("a", "ready", "no check", 2),
        ("b", "ready", "no check", 2),
    ]
    assert app["backends"][0]["p99_ms"] is None  # no percentile from HAProxy
    assert isinstance(app["backends"][0]["latency_avg_ms"], float)

    code, out, err = await ctl("--admin", str(h.tcp), "state")
    assert (code, err) == (0, "")
    assert out.startswith("app: roundrobin, ")
    assert "p99" not in out.lower()  # HAProxy gives no percentile: its average, under its own name
    header, a, b = out.splitlines()[1:4]
    assert header.split() == [
        *("NAME", "GROUP", "STATE", "HEALTH", "WEIGHT", "IN-FLIGHT", "REQ/S"),
        *("AVG", "MS", "(HAPROXY,", "LAST", "1024)"),
    ]
    assert a.split()[:4] == ["a", "default", "ready", "no"]
    assert b.split()[0] == "b"


async def test_drain_enable_maint_weight_and_events(haproxy):
    h = await haproxy(["a", "b"])
    sock = str(h.unix)
    code, out, err = await ctl("--admin", sock, "drain", "a")
    assert (code, out, err) == (0, "a: state ready -> drain\n", "")
    assert (await server_state(h, "a")).draining
    code, out, _ = await ctl("--admin", sock, "maint", "app/a")
    assert (code, out) == (0, "app/a: state drain -> maint\n")
    assert (await server_state(h, "a")).in_maint
    code, out, _ = await ctl("--admin", sock, "enable", "a")
    assert (code, out) == (0, "a: state maint -> ready\n")
    code, out, _ = await ctl("--admin", sock, "weight", "b", "9")
    assert (code, out) == (0, "b: weight 1 -> 9\n")
    assert (await server_state(h, "b")).uweight == 9
    code, out, _ = await ctl("--admin", sock, "drain", "b", "--wait", "--timeout", "5s")
    assert code == 0
    assert out.endswith("b: 0 in flight\nb: drained\n")

    # Each ctl run is a process of its own; the audit file of this HAProxy (under the test's tmp_path) is
    # shared: a later run lists what the earlier ones did, newest first, and none of it twice.
    code, out, err = await ctl("--admin", sock, "events")
    assert (code, err) == (0, "")
    assert [line.split("  ", 2)[2] for line in out.splitlines()] == [
        "ctl: b: state ready -> drain",
        "ctl: b: weight 1 -> 9",
        "ctl: a: state maint -> ready",
        "ctl: app/a: state drain -> maint",
        "ctl: a: state ready -> drain",
    ]


async def test_refusals_and_unreachable_are_one_line_and_exit_1(haproxy, tmp_path):
    h = await haproxy(["a"])
    code, out, err = await ctl("--admin", str(h.unix), "drain", "nosuch")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "no server named 'nosuch'" in err
    code, _, err = await ctl("--admin", str(h.unix), "algorithm", "app", "leastconn")
    assert code == 1
    assert err.count("\n") == 1
    assert "HAProxy cannot change `balance` at runtime" in err
    code, out, err = await ctl("--admin", str(h.unix), "requests")
    assert (code, out) == (1, "")
    assert "the request log is not wired" in err
    code, _, err = await ctl("--admin", str(h.unix), "undo")
    assert code == 1
    assert err.count("\n") == 1
    assert "nothing to undo" in err
    code, _, err = await ctl("--admin", str(h.unix), "weight", "a", "300")
    assert code == 1
    assert "0-256" in err
    code, _, err = await ctl("--admin", f"haproxy://{tmp_path}/none.sock", "state")
    assert code == 1
    assert err.count("\n") == 1
    assert "unreachable" in err
    code, _, err = await ctl("--admin", "haproxy://nowhere", "state")
    assert code == 1
    assert err.count("\n") == 1
    assert "not a HAProxy Runtime API address" in err
    assert "Traceback" not in err


async def test_add_and_remove(haproxy, backends):
    h = await haproxy(["a"])
    extra = await backends("c")
    code, out, err = await ctl("--admin", str(h.unix), "add", "app", "c", extra.address, "--weight", "4")
    assert (code, err) == (0, "")
    assert out == f"c: added to app ({extra.address}, group default, weight 4)\n"
    state = await server_state(h, "c")
    assert state.uweight == 4
    assert not state.in_maint
    code, out, err = await ctl("--admin", str(h.unix), "add", "app", "d", "999.1.1.1:80")
    assert code == 1
    assert "not a server address" in err
    code, out, err = await ctl("--admin", str(h.unix), "remove", "c")
    assert (code, err) == (0, "")
    assert out.startswith("c: removing")
    # The removal finished before ctl exited: HAProxy has no server c any more.
    assert [s.server for s in await h.client().show_servers_state("app")] == ["a"]


@pytest.mark.slow
async def test_drain_wait_counts_down_and_times_out_with_exit_3(haproxy):
    h = await haproxy(["a", "b"])
    # Longer than the first ctl run takes under load: its 0.2 s must pass with both still in flight.
    h.servers["a"].profile = Profile(latency=5.0)
    requests = [asyncio.create_task(get(h.frontend_port)) for _ in range(4)]  # 2 of them on a, for 5 s
    client = h.client()

    async def a_busy() -> bool:
        rows = await client.show_stat()
        return next(r for r in rows if r.svname == "a").scur == 2

    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not await a_busy():
        assert loop.time() < deadline, "2 requests in flight on a"
    code, out, err = await ctl("--admin", str(h.unix), "drain", "a", "--wait", "--timeout", "0.2s")
    assert code == 3
    assert out.startswith("a: state ready -> drain\na: 2 in flight\n")
    assert err == "lbtui ctl: a: still 2 in flight after 0.2s\n"
    code, out, err = await ctl("--admin", str(h.unix), "drain", "a", "--wait", "--timeout", "20s")
    assert (code, err) == (0, "")
    assert out.endswith("a: 0 in flight\na: drained\n")
    assert [(await task)[0] for task in requests] == [200] * 4  # none failed
