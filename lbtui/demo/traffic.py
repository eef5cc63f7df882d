"""The demo's traffic generator: a modest, steady stream of requests to a listener (loopback only).

It speaks HTTP/1.1 itself over asyncio streams (httptools parses the replies) rather than through httpx,
because importing httpx pulls in rich where rich is installed, and the headless engine must not load it.
"""

from __future__ import annotations

import asyncio
import random
from urllib.parse import urlsplit

import httptools

PATHS = ("/", "/products", "/products/42", "/cart", "/checkout", "/search?q=lamp")


class _Reply:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done = False
        self.keep_alive = True

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()


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
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def run(self, limit: int | None = None) -> None:
        """Send requests at `rate` per second until cancelled (or until `limit` requests are sent)."""
        loop = asyncio.get_running_loop()
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
            for _, writer in self._idle:
                writer.close()
            self._idle.clear()

    async def _one(self, path: str, semaphore: asyncio.Semaphore) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._request(path)
            self.statuses[status] = self.statuses.get(status, 0) + 1
        except (OSError, TimeoutError, httptools.HttpParserError, ConnectionError):
            self.failed += 1
        finally:
            semaphore.release()

    async def _request(self, path: str) -> int:
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: lbtui-demo\r\n\r\n".encode()
            )
            reply = _Reply()
            while not reply.done:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("closed before a whole response")
                reply.parser.feed_data(data)
        except BaseException:
            writer.close()
            raise
        status: int = reply.parser.get_status_code()
        if reply.keep_alive:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return status
