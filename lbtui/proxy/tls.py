"""TLS termination on a listener: the server context, and the handshake before the listener's own protocol.

Invariants:
- One context per listener, built from `tls = { cert, key }` with modern defaults (lbtui.tlsfiles says which),
  ALPN `http/1.1` on http listeners (none on tcp ones).
- The context comes from `lbtui.tlsfiles.load_server_context`, which `lbtui check` runs too (the config calls it
  while validating): a file that is missing, unreadable, not PEM, encrypted or a key that does not match its
  certificate is a config error naming the file and the key (`listeners[0].tls.key`), never a traceback at
  start.
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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# The certificate and key checks and the context live in the leaf lbtui.tlsfiles (the config uses them too); their
# names stay importable from here.
from lbtui.tlsfiles import CIPHERS_TLS12 as CIPHERS_TLS12
from lbtui.tlsfiles import HTTP_ALPN as HTTP_ALPN
from lbtui.tlsfiles import TLSFileError as TLSFileError
from lbtui.tlsfiles import check_readable as check_readable
from lbtui.tlsfiles import load_server_context as load_server_context

if TYPE_CHECKING:
    from lbtui.proxy.engine import Engine

log = logging.getLogger("lbtui")

# How long a closing TLS connection waits for the peer's close_notify before the socket is dropped.
SHUTDOWN_TIMEOUT = 5.0


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
