"""Groups, splits, flips, canary ramps and undo on a real HAProxy (tests/haproxy/conftest.py), through the same
Controller interface as lbtui's own engine; every change read back from HAProxy with the Runtime API client.

The controller's calls wait for its own loop's thread: the tests make them through asyncio.to_thread, so that the
test's loop (which runs the demo backends HAProxy sends traffic to) never stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from lbtui.config import ConfigError
from lbtui.core.control import Conflict, Invalid
from lbtui.core.views import ServiceView
from lbtui.haproxy.controller import SOCKET_ACTOR, HaproxyController
from lbtui.haproxy.groups import load_groups
from lbtui.haproxy.split import Member, ordered, plan, shares
from lbtui.tui.app import Dashboard
from lbtui.tui.screens import ConfirmScreen
from tests.conftest import DEADLINE, wait_for
from tests.haproxy.conftest import HAProxy
from tests.haproxy.test_controller import POLL, call, event_where
from tests.haproxy.test_ctl import ROOT, ctl
from tests.haproxy.test_runtime import get

BLUE_GREEN = """
[backends.app.groups]
blue = ["a", "b"]
green = "c*"
"""


def groups_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "groups.toml"
    path.write_text(text)
    return path


@asynccontextmanager
async def controlling(h: HAProxy, groups: Path | None = None) -> AsyncIterator[HaproxyController]:
    loaded = load_groups(groups) if groups is not None else None
    controller = HaproxyController(str(h.unix), timeout=2.0, poll_seconds=POLL, groups=loaded)
    try:
        await call(controller.snapshot)
        yield controller
    finally:
        await asyncio.to_thread(controller.close)


async def weights(h: HAProxy) -> dict[str, int]:
    return {s.server: s.uweight or 0 for s in await h.client().show_servers_state("app")}


def app(c: HaproxyController) -> ServiceView:
    return c.snapshot().service("app")


async def served(h: HAProxy, requests: int) -> dict[str, int]:
    """Send `requests` requests (bounded), one at a time; each server's share by HAProxy's own counters."""
    before = {r.svname: r.stot or 0 for r in await h.client().show_stat() if r.type == "server"}
    for _ in range(requests):
        assert (await get(h.frontend_port))[0] in (200, 500)
    after = {r.svname: r.stot or 0 for r in await h.client().show_stat() if r.type == "server"}
    return {name: after[name] - before.get(name, 0) for name in after}


async def test_groups_come_from_the_file_and_name_rows_and_split(haproxy, tmp_path):
    h = await haproxy(["a", "b", "c1", "x"])
    async with controlling(h, groups_file(tmp_path, BLUE_GREEN)) as c:
        view = app(c)
        assert view.groups == ("blue", "green", "default")  # the file's order; x matches no pattern
        assert [(b.name, b.group) for b in view.backends] == [
            ("a", "blue"),
            ("b", "blue"),
            ("c1", "green"),
            ("x", "default"),
        ]
        assert view.split == (("blue", 50), ("green", 25), ("default", 25))  # weights 1 each
    async with controlling(h) as c:  # no file: one group, no split (as before groups existed)
        view = app(c)
        assert (view.groups, view.split) == (("default",), None)
        assert {b.group for b in view.backends} == {"default"}


def test_a_bad_groups_file_names_the_file_the_key_and_what_is_wrong(tmp_path):
    path = groups_file(
        tmp_path,
        '[backends.app.groups]\nblue = "a"\ngreen = ["b", 7]\n[backends.app.ramp]\nsteps = [50, 10]\nhodl = 1\n',
    )
    with pytest.raises(ConfigError) as bad:
        load_groups(path)
    lines = str(bad.value).splitlines()
    assert lines == [
        f"{path}: backends.app.groups.green: expected a string, got integer 7",
        f"{path}: backends.app.ramp.hodl: unknown key; did you mean 'hold'?",
        f"{path}: backends.app.ramp.steps: steps must rise: [50, 10]; list the canary's shares in percent, "
        "smallest first, e.g. [5, 25, 50, 100]",
    ]
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_groups(groups_file(tmp_path, "[backends.app\n"))


async def test_split_sets_weights_whose_shares_match_the_traffic(haproxy, tmp_path):
    h = await haproxy(["a", "b", "c1"])
    async with controlling(h, groups_file(tmp_path, BLUE_GREEN)) as c:
        event = await call(c.set_split, "app", {"blue": 80, "green": 20}, "key")
        assert (event.action, event.target) == ("split", "app")
        assert (event.before, event.after) == ({"blue": 67, "green": 33}, {"blue": 80, "green": 20})
        w = await weights(h)
        assert w["a"] == w["b"]  # equal inside the group, as they were
        assert (w["a"] + w["b"]) / sum(w.values()) == pytest.approx(0.80, abs=0.005)
        await wait_for(lambda: app(c).split == (("blue", 80), ("green", 20)), what="the split polled")
        counts = await served(h, 300)
        assert counts["c1"] / 300 == pytest.approx(0.20, abs=0.04)
        assert counts["a"] + counts["b"] + counts["c1"] == 300
        # Every group named, adding up to 100, each refused in one line and nothing changed.
        for bad, words in (
            ({"blue": 80}, "green missing"),
            ({"blue": 80, "green": 30}, "add up to 100, not 110"),
            ({"blue": 80, "red": 20}, "no group 'red' (groups: blue, green)"),
        ):
            with pytest.raises(Invalid, match=re.escape(words)):
                await call(c.set_split, "app", bad)
        assert await weights(h) == w


async def test_a_split_is_never_all_zero_on_the_way(haproxy, tmp_path):
    h = await haproxy(["a", "b", "c1"])
    async with controlling(h, groups_file(tmp_path, BLUE_GREEN)) as c:
        await call(c.set_split, "app", {"blue": 100, "green": 0})
        seen: list[int] = []
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                seen.append(sum((await weights(h)).values()))

        watcher = asyncio.create_task(watch())
        for split in ({"blue": 0, "green": 100}, {"blue": 100, "green": 0}, {"blue": 1, "green": 99}):
            await call(c.set_split, "app", split)
        stop.set()
        await watcher
        assert seen
        assert 0 not in seen
    # The order itself: every prefix of the changes leaves weight somewhere (random backends and splits).
    rng = random.Random(15)
    for _ in range(500):
        members = [
            Member(f"s{i}", rng.choice(["blue", "green"]), rng.randint(0, 3), True, 1) for i in range(5)
        ]
        if {m.group for m in members} != {"blue", "green"}:
            continue
        now = {m.server: m.weight for m in members}
        blue = rng.randint(0, 100)
        target = plan(members, {"blue": blue, "green": 100 - blue}, "app", "roundrobin")
        assert shares(members, ["blue", "green"], target) == {"blue": blue, "green": 100 - blue}
        current = dict(now)
        for server, weight in ordered(now, target):
            current[server] = weight
            assert sum(current.values()) > 0 or sum(now.values()) == 0
        assert current == {**now, **target}


async def test_flip_swaps_two_groups_and_a_static_algorithm_takes_only_all_or_nothing(haproxy, tmp_path):
    h = await haproxy(["a", "b", "c1"], balance="static-rr")
    async with controlling(h, groups_file(tmp_path, BLUE_GREEN)) as c:
        with pytest.raises(Invalid) as refused:
            await call(c.set_split, "app", {"blue": 90, "green": 10})
        assert "static-rr" in str(refused.value)
        assert "\n" not in str(refused.value)
        assert await weights(h) == {"a": 1, "b": 1, "c1": 1}
        await call(c.set_split, "app", {"blue": 100, "green": 0})
        assert await weights(h) == {"a": 1, "b": 1, "c1": 0}
        await wait_for(lambda: app(c).split == (("blue", 100), ("green", 0)), what="blue polled")
        event = await call(c.flip, "app", "key")
        assert (event.action, event.before, event.after) == (
            "flip",
            {"blue": 100, "green": 0},
            {"blue": 0, "green": 100},
        )
        assert await weights(h) == {"a": 0, "b": 0, "c1": 1}
        counts = await served(h, 20)
        assert counts == {"a": 0, "b": 0, "c1": 20}


RAMP = """
[backends.app.groups]
blue = "a"
green = "c*"
[backends.app.ramp]
steps = [25, 100]
hold = "0.3s"
min_requests = 8
"""


async def drive(h: HAProxy, c: HaproxyController, until: str, limit: int = 2000) -> None:
    """Requests, one at a time (at most `limit`, within the deadline), until the ramp is in state `until`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE * 3
    for _ in range(limit):
        ramp = app(c).ramp
        if ramp is not None and ramp.state == until:
            return
        assert loop.time() < deadline, f"the ramp is {ramp}, not {until}"
        await get(h.frontend_port)
    raise AssertionError(f"{limit} requests and the ramp is {app(c).ramp}, not {until}")


async def test_a_ramp_advances_on_a_healthy_canary(haproxy, tmp_path):
    h = await haproxy(["a", "c1"])
    async with controlling(h, groups_file(tmp_path, RAMP)) as c:
        await call(c.set_split, "app", {"blue": 100, "green": 0})
        await wait_for(lambda: app(c).split == (("blue", 100), ("green", 0)), what="blue polled")
        start = await call(c.start_ramp, "app", "key")
        assert (start.action, start.after) == ("ramp", {"blue": 75, "green": 25})
        assert start.note.startswith("start: green 25% -> 100%, 0.3s each")
        assert "judged on 5xx only" in start.note  # no p99 without the request log: said, not pretended
        with pytest.raises(Conflict, match="under way"):
            await call(c.start_ramp, "app")
        await wait_for(lambda: app(c).ramp is not None, what="the ramp polled")
        ramp = app(c).ramp
        assert ramp is not None
        assert (ramp.state, ramp.percent, ramp.canary) == ("running", 25, "green")
        await drive(h, c, "done")
        notes = [e.note for e in reversed(c.events()) if e.action == "ramp"]
        assert notes[1:] == ["step 2/2", "done: green at 100%"]
        assert await weights(h) == {"a": 0, "c1": 256}
        assert app(c).split == (("blue", 0), ("green", 100))


async def test_a_ramp_rolls_back_when_the_canary_answers_5xx(haproxy, backends, tmp_path):
    h = await haproxy(["a"])
    bad = await backends("c-bad", error_rate=1.0)
    async with controlling(h, groups_file(tmp_path, RAMP)) as c:
        await call(c.add_backend, "app", "c-bad", bad.address, "green", 1)
        await wait_for(lambda: "c-bad" in [b.name for b in app(c).backends], what="c-bad polled")
        await call(c.set_split, "app", {"blue": 100, "green": 0})
        await wait_for(lambda: app(c).split == (("blue", 100), ("green", 0)), what="blue polled")
        # The stable group's baseline first (the judge compares the canary with it).
        await served(h, 10)
        await call(c.start_ramp, "app")
        await drive(h, c, "rolled back")
        ramp = app(c).ramp
        assert ramp is not None
        assert (ramp.step, ramp.percent) == (0, 0)
        # (not always 100.0%: a request HAProxy has counted but not answered yet is in the window)
        assert re.fullmatch(r"green 5xx \d+\.\d% vs blue 0\.0% \(limit \+2 points\)", ramp.reason)
        rollback = await event_where(c, lambda e: e.note.startswith("rolled back"), "the rollback event")
        assert (rollback.actor, rollback.after) == ("ramp", {"blue": 100, "green": 0})
        assert (await weights(h))["c-bad"] == 0
        counts = await served(h, 10)
        assert counts["c-bad"] == 0


async def test_abort_puts_the_split_back(haproxy, tmp_path):
    h = await haproxy(["a", "c1"])
    slow = RAMP.replace('hold = "0.3s"', 'hold = "1h"')
    async with controlling(h, groups_file(tmp_path, slow)) as c:
        await call(c.set_split, "app", {"blue": 90, "green": 10})
        await wait_for(lambda: app(c).split == (("blue", 90), ("green", 10)), what="90/10 polled")
        await call(c.start_ramp, "app")
        await wait_for(lambda: app(c).split == (("blue", 75), ("green", 25)), what="the first step polled")
        event = await call(c.abort_ramp, "app", "key")
        assert (event.action, event.before, event.after) == (
            "ramp",
            {"blue": 75, "green": 25},
            {"blue": 90, "green": 10},
        )
        assert event.note == "aborted: split as before the ramp"
        await wait_for(lambda: (app(c).ramp or ramp_none()).state == "aborted", what="aborted shown")
        assert app(c).ramp.reason == "by key"
        with pytest.raises(Conflict, match="no canary ramp is under way"):
            await call(c.abort_ramp, "app")
        # A split by hand ends a ramp too: the operator has taken over.
        await call(c.start_ramp, "app")
        await call(c.set_split, "app", {"blue": 50, "green": 50}, "key")
        stopped = await event_where(
            c, lambda e: e.note == "aborted: split changed by key", "the ramp stopped"
        )
        assert (stopped.actor, stopped.action) == ("key", "ramp")
        await wait_for(lambda: (app(c).ramp or ramp_none()).reason == "split changed by key", what="shown")


def ramp_none() -> Any:
    class Nothing:
        state = None
        reason = None

    return Nothing()


async def test_undo_reverts_each_kind_of_change_newest_first(haproxy, backends, tmp_path):
    h = await haproxy(["a", "b", "c1"])
    extra = await backends("c2")
    async with controlling(h, groups_file(tmp_path, BLUE_GREEN)) as c:
        await call(c.set_state, "a", "drain", "key")
        await call(c.set_weight, "b", 7, "key")
        await call(c.add_backend, "app", "c2", extra.address, "green", 3)
        split = await call(c.set_split, "app", {"blue": 60, "green": 40})
        split_weights = await weights(h)
        await call(c.remove_backend, "c1", "key")
        await event_where(c, lambda e: e.action == "remove" and e.note == "deleted", "c1 deleted")
        await wait_for(lambda: "c1" not in [b.name for b in app(c).backends], what="c1 gone")

        undo = await call(c.undo, "key")  # the removal: c1 is back, with its address, weight and group
        assert (undo.actor, undo.action, undo.target) == ("undo", "add", "c1")
        assert undo.after["address"] == h.servers["c1"].address
        assert (await weights(h))["c1"] == split_weights["c1"]
        await wait_for(lambda: "c1" in [b.name for b in app(c).backends], what="c1 back")
        assert next(b for b in app(c).backends if b.name == "c1").group == "green"

        undo = await call(c.undo)  # the split: back to the one before
        assert (undo.action, undo.before, undo.after) == ("split", split.after, split.before)
        assert undo.note == f"undoes #{split.id} (api: split app)"

        undo = await call(c.undo)  # the add: c2 goes (drained, then deleted)
        assert (undo.action, undo.target) == ("remove", "c2")
        await event_where(c, lambda e: e.target == "c2" and e.note == "deleted", "c2 deleted")

        undo = await call(c.undo)
        assert (undo.action, undo.target, undo.after) == ("weight", "b", 1)  # before: as the split left it
        undo = await call(c.undo)
        assert (undo.action, undo.target, undo.before, undo.after) == ("state", "a", "drain", "ready")
        with pytest.raises(Conflict, match="nothing to undo"):
            await call(c.undo)
        # Someone else's change on the socket is theirs: seen, never undone by lbtui.
        await h.client().set_weight("app", "a", 5)
        await event_where(c, lambda e: e.actor == SOCKET_ACTOR and e.target == "a", "the socket's change")
        with pytest.raises(Conflict, match="nothing to undo"):
            await call(c.undo)


async def test_add_into_a_group(haproxy, backends, tmp_path):
    h = await haproxy(["a", "c1"])
    extra = await backends("d")
    async with controlling(h, groups_file(tmp_path, BLUE_GREEN)) as c:
        with pytest.raises(Invalid) as refused:
            await call(c.add_backend, "app", "d", extra.address, "red")
        assert str(refused.value) == "backend app has no group 'red' (groups: blue, green, default)"
        event = await call(c.add_backend, "app", "d", extra.address, "green")
        assert event.after["group"] == "green"
        assert "d is not in green by the groups file: kept in green for this HAProxy" in event.note
        await wait_for(lambda: "d" in [b.name for b in app(c).backends], what="d polled")
        assert next(b for b in app(c).backends if b.name == "d").group == "green"
    # Another controller (another lbtui process) reads the assignment from the audit file.
    async with controlling(h, groups_file(tmp_path, BLUE_GREEN)) as other:
        assert next(b for b in app(other).backends if b.name == "d").group == "green"


async def test_the_audit_file_is_shared_by_every_lbtui_process_on_that_haproxy(haproxy, tmp_path, audit_dir):
    h = await haproxy(["a", "b", "c1"])
    groups = groups_file(tmp_path, BLUE_GREEN)
    sock = str(h.unix)
    async with controlling(h, groups) as dashboard:
        await call(dashboard.set_split, "app", {"blue": 100, "green": 0}, "key")
        # `ctl` (other processes) see what the dashboard did, and change things themselves.
        code, out, err = await ctl("--admin", sock, "--haproxy-groups", str(groups), "events")
        assert (code, err) == (0, "")
        assert out.splitlines()[0].endswith("#1  key: app: split blue=67 green=33 -> blue=100 green=0")
        code, out, err = await ctl("--admin", sock, "--haproxy-groups", str(groups), "flip", "app")
        assert (code, out, err) == (
            0,
            "app: flip blue=100 green=0 -> blue=0 green=100\n",
            "",
        )
        code, out, err = await ctl(
            "--admin", sock, "--haproxy-groups", str(groups), "split", "app", "blue=70", "green=30"
        )
        assert (code, err) == (0, "")
        assert out == "app: split blue=0 green=100 -> blue=70 green=30\n"
        code, out, err = await ctl("--admin", sock, "--haproxy-groups", str(groups), "undo")
        assert (code, err) == (0, "")
        assert out.startswith(
            "app: split blue=70 green=30 -> blue=0 green=100 (undoes #3 (ctl: split app))\n"
        )
        assert await weights(h) == {"a": 0, "b": 0, "c1": 256}
        # The dashboard shows ctl's changes as ctl's, once each, and none as someone's on the socket.
        await event_where(dashboard, lambda e: e.actor == "undo", "ctl's undo in the dashboard")
        await wait_for(lambda: app(dashboard).split == (("blue", 0), ("green", 100)), what="polled")
        for _ in range(3):  # a few more polls: a change seen on the socket would be recorded by now
            polled = dashboard.snapshot().time
            await wait_for(lambda p=polled: dashboard.snapshot().time > p, what="a poll")
        mine = [(e.actor, e.action) for e in reversed(dashboard.events())]
        assert mine == [("key", "split"), ("ctl", "flip"), ("ctl", "split"), ("undo", "split")]
        # The dashboard's undo goes on where ctl's stopped: the flip (ctl's split is undone already).
        undo = await call(dashboard.undo, "key")
        assert (undo.action, undo.after) == ("flip", {"blue": 100, "green": 0})
    lines = (audit_dir / next(p.name for p in audit_dir.iterdir() if p.suffix == ".jsonl")).read_text()
    assert [json.loads(line)["id"] for line in lines.splitlines()] == [1, 2, 3, 4, 5]
    # A new process reads it all: `ctl events` lists it, newest first.
    code, out, _ = await ctl("--admin", sock, "events")
    assert [line.split("  ")[1] for line in out.splitlines()] == ["#5", "#4", "#3", "#2", "#1"]


async def test_ctl_ramp_runs_the_ramp_and_another_process_can_abort_it(haproxy, tmp_path):
    h = await haproxy(["a", "c1"])
    groups = groups_file(tmp_path, RAMP.replace('hold = "0.3s"', 'hold = "1h"'))
    sock = str(h.unix)
    code, _, err = await ctl(
        "--admin", sock, "--haproxy-groups", str(groups), "split", "app", "blue=100", "green=0"
    )
    assert (code, err) == (0, "")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ramp = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lbtui",
        "ctl",
        "--admin",
        sock,
        "--haproxy-groups",
        str(groups),
        "ramp",
        "app",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        await wait_for_weights(h, {"a": 256, "c1": 85})
        code, out, err = await ctl("--admin", sock, "--haproxy-groups", str(groups), "ramp", "app", "--abort")
        assert (code, err) == (0, "")
        assert out.startswith("app: ramp blue=75 green=25 -> blue=100 green=0")
        assert "(aborted: split as before the ramp (the ramp ran in lbtui process" in out
        async with asyncio.timeout(DEADLINE):
            out_ramp, err_ramp = await ramp.communicate()
    finally:
        if ramp.returncode is None:
            ramp.kill()
            await ramp.wait()
    assert ramp.returncode == 1  # not done: aborted
    lines = out_ramp.decode().splitlines()
    assert err_ramp.decode() == ""
    assert lines[0].startswith("app: ramp blue=100 green=0 -> blue=75 green=25 (start:")
    assert lines[-1] == (
        "app: ramp blue=100 green=0 -> blue=100 green=0 (aborted: ramp by ctl in another lbtui process)"
    )
    assert await weights(h) == {"a": 256, "c1": 0}


async def wait_for_weights(h: HAProxy, wanted: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while (got := await weights(h)) != wanted:
        assert loop.time() < deadline, f"weights {got}, not {wanted}"
        await asyncio.sleep(0.02)


async def test_ctrl_c_on_ctl_ramp_aborts_the_ramp(haproxy, tmp_path):
    h = await haproxy(["a", "c1"])
    groups = groups_file(tmp_path, RAMP.replace('hold = "0.3s"', 'hold = "1h"'))
    sock = str(h.unix)
    code, _, _ = await ctl(
        "--admin", sock, "--haproxy-groups", str(groups), "split", "app", "blue=100", "green=0"
    )
    assert code == 0
    ramp = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lbtui",
        "ctl",
        "--admin",
        sock,
        "--haproxy-groups",
        str(groups),
        "ramp",
        "app",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        # pytest-xdist's workers ignore SIGINT and a child inherits that (Python then leaves it ignored): a
        # terminal's Ctrl-C reaches ctl with the default disposition, as here.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        await wait_for_weights(h, {"a": 256, "c1": 85})
        assert ramp.stdout is not None
        async with asyncio.timeout(DEADLINE):  # its start is printed: ctl follows the ramp now
            started = await ramp.stdout.readline()
        ramp.send_signal(signal.SIGINT)
        async with asyncio.timeout(DEADLINE):
            out, err = await ramp.communicate()
    finally:
        if ramp.returncode is None:
            ramp.kill()
            await ramp.wait()
    assert (ramp.returncode, err.decode()) == (1, "")
    assert started.decode().startswith("app: ramp blue=100 green=0 -> blue=75 green=25 (start")
    assert out.decode().splitlines()[-1] == (
        "app: ramp blue=75 green=25 -> blue=100 green=0 (aborted: split as before the ramp)"
    )
    assert await weights(h) == {"a": 256, "c1": 0}


async def test_a_weight_changed_on_the_socket_ends_a_ramp(haproxy, tmp_path):
    h = await haproxy(["a", "c1"])
    async with controlling(h, groups_file(tmp_path, RAMP.replace('hold = "0.3s"', 'hold = "1h"'))) as c:
        await call(c.set_split, "app", {"blue": 100, "green": 0})
        await call(c.start_ramp, "app")
        await h.client().set_weight("app", "c1", 3)  # someone else (socat, hatop) takes over
        stopped = await event_where(c, lambda e: e.note.startswith("aborted"), "the ramp stopped")
        assert (stopped.actor, stopped.note) == ("ramp", "aborted: weights changed on the socket")
        assert (await weights(h))["c1"] == 3  # theirs stands


async def test_the_dashboards_ramp_key_starts_and_aborts_a_ramp_on_haproxy(haproxy, tmp_path):
    h = await haproxy(["a", "c1"])
    async with controlling(h, groups_file(tmp_path, RAMP.replace('hold = "0.3s"', 'hold = "1h"'))) as c:
        await call(c.set_split, "app", {"blue": 100, "green": 0})
        await wait_for(lambda: app(c).split == (("blue", 100), ("green", 0)), what="blue polled")
        dashboard = Dashboard(None, controller=c)
        async with dashboard.run_test(size=(160, 40)) as pilot:
            await pilot.pause()
            await pilot.press("R")
            assert isinstance(dashboard.screen, ConfirmScreen)
            await pilot.press("y")
            await wait_for_weights(h, {"a": 256, "c1": 85})
            await wait_for(lambda: (app(c).ramp or ramp_none()).state == "running", what="the ramp shown")

            def drawn() -> bool:  # the key reads what the view drew last: wait for a redraw with the ramp
                shown = dashboard._last_snapshot
                return shown is not None and (shown.service("app").ramp or ramp_none()).state == "running"

            await wait_for(drawn, what="the ramp drawn")
            await pilot.press("R")  # again, while it runs: abort
            await wait_for_weights(h, {"a": 256, "c1": 0})
        assert [(e.actor, e.note.split(":")[0]) for e in reversed(c.events()) if e.action == "ramp"] == [
            ("key", "start"),
            ("key", "aborted"),
        ]


async def test_a_restart_ends_a_ramp(haproxy, tmp_path):
    h = await haproxy(["a", "c1"])
    async with controlling(h, groups_file(tmp_path, RAMP.replace('hold = "0.3s"', 'hold = "1h"'))) as c:
        await call(c.set_split, "app", {"blue": 100, "green": 0})
        await call(c.start_ramp, "app")
        await h.restart()
        stopped = await event_where(c, lambda e: e.note.startswith("aborted"), "the ramp stopped")
        assert stopped.note == "aborted: haproxy restarted: the weights are its config's again"
        await wait_for(lambda: (app(c).ramp or ramp_none()).state == "aborted", what="shown")
        assert app(c).split == (("blue", 50), ("green", 50))  # the config's weights, 1 and 1
