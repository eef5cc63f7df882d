"""An asyncio client of HAProxy's Runtime API (the `stats socket`, unix path or TCP).

Invariants:
- One command per connection: connect, write the command and a newline, read until HAProxy closes. Connect, write
  and read run under one deadline (`timeout`); nothing here blocks the event loop.
- A socket that cannot be reached (no such file, refused, reset, silent past the deadline) raises
  `RuntimeUnreachable`, whose message names the address. HAProxy answers a refused command with text on an otherwise
  normal answer ("No such backend.", "Permission denied", "Unknown command, ..."): every typed method checks the
  answer against what success looks like and raises `RuntimeCommandError` with HAProxy's own words otherwise.
- Input is checked before anything is sent: names of backends and servers (HAProxy's name characters only, so a
  name cannot smuggle a second command past `;` or a newline), weights (0-256), states, server addresses (an
  IPv4/IPv6 literal or a hostname, and a port 1-65535; HAProxy itself accepts bad ones). A bad value raises
  `ValueError` and nothing reaches the socket.
- `show stat` is parsed by the column names of its `# ` header line, never by position: HAProxy versions add
  columns. `rtime`/`ttime` are HAProxy's integer-millisecond averages over the last 1024 requests, not percentiles.
- Headless: this module imports nothing of textual, rich or httpx, and nothing of lbtui above its layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

__all__ = [
    "Address",
    "Info",
    "RuntimeApiError",
    "RuntimeClient",
    "RuntimeCommandError",
    "RuntimeUnreachable",
    "ServerState",
    "StatRow",
    "TcpAddress",
    "UnixAddress",
    "parse_info",
    "parse_servers_state",
    "parse_stat",
    "parse_url",
    "server_address",
]

URL_FORMS = "haproxy:///absolute/path/to/admin.sock or haproxy://HOST:PORT (e.g. haproxy://127.0.0.1:9999)"
MAX_ANSWER = 64 * 1024 * 1024  # a `show stat` of thousands of servers is a few MB; more is not an answer
MAX_WEIGHT = 256
STATES = ("ready", "drain", "maint")
# HAProxy's proxy and server names: letters, digits, '-', '_', '.' and ':' (cfgparse's invalid_char()).
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class RuntimeApiError(Exception):
    """Something went wrong talking to HAProxy's Runtime API."""


class RuntimeUnreachable(RuntimeApiError):
    """The socket could not be reached, or did not answer within the deadline."""


class RuntimeCommandError(RuntimeApiError):
    """HAProxy answered, and its answer refuses the command. `answer` is the whole text it sent."""

    def __init__(self, message: str, answer: str = "") -> None:
        super().__init__(message)
        self.answer = answer


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return f"haproxy://{self.path}"


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"haproxy://{host}:{self.port}"


Address = UnixAddress | TcpAddress


def _valid_hostname(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    labels = host.removesuffix(".").split(".")
    # An all-digit last label is a mistyped IPv4 address ("999.1.1.1", "10.0.1"), not a name (RFC 3696, 2).
    return all(_HOST_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _host_kind(host: str) -> str | None:
    """'ip' for an IP literal, 'name' for a hostname, None for neither."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "name" if _valid_hostname(host) else None
    return "ip"


def _port(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def parse_url(url: str) -> Address:
    """`haproxy:///abs/path.sock` -> UnixAddress; `haproxy://HOST:PORT` (HOST an IP literal, `[v6]`, or a
    hostname) -> TcpAddress. Anything else raises ValueError with one line saying what is accepted."""
    refused = ValueError(f"not a HAProxy Runtime API address: {url!r}; expected {URL_FORMS}")
    try:
        parts = urlsplit(url)
        port_text = parts.netloc.rpartition(":")[2] if parts.netloc else ""
    except ValueError:
        raise refused from None
    if parts.scheme != "haproxy" or parts.query or parts.fragment or "@" in parts.netloc:
        raise refused
    if not parts.netloc:
        if (
            not url[len(parts.scheme) :].startswith(":///")
            or not parts.path.startswith("/")
            or parts.path == "/"
            or "\x00" in parts.path
        ):
            raise refused
        return UnixAddress(parts.path)
    if parts.path:
        raise refused
    host = parts.hostname or ""
    port = _port(port_text)
    bracketed = parts.netloc.startswith("[")
    kind = _host_kind(host)
    if port is None or kind is None or (":" in host) != bracketed:
        raise refused
    return TcpAddress(host, port)


def server_address(address: str) -> str:
    """A server address for `add server`, checked: `IPv4:PORT`, `[IPv6]:PORT` or `HOSTNAME:PORT`, port 1-65535.
    Returns it in the form HAProxy reads; raises ValueError (HAProxy would accept a bad one)."""
    refused = ValueError(
        f"not a server address: {address!r}; expected IPv4:PORT, [IPv6]:PORT or HOSTNAME:PORT, port 1-65535"
    )
    host, sep, port_text = address.rpartition(":")
    port = _port(port_text)
    if not sep or port is None:
        raise refused
    if host.startswith("[") and host.endswith("]"):
        try:
            ip = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise refused from None
        return f"[{ip.compressed}]:{port}"
    kind = _host_kind(host)
    if kind is None or ":" in host:
        raise refused
    return f"{host}:{port}"


def _name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"not a HAProxy {kind} name: {name!r} (letters, digits, '-', '_', '.', ':')")
    return name


def _target(backend: str, server: str) -> str:
    return f"{_name('backend', backend)}/{_name('server', server)}"


def _first_line(answer: str) -> str:
    return next((line.strip() for line in answer.splitlines() if line.strip()), "(an empty answer)")


# -- typed results ---------------------------------------------------------------------------------------------

ProxyType = Literal["frontend", "backend", "server", "listener"]
_TYPES: dict[str, ProxyType] = {"0": "frontend", "1": "backend", "2": "server", "3": "listener"}


@dataclass(frozen=True, slots=True)
class StatRow:
    """One line of `show stat`: a frontend, a backend (`svname` BACKEND), a server or a listener.

    `status` is HAProxy's own word for the row: UP, DOWN, NOLB, DRAIN, MAINT, "no check", or with a check's
    progress ("UP 1/3", "DOWN 1/2"), or "MAINT (via be/srv)". A figure HAProxy leaves empty for the row's type is
    None. rtime/ttime/qtime/ctime are milliseconds, averaged by HAProxy over the last 1024 requests."""

    pxname: str
    svname: str
    type: ProxyType
    status: str
    weight: int | None  # effective weight
    uweight: int | None  # the weight set by the user (config or `set server ... weight`)
    act: int | None  # 1 for an active server (for a backend, how many are active)
    bck: int | None
    scur: int | None
    smax: int | None
    slim: int | None
    stot: int | None
    qcur: int | None
    qmax: int | None
    rate: int | None  # sessions per second over the last second
    req_rate: int | None  # HTTP requests per second (frontends)
    req_tot: int | None  # HTTP requests (frontends and backends)
    lbtot: int | None  # times the server was picked
    hrsp_1xx: int | None
    hrsp_2xx: int | None
    hrsp_3xx: int | None
    hrsp_4xx: int | None
    hrsp_5xx: int | None
    hrsp_other: int | None
    bin: int | None  # bytes from clients (for a server: sent to it)
    bout: int | None  # bytes to clients (for a server: received from it)
    econ: int | None
    eresp: int | None
    wretr: int | None
    wredis: int | None
    cli_abrt: int | None
    srv_abrt: int | None
    qtime: int | None
    ctime: int | None
    rtime: int | None
    ttime: int | None
    check_status: str
    check_desc: str
    chkfail: int | None
    chkdown: int | None
    lastchg: int | None  # seconds since the last UP/DOWN change
    downtime: int | None
    addr: str
    algo: str
    iid: int | None  # proxy id
    sid: int | None  # server id within its proxy

    @property
    def is_server(self) -> bool:
        return self.type == "server"


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None


_INT_FIELDS = tuple(
    name
    for name in StatRow.__dataclass_fields__
    if name not in ("pxname", "svname", "type", "status", "check_status", "check_desc", "addr", "algo")
)


def parse_stat(answer: str) -> list[StatRow]:
    """`show stat`'s CSV -> rows, by the names of the `# ` header's columns."""
    if not answer.startswith("# "):
        raise RuntimeCommandError(f"haproxy refused `show stat`: {_first_line(answer)}", answer)
    lines = [line for line in answer[2:].splitlines() if line]
    reader = csv.DictReader(lines)
    needed = {"pxname", "svname", "type", "status"}
    missing = needed - set(reader.fieldnames or ())
    if missing:
        raise RuntimeCommandError(f"`show stat` has no column {', '.join(sorted(missing))}", answer)
    rows = []
    for record in reader:
        kind = _TYPES.get(record.get("type") or "")
        if kind is None:
            continue  # a row type this client does not know (a newer HAProxy's): not shown rather than guessed
        ints = {name: _int(record.get(name)) for name in _INT_FIELDS}
        rows.append(
            StatRow(
                pxname=record["pxname"],
                svname=record["svname"],
                type=kind,
                status=record.get("status") or "",
                check_status=record.get("check_status") or "",
                check_desc=record.get("check_desc") or "",
                addr=record.get("addr") or "",
                algo=record.get("algo") or "",
                **ints,  # every key is an int field of StatRow
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class Info:
    """`show info`'s identity of the process: a new `pid` or an `uptime_sec` that went back is a restart (the
    counters started again); `start_time_sec` tells a restart from a clock change."""

    name: str
    version: str
    pid: int
    uptime_sec: int
    start_time_sec: int | None
    node: str
    fields: dict[str, str]  # every `Key: value` line, as HAProxy wrote it

    def restarted_since(self, earlier: Info) -> bool:
        """True if this is another process than `earlier`'s (a restart, or a reload's new worker): its counters
        started again from zero, so a rate computed across the two would be wrong."""
        return self.pid != earlier.pid or self.uptime_sec < earlier.uptime_sec


def parse_info(answer: str) -> Info:
    fields: dict[str, str] = {}
    for line in answer.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    pid, uptime = _int(fields.get("Pid")), _int(fields.get("Uptime_sec"))
    if pid is None or uptime is None:
        raise RuntimeCommandError(f"haproxy refused `show info`: {_first_line(answer)}", answer)
    return Info(
        name=fields.get("Name", ""),
        version=fields.get("Version", ""),
        pid=pid,
        uptime_sec=uptime,
        start_time_sec=_int(fields.get("Start_time_sec")),
        node=fields.get("node", ""),
        fields=fields,
    )


# srv_admin_state bits (HAProxy's SRV_ADMF_*): forced/inherited/config/resolution/hostname maintenance; drain.
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_ADMIN_DRAIN = 0x08 | 0x10
_OP_STATES = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}


@dataclass(frozen=True, slots=True)
class ServerState:
    """One server of `show servers state`: what a reload would keep (address, port, admin and operational state,
    weights), read by the header's names."""

    backend: str
    server: str
    addr: str  # "-" when a hostname has no address yet
    port: int | None
    fqdn: str
    op_state: int
    admin_state: int
    uweight: int | None
    iweight: int | None

    @property
    def in_maint(self) -> bool:
        return bool(self.admin_state & _ADMIN_MAINT)

    @property
    def draining(self) -> bool:
        return bool(self.admin_state & _ADMIN_DRAIN)

    @property
    def operational(self) -> str:
        return _OP_STATES.get(self.op_state, str(self.op_state))


def parse_servers_state(answer: str) -> list[ServerState]:
    lines = answer.splitlines()
    header = next((line for line in lines if line.startswith("# ")), None)
    if not lines or lines[0].strip() != "1" or header is None:
        raise RuntimeCommandError(f"haproxy refused `show servers state`: {_first_line(answer)}", answer)
    names = header[2:].split()
    states = []
    for line in lines[lines.index(header) + 1 :]:
        values = line.split()
        if not values:
            continue
        row = dict(zip(names, values, strict=False))
        states.append(
            ServerState(
                backend=row.get("be_name", ""),
                server=row.get("srv_name", ""),
                addr=row.get("srv_addr", ""),
                port=_int(row.get("srv_port")),
                fqdn=row.get("srv_fqdn", "-"),
                op_state=_int(row.get("srv_op_state")) or 0,
                admin_state=_int(row.get("srv_admin_state")) or 0,
                uweight=_int(row.get("srv_uweight")),
                iweight=_int(row.get("srv_iweight")),
            )
        )
    return states


# -- the client ------------------------------------------------------------------------------------------------


class RuntimeClient:
    """HAProxy's Runtime API at `address` (a URL for `parse_url`, or an Address), every call within `timeout`
    seconds. Holds no connection between calls: HAProxy closes each one after its answer."""

    def __init__(self, address: Address | str, timeout: float = 2.0) -> None:
        self.address: Address = parse_url(address) if isinstance(address, str) else address
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, not {timeout!r}")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"RuntimeClient({str(self.address)!r})"

    async def command(self, text: str) -> str:
        """Send one command and return HAProxy's whole answer, as it wrote it. The answer is not judged here."""
        if "\n" in text or "\r" in text or not text.strip():
            raise ValueError(f"one command on one line, not {text!r}")
        address = self.address
        writer: asyncio.StreamWriter | None = None
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.timeout):
                if isinstance(address, UnixAddress):
                    reader, writer = await asyncio.open_unix_connection(address.path)
                else:
                    reader, writer = await asyncio.open_connection(address.host, address.port)
                writer.write(text.encode() + b"\n")
                await writer.drain()
                size = 0
                while chunk := await reader.read(65536):
                    size += len(chunk)
                    if size > MAX_ANSWER:
                        raise RuntimeCommandError(
                            f"{address}: the answer to `{text}` passed {MAX_ANSWER} bytes"
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise RuntimeUnreachable(f"{address}: no answer to `{text}` within {self.timeout:g}s") from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise RuntimeUnreachable(f"{address}: unreachable ({reason})") from exc
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        return b"".join(chunks).decode("utf-8", errors="replace")

    async def _change(self, text: str, success: tuple[str, ...] = ("",)) -> str:
        """Send a command that changes state; HAProxy answers an empty line or one of `success`, anything else is
        its refusal."""
        answer = await self.command(text)
        if answer.strip() not in success:
            raise RuntimeCommandError(f"haproxy refused `{text}`: {_first_line(answer)}", answer)
        return answer.strip()

    # -- reading

    async def show_stat(self) -> list[StatRow]:
        return parse_stat(await self.command("show stat"))

    async def show_info(self) -> Info:
        return parse_info(await self.command("show info"))

    async def show_servers_state(self, backend: str | None = None) -> list[ServerState]:
        text = "show servers state" if backend is None else f"show servers state {_name('backend', backend)}"
        return parse_servers_state(await self.command(text))

    # -- changing (a `level admin` socket only; others answer "Permission denied")

    async def set_state(self, backend: str, server: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"not a server state: {state!r}; expected one of {', '.join(STATES)}")
        await self._change(f"set server {_target(backend, server)} state {state}")

    async def set_weight(self, backend: str, server: str, weight: int) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"a HAProxy weight is an integer 0-{MAX_WEIGHT}, not {weight!r}")
        await self._change(f"set server {_target(backend, server)} weight {weight}")

    async def enable_health(self, backend: str, server: str) -> None:
        await self._change(f"enable health {_target(backend, server)}")

    async def disable_health(self, backend: str, server: str) -> None:
        await self._change(f"disable health {_target(backend, server)}")

    async def add_server(self, backend: str, server: str, address: str, *, check: bool = False) -> None:
        """Add a server and make it ready. HAProxy adds it in maintenance with checks off; with `check`, its
        health check is configured and enabled before it is made ready. If a step after the add fails, the new
        server is deleted again (it is still in maintenance, so HAProxy lets it go) and the error raised.
        A server added at runtime does not survive a reload of HAProxy's config."""
        target = _target(backend, server)
        where = server_address(address)
        await self._change(
            f"add server {target} {where}" + (" check" if check else ""), ("New server registered.",)
        )
        try:
            if check:
                await self._change(f"enable health {target}")
            await self._change(f"set server {target} state ready")
        except RuntimeApiError:
            with contextlib.suppress(RuntimeApiError):
                await self._change(f"set server {target} state maint")
                await self._change(f"del server {target}", ("Server deleted.",))
            raise

    async def del_server(self, backend: str, server: str) -> None:
        """Delete a server. HAProxy refuses unless it is in maintenance with no sessions, queue or idle
        connections (its refusal is raised as RuntimeCommandError)."""
        await self._change(f"del server {_target(backend, server)}", ("Server deleted.",))
