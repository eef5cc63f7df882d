"""`lbtui ctl` against a running `lbtui serve`, both as a user runs them (subprocesses)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.e2e.test_serve import stop
from tests.impostors import NGINX_STATIC, impostors, nginx, silent

ROOT = Path(__file__).resolve().parents[2]


async def run_ctl(admin: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`lbtui ctl --admin ADMIN ARGS...` as a process: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lbtui",
        "ctl",
        "--admin",
        admin,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str  # the listener
    admin: str  # the admin API
    env: dict[str, str]

    async def ctl(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """`lbtui ctl --admin URL ARGS...`: (exit code, stdout, stderr). Async: the test's backends go on."""
        return await run_ctl(self.admin, *args, env=env or self.env)


async def read_lines_until(
    proc: subprocess.Popen[str], wanted: list[str], timeout: float = 15.0
) -> dict[str, str]:
    """The first stderr line with each of `wanted`, read until all came."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    found: dict[str, str] = {}
    assert proc.stderr is not None
    seen = []
    while loop.time() < deadline and len(found) < len(wanted):
        line = await loop.run_in_executor(None, proc.stderr.readline)
        if not line:
            break
        seen.append(line)
        for w in wanted:
            if w in line and w not in found:
                found[w] = line.split(" on ", 1)[1].strip()
    assert len(found) == len(wanted), f"serve printed: {''.join(seen)}"
    return found


def start_serve(path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lbtui", "serve", "--config", str(path), "--grace", "5s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    procs: list[subprocess.Popen[str]] = []

    async def start(
        backends: dict[str, tuple[str, str]], admin: str = "", env: dict[str, str] | None = None
    ) -> Served:
        lines = [
            '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n',
            # Port 0: serve says which port it got (a port chosen here could be taken before serve binds it).
            f'[admin]\nbind = "127.0.0.1:0"\n{admin}\n',
            "[services.app]\n",
        ]
        if any(group == "green" for _, group in backends.values()):
            lines.append("split = { blue = 100, green = 0 }\n")
        for name, (address, group) in backends.items():
            lines.append(
                f'\n[[services.app.backends]]\nname = "{name}"\naddress = "{address}"\ngroup = "{group}"\n'
            )
        path = tmp_path / "lbtui.toml"
        path.write_text("".join(lines))
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("LBTUI_ADMIN", None)
        full_env.pop("LBTUI_ADMIN_TOKEN", None)
        proc = start_serve(path, full_env)
        procs.append(proc)
        found = await read_lines_until(proc, ["listener web on ", "admin API on "])
        admin_url = found["admin API on "]
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*", admin_url), admin_url
        ctl_env = {k: v for k, v in full_env.items() if k not in (env or {})}
        return Served(proc, found["listener web on "], admin_url, ctl_env)

    yield start
    for proc in procs:
        stop(proc)


@pytest.mark.slow
async def test_ctl_steers_a_running_serve(
    serve: Callable[..., Awaitable[Served]], backends: Any, closed_port: Callable[[], int]
) -> None:
    blue = await backends("blue-1")
    green = await backends("green-1")
    served = await serve({"blue-1": (blue.address, "blue"), "green-1": (green.address, "green")})

    code, out, err = await served.ctl("state")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("app: round_robin, split blue=100 green=0, ")
    assert out.splitlines()[1].split() == [
        "NAME",
        "GROUP",
        "STATE",
        "HEALTH",
        "WEIGHT",
        "IN-FLIGHT",
        "REQ/S",
        "P99",
    ]
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("blue-1"))
    assert row[:6] == ["blue-1", "blue", "ready", "up", "1", "0"]
    idle = next(line.split() for line in out.splitlines() if line.strip().startswith("green-1"))
    assert idle[-1] == "-"  # no request in its window: no p99 (not "0.00 ms")

    code, out, _ = await served.ctl("--json", "state")
    state = json.loads(out)
    assert state["services"][0]["backends"][1]["name"] == "green-1"

    steps = [
        (("weight", "blue-1", "5"), "blue-1: weight 1 -> 5"),
        (("disable", "green-1"), "green-1: state ready -> maint"),
        (("enable", "green-1"), "green-1: state maint -> ready"),
        (("maint", "green-1"), "green-1: state ready -> maint"),
        (
            ("add", "app", "blue-2", blue.address, "--group", "blue", "--weight", "2"),
            f"blue-2: added to app ({blue.address}, group blue, weight 2)",
        ),
        (("remove", "blue-2"), "blue-2: removing (no new traffic; gone once nothing is in flight)"),
        (("algorithm", "app", "least_connections"), "app: algorithm round_robin -> least_connections"),
        (("split", "app", "blue=90", "green=10"), "app: split blue=100 green=0 -> blue=90 green=10"),
        (("flip", "app"), "app: flip blue=90 green=10 -> blue=10 green=90"),
    ]
    for args, expected in steps:
        code, out, err = await served.ctl(*args)
        assert (code, out.strip(), err) == (0, expected, ""), args

    code, out, _ = await served.ctl("events", "--limit", "2")
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("ctl: app: flip blue=90 green=10 -> blue=10 green=90")
    code, out, _ = await served.ctl("--json", "events", "--limit", "1")
    assert json.loads(out)["events"][0]["actor"] == "ctl"

    # Errors: the API's message on stderr, exit 1, never a traceback.
    for args, message in [
        (("drain", "nope"), "lbtui ctl: no backend named 'nope'\n"),
        (("weight", "blue-1", "5000"), "lbtui ctl: weight must be an integer from 0 to 1000, got 5000\n"),
        (("algorithm", "app", "fastest"), "lbtui ctl: 'fastest' is not an algorithm"),
        (("flip", "nope"), "lbtui ctl: no service named 'nope'"),
    ]:
        code, out, err = await served.ctl(*args)
        assert (code, out) == (1, ""), args
        assert err.startswith(message), err
    code, _, err = await served.ctl("split", "app", "blue")
    assert code == 1
    assert "GROUP=WEIGHT" in err
    # Another --admin than the fixture's: run_ctl with it alone (a second --admin would make a fleet of two).
    code, _, err = await run_ctl(f"http://127.0.0.1:{closed_port()}", "state", env=served.env)
    assert code == 1
    assert err.startswith("lbtui ctl: cannot reach the admin API at http://127.0.0.1:")
    assert "Traceback" not in err


async def held_backend(scripted: Any, gate: asyncio.Event) -> Any:
    """A backend that answers each request once `gate` is set: the request stays in flight until the test says."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Any) -> None:
        for _ in range(100):
            await upstream.read_request(reader)
            await gate.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    return await scripted(script)


async def test_drain_wait_returns_once_the_slow_request_finishes(
    serve: Callable[..., Awaitable[Served]], scripted: Any
) -> None:
    gate = asyncio.Event()
    slow = await held_backend(scripted, gate)
    served = await serve({"slow": (slow.address, "blue")})
    async with httpx.AsyncClient(base_url=served.url, timeout=20) as http:
        request = asyncio.create_task(http.get("/"))
        await wait_for(lambda: slow.received, what="the slow request to reach the backend")
        ctl = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "lbtui", "ctl", "--admin", served.admin],
            *["drain", "slow", "--wait", "--timeout", "15s"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=served.env,
            cwd=ROOT,
        )
        try:
            assert ctl.stdout is not None
            lines = []
            async with asyncio.timeout(30):
                while "slow: 1 in flight\n" not in lines:  # ctl is waiting: now the request may end
                    line = (await ctl.stdout.readline()).decode()
                    assert line, f"ctl ended early: {lines}"
                    lines.append(line)
            assert not request.done()
            gate.set()
            async with asyncio.timeout(30):
                out, err = await ctl.communicate()
        finally:
            gate.set()
            if ctl.returncode is None:
                ctl.kill()
                await ctl.wait()
        assert request.done()  # ctl returned only after the request had its answer
        assert (await request).status_code == 200
    assert (ctl.returncode, err.decode()) == (0, "")
    assert "".join(lines).splitlines() + out.decode().splitlines() == [
        "slow: state ready -> drain",
        "slow: 1 in flight",
        "slow: 0 in flight",
        "slow: drained",
    ]
    code, out, err = await served.ctl("state")
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("slow"))
    assert (code, err, row[2]) == (0, "", "drained")  # lbtui's engine counts exactly: one read says it


async def test_drain_wait_times_out_with_exit_3(
    serve: Callable[..., Awaitable[Served]], scripted: Any
) -> None:
    gate = asyncio.Event()
    slow = await held_backend(scripted, gate)
    served = await serve({"slow": (slow.address, "blue")})
    async with httpx.AsyncClient(base_url=served.url, timeout=20) as http:
        request = asyncio.create_task(http.get("/"))
        await wait_for(lambda: slow.received, what="the slow request to reach the backend")
        try:
            code, out, err = await served.ctl("drain", "slow", "--wait", "--timeout", "300ms")
            assert not request.done()  # held by the backend until the gate opens
        finally:
            gate.set()
        assert code == 3
        assert out.splitlines() == ["slow: state ready -> drain", "slow: 1 in flight"]
        assert err == "lbtui ctl: slow: still 1 in flight after 0.3s\n"
        assert (await request).status_code == 200  # the drained backend still finishes what it had


async def test_ctl_sends_the_token(serve: Callable[..., Awaitable[Served]]) -> None:
    served = await serve(
        {"a": ("127.0.0.1:1", "blue")},
        admin='token_env = "ADMIN_TOKEN_FOR_TEST"',
        env={"ADMIN_TOKEN_FOR_TEST": "t0k"},
    )
    code, _, err = await served.ctl("state")
    assert code == 1
    assert err == "lbtui ctl: a valid token is required: Authorization: Bearer <token>\n"
    code, _, _ = await served.ctl("--token-env", "MY_TOKEN", "state", env={**served.env, "MY_TOKEN": "t0k"})
    assert code == 0
    code, _, _ = await served.ctl("state", env={**served.env, "LBTUI_ADMIN_TOKEN": "t0k"})
    assert code == 0


async def test_ramp_undo_and_requests(serve: Callable[..., Awaitable[Served]], backends: Any) -> None:
    blue = await backends("blue-1")
    green = await backends("green-1")
    served = await serve({"blue-1": (blue.address, "blue"), "green-1": (green.address, "green")})
    async with httpx.AsyncClient(base_url=served.url) as http:
        assert (await http.get("/seen-by-ctl")).status_code == 200
    code, out, err = await served.ctl("requests", "--limit", "5")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split()[:4] == ["TIME", "CLIENT", "METHOD", "TARGET"]
    assert "/seen-by-ctl" in out
    code, out, _ = await served.ctl("--json", "requests", "--limit", "1")
    assert json.loads(out)["requests"][0]["target"] == "/seen-by-ctl"

    assert (await served.ctl("weight", "blue-1", "4"))[0] == 0
    code, out, err = await served.ctl("undo")
    assert (code, err) == (0, "")
    assert "blue-1" in out
    assert "4 -> 1" in out
    code, out, err = await served.ctl("ramp", "app")
    assert (code, err) == (0, ""), out
    assert out.startswith("app: ")
    code, out, err = await served.ctl("ramp", "app", "--abort")
    assert (code, err) == (0, ""), out
    code, _, err = await served.ctl("ramp", "nope")
    assert code == 1
    assert err.startswith("lbtui ctl: no service named 'nope'")


@pytest.mark.slow
async def test_ctl_and_attach_refuse_what_is_not_the_admin_api(
    serve: Callable[..., Awaitable[Served]], backends: Any, tmp_path: Path
) -> None:
    """The issue's case, as a deploy script meets it: `--admin` given the listener's URL. `drain` printed
    `None: None none -> none` and exited 0; `attach` said `internal error: KeyError: 'time'`."""
    blue = await backends("blue-1")
    served = await serve({"blue-1": (blue.address, "blue")})
    listener = served.url
    line = f"{listener} is not an lbtui admin API (it answered 200 application/json)\n"
    for args in (
        ("drain", "blue-1"),
        ("drain", "blue-1", "--wait"),
        ("state",),
        ("--json", "weight", "blue-1", "3"),
    ):
        assert await run_ctl(listener, *args, env=served.env) == (1, "", f"lbtui ctl: {line}"), args
    code, out, _ = await served.ctl("--json", "state")  # the real API: nothing changed
    assert code == 0
    assert [(b["admin_state"], b["weight"]) for b in json.loads(out)["services"][0]["backends"]] == [
        ("ready", 1)
    ]
    attach = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lbtui",
        "attach",
        listener,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=served.env,
        cwd=ROOT,
    )
    out_bytes, err_bytes = await asyncio.wait_for(attach.communicate(), 30)  # no dashboard: it ends by itself
    assert (attach.returncode, out_bytes.decode(), err_bytes.decode()) == (1, "", f"lbtui: attach: {line}")

    async with nginx(tmp_path, {"static": NGINX_STATIC}) as web:
        code, out, err = await run_ctl(web.urls["static"], "drain", "blue-1", env=served.env)
        assert (code, out) == (1, "")
        assert re.fullmatch(
            re.escape(
                f"lbtui ctl: {web.urls['static']} is not an lbtui admin API (it answered 404 text/html from "
            )
            + r"nginx/[\d.]+\)\n",
            err,
        ), err

    async with impostors() as start:
        silent_server = await start(silent)
        began = time.monotonic()
        code, out, err = await run_ctl(
            silent_server.url, "--request-timeout", "500ms", "drain", "blue-1", env=served.env
        )
        assert time.monotonic() - began < 10.0  # the timeout, and a Python start
        assert (code, out) == (1, "")
        assert err.startswith(f"lbtui ctl: no answer from {silent_server.url} within 0.5s")
        assert err.count("\n") == 1
