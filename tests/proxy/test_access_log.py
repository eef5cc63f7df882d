"""[access_log]: one line per finished request, written off the request path, through rotation."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from lbtui.admin.metrics import render
from lbtui.config import parse_config
from lbtui.proxy.engine import Engine
from tests.conftest import wait_for

FIELDS = {
    "time",
    "client",
    "method",
    "target",
    "protocol",
    "status",
    "bytes_sent",
    "route",
    "consumer",
    "service",
    "backend",
    "request_id",
    "upstream_connect",
    "upstream_header",
    "duration",
    "referer",
    "user_agent",
    "termination",
    "retry",
    "attempts",
    "failed_attempts",
}


def config(address: str, path: Path, form: str = "json") -> Any:
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {"app": {"backends": [{"name": "b1", "address": address}]}},
            "routes": [
                {"name": "api", "match": {"path_prefix": "/api"}, "service": "app"},
                {
                    "name": "limited",
                    "match": {"path_prefix": "/limited"},
                    "service": "app",
                    "rate_limit": {"rate": 1, "per": "1m", "burst": 1},
                },
            ],
            "access_log": {"path": str(path), "format": form},
        },
        source="<test>",
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def slow_upstream(scripted):  # type: ignore[no-untyped-def]
    """Answers every request: its head after 30 ms, its body's end 30 ms later."""

    async def script(reader, writer, up):  # type: ignore[no-untyped-def]
        while True:
            await up.read_request(reader)
            await asyncio.sleep(0.03)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            await writer.drain()
            await asyncio.sleep(0.03)
            writer.write(b"cd")
            await writer.drain()

    return await scripted(script)


async def test_one_json_line_per_request_with_its_fields(scripted, engine_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    up = await slow_upstream(scripted)
    path = tmp_path / "access.log"
    engine = await engine_factory(config(up.address, path))
    async with httpx.AsyncClient(base_url=engine.url()) as client:
        r = await client.get("/api/x?q=1", headers={"X-Request-ID": "mine-1", "User-Agent": "tester"})
        assert r.status_code == 200
        assert (await client.get("/api/y")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/limited")).status_code == 200
        assert (await client.get("/limited")).status_code == 429
    await wait_for(lambda: len(lines(path)) == 5, what="five lines")
    entries = [json.loads(line) for line in lines(path)]
    assert all(set(e) == FIELDS for e in entries)
    first, second, missing, allowed, limited = entries
    assert first["target"] == "/api/x?q=1"
    assert first["method"] == "GET"
    assert first["protocol"] == "HTTP/1.1"
    assert first["status"] == 200
    assert first["bytes_sent"] == 4
    assert first["client"] == "127.0.0.1"
    assert (first["route"], first["service"], first["backend"]) == ("api", "app", "b1")
    assert first["request_id"] == "mine-1"  # the client's own, as sent upstream
    assert first["user_agent"] == "tester"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    # The id the proxy made for a request without one is the one the upstream saw.
    made = second["request_id"]
    assert made
    assert made.encode() in up.received[1]
    for e in (first, second):
        assert 0.0 <= e["upstream_connect"] <= e["upstream_header"] <= e["duration"]
        assert e["upstream_header"] >= 0.025
        assert e["duration"] - e["upstream_header"] >= 0.025
    assert second["upstream_connect"] == 0.0  # the kept-alive connection
    assert missing["status"] == 404
    assert (missing["route"], missing["backend"]) == ("", "")
    assert missing["upstream_connect"] is None
    assert missing["upstream_header"] is None
    assert allowed["status"] == 200
    assert limited["status"] == 429
    assert limited["route"] == "limited"
    assert limited["backend"] == ""
    assert limited["upstream_header"] is None


async def test_combined_format(scripted, engine_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    up = await slow_upstream(scripted)
    path = tmp_path / "access.log"
    engine = await engine_factory(config(up.address, path, "combined"))
    async with httpx.AsyncClient(base_url=engine.url()) as client:
        headers = {"User-Agent": 'agent "quoted"', "Referer": "http://example/"}
        assert (await client.get("/api/x", headers=headers)).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
    await wait_for(lambda: len(lines(path)) == 2, what="two lines")
    ok, missing = lines(path)
    pattern = re.compile(
        r"^(?P<client>\S+) - (?P<user>\S+) \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "
        r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>(?:[^"\\]|\\.)*)" '
        r'"(?P<agent>(?:[^"\\]|\\.)*)" (?P<rest>.*)$'
    )
    m = pattern.match(ok)
    assert m is not None, ok
    assert m["client"] == "127.0.0.1"
    assert m["user"] == "-"
    assert m["request"] == "GET /api/x HTTP/1.1"
    assert (m["status"], m["bytes"]) == ("200", "4")
    assert m["referer"] == "http://example/"
    assert m["agent"] == 'agent \\"quoted\\"'
    rest = dict(part.split("=", 1) for part in m["rest"].split(" "))
    assert set(rest) == {
        "route",
        "service",
        "backend",
        "request_id",
        "upstream_connect",
        "upstream_header",
        "duration",
        "termination",
        "retry",
        "attempts",
        "failed_attempts",
    }
    assert (rest["route"], rest["service"], rest["backend"]) == ("api", "app", "b1")
    ended = (rest["termination"], rest["retry"], rest["attempts"], rest["failed_attempts"])
    assert ended == ("-", "-", "1", "-")  # passed on whole, at the first attempt
    assert rest["request_id"] != "-"
    assert float(rest["upstream_connect"]) <= float(rest["upstream_header"]) <= float(rest["duration"])
    m = pattern.match(missing)
    assert m is not None, missing
    assert m["status"] == "404"
    assert "backend=- " in m["rest"]
    assert "upstream_connect=- upstream_header=- " in m["rest"]


async def test_rotation_by_rename_opens_the_path_again(backends, engine_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    b1 = await backends("b1")
    path = tmp_path / "access.log"
    engine = await engine_factory(config(b1.address, path))
    async with httpx.AsyncClient(base_url=engine.url()) as client:
        await client.get("/api/1")
        await wait_for(lambda: len(lines(path)) == 1, what="the first line")
        os.rename(path, tmp_path / "access.log.1")  # logrotate's default: rename, then the program reopens
        await client.get("/api/2")
        await wait_for(lambda: len(lines(path)) == 1, what="a line in the new file")
        await client.get("/api/3")
        await wait_for(lambda: len(lines(path)) == 2, what="two lines in the new file")
    assert [json.loads(line)["target"] for line in lines(tmp_path / "access.log.1")] == ["/api/1"]
    assert [json.loads(line)["target"] for line in lines(path)] == ["/api/2", "/api/3"]


async def test_copytruncate_keeps_appending(backends, engine_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    b1 = await backends("b1")
    path = tmp_path / "access.log"
    engine = await engine_factory(config(b1.address, path))
    async with httpx.AsyncClient(base_url=engine.url()) as client:
        await client.get("/api/1")
        await wait_for(lambda: len(lines(path)) == 1, what="the first line")
        os.truncate(path, 0)  # logrotate's copytruncate
        await client.get("/api/2")
        await wait_for(lambda: len(lines(path)) == 1, what="a line after the truncation")
    assert path.read_text().startswith("{")  # appended at the new end: no hole of zeros before it


async def test_a_full_queue_drops_and_counts(backends, engine_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    b1 = await backends("b1")
    path = tmp_path / "access.log"
    engine: Engine = await engine_factory(config(b1.address, path))
    engine.log_queue_limit = 0  # as if the disk had not kept up
    async with httpx.AsyncClient(base_url=engine.url()) as client:
        await client.get("/api/1")
        await client.get("/api/2")
    assert engine.access_log_dropped == 2
    assert "lbtui_access_log_dropped_total 2\n" in render(engine.controller.snapshot())
    assert len(engine.controller.recent_requests()) == 2  # the dashboard's tail still has them


async def test_lines_left_are_written_at_shutdown(backends, tmp_path) -> None:  # type: ignore[no-untyped-def]
    b1 = await backends("b1")
    path = tmp_path / "access.log"
    engine = Engine(config(b1.address, path))
    await engine.start()
    try:
        async with httpx.AsyncClient(base_url=engine.url()) as client:
            await client.get("/api/1")
    finally:
        await engine.shutdown(grace=1.0)
    assert len(lines(path)) == 1


def test_a_path_that_cannot_be_opened_fails_the_engine_with_its_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError, match=r"cannot open the access log .*missing.*: No such file or directory"):
        Engine(config("127.0.0.1:1", tmp_path / "missing" / "access.log"))
