"""Crossing between asyncio loops on threads of their own: calling a coroutine on one from another thread under
one deadline (call_on_loop), and handing a callback's calls to the loop of whoever subscribed (poster).

The controllers that talk to something outside the process (HAProxy's socket: lbtui/haproxy/controller.py; a
`lbtui serve` admin API: lbtui/admin/remote.py) run their I/O on a loop of their own, so that the dashboard's loop
and `ctl` never wait on a socket themselves; this is the one way their callers reach that loop.

Invariants: the coroutine is bounded on the loop (asyncio.timeout) and the caller waits at most half a second more;
a loop that has closed, or a call cancelled with it, is ControlError(`closed`); a deadline that passed is
ControlError(`late`); any other exception of the coroutine reaches the caller as it was raised. A coroutine that is
never scheduled is closed (no "never awaited" warning).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from lbtui.core.control import ControlError

__all__ = ["call_on_loop", "finish_tasks", "poster"]

T = TypeVar("T")
E = TypeVar("E")


def call_on_loop(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], deadline: float, closed: str, late: str
) -> T:
    """Run `coro` on `loop` (another thread's) and return its result, waiting at most `deadline` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(deadline):
            return await coro

    wrapped = bounded()
    try:
        future = asyncio.run_coroutine_threadsafe(wrapped, loop)
    except RuntimeError:  # the loop closed meanwhile
        wrapped.close()
        coro.close()
        raise ControlError(closed) from None
    try:
        return future.result(deadline + 0.5)
    except (TimeoutError, concurrent.futures.TimeoutError):
        future.cancel()
        raise ControlError(late) from None
    except concurrent.futures.CancelledError:
        raise ControlError(closed) from None


def poster(callback: Callable[[E], None]) -> Callable[[E], None]:
    """`callback` wrapped to run on the loop running now (the subscriber's: the dashboard's), called from any
    thread; once that loop has closed, calls are dropped (nobody is left to tell)."""
    loop = asyncio.get_running_loop()

    def post(item: E) -> None:
        try:
            loop.call_soon_threadsafe(callback, item)
        except RuntimeError:
            pass  # the subscriber's loop has closed

    return post


def finish_tasks(loop: asyncio.AbstractEventLoop, rounds: int = 10) -> None:
    """Cancel every task of `loop` (stopped, not closed) and run it until they are done, again for tasks their
    cancellation started (a library's connection attempt, say): a task left unstarted when the loop closes is a
    "coroutine ... was never awaited" warning on the way out."""
    for _ in range(rounds):
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
