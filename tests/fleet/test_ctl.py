"""`lbtui ctl --admin URL --admin URL ...` against a fleet of real HAProxy processes, each run a process of its own
(`python -m lbtui`): the same output and exit codes as against one instance, the change on every instance."""

from __future__ import annotations

import json

import pytest

from lbtui.core.control import Conflict
from lbtui.haproxy.controller import HaproxyController
from tests.fleet.test_fleet import server_state
from tests.haproxy.test_ctl import ctl


@pytest.mark.slow
async def test_ctl_drains_every_instance_as_it_drains_one(haproxy):
    one, two, alone = await haproxy(["a", "b"]), await haproxy(["a", "b"]), await haproxy(["a", "b"])
    fleet = ["--admin", str(one.unix), "--admin", f"haproxy://127.0.0.1:{two.admin_port}"]
    code, out, err = await ctl(*fleet, "drain", "a", "--wait", "--timeout", "20s")
    single = await ctl("--admin", str(alone.unix), "drain", "a", "--wait", "--timeout", "20s")
    assert (code, err) == (0, "")
    assert single[0] == 0
    # The same lines, the fleet's first one saying what each instance did.
    assert out.splitlines()[0].startswith("a: state ready -> drain (on every instance: ")
    assert single[1].splitlines()[0] == "a: state ready -> drain"
    assert out.splitlines()[1:] == single[1].splitlines()[1:]
    assert [(await server_state(h, "a")).draining for h in (one, two)] == [True, True]

    code, out, err = await ctl(*fleet, "state", "--json")
    assert (code, err) == (0, "")
    [app] = json.loads(out)["services"]
    a = app["backends"][0]
    assert (a["name"], a["admin_state"], a["fleet"]) == (
        "a",
        "drain",
        {"instances": 2, "agreeing": 2, "mixed": [], "diverged": ""},
    )
    # --admin after COMMAND adds to those before it, as the other options are taken either side.
    code, out, err = await ctl(fleet[0], fleet[1], "state", "--json", fleet[2], fleet[3])
    assert (code, err) == (0, "")
    assert json.loads(out)["services"][0]["backends"][0]["fleet"]["instances"] == 2
    code, out, err = await ctl(*fleet, "state")
    assert code == 0
    assert "AGREE" in out.splitlines()[1]

    # Refusals: the exit codes of one instance.
    assert (
        (await ctl(*fleet, "weight", "nosuch", "3"))[0]
        == (await ctl("--admin", str(alone.unix), "weight", "nosuch", "3"))[0]
        == 1
    )
    code, out, err = await ctl(*fleet, "weight", "nosuch", "3")
    assert "not changed on any instance" in err
    assert (await ctl(*fleet, "weight", "a"))[0] == 2  # bad usage


async def test_a_socket_below_level_admin_fails_the_check(haproxy):
    h = await haproxy(["a"])
    controller = HaproxyController(str(h.operator))
    try:
        with pytest.raises(Conflict, match="level operator: changes need `level admin`"):
            controller.check("state", "a")
    finally:
        controller.close()
    admin = HaproxyController(str(h.tcp))
    try:
        admin.check("state", "a")  # no refusal: level admin, and the server exists
    finally:
        admin.close()


async def test_ctl_removes_from_every_instance(haproxy):
    one, two = await haproxy(["a", "b"]), await haproxy(["a", "b"])
    code, out, err = await ctl("--admin", str(one.unix), "--admin", str(two.unix), "remove", "b")
    assert (code, err) == (0, ""), out
    assert out == "b: removing (no new traffic; gone once nothing is in flight)\n"
    for h in (one, two):  # drained, then deleted on both before ctl exited
        assert [s.server for s in await h.client().show_servers_state("app")] == ["a"]
