"""Values: what a TOML value means, converted, or why not (`Invalid`: what is wrong and how to fix it).

Durations, sizes, addresses, names, choices, HTTP tokens, paths, hosts, origins, status ranges, networks: each
converter takes the raw value TOML gave (any type) and returns the typed value or raises `Invalid`. They never
raise anything else for bad input, and they read nothing but their argument (no files, no environment), so that
the admin API and the engine can validate runtime input with the public ones (`parse_duration`, `parse_size`,
`parse_address`) too. Also here: how a value and a key path are written in a message (`describe`, `q`, `join`)
and the "did you mean" of every hint (`suggest`).

Imports nothing of lbtui.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Final

JWT_ALGORITHMS: Final = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
HASH_KEY_FORMS: Final = ("header:NAME", "cookie:NAME", "path", "query:NAME")
RATE_LIMIT_KEY_FORMS: Final = ("client_ip", "consumer", "header:NAME")
# Methods a route may name without a typo check; others are accepted unless they look like a typo of one.
KNOWN_METHODS: Final = (
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
)


class Invalid(ValueError):
    """A bad value: what is wrong and how to fix it. Public helpers raise it as a plain ValueError."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(f"{message}; {hint}" if hint else message)
        self.message = message
        self.hint = hint


DURATION_HINT: Final = "use a number of seconds or a string like '250ms', '2s', '1m'"
_DURATION_FACTORS: Final = {
    "us": Decimal("0.000001"),
    "µs": Decimal("0.000001"),  # micro sign
    "μs": Decimal("0.000001"),  # Greek mu: both get typed
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
# Longer units first, so that "ms" is not read as "m" followed by garbage.
_DURATION_PART: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|µs|μs|ms|s|m|h)")
_DURATION_WHOLE: Final = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*(?:us|µs|μs|ms|s|m|h))+\s*")

INT64: Final = 2**63
SIZE_HINT: Final = "use a number of bytes or a string like '512KiB', '100MiB', '1GB'"
_SIZE_FACTORS: Final = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(value: object) -> float:
    """Seconds from ``"250ms"``, ``"2s"``, ``"1.5m"``, ``"1h"``, ``"100us"``, ``"1m30s"`` or a number.

    Raises ValueError (with what is wrong and how to fix it) for anything else, negatives included.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Invalid(f"expected a duration, got {describe(value)}", DURATION_HINT)
    if isinstance(value, int | float):
        if isinstance(value, int) and abs(value) >= INT64:
            raise Invalid("integer is too large for a duration")
        if not math.isfinite(value):
            raise Invalid(f"{number(value)} is not a duration", DURATION_HINT)
        if value < 0:
            raise Invalid(f"{number(value)} is not a duration", "durations cannot be negative")
        return float(value)
    text = value.strip().lower()
    if text.startswith("-"):
        raise Invalid(f"{q(value)} is not a duration", "durations cannot be negative")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        raise Invalid(
            f"{q(value)} is not a duration", f"add a unit ('{text}s') or write {text} without quotes"
        )
    if not _DURATION_WHOLE.fullmatch(text):
        raise Invalid(f"{q(value)} is not a duration", DURATION_HINT)
    total = float(
        sum(
            (Decimal(number) * _DURATION_FACTORS[unit] for number, unit in _DURATION_PART.findall(text)),
            Decimal(0),
        )
    )
    if not math.isfinite(total):
        raise Invalid(f"{q(value)} is too large for a duration")
    return total


def parse_size(value: object) -> int:
    """Bytes from ``"100MiB"``, ``"16KiB"``, ``"1GB"``, ``"512"`` or an integer. Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(f"expected a size, got {describe(value)}", SIZE_HINT)
    if isinstance(value, int):
        if abs(value) >= INT64:
            raise Invalid("integer is too large for a size")
        if value < 0:
            raise Invalid(f"{value} is not a size", "sizes cannot be negative")
        return value
    match = _SIZE_RE.fullmatch(value.strip().lower())
    if match is None or match.group(2) not in _SIZE_FACTORS:
        raise Invalid(f"{q(value)} is not a size", SIZE_HINT)
    size = Decimal(match.group(1)) * _SIZE_FACTORS[match.group(2)]
    if size != size.to_integral_value():
        raise Invalid(f"{q(value)} is not a whole number of bytes", SIZE_HINT)
    if size >= INT64:
        raise Invalid(f"{q(value)} is too large for a size")
    return int(size)


def parse_address(value: object, allow_zero: bool = False) -> tuple[str, int]:
    """``(host, port)`` from ``"127.0.0.1:8080"``, ``"[::1]:8080"`` or ``"localhost:80"``.

    IPv6 hosts come back without brackets. Port 0 (any free port) only with ``allow_zero`` (listeners).
    Raises ValueError.
    """
    low = 0 if allow_zero else 1
    port_hint = f"use a port from {low} to 65535"
    if isinstance(value, int) and not isinstance(value, bool):
        raise Invalid(f"expected an address 'host:port', got integer {value}", f"write '127.0.0.1:{value}'")
    if not isinstance(value, str):
        raise Invalid(f"expected an address 'host:port', got {describe(value)}")
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise Invalid(f"{q(value)} has no closing ']'", "write IPv6 addresses like '[::1]:8080'")
        host, rest = value[1:end], value[end + 1 :]
        if not rest.startswith(":"):
            raise Invalid(f"{q(value)} has no port", f"write it as '[{host}]:PORT'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"{q(host)} is not an IPv6 address") from None
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon:
            raise Invalid(f"{q(value)} has no port", f"write it as 'host:port', e.g. '{value}:8080'")
        if ":" in host:
            raise Invalid(
                f"{q(value)} is not a valid address",
                f"put IPv6 addresses in brackets, e.g. '[{host}]:{port_text}'",
            )
        if not host:
            raise Invalid(
                f"{q(value)} has no host",
                f"write '127.0.0.1:{port_text}' (this machine) or '0.0.0.0:{port_text}' (all interfaces)",
            )
        check_host(host)
    if not port_text.isascii() or not port_text.isdigit():
        raise Invalid(f"{q(port_text)} is not a port number", port_hint)
    port = int(port_text)
    if port == 0 and not allow_zero:
        raise Invalid(
            "port 0 is not allowed here", f"{port_hint} (port 0, any free port, is for listeners only)"
        )
    if not low <= port <= 65535:
        raise Invalid(f"port {port} is out of range", port_hint)
    return host, port


_HOST_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE: Final = re.compile(rf"(?=.{{1,253}}\Z){_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def check_host(host: str) -> None:
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise Invalid(f"{q(host)} is not a valid IPv4 address") from None
        return
    if not _HOSTNAME_RE.fullmatch(host):
        raise Invalid(f"{q(host)} is not a valid host name")


def is_loopback(host: str) -> bool:
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------------------
# Describing values and suggesting fixes

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def join(path: str, key: str) -> str:
    part = key if _BARE_KEY.fullmatch(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}.{part}" if path else part


def q(text: str) -> str:
    if len(text) > 60:
        text = text[:57] + "..."
    return repr(text)


def number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value)


def describe(value: object) -> str:
    """The TOML type name and, for scalars, the value: "string '3'", "boolean true", "table"."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        # Python refuses to print ints of more than 4300 digits; TOML integers are 64-bit anyway.
        return f"integer {value}" if abs(value) < INT64 else "integer (too large)"
    if isinstance(value, float):
        return f"float {number(value)}"
    if isinstance(value, str):
        return f"string {q(value)}"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, datetime.datetime):
        return f"datetime {value.isoformat()}"
    if isinstance(value, datetime.date):
        return f"date {value.isoformat()}"
    if isinstance(value, datetime.time):
        return f"time {value.isoformat()}"
    if value is None:
        return "null"
    return type(value).__name__


def closest(word: str, choices: Iterable[str]) -> str | None:
    by_lower = {choice.lower(): choice for choice in choices}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return by_lower[found[0]] if found else None


def suggest(word: str, choices: Sequence[str], listing: str) -> str | None:
    """ "did you mean 'x'?" when a choice is close, else ``listing`` followed by every choice."""
    close = closest(word, choices)
    if close is not None:
        return f"did you mean {q(close)}?"
    if not choices:
        return None
    return f"{listing}: " + ", ".join(q(choice) for choice in choices)


def seconds(value: float) -> str:
    return f"{value:g}s"


# ----------------------------------------------------------------------------------------------------------
# Converters: raw value -> typed value, or Invalid


def string(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    return value


def nonempty(value: object) -> str:
    text = string(value)
    if not text:
        raise Invalid("must not be empty")
    return text


def integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = None
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            hint = f"write {value.strip()} without quotes"
        elif isinstance(value, float) and value.is_integer():
            hint = f"write {int(value)}"
        raise Invalid(f"expected an integer, got {describe(value)}", hint)
    if abs(value) >= INT64:
        raise Invalid("integer is too large", "TOML integers are 64-bit")
    return value


def int_in(low: int, high: int | None = None) -> Callable[[object], int]:
    def convert(value: object) -> int:
        number = integer(value)
        if high is None and number < low:
            raise Invalid(f"must be at least {low}, got {number}")
        if high is not None and not low <= number <= high:
            raise Invalid(f"must be between {low} and {high}, got {number}")
        return number

    return convert


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        hint = f"write {value} without quotes" if value in ("true", "false") else None
        raise Invalid(f"expected a boolean, got {describe(value)}", hint)
    return value


def positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise Invalid("must be greater than zero", DURATION_HINT)
    return seconds


def listen_address(value: object) -> tuple[str, int]:
    return parse_address(value, allow_zero=True)


def upstream_address(value: object) -> tuple[str, int]:
    return parse_address(value, allow_zero=False)


NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_HINT: Final = "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
_ENV_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 9110 token: header names, methods, cookie names.
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEX64_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_ORIGIN_RE: Final = re.compile(r"https?://[^/\s?#]+")


def valid_name(kind: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = string(value)
        if not NAME_RE.fullmatch(text):
            raise Invalid(f"{q(text)} is not a valid {kind} name", NAME_HINT)
        return text

    return convert


def choice(choices: Sequence[str], noun: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = string(value)
        if text not in choices:
            raise Invalid(f"{q(text)} is not {noun}", suggest(text, choices, "choose one of"))
        return text

    return convert


def env_name(value: object) -> str:
    text = string(value)
    if not _ENV_RE.fullmatch(text):
        raise Invalid(
            f"{q(text)} is not an environment variable name",
            "give the NAME of the variable that holds the secret (letters, digits, '_'), not the secret",
        )
    return text


def token(kind: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = string(value)
        if not _TOKEN_RE.fullmatch(text):
            raise Invalid(f"{q(text)} is not a valid {kind}", "use letters, digits and -, no spaces or ':'")
        return text

    return convert


header_name = token("header name")


def header_value(value: object) -> str:
    text = string(value)
    if re.search(r"[\r\n\x00]", text):
        raise Invalid("header values cannot contain line breaks or NUL")
    return text


def url_path(value: object) -> str:
    text = string(value)
    if not text.startswith("/"):
        raise Invalid(f"{q(text)} does not start with '/'", f"write {q('/' + text)}")
    if re.search(r"[\s\x00-\x1f\x7f]", text):
        raise Invalid(f"{q(text)} contains spaces or control characters", "percent-encode them (%20)")
    return text


def method(value: object) -> str:
    method = token("method")(value).upper()
    if method not in KNOWN_METHODS:
        close = closest(method, KNOWN_METHODS)
        if close is not None:
            raise Invalid(f"{q(method)} is not an HTTP method", f"did you mean {q(close)}?")
    return method


def regex(value: object) -> str:
    text = string(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise Invalid(
            f"{q(text)} is not a valid regular expression: {exc.msg} at position {exc.pos}"
        ) from None
    return text


def route_host(value: object) -> str:
    """A route's host: a name (`api.example.com`) or a wildcard for its subdomains (`*.example.com`), in lower
    case with no trailing dot (requests' hosts are compared in that form, lbtui/http.py normal_host)."""
    text = nonempty(value).lower()
    if ":" in text:
        raise Invalid(f"{q(text)} includes a port", f"match the host name only: {q(text.split(':')[0])}")
    name = text[2:] if text.startswith("*.") else text
    if "*" in name:
        raise Invalid(
            f"{q(text)} is not a host pattern",
            "a wildcard is '*.' before a name, as in '*.example.com' (any subdomain, at any depth)",
        )
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]  # `example.com.` names the same host as `example.com`
    if not name:
        raise Invalid(f"{q(text)} has no name after '*.'", "write e.g. '*.example.com'")
    check_host(name)
    if name.endswith("."):
        raise Invalid(f"{q(text)} is not a valid host name")
    return "*." + name if text.startswith("*.") else name


def upgrade_protocol(value: object) -> str:
    """A protocol name a client may ask for in Upgrade (`websocket`, `h2c`), lower case."""
    text = string(value)
    if not _TOKEN_RE.fullmatch(text):
        raise Invalid(
            f"{q(text)} is not a protocol name", "e.g. 'websocket' (a token: no spaces, '/' or ',')"
        )
    return text.lower()


def status_range(value: object) -> tuple[int, int]:
    hint = "use a status (200), a class ('2xx'), a range ('200-399') or [200, 399]"
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise Invalid(f"expected [low, high], got an array of {len(value)}", hint)
        low, high = integer(value[0]), integer(value[1])
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"[1-5]xx", text):
            low, high = int(text[0]) * 100, int(text[0]) * 100 + 99
        elif match := re.fullmatch(r"(\d{3})\s*-\s*(\d{3})", text):
            low, high = int(match.group(1)), int(match.group(2))
        elif re.fullmatch(r"\d{3}", text):
            low = high = int(text)
        else:
            raise Invalid(f"{q(value)} is not a status or status range", hint)
    elif isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    else:
        raise Invalid(f"expected a status or status range, got {describe(value)}", hint)
    if not (100 <= low <= 599 and 100 <= high <= 599):
        shown = f"{low}-{high}" if low != high else str(low)
        raise Invalid(f"{shown} is not a status", "status codes run from 100 to 599")
    if low > high:
        raise Invalid(f"range {low}-{high} is backwards", f"write [{high}, {low}]")
    return low, high


def _named_form(text: str, forms: Sequence[str], noun: str) -> str:
    """Checks ``kind:NAME`` forms such as ``header:X-User``; plain forms (``path``) must match exactly."""
    listing = "use one of: " + ", ".join(q(form) for form in forms)
    plain = [form for form in forms if ":" not in form]
    prefixes = [form.split(":")[0] for form in forms if ":" in form]
    if text in plain:
        return text
    kind, colon, name = text.partition(":")
    if colon and kind in prefixes:
        if not name:
            raise Invalid(f"{q(text)} has no name after '{kind}:'", f"write e.g. '{kind}:X-User'")
        check = token(f"{kind} name") if kind in ("header", "cookie") else query_name
        check(name)
        return text
    close = closest(kind, [*plain, *prefixes])
    hint = listing if close is None else f"did you mean {q(close + (':' + name if colon else ''))}?"
    raise Invalid(f"{q(text)} is not {noun}", hint)


def query_name(value: object) -> str:
    text = nonempty(value)
    if re.search(r"[&=#\s]", text):
        raise Invalid(f"{q(text)} is not a valid query parameter name")
    return text


def hash_key_form(value: object) -> str:
    return _named_form(string(value), HASH_KEY_FORMS, "a hash key")


def rate_limit_key_form(value: object) -> str:
    return _named_form(string(value), RATE_LIMIT_KEY_FORMS, "a rate limit key")


def jwt_algorithm(value: object) -> str:
    text = string(value)
    if text.lower() == "none":
        raise Invalid(
            "'none' is not allowed", "unsigned tokens would let anyone in; use e.g. 'HS256' or 'RS256'"
        )
    return choice(JWT_ALGORITHMS, "a JWT algorithm")(text)


def origin(value: object) -> str:
    text = nonempty(value)
    if text == "*":
        return text
    if _ORIGIN_RE.fullmatch(text):
        return text
    if _ORIGIN_RE.fullmatch(text.rstrip("/")):
        raise Invalid(f"{q(text)} is not an origin", f"remove the trailing '/': {q(text.rstrip('/'))}")
    raise Invalid(f"{q(text)} is not an origin", "write 'https://host[:port]' (no path), or '*'")


def sha256_hex(value: object) -> str:
    text = string(value)
    if not _HEX64_RE.fullmatch(text):
        raise Invalid(
            "not a SHA-256 hex digest (64 hex digits)", "compute it with: printf %s 'THE-KEY' | sha256sum"
        )
    return text.lower()


def nonnegative_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a number, got {describe(value)}")
    if not 0 <= value < float("inf"):
        raise Invalid(f"must be a number of at least 0, got {value}")
    return float(value)


def percent(value: object) -> float:
    number = nonnegative_number(value)
    if number > 100:
        raise Invalid(f"must be a percentage from 0 to 100, got {describe(value)}")
    return number


def network(value: object) -> str:
    text = string(value)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise Invalid(
            f"{q(text)} is not an IP address or network", 'e.g. "127.0.0.1", "10.0.0.0/8" or "::1"'
        ) from None


def cookie_max_age(value: object) -> int:
    seconds = parse_duration(value)
    if seconds < 1:
        raise Invalid(
            "must be at least 1s", "leave it out for a cookie that lasts as long as the browser session"
        )
    return int(seconds)


def positive_size(value: object) -> int:
    size = parse_size(value)
    if size <= 0:
        raise Invalid("must be greater than zero", SIZE_HINT)
    return size
