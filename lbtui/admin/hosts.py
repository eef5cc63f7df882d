"""Which Host and Origin the admin API answers: its defence against DNS rebinding and cross-site requests.

A browser page on another site cannot use the API: its requests carry its own origin (refused by
`same_origin`), and a DNS-rebound name in Host is refused as well (`HostPolicy`): only a loopback name or
address, the bind address, or (on a wildcard bind) an IP address is taken, since a rebinding attack needs a DNS
name it controls.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name`, `name:80`, `1.2.3.4:80`, `[::1]:80` -> (host, port); None when it is not a host."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = value.partition(":")
        if ":" in port_text:
            return None
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
            return None
        return host.lower().rstrip("."), int(port_text)
    return host.lower().rstrip("."), None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


class HostPolicy:
    """Which Host headers the API answers (its DNS-rebinding defence)."""

    def __init__(self, bind_host: str) -> None:
        self.bind_host = bind_host.lower()
        bind_ip = _ip(self.bind_host)
        self.wildcard = bind_ip is not None and bind_ip.is_unspecified

    def allows(self, host: str) -> bool:
        if is_loopback(host) or host == self.bind_host:
            return True
        return self.wildcard and _ip(host) is not None


def same_origin(origin: str, host: tuple[str, int | None]) -> bool:
    """Whether a browser's `Origin` is the API's own (http, the Host's name and port)."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "http" or not parts.hostname:
        return False
    return (parts.hostname.lower().rstrip("."), port or 80) == (host[0], host[1] or 80)
