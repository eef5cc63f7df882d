"""The chaos harness: keep-alive clients against an engine whose backends are real processes, killed with SIGKILL
and started again, with hostile and failing traffic mixed in. Used by tests/proxy/test_chaos.py (short) and run
long by hand: `PYTHONPATH=$PWD python -m tests.chaos --runs 10 --kills 40`.

One run:
- an engine (in this process) with three services: `app` (two backends, each a process running
  tests/chaos_backend.py, with active health checks, outlier detection and slow start), `junk` (a backend that
  answers garbage: 502) and `silent` (one that never answers: 504), and an access log in json;
- CLIENTS keep-alive clients sending GETs (some to /slow, whose response is sent in two parts 20 ms apart) and
  POSTs, each with its own X-Chaos-Id (also its X-Request-ID, so that its access log line is found);
- KILLS rounds of: hostile requests (each must be refused and reach no backend), a GET to `junk` (502) and one
  to `silent` (504), a slowloris client (408), a health-check eject and restore of one backend (the survivor),
  then `kill -9` of the other (the victim) under load, traffic while it is dead, and its restart.

What must hold (Outcome.problems): no GET ends without a byte of a response (a cut before its head, or the
proxy's own 5xx: with one backend always alive, each could have been retried); no POST reaches a backend twice;
no answer of the proxy's own closes a client's connection; the refused requests reach no backend. Cut responses
(after their head) and a POST's 502 are allowed, and counted. Every failure is listed with its access log line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

from lbtui.config import parse_config
from lbtui.proxy.engine import Engine

BACKEND_PROGRAM = Path(__file__).with_name("chaos_backend.py")
STEP_DEADLINE = 10.0  # the longest any one wait of a round may take


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class BackendProcess:
    """A tests/chaos_backend.py process on a fixed port, which can be killed (SIGKILL) and started again."""

    def __init__(self, name: str, log: Path, idle: float = 0.0, close_share: float = 0.0) -> None:
        self.name = name
        self.port = free_port()
        self.log = log
        self.idle = idle
        self.close_share = close_share
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BACKEND_PROGRAM),
            self.name,
            str(self.port),
            str(self.log),
            str(self.idle),
            str(self.close_share),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        async with asyncio.timeout(STEP_DEADLINE):
            line = await self.process.stdout.readline()
        if line != b"ready\n":
            raise RuntimeError(f"backend {self.name} did not start: {line!r}")
        self.starts += 1

    async def kill(self) -> None:
        """SIGKILL: the process dies at once; the kernel closes its sockets (an RST where data was unread)."""
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()

    async def set_health(self, up: bool) -> None:
        """Tell the backend (directly, not through the balancer) what its /healthz answers."""
        body = b"up" if up else b"down"
        async with asyncio.timeout(STEP_DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(
                b"PUT /_chaos/health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(body), body)
            )
            await reader.read()
            writer.close()

    def lines(self) -> list[str]:
        try:
            return self.log.read_text().splitlines()
        except FileNotFoundError:
            return []


class Reply:
    """What a client got for one request: a whole response, or a connection that ended first."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.head_done = False
        self.complete = False
        self.received = 0  # bytes of the response that arrived
        self.ended = ""  # "eof" or "reset" when the connection ended before the response was whole

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    @property
    def own(self) -> bool:
        """An answer of the proxy's own (no backend's response reached the client)."""
        return self.complete and b"x-backend" not in self.headers


@dataclass
class Outcome:
    requests: int = 0
    kills: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    failures: list[str] = field(
        default_factory=list
    )  # every request that did not get a backend's whole answer
    seconds: float = 0.0
    snapshot: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return (
            f"{self.requests} requests, {self.kills} kills in {self.seconds:.1f}s; {counts}; "
            f"{len(self.problems)} problem(s)"
        )


class Client:
    """One keep-alive client: requests one at a time; a new connection after a cut or a `Connection: close`."""

    def __init__(self, chaos: Chaos, number: int) -> None:
        self.chaos = chaos
        self.number = number
        self.sent = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.rng = random.Random(number)

    async def run(self) -> None:
        chaos = self.chaos
        while not chaos.stopping and chaos.outcome.requests < chaos.max_requests:
            roll = self.rng.random()
            self.sent += 1
            chaos_id = f"c{self.number}-{self.sent}"
            if roll < chaos.post_share:
                method, path, body = "POST", f"/p/{chaos_id}", b"x" * self.rng.randrange(1, 2000)
            elif roll < chaos.post_share + chaos.slow_share:
                method, path, body = "GET", f"/slow/{chaos_id}", b""
            else:
                method, path, body = "GET", f"/g/{chaos_id}", b""
            await self.one(method, path, body, chaos_id)

    async def one(self, method: str, path: str, body: bytes, chaos_id: str) -> None:
        chaos = self.chaos
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(*chaos.address)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: chaos.test\r\nX-Chaos-Id: {chaos_id}\r\n"
            f"X-Request-ID: {chaos_id}\r\n"
        )
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        reply = Reply()
        parser = reply.parser
        try:
            self.writer.write(head.encode() + b"\r\n" + body)
            async with asyncio.timeout(STEP_DEADLINE):
                while not reply.complete:
                    try:
                        data = await self.reader.read(65536)
                    except ConnectionResetError:
                        reply.ended = "reset"
                        break
                    if not data:
                        reply.ended = "eof"
                        break
                    reply.received += len(data)
                    parser.feed_data(data)
        except httptools.HttpParserError as error:
            reply.ended = f"unparsable: {error}"
        except TimeoutError:
            reply.ended = "no answer in time"
        except ConnectionError as error:
            reply.ended = f"write failed: {error}"
        chaos.outcome.requests += 1
        closing = not reply.complete or reply.headers.get(b"connection", b"").lower() == b"close"
        chaos.judge(method, path, chaos_id, reply, closing)
        if closing:
            self.writer.close()
            self.reader = self.writer = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


async def _junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that answers every request with garbage (the proxy answers 502)."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"THIS IS NOT HTTP\r\n\r\n")
        await writer.drain()
    writer.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that reads and never answers (the proxy answers 504 at its response timeout)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass
    writer.close()


HOSTILE = (
    # (request bytes, what it is): each must be refused with a 4xx/5xx and never reach a backend.
    (
        b"POST /p/hostile-te HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"X-Chaos-Id: hostile-te\r\n\r\n0\r\n\r\n",
        "Content-Length with Transfer-Encoding",
    ),
    (b"GET /g/hostile-host HTTP/1.1\r\nHost: a b\r\nX-Chaos-Id: hostile-host\r\n\r\n", "a bad Host"),
    (b"GET /g/hostile-two HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-Chaos-Id: hostile-two\r\n\r\n", "two Hosts"),
    (b"GET /g/hostile-09\r\n\r\n", "HTTP/0.9"),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32), "a TLS hello"),
    (b"GET /g/hostile-crlf HTTP/1.1\r\nHost: a\r\nX-Chaos-Id: hostile-crlf\r\nX: a\rb\r\n\r\n", "a bare CR"),
)


class Chaos:
    def __init__(
        self,
        workdir: Path,
        kills: int = 6,
        clients: int = 8,
        max_requests: int = 200_000,
        deadline: float = 50.0,
        seed: int | None = None,
        idle: float = 0.5,
        close_share: float = 0.0,
        retries: dict[str, Any] | None = None,
        settle: bool = False,
    ) -> None:
        self.workdir = workdir
        self.kills = kills
        self.clients = clients
        self.max_requests = max_requests
        self.deadline = deadline
        self.rng = random.Random(seed)
        self.idle = idle
        self.retries = retries
        self.settle = (
            settle  # kill only once the survivor's slow start is over (else at once after its restore)
        )
        self.post_share = 0.1
        self.slow_share = 0.05
        self.outcome = Outcome()
        self.stopping = False
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.engine: Engine | None = None
        self.backends = [
            BackendProcess(f"b{i}", workdir / f"b{i}.log", idle=idle, close_share=close_share)
            for i in range(2)
        ]
        self.access_log = workdir / "access.log"
        self.events: list[tuple[float, str]] = []  # the engine's audit log: (wall time, what changed)
        self.marks: list[tuple[float, str]] = []  # what the harness did when (wall time)

    # -- judging -------------------------------------------------------------------------------------
    def judge(self, method: str, path: str, chaos_id: str, reply: Reply, closing: bool) -> None:
        counts = self.outcome.counts
        if reply.complete and not reply.own:
            counts["ok"] += 1
            return
        if reply.complete:
            detail = " ".join(b"".join(reply.body).decode("latin-1").split())[:120]
            what = f"{method} {path}: the proxy's own {reply.status} ({detail})"
            counts[f"{method} own {reply.status}"] += 1
            if method == "GET":
                self.problem(chaos_id, what + " (a GET that could have been retried)")
            if closing:
                self.problem(chaos_id, what + " closed the client's connection")
        elif reply.head_done:
            what = f"{method} {path}: cut after its head ({reply.ended})"
            counts[f"{method} cut after head"] += 1
        else:
            what = f"{method} {path}: ended with {reply.received} bytes of a response ({reply.ended})"
            counts[f"{method} cut before head"] += 1
            self.problem(chaos_id, what)
        self.outcome.failures.append(f"{chaos_id} {what}")

    def mark(self, what: str) -> None:
        self.marks.append((time.time(), what))

    def problem(self, chaos_id: str, what: str) -> None:
        self.outcome.problems.append(f"{chaos_id}: {what}")

    # -- the run -------------------------------------------------------------------------------------
    def config(self, junk: int, silent: int) -> Any:
        app: dict[str, Any] = {
            "algorithm": "round_robin",
            "backends": [{"name": b.name, "address": b.address} for b in self.backends],
            "health": {"path": "/healthz", "interval": "250ms", "timeout": "250ms", "rise": 2, "fall": 3},
            "outlier": {
                "consecutive_connect_failures": 3,
                "consecutive_gateway_errors": 3,
                "base_ejection": "300ms",
                "max_ejection": "1s",
            },
            "slow_start": "500ms",
        }
        if self.retries is not None:
            app["retries"] = self.retries
        data = {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "limits": {"header_timeout": "300ms"},
            "access_log": {"path": str(self.access_log), "format": "json"},
            "services": {
                "app": app,
                "junk": {"backends": [{"name": "junk", "address": f"127.0.0.1:{junk}"}]},
                "silent": {
                    "backends": [{"name": "silent", "address": f"127.0.0.1:{silent}"}],
                    "timeouts": {"response": "200ms"},
                },
            },
            "routes": [
                {"match": {"path_prefix": "/junk"}, "service": "junk"},
                {"match": {"path_prefix": "/silent"}, "service": "silent"},
                {"match": {"path_prefix": "/"}, "service": "app"},
            ],
        }
        return parse_config(data, source="<chaos>")

    async def wait(self, condition: Any, what: str, timeout: float = STEP_DEADLINE) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() > deadline:
                raise AssertionError(f"chaos: timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.01)

    async def traffic(self, requests: int, what: str) -> None:
        target = self.outcome.requests + requests
        await self.wait(lambda: self.outcome.requests >= target, what)

    def health(self, name: str) -> str:
        assert self.engine is not None
        return self.engine.balancer.backends[name].health.value

    async def raw(self, data: bytes, read_until_close: bool = True) -> bytes:
        reader, writer = await asyncio.open_connection(*self.address)
        try:
            writer.write(data)
            async with asyncio.timeout(STEP_DEADLINE):
                got = await reader.read() if read_until_close else await reader.readuntil(b"\r\n\r\n")
        except ConnectionError:
            got = b""
        finally:
            writer.close()
        return got

    async def other_traffic(self, survivor: BackendProcess) -> None:
        """Hostile requests, a junk 502, a silent 504, a slowloris cut, and the survivor ejected and restored."""
        counts = self.outcome.counts
        for data, what in HOSTILE:
            got = await self.raw(data)
            status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else 0
            if not 400 <= status < 600:
                self.problem("hostile", f"{what}: got {got[:60]!r}, not a refusal")
            counts["hostile refused"] += 1
        for path, status in (("/junk/x", 502), ("/silent/x", 504)):
            got = await self.raw(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), read_until_close=False)
            if not got.startswith(b"HTTP/1.1 %d " % status):
                self.problem("other", f"GET {path}: {got[:40]!r}, not {status}")
            counts[f"other {status}"] += 1
        slowloris = await self.raw(b"GET /g/slowloris HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        if not slowloris.startswith(b"HTTP/1.1 408 "):
            self.problem("slowloris", f"got {slowloris[:40]!r}, not 408")
        counts["slowloris cut"] += 1
        self.mark(f"{survivor.name} health down")
        await survivor.set_health(False)
        await self.wait(lambda: self.health(survivor.name) == "down", f"{survivor.name} to be marked down")
        await self.traffic(20, f"traffic while {survivor.name} is down")
        self.mark(f"{survivor.name} health up")
        await survivor.set_health(True)
        await self.wait(lambda: self.health(survivor.name) == "up", f"{survivor.name} to be up again")
        counts["health eject/restore"] += 1

    async def run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        began = loop.time()
        junk = await asyncio.start_server(_junk, "127.0.0.1", 0)
        silent = await asyncio.start_server(_silent, "127.0.0.1", 0)
        clients: list[Client] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            for backend in self.backends:
                await backend.start()
            engine = self.engine = Engine(
                self.config(junk.sockets[0].getsockname()[1], silent.sockets[0].getsockname()[1])
            )
            await engine.start()
            engine.controller.subscribe(lambda event: self.events.append((event.time, event.describe())))
            self.address = engine.address()
            clients = [Client(self, n) for n in range(self.clients)]
            tasks = [loop.create_task(c.run()) for c in clients]
            await self.traffic(200, "traffic to flow")
            for round_ in range(self.kills):
                if loop.time() - began > self.deadline or self.outcome.requests >= self.max_requests:
                    break
                victim = self.backends[round_ % 2]
                survivor = self.backends[1 - round_ % 2]
                await self.other_traffic(survivor)
                # The victim takes traffic (it has pooled connections and requests in flight) when it dies.
                served = len(victim.lines())
                await self.wait(lambda v=victim, n=served: len(v.lines()) > n + 20, f"{victim.name} to serve")
                await self.traffic(self.rng.randrange(0, 50), "a moment of traffic")
                if self.settle:
                    survivor_backend = engine.balancer.backends[survivor.name]
                    await self.wait(lambda b=survivor_backend: not b.slow_since, "the survivor's slow start")
                self.mark(f"kill {victim.name}")
                await victim.kill()
                self.outcome.kills += 1
                await self.traffic(100 + self.rng.randrange(100), f"traffic while {victim.name} is dead")
                await victim.start()
                self.mark(f"started {victim.name}")
                await self.wait(lambda v=victim: self.health(v.name) == "up", f"{victim.name} to be up")
                served = len(victim.lines())
                await self.wait(
                    lambda v=victim, n=served: len(v.lines()) > n + 20, f"{victim.name} to serve again"
                )
            self.stopping = True
            await asyncio.wait_for(asyncio.gather(*tasks), STEP_DEADLINE)
            for task in tasks:
                task.result()  # a client that failed in itself fails the run
            self.outcome.snapshot = self.state()
        finally:
            self.stopping = True
            for task in tasks:
                task.cancel()
            for client in clients:
                await client.close()
            if self.engine is not None:
                await self.engine.shutdown(grace=2.0)
            for backend in self.backends:
                await backend.kill()
            junk.close()
            silent.close()
        self.outcome.seconds = loop.time() - began
        self.check_backends()
        self.explain()
        return self.outcome

    def state(self) -> dict[str, Any]:
        assert self.engine is not None
        snap = self.engine.controller.snapshot()
        service = snap.service("app")
        return {
            "retries": service.retries,
            "retries_refused": service.retries_refused,
            "retries_in_flight": self.engine.balancer.services["app"].retries_in_flight,
            "in_flight": service.in_flight,
        }

    def check_backends(self) -> None:
        """No POST reached a backend twice; no refused request reached one at all."""
        seen: Counter[str] = Counter()
        for backend in self.backends:
            for line in backend.lines():
                method, _, chaos_id = line.partition(" ")
                if method == "POST" and chaos_id != "-":
                    seen[chaos_id] += 1
                if chaos_id.startswith("hostile") or chaos_id == "slowloris":
                    self.problem(chaos_id, f"a refused request reached a backend: {line}")
        for chaos_id, times in seen.items():
            if times > 1:
                self.problem(chaos_id, f"a POST reached the backends {times} times")
        self.outcome.counts["POST reached a backend"] = len(seen)

    def explain(self) -> None:
        """Add each failure's access log line (found by its request id) to what the outcome says."""
        lines: dict[str, str] = {}
        if self.access_log.exists():
            for line in self.access_log.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    lines[json.loads(line).get("request_id", "")] = line
        explained = []
        for failure in self.outcome.failures:
            line = lines.get(failure.split(" ", 1)[0], "")
            text = f"{failure}\n    {line or '(no access log line)'}"
            if (line and '"retry":"no-backend-left"' in line) or "503" in failure:
                # Why no other backend could take it: what changed and what the harness did around then.
                at = json.loads(line)["time"] if line else ""
                when = _wall(at) if at else 0.0
                near = sorted(
                    [(t, f"event {what}") for t, what in self.events if abs(t - when) < 1.5]
                    + [(t, f"harness {what}") for t, what in self.marks if abs(t - when) < 1.5]
                )
                text += "".join(f"\n      {t - when:+.3f}s {what}" for t, what in near)
            explained.append(text)
        self.outcome.failures = explained


def _wall(iso: str) -> float:
    """The access log's ISO time (UTC, milliseconds) as a wall clock number."""
    import calendar

    stamp, _, millis = iso.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(millis or 0) / 1000


async def run_once(workdir: Path, **options: Any) -> Outcome:
    return await Chaos(workdir, **options).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--idle", type=float, default=0.5, help="backends close idle connections after this")
    parser.add_argument(
        "--close", type=float, default=0.0, help="share of responses that close their connection"
    )
    parser.add_argument("--settle", action="store_true", help="kill once the survivor's slow start is over")
    parser.add_argument("--show", type=int, default=20, help="failures shown per run")
    parser.add_argument("--retries", type=json.loads, default=None, help="the app service's retries, as JSON")
    args = parser.parse_args()
    import tempfile

    totals: Counter[str] = Counter()
    problem_runs = 0
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="lbtui-chaos-") as tmp:
            started = time.monotonic()
            outcome = asyncio.run(
                run_once(
                    Path(tmp),
                    kills=args.kills,
                    clients=args.clients,
                    deadline=args.deadline,
                    idle=args.idle,
                    close_share=args.close,
                    settle=args.settle,
                    retries=args.retries,
                    seed=run,
                )
            )
            print(
                f"run {run + 1}: {outcome.summary()} ({time.monotonic() - started:.1f}s) {outcome.snapshot}"
            )
            for failure in outcome.failures[: args.show]:
                print("  ", failure)
            for problem in outcome.problems[: args.show]:
                print("   PROBLEM", problem)
            totals.update(outcome.counts)
            totals["requests"] += outcome.requests
            totals["kills"] += outcome.kills
            totals["problems"] += len(outcome.problems)
            problem_runs += bool(outcome.problems)
    print(f"{args.runs} runs, {problem_runs} with problems; totals: {dict(sorted(totals.items()))}")
    sys.exit(1 if problem_runs else 0)


if __name__ == "__main__":
    main()
