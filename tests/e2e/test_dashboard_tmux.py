"""The dashboard as a user drives it: `lbtui` in a terminal (a private tmux server) against real backends.

Keys go in with `tmux send-keys`, the screen comes out with `tmux capture-pane`, and the backends (in this
process, on loopback) count what they received, so the test checks both sides: what the screen says and what
really happened. Every wait polls a condition with a deadline; a failure shows the last screen.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lbtui.demo.backends import DemoBackend
from lbtui.tui.app import Dashboard as DashboardApp

ROOT = Path(__file__).resolve().parents[2]
TMUX = shutil.which("tmux")
WIDTH, HEIGHT = 160, 45
DEADLINE = 15.0  # one screen change or one start, on a slow, loaded CI machine
POLL = 0.05
NAMES = ("alpha", "bravo", "charlie")

pytestmark = [
    pytest.mark.skipif(TMUX is None, reason="needs tmux (.ci/run installs it)"),
    pytest.mark.timeout(90),
]

# The private server's settings, not the user's ~/.tmux.conf: the whole window is the pane (no status line),
# and a pane whose program exited stays, so that its exit status and last words can be read.
TMUX_CONF = """\
set -g status off
set -g default-terminal "screen-256color"
set -g history-limit 2000
set -wg remain-on-exit on
"""


class Tmux:
    """One tmux server of our own (`-L`, a socket no user session shares) running one session, `t`."""

    def __init__(self, conf: Path) -> None:
        assert TMUX is not None
        self.argv = [TMUX, "-u", "-L", f"lbtui-test-{os.getpid()}-{uuid.uuid4().hex[:8]}", "-f", str(conf)]
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("TMUX", "TMUX_PANE", "COLUMNS", "LINES", "COLORTERM") and not k.startswith("TEXTUAL")
        }
        # The server, and so the program in the pane, gets this environment (LBTUI_PURE passes through).
        self.env = env | {"SHELL": "/bin/sh", "LANG": env.get("LANG") or "C.UTF-8"}
        self.socket = ""

    async def run(self, *args: str, check: bool = True) -> str:
        # In a thread: the backends live on this event loop and must keep answering meanwhile.
        done = await asyncio.to_thread(
            subprocess.run, [*self.argv, *args], capture_output=True, text=True, env=self.env, timeout=10
        )
        if check and done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    async def start(self, command: list[str]) -> None:
        await self.run(
            "new-session", "-d", "-s", "t", "-x", str(WIDTH), "-y", str(HEIGHT), "-c", str(ROOT),
            "exec " + shlex.join(command),
        )  # fmt: skip
        self.socket = (await self.run("display-message", "-p", "#{socket_path}")).strip()

    async def screen(self, history: bool = False) -> str:
        """The pane's text as a user sees it; with `history`, what scrolled off the top too."""
        return await self.run("capture-pane", "-p", "-t", "t", *(["-S", "-"] if history else []))

    async def keys(self, *keys: str) -> None:
        await self.run("send-keys", "-t", "t", *keys)

    async def exit_status(self) -> int | None:
        """The program's exit status once tmux has reaped it (minus the signal's number if one killed it).

        None while it runs, and also in the moment between its terminal closing and tmux reaping it.
        """
        out = await self.run(
            "display-message", "-p", "-t", "t", "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}:#{pid}"
        )
        dead, status, signal_number, server = [*out.strip().split(":"), "", "", ""][:4]
        if dead != "1":
            return None
        if status:
            return int(status)
        if signal_number:
            return -int(signal_number)
        # The terminal closed but tmux has not reaped the process. It may never: built with libutempter, tmux
        # misses a SIGCHLD that arrives while utempter's own handler is in (tmux/tmux#311). Remind it.
        if server.isdigit():
            os.kill(int(server), signal.SIGCHLD)
        return None

    async def kill_session(self) -> None:
        await self.run("kill-session", "-t", "t", check=False)

    def kill_server(self) -> None:
        subprocess.run([*self.argv, "kill-server"], capture_output=True, env=self.env, timeout=10)
        if self.socket:  # tmux leaves its socket file behind
            Path(self.socket).unlink(missing_ok=True)


async def wait_screen(
    tmux: Tmux, condition: Callable[[str], bool], what: str, exited_ok: bool = False
) -> str:
    """Poll the screen until `condition(screen)`; fail after DEADLINE, or as soon as lbtui exits.

    With `exited_ok`, lbtui exiting ends the wait too (the caller reads why from the screen).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        screen = await tmux.screen()
        if condition(screen):
            return screen
        status = await tmux.exit_status()
        if status is not None:
            screen = await tmux.screen(history=True)
            if exited_ok:
                return screen
            raise AssertionError(f"lbtui exited ({status}) while waiting for {what}; the screen:\n{screen}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}; the screen:\n{screen}")
        await asyncio.sleep(POLL)


async def wait_exit(tmux: Tmux) -> tuple[int, str]:
    """lbtui's exit status and the terminal's text (scrollback included) once it has exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while (status := await tmux.exit_status()) is None:
        if loop.time() > deadline:
            raise AssertionError(f"lbtui still running after {DEADLINE}s; the screen:\n{await tmux.screen()}")
        await asyncio.sleep(POLL)
    return status, await tmux.screen(history=True)


def table(screen: str) -> dict[str, dict[str, str]]:
    """The backends table as a user reads it: {backend: {column label: cell text}}, by the header's columns.

    Labels are separated by two spaces or more (a label itself may hold one, as "in flight" does); a column
    runs from its label to the next label. The table ends at the first blank line.
    """
    lines = screen.splitlines()
    header = next((i for i, line in enumerate(lines) if line.split()[:1] == ["backend"]), None)
    if header is None:
        return {}
    labels = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", lines[header])]
    ends = [start for start, _ in labels[1:]] + [None]
    rows = {}
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        row = {label: line[start:end].strip() for (start, label), end in zip(labels, ends, strict=True)}
        rows[row["backend"]] = row
    return rows


def shows(screen: str, **want: Callable[[dict[str, str]], bool]) -> bool:
    """True when the table has a row for each name in `want` and `want[name](row)` holds for each."""
    rows = table(screen)
    return all(name in rows and check(rows[name]) for name, check in want.items())


def free_port() -> int:
    """A port nothing listens on right now (it may be taken before lbtui binds it: the caller retries)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, port: int, backends: list[DemoBackend]) -> Path:
    text = f'[[listeners]]\nname = "web"\nbind = "127.0.0.1:{port}"\n\n'
    text += '[services.app]\nalgorithm = "weighted_round_robin"\n'
    for b in backends:
        text += f'\n[[services.app.backends]]\nname = "{b.name}"\naddress = "{b.address}"\n'
    path.write_text(text)
    return path


@dataclass
class Running:
    tmux: Tmux
    url: str
    backends: dict[str, DemoBackend]

    def received(self) -> dict[str, int]:
        return {name: b.requests for name, b in self.backends.items()}

    async def traffic(self, count: int) -> dict[str, int]:
        """Send `count` GETs (one after another, bounded in time too); what each backend received of them."""
        before = self.received()
        sent = 0
        try:
            # trust_env=False: no HTTP_PROXY from the environment; this traffic goes to 127.0.0.1 only.
            async with (
                asyncio.timeout(DEADLINE),
                httpx.AsyncClient(base_url=self.url, timeout=5, trust_env=False) as http,
            ):
                for sent in range(1, count + 1):
                    response = await http.get(f"/products/{sent}")
                    assert response.status_code == 200, response.text
        except (httpx.HTTPError, TimeoutError) as error:
            raise AssertionError(
                f"request {sent} of {count} failed: {error!r}; the backends had received {before} and now "
                f"{self.received()}; the screen:\n{await self.tmux.screen()}"
            ) from error
        return {name: n - before[name] for name, n in self.received().items()}

    async def counts_on_screen(self) -> str:
        """Wait until the table's requests column says what each backend really received."""
        received = self.received()
        return await wait_screen(
            self.tmux,
            lambda screen: shows(
                screen, **{n: (lambda row, n=n: row["requests"] == str(received[n])) for n in received}
            ),
            f"the table to show the requests the backends received, {received}",
        )


@pytest.fixture
async def dashboard(tmp_path, backends) -> AsyncIterator[Running]:
    """`lbtui --config FILE` in tmux, in front of three real backends, with every backend on the screen."""
    started = {name: await backends(name) for name in NAMES}
    conf = tmp_path / "tmux.conf"
    conf.write_text(TMUX_CONF)
    tmux = Tmux(conf)

    def all_ready(screen: str) -> bool:
        return shows(screen, **{name: (lambda row: row["state"] == "ready") for name in NAMES})

    try:
        for _attempt in range(3):
            port = free_port()
            config = write_config(tmp_path / "lbtui.toml", port, list(started.values()))
            await tmux.start([sys.executable, "-m", "lbtui", "--config", str(config)])
            screen = await wait_screen(tmux, all_ready, "every backend on the screen", exited_ok=True)
            if all_ready(screen):
                break
            if "cannot listen" not in screen:
                pytest.fail(f"lbtui exited at start; the screen:\n{screen}")
            await tmux.kill_session()  # the port was taken between free_port() and lbtui's bind: again
        else:
            pytest.fail(f"lbtui could not listen on a free port three times; the screen:\n{screen}")
        yield Running(tmux, f"http://127.0.0.1:{port}", started)
    finally:
        tmux.kill_server()


async def test_keys_steer_the_real_backends_and_the_screen_tells_the_truth(dashboard):
    tmux = dashboard.tmux
    screen = await tmux.screen()
    assert list(table(screen)) == list(NAMES)  # config order
    assert all(row["requests"] == "0" and row["weight"] == "1" for row in table(screen).values())
    assert dashboard.url.removeprefix("http://") in screen.splitlines()[0], (
        "the status bar names the listener"
    )

    # Traffic: every backend takes its turn, and the table counts what each one really received.
    got = await dashboard.traffic(30)
    assert all(got[n] > 0 for n in NAMES), got
    assert sum(got.values()) == 30
    await dashboard.counts_on_screen()

    # down, d: bravo (the second row) drains; the table and the events pane say so.
    await tmux.keys("Down", "d")
    screen = await wait_screen(
        tmux, lambda s: shows(s, bravo=lambda row: row["state"].startswith("drain")), "bravo to show drain"
    )
    assert table(screen)["alpha"]["state"] == table(screen)["charlie"]["state"] == "ready"
    assert any(" key " in line and "bravo" in line and "-> drain" in line for line in screen.splitlines()), (
        "the events pane names the change"
    )

    # A drained backend gets no new request; the others take them all.
    got = await dashboard.traffic(30)
    assert got["bravo"] == 0, got
    assert got["alpha"] > 0, got
    assert got["charlie"] > 0, got
    await dashboard.counts_on_screen()

    # e: bravo is back in service and takes traffic again.
    await tmux.keys("e")
    await wait_screen(tmux, lambda s: shows(s, bravo=lambda row: row["state"] == "ready"), "bravo ready")
    got = await dashboard.traffic(30)
    assert all(got[n] > 0 for n in NAMES), got
    await dashboard.counts_on_screen()

    # +: bravo's weight 2 shows in the table, and weighted round robin sends it twice the share of the others.
    await tmux.keys("+")
    await wait_screen(tmux, lambda s: shows(s, bravo=lambda row: row["weight"] == "2"), "bravo's weight 2")
    assert {row["weight"] for name, row in table(await tmux.screen()).items() if name != "bravo"} == {"1"}
    got = await dashboard.traffic(40)
    assert got["bravo"] > got["alpha"] + 5, got
    assert got["bravo"] > got["charlie"] + 5, got
    await dashboard.counts_on_screen()

    # ?: the keys and what they do; escape: back to the table.
    tooltips = {b.key: b.tooltip for b in DashboardApp.BINDINGS}
    help_lines = [tooltips[key][:24] for key in ("d", "e", "plus", "q")]  # short: long ones wrap
    await tmux.keys("?")
    await wait_screen(tmux, lambda s: all(text in s for text in help_lines), f"the help screen: {help_lines}")
    await tmux.keys("Escape")
    await wait_screen(tmux, lambda s: help_lines[0] not in s and "bravo" in table(s), "the help to close")

    # q asks first; y drains the engine, and lbtui exits 0 within the deadline, its listener closed.
    await tmux.keys("q")
    await wait_screen(tmux, lambda s: "Cancel" in s and "Yes" in s, "the quit question")
    assert await tmux.exit_status() is None
    await tmux.keys("y")
    status, screen = await wait_exit(tmux)
    assert status == 0, screen
    assert "Traceback" not in screen, screen
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=dashboard.url, timeout=5, trust_env=False) as http:
            await http.get("/")
