"""TLS termination on a listener, over real sockets on loopback, with certificates from a throwaway CA (trustme)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from lbtui.cli import main as cli_main
from lbtui.config import Config, ConfigError, parse_config
from lbtui.proxy.tls import load_server_context
from tests.conftest import RawClient, wait_for


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pem(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """A certificate for localhost and 127.0.0.1 with its key, and a second key that does not match it."""
    issued = ca.issue_cert("localhost", "127.0.0.1")
    other = ca.issue_cert("other.test")
    files = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "other_key": tmp_path / "other.pem"}
    issued.cert_chain_pems[0].write_to_path(str(files["cert"]))
    issued.private_key_pem.write_to_path(str(files["key"]))
    other.private_key_pem.write_to_path(str(files["other_key"]))
    return {name: str(path) for name, path in files.items()}


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def tls_config(pem: dict[str, str], backend: str, **limits: Any) -> Config:
    data: dict[str, Any] = {
        "listeners": [
            {"name": "web", "bind": "127.0.0.1:0", "tls": {"cert": pem["cert"], "key": pem["key"]}}
        ],
        "services": {"app": {"backends": [{"name": "b1", "address": backend}]}},
    }
    if limits:
        data["limits"] = limits
    return parse_config(data, source="<test>")


async def tls_client(address: tuple[str, int], context: ssl.SSLContext) -> RawClient:
    reader, writer = await asyncio.open_connection(*address, ssl=context, server_hostname="localhost")
    return RawClient(reader, writer)


def echoed(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


async def test_get_over_tls_with_httpx(backends, engine_factory, pem, client_context):
    b1 = await backends("b1")
    engine = await engine_factory(tls_config(pem, b1.address))
    assert engine.url().startswith("https://")
    async with httpx.AsyncClient(verify=client_context) as client:
        r = await client.get(engine.url() + "/echo")
    assert r.status_code == 200
    assert r.json()["backend"] == "b1"
    assert r.http_version == "HTTP/1.1"


async def test_keep_alive_over_tls_and_forwarded_proto(backends, engine_factory, pem, client_context):
    b1 = await backends("b1")
    engine = await engine_factory(tls_config(pem, b1.address))
    client = await tls_client(engine.address(), client_context)
    try:
        ssl_object = client.writer.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() in (None, "http/1.1")
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        for _ in range(3):
            r = await client.request("GET", "/echo", {"X-Forwarded-Proto": "http"})
            assert r.status == 200
            seen = echoed(r.body)
            assert seen["x-forwarded-proto"] == "https"  # set by the proxy, the client's value dropped
            assert seen["x-forwarded-for"] == "127.0.0.1"
        assert not client.closed
        assert len(engine.connections) == 1  # three requests, one TLS connection
        assert b1.accepted == 1  # and one upstream connection, reused
    finally:
        await client.close()


async def test_alpn_offers_http11_only(backends, engine_factory, pem, client_context):
    b1 = await backends("b1")
    engine = await engine_factory(tls_config(pem, b1.address))
    client_context.set_alpn_protocols(["h2", "http/1.1"])
    client = await tls_client(engine.address(), client_context)
    try:
        assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        assert (await client.request("GET", "/")).status == 200
    finally:
        await client.close()


async def test_plain_http_to_a_tls_port_is_closed_and_counted(
    backends, engine_factory, raw_client, pem, client_context, caplog
):
    caplog.set_level(logging.DEBUG)
    b1 = await backends("b1")
    engine = await engine_factory(tls_config(pem, b1.address))
    plain = await raw_client(engine.address())
    await plain.send(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n")
    got = b""
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectionError):
            while chunk := await plain.reader.read(65536):
                got += chunk
    assert not got.startswith(b"HTTP/")  # no answer in plain text; the socket is closed
    await wait_for(lambda: engine.tls_handshake_failures == 1, what="the failed handshake to be counted")
    assert not engine.connections
    assert b1.accepted == 0  # nothing reached the backend
    # The next TLS client is served as usual.
    client = await tls_client(engine.address(), client_context)
    try:
        assert (await client.request("GET", "/echo")).status == 200
    finally:
        await client.close()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert noisy == []


async def test_garbage_client_hello_is_closed_and_counted(backends, engine_factory, raw_client, pem):
    b1 = await backends("b1")
    engine = await engine_factory(tls_config(pem, b1.address))
    client = await raw_client(engine.address())
    # A TLS record header for a handshake of 5 bytes, then bytes that are no ClientHello.
    await client.send(b"\x16\x03\x01\x00\x05\x01\xff\xff\xff\xff")
    assert await client.is_closed(timeout=5)
    await wait_for(lambda: engine.tls_handshake_failures == 1, what="the failed handshake to be counted")


async def test_a_stalled_handshake_is_cut_at_header_timeout(backends, engine_factory, raw_client, pem):
    b1 = await backends("b1")
    engine = await engine_factory(tls_config(pem, b1.address, header_timeout="200ms"))
    client = await raw_client(engine.address())  # connects, then says nothing
    assert await client.is_closed(timeout=5)
    await wait_for(lambda: engine.tls_handshake_failures == 1, what="the timed-out handshake to be counted")


def tls11_client(ca: trustme.CA) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: that is the point
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 would not offer TLS 1.1 otherwise
    ca.configure_trust(context)
    return context


async def test_tls_1_1_is_refused(backends, engine_factory, ca, pem):
    client_context = tls11_client(ca)
    # Control: the same client completes a TLS 1.1 handshake with a server that allows it, so the refusal
    # below comes from lbtui's server, not from the client failing to offer TLS 1.1 at all.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
        permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.load_cert_chain(pem["cert"], pem["key"])
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=permissive)
    try:
        _, writer = await asyncio.open_connection(
            *server.sockets[0].getsockname()[:2], ssl=client_context, server_hostname="localhost"
        )
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()

    b1 = await backends("b1")
    engine = await engine_factory(tls_config(pem, b1.address))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection(*engine.address(), ssl=client_context, server_hostname="localhost")
    await wait_for(lambda: engine.tls_handshake_failures == 1, what="the refused handshake to be counted")
    assert b1.accepted == 0


def test_server_context_defaults(pem):
    context = load_server_context(pem["cert"], pem["key"])
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c["aead"] and c["kea"] in ("kx-ecdhe", "kx-dhe") for c in tls12)


# -- config errors: at load time, with the key path and the file -------------------------------------------


def tls_problems(cert: str, key: str, base_dir: str | None = None) -> list[tuple[str, str]]:
    data = {
        "listeners": [{"bind": "127.0.0.1:0", "tls": {"cert": cert, "key": key}}],
        "services": {"app": {"backends": [{"name": "b1", "address": "127.0.0.1:9"}]}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="lbtui.toml", base_dir=base_dir)
    return [(issue.key_path, issue.message) for issue in caught.value.issues]


def test_missing_cert_is_a_config_error_with_the_key_path(pem, tmp_path):
    missing = str(tmp_path / "nope.pem")
    assert tls_problems(missing, pem["key"]) == [("listeners[0].tls.cert", f"file not found: {missing}")]


def test_both_missing_files_are_reported_at_once(tmp_path):
    cert, key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    assert tls_problems(cert, key) == [
        ("listeners[0].tls.cert", f"file not found: {cert}"),
        ("listeners[0].tls.key", f"file not found: {key}"),
    ]


def test_relative_paths_start_at_the_config_folder(pem, tmp_path):
    parse_config(
        {
            "listeners": [{"bind": "127.0.0.1:0", "tls": {"cert": "cert.pem", "key": "key.pem"}}],
            "services": {"app": {"backends": [{"name": "b1", "address": "127.0.0.1:9"}]}},
        },
        base_dir=tmp_path,
    )
    missing = tmp_path / "sub" / "k.pem"
    assert tls_problems("cert.pem", "sub/k.pem", base_dir=str(tmp_path)) == [
        ("listeners[0].tls.key", f"file not found: {missing}")
    ]


def test_mismatched_key_is_a_config_error(pem):
    [(key_path, message)] = tls_problems(pem["cert"], pem["other_key"])
    assert key_path == "listeners[0].tls.key"
    assert message == f"the key in {pem['other_key']} does not match the certificate in {pem['cert']}"


def test_swapped_or_garbage_files_are_config_errors(pem, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert tls_problems(pem["key"], pem["cert"]) == [
        ("listeners[0].tls.cert", f"{pem['key']} holds no PEM certificate")
    ]
    assert tls_problems(pem["cert"], str(garbage)) == [
        ("listeners[0].tls.key", f"{garbage} holds no usable PEM private key")
    ]
    assert tls_problems(str(tmp_path), pem["key"]) == [
        ("listeners[0].tls.cert", f"{tmp_path} is a directory, not a file")
    ]


def test_encrypted_key_is_a_config_error_and_never_prompts(pem, tmp_path):
    from cryptography.hazmat.primitives import serialization  # trustme depends on cryptography

    key = serialization.load_pem_private_key(Path(pem["key"]).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert tls_problems(pem["cert"], str(encrypted)) == [
        ("listeners[0].tls.key", f"the private key in {encrypted} is encrypted")
    ]


def test_lbtui_check_reports_a_bad_cert_without_a_traceback(pem, tmp_path, capsys):
    config = tmp_path / "lbtui.toml"
    config.write_text(
        '[[listeners]]\nbind = "127.0.0.1:8443"\ntls = { cert = "missing.pem", key = "key.pem" }\n'
        '[services.a]\n[[services.a.backends]]\nname = "a"\naddress = "127.0.0.1:9"\n'
    )
    assert cli_main(["check", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config}: listeners[0].tls.cert: file not found: {tmp_path / 'missing.pem'}" in err
    assert "Traceback" not in err
    (tmp_path / "missing.pem").write_bytes(Path(pem["cert"]).read_bytes())
    (tmp_path / "key.pem").write_bytes(Path(pem["key"]).read_bytes())
    assert cli_main(["check", str(config)]) == 0
