"""RemoteController against a real `lbtui serve` (a process of its own, as `lbtui attach` meets it): the polled
snapshot, the events after the newest kept, a change and each class of refusal, and a restart of the server
(the connection lost, said, then found again, with the new server's events)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from lbtui.admin.remote import RemoteController
from lbtui.core.control import Conflict, ControlError, Invalid, NotFound
from tests.conftest import wait_for
from tests.e2e.test_ctl import read_lines_until, run_ctl, start_serve
from tests.e2e.test_serve import stop


def write_config(path: Path, admin_bind: str, blue: str, green: str) -> None:
    path.write_text(
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n'
        f'[admin]\nbind = "{admin_bind}"\n'
        "[services.app]\nsplit = { blue = 90, green = 10 }\n"
        f'[[services.app.backends]]\nname = "blue-1"\naddress = "{blue}"\ngroup = "blue"\n'
        f'[[services.app.backends]]\nname = "green-1"\naddress = "{green}"\ngroup = "green"\n'
    )


async def serve(path: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LBTUI_ADMIN", None)
    env.pop("LBTUI_ADMIN_TOKEN", None)
    proc = start_serve(path, env)
    found = await read_lines_until(proc, ["admin API on "])
    return proc, found["admin API on "]


@pytest.mark.slow
async def test_remote_controller_on_a_real_serve_and_its_restart(backends, tmp_path: Path) -> None:
    blue, green = await backends("blue-1"), await backends("green-1")
    path = tmp_path / "lbtui.toml"
    write_config(path, "127.0.0.1:0", blue.address, green.address)
    proc, url = await serve(path)
    remote = RemoteController(url, timeout=2.0, poll_seconds=0.1)
    try:
        # The first snapshot waits for the first poll; the next ones are the newest polled, at once.
        snapshot = await asyncio.to_thread(remote.snapshot)
        assert [b.name for b in snapshot.services[0].backends] == ["blue-1", "green-1"]
        assert "connection_lost" not in snapshot.extra
        assert remote.events() == []

        # Changes made elsewhere come by polling (`?since=`), each once, in order, under their actor.
        assert (await run_ctl(url, "weight", "green-1", "3"))[0] == 0
        await wait_for(lambda: len(remote.events()) == 1, what="ctl's change polled")
        event = await asyncio.to_thread(remote.drain, "blue-1", "key")
        assert (event.actor, event.action, event.target, event.after) == ("key", "state", "blue-1", "drain")
        # The snapshot after a change shows it (the change polls before it answers).
        assert remote.snapshot().backend("blue-1").admin_state == "drain"
        assert (await run_ctl(url, "enable", "blue-1"))[0] == 0
        await wait_for(lambda: len(remote.events()) == 3, what="the third event")
        kept = remote.events()
        assert [(e.actor, e.action, e.target) for e in kept] == [
            ("ctl", "state", "blue-1"),
            ("key", "state", "blue-1"),
            ("ctl", "weight", "green-1"),
        ]
        assert [e.id for e in kept] == sorted({e.id for e in kept}, reverse=True)  # no event twice
        await wait_for(
            lambda: remote.snapshot().backend("blue-1").admin_state == "ready", what="ctl's enable"
        )

        # Refusals keep the class the in-process controller raises, with the server's message.
        with pytest.raises(NotFound, match="no backend named 'nope'"):
            await asyncio.to_thread(remote.drain, "nope")
        with pytest.raises(Conflict, match="no canary ramp is under way"):
            await asyncio.to_thread(remote.abort_ramp, "app")
        with pytest.raises(Invalid, match="weight must be an integer from 0 to 1000"):
            await asyncio.to_thread(remote.set_weight, "blue-1", 5000)

        # The server stops: the last snapshot stays, marked with why; changes say why; nothing raises.
        port = url.rsplit(":", 1)[1]
        stop(proc)
        await wait_for(lambda: "connection_lost" in remote.snapshot().extra, what="the lost server")
        lost = remote.snapshot()
        assert f"cannot reach the admin API at {url}" in lost.extra["connection_lost"]
        assert [b.name for b in lost.services[0].backends] == ["blue-1", "green-1"]
        with pytest.raises(ControlError, match="cannot reach the admin API"):
            await asyncio.to_thread(remote.drain, "blue-1")
        assert len(remote.events()) == 3  # what was kept stays while the server is away

        # It starts again on the same address: found again by the polls, its own events only.
        write_config(path, f"127.0.0.1:{port}", blue.address, green.address)
        proc, again = await serve(path)
        assert again == url
        await wait_for(lambda: "connection_lost" not in remote.snapshot().extra, what="the server again")
        assert remote.connection_lost == ""
        assert remote.events() == []  # the old server's events are not this one's (its ids start again)
        assert remote.snapshot().backend("green-1").weight == 1  # the new server's state, from its config
        event = await asyncio.to_thread(remote.set_weight, "green-1", 4, "key")
        assert (event.action, event.before, event.after) == ("weight", 1, 4)
        assert (await run_ctl(url, "drain", "green-1"))[0] == 0
        await wait_for(lambda: len(remote.events()) == 2, what="the new server's events")
        assert [(e.actor, e.action) for e in remote.events()] == [("ctl", "state"), ("key", "weight")]
    finally:
        await asyncio.to_thread(remote.close)
        stop(proc)
