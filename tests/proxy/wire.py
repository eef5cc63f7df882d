"""The raw HTTP/1.1 side of the data plane's tests: a client that writes exact bytes and reads responses one by
one from a buffer that keeps whatever follows them (pipelining, stray bytes, 1xx), requests written as bytes, and
what a scripted backend needs to read a request and answer it.

Used by test_framing, test_bodies, test_lifecycle, test_retries, test_upstream_faults, test_seams and
test_limits; `stream` is a fixture for all of tests/proxy (conftest.py). Every read is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass, field

import pytest

T = 5.0  # the bound on any single wait in the tests that use this module


# == a client that reads a stream of responses (pipelining, extra bytes, 1xx) ================================


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    until_close: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def json(self) -> dict:
        return json.loads(self.body)


class Stream:
    """Exact bytes out; responses parsed one by one from a buffer that keeps whatever follows them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.eof = False

    @classmethod
    async def open(cls, address: tuple[str, int]) -> Stream:
        reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _fill(self) -> None:
        if self.eof:
            raise EOFError("the server closed the connection")
        try:
            data = await self.reader.read(1 << 20)
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
            raise EOFError("the server closed the connection")
        self.buf += data

    async def _need(self, marker: bytes) -> int:
        for _ in range(100_000):
            at = self.buf.find(marker)
            if at >= 0:
                return at
            await self._fill()
        raise AssertionError("unbounded read")

    async def _exactly(self, n: int) -> bytes:
        for _ in range(100_000):
            if len(self.buf) >= n:
                data, self.buf = self.buf[:n], self.buf[n:]
                return data
            await self._fill()
        raise AssertionError("unbounded read")

    async def response(self, head: bool = False, info: bool = False, timeout: float = T) -> Resp:
        """The next response. `head`: it answers a HEAD (no body). `info`: return a 1xx instead of skipping it."""
        async with asyncio.timeout(timeout):
            for _ in range(100):
                at = await self._need(b"\r\n\r\n")
                block, self.buf = self.buf[:at], self.buf[at + 4 :]
                lines = block.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ")[1])
                headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
                resp = Resp(status, headers)  # type: ignore[arg-type]
                if 100 <= status < 200 and status != 101:
                    if info:
                        return resp
                    continue
                break
            else:
                raise AssertionError("too many 1xx")
            te = (resp.header("Transfer-Encoding") or "").lower()
            cl = resp.header("Content-Length")
            if head or status in (204, 304) or status == 101:
                return resp
            if te:
                assert te == "chunked", te
                body = []
                for _ in range(1_000_000):
                    at = await self._need(b"\r\n")
                    size = int(self.buf[:at].split(b";")[0], 16)
                    self.buf = self.buf[at + 2 :]
                    if size == 0:
                        for _ in range(100):
                            at = await self._need(b"\r\n")
                            line, self.buf = self.buf[:at], self.buf[at + 2 :]
                            if not line:
                                break
                            n, _, v = line.decode("latin-1").partition(":")
                            resp.trailers.append((n.strip(), v.strip()))
                        break
                    body.append(await self._exactly(size))
                    assert await self._exactly(2) == b"\r\n"
                resp.body = b"".join(body)
            elif cl is not None:
                resp.body = await self._exactly(int(cl))
            else:
                for _ in range(1_000_000):
                    try:
                        await self._fill()
                    except EOFError:
                        break
                resp.body, self.buf = self.buf, b""
                resp.until_close = True
            return resp

    async def closed(self, timeout: float = 2.0) -> bool:
        """True when the server closes the connection; any bytes before the close stay in `buf`."""
        try:
            async with asyncio.timeout(timeout):
                for _ in range(100_000):
                    await self._fill()
        except EOFError:
            return True
        except TimeoutError:
            return False
        return False

    async def quiet(self, timeout: float = 0.3) -> bytes:
        """What arrives within `timeout` (used to show that nothing more arrives)."""
        with contextlib.suppress(TimeoutError, EOFError):
            async with asyncio.timeout(timeout):
                for _ in range(100_000):
                    await self._fill()
        return self.buf

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def stream():
    opened: list[Stream] = []

    async def connect(address: tuple[str, int]) -> Stream:
        s = await Stream.open(address)
        opened.append(s)
        return s

    yield connect
    for s in opened:
        s.close()


# == requests as bytes =======================================================================================


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: h\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def post_chunked(path: str, body: bytes, piece: int = 1000, extra: str = "") -> bytes:
    chunks = [
        b"%x\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece]) for i in range(0, len(body), piece)
    ]
    head = f"POST {path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n{extra}\r\n".encode()
    return head + b"".join(chunks) + b"0\r\n\r\n"


SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# == a scripted backend's side ===============================================================================


class Keeper:
    """A scripted backend's per-connection bookkeeping: requests seen, and connections it saw closed."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.closed = 0


async def read_head_and_body(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request (head, de-chunked body) as a backend reads it."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    body = b""
    if b"transfer-encoding: chunked" in lower:
        parts = []
        for _ in range(1_000_000):
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                body = await reader.readexactly(int(line.split(b":", 1)[1]))
    return head, body


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
