"""HTTP/1.1 pieces shared by both sides of the proxy: hop-by-hop headers, status lines, error replies.

Headers are never forwarded as raw bytes: the parser hands us names and values, and we serialise them again.
"""

from __future__ import annotations

import http
import os
import re

# RFC 9110 7.6.1 (and the ones RFC 2616 listed, which proxies still strip): meant for one connection only.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# The lengths of the header names a response can need us to look at (hop-by-hop and Content-Length).
SPECIAL_LENGTHS = frozenset({len(name) for name in HOP_BY_HOP} | {len(b"content-length")})

# Tokens in Connection that never make us drop a header: framing and routing headers are not the
# sender's to take away (dropping Content-Length would let a body be read as a request: smuggling).
NEVER_CONNECTION_NAMED = frozenset({b"close", b"upgrade", b"content-length", b"transfer-encoding", b"host"})

# Connection header values that name no other header (the usual ones): nothing more to strip.
PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})

# Request headers the proxy writes itself rather than passing on.
SET_BY_PROXY = frozenset({b"x-forwarded-proto", b"x-forwarded-host"})

# RFC 9112 3.2 / RFC 3986 3.2.2: Host = uri-host [ ":" port ]; uri-host an IP literal or a reg-name (or IPv4).
VALID_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
# A request line whose version is well formed (HTTP/digit.digit), to tell 505 from 400 when the parser refuses it.
WELL_FORMED_VERSION = re.compile(rb" HTTP/[0-9]\.[0-9]\r?\n")

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# Body framings, for both directions.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3

STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes = b"") -> bytes:
    """`HTTP/1.1 200 OK\\r\\n`, cached; an upstream's reason phrase is kept when it is printable."""
    key = (status, reason)
    line = STATUS_LINES.get(key)
    if line is None:
        if not reason or not all(0x20 <= c < 0x7F or c == 0x09 for c in reason):
            try:
                reason = http.HTTPStatus(status).phrase.encode()
            except ValueError:
                reason = b""
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(STATUS_LINES) < 4096:
            STATUS_LINES[key] = line
    return line


def connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def chunk_frame(data: bytes) -> list[bytes]:
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"


def error_response(
    status: int,
    detail: str = "",
    *,
    close: bool = False,
    head_only: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A small plain-text reply made by the proxy itself (503, 502, 504, 400...)."""
    phrase = http.HTTPStatus(status).phrase
    body = f"{status} {phrase}\n{detail}\n".encode() if detail else f"{status} {phrase}\n".encode()
    parts = [
        status_line(status),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Cache-Control: no-store\r\n",
    ]
    parts.extend(name + b": " + value + b"\r\n" for name, value in extra)
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


class RequestIds:
    """Request ids unique across processes and restarts: a random prefix and a counter."""

    def __init__(self) -> None:
        self.prefix = os.urandom(6).hex().encode() + b"-"
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        return b"%s%x" % (self.prefix, self.count)
