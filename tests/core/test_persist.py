"""The state file: what a change writes, what a start restores, and what a bad file does (never fatal)."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lbtui.config import parse_config
from lbtui.core.balancer import Balancer
from lbtui.core.control import InProcessController
from lbtui.core.persist import (
    VERSION,
    StateFile,
    StateFileError,
    capture,
    encode,
    parse,
    read,
    restore,
    write_atomic,
)


def service(algorithm: str = "round_robin", split: dict | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "algorithm": algorithm,
        "backends": [
            {"name": "blue-1", "address": "127.0.0.1:9001", "group": "blue"},
            {"name": "blue-2", "address": "127.0.0.1:9002", "group": "blue", "weight": 2},
            {"name": "green-1", "address": "127.0.0.1:9003", "group": "green"},
        ],
        **extra,
    }
    if split:
        out["split"] = split
    return out


def controller(**services: dict[str, Any]) -> InProcessController:
    config = parse_config({"services": services or {"shop": service()}})
    return InProcessController(Balancer(config))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def store(path: Path, c: InProcessController, scheduled: list | None = None) -> tuple[StateFile, list[str]]:
    said: list[str] = []
    schedule = scheduled.append if scheduled is not None else None
    return StateFile(str(path), c, said.append, schedule=schedule, wall_clock=lambda: 1_700_000_000.0), said


def picks(c: InProcessController, n: int, name: str = "shop") -> Counter:
    s = c.balancer.services[name]
    out: Counter = Counter()
    for _ in range(n):
        b = s.pick(None)
        out[b.name if b else None] += 1
    return out


# -- what is kept ---------------------------------------------------------------------------------------------


def test_an_unchanged_balancer_keeps_nothing():
    assert capture(controller().balancer.services) == {}


def test_capture_keeps_only_what_differs_from_the_config():
    c = controller(shop=service(split={"blue": 90, "green": 10}))
    c.set_weight("blue-1", 5)
    c.maint("green-1")
    c.set_weight("blue-2", 3)
    c.set_weight("blue-2", 2)  # back to the config's: nothing to keep
    c.set_algorithm("shop", "least_connections")
    c.set_split("shop", {"blue": 50, "green": 50})
    c.add_backend("shop", "green-2", "127.0.0.1:9004", group="green", weight=4)
    c.drain("green-2")
    c.remove_backend("blue-2")
    assert capture(c.balancer.services) == {
        "shop": {
            "algorithm": "least_connections",
            "split": {"blue": 50, "green": 50},
            "backends": {"blue-1": {"weight": 5}, "green-1": {"state": "maint"}},
            "added": [
                {
                    "name": "green-2",
                    "address": "127.0.0.1:9004",
                    "group": "green",
                    "weight": 4,
                    "state": "drain",
                }
            ],
            "removed": ["blue-2"],
        }
    }


def test_a_cleared_split_is_kept_as_null():
    c = controller(shop=service(split={"blue": 90, "green": 10}))
    c.set_split("shop", {})
    assert capture(c.balancer.services) == {"shop": {"split": None}}


def test_drain_then_maint_is_kept_as_maint_and_a_removal_under_way_as_removed():
    c = controller()
    b = c.balancer.backends["blue-1"]
    b.in_flight = 1
    c.drain_then_maint("blue-1")
    c.remove_backend("green-1")  # green-1 idle: dropped at once
    c.balancer.backends["blue-2"].in_flight = 1
    c.remove_backend("blue-2")  # draining first
    assert capture(c.balancer.services) == {
        "shop": {"backends": {"blue-1": {"state": "maint"}}, "removed": ["blue-2", "green-1"]}
    }


def test_a_ramp_under_way_is_kept_as_the_split_before_it():
    c = controller(shop=service(split={"blue": 100, "green": 0}, ramp={"steps": [10, 50, 100], "hold": "1m"}))
    c.start_ramp("shop")
    assert c.balancer.services["shop"].split == {"blue": 90, "green": 10}
    assert capture(c.balancer.services) == {}


# -- the file -------------------------------------------------------------------------------------------------


def test_round_trip_through_the_file(tmp_path):
    c = controller()
    c.set_weight("blue-1", 7)
    c.add_backend("shop", "green-2", "127.0.0.1:9004", group="green")
    path = tmp_path / "lbtui.state.json"
    write_atomic(str(path), encode(capture(c.balancer.services), 1_700_000_000.0))
    document = json.loads(path.read_text())
    assert document["version"] == VERSION
    assert document["written"] == "2023-11-14T22:13:20Z"
    assert read(str(path)) == capture(c.balancer.services)


def test_atomic_write_leaves_no_temporary_file_and_replaces_the_old(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    write_atomic(str(path), b'{"version": 1}\n')
    assert os.listdir(tmp_path) == ["state.json"]
    assert path.read_bytes() == b'{"version": 1}\n'


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    path.write_text("old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomic(str(path), b"new")
    assert os.listdir(tmp_path) == ["state.json"]
    assert path.read_text() == "old"


def test_no_file_is_no_state(tmp_path):
    assert read(str(tmp_path / "absent.json")) is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not JSON (Expecting value at line 1 column 1)"),
        (b'{"version": 1,', "not JSON"),
        (b"\xff\xfe", "not JSON (not UTF-8 text)"),
        (b"[]", "expected a JSON object at the top, got list"),
        (b'{"services": {}}', "no version number"),
        (b'{"version": 2, "services": {}}', "version 2; this lbtui reads version 1"),
        (b'{"version": true, "services": {}}', "version True"),
        (b'{"version": 1, "services": []}', "services: expected an object, got list"),
        (b'{"version": 1, "services": {"shop": 3}}', "services.shop: expected an object, got int"),
        (
            b'{"version": 1, "services": {"shop": {"backends": []}}}',
            "services.shop.backends: expected an object",
        ),
        (
            b'{"version": 1, "services": {"shop": {"backends": {"a": 1}}}}',
            "services.shop.backends.a: expected an object",
        ),
        (b'{"version": 1, "services": {"shop": {"added": {}}}}', "services.shop.added: expected a list"),
        (
            b'{"version": 1, "services": {"shop": {"added": ["x"]}}}',
            "services.shop.added[0]: expected an object",
        ),
        (
            b'{"version": 1, "services": {"shop": {"removed": [1]}}}',
            "services.shop.removed[0]: expected a backend",
        ),
    ],
)
def test_what_is_not_a_state_file(data, problem):
    with pytest.raises(StateFileError) as error:
        parse(data)
    assert problem in str(error.value)


# -- restore --------------------------------------------------------------------------------------------------


def test_restore_applies_everything_through_the_controller():
    c = controller(shop=service(split={"blue": 90, "green": 10}))
    changes, warnings = restore(
        c,
        {
            "shop": {
                "algorithm": "weighted_round_robin",
                "split": {"blue": 0, "green": 100},
                "backends": {"blue-1": {"state": "maint"}, "blue-2": {"weight": 3}},
                "added": [
                    {"name": "green-2", "address": "127.0.0.1:9004", "group": "green", "state": "drain"}
                ],
                "removed": ["green-1"],
            }
        },
    )
    assert warnings == []
    assert changes == 7  # remove, add, its drain, maint, weight, algorithm, split
    s = c.balancer.services["shop"]
    assert s.algorithm_name == "weighted_round_robin"
    assert s.split == {"blue": 0, "green": 100}
    assert "green-1" not in c.balancer.backends
    assert c.balancer.backends["green-2"].admin_state.value == "drain"
    assert c.balancer.backends["blue-1"].admin_state.value == "maint"
    assert c.balancer.backends["blue-2"].weight == 3
    assert {e.actor for e in c.events()} == {"state"}


def test_a_restore_shows_in_the_audit_log_with_where_from(tmp_path):
    path = tmp_path / "lbtui.state.json"
    path.write_text(json.dumps({"version": 1, "services": {"shop": {"backends": {"blue-1": {"weight": 4}}}}}))
    c = controller()
    state, said = store(path, c)
    state.start()
    (event,) = c.events()
    assert (event.actor, event.action, event.target, event.before, event.after) == (
        "state",
        "weight",
        "blue-1",
        1,
        4,
    )
    assert event.note == "restored from lbtui.state.json"
    assert said == [f"state: restored 1 change from {path}"]
    c.set_weight("blue-1", 5, actor="key")
    assert c.events()[0].note == ""  # only what the restore did carries its note


def test_reconciliation_skips_what_the_config_no_longer_has_with_the_key_path():
    c = controller()
    changes, warnings = restore(
        c,
        {
            "gone": {"algorithm": "random"},
            "shop": {
                "algorithm": "fastest",
                "split": {"blue": 50, "purple": 50},
                "backends": {"blue-9": {"state": "maint"}, "blue-1": {"weight": -1, "state": "sleeping"}},
                "added": [
                    {"name": "x", "address": "not an address"},
                    {"name": "y", "address": "127.0.0.1:9005", "state": "half"},
                    {"name": "blue-2", "address": "127.0.0.1:9002"},
                    {"name": "z", "address": "127.0.0.1:9006", "colour": "red"},
                ],
                "removed": ["no-such-backend"],
                "ramp": {},
            },
        },
    )
    assert changes == 0
    assert [w.split(":")[0] for w in warnings] == [
        "services.gone",
        "services.shop.ramp",
        "services.shop.added[0]",
        "services.shop.added[1].state",
        "services.shop.added[2]",
        "services.shop.added[3]",
        "services.shop.backends.blue-9",
        "services.shop.backends.blue-1.weight",
        "services.shop.backends.blue-1.state",
        "services.shop.algorithm",
        "services.shop.split",
    ]
    assert "'fastest' is not an algorithm" in warnings[-2]
    assert "no group 'purple'" in warnings[-1]
    assert capture(c.balancer.services) == {}  # nothing changed


def test_an_added_backend_whose_service_exists_comes_back_and_serves():
    c = controller()
    restore(
        c,
        {"shop": {"added": [{"name": "blue-3", "address": "127.0.0.1:9009", "group": "blue", "weight": 2}]}},
    )
    b = c.balancer.backends["blue-3"]
    assert (b.service, b.group, b.weight) == ("shop", "blue", 2)
    assert "blue-3" in picks(c, 20)


# -- the store: writes after changes, restores at start -------------------------------------------------------


def test_a_change_is_written_after_the_current_callback_and_restored_by_a_new_balancer(tmp_path):
    path = tmp_path / "lbtui.state.json"
    c = controller(shop=service(split={"blue": 90, "green": 10}))
    scheduled: list = []
    state, said = store(path, c, scheduled)
    state.start()
    assert said == [f"state: no {path} yet; starting from the config"]
    c.maint("blue-1")
    c.set_weight("blue-2", 9)
    c.flip("shop")
    c.add_backend("shop", "green-2", "127.0.0.1:9004", group="green")
    assert len(scheduled) == 1  # one write for the burst, once the callback that made it returns
    assert not path.exists()
    scheduled.pop()()
    assert os.listdir(tmp_path) == ["lbtui.state.json"]
    assert stat.S_IMODE(path.stat().st_mode) & 0o600 == 0o600

    again = controller(shop=service(split={"blue": 90, "green": 10}))
    restored, said = store(path, again)
    restored.start()
    assert said == [f"state: restored 4 changes from {path}"]
    assert capture(again.balancer.services) == capture(c.balancer.services)
    assert picks(again, 100) == picks(c, 100)


def test_health_is_an_observation_and_is_not_written(tmp_path):
    path = tmp_path / "state.json"
    c = controller()
    scheduled: list = []
    state, _ = store(path, c, scheduled)
    state.start()
    c.record("health", "health", "blue-1", "up", "down (timeout)", undoable=False)
    c.record("engine", "panic", "shop", "off", "on", undoable=False)
    assert scheduled == []
    assert not state.dirty


def test_rapid_changes_are_coalesced_and_the_tick_writes_the_rest(tmp_path):
    path = tmp_path / "state.json"
    clock = Clock()
    c = InProcessController(Balancer(parse_config({"services": {"shop": service()}}), clock=clock))
    scheduled: list = []
    state, _ = store(path, c, scheduled)
    state.start()
    c.set_weight("blue-1", 2)
    scheduled.pop()()
    assert json.loads(path.read_text())["services"]["shop"]["backends"]["blue-1"] == {"weight": 2}
    clock.now += 0.05
    c.set_weight("blue-1", 3)
    scheduled.pop()()  # too soon after the last write: left to the tick
    assert json.loads(path.read_text())["services"]["shop"]["backends"]["blue-1"] == {"weight": 2}
    c.balancer.tick()
    assert state.dirty  # still too soon
    clock.now += 0.06
    c.balancer.tick()
    assert not state.dirty
    assert json.loads(path.read_text())["services"]["shop"]["backends"]["blue-1"] == {"weight": 3}


def test_flush_writes_what_is_left_at_shutdown(tmp_path):
    path = tmp_path / "state.json"
    c = controller()
    state, _ = store(path, c)  # no schedule: only the tick or flush writes
    state.start()
    c.set_algorithm("shop", "random")
    assert not path.exists()
    state.flush()
    assert read(str(path)) == {"shop": {"algorithm": "random"}}


def test_an_unchanged_state_is_not_written_again(tmp_path):
    path = tmp_path / "state.json"
    c = controller()
    state, _ = store(path, c)
    state.start()
    c.set_weight("blue-1", 2)
    state.flush()
    first = path.stat().st_mtime_ns
    os.utime(path, ns=(1, 1))
    c.record("engine", "state", "blue-1", "drain", "maint", undoable=False)  # nothing that the file keeps
    state.flush()
    assert path.stat().st_mtime_ns == 1 != first


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"version": 99, "services": {}}', b'{"version": 1, "services": {"shop": []}}'],
)
def test_a_corrupt_file_is_set_aside_and_the_config_used(tmp_path, content):
    path = tmp_path / "lbtui.state.json"
    path.write_bytes(content)
    c = controller()
    state, said = store(path, c)
    state.start()  # never raises
    (line,) = said
    aside = [p for p in os.listdir(tmp_path) if p.startswith("lbtui.state.json.corrupt-")]
    assert len(aside) == 1
    assert (tmp_path / aside[0]).read_bytes() == content  # kept, never deleted
    assert line.startswith(f"state: {path} is not lbtui state: ")
    assert f"moved to {tmp_path / aside[0]}; starting from the config" in line
    assert not path.exists()
    assert capture(c.balancer.services) == {}
    assert c.events() == []


def test_a_second_corrupt_file_in_the_same_second_does_not_replace_the_first(tmp_path):
    path = tmp_path / "s.json"
    for content in (b"one", b"two"):
        path.write_bytes(content)
        state, _ = store(path, controller())
        state.start()
    aside = sorted(os.listdir(tmp_path))
    assert len(aside) == 2
    assert {(tmp_path / p).read_bytes() for p in aside} == {b"one", b"two"}


def test_fresh_does_not_read_the_file_and_says_so(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"version": 1, "services": {"shop": {"algorithm": "random"}}}))
    c = controller()
    state, said = store(path, c)
    state.start(fresh=True)
    assert c.balancer.services["shop"].algorithm_name == "round_robin"
    assert said == [
        f"state: --fresh: {path} not read; the config as written, and the next change replaces the file"
    ]
    c.set_weight("blue-1", 3)
    state.flush()
    assert read(str(path)) == {"shop": {"backends": {"blue-1": {"weight": 3}}}}


def test_skipped_entries_are_warned_and_left_out_at_the_next_write(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {"version": 1, "services": {"gone": {"algorithm": "random"}, "shop": {"algorithm": "random"}}}
        )
    )
    c = controller()
    state, said = store(path, c)
    state.start()
    assert said == [
        f"state: {path}: services.gone: no service 'gone' in the config; skipped",
        f"state: restored 1 change from {path}",
    ]
    c.set_weight("blue-1", 2)
    state.flush()
    assert read(str(path)) == {"shop": {"algorithm": "random", "backends": {"blue-1": {"weight": 2}}}}


def test_an_unwritable_directory_is_reported_once_and_serving_goes_on(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("a file where the state directory should be")  # unwritable even for root
    path = blocker / "s.json"
    c = controller()
    scheduled: list = []
    state, said = store(path, c, scheduled)
    state.start()
    c.set_weight("blue-1", 2)
    scheduled.pop()()
    c.set_weight("blue-1", 3)  # tried again at the next change, reported no more
    scheduled.pop()()
    assert state.failing
    assert len([line for line in said if "cannot write" in line]) == 1
    assert said[-1].startswith(
        f"state: cannot write {path}: Not a directory; runtime changes will not survive"
    )
    blocker.unlink()
    blocker.mkdir()
    c.set_weight("blue-1", 4)
    scheduled.pop()()
    assert said[-1] == f"state: {path} written again"
    assert read(str(path)) == {"shop": {"backends": {"blue-1": {"weight": 4}}}}


def test_an_unreadable_file_is_reported_and_left_in_place(tmp_path):
    path = tmp_path / "s.json"
    path.mkdir()  # a directory where the file should be: read fails with an OSError, not a corrupt file
    c = controller()
    state, said = store(path, c)
    state.start()
    assert said[0].startswith(f"state: cannot read {path}: ")
    assert said[0].endswith("; starting from the config")
    assert path.is_dir()


def test_a_write_is_fast(tmp_path):
    """The write runs on the event loop: measure it (fsync included) on a config of 50 backends."""
    backends = [{"name": f"b{i}", "address": f"127.0.0.1:{9000 + i}"} for i in range(50)]
    c = InProcessController(Balancer(parse_config({"services": {"shop": {"backends": backends}}})))
    state, _ = store(tmp_path / "s.json", c)
    state.start()
    for i in range(50):
        c.set_weight(f"b{i}", 2 + i % 7)
        state.write()
    times = sorted(state.write_seconds)
    assert len(times) == 50
    print(f"state file write: median {times[25] * 1000:.2f} ms, max {times[-1] * 1000:.2f} ms")
    assert times[25] < 0.05


@pytest.mark.parametrize(
    "entry",
    [
        {"added": [{"name": "z", "address": "127.0.0.1:1", "state": []}]},
        {"added": [{"name": ["z"], "address": "127.0.0.1:1"}]},
        {"backends": {"blue-1": {"state": {"a": 1}}}},
    ],
)
def test_a_value_of_the_wrong_kind_sets_the_file_aside_and_never_stops_the_start(tmp_path, entry):
    path = tmp_path / "lbtui.state.json"
    path.write_text(json.dumps({"version": 1, "services": {"shop": entry}}))
    c = controller()
    state, said = store(path, c)
    state.start()  # no exception: the entry is skipped with its key path, or the file is set aside
    assert any(".corrupt-" in p.name for p in tmp_path.iterdir()) or any(
        "skipped" in line for line in said
    ), said
