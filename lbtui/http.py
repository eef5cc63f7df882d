"""HTTP/1.1 pieces shared by the proxy, the gateway and the admin API: hop-by-hop headers, status lines, error
replies, targets and hosts in normal form, X-Forwarded-*, networks.

A leaf: it imports nothing of lbtui, so every layer may use it. Headers are never forwarded as raw bytes: the
parser hands us names and values, and we serialise them again.
"""

from __future__ import annotations

import http
import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from typing import Final

# RFC 9110 7.6.1 (and the ones RFC 2616 listed, which proxies still strip): meant for one connection only.
HOP_BY_HOP: Final = frozenset(
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
SPECIAL_LENGTHS: Final = frozenset({len(name) for name in HOP_BY_HOP} | {len(b"content-length")})

# Tokens in Connection that never make us drop a header: framing and routing headers are not the
# sender's to take away (dropping Content-Length would let a body be read as a request: smuggling).
NEVER_CONNECTION_NAMED: Final = frozenset(
    {b"close", b"upgrade", b"content-length", b"transfer-encoding", b"host"}
)

# Connection header values that name no other header (the usual ones): nothing more to strip.
PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b"upgrade"})

# Request headers the proxy writes itself rather than passing on (HTTP2-Settings only with an h2c upgrade that a
# route allows: it belongs to the connection the client asked to upgrade).
SET_BY_PROXY: Final = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-consumer", b"http2-settings"})

# A Host already in the form normal_host gives it (the usual case, checked with one match): a lower-case DNS name
# or IPv4 address and an optional port of at most four digits, not starting with 0 (five digits may pass 65535:
# those take the slow path, whose answers are kept).
NORMAL_HOST: Final = re.compile(rb"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*(?::[1-9][0-9]{0,3})?")
# A host name once its %-escapes are decoded: dot-separated labels of letters, digits, `-` and `_` (as DNS
# resolvers and virtual hosts read names; `_` for the service names some use). IPv4 addresses are such names.
HOST_NAME: Final = re.compile(rb"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_HOSTS_SEEN: dict[bytes, bytes | None] = {}
# The bytes a request target may hold: visible ASCII but the ones RFC 3986 leaves out (`"<>\\^`{|}`), which HAProxy
# refuses too unless told otherwise. (The parser refuses controls, space and bytes past 0x7E itself; `#`, a
# fragment, is refused with its own reason.)
TARGET_BYTES: Final = bytes(c for c in range(0x21, 0x7F) if c not in b'"<>\\^`{|}')
# A request line whose version is well formed (HTTP/digit.digit), to tell 505 from 400 when the parser refuses it.
WELL_FORMED_VERSION: Final = re.compile(rb" HTTP/[0-9]\.[0-9]\r?\n")

# RFC 3986 2.3: characters whose percent-encoding means the same as the character itself.
UNRESERVED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX: Final = frozenset(b"0123456789ABCDEFabcdef")

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# Body framings, for both directions.
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3

STATUS_LINES: Final[dict[tuple[int, bytes], bytes]] = {}


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


def normalize_target(url: bytes) -> bytes | None:
    """The request target with its path normalised (RFC 3986 6.2.2), or None if its %-encoding is broken.

    Percent-encoded unreserved characters are decoded (`%2e` is `.`, `%41` is `A`), other escapes are kept
    with upper-case hex; `//` becomes `/`; `.` and `..` segments are removed (`..` never climbs above `/`).
    An encoded slash (`%2F`) or backslash stays encoded: it is part of a segment, never a separator, for
    routing and for the backend alike. The query is left as it is. Routing, policies, hashing and the
    request sent upstream all use the result, so they cannot disagree about which path was asked for.
    """
    path, question, query = url.partition(b"?")
    if b"%" in path:
        out = bytearray()
        i = 0
        n = len(path)
        while i < n:
            c = path[i]
            if c != 0x25:  # %
                out.append(c)
                i += 1
                continue
            if i + 3 > n:
                return None
            h1, h2 = path[i + 1], path[i + 2]
            if h1 not in _HEX or h2 not in _HEX:
                return None
            byte = int(path[i + 1 : i + 3], 16)
            if byte in UNRESERVED:
                out.append(byte)
            else:
                out += b"%" + path[i + 1 : i + 3].upper()
            i += 3
        path = bytes(out)
    while b"//" in path:
        path = path.replace(b"//", b"/")
    if b"/." in path:
        segments = path.split(b"/")[1:]
        kept: list[bytes] = []
        last = len(segments) - 1
        for index, segment in enumerate(segments):
            if segment == b".":
                pass
            elif segment == b"..":
                if kept:
                    kept.pop()
            else:
                kept.append(segment)
                continue
            if index == last:
                kept.append(b"")  # "/a/." and "/a/b/.." end in a slash: "/a/"
        path = b"/" + b"/".join(kept)
    return path + question + query


def escaped_slash(url: bytes) -> bool:
    """Whether the path of a normalised target (normalize_target: escapes in upper case) has an encoded slash
    or backslash (`%2F`, `%5C`), which servers behind a proxy may read as a separator."""
    end = url.find(b"?")
    path = url if end < 0 else url[:end]
    return path.find(b"%2F") >= 0 or path.find(b"%5C") >= 0


def unescape_slashes(url: bytes) -> bytes:
    """A normalised target with `%2F` and `%5C` in its path made `/` (a backslash is a separator to WHATWG URL
    parsers, IIS and Windows), normalised again: `/a%2F..%2Fb` is `/b`. The query is left as it is."""
    path, question, query = url.partition(b"?")
    path = path.replace(b"%2F", b"/").replace(b"%5C", b"/")
    normal = normalize_target(path)
    assert normal is not None  # its escapes were checked by the first normalize_target
    return normal + question + query


def upgrade_offer(value: bytes, allowed: frozenset[bytes]) -> bytes:
    """The protocols of a request's Upgrade field (`websocket`, `h2c`, `foo/2`) whose names are in `allowed`
    (lower case), as the value to send on; b"" when there are none."""
    kept = []
    for token in value.split(b","):
        token = token.strip()
        if token and token.partition(b"/")[0].lower() in allowed:
            kept.append(token)
    return b", ".join(kept)


def protocol_names(value: bytes) -> set[bytes]:
    """The lower-case protocol names of an Upgrade field's value (`WebSocket, foo/2` gives websocket and foo)."""
    return {t.strip().partition(b"/")[0].lower() for t in value.split(b",") if t.strip()}


_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def forwarded_element(peer: bytes, proto: bytes, host: bytes | None) -> bytes:
    """lbtui's own element of an RFC 7239 Forwarded field: `for=` the peer, `host=` the request's Host (as
    normal_host wrote it), `proto=`; an IPv6 address in brackets and quotes (7239 section 6)."""
    element = b'for="[' + peer + b']"' if peer.find(b":") >= 0 else b"for=" + (peer or b"unknown")
    if host:
        element += b";host=" + host if _TOKEN.fullmatch(host) else b';host="' + host + b'"'
    return element + b";proto=" + proto


def normal_host(value: bytes) -> bytes | None:
    """A Host field (or an absolute-form target's authority) as lbtui routes by it and forwards it, or None
    when it is not one host (RFC 9110 7.2: `uri-host [ ":" port ]`, answered 400).

    - The name is lower case, its %-escapes decoded (RFC 3986 6.2.2: `admin%2Eexample` is `admin.example`), and
      one trailing dot removed (`admin.example.` is the same name to a resolver); what is left must be
      dot-separated labels of letters, digits, `-` and `_`: `a,b`, `a;x`, `a..b`, `%00` or a non-ASCII name
      are not one host, though RFC 3986's reg-name allows their characters.
    - An IP literal (`[::1]`) must be an IPv6 address, and is written in its compressed form.
    - The port is digits, 1 to 65535, written without leading zeros; an empty one (`host:`) is dropped
      (RFC 3986 6.2.3).
    - An empty value stays empty (RFC 9112 3.2: a request whose target has no authority sends `Host:`).
    """
    if NORMAL_HOST.fullmatch(value) is not None:
        return value
    known = _HOSTS_SEEN.get(value, b"?")
    if known != b"?":
        return known
    normal = _normal_host(value)
    if len(_HOSTS_SEEN) < 4096:
        _HOSTS_SEEN[value] = normal
    return normal


def _normal_host(value: bytes) -> bytes | None:
    if not value:
        return value
    if value.startswith(b"["):
        end = value.find(b"]")
        if end < 0:
            return None
        try:
            address = ipaddress.IPv6Address(value[1:end].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return None  # not IPv6 (IPvFuture, a zone id, junk)
        host, rest = b"[" + address.compressed.encode() + b"]", value[end + 1 :]
        if rest and not rest.startswith(b":"):
            return None
        port = rest[1:]
        colon = bool(rest)
    else:
        host, colon_text, port = value.partition(b":")
        colon = bool(colon_text)
        if host.find(b"%") >= 0:
            decoded = unquote_bytes(host)
            if decoded is None:
                return None
            host = decoded
        host = host.lower()
        if host.endswith(b"."):
            host = host[:-1]
        if HOST_NAME.fullmatch(host) is None or len(host) > 253:
            return None
    if not colon or not port:
        return host
    if not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536:
        return None
    return b"%s:%d" % (host, int(port))


def unquote_bytes(text: bytes) -> bytes | None:
    """`text` with every %-escape decoded, or None when a `%` does not start two hex digits."""
    parts = text.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            return None
        out.append(int(part[:2], 16))
        out += part[2:]
    return bytes(out)


def without_fields(parts: list[bytes], names: frozenset[bytes] | set[bytes], first: int = 1) -> list[bytes]:
    """A head kept as parts (what is before `first`, e.g. a status line, then name, ": ", value, CRLF for each
    field) without the fields whose lower-case name is in `names` (`parts` itself when it has none of them)."""
    for i in range(first, len(parts), 4):
        if parts[i].lower() in names:
            break
    else:
        return parts  # nothing to drop (the usual case): the same list
    out = parts[:first]
    for i in range(first, len(parts), 4):
        if parts[i].lower() not in names:
            out += parts[i : i + 4]
    return out


def field_value(fields: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first field called `name` (lower case), or None."""
    for n, v in fields:
        if n.lower() == name:
            return v
    return None


def x_forwarded(peer: bytes, forwarded_for: bytes | None, tls: bool, host: bytes | None) -> bytes:
    """X-Forwarded-For (the chain a trusted proxy sent, `forwarded_for`, then the peer), X-Forwarded-Proto and,
    when the request had a Host, X-Forwarded-Host, as lbtui writes them for a backend: the fields joined by
    CRLF, with none at either end."""
    fields = b"X-Forwarded-For: " + (peer if forwarded_for is None else forwarded_for + b", " + peer)
    fields += b"\r\nX-Forwarded-Proto: https" if tls else b"\r\nX-Forwarded-Proto: http"
    if host is not None:
        fields += b"\r\nX-Forwarded-Host: " + host
    return fields


def no_delay(transport: object) -> None:
    """TCP_NODELAY on a transport's socket, where it has one: small writes go out at once."""
    sock = transport.get_extra_info("socket")  # type: ignore[attr-defined]
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def chunk_frame(data: bytes) -> list[bytes]:
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK: Final = b"0\r\n\r\n"


def compose_response(
    status: int,
    body: bytes,
    content_type: bytes | None,
    fields: list[bytes],
    close: bool = False,
    head_only: bool = False,
) -> bytes:
    """A whole response made here (the proxy's own answers, the admin API's): the status line, Content-Type
    and Content-Length (none when `content_type` is None: a 204), never cached, then `fields` (whole header
    lines), `Connection: close` when the connection ends after it, and the body unless the request was HEAD."""
    parts = [status_line(status)]
    if content_type is not None:
        parts.append(b"Content-Type: " + content_type + b"\r\nContent-Length: %d\r\n" % len(body))
    parts.append(b"Cache-Control: no-store\r\n")
    parts.extend(fields)
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def error_response(
    status: int,
    detail: str = "",
    *,
    close: bool = False,
    head_only: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    connection: bytes = b"",
) -> bytes:
    """A small plain-text reply made by the proxy itself (503, 502, 504, 400...; a 204 has no body).
    `connection`: a whole Connection field line (proxy/head.connection_field), written with the others."""
    fields = [name + b": " + value + b"\r\n" for name, value in extra]
    if connection:
        fields.append(connection)
    if status == 204:
        return compose_response(status, b"", None, fields, close, head_only)
    phrase = http.HTTPStatus(status).phrase
    body = f"{status} {phrase}\n{detail}\n".encode() if detail else f"{status} {phrase}\n".encode()
    return compose_response(status, body, b"text/plain; charset=utf-8", fields, close, head_only)


class Networks:
    """IP networks (CIDR), and whether an address (as bytes, as peers and X-Forwarded-For give it) is in one.
    IPv4-mapped IPv6 addresses count as their IPv4 address; what is not an address is in none."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)
        self._seen: dict[bytes, bool] = {}

    def contains(self, address: bytes) -> bool:
        known = self._seen.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address.decode("ascii").strip())
            except (ValueError, UnicodeDecodeError):
                known = False
            else:
                if ip.version == 6 and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                known = any(ip in network for network in self.networks)
            if len(self._seen) < 4096:
                self._seen[address] = known
        return known


class TrustedProxies(Networks):
    """A listener's trusted_proxies: whose X-Forwarded-For is believed, and which client address it gives.

    As in nginx's real_ip_recursive and Traefik's forwardedHeaders.trustedIPs: the client is the right-most
    address of the chain (X-Forwarded-For, then the peer) that is not a trusted proxy itself.
    """

    def client_address(self, forwarded_for: bytes | None, peer: bytes) -> bytes:
        if not forwarded_for:
            return peer
        chain = [a.strip() for a in forwarded_for.split(b",")]
        for address in reversed(chain):
            if address and not self.contains(address):
                return address
        return chain[0] or peer


class RequestIds:
    """Request ids unique across processes and restarts: a random prefix and a counter."""

    def __init__(self) -> None:
        self.prefix = os.urandom(6).hex().encode() + b"-"
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        return b"%s%x" % (self.prefix, self.count)
