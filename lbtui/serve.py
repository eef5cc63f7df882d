"""`lbtui serve`: the engine headless, with the demo when asked; SIGTERM drains and exits."""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from lbtui import data_plane_build
from lbtui.config import Config
from lbtui.demo.backends import DemoBackend
from lbtui.demo.scenario import DEMO_LISTEN, demo_backends, demo_config
from lbtui.demo.traffic import TrafficGenerator
from lbtui.proxy.engine import Engine


@dataclass
class ServeOptions:
    config: Config | None = None  # None: the demo
    grace: float = 10.0
    traffic_rate: float = 20.0
    demo_bind: str = DEMO_LISTEN


def _say(message: str) -> None:
    print(f"lbtui: {message}", file=sys.stderr, flush=True)


async def start_demo(bind: str, say: Callable[[str], None]) -> tuple[list[DemoBackend], Config]:
    backends = demo_backends()
    for backend in backends:
        await backend.start()
    config = demo_config(backends, bind)
    return backends, config


async def serve(options: ServeOptions, say: Callable[[str], None] = _say) -> int:
    demo: list[DemoBackend] = []
    config = options.config
    if config is None:
        demo, config = await start_demo(options.demo_bind, say)
    engine = Engine(config)
    try:
        await engine.start()
    except OSError as error:
        if options.config is None and options.demo_bind == DEMO_LISTEN:
            # The demo's usual port is taken: any free port will do for a demo.
            say(f"{DEMO_LISTEN} is busy ({error.strerror or error}); the demo listens on a free port instead")
            config = demo_config(demo, "127.0.0.1:0")
            engine = Engine(config)
            try:
                await engine.start()
            except OSError as again:
                say(f"cannot listen: {again}")
                return 1
        else:
            say(f"cannot listen: {error.strerror or error} ({error.__class__.__name__})")
            for backend in demo:
                await backend.stop()
            return 1
    # What exists at start lives for the whole run: keep the cyclic GC from walking it again and again, and
    # let it run less often (the data plane's per-request objects are freed by reference counting).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    for name, (host, port) in engine.addresses.items():
        say(f"listener {name} on http://{host}:{port}")
    say(f"data plane: {data_plane_build()}")
    if demo:
        say(
            "demo: service 'shop', backends "
            + ", ".join(f"{b.name} ({b.address})" for b in demo)
            + f"; traffic at {options.traffic_rate:g} req/s"
        )
        say(f"try: curl -i {engine.url()}/products")
    exit_code = 0
    async with anyio.create_task_group() as tg:
        if demo and options.traffic_rate > 0:
            tg.start_soon(TrafficGenerator(engine.url(), options.traffic_rate).run)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                say(f"{signal.Signals(signum).name}: draining (up to {options.grace:g}s), then exiting")
                break
        finished = await engine.shutdown(options.grace, say)
        if not finished:
            say("deadline reached with requests still in flight: closed them")
            exit_code = 1
        tg.cancel_scope.cancel()
    for backend in demo:
        await backend.stop()
    say("stopped")
    return exit_code


def run(options: ServeOptions) -> int:
    try:
        import uvloop  # noqa: F401

        backend_options = {"use_uvloop": True}
    except ImportError:
        backend_options = {}
    return anyio.run(serve, options, backend="asyncio", backend_options=backend_options)
