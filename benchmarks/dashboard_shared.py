"""The design lbtui did not take, kept measurable: the engine on the dashboard's own event loop.

    python benchmarks/run.py --dashboard --only lbtui,dashboard \
        --variant "shared=python benchmarks/dashboard_shared.py"

`lbtui` runs the engine on a thread of its own (lbtui/threaded.py). This runs today's dashboard with the engine
started on the dashboard's loop instead (uvloop, GC tuned as `serve`), so the two can be compared on the same
code in the same run (benchmarks/README.md, Dashboard mode). Quit it with q, y like the dashboard.
"""

from __future__ import annotations

import argparse
import sys

from lbtui.admin.api import start_admin_server
from lbtui.cli import _load
from lbtui.serve import Runtime, ServeOptions, event_loop, tune_gc
from lbtui.tui.app import Dashboard


class SharedLoopDashboard(Dashboard):
    """The dashboard, with the engine started on its loop before the dashboard's own start."""

    def __init__(self, options: ServeOptions) -> None:
        super().__init__(None, controller=_Pending())  # type: ignore[arg-type]
        self.shared = Runtime(options, self.messages.append)

    async def on_mount(self) -> None:
        if not await self.shared.start():
            self.exit(1)
            return
        assert self.shared.engine is not None
        self.controller = self.shared.engine.controller
        tune_gc()
        await super().on_mount()

    async def _stop(self) -> None:
        self.say("draining…")
        await self.shared.stop()
        self.exit(0)


class _Pending:
    """A placeholder until on_mount has started the engine (the dashboard then gets its real controller)."""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = _load(args.config, "not started")
    if isinstance(config, int):
        return config
    app = SharedLoopDashboard(ServeOptions(config=config, admin_server=start_admin_server))
    code = app.run(loop=event_loop())
    return code if isinstance(code, int) else (app.return_code or 0)


if __name__ == "__main__":
    sys.exit(main())
