"""The HTTP side of sticky sessions (`sticky = { cookie = "NAME" }`): reading, hiding and setting the cookie.

HAProxy's `cookie NAME insert indirect nocache`, which core/model.py (Service.sticky_backend) decides with:
- insert: a response from a backend the request's cookie did not name gets `Set-Cookie: NAME=VALUE; Path=/;
  HttpOnly` (+ `Secure` on TLS listeners or when configured, `SameSite`, `Max-Age` when configured).
- indirect: the backend never sees the cookie (it is removed from the request's Cookie fields, the client's
  other cookies kept as they were), and a Set-Cookie of the same name from a backend is dropped (it would
  replace ours, or let a backend choose where a client goes).
- nocache: a response that sets the cookie also gets `Cache-Control: private` unless it says `private`,
  `no-cache` or `no-store` already, so that no shared cache hands one client's cookie to others.

Cookie names are compared exactly (they are case-sensitive, RFC 6265 5.4); values may be quoted.
"""

from __future__ import annotations

from typing import Final

from lbtui.config import StickyConfig

COOKIE: Final = b"cookie"
SET_COOKIE: Final = b"set-cookie"
CACHE_CONTROL: Final = b"cache-control"
PRIVATE: Final = (b"Cache-Control", b": ", b"private", b"\r\n")
# Directives that keep a response out of shared caches already (HAProxy adds `private` unless one is there).
NOT_SHARED: Final = (b"private", b"no-cache", b"no-store")


def cookie_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """The values of every cookie called `name` in the request's Cookie fields, in order (quotes removed)."""
    found: list[bytes] = []
    for field, value in headers:
        if len(field) == 6 and field.lower() == COOKIE and value.find(name) >= 0:
            for pair in value.split(b";"):
                key, sep, cookie = pair.partition(b"=")
                if sep and key.strip() == name:
                    cookie = cookie.strip()
                    if len(cookie) >= 2 and cookie[0] == 0x22 and cookie[-1] == 0x22:
                        cookie = cookie[1:-1]
                    found.append(cookie)
    return found


def without_cookie(value: bytes, name: bytes) -> bytes:
    """A Cookie field's value without the cookies called `name`: the others as they came, joined by "; "
    (b"" when none is left). The value itself when it has no such cookie."""
    if value.find(name) < 0:
        return value
    pairs = value.split(b";")
    kept = [pair.strip() for pair in pairs if pair.partition(b"=")[0].strip() != name]
    if len(kept) == len(pairs):
        return value
    return b"; ".join(pair for pair in kept if pair)


def set_cookie(config: StickyConfig, value: bytes, tls: bool) -> bytes:
    """The Set-Cookie value that binds a client to the backend whose cookie value is `value`."""
    parts = [config.cookie.encode(), b"=", value, b"; Path=/; HttpOnly"]
    secure = config.secure
    if secure is None:
        secure = tls or config.same_site == "none" or config.cookie.startswith(("__Secure-", "__Host-"))
    if secure:
        parts.append(b"; Secure")
    if config.same_site is not None:
        parts += (b"; SameSite=", config.same_site.capitalize().encode())
    if config.max_age is not None:
        parts.append(b"; Max-Age=%d" % config.max_age)
    return b"".join(parts)


def response_with_cookie(parts: list[bytes], name: bytes, set_value: bytes | None) -> list[bytes]:
    """A response head (status line, then name, ": ", value, CRLF for each field) without a backend's own
    Set-Cookie called `name`, and with ours (`set_value`, with Cache-Control: private as needed) when given."""
    out = parts
    shared = True  # may a shared cache keep it, as far as its Cache-Control says?
    for i in range(1, len(parts) - 3, 4):
        field = parts[i].lower()
        if field == SET_COOKIE and parts[i + 2].partition(b"=")[0].strip() == name:
            if out is parts:
                out = parts[:i]
            continue
        if set_value is not None and field == CACHE_CONTROL:
            directives = parts[i + 2].lower()
            if any(directive in directives for directive in NOT_SHARED):
                shared = False
        if out is not parts:
            out += parts[i : i + 4]
    if set_value is None:
        return out
    if out is parts:
        out = list(parts)
    out += (b"Set-Cookie", b": ", set_value, b"\r\n")
    if shared:
        out += PRIVATE
    return out
