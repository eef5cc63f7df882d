"""`lbtui attach haproxy://...` against a stats socket that stops answering: the dashboard never waits on it.

The socket is a relay (a unix socket in a short temporary folder, on a loop and thread of its own) in front of
a real HAProxy's; `hang` makes it accept each connection and never answer, as an HAProxy that hangs does. Keys,
view changes and redraws stay quick meanwhile (the old dashboard ran a change on its own loop and froze for the
change's whole deadline), and the status bar says what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from lbtui.haproxy.controller import HaproxyController
from lbtui.tui.app import Dashboard
from lbtui.tui.table import Table
from tests.conftest import DEADLINE, wait_for
from tests.tui.keys import settled

T = TypeVar("T")
SIZE = (160, 40)
QUICK = 1.0  # seconds: a generous bound for a key, a redraw or a stall (a few ms when nothing waits)
TIMEOUT = 3.0  # the deadline per Runtime API call: what the old dashboard froze for on a change (at least)


class Relay:
    """A unix stats socket that passes each connection to `target`'s, or (`hang`) takes it and never answers."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.folder = Path(tempfile.mkdtemp(prefix="lbtui-hang-"))  # short: sun_path holds 107 bytes
        self.path = self.folder / "relay.sock"
        self.hang = False
        self.hung = 0  # connections taken and never answered
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._thread.start()
        self._server: asyncio.Server = self._run(asyncio.start_unix_server(self._serve, str(self.path)))

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(DEADLINE)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer: asyncio.StreamWriter | None = None
        try:
            if self.hang:
                self.hung += 1
                while await reader.read(65536):
                    pass  # the command is read; no answer ever comes
                return
            up_reader, up_writer = await asyncio.open_unix_connection(self.target)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            for end in (writer, up_writer):
                if end is not None:
                    end.close()
                    with contextlib.suppress(OSError, asyncio.CancelledError):
                        await end.wait_closed()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.close()

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(DEADLINE)
        self._loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)


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
    assert took < QUICK, f"{what} took {took:.2f}s while HAProxy's socket hangs"


async def test_keys_and_redraws_go_on_while_the_stats_socket_hangs(haproxy) -> None:
    h = await haproxy(["a", "b"])
    relay = await asyncio.to_thread(Relay, str(h.socket_path))
    controller = HaproxyController(f"haproxy://{relay.path}", timeout=TIMEOUT, poll_seconds=0.05)
    try:
        await asyncio.to_thread(controller.snapshot)  # as `lbtui attach` does before drawing anything
        app = Dashboard(None, controller=controller)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            table = app.query_one("#backends", Table)
            assert table.keys == ["a", "b"]
            message, status = app.query_one("#message"), app.query_one("#status")

            relay.hang = True  # from now on: every connection is taken, none is answered
            with Stalls() as stalls:
                quick(app.action_next_view, "tab (the next view)")
                quick(lambda: app.action_view("backends"), "1 (the backends)")
                quick(app.action_drain, "d on a row")
                assert str(message.render()) == "draining a…"  # at once; the answer comes later
                quick(app.refresh_view, "a redraw")
                await pilot.press("tab", "tab", "1", "down", "up", "d")  # keys, as a user presses them
                await wait_for(lambda: "CONNECTION LOST" in str(status.render()), what="the status")
                await settled(pilot)  # the drains give up at their deadline, and say why
            assert stalls.longest < QUICK, f"the dashboard's loop stalled {stalls.longest:.2f}s"
            assert relay.hung > 0
            assert status.has_class("error")
            assert "no answer" in str(message.render()), str(message.render())
            assert table.keys == ["a", "b"]  # the last state stays
            states = await h.client().show_servers_state("app")
            assert not any(s.draining for s in states)  # nothing reached HAProxy

            relay.hang = False  # HAProxy answers again: the dashboard notices by itself
            await wait_for(lambda: "CONNECTION LOST" not in str(status.render()), what="the recovery")
            await pilot.press("d")
            await settled(pilot)
            assert str(message.render()).startswith("a: state ready -> drain"), str(message.render())
            states = await h.client().show_servers_state("app")
            assert next(s for s in states if s.server == "a").draining
    finally:
        await asyncio.to_thread(controller.close)
        await asyncio.to_thread(relay.stop)
