"""A measured prototype: the dashboard with the engine in a thread of its own (issue 3's next step).

    python benchmarks/run.py --dashboard --only lbtui,dashboard \
        --variant "thread=python benchmarks/dashboard_thread.py --variant thread-si1"

It is not the product (`lbtui` shares one loop today); it is here so the design can be measured and then
built into lbtui/tui and lbtui/serve.py.

The engine (Runtime) runs in a thread of its own on its own uvloop loop, started before the dashboard;
the dashboard gets a Controller whose every call is run on the engine's loop (the UI thread waits for the
result); events come back to the UI loop with call_soon_threadsafe (never blocking the engine). GC tuned
as `serve` does. thread-siN: sys.setswitchinterval(1 / 0.5 / 0.2 ms). Quitting the dashboard (q, y) returns from
App.run; then the engine is drained on its own loop and the thread joined.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any

from lbtui.cli import _load
from lbtui.serve import Runtime, ServeOptions, tune_gc
from lbtui.tui.app import Dashboard


def name_thread(name: str) -> None:
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass


class EngineThread:
    def __init__(self, options: ServeOptions, say: Callable[[str], None]) -> None:
        import uvloop

        self.runtime = Runtime(options, say)
        self.loop = uvloop.new_event_loop()
        self.ready: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self.thread = threading.Thread(target=self._main, name="lbtui-engine", daemon=True)

    def _main(self) -> None:
        name_thread("lbtui-engine")
        asyncio.set_event_loop(self.loop)
        try:
            ok = self.loop.run_until_complete(self.runtime.start())
        except BaseException as error:
            self.ready.set_exception(error)
            return
        if ok and self.runtime.traffic is not None:
            self.loop.create_task(self.runtime.traffic.run())
        self.ready.set_result(ok)
        if ok:
            self.loop.run_forever()

    def start(self) -> bool:
        self.thread.start()
        return self.ready.result(timeout=30)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is self.thread:
            return fn(*args, **kwargs)
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as error:
                fut.set_exception(error)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout=10)

    def stop(self) -> bool:
        finished = asyncio.run_coroutine_threadsafe(self.runtime.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        return bool(finished)


class CrossThreadController:
    """The Controller as the UI sees it: every call runs on the engine's loop; snapshots are immutable."""

    def __init__(self, et: EngineThread, inner: Any) -> None:
        self._et = et
        self._inner = inner

    def subscribe(self, callback: Callable[[Any], None]) -> None:
        ui_loop = asyncio.get_running_loop()  # called from the dashboard's on_mount

        def to_ui(event: Any) -> None:  # on the engine thread: post, never wait for the UI
            ui_loop.call_soon_threadsafe(callback, event)

        self._et.call(self._inner.subscribe, to_ui)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if callable(attr):
            return lambda *a, **k: self._et.call(attr, *a, **k)
        return attr


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", required=True, choices=["thread", "thread-si1", "thread-si05", "thread-si02"])
    p.add_argument("--config", required=True)
    args = p.parse_args()
    config = _load(args.config, "not started")
    if isinstance(config, int):
        return config
    interval = {"thread-si1": 0.001, "thread-si05": 0.0005, "thread-si02": 0.0002}.get(args.variant)
    if interval is not None:
        sys.setswitchinterval(interval)
    messages: list[str] = []
    et = EngineThread(ServeOptions(config=config), messages.append)
    if not et.start():
        print("\n".join(messages), file=sys.stderr)
        return 1
    assert et.runtime.engine is not None
    tune_gc()
    app = Dashboard(None, controller=CrossThreadController(et, et.runtime.engine.controller))  # type: ignore[arg-type]
    code = app.run()
    et.stop()
    return code if isinstance(code, int) else (app.return_code or 0)


if __name__ == "__main__":
    sys.exit(main())
