"""The demo's traffic generator: a modest, steady stream of requests to a listener (loopback only)."""

from __future__ import annotations

import asyncio
import random

import httpx

PATHS = ("/", "/products", "/products/42", "/cart", "/checkout", "/search?q=lamp")


class TrafficGenerator:
    def __init__(self, url: str, rate: float = 20.0, concurrency: int = 4) -> None:
        self.url = url.rstrip("/")
        self.rate = rate
        self.concurrency = concurrency
        self.sent = 0
        self.failed = 0
        self.statuses: dict[int, int] = {}

    async def run(self, limit: int | None = None) -> None:
        """Send requests at `rate` per second until cancelled (or `limit` requests are sent)."""
        interval = 1.0 / self.rate
        loop = asyncio.get_running_loop()
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=10.0) as client:
            semaphore = asyncio.Semaphore(self.concurrency)
            tasks: set[asyncio.Task[None]] = set()
            next_at = loop.time()
            while limit is None or self.sent < limit:
                await semaphore.acquire()
                task = loop.create_task(self._one(client, semaphore))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - loop.time()))
            if tasks:
                await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore) -> None:
        try:
            response = await client.get(random.choice(PATHS))
            self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        except httpx.HTTPError:
            self.failed += 1
        finally:
            semaphore.release()
