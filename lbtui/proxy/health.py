"""Active health checks, the I/O half: one asyncio task per checked backend (core/health.py judges results).

- A backend is checked when its service has `health`. Its task checks every `interval`, counted from the
  start of one check to the start of the next, each interval stretched or shrunk by up to JITTER, and the
  first check comes after a random part of one interval: the checks of many backends do not fall together.
- http: `GET path HTTP/1.1` with `Host: <backend address>` and `Connection: close`; only the status line is
  read. A status within `expect_status` passes. tcp: a connect passes. Anything not done within `timeout`
  fails, as does a refused or reset connection or a reply that is not HTTP.
- maint: no checks (README.md, "What the engine does"); the task stays and checks again once the backend
  leaves maint. A result that arrives after the backend went to maint, or after it was removed, is dropped. drain: checked.
- Backends added through the Controller get a task (Balancer.on_backend_added); a removed backend's task is
  cancelled (on_backend_removed); `stop` cancels every task and waits for them.
- Results go to InProcessController.health_check, which changes health, bumps the service's version and
  writes the audit log.
- A check's duration is measured with time.perf_counter (sub-microsecond); its schedule runs on the loop's
  clock (asyncio.sleep), which uvloop counts in whole milliseconds. The two are never compared.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from lbtui.config import HealthConfig
from lbtui.core.balancer import Balancer
from lbtui.core.control import ControlError, InProcessController
from lbtui.core.model import AdminState, Backend
from lbtui.core.views import CheckView

JITTER = 0.1  # each interval is between 0.9 and 1.1 times `interval`
USER_AGENT = b"lbtui-health"


class HealthChecker:
    def __init__(
        self,
        balancer: Balancer,
        controller: InProcessController,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.balancer = balancer
        self.controller = controller
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.tasks: dict[str, tuple[Backend, asyncio.Task[None]]] = {}
        self.running = False
        balancer.on_backend_added.append(self.add)
        balancer.on_backend_removed.append(self.remove)

    def start(self) -> None:
        """Start checking every backend whose service has a health check (call from the running loop)."""
        self.running = True
        for backend in list(self.balancer.backends.values()):
            self.add(backend)

    def add(self, backend: Backend) -> None:
        if not self.running or backend.name in self.tasks:
            return
        service = self.balancer.services.get(backend.service)
        config = service.config.health if service is not None else None
        if config is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._run(backend, config), name=f"lbtui-health:{backend.name}"
        )
        self.tasks[backend.name] = (backend, task)

    def remove(self, backend: Backend) -> None:
        entry = self.tasks.get(backend.name)
        if entry is not None and entry[0] is backend:
            del self.tasks[backend.name]
            entry[1].cancel()

    async def stop(self) -> None:
        """Cancel every check and wait until their tasks have ended."""
        self.running = False
        tasks = [task for _, task in self.tasks.values()]
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _wanted(self, backend: Backend) -> bool:
        """Whether a check of this backend (still in the balancer, not in maint) should run or count."""
        return (
            backend.admin_state is not AdminState.MAINT
            and self.balancer.backends.get(backend.name) is backend
        )

    async def _run(self, backend: Backend, config: HealthConfig) -> None:
        loop = asyncio.get_running_loop()
        next_start = loop.time() + self.rng.uniform(0.0, config.interval)
        while True:
            await asyncio.sleep(max(0.0, next_start - loop.time()))
            next_start = loop.time() + config.interval * self.rng.uniform(1.0 - JITTER, 1.0 + JITTER)
            if not self._wanted(backend):
                continue
            check = await probe(backend.host, backend.port, backend.address, config, self.wall_clock)
            if not self._wanted(backend):
                continue  # it went to maint (or away) while the check ran
            try:
                self.controller.health_check(backend.name, check)
            except ControlError:
                return  # the backend or its service's check is gone


async def probe(
    host: str,
    port: int,
    address: str,
    config: HealthConfig,
    wall_clock: Callable[[], float] = time.time,
) -> CheckView:
    """Run one check against host:port and say how it went."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(config.timeout):
            if config.type == "tcp":
                ok, detail = await _tcp(host, port)
            else:
                ok, detail = await _http(host, port, address, config)
    except TimeoutError:  # before OSError: TimeoutError is one
        ok, detail = False, f"timeout after {config.timeout:g}s"
    except ConnectionRefusedError:
        ok, detail = False, "connect refused"
    except ConnectionResetError:
        ok, detail = False, "connection reset"
    except OSError as error:
        ok, detail = False, error.strerror or type(error).__name__
    duration_ms = (time.perf_counter() - started) * 1000.0
    if ok:
        detail = (
            f"{detail} in {duration_ms:.2f} ms" if duration_ms < 10.0 else f"{detail} in {duration_ms:.1f} ms"
        )
    return CheckView(time=wall_clock(), ok=ok, detail=detail, duration_ms=duration_ms)


async def _tcp(host: str, port: int) -> tuple[bool, str]:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    return True, "connected"


async def _http(host: str, port: int, address: str, config: HealthConfig) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n"
            % (config.path.encode("latin-1"), address.encode("latin-1"), USER_AGENT)
        )
        try:
            line = await reader.readline()
        except ValueError:  # a line beyond the reader's limit
            return False, "not an HTTP response"
    finally:
        writer.close()
    if not line:
        return False, "closed without a response"
    status = parse_status_line(line)
    if status is None:
        return False, "not an HTTP response"
    low, high = config.expect_status
    if low <= status <= high:
        return True, str(status)
    return False, f"status {status}"


def parse_status_line(line: bytes) -> int | None:
    """The status of `HTTP/1.x NNN reason`, or None if the line is not a status line."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    status = int(parts[1])
    return status if 100 <= status <= 599 else None
