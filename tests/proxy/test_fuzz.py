"""Fuzzing the HTTP/1.1 front (issue 4): random bytes, requests built from the grammar's pieces, and mutations of
valid requests, each delivered whole, in pieces split at drawn points, or byte by byte, to one engine and one
recording upstream per test function (the examples share them, as a long-lived proxy shares itself).

Per example:
- The engine stays healthy: nothing reaches the loop's exception handler (a protocol callback that raised, a
  "Task exception was never retrieved"), nothing is logged at ERROR by "lbtui" or "asyncio", no internal error is
  passed off as a 400 (httptools reports an exception raised in a parser callback as "callback error"), the
  proxy lets go of the connection and of every in-flight count once the client is gone, and a fresh connection
  still gets a 200 from the upstream.
- The client gets, within DEADLINE of its last byte, well-formed HTTP/1.1 responses and/or a close, never
  silence on an open connection that the proxy still owes something; every status line is valid; a response the
  proxy made itself with a 4xx or 5xx status (a refusal) is the last one, says `Connection: close`, and the
  connection is closed after it; so is any response that says `Connection: close`.
- Everything the upstream received parses as HTTP/1.1 under `forwarded_requests` below, a strict parser of our
  own (not httptools): request line, field syntax (RFC 9110 tokens and field values: no control bytes, no
  obs-fold, no bare CR or LF, no NUL), exactly one Host (valid), one framing (Content-Length digits matching the
  body, or chunked with hex sizes and no chunk extensions). A request the upstream got in part ends with the
  proxy closing that upstream connection.
- No smuggling: the upstream gets no more whole requests than the client sent whole, and each one it gets (its
  method and body) is one the client sent (`sent_requests` reads the client's bytes the generous way RFC 9112
  allows, but stops where a server must stop: bad framing, `Connection: close`, HTTP/1.0, an upgrade); every
  response of the upstream reaches the client.

How it runs: each test function owns an event loop (asyncio's, and uvloop's as `lbtui serve` uses) through an
asyncio.Runner; Hypothesis calls the test once per example and the example runs to its end on that loop. The
proxy's timeouts are short here ([limits] header_timeout and client_idle_timeout), so a request left incomplete
costs a fraction of a second; an example ends early only when the proxy is idle on the connection and has
nothing left to send (read from its connection's state and the sockets' queues, never guessed by a sleep).

Reproducible by default: the "ci" profile (derandomized: the same examples on every run, tests/conftest.py).
To explore new examples, ten times as many (past pytest-timeout's 120 s per test):
`LBTUI_FUZZ_PROFILE=fuzz LBTUI_FUZZ_SCALE=10 python -m pytest --timeout=0 tests/proxy/test_fuzz.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import itertools
import logging
import os
import re
import socket
import struct
import termios
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lbtui.config import Config, parse_config
from lbtui.proxy.connection import ClientConnection
from lbtui.proxy.engine import Engine
from tests.conftest import ScriptedUpstream, make_config
from tests.proxy.test_hostile import HOST, SMUGGLED, Proxy, Recorder, fields, message, values

R = TypeVar("R")

DEADLINE = 2.5  # from the client's last byte to a close or an idle connection with all responses read
HEADER_TIMEOUT = 0.3  # [limits] header_timeout and client_idle_timeout in the engine under test
T = 3.0  # the bound on every other wait
BYTEWISE = 600  # byte-by-byte delivery sends this many bytes one by one, the rest in one piece
MAX_HEADER_BYTES = 4096
MAX_BODY = 1024

PROFILE = settings.get_profile(os.environ.get("LBTUI_FUZZ_PROFILE", "ci"))
SCALE = float(os.environ.get("LBTUI_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


# -- what the upstream got: a strict parser of our own --------------------------------------------------------

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # RFC 9110 5.5 (with OWS): no CTL but HTAB
# RFC 9112 3.2.1 origin-form in RFC 3986's characters, with two allowances that proxies make (HAProxy's defaults):
# `[` and `]` anywhere, and in the query a `%` without two hex digits (the proxy normalises the path only).
_PCHAR = rb"[A-Za-z0-9\-._~!$&'()*+,;=:@\[\]]|%[0-9A-Fa-f]{2}"
ORIGIN_FORM = re.compile(rb"/(?:" + _PCHAR + rb"|/)*(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@\[\]/?%]*)?")
HOST_VALUE = re.compile(  # RFC 9112 3.2: uri-host [ ":" port ] (RFC 3986 3.2.2)
    rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)
DIGITS = re.compile(rb"[0-9]{1,18}")
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})  # RFC 9110 9.2.2
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
PARTIAL_HEAD = re.compile(rb"(?:[^\r\n\x00]|\r\n)*\r?")  # a head cut short: so far no NUL, no bare CR or LF
PARTIAL_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{0,16}\r?")


@dataclass
class Forwarded:
    """One whole request as the upstream got it."""

    method: bytes
    target: bytes
    fields: list[tuple[bytes, bytes]]  # names lowercased, values without OWS
    body: bytes  # without its chunk framing
    unanswered: bool = False  # the upstream closed on it without an answer (see Harness.upstream_news)


@dataclass
class Parsed:
    requests: list[Forwarded]
    end: int  # where the last whole request ends
    problem: str | None = None  # the first thing that is not HTTP/1.1
    partial: bool = False  # the bytes end inside a request (well-formed so far)


def field_problem(line: bytes) -> str | None:
    if line[:1] in (b" ", b"\t"):
        return f"obs-fold (a line that starts with whitespace): {line[:80]!r}"
    name, colon, value = line.partition(b":")
    if not colon or TOKEN.fullmatch(name) is None:
        return f"a field line whose name is not a token: {line[:80]!r}"
    if FIELD_VALUE.fullmatch(value) is None:
        return f"a control byte in a field value: {line[:80]!r}"
    return None


def head_problem(head: bytes) -> tuple[Forwarded | None, str | None]:
    """The request line and fields of a whole head (without its final CRLF CRLF), checked."""
    if b"\x00" in head:
        return None, f"NUL in the head: {head[:200]!r}"
    lines = head.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        return None, f"a bare CR or LF in the head: {head[:200]!r}"
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or TOKEN.fullmatch(parts[0]) is None:
        return None, f"not a request line (method SP target SP HTTP/1.1): {lines[0][:200]!r}"
    method, target, _ = parts
    if target == b"*":
        if method != b"OPTIONS":
            return None, f"the target * with {method!r}"
    elif ORIGIN_FORM.fullmatch(target) is None:
        return None, f"a request target that is not origin-form: {target[:200]!r}"
    if method == b"CONNECT":
        return None, "a CONNECT request (never forwarded: its target is an authority, and it opens a tunnel)"
    out = []
    for line in lines[1:]:
        problem = field_problem(line)
        if problem is not None:
            return None, problem
        name, _, value = line.partition(b":")
        out.append((name.lower(), value.strip(b" \t")))
    hosts = [v for n, v in out if n == b"host"]
    if len(hosts) != 1 or HOST_VALUE.fullmatch(hosts[0]) is None:
        return None, f"Host fields {hosts!r} (exactly one valid host[:port] wanted)"
    lengths = [v for n, v in out if n == b"content-length"]
    codings = [v for n, v in out if n == b"transfer-encoding"]
    if lengths and codings:
        return None, "both Content-Length and Transfer-Encoding"
    if len(lengths) > 1 or (lengths and DIGITS.fullmatch(lengths[0]) is None):
        return None, f"Content-Length fields {lengths!r} (one, digits only, wanted)"
    if len(codings) > 1 or (codings and codings[0].lower() != b"chunked"):
        return None, f"Transfer-Encoding fields {codings!r} (only one `chunked` wanted)"
    request = Forwarded(method, target, out, b"")
    if upgrade(request) and (codings or lengths not in ([], [b"0"])):
        # httptools ends an upgrade request at its head: its body is not the proxy's to frame, but tunnel bytes.
        return None, "an upgrade request with a body"
    return request, None


def upgrade(request: Forwarded) -> bool:
    """An Upgrade request (RFC 9110 7.8), which the recording upstream leaves unanswered."""
    connection = b",".join(v for n, v in request.fields if n == b"connection").lower()
    return b"upgrade" in connection and any(n == b"upgrade" for n, _ in request.fields)


def chunked_body(raw: bytes, pos: int) -> tuple[bytes, int, str | None, bool]:
    """A chunked body from `pos`: (body, end, problem, partial); no chunk extensions (the proxy re-frames)."""
    body = []
    for _ in range(100_000):
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            if PARTIAL_CHUNK_SIZE.fullmatch(raw, pos) is None:
                return b"", pos, f"a bad chunk size line: {raw[pos : pos + 40]!r}", False
            return b"", pos, None, True
        if CHUNK_SIZE.fullmatch(raw, pos, eol) is None:
            return b"", pos, f"a bad chunk size line (or an extension): {raw[pos : eol + 2][:40]!r}", False
        size = int(raw[pos:eol], 16)
        pos = eol + 2
        if size == 0:
            for _ in range(1000):  # trailer fields (the proxy sends none), then the empty line
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    return b"", pos, None, True
                line = raw[pos:eol]
                pos = eol + 2
                if not line:
                    return b"".join(body), pos, None, False
                problem = field_problem(line)
                if problem is not None or b"\r" in line or b"\n" in line or b"\x00" in line:
                    return b"", pos, f"a bad trailer field: {line[:80]!r}", False
            return b"", pos, "more than 1000 trailer fields", False
        if len(raw) < pos + size + 2:
            tail = raw[pos + size : pos + size + 2]
            if tail and not b"\r\n".startswith(tail):
                return b"", pos, f"chunk data not followed by CRLF: {raw[pos:][:60]!r}", False
            return b"", pos, None, True
        if raw[pos + size : pos + size + 2] != b"\r\n":
            return b"", pos, f"chunk data not followed by CRLF: {raw[pos : pos + size + 2][:60]!r}", False
        body.append(raw[pos : pos + size])
        pos += size + 2
    return b"", pos, "more than 100000 chunks", False


def forwarded_requests(raw: bytes, start: int = 0) -> Parsed:
    """Every request in `raw` from `start`, parsed strictly as the HTTP/1.1 a proxy must send (see the top)."""
    requests: list[Forwarded] = []
    pos = start
    for _ in range(100_000):
        if pos == len(raw):
            return Parsed(requests, pos)
        end = raw.find(b"\r\n\r\n", pos)
        if end < 0:
            if PARTIAL_HEAD.fullmatch(raw, pos) is None:
                return Parsed(requests, pos, f"a bare CR or LF, or NUL, in a head: {raw[pos:][:200]!r}")
            return Parsed(requests, pos, partial=True)
        request, problem = head_problem(raw[pos:end])
        if problem is not None or request is None:
            return Parsed(requests, pos, problem)
        body_at = end + 4
        lengths = [v for n, v in request.fields if n == b"content-length"]
        if any(n == b"transfer-encoding" for n, _ in request.fields):
            body, after, problem, partial = chunked_body(raw, body_at)
            if problem is not None or partial:
                return Parsed(requests, pos, problem, partial)
        elif lengths:
            after = body_at + int(lengths[0])
            if len(raw) < after:
                return Parsed(requests, pos, partial=True)
            body = raw[body_at:after]
        else:
            body, after = b"", body_at
        request.body = body
        requests.append(request)
        pos = after
    return Parsed(requests, pos, "more than 100000 requests")


# -- what the client sent: RFC 9112 read generously, with exact boundaries ------------------------------------

# RFC 9112 3: the whitespace a recipient MAY take for SP in a request line.
SPACES = re.compile(rb"[ \t\x0b\x0c\r]+")
VERSION_1X = re.compile(rb"HTTP/1\.[0-9]")
ANY_DIGITS = re.compile(rb"[0-9]{1,20}")
CHUNK_SIZE_EXT = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")


@dataclass
class Sent:
    # (method, body) of each request sent whole, up to where a server must stop reading.
    whole: list[tuple[bytes, bytes]]
    methods: list[bytes]  # the method of each request begun, in order (which responses answer a HEAD)


def _head_lines(data: bytes, pos: int) -> tuple[list[bytes], int] | None:
    """Lines up to the empty line (RFC 9112 2.2: LF ends a line, a CR before it is dropped); None if cut short."""
    lines = []
    for _ in range(100_000):
        nl = data.find(b"\n", pos)
        if nl < 0:
            return None
        line = data[pos:nl]
        pos = nl + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return lines, pos
        lines.append(line)
    return None


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """A chunked body (extensions ignored, CRLF required); None if bad or cut short: a server stops there."""
    body = []
    for _ in range(100_000):
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = CHUNK_SIZE_EXT.fullmatch(data, pos, eol)
        if size is None:
            return None
        n = int(size.group(1), 16)
        pos = eol + 2
        if n == 0:
            for _ in range(100_000):
                eol = data.find(b"\r\n", pos)
                if eol < 0 or b"\n" in data[pos:eol]:
                    return None
                if eol == pos:
                    return b"".join(body), eol + 2
                pos = eol + 2
            return None
        if data[pos + n : pos + n + 2] != b"\r\n":
            return None
        body.append(data[pos : pos + n])
        pos += n + 2
    return None


def sent_requests(data: bytes) -> Sent:
    """The requests in the client's bytes, as generously as RFC 9112 lets a server read them (LF alone ends a line,
    whitespace separates the request line, obs-fold is unfolded, empty list elements are ignored...) but never
    past a point where it must stop: an unreadable request line, framing it cannot trust (a coding other than
    chunked, bad or differing Content-Lengths, whitespace before a colon), a body cut short, or a request after
    which nothing may be read as HTTP (Connection: close, HTTP/1.0, Content-Length with Transfer-Encoding, an
    upgrade). The upstream must never get a request that is not among these."""
    whole: list[tuple[bytes, bytes]] = []
    methods: list[bytes] = []
    pos = 0
    for _ in range(1000):
        while data.startswith(b"\n", pos) or data.startswith(b"\r\n", pos):
            pos = data.index(b"\n", pos) + 1  # RFC 9112 2.2: empty lines before a request line
        if pos >= len(data):
            break
        nl = data.find(b"\n", pos)
        words = SPACES.split(data[pos : nl if nl >= 0 else len(data)].strip(b" \t\x0b\x0c\r"))
        methods.append(words[0])
        got = _head_lines(data, pos)
        if got is None or len(words) != 3 or VERSION_1X.fullmatch(words[2]) is None:
            break
        lines, pos = got
        method, version = words[0], words[2]
        fields_: list[tuple[bytes, bytes]] = []
        broken = False
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):  # obs-fold: unfolded; before any field: the line is ignored
                if fields_:
                    fields_[-1] = (fields_[-1][0], fields_[-1][1] + b" " + line.strip(b" \t"))
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.rstrip(b" \t\x0b\x0c\r"):
                broken = (
                    True  # not a field line, or (RFC 9112 5.1: MUST be refused) whitespace before the colon
                )
                break
            fields_.append((name.lower(), value.strip(b" \t")))
        if broken:
            break
        connection = {
            t.strip(b" \t").lower() for n, v in fields_ if n == b"connection" for t in v.split(b",")
        }
        last = b"close" in connection or (version == b"HTTP/1.0" and b"keep-alive" not in connection)
        if method == b"CONNECT" or (b"upgrade" in connection and any(n == b"upgrade" for n, _ in fields_)):
            last = True
        codings = [
            c.strip(b" \t").lower() for n, v in fields_ if n == b"transfer-encoding" for c in v.split(b",")
        ]
        codings = [c for c in codings if c]
        lengths = [c.strip(b" \t") for n, v in fields_ if n == b"content-length" for c in v.split(b",")]
        if any(n == b"transfer-encoding" for n, _ in fields_):
            if codings != [b"chunked"]:
                break
            if lengths or version == b"HTTP/1.0":
                last = True  # RFC 9112 6.1: processed at best by Transfer-Encoding alone, then closed
            got_body = _dechunk(data, pos)
            if got_body is None:
                break
            body, pos = got_body
        elif lengths:
            if not all(ANY_DIGITS.fullmatch(v) for v in lengths) or len({int(v) for v in lengths}) != 1:
                break
            n = int(lengths[0])
            if len(data) < pos + n:
                break
            body, pos = data[pos : pos + n], pos + n
        else:
            body = b""
        whole.append((method, body))
        if last:
            break
    return Sent(whole, methods)


# -- what the client got: responses, strictly --------------------------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\t\x20-\x7e\x80-\xff]*")


@dataclass
class Answer:
    status: int
    fields: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def from_upstream(self) -> bool:
        return any(n == b"x-from" and v == b"upstream" for n, v in self.fields)

    @property
    def closes(self) -> bool:
        return any(n == b"connection" and b"close" in v.lower() for n, v in self.fields)

    def __repr__(self) -> str:
        return f"{self.status}{' (upstream)' if self.from_upstream else ''} {self.body[:60]!r}"


def read_answers(buf: bytes, methods: list[bytes], closed: bool) -> tuple[list[Answer], str | None]:
    """The responses in `buf`, in order; a problem if anything is not a well-formed HTTP/1.1 response."""
    answers: list[Answer] = []
    pos = 0
    for _ in range(1000):
        if pos == len(buf):
            return answers, None
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return answers, f"a response cut short: {buf[pos:][:200]!r}"
        head = buf[pos:end]
        lines = head.split(b"\r\n")
        status_line = STATUS_LINE.fullmatch(lines[0])
        if status_line is None or b"\x00" in head or any(b"\r" in x or b"\n" in x for x in lines):
            return answers, f"not a status line and fields: {head[:200]!r}"
        for line in lines[1:]:
            problem = field_problem(line)
            if problem is not None:
                return answers, f"in a response: {problem}"
        status = int(status_line.group(1))
        found = fields(head)
        pos = end + 4
        if 100 <= status < 200:
            if status == 101:
                return answers, "a 101 (the upstream never switches protocols)"
            continue
        answer = Answer(status, found, b"")
        lengths = [v for n, v in found if n == b"content-length"]
        chunked = [v for n, v in found if n == b"transfer-encoding"]
        if len(lengths) + len(chunked) > 1 or (chunked and chunked[0].lower() != b"chunked"):
            return answers, f"framing fields {lengths!r} {chunked!r}"
        if lengths and DIGITS.fullmatch(lengths[0]) is None:
            return answers, f"Content-Length {lengths[0]!r}"
        head_request = len(answers) < len(methods) and methods[len(answers)] == b"HEAD"
        if head_request and lengths and not answer.from_upstream and len(buf) - pos == int(lengths[0]):
            # A HEAD refused before its head was whole: the proxy may not know the method yet, and send a body.
            head_request = False
        if head_request or status in (204, 304):
            pass
        elif chunked:
            body, after, problem, partial = chunked_body(buf, pos)
            if problem is not None or partial:
                return answers, f"a chunked response body: {problem or 'cut short'}"
            answer.body, pos = body, after
        elif lengths:
            if len(buf) < pos + int(lengths[0]):
                return answers, f"a response body cut short: {buf[pos:][:100]!r}"
            answer.body, pos = buf[pos : pos + int(lengths[0])], pos + int(lengths[0])
        else:
            if not closed:
                return answers, "a response without Content-Length on a connection left open"
            answer.body, pos = buf[pos:], len(buf)
        answers.append(answer)
    return answers, "more than 1000 responses"


# -- the harness: one loop, one engine, one upstream per test function ------------------------------------


def fuzz_config(upstream: str) -> Config:
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {
                "app": {
                    "backends": [{"name": "up", "address": upstream}],
                    "retries": {"attempts": 0},
                    # The engine's tick (which enforces the limits below) runs every response/4 at most.
                    "timeouts": {"connect": "1s", "response": "1s"},
                }
            },
            "limits": {
                "header_timeout": HEADER_TIMEOUT,
                "client_idle_timeout": HEADER_TIMEOUT,
                "max_header_bytes": MAX_HEADER_BYTES,
                "max_headers": 50,
                "max_body": MAX_BODY,
            },
        },
        source="<fuzz>",
    )


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


@dataclass
class Harness:
    runner: asyncio.Runner
    proxy: Proxy
    recorder: Recorder
    loop_errors: list[str] = field(default_factory=list)
    log: ErrorLog = field(default_factory=ErrorLog)
    # Upstream connection (its index in the recorder) -> where the last whole request it got ends.
    ledger: dict[int, int] = field(default_factory=dict)
    broken: set[int] = field(default_factory=set)  # upstream connections already found malformed

    @property
    def engine(self) -> Engine:
        return self.proxy.engine

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self.runner.run(coro)

    def loop_exception(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(describe(context))

    def health_problems(self) -> list[str]:
        problems = [f"the loop's exception handler got: {e}" for e in self.loop_errors]
        problems += [f"logged at ERROR: {r}" for r in self.log.records]
        self.loop_errors.clear()
        self.log.records.clear()
        return problems

    def upstream_news(self) -> tuple[list[Forwarded], list[str]]:
        """The whole requests the upstream got since the last call, and what was wrong with what it got."""
        news: list[Forwarded] = []
        problems = []
        for i, conn in enumerate(self.recorder.conns):
            if i in self.broken:
                continue
            parsed = forwarded_requests(bytes(conn.raw), self.ledger.get(i, 0))
            if conn.error is not None and parsed.requests:  # the recording upstream stopped without answering
                parsed.requests[-1].unanswered = True
            news += parsed.requests
            self.ledger[i] = parsed.end
            if parsed.problem is not None:
                # Nothing on this connection can be read any more: see that the proxy never uses it again, so
                # that the next examples are judged on their own.
                self.broken.add(i)
                pool = self.engine.balancer.backends["up"].pool
                if pool is not None:
                    pool.close_all()
                problems.append(f"upstream connection {i} got what is not HTTP/1.1: {parsed.problem}")
            elif parsed.partial and not conn.eof:
                problems.append(
                    f"upstream connection {i} was left open inside a request: {bytes(conn.raw[parsed.end :])[:200]!r}"
                )
        return news, problems


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


async def until(condition: Callable[[], bool], timeout: float = T) -> bool:
    """Whether `condition()` became true within `timeout`, letting the loop run between looks."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(10_000_000):
        if condition():
            return True
        now = loop.time()
        if now > start + timeout:
            return False
        # Most conditions hold after a turn or two of the loop: look at once at first, then less often.
        await asyncio.sleep(0 if now < start + 0.05 else 0.005)
    return False


@pytest.fixture(params=list(LOOPS))
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    runner = asyncio.Runner(loop_factory=LOOPS[request.param])
    recorder = Recorder()
    upstream = ScriptedUpstream(recorder.script)
    log = ErrorLog()
    loggers = [logging.getLogger("lbtui"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(log)
    engine: Engine | None = None
    try:
        runner.run(upstream.start())
        engine = Engine(fuzz_config(upstream.address))
        runner.run(engine.start())
        harness = Harness(runner, Proxy(engine, recorder), recorder, log=log)
        runner.get_loop().set_exception_handler(harness.loop_exception)
        runner.run(harness.proxy.healthy())
        harness.upstream_news()
        yield harness
        running, engine = engine, None
        runner.run(running.shutdown(grace=1.0))
        runner.run(upstream.stop())
        gc.collect()  # a task that failed unseen says so when collected: "Task exception was never retrieved"
        problems = harness.health_problems()
        assert not problems, problems
    finally:
        if engine is not None:
            with contextlib.suppress(Exception):
                runner.run(engine.shutdown(grace=0.1))
        runner.close()
        for logger in loggers:
            logger.removeHandler(log)


def describe(context: dict[str, Any]) -> str:
    error = context.get("exception")
    return f"{context.get('message')}: {error!r}" if error is not None else str(context.get("message"))


# -- the client side of one example ----------------------------------------------------------------------


def queued(sock: Any, request: int) -> int:
    """Bytes in a socket's receive queue (FIONREAD) or not yet acknowledged by its peer (TIOCOUTQ)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0"))[0])
    except (OSError, ValueError):
        return 0


def server_socket(conn: ClientConnection) -> Any:
    return conn.transport.get_extra_info("socket") if conn.transport is not None else None


def idle(conn: ClientConnection) -> bool:
    """The proxy holds no request of this connection, part or whole, and has sent all it wrote."""
    transport = conn.transport
    sock = server_socket(conn)
    return (
        not conn.closed
        and transport is not None
        and sock is not None
        and conn.idle
        and not conn.pending
        and not conn.head_started
        and conn.upgrading is None
        and not conn.paused
        and transport.get_write_buffer_size() == 0
        and queued(sock, termios.TIOCOUTQ) == 0
        and queued(sock, termios.FIONREAD) == 0
    )


def proxy_state(conn: ClientConnection) -> str:
    current = conn.current
    return (
        f"closed={conn.closed} current={current is not None and (current.method, current.status, current.done)} "
        f"parsing={conn.parsing is not None} pending={len(conn.pending)} head_started={bool(conn.head_started)} "
        f"last_request={conn.last_request} paused={conn.paused}"
    )


@dataclass
class Delivery:
    """The bytes of one example and where they are cut into separate writes."""

    data: bytes
    cuts: tuple[int, ...] = ()
    how: str = "whole"
    hang_up: bool = False  # the client closes right after its last byte, reading nothing

    def pieces(self) -> list[bytes]:
        bounds = [0, *self.cuts, len(self.data)]
        return [self.data[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    def __repr__(self) -> str:
        cuts = f", cuts={self.cuts!r}" if self.how == "split" else ""
        hang_up = ", hang_up=True" if self.hang_up else ""
        return f"Delivery({self.data!r}, how={self.how!r}{cuts}{hang_up})"


@dataclass
class Talk:
    received: bytes
    closed: bool
    hang: str | None  # what the proxy was doing when the deadline passed
    conn: ClientConnection


def drain(sock: socket.socket, into: bytearray) -> bool:
    """Read what is there without waiting; True at the end of the stream (or a reset)."""
    for _ in range(100_000):
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return False
        except ConnectionError:
            return True
        if not chunk:
            return True
        into += chunk
    return False


async def accepted(engine: Engine, address: tuple[str, int]) -> ClientConnection:
    found: list[ClientConnection] = []

    def look() -> bool:
        for conn in engine.connections:
            if conn.transport is not None and conn.transport.get_extra_info("peername")[:2] == address:
                found.append(conn)
                return True
        return False

    assert await until(look), "the proxy never accepted the connection"
    return found[0]


async def talk(engine: Engine, delivery: Delivery) -> Talk:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.wait_for(loop.sock_connect(sock, engine.address()), T)
        conn = await accepted(engine, sock.getsockname()[:2])
        received = bytearray()
        closed = False
        for piece in delivery.pieces():
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, piece), T)
            except OSError:  # closed by the proxy (a reset, a broken pipe)
                closed = True
                break
            # Let the proxy read this piece before the next is sent (it may have stopped reading: then move on).
            await until(
                lambda: (
                    conn.closed
                    or bool(conn.paused)
                    or (
                        queued(sock, termios.TIOCOUTQ) == 0
                        and queued(server_socket(conn), termios.FIONREAD) == 0
                    )
                ),
                T,
            )
            closed = drain(sock, received)
            if closed:
                break
        deadline = loop.time() + DEADLINE
        hang = None
        for _ in range(100_000):
            if closed or delivery.hang_up:
                break
            if idle(conn):
                closed = drain(sock, received)
                if not closed and idle(conn):
                    break
            if loop.time() > deadline:
                hang = proxy_state(conn)
                break
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 0.05)
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
            if chunk:
                received += chunk
            else:
                closed = True
        return Talk(bytes(received), closed, hang, conn)
    finally:
        sock.close()


async def fuzz_one(h: Harness, delivery: Delivery) -> None:
    engine = h.engine
    sent = sent_requests(delivery.data)
    problems = h.health_problems()
    leftover, found = h.upstream_news()
    problems += found
    if leftover:
        problems.append(f"the upstream got requests between examples: {leftover!r}")

    heard = await talk(engine, delivery)
    event(f"delivered {delivery.how}")
    if heard.hang is not None:
        problems.append(f"after {DEADLINE}s the connection is neither closed nor idle: {heard.hang}")
    answers, problem = read_answers(heard.received, sent.methods, heard.closed)
    if delivery.hang_up:  # what came before the client left is all it saw: only the proxy's side is judged
        event("the client hung up")
    elif problem is not None:
        problems.append(problem)
    for i, answer in enumerate(answers if not delivery.hang_up else []):
        event(f"status {answer.status}")
        refusal = not answer.from_upstream and answer.status >= 400
        if (refusal or answer.closes) and i != len(answers) - 1:
            problems.append(f"response {i} ({answer!r}) refuses or closes, yet more responses follow")
        if refusal and not answer.closes:
            problems.append(f"response {i} ({answer!r}) is a refusal without Connection: close")
        if (refusal or answer.closes) and not heard.closed and heard.hang is None:
            problems.append(f"response {i} ({answer!r}) refuses or closes, but the connection stays open")
        if not answer.from_upstream and b"callback error" in answer.body:
            problems.append(f"an internal error answered as a refusal: {answer.body!r}")

    # The client is gone: the proxy must let go of its connection and of every in-flight count.
    conn = heard.conn
    if not await until(lambda: conn not in engine.connections and engine.in_flight() == 0):
        problems.append(
            f"{T}s after the client closed: connection still held: {conn in engine.connections}, "
            f"in flight: {engine.in_flight()}"
        )
    # A request the upstream got in part ends with the proxy closing that connection.
    if not await until(lambda: all(c.eof or not c.in_message for c in h.recorder.conns)):
        problems.append("an upstream connection was left open inside a request")
    try:
        await h.proxy.healthy()
    except AssertionError as error:
        problems.append(f"a fresh connection does not get a 200 from the upstream: {error}")
    news, found = h.upstream_news()
    problems += found
    health = next(
        (r for r in reversed(news) if (r.method, r.target, r.body) == (b"GET", b"/healthy", b"")), None
    )
    if health is not None:
        news.remove(health)
    # RFC 9112 9.3.1: an idempotent request that its connection closed on, unanswered, may be sent again (the
    # proxy does so once, on a fresh connection, when a pooled one turns out dead): the first copy is not counted.
    for request in [r for r in news if r.unanswered and r.method in IDEMPOTENT]:
        key = (request.method, request.target, request.body)
        if any(r is not request and (r.method, r.target, r.body) == key for r in news):
            news.remove(request)
            event("a request retried after its connection closed unanswered")
    event(f"requests forwarded: {len(news) if len(news) < 2 else '2 or more'}")
    if len(news) > len(sent.whole):
        problems.append(f"the upstream got {len(news)} requests, the client sent {len(sent.whole)} whole")
    unsent = Counter((r.method, r.body) for r in news) - Counter(sent.whole)
    if unsent:
        problems.append(f"the upstream got requests the client never sent whole: {sorted(unsent)!r}")
    relayed = sum(a.from_upstream for a in answers)
    answered = [r for r in news if not upgrade(r)]  # the recording upstream answers all but upgrade requests
    if relayed != len(answered) and not delivery.hang_up:
        problems.append(
            f"the upstream answered {len(answered)} requests, the client got {relayed} of the answers"
        )
    problems += h.health_problems()
    assert not problems, (
        f"{delivery!r}\nsent whole: {sent.whole!r}\nreceived ({'closed' if heard.closed else 'open'}): "
        f"{heard.received[:600]!r}\nupstream got: {[(r.method, r.target, r.body) for r in news]!r}\n- "
        + "\n- ".join(problems)
    )


# -- strategies ------------------------------------------------------------------------------------------


# The parts of a request that go odd in turn: mostly one per request, so that each defect is met on its own (one
# behind another is masked by the first refusal), sometimes none or a few together.
KNOBS = ("method", "target", "version", "host", "fields", "framing", "line-ends", "separators")
ODD_KNOBS = st.sampled_from([1, 1, 1, 0, 2, 3]).flatmap(
    lambda n: st.lists(st.sampled_from(KNOBS), min_size=n, max_size=n, unique=True)
)


def pick(draw: st.DrawFn, odd: bool, ordinary: list[Any], odd_ones: list[Any]) -> Any:
    return draw(st.sampled_from(odd_ones if odd else ordinary))


METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"HEAD", b"TRACE"]
ODD_METHODS = [b"get", b"FOO", b"M-SEARCH", b"PROPFIND", b"CONNECT", b"G@T", b"", b"\x00GET", b"X" * 60]
SAFE_TARGETS = [b"/", b"/a", b"/a/b?c=d&e=f", b"/x%20y", b"/?", b"/a/", b"/~u/p.html", b"/a;b=c"]
ODD_TARGETS = [
    b"*",
    b"/%2e%2e/x",
    b"/a/../../b",
    b"/./a/.",
    b"/..",
    b"//x//y",
    b"/a%2Fb",
    b"/%00",
    b"/%zz",
    b"/%",
    b"/a#frag",
    b"/a b",
    b"/a\tb",
    b"/caf\xc3\xa9",
    b'/"<>{}|\\^`',
    b"",
    b"a",
    b"http://h/x",
    b"https://h:8080/p?q=1",
    b"HTTP://H",
    b"http://h?q",
    b"http://u@h/",
    b"http://[::1]:80/",
    b"http://h:bad/",
    b"ftp://h/",
    b"h:80",
    b"/" + b"a" * (MAX_HEADER_BYTES + 10),
    b"/" + b"b" * (MAX_HEADER_BYTES - 200),
]
ODD_VERSIONS = [
    b"HTTP/1.0",
    b"HTTP/1.2",
    b"HTTP/2.0",
    b"HTTP/0.9",
    b"",
    b"http/1.1",
    b"HTTP/11",
]
ODD_HOSTS = [
    [b"Host: h:8080"],
    [b"Host: "],
    [b"Host: [::1]:80"],
    [],
    [b"Host: h", b"Host: h"],
    [b"Host: h", b"Host: i"],
    [b"Host: a b"],
    [b"Host: a,b"],
    [b"Host: a%zz"],
    [b"host:h"],
    [b"Host: h\x01"],
    [b"Host: a@b"],
]
FIELDS = [  # ordinary ones first (up to ODD_FIELDS)
    b"X-A: b",
    b"Accept: */*",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: x-a",
    b"Connection: upgrade",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"X-Forwarded-For: 1.2.3.4",
    b"X-Forwarded-Host: evil",
    b"X-Request-ID: abc",
    b"TE: trailers",
    b"Keep-Alive: 5",
    b"Proxy-Connection: keep-alive",
    b"Trailer: X-T",
    b"Cookie: a=b; c=d",
    b"X-Empty:",
    b"X-Spaces:   v  ",
    b"X-Obs-Text: caf\xe9",
    b"X-A: a\x00b",
    b"X-A: a\x01b",
    b"X-A: a\x7fb",
    b"X-A: a\rb",
    b"X-A: \xff\xfe",
    b"X A: b",
    b"X@A: b",
    b": b",
    b"X-A",
    b"X-A : b",
    b" folded",
    b"\tfolded",
    b"X-Long: " + b"v" * 3000,
    b"Content-Length: 5",
    b"Transfer-Encoding: chunked",
]
ODD_FIELDS = FIELDS.index(b"X-A: a\x00b")
FIELD_NAMES = st.text("abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789!#$%&'*+.^_`|~", min_size=1, max_size=12)
BODIES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"hello", SMUGGLED, b"0\r\n\r\n" + SMUGGLED, b"5\r\nhello\r\n0\r\n\r\n"]),
)


@st.composite
def chunked(draw: st.DrawFn, body: bytes, good: bool = True) -> bytes:
    """`body` in chunked framing: good (sizes in either case, extensions, trailers), or broken somewhere."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=3))))
    bounds = [0, *cuts, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    out = []
    for chunk in chunks:
        size = b"%x" % len(chunk) if draw(st.booleans()) else b"%X" % len(chunk)
        ext = draw(st.sampled_from([b""] * 4 + [b";a=b", b';a="q;\\"x"', b";a"]))
        out.append(size + ext + b"\r\n" + chunk + b"\r\n")
    trailer = draw(st.sampled_from([b""] * 4 + [b"X-T: t\r\n"]))
    out.append(b"0\r\n" + trailer + b"\r\n")
    data = b"".join(out)
    if not good:
        breakage = draw(
            st.sampled_from(
                [
                    (b"\r\n", b"\n"),
                    (b"\r\n", b"\r"),
                    (b"\r\n", b""),
                    (b"0\r\n", b"g\r\n"),
                    (b"0\r\n", b"-0\r\n"),
                    (b"0\r\n", b"0x0\r\n"),
                    (b"0\r\n", b"fffffffffffffffffff\r\n"),
                    (b"0\r\n", b" 0\r\n"),
                    (b"0\r\n", b"0;a=\x01\r\n"),
                    (b"0\r\n\r\n", b"0\r\n"),
                    (b"0\r\n\r\n", b""),
                ]
            )
        )
        old, new = breakage
        at = data.rfind(old) if draw(st.booleans()) else data.find(old)
        # Where the piece to break is missing (a body too short for it), a chunk shorter than its size.
        data = data[:at] + new + data[at + len(old) :] if at >= 0 else b"3\r\nab" + data
    return data


@st.composite
def framed(draw: st.DrawFn, odd: bool) -> tuple[list[bytes], bytes]:
    """Framing fields and the body after the head."""
    body = draw(BODIES)
    kinds = ["none", "length", "chunked"]
    odd_kinds = [
        "none-with-body",
        "length-wrong",
        "length-odd",
        "chunked-bad",
        "coding-other",
        "both",
        "chunked-odd",
    ]
    kind = pick(draw, odd, kinds, odd_kinds)
    if kind == "none":
        return [], b""
    if kind == "none-with-body":  # the body is read as the next request
        return [], body
    if kind == "length":
        return [b"Content-Length: %d" % len(body)], body
    if kind == "length-wrong":
        n = max(0, len(body) + draw(st.integers(-5, 5)))
        return [b"Content-Length: %d" % n], body
    if kind == "length-odd":
        n = len(body)
        lengths = [b" %d " % n, b"0%d" % n, b"%d, %d" % (n, n), b"%d,%d" % (n, n + 1), b"+%d" % n, b"-1"]
        lengths += [
            b"%da" % n,
            b"0x%x" % n,
            b"",
            b"99999999999999999999",
            b"%d" % (MAX_BODY + 1),
            b"\x0b%d" % n,
        ]
        value = draw(st.sampled_from(lengths))
        fields_ = [b"Content-Length: " + value]
        if draw(st.booleans()):
            fields_.append(b"Content-Length: %d" % (n + draw(st.integers(0, 1))))
        return fields_, body
    if kind == "chunked":
        return [b"Transfer-Encoding: chunked"], draw(chunked(body))
    if kind == "chunked-odd":
        value = draw(st.sampled_from([b"Chunked", b"CHUNKED", b"chunked ", b"\tchunked", b"chunked,"]))
        return [b"Transfer-Encoding: " + value], draw(chunked(body))
    if kind == "chunked-bad":
        return [b"Transfer-Encoding: chunked"], draw(chunked(body, good=False))
    if kind == "coding-other":
        value = draw(
            st.sampled_from(
                [b"gzip", b"chunked, gzip", b"gzip, chunked", b"identity", b"xchunked", b'"chunked"']
            )
        )
        fields_ = [b"Transfer-Encoding: " + value]
        if draw(st.booleans()):
            fields_.append(b"Transfer-Encoding: chunked")
        return fields_, draw(chunked(body))
    # both
    framing = [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
    if draw(st.booleans()):
        framing.reverse()
    return framing, draw(chunked(body)) if draw(st.booleans()) else body


@st.composite
def requests(draw: st.DrawFn, valid: bool = False) -> bytes:
    """One request from the grammar's pieces; `valid`: only well-formed ones (the seeds of the mutations)."""
    odd = () if valid else draw(ODD_KNOBS)
    method = pick(draw, "method" in odd, METHODS, ODD_METHODS)
    target = pick(draw, "target" in odd, SAFE_TARGETS, ODD_TARGETS)
    if "target" in odd and draw(st.integers(0, 4)) == 0:
        target = b"/" + draw(st.binary(max_size=20))
    version = pick(draw, "version" in odd, [b"HTTP/1.1"], ODD_VERSIONS)
    hosts = pick(draw, "host" in odd, [[b"Host: h"]], ODD_HOSTS)
    extra = draw(st.lists(st.sampled_from(FIELDS[:ODD_FIELDS]), max_size=3))
    if "fields" in odd:
        weird = st.one_of(
            st.sampled_from(FIELDS[ODD_FIELDS:]),
            st.builds(lambda n, v: n.encode() + b": " + v, FIELD_NAMES, st.binary(max_size=12)),
        )
        extra.insert(draw(st.integers(0, len(extra))), draw(weird))
    eol = pick(draw, "line-ends" in odd, [b"\r\n"], [b"\n"])
    framing, body = draw(framed("framing" in odd))
    lines = [*hosts, *extra]
    for line in framing:
        lines.insert(draw(st.integers(0, len(lines))), line)
    if method == b"HEAD" or (method in (b"GET", b"OPTIONS", b"DELETE") and not odd and draw(st.booleans())):
        framing, body = [], b""
        lines = [line for line in lines if not line.lower().startswith((b"content-length", b"transfer-enc"))]
    separator = pick(draw, "separators" in odd, [b" "], [b"  ", b"\t"])
    start = method + separator + target + (separator + version if version else b"")
    return start + eol + b"".join(line + eol for line in lines) + eol + body


@st.composite
def pipelines(draw: st.DrawFn, valid: bool) -> bytes:
    """1 to 3 requests in a row; unless `valid`, one of them (anywhere) built with odd pieces."""
    n = draw(st.integers(1, 3))
    odd_one = -1 if valid else draw(st.integers(0, n - 1))
    return b"".join(draw(requests(valid=i != odd_one)) for i in range(n))


NOISE = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"0",
    b"5",
    b"a",
    b"%",
    b"\x7f",
    b"\xff",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid pipeline, then a few mutations: bytes flipped, inserted or deleted, a line duplicated, line ends
    changed (CRLF to LF or CR), the end cut off."""
    data = bytearray(draw(pipelines(valid=True)))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3, 4]))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate-line", "line-end", "truncate"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.one_of(st.sampled_from(NOISE), st.binary(min_size=1, max_size=3)))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 3))]
        elif kind == "duplicate-line":
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            if end >= 0:
                data[start:start] = data[start : end + 1]
        elif kind == "line-end":
            crlf = data.find(b"\r\n", at)
            if crlf >= 0:
                data[crlf : crlf + 2] = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"]))
        else:
            del data[at:]
    return bytes(data)


TOKENS = [
    b"GET",
    b"POST",
    b" ",
    b"/",
    b"/a",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"Host: h",
    b":",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked",
    b"Connection: close",
    b"0",
    b"5",
    b"hello",
]
RANDOM = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=3)), max_size=40).map(b"".join),
)


@st.composite
def deliveries(draw: st.DrawFn, inputs: st.SearchStrategy[bytes]) -> Delivery:
    data = draw(inputs)
    how = draw(st.sampled_from(["whole", "split", "bytes"]))
    hang_up = draw(st.integers(0, 7)) == 7
    if how == "whole" or len(data) < 2:
        return Delivery(data, hang_up=hang_up)
    if how == "bytes":
        return Delivery(data, tuple(range(1, min(len(data), BYTEWISE))), how, hang_up)
    cuts = draw(st.lists(st.integers(1, len(data) - 1), min_size=1, max_size=8, unique=True))
    return Delivery(data, tuple(sorted(cuts)), how, hang_up)


# -- the tests -----------------------------------------------------------------------------------------------


def fuzz_settings(n: int) -> settings:
    # One engine for all the examples of a test function, on purpose (a proxy lives long, and an engine per
    # example would cost most of the budget): hence the function-scoped fixture under @given.
    return settings(
        PROFILE,
        max_examples=examples(n),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


@fuzz_settings(150)
@given(delivery=deliveries(RANDOM))
def test_random_bytes(harness: Harness, delivery: Delivery) -> None:
    harness.run(fuzz_one(harness, delivery))


@pytest.mark.slow
@fuzz_settings(250)
@given(delivery=deliveries(pipelines(valid=False)))
def test_requests_from_the_grammar(harness: Harness, delivery: Delivery) -> None:
    harness.run(fuzz_one(harness, delivery))


@pytest.mark.slow
@fuzz_settings(250)
@given(delivery=deliveries(mutated()))
def test_mutated_requests(harness: Harness, delivery: Delivery) -> None:
    harness.run(fuzz_one(harness, delivery))


# -- the oracles themselves ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", None, id="plain"),
        pytest.param(b"POST /a?b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok", None, id="length"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            None,
            id="chunked",
        ),
        pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", None, id="asterisk"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", "obs-fold", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\nHost: h\r\n\r\n", "bare CR or LF", id="bare-lf"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01\r\n\r\n", "control byte", id="ctl"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX A: a\r\n\r\n", "not a token", id="name"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", "Host fields", id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n", "Host fields", id="two-hosts"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", "Host fields", id="bad-host"),
        pytest.param(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", "origin-form", id="absolute-form"),
        pytest.param(b'GET /a"b HTTP/1.1\r\nHost: h\r\n\r\n', "origin-form", id="quote-in-target"),
        pytest.param(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n", "request line", id="http10"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            "Content-Length",
            id="two-cl",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;x\r\nok\r\n0\r\n\r\n",
            "extension",
            id="chunk-ext",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "both",
            id="cl-and-te",
        ),
    ],
)
def test_the_strict_parser_of_what_the_upstream_got(raw: bytes, problem: str | None) -> None:
    parsed = forwarded_requests(raw)
    if problem is None:
        assert parsed.problem is None, parsed
        assert not parsed.partial, parsed
        assert len(parsed.requests) == 1, parsed
    else:
        assert parsed.problem is not None, parsed
        assert problem in parsed.problem, parsed
    assert forwarded_requests(raw[:-1]).partial or forwarded_requests(raw[:-1]).problem is not None


@pytest.mark.parametrize(
    ("data", "whole"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 2, 2, id="two"),
        pytest.param(b"\r\nGET / HTTP/1.1\nHost: h\n\n", 1, id="lf-and-leading-empty-line"),
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: 35\r\n\r\n" + SMUGGLED, 1, id="body-is-not-a-request"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + SMUGGLED, 1, id="close"),
        pytest.param(b"GET / HTTP/1.0\r\n\r\n" + SMUGGLED, 1, id="http10"),
        pytest.param(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + SMUGGLED, 2, id="http10-keep-alive"
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
            1,
            id="cl-and-te",
        ),
        pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n" + SMUGGLED, 0, id="gzip"),
        pytest.param(b"POST / HTTP/1.1\r\nContent-Length : 0\r\n\r\n" + SMUGGLED, 0, id="space-before-colon"),
        pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n" + SMUGGLED, 0, id="cl-list"),
        pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort", 0, id="body-cut-short"),
        pytest.param(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 0, id="chunk-lf"
        ),
        pytest.param(b"GET /  HTTP/1.1\r\n\r\n" + SMUGGLED, 2, id="two-spaces"),
        pytest.param(b"GET / HTTP/2.0\r\n\r\n" + SMUGGLED, 0, id="http2"),
    ],
)
def test_the_reading_of_what_the_client_sent(data: bytes, whole: int) -> None:
    assert len(sent_requests(data).whole) == whole


def test_responses_are_read_strictly() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert read_answers(ok * 2, [], closed=False) == (
        [Answer(200, [(b"content-length", b"2")], b"ok")] * 2,
        None,
    )
    assert read_answers(ok[:-1], [], closed=True)[1] is not None
    assert read_answers(b"HTTP/1.1 99 X\r\n\r\n", [], closed=True)[1] is not None
    assert read_answers(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", [b"HEAD"], closed=False)[1] is None


# -- what the fuzzing found, pinned as plain cases (raw sockets, as in test_hostile) -------------------------


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(b"CONNECT / HTTP/1.1", id="origin-form"),
        pytest.param(b"CONNECT /a?b HTTP/1.1", id="origin-form-query"),
        pytest.param(b"CONNECT h:80 HTTP/1.1", id="authority-form"),
        pytest.param(b"CONNECT http://h/ HTTP/1.1", id="absolute-form"),
    ],
)
async def test_connect_is_refused_and_never_reaches_the_upstream(proxy, start):
    """Found by test_requests_from_the_grammar: `CONNECT /` went upstream (as an upgrade, which opens a tunnel
    when the backend agrees). RFC 9110 9.3.6: CONNECT's target is an authority; a reverse proxy serves none."""
    await proxy.reject(message(HOST, start=start), later=SMUGGLED)


@pytest.mark.parametrize("char", [pytest.param(bytes([c]), id=f"0x{c:02x}") for c in b'"<>\\^`{|}'])
@pytest.mark.parametrize("where", ["path", "query"])
async def test_target_characters_rfc3986_leaves_out_are_refused(proxy, char, where):
    """Found by test_requests_from_the_grammar: `GET /"<>{}|\\^` went upstream as it came. RFC 9112 3.2 (an
    invalid request-target: 400); HAProxy refuses these by default too (option accept-invalid-http-request)."""
    target = b"/hostile" + char if where == "path" else b"/hostile?a=" + char
    await proxy.reject(message(HOST, start=b"GET " + target + b" HTTP/1.1"))


async def test_target_characters_rfc3986_allows_are_forwarded(proxy):
    """The other side of the one above: every character RFC 3986 allows in a path and query still goes through."""
    target = b"/hostile/a-b.c_d~e!f$g&h'i(j)k*l+m,n;o=p:q@r%41?s=t/u?v[w]x%zz"
    _, head, _ = await proxy.forwarded(message(HOST, start=b"GET " + target + b" HTTP/1.1"))
    assert head.startswith(
        b"GET /hostile/a-b.c_d~e!f$g&h'i(j)k*l+m,n;o=p:q@rA?s=t/u?v[w]x%zz HTTP/1.1\r\n"
    ), head


@pytest.mark.parametrize("host", [b"a%zz", b"a%4", b"a%", b"%", b"%g0.example"])
@pytest.mark.parametrize("where", ["host-field", "absolute-form"])
async def test_host_with_a_broken_percent_encoding_is_refused(proxy, host, where):
    """Found by test_requests_from_the_grammar: `Host: a%zz` went upstream. RFC 9112 3.2: a Host that is not
    uri-host [":" port] MUST get a 400; in a reg-name (RFC 3986 3.2.2) `%` starts two hex digits."""
    if where == "host-field":
        data = message(b"Host: " + host, start=b"GET /hostile HTTP/1.1")
    else:
        data = message(HOST, start=b"GET http://" + host + b"/hostile HTTP/1.1")
    await proxy.reject(data)


async def test_host_with_a_percent_encoding_is_forwarded_decoded(proxy):
    """RFC 3986 6.2.2: `a%41b.example` is `aab.example` (issue 13: the backend and routing get one spelling)."""
    _, head, _ = await proxy.forwarded(message(b"Host: a%41b.Example:8080", start=b"GET /hostile HTTP/1.1"))
    assert values(head, b"host") == [b"aab.example:8080"], head


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        pytest.param(b"Content-Length: 1", b"A", id="content-length"),
        pytest.param(b"Content-Length: 35", SMUGGLED, id="content-length-a-request"),
        pytest.param(b"Transfer-Encoding: chunked", b"1\r\n\x00\r\n0\r\n\r\n", id="chunked"),
    ],
)
async def test_upgrade_request_with_a_body_is_refused(proxy, framing, body):
    """Found by test_requests_from_the_grammar: an upgrade request with a chunked body reached the upstream with
    an empty one. httptools ends an upgrade request at its head and hands what follows over as tunnel bytes, so
    the proxy sent the head with its framing and no body (for chunked, its own last chunk)."""
    data = message(
        HOST, b"Connection: upgrade", b"Upgrade: websocket", framing, start=b"GET /hostile HTTP/1.1"
    )
    await proxy.reject(data + body, later=SMUGGLED)


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        pytest.param(b"websocket", [(b"GET /b HTTP/1.1", b"")], id="tunnelled-refused"),
        # (issue 13) a protocol no route tunnels is dropped: the request is a plain one, its body read whole
        pytest.param(b"x", [(b"GET /a HTTP/1.1", b"A"), (b"GET /b HTTP/1.1", b"")], id="dropped-forwarded"),
    ],
)
async def test_upgrade_request_with_a_body_never_desyncs_a_pooled_connection(
    scripted, engine_factory, protocol, expected
):
    """The harm behind the one above: the backend, told `Content-Length: 1`, answered without upgrading (keep-alive)
    before reading the byte; the proxy pooled the connection as clean, and the backend read the first byte of the
    next client's request as that body (it saw `ET /b`)."""
    seen: list[tuple[bytes, bytes]] = []

    async def ignores_upgrade(reader, writer, _up):  # answers each head at once, and honours Content-Length
        for _ in range(10):
            head = await reader.readuntil(b"\r\n\r\n")
            lengths = values(head, b"content-length")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            body = await reader.readexactly(int(lengths[0])) if lengths else b""
            seen.append((head.split(b"\r\n", 1)[0], body))

    up = await scripted(ignores_upgrade)
    engine = await engine_factory(make_config([("up", up.address)], retries={"attempts": 0}))
    for data in (
        message(
            HOST,
            b"Content-Length: 1",
            b"Connection: upgrade",
            b"Upgrade: " + protocol,
            start=b"GET /a HTTP/1.1",
        )
        + b"A",
        message(HOST, start=b"GET /b HTTP/1.1"),
    ):
        reader, writer = await asyncio.open_connection(*engine.address())
        try:
            writer.write(data)
            async with asyncio.timeout(T):
                answer = await reader.readuntil(b"\r\n\r\n")
            assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 200 ")), answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    assert seen == expected
