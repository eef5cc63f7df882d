"""A real HAProxy (`haproxy -db`, a process of its own) in front of demo backends, with three stats sockets: a unix
one (mode 600, level admin), a TCP one on loopback (level admin) and a TCP one at level operator.

The module is skipped where no haproxy binary is found (`apt-get install -y haproxy`; .ci/run installs it).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lbtui.demo.backends import DemoBackend
from lbtui.haproxy.runtime import RuntimeApiError, RuntimeClient, TcpAddress, UnixAddress
from tests.conftest import DEADLINE

UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its NUL


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None
    )


def _unused_port() -> int:
    """A port free a moment ago. Another process may take it before HAProxy binds it: `HAProxy.start` then
    starts again on new ports (HAProxy says so on stderr and exits)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class HAProxy:
    """One HAProxy process: `backend app` holds `servers` (name -> demo backend), behind `frontend web`."""

    binary: str
    folder: Path
    servers: dict[str, DemoBackend]
    check: bool
    balance: str = "roundrobin"
    socket_path: Path = field(init=False)
    admin_port: int = 0
    operator_port: int = 0
    frontend_port: int = 0
    proc: asyncio.subprocess.Process | None = None
    short_folder: Path | None = None

    def __post_init__(self) -> None:
        self.socket_path = self.folder / "admin.sock"
        if len(str(self.socket_path)) > UNIX_PATH_MAX:  # a deep tmp_path: a short folder of our own instead
            self.short_folder = Path(tempfile.mkdtemp(prefix="lbtui-hx-"))
            self.socket_path = self.short_folder / "admin.sock"

    @property
    def stderr_path(self) -> Path:
        return self.folder / "haproxy.stderr"

    @property
    def unix(self) -> UnixAddress:
        return UnixAddress(str(self.socket_path))

    @property
    def tcp(self) -> TcpAddress:
        return TcpAddress("127.0.0.1", self.admin_port)

    @property
    def operator(self) -> TcpAddress:
        return TcpAddress("127.0.0.1", self.operator_port)

    def client(self, timeout: float = DEADLINE) -> RuntimeClient:
        return RuntimeClient(self.unix, timeout=timeout)

    def config(self) -> str:
        check = " check inter 100ms rise 1 fall 1" if self.check else ""
        servers = "".join(f"  server {name} {b.address}{check}\n" for name, b in self.servers.items())
        return (
            "global\n"
            f"  stats socket {self.socket_path} mode 600 level admin\n"
            f"  stats socket 127.0.0.1:{self.admin_port} level admin\n"
            f"  stats socket 127.0.0.1:{self.operator_port} level operator\n"
            "defaults\n"
            "  mode http\n"
            "  timeout connect 2s\n"
            "  timeout client 10s\n"
            "  timeout server 10s\n"
            "frontend web\n"
            f"  bind 127.0.0.1:{self.frontend_port}\n"
            "  default_backend app\n"
            "backend app\n"
            f"  balance {self.balance}\n"
            f"{servers}"
        )

    async def start(self) -> HAProxy:
        for _ in range(5):
            self.admin_port, self.operator_port, self.frontend_port = (_unused_port() for _ in range(3))
            seen = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
            if await self._run():
                return self
            if "cannot bind" not in self.stderr_path.read_text()[seen:]:
                break
        raise AssertionError(f"haproxy did not start:\n{self.stderr_path.read_text()}")

    async def restart(self) -> HAProxy:
        """Kill the process and start a new one with the same config (the same sockets and ports)."""
        await self.stop()
        if not await self._run():
            raise AssertionError(f"haproxy did not start again:\n{self.stderr_path.read_text()}")
        return self

    async def _run(self) -> bool:
        """Start the process on the current ports: True once it answers, False if it exited (its stderr, appended
        to the file, then says why)."""
        cfg = self.folder / "haproxy.cfg"
        cfg.write_text(self.config())
        with self.stderr_path.open("ab") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, "-db", "-f", str(cfg), stdout=asyncio.subprocess.DEVNULL, stderr=stderr
            )
        if await self._ready():
            return True
        await self.proc.wait()
        return False

    async def _ready(self) -> bool:
        """True once every stats socket answers `show info` (HAProxy binds every listener before it serves any);
        False if the process exited. (No probe of the frontend: a probe would be counted in its `req_tot`.)"""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                return False
            try:
                for address in (self.unix, self.tcp, self.operator):
                    await RuntimeClient(address, timeout=1.0).show_info()
                return True
            except RuntimeApiError:
                await asyncio.sleep(0.02)
        raise AssertionError(f"haproxy did not answer within {DEADLINE}s:\n{self.stderr_path.read_text()}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self.short_folder is not None:
            shutil.rmtree(self.short_folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def audit_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every HaproxyController of a test (and every `lbtui ctl` it runs) keeps its audit file under tmp_path,
    never in the real home."""
    folder = tmp_path / "audit"
    monkeypatch.setenv("LBTUI_HAPROXY_AUDIT_DIR", str(folder))
    return folder


@pytest.fixture
async def haproxy(
    tmp_path: Path, backends: Callable[..., Awaitable[DemoBackend]]
) -> AsyncIterator[Callable[..., Awaitable[HAProxy]]]:
    """`await haproxy(["a", "b"], check=False)`: a real HAProxy in front of new demo backends of those names
    (`check`: each server with a health check). Killed at teardown; its stderr is printed (pytest shows it for a
    failed test)."""
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("haproxy is not installed (`apt-get install -y haproxy`; .ci/run installs it)")
    started: list[HAProxy] = []

    async def start(names: list[str], *, check: bool = False, balance: str = "roundrobin") -> HAProxy:
        servers = {name: await backends(name) for name in names}
        folder = tmp_path / f"haproxy{len(started)}"
        folder.mkdir()
        instance = HAProxy(binary, folder, servers, check, balance)
        started.append(instance)
        return await instance.start()

    yield start
    for instance in started:
        await instance.stop()
        if instance.stderr_path.exists():
            print(f"haproxy stderr ({instance.folder}):\n{instance.stderr_path.read_text()}")
