"""Reload of a running `lbtui serve` (subprocess): SIGHUP, `POST /api/v1/reload` and `lbtui ctl reload`."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_ctl import Served, serve  # noqa: F401 (serve is a fixture)

BAD = '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n[services.app]\nalgorithm = "fastest"\n'


async def line_with(proc: subprocess.Popen[str], text: str, timeout: float = 15.0) -> list[str]:
    """stderr lines up to and including the first that holds `text`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    assert proc.stderr is not None
    seen: list[str] = []
    while loop.time() < deadline:
        line = await asyncio.wait_for(
            loop.run_in_executor(None, proc.stderr.readline), max(0.1, deadline - loop.time())
        )
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no line with {text!r}; serve printed: {''.join(seen)}")


def add_backend(path: Path, name: str, address: str) -> None:
    path.write_text(
        path.read_text()
        + f'\n[[services.app.backends]]\nname = "{name}"\naddress = "{address}"\ngroup = "blue"\n'
    )


async def backends_seen(url: str, count: int) -> set[str]:
    async with httpx.AsyncClient() as client:
        return {(await client.get(f"{url}/")).headers["X-Backend"] for _ in range(count)}


async def test_sighup_reloads_a_good_file_and_refuses_a_bad_one(
    serve: Callable[..., Awaitable[Served]],  # noqa: F811 (the fixture)
    backends: Any,
    tmp_path: Path,
) -> None:
    one, two = await backends("one"), await backends("two")
    served = await serve({"one": (one.address, "blue")})
    path = tmp_path / "lbtui.toml"
    add_backend(path, "two", two.address)
    served.proc.send_signal(signal.SIGHUP)
    lines = await line_with(served.proc, "reloaded ")
    assert "1 change" in lines[-1]
    await line_with(served.proc, "backend two: added")
    assert await backends_seen(served.url, 6) == {"one", "two"}

    good = path.read_text()
    path.write_text(BAD)
    served.proc.send_signal(signal.SIGHUP)
    lines = await line_with(served.proc, "reload refused")
    await line_with(served.proc, "services.app.algorithm")
    assert served.proc.poll() is None  # still serving, the running config intact
    assert await backends_seen(served.url, 6) == {"one", "two"}
    path.write_text(good)


async def test_api_and_ctl_reload(
    serve: Callable[..., Awaitable[Served]],  # noqa: F811 (the fixture)
    backends: Any,
    tmp_path: Path,
) -> None:
    one, two = await backends("one"), await backends("two")
    served = await serve({"one": (one.address, "blue")})
    path = tmp_path / "lbtui.toml"
    async with httpx.AsyncClient() as client:
        nothing = await client.post(f"{served.admin}/api/v1/reload")
        assert nothing.status_code == 200
        assert nothing.json()["changes"] == []
    add_backend(path, "two", two.address)
    code, out, err = await served.ctl("reload")
    assert code == 0, err
    assert "reloaded" in out
    assert "backend two: added" in out
    assert await backends_seen(served.url, 6) == {"one", "two"}
    code, out, _ = await served.ctl("events")
    assert "reload" in out

    good = path.read_text()
    path.write_text(BAD)
    code, out, err = await served.ctl("reload")
    assert code == 1
    assert "reload refused" in err
    assert "services.app.algorithm" in err
    async with httpx.AsyncClient() as client:
        refused = await client.post(f"{served.admin}/api/v1/reload")
    assert refused.status_code == 400
    body = refused.json()
    assert "error" in body
    assert body["issues"][0]["key_path"] == "services.app.algorithm"
    assert set(body["issues"][0]) >= {"file", "key_path", "message"}
    code, out, _ = await served.ctl("state")
    assert "two" in out  # nothing changed
    path.write_text(good)
    code, out, _ = await served.ctl("reload")
    assert code == 0
    assert "nothing changed" in out
