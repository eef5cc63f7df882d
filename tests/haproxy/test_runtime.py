"""lbtui.haproxy.runtime against real HAProxy processes (tests/haproxy/conftest.py): every command, its answer
read by name, HAProxy's refusals raised with its words, unreachable sockets and bad input."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from lbtui.haproxy.runtime import (
    RuntimeClient,
    RuntimeCommandError,
    RuntimeUnreachable,
    StatRow,
    TcpAddress,
    UnixAddress,
    parse_info,
    parse_stat,
    parse_url,
    server_address,
)
from tests.conftest import DEADLINE
from tests.haproxy.conftest import HAProxy


async def get(port: int, path: str = "/") -> tuple[int, bytes]:
    """One HTTP/1.1 request through HAProxy's frontend, the connection closed after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(DEADLINE):
            answer = await reader.read(-1)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def served_by(port: int) -> str:
    status, body = await get(port)
    assert status == 200, body
    backend: str = json.loads(body)["backend"]
    return backend


async def servers(client: RuntimeClient) -> dict[str, StatRow]:
    return {row.svname: row for row in await client.show_stat() if row.type == "server"}


async def wait_status(client: RuntimeClient, server: str, status: str) -> StatRow:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        row = (await servers(client)).get(server)
        if row is not None and row.status == status:
            return row
        if loop.time() > deadline:
            raise AssertionError(f"{server} not {status} within {DEADLINE}s: {row}")
        await asyncio.sleep(0.02)


# -- reading


async def test_show_info_names_the_process_on_every_socket(haproxy):
    hx: HAProxy = await haproxy(["a"])
    assert hx.proc is not None
    for address in (hx.unix, hx.tcp, hx.operator):
        info = await RuntimeClient(address).show_info()
        assert info.pid == hx.proc.pid
        assert info.name == "HAProxy"
        assert info.version.startswith(("2.", "3."))
        assert 0 <= info.uptime_sec < 3600
        assert info.start_time_sec is not None
        assert abs(info.start_time_sec - time.time()) < 3600
        assert info.fields["Pid"] == str(hx.proc.pid)
    assert hx.socket_path.stat().st_mode & 0o777 == 0o600  # the config's `mode 600`: the socket has no auth


async def test_the_tcp_admin_socket_changes_state(haproxy):
    hx: HAProxy = await haproxy(["a", "b"])
    await RuntimeClient(f"haproxy://127.0.0.1:{hx.admin_port}").set_state("app", "b", "maint")
    assert (await servers(hx.client()))["b"].status == "MAINT"


async def test_a_restart_is_noticed_and_its_counters_start_again(haproxy):
    hx: HAProxy = await haproxy(["a"])
    client = hx.client()
    for _ in range(3):
        await served_by(hx.frontend_port)
    before = await client.show_info()
    assert (await servers(client))["a"].stot == 3
    again = await client.show_info()
    assert not again.restarted_since(before)
    await hx.restart()
    after = await client.show_info()
    assert after.restarted_since(before)
    assert after.pid != before.pid
    assert (await servers(client))["a"].stot == 0  # what restarted_since warns of: counters from zero


async def test_show_stat_counts_the_traffic_sent_through_the_frontend(haproxy):
    hx: HAProxy = await haproxy(["a", "b"])
    client = hx.client()
    before = await servers(client)
    assert {name: (row.type, row.pxname, row.stot, row.scur, row.qcur) for name, row in before.items()} == {
        "a": ("server", "app", 0, 0, 0),
        "b": ("server", "app", 0, 0, 0),
    }
    assert before["a"].status == "no check"
    assert before["a"].weight == 1
    assert before["a"].addr == hx.servers["a"].address
    sent = 20
    for _ in range(sent):
        await served_by(hx.frontend_port)
    status, _ = await get(hx.frontend_port, "/status/503")
    assert status == 503
    rows = await client.show_stat()
    by_name = {(row.pxname, row.svname): row for row in rows}
    frontend, backend = by_name["web", "FRONTEND"], by_name["app", "BACKEND"]
    assert frontend.type == "frontend"
    assert backend.type == "backend"
    assert frontend.req_tot == sent + 1
    assert backend.hrsp_2xx == sent
    assert backend.hrsp_5xx == 1
    after = await servers(client)
    # Round robin over two equal servers: each took half of the 20, and the 21st (the 503) went to one of them.
    assert sorted(row.stot for row in after.values()) == [sent // 2, sent // 2 + 1]
    assert {name: row.stot for name, row in after.items()} == {n: b.requests for n, b in hx.servers.items()}
    assert sum(row.hrsp_5xx or 0 for row in after.values()) == 1
    assert all(row.rtime is not None and row.ttime is not None for row in after.values())


async def test_rtime_is_the_servers_latency_in_milliseconds(haproxy, backends):
    hx: HAProxy = await haproxy(["a"])
    slow = hx.servers["a"]
    slow.profile.latency = 0.05  # 50 ms for every answer from now on
    for _ in range(5):
        await served_by(hx.frontend_port)
    row = (await servers(hx.client()))["a"]
    assert row.rtime is not None
    assert row.ttime is not None
    # HAProxy's average over the last 1024 requests; here every one took about 50 ms (a generous upper bound).
    assert 40 <= row.rtime <= 1000, row
    assert row.rtime <= row.ttime


async def test_show_servers_state_reads_admin_states(haproxy):
    hx: HAProxy = await haproxy(["a", "b"])
    client = hx.client()
    await client.set_state("app", "a", "maint")
    await client.set_state("app", "b", "drain")
    states = {s.server: s for s in await client.show_servers_state("app")}
    assert set(states) == {"a", "b"}
    assert states["a"].in_maint
    assert not states["a"].draining
    assert states["b"].draining
    assert not states["b"].in_maint
    assert states["a"].backend == "app"
    assert states["a"].port == hx.servers["a"].port
    assert states["a"].addr == "127.0.0.1"
    assert states["a"].uweight == 1


def test_an_uptime_that_went_back_is_a_restart_even_with_the_same_pid():
    """A pid can be reused (a container's HAProxy is often pid 1 or 8 after every restart)."""
    before = parse_info("Name: HAProxy\nVersion: 2.6.12\nPid: 8\nUptime_sec: 500\n")
    assert parse_info("Name: HAProxy\nPid: 8\nUptime_sec: 501\n").restarted_since(before) is False
    assert parse_info("Name: HAProxy\nPid: 8\nUptime_sec: 3\n").restarted_since(before) is True
    with pytest.raises(RuntimeCommandError, match="haproxy refused `show info`: Permission denied"):
        parse_info("Permission denied\n\n")


def test_show_stat_is_read_by_column_name_not_position():
    """Columns in another order, one unknown to us and one of ours missing (as another HAProxy version may
    write them): each figure is still read from its own column."""
    answer = (
        "# svname,status,new_column,pxname,type,scur,stot,rtime,addr,\n"
        "s1,UP 1/3,zz,app,2,4,17,12,127.0.0.1:8080,\n"
        "BACKEND,UP,zz,app,1,4,17,,,\n"
        "x,?,zz,app,9,0,0,0,,\n"
        "\n"
    )
    server, backend = parse_stat(answer)
    assert (server.pxname, server.svname, server.type, server.status) == ("app", "s1", "server", "UP 1/3")
    assert (server.scur, server.stot, server.rtime, server.addr) == (4, 17, 12, "127.0.0.1:8080")
    assert server.qcur is None  # no such column in this answer
    assert backend.type == "backend"
    assert backend.rtime is None  # empty for this row


@pytest.mark.parametrize("answer", ["Permission denied\n\n", "", "pxname,svname\n"])
def test_an_answer_that_is_not_show_stat_is_raised(answer):
    with pytest.raises(RuntimeCommandError, match="show stat"):
        parse_stat(answer)


# -- changing


async def test_set_state_drain_maint_ready_is_seen_in_show_stat_and_in_traffic(haproxy):
    hx: HAProxy = await haproxy(["a", "b"], check=True)
    client = hx.client()
    await wait_status(client, "a", "UP")
    await wait_status(client, "b", "UP")
    await client.set_state("app", "a", "drain")
    await wait_status(client, "a", "DRAIN")
    assert {await served_by(hx.frontend_port) for _ in range(6)} == {"b"}
    await client.set_state("app", "a", "maint")
    await wait_status(client, "a", "MAINT")
    assert {await served_by(hx.frontend_port) for _ in range(6)} == {"b"}
    await client.set_state("app", "a", "ready")
    await wait_status(client, "a", "UP")
    assert {await served_by(hx.frontend_port) for _ in range(6)} == {"a", "b"}


async def test_a_failing_check_shows_haproxys_down_words(haproxy):
    hx: HAProxy = await haproxy(["a", "b"], check=True)
    client = hx.client()
    await wait_status(client, "a", "UP")
    await hx.servers["a"].stop()  # its port refuses: the layer-4 check fails
    row = await wait_status(client, "a", "DOWN")
    assert row.chkfail is not None
    assert row.chkfail >= 1
    assert row.check_status.startswith("L4")


async def test_set_weight(haproxy):
    hx: HAProxy = await haproxy(["a", "b"])
    client = hx.client()
    await client.set_weight("app", "a", 0)
    await client.set_weight("app", "b", 256)
    rows = await servers(client)
    assert (rows["a"].weight, rows["a"].uweight, rows["b"].uweight) == (0, 0, 256)
    assert {await served_by(hx.frontend_port) for _ in range(6)} == {"b"}
    await client.set_weight("app", "a", 256)
    assert {await served_by(hx.frontend_port) for _ in range(6)} == {"a", "b"}


async def test_add_server_makes_it_ready_and_traffic_reaches_it(haproxy, backends):
    hx: HAProxy = await haproxy(["a"])
    client = hx.client()
    c = await backends("c")
    await client.add_server("app", "c", c.address)
    row = (await servers(client))["c"]
    assert row.status == "no check"
    assert row.addr == c.address
    seen = {await served_by(hx.frontend_port) for _ in range(6)}
    assert seen == {"a", "c"}
    assert c.requests >= 1


async def test_add_server_with_a_check_enables_it(haproxy, backends):
    hx: HAProxy = await haproxy(["a"])
    client = hx.client()
    c = await backends("c")
    await client.add_server("app", "c", f"[::ffff:127.0.0.1]:{c.port}", check=True)
    await wait_status(client, "c", "UP")
    assert (await servers(client))["c"].check_status.startswith("L4OK")


async def test_add_server_refuses_a_name_taken(haproxy):
    hx: HAProxy = await haproxy(["a"])
    with pytest.raises(RuntimeCommandError, match="Already exists a server with the same name"):
        await hx.client().add_server("app", "a", "127.0.0.1:1")


async def test_del_server_only_in_maint(haproxy):
    hx: HAProxy = await haproxy(["a", "b"])
    client = hx.client()
    with pytest.raises(RuntimeCommandError, match="Only servers in maintenance mode can be deleted"):
        await client.del_server("app", "b")
    assert "b" in await servers(client)
    await client.set_state("app", "b", "maint")
    await client.del_server("app", "b")
    assert set(await servers(client)) == {"a"}
    assert {await served_by(hx.frontend_port) for _ in range(4)} == {"a"}


async def test_a_server_with_a_request_in_flight_is_not_deleted_and_its_scur_counts_down(haproxy):
    hx: HAProxy = await haproxy(["a", "b"])
    client = hx.client()
    in_flight = asyncio.create_task(get(hx.frontend_port, "/delay/1000"))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while not (busy := [name for name, row in (await servers(client)).items() if row.scur == 1]):
            assert loop.time() < deadline, "no server took the request"
            await asyncio.sleep(0.01)
        (name,) = busy
        await client.set_state("app", name, "maint")
        with pytest.raises(RuntimeCommandError) as refused:
            await client.del_server("app", name)
        assert str(refused.value) == (
            f"haproxy refused `del server app/{name}`: Server still has connections attached to it, cannot remove it."
        )
        assert (await servers(client))[name].scur == 1
        status, _ = await in_flight  # maintenance takes no session away: the request is answered
        assert status == 200
        await wait_scur_zero(client, name)
    finally:
        in_flight.cancel()


async def wait_scur_zero(client: RuntimeClient, name: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while (row := (await servers(client))[name]).scur or row.qcur:
        assert loop.time() < deadline, row
        await asyncio.sleep(0.01)


async def test_enable_health_where_no_check_is_configured_is_haproxys_refusal(haproxy):
    hx: HAProxy = await haproxy(["a"])
    with pytest.raises(RuntimeCommandError, match="Health check was not configured on this server"):
        await hx.client().enable_health("app", "a")


async def test_disable_and_enable_health(haproxy):
    hx: HAProxy = await haproxy(["a"], check=True)
    client = hx.client()
    await wait_status(client, "a", "UP")
    await client.disable_health("app", "a")
    assert (await servers(client))["a"].status == "no check"
    await client.enable_health("app", "a")
    await wait_status(client, "a", "UP")


# -- refusals, with HAProxy's words


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda c: c.set_state("nope", "a", "drain"), "No such backend."),
        (lambda c: c.set_state("app", "zz", "drain"), "No such server."),
        (lambda c: c.set_weight("app", "zz", 3), "No such server."),
        (lambda c: c.del_server("app", "zz"), "No such server."),
        (lambda c: c.add_server("nope", "x", "127.0.0.1:1"), "No such backend."),
        (lambda c: c.show_servers_state("nope"), "Can't find backend."),
    ],
)
async def test_unknown_names_raise_haproxys_words(haproxy, call, words):
    hx: HAProxy = await haproxy(["a"])
    with pytest.raises(RuntimeCommandError) as caught:
        await call(hx.client())
    assert words in str(caught.value)


async def test_an_operator_socket_may_read_but_not_change(haproxy):
    hx: HAProxy = await haproxy(["a"])
    operator = RuntimeClient(hx.operator)
    assert "a" in await servers(operator)
    with pytest.raises(RuntimeCommandError, match="Permission denied"):
        await operator.set_state("app", "a", "maint")
    assert (await servers(hx.client()))["a"].status == "no check"  # unchanged


async def test_an_unknown_command_is_answered_as_text(haproxy):
    hx: HAProxy = await haproxy(["a"])
    assert (await hx.client().command("no such thing")).startswith("Unknown command")


# -- unreachable


async def test_a_missing_unix_socket_is_unreachable(tmp_path):
    path = tmp_path / "none.sock"
    with pytest.raises(RuntimeUnreachable, match=str(path)):
        await RuntimeClient(UnixAddress(str(path))).show_info()


async def test_a_refused_port_is_unreachable(closed_port):
    port = closed_port()
    with pytest.raises(RuntimeUnreachable, match=f"127.0.0.1:{port}"):
        await RuntimeClient(f"haproxy://127.0.0.1:{port}").show_stat()


async def test_a_killed_haproxy_is_unreachable(haproxy):
    hx: HAProxy = await haproxy(["a"])
    client = hx.client()
    await client.show_info()
    await hx.stop()
    with pytest.raises(RuntimeUnreachable):
        await client.show_info()


async def test_a_silent_socket_is_unreachable_within_the_deadline():
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing, keeps the connection open

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = RuntimeClient(TcpAddress("127.0.0.1", port), timeout=0.3)
        started = time.monotonic()
        with pytest.raises(RuntimeUnreachable, match=r"no answer to `show info` within 0.3s"):
            await client.show_info()
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 5.0, elapsed  # the deadline, with a generous bound for a loaded machine
        assert len(accepted) == 1
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


# -- bad input, refused before anything is sent


@pytest.mark.parametrize(
    "url",
    [
        "",
        "haproxy://",
        "haproxy:///",
        "haproxy://relative/path.sock/x",
        "http://127.0.0.1:9999",
        "unix:///run/haproxy/admin.sock",
        "haproxy://127.0.0.1",
        "haproxy://127.0.0.1:0",
        "haproxy://127.0.0.1:65536",
        "haproxy://127.0.0.1:99x",
        "haproxy://::1:9999",
        "haproxy://[::1]",
        "haproxy://[nope]:9999",
        "haproxy://user@127.0.0.1:9999",
        "haproxy://127.0.0.1:9999/path",
        "haproxy://127.0.0.1:9999?x=1",
        "haproxy:///run/admin.sock#x",
        "haproxy://bad_host!:9999",
        "haproxy:/run/admin.sock",
        "haproxy://999.0.0.1:9999",
    ],
)
def test_bad_urls_are_refused_with_what_is_accepted(url):
    with pytest.raises(
        ValueError, match=r"expected haproxy:///absolute/path/to/admin.sock or haproxy://HOST:PORT"
    ):
        parse_url(url)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("haproxy:///run/haproxy/admin.sock", UnixAddress("/run/haproxy/admin.sock")),
        ("haproxy://127.0.0.1:9999", TcpAddress("127.0.0.1", 9999)),
        ("haproxy://[::1]:9999", TcpAddress("::1", 9999)),
        ("haproxy://localhost:1", TcpAddress("localhost", 1)),
    ],
)
def test_good_urls(url, address):
    assert parse_url(url) == address
    assert str(address) == url


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("[::1]:8080", "[::1]:8080"),
        ("[0:0:0:0:0:0:0:1]:80", "[::1]:80"),
        ("app-1.internal.example:443", "app-1.internal.example:443"),
    ],
)
def test_server_addresses_in_haproxys_form(given, sent):
    assert server_address(given) == sent


async def recording_server() -> tuple[asyncio.Server, list[str]]:
    """A TCP server that records each connection as it is accepted (none should be)."""
    received: list[str] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append("a connection")
        writer.close()

    return await asyncio.start_server(record, "127.0.0.1", 0), received


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.add_server("app", "x", "127.0.0.1"),
        lambda c: c.add_server("app", "x", "127.0.0.1:0"),
        lambda c: c.add_server("app", "x", "127.0.0.1:70000"),
        lambda c: c.add_server("app", "x", "::1:8080"),
        lambda c: c.add_server("app", "x", "[::1:8080"),
        lambda c: c.add_server("app", "x", "[nope]:8080"),
        lambda c: c.add_server("app", "x", "bad_host:8080"),
        lambda c: c.add_server("app", "x", "-host:8080"),
        lambda c: c.add_server("app", "x", ":8080"),
        lambda c: c.add_server("app", "x", "999.1.1.1:8080"),
        lambda c: c.add_server("app", "x", "10.0.1:8080"),
        lambda c: c.add_server("app", "x", "127.0.0.1:+80"),
        lambda c: c.add_server("app", "x y", "127.0.0.1:1"),
        lambda c: c.add_server("app;shutdown sessions", "x", "127.0.0.1:1"),
        lambda c: c.set_state("app", "a", "up"),
        lambda c: c.set_state("app", "a\nset server app/a state maint", "ready"),
        lambda c: c.set_weight("app", "a", 257),
        lambda c: c.set_weight("app", "a", -1),
        lambda c: c.set_weight("app", "a", True),
        lambda c: c.set_weight("app", "a", 1.5),
        lambda c: c.del_server("", "a"),
        lambda c: c.command("show info\nshow stat"),
        lambda c: c.command("  "),
    ],
)
async def test_bad_input_is_refused_before_anything_is_sent(call):
    server, received = await recording_server()
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ValueError, match=r"^(not a |a HAProxy weight is|one command on one line)"):
            await call(RuntimeClient(TcpAddress("127.0.0.1", port)))
        assert received == []
    finally:
        server.close()
        await server.wait_closed()


def test_a_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout"):
        RuntimeClient("haproxy:///run/admin.sock", timeout=0)
