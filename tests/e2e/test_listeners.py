"""Whole-process: `lbtui serve` (on uvloop where installed) with a TLS listener and a tcp listener."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
from pathlib import Path

import httpx
import trustme

from tests.conftest import wait_for
from tests.e2e.test_serve import lbtui, stop


async def read_listeners(proc, names: set[str], timeout: float = 15.0) -> dict[str, str]:
    """The URL of each listener, as `serve` prints them on stderr."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    found: dict[str, str] = {}
    assert proc.stderr is not None
    while loop.time() < deadline and set(found) != names:
        line = await loop.run_in_executor(None, proc.stderr.readline)
        if not line:
            break
        if line.startswith("lbtui: listener "):
            name, url = line.removeprefix("lbtui: listener ").strip().split(" on ", 1)
            found[name] = url
    assert set(found) == names, f"serve printed {found}"
    return found


async def test_serve_with_tls_and_tcp_listeners(tmp_path: Path, backends):
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    b1 = await backends("b1")
    config = tmp_path / "lbtui.toml"
    config.write_text(
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\ntls = { cert = "cert.pem", key = "key.pem" }\n'
        '[[listeners]]\nname = "db"\nbind = "127.0.0.1:0"\nmode = "tcp"\nservice = "app"\n'
        f'[services.app]\n[[services.app.backends]]\nname = "b1"\naddress = "{b1.address}"\n'
    )
    proc = lbtui("serve", "--config", str(config), "--grace", "2s")
    try:
        urls = await read_listeners(proc, {"web", "db"})
        assert urls["web"].startswith("https://")
        assert urls["db"].startswith("tcp://")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with httpx.AsyncClient(verify=context, timeout=10) as http:
            for _ in range(3):
                r = await http.get(urls["web"] + "/echo")
                assert r.status_code == 200
                headers = {k.lower(): v for k, v in r.json()["headers"]}
                assert headers["x-forwarded-proto"] == "https"
        host, port = urls["db"].removeprefix("tcp://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /echo HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(10):
            raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        seen = {k.lower() for k, _ in json.loads(body)["headers"]}
        assert "x-forwarded-proto" not in seen  # layer 4: the bytes pass untouched
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: proc.poll() is not None, timeout=10, what="serve to exit")
        assert proc.returncode == 0
    finally:
        stop(proc)
