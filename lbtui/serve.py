"""`lbtui serve`: the engine headless, with the demo when asked; SIGTERM drains and exits.

The runtime knows no face: the admin API is started through `ServeOptions.admin_server`, which the command line
fills in (lbtui/cli.py), so that this module never imports lbtui.admin (docs/architecture.md, the layers).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import anyio

from lbtui import data_plane_line
from lbtui.config import Config, ConfigError, ConfigIssue, load_config
from lbtui.core.control import Controller, ReloadRefused, ReloadResult
from lbtui.core.persist import StateFile
from lbtui.demo.backends import DemoBackend
from lbtui.demo.scenario import DEMO_LISTEN, demo_backends, demo_config
from lbtui.demo.traffic import TrafficGenerator
from lbtui.proxy.engine import Engine, format_address


class AdminServing(Protocol):
    """What the runtime needs of a running admin API (lbtui/admin/api.py's AdminServer)."""

    @property
    def url(self) -> str: ...

    async def stop(self) -> None: ...


# Starts the admin API over the engine's controller, as the config's [admin] says: the server, or None after
# saying (through the callable given) why it cannot start.
StartAdmin = Callable[[Controller, Config, Callable[[str], None]], Awaitable[AdminServing | None]]


@dataclass
class ServeOptions:
    config: Config | None = None  # None: the demo
    grace: float = 10.0
    traffic_rate: float = 20.0
    demo_bind: str = DEMO_LISTEN
    fresh: bool = False  # start from the config alone: [state].file is not read (it is written after changes)
    # How to start the admin API when [admin] enables it (cli passes lbtui.admin.api.start_admin_server);
    # None: a config that enables it is not started, and says why.
    admin_server: StartAdmin | None = None


def _say(message: str) -> None:
    print(f"lbtui: {message}", file=sys.stderr, flush=True)


def tune_gc() -> None:
    """Once the engine runs. What exists at start lives for the whole run: keep the cyclic GC from walking it
    again and again, and let it run less often (per-request objects are freed by reference counting)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (the data plane runs about a third faster on it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Runtime:
    """The engine with, for the demo, its backends and traffic: what `serve` and the dashboard both run."""

    def __init__(self, options: ServeOptions, say: Callable[[str], None] = _say) -> None:
        self.options = options
        self.say = say
        self.demo: list[DemoBackend] = []
        self.engine: Engine | None = None
        self.traffic: TrafficGenerator | None = None
        self.state: StateFile | None = None  # [state].file: restored before the listeners accept
        self.admin: AdminServing | None = None  # the admin API, when [admin] enables it

    async def start(self) -> bool:
        """Start everything; False (after saying why) when it cannot listen."""
        options, say = self.options, self.say
        config = options.config
        if config is None:
            self.demo = demo_backends()
            for backend in self.demo:
                await backend.start()
            config = demo_config(self.demo, options.demo_bind)
        try:
            engine = Engine(config)
        except OSError as error:  # the access log's file cannot be opened
            say(str(error))
            await self.stop_demo()
            return False
        if config.state.file is not None:
            self.state = StateFile(
                config.state.file, engine.controller, say, schedule=asyncio.get_running_loop().call_soon
            )
            self.state.start(fresh=options.fresh)
        try:
            await engine.start()
        except OSError as error:
            if not (self.demo and options.demo_bind == DEMO_LISTEN):
                where = ", ".join(
                    f"{listener.name} on {format_address(listener.host, listener.port)}"
                    for listener in engine.config.listeners
                )
                say(f"cannot listen ({where}, from {engine.config.source}): {error.strerror or error}")
                await self.stop_demo()
                return False
            # The demo's usual port is taken: any free port will do for a demo.
            say(f"{DEMO_LISTEN} is busy ({error.strerror or error}); the demo listens on a free port instead")
            engine = Engine(demo_config(self.demo, "127.0.0.1:0"))
            try:
                await engine.start()
            except OSError as again:
                say(f"cannot listen: {again}")
                await self.stop_demo()
                return False
        self.engine = engine
        engine.controller.reloader = self.reload  # Controller.reload: the dashboard's r, the admin API's
        if engine.config.admin.enabled and not await self.start_admin(engine):
            await engine.shutdown(0.0)
            self.engine = None
            await self.stop_demo()
            return False
        if self.demo and options.traffic_rate > 0:
            self.traffic = TrafficGenerator(engine.url(), options.traffic_rate)
        return True

    async def start_admin(self, engine: Engine) -> bool:
        """The admin API on [admin].bind, over the engine's controller; False (after saying why) if it cannot."""
        start = self.options.admin_server
        if start is None:
            self.say("cannot start the admin API: this program runs the engine without one ([admin] is set)")
            return False
        self.admin = await start(engine.controller, engine.config, self.say)
        return self.admin is not None

    # -- reload (SIGHUP, and Controller.reload: POST /api/v1/reload, `lbtui ctl reload`, the dashboard's r) ----
    def reload(self) -> ReloadResult:
        """Re-read the config file and apply it (on the engine's loop), saying what changed. ReloadRefused when
        it cannot be applied (the file's problems, or what the engine could not do): nothing changed, the
        running config goes on."""
        engine = self.engine
        if engine is None or self.options.config is None:
            raise ReloadRefused(
                [
                    ConfigIssue(
                        "<demo>", "", "the demo has no config file to reload (lbtui serve --config FILE)"
                    )
                ]
            )
        source = self.options.config.source
        try:
            result = engine.reload(load_config(source))
        except (ConfigError, ReloadRefused) as error:
            self.say(f"reload refused: {source}: {len(error.issues)} problem(s); the running config stays")
            for issue in error.issues:
                self.say(f"  {issue}")
            if isinstance(error, ConfigError):
                raise ReloadRefused(error.issues) from None
            raise
        self.say(result.summary())
        for line in [*result.changes, *result.warnings, *result.restart_needed]:
            self.say(f"  {line}")
        return result

    def announce(self) -> None:
        engine = self.engine
        assert engine is not None
        for name in engine.addresses:
            self.say(f"listener {name} on {engine.url(name)}")
        if self.admin is not None:
            self.say(f"admin API on {self.admin.url}")
        self.say(data_plane_line())
        if self.demo:
            self.say(
                "demo: service 'shop', backends "
                + ", ".join(f"{b.name} ({b.address})" for b in self.demo)
                + f"; traffic at {self.options.traffic_rate:g} req/s"
            )
            self.say(f"try: curl -i {engine.url()}/products")

    async def stop(self) -> bool:
        """Drain and stop; True when every request in flight finished within the grace period."""
        finished = True
        if self.engine is not None:
            finished = await self.engine.shutdown(self.options.grace, self.say)
        if self.admin is not None:  # after the drain, so that `lbtui ctl` can watch it
            await self.admin.stop()
            self.admin = None
        if self.state is not None:
            self.state.flush()  # what the last MIN_INTERVAL changed, and what changed while draining
        await self.stop_demo()
        return finished

    async def stop_demo(self) -> None:
        for backend in self.demo:
            await backend.stop()


async def serve(options: ServeOptions, say: Callable[[str], None] = _say) -> int:
    runtime = Runtime(options, say)
    if not await runtime.start():
        return 1
    tune_gc()
    exit_code = 0
    async with anyio.create_task_group() as tg:
        if runtime.traffic is not None:
            tg.start_soon(runtime.traffic.run)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            # Announced once the signals are ours: a SIGHUP or SIGTERM sent as soon as the listener line shows
            # must reload or drain, not kill the process (the default action).
            runtime.announce()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    say("SIGHUP: reloading the config")
                    with contextlib.suppress(ReloadRefused):
                        runtime.reload()  # says what changed, or why nothing did
                    continue
                say(f"{signal.Signals(signum).name}: draining (up to {options.grace:g}s), then exiting")
                break
        if not await runtime.stop():
            say("deadline reached with requests still in flight: closed them")
            exit_code = 1
        tg.cancel_scope.cancel()
    say("stopped")
    return exit_code


def run(options: ServeOptions) -> int:
    try:
        import uvloop  # noqa: F401

        backend_options = {"use_uvloop": True}
    except ImportError:
        backend_options = {}
    return anyio.run(serve, options, backend="asyncio", backend_options=backend_options)
