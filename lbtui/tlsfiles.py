"""TLS files: the checks of a listener's certificate and key, and the server context made from them.

A leaf: it imports the standard library's ssl and nothing of lbtui, so that the config (which checks the files
while validating, as `lbtui check` and a reload must) and the proxy (which serves with the context) both use it
without importing each other.

Invariants:
- The context has modern defaults: TLS 1.2 at least, ECDHE (or DHE) with AEAD ciphers for TLS 1.2 (OpenSSL's
  TLS 1.3 suites as they are), no compression, the server's cipher order, no renegotiation, ALPN as asked
  (`http/1.1` on http listeners, none on tcp ones).
- Every problem with a file is a `TLSFileError` saying which file (`which`: "cert" or "key", the config key), what
  is wrong and how to fix it: missing, unreadable, not PEM, encrypted, or a key that does not match its
  certificate. Never a traceback. A key is never asked a passphrase for (OpenSSL would prompt on the terminal):
  an encrypted key is an error.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

# TLS 1.2 suites: forward secrecy and authenticated encryption only (Mozilla's "intermediate" profile).
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
HTTP_ALPN = ("http/1.1",)


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
