"""The engine on a thread of its own, for a UI in the same process (the dashboard).

The dashboard spends milliseconds of CPU on each redraw. On one event loop, every request in flight waits
for that redraw; on two, the engine's loop goes on while the UI's redraws. `benchmarks/run.py --dashboard`
measured both (benchmarks/README.md): the engine on its own thread is the one that keeps the dashboard's
cost to the data plane under issue 3's bar.

`EngineThread` runs a Runtime (the engine, and for the demo its backends and traffic) on its own event loop in
its own thread. `ThreadedController` is the Controller a UI gets: each call runs on the engine's loop, where
the balancer lives, and the caller waits for its result (a snapshot is immutable, so it may cross threads);
events go back to the subscriber's loop without the engine ever waiting for the UI.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

from lbtui.core.control import Controller, Event, ReloadResult
from lbtui.core.loopcall import poster
from lbtui.core.views import RequestView, Snapshot
from lbtui.serve import Runtime, ServeOptions, event_loop

T = TypeVar("T")

CALL_TIMEOUT = 30.0  # a call the engine has not run by then is a bug: say so rather than hang the UI


class EngineThread:
    """A Runtime on its own loop in a thread named lbtui-engine."""

    def __init__(self, options: ServeOptions, say: Callable[[str], None]) -> None:
        self.runtime = Runtime(options, say)
        self.loop = event_loop()
        self.thread = threading.Thread(target=self._main, name="lbtui-engine", daemon=True)
        self._started: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._closed = False  # the engine's loop has ended: calls run on the caller's thread
        self._traffic: asyncio.Task[None] | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            try:
                ok = self.loop.run_until_complete(self.runtime.start())
            except BaseException as error:
                self._started.set_exception(error)
                return
            if ok and self.runtime.traffic is not None:
                self._traffic = self.loop.create_task(self.runtime.traffic.run())
            self._started.set_result(ok)
            if ok:
                self.loop.run_forever()
        finally:
            with self._lock:
                self._closed = True
            self.loop.run_until_complete(asyncio.sleep(0))  # calls queued before the close still run
            self.loop.close()

    async def start(self) -> bool:
        """Start the thread and the engine in it; False when the engine cannot listen (the runtime said why)."""
        self.thread.start()
        return await asyncio.wrap_future(self._started)

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self._closed

    async def _stop(self) -> bool:
        if self._traffic is not None:
            self._traffic.cancel()
        return await self.runtime.stop()

    def _stop_future(self) -> concurrent.futures.Future[bool]:
        future = asyncio.run_coroutine_threadsafe(self._stop(), self.loop)
        future.add_done_callback(lambda _: self.loop.call_soon_threadsafe(self.loop.stop))
        return future

    async def stop(self) -> bool:
        """Drain and stop the engine (Runtime.stop), then end the thread; True if nothing in flight was cut."""
        if not self.running:
            return True
        finished = await asyncio.wrap_future(self._stop_future())
        await asyncio.to_thread(self.thread.join, CALL_TIMEOUT)
        return finished

    def stop_blocking(self) -> bool:
        """`stop` for a caller with no event loop (the command line, after the UI has gone)."""
        if not self.running:
            return True
        finished = self._stop_future().result(timeout=self.runtime.options.grace + CALL_TIMEOUT)
        self.thread.join(CALL_TIMEOUT)
        return finished

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """`fn(*args, **kwargs)` on the engine's loop; the calling thread waits for its result or exception."""
        if threading.current_thread() is self.thread:
            return fn(*args, **kwargs)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as error:
                    future.set_exception(error)

        with self._lock:
            if self._closed:
                return fn(*args, **kwargs)  # nothing else touches the engine now
            self.loop.call_soon_threadsafe(run)
        return future.result(timeout=CALL_TIMEOUT)


class ThreadedController(Controller):
    """The engine's Controller, called from another thread: every call runs on the engine's loop."""

    def __init__(self, engine: EngineThread, inner: Controller) -> None:
        self._engine = engine
        self._inner = inner

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """`callback` runs on the subscriber's loop (the one running now); the engine never waits for it."""
        post = poster(callback)
        self._engine.call(self._inner.subscribe, post)

    def snapshot(self) -> Snapshot:
        return self._engine.call(self._inner.snapshot)

    def set_state(self, backend: str, state: str, actor: str = "api") -> Event:
        return self._engine.call(self._inner.set_state, backend, state, actor)

    def drain_then_maint(self, backend: str, actor: str = "api") -> Event:
        return self._engine.call(self._inner.drain_then_maint, backend, actor)

    def set_weight(self, backend: str, weight: int, actor: str = "api") -> Event:
        return self._engine.call(self._inner.set_weight, backend, weight, actor)

    def add_backend(
        self,
        service: str,
        name: str,
        address: str,
        group: str = "default",
        weight: int = 1,
        actor: str = "api",
    ) -> Event:
        return self._engine.call(self._inner.add_backend, service, name, address, group, weight, actor)

    def remove_backend(self, backend: str, actor: str = "api") -> Event:
        return self._engine.call(self._inner.remove_backend, backend, actor)

    def set_algorithm(self, service: str, algorithm: str, actor: str = "api") -> Event:
        return self._engine.call(self._inner.set_algorithm, service, algorithm, actor)

    def set_split(self, service: str, split: Mapping[str, int], actor: str = "api") -> Event:
        return self._engine.call(self._inner.set_split, service, dict(split), actor)

    def flip(self, service: str, actor: str = "api") -> Event:
        return self._engine.call(self._inner.flip, service, actor)

    def start_ramp(self, service: str, actor: str = "api") -> Event:
        return self._engine.call(self._inner.start_ramp, service, actor)

    def abort_ramp(self, service: str, actor: str = "api") -> Event:
        return self._engine.call(self._inner.abort_ramp, service, actor)

    def events(self, limit: int = 100) -> list[Event]:
        return self._engine.call(self._inner.events, limit)

    def recent_requests(self, limit: int = 100) -> list[RequestView]:
        return self._engine.call(self._inner.recent_requests, limit)

    def undo(self, actor: str = "api") -> Event:
        return self._engine.call(self._inner.undo, actor)

    def reload(self, actor: str = "api") -> ReloadResult:
        return self._engine.call(self._inner.reload, actor)
