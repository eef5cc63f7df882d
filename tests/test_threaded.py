"""The engine on a thread of its own (what the dashboard runs): calls cross over, events come back, and the
engine keeps serving while the caller's loop is busy."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from lbtui.config import parse_config
from lbtui.core.control import ControlError
from lbtui.serve import ServeOptions
from lbtui.threaded import EngineThread, ThreadedController
from tests.conftest import make_config, wait_for


@contextlib.contextmanager
def threaded_backend(name: str) -> Iterator[str]:
    """A real HTTP backend on a thread of its own, so it answers while the test's loop is held up."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = f"hello from {name}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.asynccontextmanager
async def engine_thread(config):
    messages: list[str] = []
    engine = EngineThread(ServeOptions(config=config, grace=5.0), messages.append)
    assert await engine.start(), messages
    try:
        assert engine.runtime.engine is not None
        yield engine, ThreadedController(engine, engine.runtime.engine.controller)
    finally:
        await engine.stop()


async def test_the_engine_serves_while_the_callers_loop_is_held_up():
    with threaded_backend("b0") as address:
        async with engine_thread(make_config([("b0", address)])) as (engine, _):
            url = engine.runtime.engine.url()
            answers: list[int] = []

            def get() -> None:
                answers.append(httpx.get(url + "/", timeout=5).status_code)

            client = threading.Thread(target=get)
            client.start()
            # This loop (the dashboard's, in the product) is busy: nothing on it runs until the answer is in.
            deadline = time.monotonic() + 10
            while not answers and time.monotonic() < deadline:
                sum(range(10_000))
            client.join(5)
            assert answers == [200]
            assert engine.thread is not threading.current_thread()


async def test_calls_run_on_the_engine_thread_and_errors_come_back(backends):
    b0 = await backends("b0")
    async with engine_thread(make_config([b0])) as (engine, controller):
        event = controller.drain("b0", actor="test")
        assert (event.before, event.after) == ("ready", "drain")
        assert controller.snapshot().services[0].backends[0].admin_state == "drain"
        with pytest.raises(ControlError, match="nope"):
            controller.drain("nope")
        seen: list[str] = []
        engine.call(lambda: seen.append(threading.current_thread().name))
        assert seen == ["lbtui-engine"]


async def test_events_reach_the_subscriber_on_its_own_thread(backends):
    b0 = await backends("b0")
    async with engine_thread(make_config([b0])) as (_, controller):
        got: list[tuple[str, str]] = []
        controller.subscribe(lambda e: got.append((e.after, threading.current_thread().name)))
        controller.drain("b0")
        controller.enable("b0")
        await wait_for(lambda: len(got) == 2, what="two events")
        assert got == [("drain", threading.current_thread().name), ("ready", threading.current_thread().name)]


async def test_stop_drains_and_ends_the_thread_and_calls_still_answer(backends):
    b0 = await backends("b0")
    engine = EngineThread(ServeOptions(config=make_config([b0]), grace=5.0), lambda _: None)
    assert await engine.start()
    controller = ThreadedController(engine, engine.runtime.engine.controller)
    assert await engine.stop()
    assert not engine.thread.is_alive()
    assert not engine.running
    assert engine.runtime.engine.closing
    assert controller.snapshot().services[0].backends[0].name == "b0"  # on the caller's thread now
    assert await engine.stop()  # twice is harmless


async def test_an_engine_that_cannot_listen_says_why_and_the_thread_ends(backends):
    b0 = await backends("b0")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        config = parse_config(
            {
                "listeners": [{"name": "web", "bind": f"127.0.0.1:{port}"}],
                "services": {"app": {"backends": [{"name": "b0", "address": b0.address}]}},
            },
            source="<test>",
        )
        messages: list[str] = []
        engine = EngineThread(ServeOptions(config=config), messages.append)
        assert not await engine.start()
        engine.thread.join(5)
        assert not engine.thread.is_alive()
        assert any("cannot listen" in m for m in messages), messages
    finally:
        taken.close()
