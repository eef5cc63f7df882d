"""The admin API: JSON over HTTP/1.1 on `[admin].bind`, over a Controller (docs/operations.md "Admin API").

Two layers. `AdminApi.handle` is a pure function of one whole request (method, target, headers, body) to one
response, and does no I/O: tests and other transports call it directly. `AdminServer` is the socket: an
asyncio Protocol fed by httptools, as the proxy's own, on a listening socket of its own (never a listener).
`start_admin_server` starts it for a runtime: the command line hands it to lbtui/serve.py, which never imports
this package.

Invariants:
- State changes only through the Controller interface: a mutation's answer is the audit event it made.
- Mutations are POST, PUT or DELETE; a known path asked with another method is 405 with `Allow`.
- Every error is JSON `{"error": "..."}`; an unexpected exception is logged and answered 500 with
  `{"error": "internal error"}`, never a traceback. A Controller's refusal is answered by its class
  (core/control.py): NotFound 404, Conflict 409 (not now), Invalid 400, ReloadRefused 400 with its issues.
- Every answer, errors included, carries `X-Lbtui-Admin` (the API versions spoken), and `GET /api/v1/` says
  who answers (admin/identity.py): a client tells this API from anything else before it reads an answer.
- Checks come in this order, before any routing: Host (403), Origin (403), token (401). A browser page on
  another site cannot use the API (admin/hosts.py says which Host and Origin are taken, and why).
- Bounded: a request's head (16 KiB, 431), its body (64 KiB, 413), the time to send a whole request
  (`header_timeout`, 408), and the number of connections. A body must say it is JSON (415).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

import httptools

import lbtui
from lbtui.config import AdminConfig, Config
from lbtui.core.control import Conflict, ControlError, Controller, Event, Invalid, NotFound, ReloadRefused
from lbtui.http import compose_response, no_delay

from .hosts import HostPolicy, same_origin, split_host
from .identity import HEADER, HEADER_VALUE, identity_json
from .schema import backend_json, event_json, refusal_json, request_json, service_json, snapshot_json

log = logging.getLogger("lbtui.admin")

MAX_BODY: Final = 64 * 1024
MAX_HEAD: Final = 16 * 1024
MAX_CONNECTIONS: Final = 64
# Requests answered from one read of one connection, and answer bytes it has not read, before it is closed:
# ctl and attach never pipeline, and one connection must not hold the engine's loop or its memory.
MAX_PIPELINED: Final = 8
MAX_UNREAD: Final = 1024 * 1024
MAX_EVENTS: Final = 1000
ACTOR_HEADER: Final = "x-lbtui-actor"
ACTORS: Final = frozenset({"ctl", "key"})  # actors a client may name ("key": `lbtui attach`); else "api"
JSON_TYPE: Final = "application/json"


class AdminSetupError(Exception):
    """The admin API cannot start as configured (its token variable is not set)."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def json_response(status: int, value: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(value, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    return Response(status, body, JSON_TYPE, headers or [])


def error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"error": message}, headers)


class _Refused(Exception):
    """A request refused with an error response (raised inside a handler)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _refuse(status: int, message: str) -> _Refused:
    return _Refused(error(status, message))


# -- the API -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: Mapping[str, str]  # lower-case names; a repeated header keeps its first value
    body: bytes = b""


Handler = Callable[["AdminApi", Request, list[str], str], Response]


def _routes() -> list[tuple[tuple[str, ...], dict[str, Handler]]]:
    """Path patterns ("*" matches one segment, passed to the handler) and their handlers by method."""
    return [
        (("api", "v1"), {"GET": AdminApi.get_identity}),
        (("api", "v1", "state"), {"GET": AdminApi.get_state}),
        (("api", "v1", "events"), {"GET": AdminApi.get_events}),
        (("api", "v1", "reload"), {"POST": AdminApi.reload}),
        (("api", "v1", "requests"), {"GET": AdminApi.get_requests}),
        (("api", "v1", "undo"), {"POST": AdminApi.undo}),
        (("api", "v1", "backends", "*"), {"GET": AdminApi.get_backend, "DELETE": AdminApi.remove_backend}),
        (("api", "v1", "backends", "*", "drain"), {"POST": AdminApi.drain}),
        (("api", "v1", "backends", "*", "enable"), {"POST": AdminApi.enable}),
        (("api", "v1", "backends", "*", "maint"), {"POST": AdminApi.maint}),
        (("api", "v1", "backends", "*", "drain-then-maint"), {"POST": AdminApi.drain_then_maint}),
        (("api", "v1", "backends", "*", "weight"), {"PUT": AdminApi.set_weight}),
        (("api", "v1", "services", "*"), {"GET": AdminApi.get_service}),
        (("api", "v1", "services", "*", "backends"), {"POST": AdminApi.add_backend}),
        (("api", "v1", "services", "*", "algorithm"), {"PUT": AdminApi.set_algorithm}),
        (("api", "v1", "services", "*", "split"), {"PUT": AdminApi.set_split}),
        (("api", "v1", "services", "*", "flip"), {"POST": AdminApi.flip}),
        (
            ("api", "v1", "services", "*", "ramp"),
            {"POST": AdminApi.start_ramp, "DELETE": AdminApi.abort_ramp},
        ),
        (("metrics",), {"GET": AdminApi.get_metrics}),
    ]


# A Controller's refusals by class: an unknown name, "not now", "not valid" (any other refusal: 400).
_STATUSES: Final = ((NotFound, 404), (Conflict, 409), (Invalid, 400))


def refusal_status(refusal: ControlError) -> int:
    """The HTTP status that answers a Controller's refusal."""
    return next((status for kind, status in _STATUSES if isinstance(refusal, kind)), 400)


class AdminApi:
    """Requests in, responses out, over a Controller. No I/O."""

    def __init__(self, controller: Controller, bind_host: str = "127.0.0.1", token: str | None = None):
        self.controller = controller
        self.hosts = HostPolicy(bind_host)
        self._token = token.encode() if token is not None else None
        self._routes = _routes()

    # -- entry ---------------------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        try:
            return self._handle(request)
        except _Refused as refused:
            return refused.response
        except Exception:
            log.exception("admin API: %s %s failed", request.method, request.target)
            return error(500, "internal error")

    def _handle(self, request: Request) -> Response:
        host = split_host(request.headers.get("host", ""))
        if host is None:
            return error(400, "a Host header is required")
        if not self.hosts.allows(host[0]):
            return error(403, f"Host {host[0]!r} is not this admin API's (use 127.0.0.1 or localhost)")
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, host):
            return error(403, f"cross-origin requests are refused (Origin {origin!r})")
        if self._token is not None and not self._authorized(request.headers.get("authorization", "")):
            return error(
                401,
                "a valid token is required: Authorization: Bearer <token>",
                [("WWW-Authenticate", 'Bearer realm="lbtui"')],
            )
        parts = urlsplit(request.target)
        segments = [unquote(s) for s in parts.path.split("/")[1:]]
        if segments and segments[-1] == "":
            segments.pop()  # a trailing slash
        for pattern, methods in self._routes:
            args = _match(pattern, segments)
            if args is None:
                continue
            method = "GET" if request.method == "HEAD" else request.method
            handler = methods.get(method)
            if handler is None:
                allow = ", ".join([*methods, "HEAD"] if "GET" in methods else methods)
                return error(
                    405, f"{request.method} is not allowed here (allowed: {allow})", [("Allow", allow)]
                )
            return handler(self, request, args, parts.query)
        return error(404, f"no such endpoint: {parts.path}")

    def _authorized(self, value: str) -> bool:
        scheme, _, credentials = value.strip().partition(" ")
        assert self._token is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._token)

    # -- helpers -------------------------------------------------------------------------------------------
    @staticmethod
    def actor(request: Request) -> str:
        named = request.headers.get(ACTOR_HEADER, "").strip().lower()
        return named if named in ACTORS else "api"

    @staticmethod
    def body(request: Request, required: bool = True) -> dict[str, Any]:
        """The request's JSON object body ({} when there is none and none is required)."""
        if not request.body.strip():
            if required:
                raise _refuse(400, "this request needs a JSON object body")
            return {}
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if media != JSON_TYPE:
            raise _refuse(415, f"the body must be {JSON_TYPE} (Content-Type: {content_type or 'none'})")
        try:
            value = json.loads(request.body)
        except UnicodeDecodeError:
            raise _refuse(400, "the body is not UTF-8") from None
        except json.JSONDecodeError as e:
            raise _refuse(
                400, f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from None
        except (ValueError, RecursionError) as e:  # a number too long to convert, nesting too deep
            raise _refuse(400, f"the body is not JSON this API takes: {e}") from None
        if not isinstance(value, dict):
            raise _refuse(400, f"the body must be a JSON object, not {_json_kind(value)}")
        return value

    def _change(self, change: Callable[[], Event], status: int = 200) -> Response:
        try:
            event = change()
        except ControlError as e:
            return error(refusal_status(e), str(e))
        headers = []
        if event.action == "add":
            headers.append(("Location", f"/api/v1/backends/{event.target}"))
        return json_response(status, event_json(event), headers)

    # -- reads -----------------------------------------------------------------------------------------------
    def get_identity(self, request: Request, args: list[str], query: str) -> Response:
        """`GET /api/v1/`: which API this is, its versions, and the lbtui that answers (cheap: no snapshot)."""
        return json_response(200, identity_json(lbtui.__version__, lbtui.data_plane_build(), os.getpid()))

    def get_state(self, request: Request, args: list[str], query: str) -> Response:
        return json_response(200, snapshot_json(self.controller.snapshot()))

    def get_backend(self, request: Request, args: list[str], query: str) -> Response:
        try:
            view = self.controller.snapshot().backend(args[0])
        except KeyError:
            return error(404, f"no backend named {args[0]!r}")
        return json_response(200, backend_json(view))

    def get_service(self, request: Request, args: list[str], query: str) -> Response:
        try:
            view = self.controller.snapshot().service(args[0])
        except KeyError:
            return error(404, f"no service named {args[0]!r}")
        return json_response(200, service_json(view))

    def get_events(self, request: Request, args: list[str], query: str) -> Response:
        """The newest `limit` events, newest first; with `since=ID`, only those after event ID."""
        limit = _number_param(query, "limit", 100, 1, MAX_EVENTS)
        since = _number_param(query, "since", 0, 0, None)
        events = [e for e in self.controller.events(limit) if e.id > since]
        return json_response(200, {"events": [event_json(e) for e in events]})

    def get_requests(self, request: Request, args: list[str], query: str) -> Response:
        """The newest `limit` finished requests, newest first (the access log's tail, as the dashboard's)."""
        limit = _number_param(query, "limit", 100, 1, MAX_EVENTS)
        requests = self.controller.recent_requests(limit)
        return json_response(200, {"requests": [request_json(r) for r in requests]})

    def get_metrics(self, request: Request, args: list[str], query: str) -> Response:
        try:
            from lbtui.admin import metrics
        except ImportError:
            return error(404, "metrics are not in this version of lbtui yet")
        text = metrics.render(self.controller.snapshot())
        content_type = getattr(metrics, "CONTENT_TYPE", "text/plain; version=0.0.4; charset=utf-8")
        return Response(200, text.encode(), content_type)

    # -- changes ---------------------------------------------------------------------------------------------
    def _state(self, request: Request, name: str, state: str) -> Response:
        self.body(request, required=False)
        actor = self.actor(request)
        return self._change(lambda: self.controller.set_state(name, state, actor))

    def drain(self, request: Request, args: list[str], query: str) -> Response:
        return self._state(request, args[0], "drain")

    def enable(self, request: Request, args: list[str], query: str) -> Response:
        return self._state(request, args[0], "ready")

    def maint(self, request: Request, args: list[str], query: str) -> Response:
        return self._state(request, args[0], "maint")

    def drain_then_maint(self, request: Request, args: list[str], query: str) -> Response:
        self.body(request, required=False)
        name, actor = args[0], self.actor(request)
        return self._change(lambda: self.controller.drain_then_maint(name, actor))

    def set_weight(self, request: Request, args: list[str], query: str) -> Response:
        body = self.body(request)
        weight = _field(body, "weight", int)
        name, actor = args[0], self.actor(request)
        return self._change(lambda: self.controller.set_weight(name, weight, actor))

    def remove_backend(self, request: Request, args: list[str], query: str) -> Response:
        self.body(request, required=False)
        name, actor = args[0], self.actor(request)
        return self._change(lambda: self.controller.remove_backend(name, actor))

    def add_backend(self, request: Request, args: list[str], query: str) -> Response:
        body = self.body(request)
        _only(body, ("name", "address", "group", "weight"))
        name = _field(body, "name", str)
        address = _field(body, "address", str)
        group = _field(body, "group", str, "default")
        weight = _field(body, "weight", int, 1)
        service, actor = args[0], self.actor(request)
        return self._change(
            lambda: self.controller.add_backend(service, name, address, group, weight, actor),
            status=201,
        )

    def set_algorithm(self, request: Request, args: list[str], query: str) -> Response:
        body = self.body(request)
        _only(body, ("algorithm",))
        algorithm = _field(body, "algorithm", str)
        service, actor = args[0], self.actor(request)
        return self._change(lambda: self.controller.set_algorithm(service, algorithm, actor))

    def set_split(self, request: Request, args: list[str], query: str) -> Response:
        body = self.body(request)
        for group, weight in body.items():
            if isinstance(weight, bool) or not isinstance(weight, int):
                raise _refuse(
                    400, f"split weight for {group!r} must be a whole number, not {_json_kind(weight)}"
                )
        service, actor = args[0], self.actor(request)
        return self._change(lambda: self.controller.set_split(service, body, actor))

    def flip(self, request: Request, args: list[str], query: str) -> Response:
        self.body(request, required=False)
        service, actor = args[0], self.actor(request)
        return self._change(lambda: self.controller.flip(service, actor))

    def reload(self, request: Request, args: list[str], query: str) -> Response:
        """Re-read the config file and apply it (actor "reload"); a bad file: 400 with its issues, no change."""
        self.body(request, required=False)
        try:
            result = self.controller.reload(self.actor(request))
        except ReloadRefused as refused:
            return json_response(400, refusal_json(refused))
        except ControlError as e:  # no file to reload
            return error(refusal_status(e), str(e))
        return json_response(200, result.json())

    def start_ramp(self, request: Request, args: list[str], query: str) -> Response:
        self.body(request, required=False)
        service, actor = args[0], self.actor(request)
        return self._change(lambda: self.controller.start_ramp(service, actor))

    def abort_ramp(self, request: Request, args: list[str], query: str) -> Response:
        self.body(request, required=False)
        service, actor = args[0], self.actor(request)
        return self._change(lambda: self.controller.abort_ramp(service, actor))

    def undo(self, request: Request, args: list[str], query: str) -> Response:
        self.body(request, required=False)
        actor = self.actor(request)
        try:
            event = self.controller.undo(actor)
        except ControlError as e:
            return error(refusal_status(e), str(e))  # nothing to undo: a Conflict, 409
        return json_response(200, event_json(event))


def _number_param(query: str, name: str, default: int, low: int, high: int | None) -> int:
    """A whole-number query parameter from `low` to `high` (no upper bound: None); 400 when it is not."""
    values = parse_qs(query, keep_blank_values=True).get(name)
    if not values:
        return default
    text = values[-1]
    if not (text.isascii() and text.isdigit()) or int(text) < low or (high is not None and int(text) > high):
        bounds = f"from {low} to {high}" if high is not None else f"of {low} or more"
        raise _refuse(400, f"{name} must be a whole number {bounds}, got {text!r}")
    return int(text)


def _match(pattern: tuple[str, ...], segments: list[str]) -> list[str] | None:
    if len(pattern) != len(segments):
        return None
    args = []
    for want, got in zip(pattern, segments, strict=True):
        if want == "*":
            if not got:
                return None
            args.append(got)
        elif want != got:
            return None
    return args


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


_MISSING: Final[Any] = object()


def _field(body: Mapping[str, Any], key: str, kind: type, default: Any = _MISSING) -> Any:
    if key not in body:
        if default is _MISSING:
            raise _refuse(400, f"the body needs {key!r}")
        return default
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        wanted = "a whole number" if kind is int else "a string"
        raise _refuse(400, f"{key!r} must be {wanted}, not {_json_kind(value)}")
    return value


def _only(body: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    unknown = [k for k in body if k not in keys]
    if unknown:
        raise _refuse(400, f"unknown key {unknown[0]!r} in the body (allowed: {', '.join(keys)})")


# -- the server --------------------------------------------------------------------------------------------


_IDENTITY_LINE: Final = f"{HEADER}: {HEADER_VALUE}\r\n".encode()
_NOSNIFF_LINE: Final = b"X-Content-Type-Options: nosniff\r\n"


def encode_response(response: Response, head_only: bool = False) -> bytes:
    fields = [_NOSNIFF_LINE, _IDENTITY_LINE]
    fields.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in response.headers)
    return compose_response(
        response.status,
        response.body,
        response.content_type.encode("latin-1"),
        fields,
        response.close,
        head_only,
    )


class _Connection(asyncio.Protocol):
    """One client connection: httptools parses, AdminApi answers, one request at a time, in order."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.api = server.api
        self.parser = httptools.HttpRequestParser(self)
        self.in_read = 0  # requests answered from the current read (see MAX_PIPELINED)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.head_size = 0
        self.started = False  # some bytes of a request have come
        self.answered = False  # this request was answered early (413): ignore the rest

    # -- asyncio -----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        if len(self.server.connections) >= MAX_CONNECTIONS:
            # Full: make room by closing an idle connection (one that has sent nothing of a request), so that
            # sockets held open and silent cannot lock ctl, attach and Prometheus out; else refuse this one.
            idle = next((c for c in self.server.connections if not c.started), None)
            if idle is None or idle.transport is None:
                self.transport.abort()
                return
            self.server.connections.discard(idle)
            idle.transport.close()
        self.server.connections.add(self)
        no_delay(self.transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.started = True
        self.in_read = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send(error(400, "upgrades are not supported"), close=True)
        except httptools.HttpParserError as e:
            if not (self.transport is None or self.transport.is_closing()):
                self._send(error(400, f"malformed request: {e}"), close=True)

    def _arm(self) -> None:
        """The whole next request must come within header_timeout of now."""
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.server.header_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.started:
            self._send(error(408, "the request did not come in time"), close=True)
        else:
            self.transport.close()  # idle keep-alive: nothing to say

    # -- httptools callbacks ---------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.started = True

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        self.headers.setdefault(key, value.decode("latin-1"))

    def _count_head(self, size: int) -> None:
        self.head_size += size
        if self.head_size > MAX_HEAD:
            self.answered = True
            self._send(error(431, f"the request head is over {MAX_HEAD} bytes"), close=True)
            raise httptools.HttpParserError("head too large")  # stops the parser: nothing more is read

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > MAX_BODY:
            self._too_large()

    def on_body(self, body: bytes) -> None:
        if self.answered:
            return
        self.body_size += len(body)
        if self.body_size > MAX_BODY:
            self._too_large()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.answered:
            return
        method = self.parser.get_method().decode("latin-1")
        request = Request(method, self.url.decode("latin-1"), self.headers, b"".join(self.body))
        response = self.api.handle(request)
        self.in_read += 1
        transport = self.transport
        flooding = self.in_read >= MAX_PIPELINED or (
            transport is not None and transport.get_write_buffer_size() > MAX_UNREAD
        )
        keep_alive = self.parser.should_keep_alive() and not self.server.closing and not flooding
        self._send(response, close=not keep_alive, head_only=method == "HEAD")
        if flooding:
            self.answered = True
            raise httptools.HttpParserError("too many pipelined requests")  # stops the parser: closed
        if keep_alive:
            self._reset()
            self.started = False
            self._arm()

    def _too_large(self) -> None:
        self.answered = True
        self._send(error(413, f"the body is over {MAX_BODY} bytes"), close=True)
        raise httptools.HttpParserError("body too large")  # stops the parser: nothing more is read

    def _send(self, response: Response, close: bool, head_only: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if close:
            response.close = True
        transport.write(encode_response(response, head_only))
        if close:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            transport.close()


class AdminServer:
    """The admin API on its own socket, on the running loop (the engine's)."""

    def __init__(
        self,
        controller: Controller,
        config: AdminConfig,
        header_timeout: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        token: str | None = None
        if config.token_env is not None:
            token = (os.environ if environ is None else environ).get(config.token_env) or None
            if token is None:
                raise AdminSetupError(
                    f"the environment variable {config.token_env!r} is not set (admin.token_env: it holds "
                    "the admin API's token)"
                )
        self.config = config
        self.api = AdminApi(controller, config.host, token)
        self.header_timeout = header_timeout
        self.connections: set[_Connection] = set()
        self.closing = False
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] = (config.host, config.port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.config.host, self.config.port, reuse_address=True
        )
        self.address = self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        self.closing = True
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)


async def start_admin_server(
    controller: Controller, config: Config, say: Callable[[str], None]
) -> AdminServer | None:
    """The admin API on [admin].bind over `controller`, started; None after saying why it cannot start.

    lbtui/serve.py's StartAdmin: the command line hands it to the runtime (ServeOptions.admin_server).
    """
    admin = config.admin
    try:
        server = AdminServer(controller, admin, config.limits.header_timeout)
        await server.start()
    except AdminSetupError as e:
        say(f"cannot start the admin API: {e}")
        return None
    except OSError as e:
        where = f"[{admin.host}]:{admin.port}" if ":" in admin.host else f"{admin.host}:{admin.port}"
        say(f"cannot listen for the admin API on {where}: {e.strerror or e}")
        return None
    return server
