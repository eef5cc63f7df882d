"""A fault-injecting TCP proxy for tests, in the manner of toxiproxy (Shopify), written for asyncio.

It listens on 127.0.0.1 (port 0) and forwards every connection it accepts to one target, a real upstream. Faults
("toxics") act on one direction of the traffic and can be set, changed and cleared while connections run:

  upstream      client -> target (requests)
  downstream    target -> client (responses)

  latency(ms, jitter_ms)        every piece of data is held `ms` (+- jitter, uniform) after it arrived
  slicer(size, delay_ms)        writes are cut into `size`-byte slices, `delay_ms` apart (bandwidth)
  limit_data(n, then)           after `n` bytes (counted from when the toxic was set): "close" (FIN both
                                sides), "reset" (RST) or "hold" (forward nothing more, close nothing)
  reset_peer(after_ms)          RST the connection `after_ms` after it opened (or after the toxic was set)
  blackhole()                   data is swallowed, an end of stream too: nothing is forwarded, nothing closed

A reset (RST: SO_LINGER 0, then close) reaches the side that receives the direction's data (downstream: the
client; upstream: the target); the other side gets a plain close. A reset from a peer is passed on as a reset.

`down(mode)` stops taking connections: "refuse" (the port is closed: connection refused), "reset" (accepted,
then reset at once) or "blackhole" (connects hang: the port listens, its accept queue is full, new SYNs are
dropped). `up()` serves on the same port again. Existing connections are kept unless `existing` says otherwise.

Counters: `accepted` (connections accepted, whatever became of them), `bytes_upstream` and `bytes_downstream`
(bytes forwarded each way), `open_links`. Everything is bounded: at most QUEUE_DEPTH pieces of CHUNK bytes wait
per direction (reading pauses beyond), connects to the target time out, and `stop()` ends every connection and
task it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass, replace
from typing import Any, Literal

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
DIRECTIONS = (UPSTREAM, DOWNSTREAM)
Direction = Literal["upstream", "downstream"]

CHUNK = 65536
QUEUE_DEPTH = 64
CONNECT_TIMEOUT = 5.0

_LINGER_ZERO = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class Toxics:
    """What is done to one direction of the traffic. Replaced whole on every change (links read it per piece)."""

    latency: float = 0.0  # seconds
    jitter: float = 0.0  # seconds, +- around latency
    slice_size: int = 0  # 0: written as read
    slice_delay: float = 0.0  # seconds between slices
    limit: int | None = None  # bytes, counted per link from when the toxic was set
    limit_then: Literal["close", "reset", "hold"] = "close"
    reset_after: float | None = None  # seconds
    reset_since: float = 0.0  # the loop time the reset toxic was set
    blackhole: bool = False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), dropping whatever is not sent yet."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    writer.transport.abort()


def _target_of(target: Any) -> tuple[str, int]:
    if isinstance(target, tuple):
        return target[0], int(target[1])
    address = target if isinstance(target, str) else target.address
    host, _, port = address.rpartition(":")
    return host, int(port)


class Link:
    """One accepted connection and its connection to the target, with a reader and a writer per direction."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.target_reader, self.target_writer = target
        self.forwarded = {UPSTREAM: 0, DOWNSTREAM: 0}
        self.since_limit = {UPSTREAM: 0, DOWNSTREAM: 0}  # bytes since the limit_data toxic was set
        self.held = {UPSTREAM: False, DOWNSTREAM: False}  # limit_data(then="hold") reached
        self.opened_at = asyncio.get_running_loop().time()
        self.closed = False
        self.reset_timers: dict[str, asyncio.TimerHandle] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def ends(self, direction: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Where the direction's data comes from and where it goes."""
        if direction == UPSTREAM:
            return self.client_reader, self.target_writer
        return self.target_reader, self.client_writer

    async def run(self) -> None:
        for direction in DIRECTIONS:
            self.schedule_reset(direction)
        for direction in DIRECTIONS:
            queue: asyncio.Queue[tuple[float, bytes, bool]] = asyncio.Queue(QUEUE_DEPTH)
            self.tasks.append(asyncio.create_task(self._read(direction, queue)))
            self.tasks.append(asyncio.create_task(self._write(direction, queue)))
        try:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            self.close()

    def schedule_reset(self, direction: str) -> None:
        old = self.reset_timers.pop(direction, None)
        if old is not None:
            old.cancel()
        toxics = self.proxy.toxics[direction]
        if toxics.reset_after is None or self.closed:
            return
        loop = asyncio.get_running_loop()
        when = max(self.opened_at, toxics.reset_since) + toxics.reset_after
        self.reset_timers[direction] = loop.call_at(when, self.close, direction)

    async def _read(self, direction: str, queue: asyncio.Queue[tuple[float, bytes, bool]]) -> None:
        reader, _ = self.ends(direction)
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await reader.read(CHUNK)
            except OSError:
                await queue.put((loop.time(), b"", True))  # reset by the peer: passed on as a reset
                return
            await queue.put((loop.time(), data, False))
            if not data:
                return

    async def _write(self, direction: str, queue: asyncio.Queue[tuple[float, bytes, bool]]) -> None:
        _, writer = self.ends(direction)
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        while True:
            arrived, data, reset = await queue.get()
            toxics = proxy.toxics[direction]
            if toxics.blackhole or self.held[direction]:
                if not data:
                    return  # the end of the stream is swallowed too: nothing is closed
                continue
            delay = toxics.latency
            if toxics.jitter:
                delay += proxy.rng.uniform(-toxics.jitter, toxics.jitter)
            wait = arrived + delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if reset:
                self.close(direction)
                return
            if not data:
                if writer.can_write_eof() and not writer.is_closing():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            if toxics.limit is not None:
                data = data[: max(0, toxics.limit - self.since_limit[direction])]
            size = toxics.slice_size or len(data) or 1
            for at in range(0, len(data), size):
                if at and toxics.slice_delay:
                    await asyncio.sleep(toxics.slice_delay)
                piece = data[at : at + size]
                writer.write(piece)
                self.forwarded[direction] += len(piece)
                self.since_limit[direction] += len(piece)
                proxy.count(direction, len(piece))
                try:
                    await writer.drain()
                except OSError:
                    self.close()
                    return
            if toxics.limit is not None and self.since_limit[direction] >= toxics.limit:
                if toxics.limit_then == "hold":
                    self.held[direction] = True
                    continue
                if toxics.limit_then == "reset":
                    self.close(direction)
                else:
                    await self.close_gracefully()
                return

    async def close_gracefully(self) -> None:
        """FIN both sides once what was written is sent."""
        for writer in (self.client_writer, self.target_writer):
            writer.close()
        for writer in (self.client_writer, self.target_writer):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), CONNECT_TIMEOUT)
        self.close()

    def close(self, reset_direction: str | None = None) -> None:
        """End the link; with `reset_direction`, the side receiving that direction's data gets an RST."""
        if self.closed:
            return
        self.closed = True
        for timer in self.reset_timers.values():
            timer.cancel()
        self.reset_timers.clear()
        if reset_direction is not None:
            self.proxy.resets += 1
            _, rst_side = self.ends(reset_direction)
            other = self.target_writer if rst_side is self.client_writer else self.client_writer
            _reset(rst_side)
            other.close()
        else:
            self.client_writer.close()
            self.target_writer.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.proxy.links.discard(self)


class FaultProxy:
    def __init__(self, target: Any, seed: int = 1) -> None:
        self.target = _target_of(target)
        self.host = "127.0.0.1"
        self.port = 0
        self.toxics: dict[str, Toxics] = {UPSTREAM: Toxics(), DOWNSTREAM: Toxics()}
        self.rng = random.Random(seed)
        self.links: set[Link] = set()
        self.accepted = 0
        self.bytes_upstream = 0
        self.bytes_downstream = 0
        self.resets = 0  # connections ended with an RST by a toxic, a reset peer, or down("reset")
        self.mode: Literal["up", "refuse", "reset", "blackhole"] = "up"
        self._server: asyncio.Server | None = None
        self._black: list[socket.socket] = []  # down("blackhole"): the full listener and what fills it
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- where it is ---------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def open_links(self) -> int:
        return len(self.links)

    def count(self, direction: str, n: int) -> None:
        if direction == UPSTREAM:
            self.bytes_upstream += n
        else:
            self.bytes_downstream += n

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True, limit=CHUNK
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.mode = "up"
        return self

    async def stop(self) -> None:
        """Stop listening and end every connection and task of this proxy."""
        self._close_listener()
        for link in list(self.links):
            link.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=CONNECT_TIMEOUT)

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for sock in self._black:
            sock.close()
        self._black = []

    async def down(
        self,
        mode: Literal["refuse", "reset", "blackhole"] = "refuse",
        existing: Literal["keep", "close", "reset"] = "keep",
    ) -> None:
        """Take no new connections (see the module's docstring); `existing` connections are kept, closed or reset."""
        if mode == "reset":
            if self._server is None:
                await self.up()
        else:
            self._close_listener()
            if mode == "blackhole":
                self._blackhole_listener()
        self.mode = mode
        for link in list(self.links):
            if existing == "close":
                link.close()
            elif existing == "reset":
                link.close(DOWNSTREAM)

    def _blackhole_listener(self) -> None:
        # A listener that never accepts, its queue full: the kernel drops new SYNs, so connects hang.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(0)
        self._black.append(listener)
        for _ in range(2):  # the first fills the queue (backlog 0 holds one), the second makes sure
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((self.host, self.port))
            self._black.append(filler)

    async def up(self) -> None:
        """Serve on the same port again."""
        self._close_listener()
        await self.start()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        link: Link | None = None
        try:
            if self.mode == "reset":
                self.resets += 1
                _reset(writer)
                return
            try:
                target = await asyncio.wait_for(asyncio.open_connection(*self.target), CONNECT_TIMEOUT)
            except (OSError, TimeoutError):
                self.resets += 1
                _reset(writer)  # the target is not there: say so as a refusal would, at once
                return
            link = Link(self, (reader, writer), target)
            self.links.add(link)
            await link.run()
        except asyncio.CancelledError:
            # stop(): end quietly (asyncio's stream server reports a handler task that ends cancelled).
            if link is not None:
                link.close()
        finally:
            self._handlers.discard(task)
            if link is None and not writer.is_closing():
                writer.close()  # cancelled (stop) while connecting to the target

    # -- toxics --------------------------------------------------------------------------------------
    def _set(self, direction: Direction, **changes: Any) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction is {UPSTREAM!r} or {DOWNSTREAM!r}, not {direction!r}")
        self.toxics[direction] = replace(self.toxics[direction], **changes)

    def latency(self, ms: float, jitter_ms: float = 0.0, direction: Direction = DOWNSTREAM) -> None:
        self._set(direction, latency=ms / 1000, jitter=jitter_ms / 1000)

    def slicer(self, size: int, delay_ms: float = 0.0, direction: Direction = DOWNSTREAM) -> None:
        if size < 1:
            raise ValueError("a slice is at least one byte")
        self._set(direction, slice_size=size, slice_delay=delay_ms / 1000)

    def limit_data(
        self,
        nbytes: int,
        direction: Direction = DOWNSTREAM,
        then: Literal["close", "reset", "hold"] = "close",
    ) -> None:
        self._set(direction, limit=nbytes, limit_then=then)
        for link in self.links:
            link.since_limit[direction] = 0
            link.held[direction] = False

    def reset_peer(self, after_ms: float = 0.0, direction: Direction = DOWNSTREAM) -> None:
        self._set(direction, reset_after=after_ms / 1000, reset_since=asyncio.get_running_loop().time())
        for link in list(self.links):
            link.schedule_reset(direction)

    def blackhole(self, direction: Direction = DOWNSTREAM) -> None:
        self._set(direction, blackhole=True)

    def clear(self, direction: Direction | None = None) -> None:
        """Remove every toxic (of one direction, or of both). Held and swallowed data stays lost."""
        for d in DIRECTIONS if direction is None else (direction,):
            self.toxics[d] = Toxics()
            for link in list(self.links):
                link.held[d] = False
                link.schedule_reset(d)
