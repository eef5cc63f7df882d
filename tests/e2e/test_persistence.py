"""Runtime state across a restart: `lbtui serve` restores `[state].file` before it listens, and writes it after
every change; a bad file is reported and set aside, never fatal."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

import httpx

from lbtui.config import parse_config
from lbtui.serve import Runtime, ServeOptions
from tests.conftest import wait_for
from tests.e2e.test_serve import lbtui, read_listen_url, stop


def write_config(tmp_path: Path, backends: list) -> Path:
    text = '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\n\n[services.app]\nalgorithm = "round_robin"\n'
    for b in backends:
        text += f'\n[[services.app.backends]]\nname = "{b.name}"\naddress = "{b.address}"\n'
    text += '\n[state]\nfile = "lbtui.state.json"\n'
    path = tmp_path / "lbtui.toml"
    path.write_text(text)
    return path


async def served_by(url: str, n: int) -> Counter:
    out: Counter = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for _ in range(n):
            response = await http.get("/")
            assert response.status_code == 200
            out[response.json()["backend"]] += 1
    return out


def finish(proc) -> str:
    """SIGTERM, wait, and everything serve said on stderr (it must exit 0 with no traceback)."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    err = "".join(getattr(proc, "seen_lines", [])) + proc.stderr.read()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err


async def test_serve_restores_states_weights_algorithm_and_added_backends(tmp_path, backends):
    a, b, c = await backends("a"), await backends("b"), await backends("c")
    config = write_config(tmp_path, [a, b])
    state = tmp_path / "lbtui.state.json"
    saved = {
        "version": 1,
        "services": {
            "app": {
                "algorithm": "weighted_round_robin",
                "backends": {"a": {"state": "maint"}, "b": {"weight": 3}, "gone": {"weight": 2}},
                "added": [
                    {"name": "c", "address": c.address, "group": "default", "weight": 1, "state": "ready"}
                ],
            },
            "old": {"algorithm": "random"},
        },
    }
    state.write_text(json.dumps(saved))
    proc = lbtui("serve", "--config", str(config))
    try:
        url = await read_listen_url(proc)
        # a is in maint; b and c share 3:1 under smooth weighted round robin: exactly, every 4 requests.
        assert await served_by(url, 8) == {"b": 6, "c": 2}
        err = finish(proc)
    finally:
        stop(proc)
    assert f"lbtui: state: {state}: services.app.backends.gone: no backend 'gone' in service 'app'" in err
    assert f"lbtui: state: {state}: services.old: no service 'old' in the config; skipped" in err
    assert f"lbtui: state: restored 4 changes from {state}\n" in err
    assert err.index("state: restored") < err.index("listener web on")  # before the listener accepts
    assert json.loads(state.read_text()) == saved  # nothing changed while serving: the file is left alone


async def test_a_corrupt_state_file_is_set_aside_and_serve_starts_from_the_config(tmp_path, backends):
    a, b = await backends("a"), await backends("b")
    config = write_config(tmp_path, [a, b])
    state = tmp_path / "lbtui.state.json"
    state.write_text('{"version": 1, "services": {"app": {"backends": ')  # cut short by a crash of old
    proc = lbtui("serve", "--config", str(config))
    try:
        url = await read_listen_url(proc)
        assert await served_by(url, 4) == {"a": 2, "b": 2}
        err = finish(proc)
    finally:
        stop(proc)
    (aside,) = tmp_path.glob("lbtui.state.json.corrupt-*")
    assert aside.read_text().startswith('{"version": 1')
    lines = [line for line in err.splitlines() if "state:" in line]
    assert lines == [
        f"lbtui: state: {state} is not lbtui state: not JSON (Expecting value at line 1 column 49); "
        f"moved to {aside}; starting from the config"
    ]
    assert not state.exists()


async def test_fresh_ignores_the_state_file_and_says_so(tmp_path, backends):
    a, b = await backends("a"), await backends("b")
    config = write_config(tmp_path, [a, b])
    state = tmp_path / "lbtui.state.json"
    state.write_text(json.dumps({"version": 1, "services": {"app": {"backends": {"a": {"state": "maint"}}}}}))
    proc = lbtui("serve", "--config", str(config), "--fresh")
    try:
        url = await read_listen_url(proc)
        assert await served_by(url, 4) == {"a": 2, "b": 2}
        err = finish(proc)
    finally:
        stop(proc)
    assert f"lbtui: state: --fresh: {state} not read" in err
    assert "restored" not in err
    assert state.exists()  # not read, not moved, not deleted


async def test_serve_without_a_state_file_says_it_starts_from_the_config(tmp_path, backends):
    a = await backends("a")
    config = write_config(tmp_path, [a])
    proc = lbtui("serve", "--config", str(config))
    try:
        url = await read_listen_url(proc)
        assert await served_by(url, 1) == {"a": 1}  # serving: past the point where SIGTERM is handled
        err = finish(proc)
    finally:
        stop(proc)
    assert f"lbtui: state: no {tmp_path / 'lbtui.state.json'} yet; starting from the config" in err
    assert "warning: state.file" not in err  # no longer "not in this version"
    assert not (tmp_path / "lbtui.state.json").exists()  # no change, nothing written


async def test_changes_are_written_and_a_restarted_runtime_restores_them(tmp_path, backends):
    """In process: the Controller of a running engine changes; a new engine on the same config restores it."""
    a, b = await backends("a"), await backends("b")
    data = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {
            "app": {"backends": [{"name": "a", "address": a.address}, {"name": "b", "address": b.address}]}
        },
        "state": {"file": "lbtui.state.json"},
    }
    config = parse_config(data, base_dir=tmp_path)
    state = tmp_path / "lbtui.state.json"
    said: list[str] = []
    first = Runtime(ServeOptions(config=config), said.append)
    assert await first.start()
    try:
        assert first.engine is not None
        controller = first.engine.controller
        controller.maint("a", actor="key")
        await wait_for(state.exists, what="the write after the change")
        assert json.loads(state.read_text())["services"] == {"app": {"backends": {"a": {"state": "maint"}}}}
        controller.set_weight(
            "b", 4, actor="key"
        )  # within 100 ms of the last write: the tick or stop writes it
    finally:
        await first.stop()
    assert json.loads(state.read_text())["services"] == {
        "app": {"backends": {"a": {"state": "maint"}, "b": {"weight": 4}}}
    }
    assert [p.name for p in tmp_path.iterdir()] == ["lbtui.state.json"]  # no temporary file left

    second = Runtime(ServeOptions(config=config), said.append)
    assert await second.start()
    try:
        assert second.engine is not None
        assert await served_by(second.engine.url(), 6) == {"b": 6}
        events = second.engine.controller.events()
        assert sorted((e.actor, e.action, e.target, e.after, e.note) for e in events) == [
            ("state", "state", "a", "maint", "restored from lbtui.state.json"),
            ("state", "weight", "b", 4, "restored from lbtui.state.json"),
        ]
    finally:
        await second.stop()
    assert said[-1] == f"state: restored 2 changes from {state}"


async def read_urls(proc, timeout: float = 15.0) -> tuple[str, str]:
    """The proxy's and the admin API's URLs that `serve` prints on stderr once it listens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    proxy = admin = ""
    while loop.time() < deadline and not (proxy and admin):
        line = await loop.run_in_executor(None, proc.stderr.readline)
        if not line:
            break
        proc.seen_lines = [*getattr(proc, "seen_lines", []), line]
        if "listener web on " in line:
            proxy = line.split(" on ", 1)[1].strip()
        elif "admin API on " in line:
            admin = line.split(" on ", 1)[1].strip()
    said = "".join(getattr(proc, "seen_lines", []))
    assert proxy, said
    assert admin, said
    return proxy, admin


async def test_changes_through_the_admin_api_survive_a_restart(tmp_path, backends):
    a, b, c = await backends("a"), await backends("b"), await backends("c")
    config = write_config(tmp_path, [a, b])
    config.write_text(config.read_text() + '\n[admin]\nbind = "127.0.0.1:0"\n')
    state = tmp_path / "lbtui.state.json"

    proc = lbtui("serve", "--config", str(config))
    try:
        url, admin = await read_urls(proc)
        assert await served_by(url, 4) == {"a": 2, "b": 2}
        async with httpx.AsyncClient(base_url=admin, timeout=10) as api:
            for method, path, body in [
                ("POST", "/api/v1/backends/a/maint", None),
                ("PUT", "/api/v1/backends/b/weight", {"weight": 3}),
                ("POST", "/api/v1/services/app/backends", {"name": "c", "address": c.address}),
                ("PUT", "/api/v1/services/app/algorithm", {"algorithm": "weighted_round_robin"}),
            ]:
                response = await api.request(method, path, json=body)
                assert response.status_code < 300, response.text
        # c joined while serving: the next request is its probe, then b and c share 3:1 exactly.
        assert await served_by(url, 9) == {"b": 6, "c": 3}
        finish(proc)  # SIGTERM: whatever is not written yet is written now
    finally:
        stop(proc)
    assert json.loads(state.read_text())["services"] == {
        "app": {
            "algorithm": "weighted_round_robin",
            "backends": {"a": {"state": "maint"}, "b": {"weight": 3}},
            "added": [{"name": "c", "address": c.address, "group": "default", "weight": 1, "state": "ready"}],
        }
    }

    proc = lbtui("serve", "--config", str(config))
    try:
        url, admin = await read_urls(proc)
        assert await served_by(url, 8) == {"b": 6, "c": 2}
        async with httpx.AsyncClient(base_url=admin, timeout=10) as api:
            events = (await api.get("/api/v1/events")).json()["events"]
        assert sorted((e["actor"], e["action"], e["target"], e["note"]) for e in events) == [
            ("state", "add", "c", "restored from lbtui.state.json"),
            ("state", "algorithm", "app", "restored from lbtui.state.json"),
            ("state", "state", "a", "restored from lbtui.state.json"),
            ("state", "weight", "b", "restored from lbtui.state.json"),
        ]
        err = finish(proc)
    finally:
        stop(proc)
    assert f"lbtui: state: restored 4 changes from {state}" in err


def test_fresh_is_an_option_of_serve_and_of_the_dashboard():
    from lbtui.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--fresh"]).fresh
    assert parser.parse_args(["serve", "--fresh", "--config", "x.toml"]).fresh
    assert not parser.parse_args(["serve", "--config", "x.toml"]).fresh
