"""`lbtui attach` against an admin API that stops answering: the dashboard never waits on it.

The API is a real engine's, reached through a fault proxy; `blackhole` makes the proxy take every request and
never answer, as a server that hangs does. Keys, view changes and redraws must stay quick meanwhile (the old
RemoteController made each of them wait for its socket's timeout), and the status bar says what is wrong.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from lbtui.admin.remote import RemoteController
from lbtui.core.control import ControlError
from lbtui.tui.app import Dashboard
from lbtui.tui.table import Table
from tests.attached import canary_config, served
from tests.conftest import DEADLINE, wait_for
from tests.faultproxy import FaultProxy
from tests.tui.keys import settled

T = TypeVar("T")
SIZE = (160, 40)
QUICK = 1.0  # seconds: a generous bound for a key, a redraw or a stall (a few ms when nothing waits)
TIMEOUT = 3.0  # the deadline per request (the default): what the old dashboard froze for on each call


class ProxyThread:
    """A FaultProxy on a loop and thread of its own, as the network between two machines is: what the
    dashboard's loop does (or fails to do) cannot hold it up."""

    def __init__(self, target: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self.proxy = self._run(FaultProxy(target).start())

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(DEADLINE)

    def call(self, change: Callable[[], object]) -> None:
        async def run() -> None:
            change()

        self._run(run())

    def stop(self) -> None:
        self._run(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(DEADLINE)
        self._loop.close()


class Stalls:
    """The longest time the event loop (the dashboard's: Pilot runs it on the test's) went without a turn."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.longest = max(self.longest, loop.time() - before - 0.01)

    def __enter__(self) -> Stalls:
        self._task = asyncio.get_running_loop().create_task(self._beat())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def quick(work: Callable[[], object], what: str) -> None:
    """`work` (an action, as a key runs it on the dashboard's loop) returns within QUICK."""
    started = time.monotonic()
    work()
    took = time.monotonic() - started
    assert took < QUICK, f"{what} took {took:.2f}s while the server hangs"


async def test_keys_and_redraws_go_on_while_the_server_hangs(backends) -> None:
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s:
        network = await asyncio.to_thread(ProxyThread, s.url.removeprefix("http://"))
        remote = RemoteController(f"http://{network.proxy.address}", timeout=TIMEOUT)
        try:
            await asyncio.to_thread(remote.snapshot)  # as `lbtui attach` does before drawing anything
            app = Dashboard(None, controller=remote)
            async with app.run_test(size=SIZE) as pilot:
                await pilot.pause()
                table = app.query_one("#backends", Table)
                assert table.keys == ["blue-1", "green-1"]
                message, status = app.query_one("#message"), app.query_one("#status")

                network.call(network.proxy.blackhole)  # from now on: every request is taken, none is answered
                with Stalls() as stalls:
                    quick(app.action_next_view, "tab (the next view)")
                    quick(lambda: app.action_view("backends"), "1 (the backends)")
                    quick(app.action_drain, "d on a row")
                    assert str(message.render()) == "draining blue-1…"  # at once; the answer comes later
                    quick(app.refresh_view, "a redraw")
                    await pilot.press("tab", "tab", "1", "down", "up", "d")  # keys, as a user presses them
                    await wait_for(lambda: "CONNECTION LOST" in str(status.render()), what="the status")
                assert stalls.longest < QUICK, f"the dashboard's loop stalled {stalls.longest:.2f}s"

                assert "no answer from" in str(status.render())
                assert status.has_class("error")
                assert table.keys == ["blue-1", "green-1"]  # the last state stays
                await settled(pilot)  # the drain gives up at its deadline, and says why
                assert "no answer from" in str(message.render())  # (the request may have landed: unknown)

                network.call(network.proxy.clear)  # the server answers again: the dashboard notices by itself
                await wait_for(lambda: "CONNECTION LOST" not in str(status.render()), what="the recovery")
                await pilot.press("down", "d")
                await settled(pilot)
                assert str(message.render()).startswith("green-1: state ready -> drain")
                assert s.engine.call(s.controller.snapshot).backend("green-1").admin_state == "drain"
                await pilot.press("q", "y")
                await wait_for(lambda: not app.is_running, what="the dashboard to quit")
        finally:
            remote.close()
            await asyncio.to_thread(network.stop)


def test_a_change_that_hangs_does_not_hold_up_quitting() -> None:
    """The dashboard's loop ends (asyncio.run, as App.run) while a change still waits on a silent engine."""
    from lbtui.tui.app import off_the_loop

    released = threading.Event()

    async def dashboard() -> None:
        change = asyncio.ensure_future(off_the_loop(lambda: released.wait(DEADLINE)))
        await asyncio.sleep(0)
        change.cancel()  # the app quits: its workers are cancelled

    started = time.monotonic()
    asyncio.run(dashboard())  # asyncio.to_thread's executor would be joined here, for the change's deadline
    took = time.monotonic() - started
    released.set()
    assert took < QUICK, f"quitting took {took:.2f}s"


async def test_off_the_loop_hands_back_results_and_exceptions() -> None:
    from lbtui.tui.app import off_the_loop

    assert await off_the_loop(lambda: threading.current_thread().name) == "lbtui-change"
    with pytest.raises(ControlError, match="refused"):
        await off_the_loop(lambda: (_ for _ in ()).throw(ControlError("refused")))
