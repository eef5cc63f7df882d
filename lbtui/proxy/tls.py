"""TLS termination on a listener: the server context, and the handshake before the listener's own protocol.

Invariants:
- One context per listener, built from `tls = { cert, key }` with modern defaults: TLS 1.2 at least, ECDHE
  (or DHE) with AEAD ciphers for TLS 1.2 (OpenSSL's TLS 1.3 suites as they are), no compression, the server's
  cipher order, no renegotiation, ALPN `http/1.1` on http listeners (none on tcp ones).
- `load_server_context` is what `lbtui check` runs too (config.py calls it while validating): a file that is
  missing, unreadable, not PEM, encrypted or a key that does not match its certificate is a config error
  naming the file and the key (`listeners[0].tls.key`), never a traceback at start. A key is never asked a
  passphrase for (OpenSSL would prompt on the terminal): an encrypted key is an error.
- The handshake runs before the listener's protocol sees the connection. The listener accepts plain TCP;
  `TLSAccept` pauses reading and upgrades with `loop.start_tls`, and only a finished handshake reaches the
  listener's protocol (`connection_made` with the TLS transport). asyncio's own `create_server(ssl=...)` says
  nothing to the protocol about a failed handshake; this way every failure (plain HTTP sent to a TLS port, a
  bad ClientHello, a version below 1.2, no shared cipher, a client that stalls past [limits] header_timeout)
  closes the socket, adds one to `Engine.tls_handshake_failures` and logs nothing.
- No byte is lost or reordered on the way: bytes read before start_tls took the socket (uvloop starts reading
  right after `connection_made`, so the ClientHello can arrive there) go to the TLS protocol first; bytes
  decrypted after the handshake but before the handover (a request sent with the client's Finished) go to
  the listener's protocol right after its `connection_made`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lbtui.proxy.engine import Engine

log = logging.getLogger("lbtui")

# TLS 1.2 suites: forward secrecy and authenticated encryption only (Mozilla's "intermediate" profile).
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
HTTP_ALPN = ("http/1.1",)
# How long a closing TLS connection waits for the peer's close_notify before the socket is dropped.
SHUTDOWN_TIMEOUT = 5.0


class TLSFileError(ValueError):
    """A certificate or key that cannot serve: `which` is "cert" or "key" (the config key), then what is wrong."""

    def __init__(self, which: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"tls.{which}: {message}" + (f"; {hint}" if hint else ""))
        self.which = which
        self.message = message
        self.hint = hint


class _Encrypted(Exception):
    """Raised from the passphrase callback: the key is encrypted and no passphrase is ever given."""


def _no_passphrase() -> bytes:
    raise _Encrypted


def _read_problem(which: str, path: str, error: OSError) -> TLSFileError:
    if isinstance(error, FileNotFoundError):
        return TLSFileError(
            which, f"file not found: {path}", "a relative path starts at the config file's folder"
        )
    if isinstance(error, IsADirectoryError):
        return TLSFileError(which, f"{path} is a directory, not a file")
    if isinstance(error, PermissionError):
        return TLSFileError(
            which, f"permission denied reading {path}", "lbtui's user must be able to read it"
        )
    return TLSFileError(which, f"cannot read {path}: {error.strerror or error}")


def check_readable(which: str, path: str) -> None:
    """Raise TLSFileError unless `path` is a file lbtui can read (`which`: "cert" or "key")."""
    if not path:
        raise TLSFileError(which, "no file given")
    try:
        with open(path, "rb") as stream:
            stream.read(1)
    except OSError as error:
        raise _read_problem(which, path, error) from None
    except ValueError:  # a NUL in the path
        raise TLSFileError(which, f"not a usable file name: {path!r}") from None


def load_server_context(cert: str, key: str, alpn: Sequence[str] = HTTP_ALPN) -> ssl.SSLContext:
    """A server context for the certificate chain in `cert` (PEM, leaf first) and the private key in `key`.

    Raises TLSFileError saying which file is wrong and how.
    """
    check_readable("cert", cert)
    check_readable("key", key)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # Parses every certificate in the file and nothing else: tells a bad cert file from a bad key file.
        probe.load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError, ValueError):
        raise TLSFileError(
            "cert", f"{cert} holds no PEM certificate", "expected -----BEGIN CERTIFICATE----- blocks"
        ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_SINGLE_ECDH_USE
    )
    context.set_ciphers(CIPHERS_TLS12)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise TLSFileError(
            "key",
            f"the private key in {key} is encrypted",
            "lbtui reads unencrypted keys: `openssl pkey -in KEY -out PLAIN`, readable by lbtui's user only",
        ) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TLSFileError(
                "key",
                f"the key in {key} does not match the certificate in {cert}",
                "use the key the cert was made for",
            ) from None
        raise TLSFileError(
            "key", f"{key} holds no usable PEM private key", "expected a -----BEGIN PRIVATE KEY----- block"
        ) from None
    except OSError as error:  # the file went away between the two reads
        raise _read_problem("key", key, error) from None
    return context


class TLSAccept(asyncio.Protocol):
    """One accepted connection until its TLS handshake is done; then `make_protocol()` takes it over."""

    __slots__ = ("context", "early", "engine", "lost", "make_protocol", "timeout", "transport")

    def __init__(
        self,
        engine: Engine,
        context: ssl.SSLContext,
        make_protocol: Callable[[], asyncio.Protocol],
        timeout: float,
    ) -> None:
        self.engine = engine
        self.context = context
        self.make_protocol = make_protocol
        self.timeout = timeout
        self.transport: asyncio.BaseTransport | None = None
        self.early: list[bytes] = []  # bytes read before start_tls took the transport (the ClientHello)
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        # asyncio honours a pause here; uvloop starts reading after connection_made whatever we do, so the
        # ClientHello may arrive in data_received below instead.
        transport.pause_reading()  # type: ignore[attr-defined]
        engine = self.engine
        task = engine.loop.create_task(self._handshake(transport))
        engine.handshakes.add(task)
        task.add_done_callback(engine.handshakes.discard)

    def data_received(self, data: bytes) -> None:
        self.early.append(data)
        if self.transport is not None:
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    async def _handshake(self, transport: asyncio.BaseTransport) -> None:
        engine = self.engine
        loop = engine.loop
        if self.lost or transport.is_closing():
            engine.tls_handshake_failures += 1
            return
        handover = _Handover()
        upgrade = loop.create_task(
            loop.start_tls(
                transport,  # type: ignore[arg-type]  # uvloop's transports are not asyncio.Transport subclasses
                handover,
                self.context,
                server_side=True,
                ssl_handshake_timeout=self.timeout,
                ssl_shutdown_timeout=SHUTDOWN_TIMEOUT,
            )
        )
        try:
            # start_tls puts its TLS protocol on the transport in its first step (the next callback of the
            # loop) and reads again one iteration later. Bytes that reached this protocol until then go to
            # the TLS protocol first, in order.
            for _ in range(3):
                await asyncio.sleep(0)
                if transport.get_protocol() is not self or upgrade.done():
                    break
            protocol = transport.get_protocol()
            if self.early and protocol is not self and not upgrade.done():
                _feed(protocol, b"".join(self.early))
            self.early = []
            tls = await upgrade
        except asyncio.CancelledError:
            upgrade.cancel()
            transport.close()
            raise
        except Exception as error:  # SSLError, a reset, the handshake timeout: the client's problem, not ours
            engine.tls_handshake_failures += 1
            transport.close()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("TLS handshake failed: %s", describe(error))
            return
        if tls is None or handover.lost or tls.is_closing():
            return
        protocol = self.make_protocol()
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        buffered, handover.buffered = handover.buffered, []
        for data in buffered:
            if tls.is_closing():
                break
            protocol.data_received(data)
        if handover.eof and not tls.is_closing():
            protocol.eof_received()


class _Handover(asyncio.Protocol):
    """The TLS transport's protocol from the end of the handshake until the listener's protocol takes over:
    keeps what arrives meanwhile (a request sent along with the client's Finished)."""

    __slots__ = ("buffered", "eof", "lost")

    def __init__(self) -> None:
        self.buffered: list[bytes] = []
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.buffered.append(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _feed(protocol: Any, data: bytes) -> None:
    """Give bytes a transport has read to `protocol`, as the transport would (TLS protocols are buffered)."""
    if hasattr(protocol, "get_buffer"):
        view = memoryview(data)
        while view:
            buffer = protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    else:
        protocol.data_received(data)


def describe(error: BaseException) -> str:
    """A handshake failure in a few words, for a debug log line."""
    if isinstance(error, ssl.SSLError):
        return error.reason or error.__class__.__name__
    if isinstance(error, OSError) and error.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection reset by the client"
    return str(error) or error.__class__.__name__
