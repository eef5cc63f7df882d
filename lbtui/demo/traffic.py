"""The demo's traffic generator: a modest, steady stream of requests to a listener (loopback only).

It speaks HTTP/1.1 with lbtui's own small client (proxy/miniclient.py: asyncio and httptools) rather than
through httpx, because importing httpx pulls in rich where rich is installed, and the headless engine must not
load it.
"""

from __future__ import annotations

import asyncio
import random
from urllib.parse import urlsplit

from lbtui.proxy.miniclient import KeepAlivePool

PATHS = ("/", "/products", "/products/42", "/cart", "/checkout", "/search?q=lamp")


class TrafficGenerator:
    def __init__(self, url: str, rate: float = 20.0, concurrency: int = 4, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.rate = rate
        self.concurrency = concurrency
        self.timeout = timeout
        self.sent = 0
        self.failed = 0
        self.statuses: dict[int, int] = {}
        self._pool = KeepAlivePool(per_host=concurrency)

    async def run(self, limit: int | None = None) -> None:
        """Send requests at `rate` per second until cancelled (or until `limit` requests are sent)."""
        loop = asyncio.get_running_loop()
        if self._pool.closed:  # a run before this one closed it
            self._pool = KeepAlivePool(per_host=self.concurrency)
        semaphore = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        next_at = loop.time()
        try:
            while limit is None or self.sent < limit:
                await semaphore.acquire()
                task = loop.create_task(self._one(random.choice(PATHS), semaphore))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                next_at += 1.0 / self.rate
                await asyncio.sleep(max(0.0, next_at - loop.time()))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self._pool.close()

    async def _one(self, path: str, semaphore: asyncio.Semaphore) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._request(path)
            self.statuses[status] = self.statuses.get(status, 0) + 1
        except (OSError, TimeoutError):  # miniclient's errors are OSErrors
            self.failed += 1
        finally:
            semaphore.release()

    async def _request(self, path: str) -> int:
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: lbtui-demo\r\n\r\n"
        reply = await self._pool.request(self.host, self.port, request.encode())
        return reply.status
