"""A real engine with its admin API on a thread of its own, as `lbtui serve` would be a process of its own.

`lbtui attach`'s RemoteController calls the API synchronously; the engine must answer from another loop
than the caller's (the test's, or the dashboard's).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from lbtui.admin.api import start_admin_server
from lbtui.admin.remote import RemoteController
from lbtui.config import AdminConfig, Config
from lbtui.core.control import Controller
from lbtui.serve import ServeOptions
from lbtui.threaded import EngineThread
from tests.conftest import make_config


def canary_config(blue: Any, green: Any) -> Config:
    """blue-1 and green-1 (backends from the `backends` fixture) split 90/10, with a ramp that holds an hour."""
    return make_config(
        [
            {"name": "blue-1", "address": blue.address, "group": "blue"},
            {"name": "green-1", "address": green.address, "group": "green"},
        ],
        split={"blue": 90, "green": 10},
        ramp={"steps": [20, 60, 100], "hold": "1h", "min_requests": 5},
    )


@dataclasses.dataclass
class Served:
    engine: EngineThread
    url: str  # the admin API's
    proxy: str  # the first listener's URL
    remote: RemoteController

    @property
    def controller(self) -> Controller:
        """The engine's own controller (call it through `self.engine.call`)."""
        engine = self.engine.runtime.engine
        assert engine is not None
        return engine.controller


@contextlib.asynccontextmanager
async def served(config: Config) -> AsyncIterator[Served]:
    config = dataclasses.replace(config, admin=AdminConfig(host="127.0.0.1", port=0, enabled=True))
    messages: list[str] = []
    options = ServeOptions(config=config, grace=1.0, admin_server=start_admin_server)
    engine = EngineThread(options, messages.append)
    assert await engine.start(), messages
    runtime = engine.runtime
    assert runtime.admin is not None
    assert runtime.engine is not None
    remote = RemoteController(runtime.admin.url)
    try:
        yield Served(engine, runtime.admin.url, runtime.engine.url(), remote)
    finally:
        remote.close()
        await engine.stop()
