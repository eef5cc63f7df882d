"""What says "this is lbtui's admin API", on the server's side and the client's (stdlib only: ctl imports it).

Two marks, as Envoy's `/server_info` and HAProxy's `show info` identify a running proxy:
- every answer of the admin API, errors included (a 401 or a 403 too), carries `X-Lbtui-Admin: 1`: the API
  versions it speaks, comma-separated; nothing else sends that header;
- `GET /api/v1/` answers `{"api": "lbtui-admin", "version": 1, "versions": [1], "lbtui": ..., ...}`.

A client asks `GET /api/v1/` before anything else (ctl and attach do it once per process), and reads no
answer without the header: whatever answers there (a listener, nginx, another program) is never taken for the
API, and a server that speaks only other versions is refused by name. `describe_answer` says what answered
instead, in words fit for one line.
"""

from __future__ import annotations

from typing import Any, Final

API_NAME: Final = "lbtui-admin"
API_VERSION: Final = 1  # the paths under /api/v1/ and the JSON shapes of admin/schema.py
VERSIONS: Final = (API_VERSION,)  # what a server speaks, and what a client takes
HEADER: Final = "X-Lbtui-Admin"
HEADER_VALUE: Final = ", ".join(str(v) for v in VERSIONS)
IDENTITY_PATH: Final = "/api/v1/"


def identity_json(lbtui_version: str, data_plane: str, pid: int) -> dict[str, Any]:
    """`GET /api/v1/`: who answers. Keys are only ever added."""
    return {
        "api": API_NAME,
        "version": API_VERSION,
        "versions": list(VERSIONS),
        "lbtui": lbtui_version,
        "data_plane": data_plane,
        "pid": pid,
    }


def header_versions(value: str) -> list[int] | None:
    """The versions an `X-Lbtui-Admin` value names; None when it is not a list of whole numbers."""
    versions = []
    for item in value.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or len(item) > 6:
            return None
        versions.append(int(item))
    return versions


def is_identity(value: Any) -> bool:
    """Whether a JSON value is an admin API's identity (of any version)."""
    return isinstance(value, dict) and value.get("api") == API_NAME


def describe_answer(status: int, content_type: str, server: str) -> str:
    """An HTTP answer in a few words: `404 text/html from nginx/1.22.1`."""
    media = content_type.split(";", 1)[0].strip() or "with no Content-Type"
    words = f"{status} {_printable(media, 40)}"
    if server:
        words += f" from {_printable(server, 40)}"
    return words


TLS_ANSWER: Final = "in TLS, as an HTTPS server does; the admin API is plain http"


def describe_bytes(data: str) -> str:
    """The start of an answer that is not HTTP, quoted and cut short; TLS named as such."""
    if data[:2] in ("\x15\x03", "\x16\x03"):  # a TLS record: alert or handshake, version 3.x
        return TLS_ANSWER
    return f"something that is not HTTP: {_printable(data, 40)!r}"


def _printable(text: str, limit: int) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in text.strip())  # nothing a terminal would act on
    return text if len(text) <= limit else text[: limit - 3] + "..."
