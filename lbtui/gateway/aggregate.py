"""Response aggregation (KrakenD's model): a route with `aggregate` answers with one JSON object, each part's
JSON reply under the part's `group`.

- Every part is a GET, and all start at once, except a part whose path names `{group.field}` of an earlier
  part: it starts once that part has answered, with the field's value percent-encoded into its path (taken
  from the earlier reply as it came, before allow, deny and rename), and fails if that part failed.
- A part goes to the backend its service picks as the proxy would (Service.pick, with the same hash key, for
  the part's path and the client's headers), and counts for that backend as a proxied request does: in
  `in_flight` while it runs, then Service.attempt_ended (status 0 for a failure with no reply, 499 when the
  client left), the one place both count an attempt's end.
  A connect failure tries the next backend, as the proxy does; nothing else is retried.
- A part fails when no backend is available, its reply is not 2xx, its body is not JSON (an object or an
  array) or is over MAX_BODY, or it misses its deadline. Failed parts are left out and the reply says
  `X-Aggregate-Completed: false`; with none left, the answer is 502.
- Deadlines: the route's `timeout` bounds the whole aggregate, sequential parts included. Without one, each
  part is bounded as a request proxied to its service would be: timeouts.connect to connect, then
  timeouts.response for its reply. A part cut by a deadline, or by the client leaving, closes its connection.
- Parts are sent only: Host (the backend), Accept: application/json, X-Request-ID (the client's, or a new
  one), traceparent and tracestate as the client sent them, X-Consumer (the consumer auth found),
  X-Forwarded-For/-Proto/-Host as the proxy writes them (lbtui.http.x_forwarded), and the route's
  `request_headers.set`. Nothing else of the client's: no cookies, no Authorization.
- The aggregate reaches the request, the engine and the backends only through AggregateRequest (the proxy's
  Exchange implements it, fetching with the engine's KeepAlivePool): the gateway never imports the proxy.
- An object reply is shaped by `allow` (keep only these top-level fields) or `deny` (drop these), then
  `rename`; an array reply goes under its group as it came.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from lbtui.config import AggregatePart, RouteConfig, aggregate_path_pieces
from lbtui.gateway.auth import CONSUMER_HEADER
from lbtui.http import field_value

if TYPE_CHECKING:
    from lbtui.core.model import Backend, Service
    from lbtui.gateway.routing import CompiledRoute

log = logging.getLogger("lbtui")

MAX_BODY = 8 * 1024 * 1024  # a part's reply body; larger fails the part
COMPLETED = b"X-Aggregate-Completed"
JSON_TYPE = (b"Content-Type", b": ", b"application/json", b"\r\n")  # a header field as respond_local takes it
DEFAULT_METHODS = frozenset({b"GET", b"HEAD"})
# Request headers the gateway writes itself: a route's request_headers.set does not replace them.
_OWN = frozenset({b"host", b"x-consumer", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# A path's own characters stay as written; the rest (non-ASCII, `"<>\^`{|}`) is percent-encoded.
_LITERAL_SAFE = "!#$%&'()*+,/:;=?@[]~"

Placeholder = tuple[str, tuple[str, ...]]  # (group, field names)


class PartReply(Protocol):
    """A part's reply, read whole."""

    @property
    def status(self) -> int: ...

    @property
    def body(self) -> bytes: ...

    def header(self, name: bytes) -> bytes | None: ...  # the first value of a (lower-case) header, or None


class AggregateRequest(Protocol):
    """What an aggregate needs of the request it answers (the proxy's Exchange is one)."""

    @property
    def method(self) -> bytes: ...

    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...  # as the client sent them, its Host in normal form

    @property
    def consumer(self) -> bytes: ...  # who auth said the client is (b"": no one)

    @property
    def route(self) -> CompiledRoute | None: ...

    @property
    def done(self) -> bool: ...  # answered, or its client left

    def client_address(self) -> bytes: ...  # the client's (a trusted proxy's X-Forwarded-For, else the peer)

    # X-Forwarded-* as the proxy writes them (lbtui.http.x_forwarded).
    def forwarded_fields(self) -> bytes: ...

    def new_request_id(self) -> bytes: ...

    def now(self) -> float: ...  # the engine's clock

    def fetch(
        self,
        backend: Backend,
        request: bytes,
        *,
        max_body: int,
        connect_timeout: float | None,
        reply_timeout: float | None,
        idle_timeout: float,
    ) -> Awaitable[PartReply | None]:
        """Send `request` (a whole GET head) to `backend` and read its reply whole: None when no connection could
        be made (nothing was sent); an OSError when the reply failed, missed `reply_timeout` or passed
        `max_body`."""
        ...

    def respond_error(
        self, status: int, detail: str, retry_after: bool = False, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None: ...

    def respond_local(self, status: int, fields: list[bytes], body: bytes, route: CompiledRoute) -> None: ...


class PartFailed(Exception):
    """A part of an aggregate failed; the message says why (logged at debug level)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True, slots=True)
class Part:
    group: str
    service_name: str
    service: Service | None
    pieces: tuple[bytes | Placeholder, ...]  # the path: text, and placeholders filled from earlier replies
    after: tuple[str, ...]  # the groups whose replies it waits for
    allow: frozenset[str]
    deny: frozenset[str]
    rename: tuple[tuple[str, str], ...]

    @classmethod
    def compile(cls, config: AggregatePart, services: Mapping[str, Service]) -> Part:
        pieces = tuple(
            quote(piece, safe=_LITERAL_SAFE).encode("ascii") if isinstance(piece, str) else piece
            for piece in aggregate_path_pieces(config.path)
        )
        after = tuple(dict.fromkeys(piece[0] for piece in pieces if isinstance(piece, tuple)))
        return cls(
            group=config.group,
            service_name=config.service,
            service=services.get(config.service),
            pieces=pieces,
            after=after,
            allow=frozenset(config.allow),
            deny=frozenset(config.deny),
            rename=config.rename,
        )

    def target(self, replies: Mapping[str, Any]) -> bytes:
        """The path to call, its placeholders filled in from earlier replies."""
        out = []
        for piece in self.pieces:
            if isinstance(piece, bytes):
                out.append(piece)
                continue
            group, names = piece
            shown = "{" + group + "." + ".".join(names) + "}"
            value = replies.get(group)
            for name in names:
                if not isinstance(value, dict) or name not in value:
                    raise PartFailed(f"{shown}: the reply of {group!r} has no such field")
                value = value[name]
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = value
            elif isinstance(value, int | float):
                text = json.dumps(value)
            else:
                raise PartFailed(f"{shown} is {type(value).__name__}, not a string or a number")
            if text in ("", ".", ".."):  # would be an empty or a dot segment: another path than meant
                raise PartFailed(f"{shown} is {text!r}, which cannot stand in a path")
            try:
                out.append(quote(text, safe="").encode("ascii"))
            except UnicodeEncodeError:
                raise PartFailed(f"{shown} is not valid text") from None
        return b"".join(out)

    def shape(self, value: Any) -> Any:
        """The reply as it goes into the merged object: allow or deny, then rename (objects only)."""
        if not isinstance(value, dict):
            return value  # an array: as it came (allow, deny and rename are about an object's fields)
        if self.allow:
            value = {k: v for k, v in value.items() if k in self.allow}
        elif self.deny:
            value = {k: v for k, v in value.items() if k not in self.deny}
        if self.rename:
            present = [(old, new) for old, new in self.rename if old in value]
            moved = {old for old, _ in present} | {new for _, new in present}
            renamed = {k: v for k, v in value.items() if k not in moved}
            for old, new in present:
                renamed[new] = value[old]  # a renamed field wins over one that had its new name
            value = renamed
        return value


class Aggregate:
    """A route's aggregate: its parts, compiled once; `answer` serves one request."""

    def __init__(self, route: RouteConfig, services: Mapping[str, Service]) -> None:
        self.name = route.name
        self.parts = tuple(Part.compile(part, services) for part in route.aggregate)
        self.timeout = route.timeout or 0.0
        self.methods = frozenset(m.encode() for m in route.match.methods) or DEFAULT_METHODS
        self.request_set = tuple(
            (k.encode(), v.encode()) for k, v in route.request_headers.set if k.lower().encode() not in _OWN
        )

    async def answer(self, exchange: AggregateRequest) -> None:
        """Call the parts and answer `exchange` with the merged reply (never raises but when cancelled)."""
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            if exchange.method not in self.methods:
                exchange.respond_error(
                    405, "an aggregate route takes GET and HEAD", extra=((b"Allow", b"GET, HEAD"),)
                )
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout if self.timeout else None
            headers = self.headers_for(exchange)
            replies: dict[str, Any] = {}
            controls: list[bytes] = []  # the parts' Cache-Control
            for part in self.parts:
                tasks[part.group] = loop.create_task(
                    self._call(part, exchange, headers, deadline, tasks, replies, controls)
                )
            await asyncio.wait(tasks.values())
            merged = {
                part.group: part.shape(replies[part.group]) for part in self.parts if part.group in replies
            }
            if not merged:
                exchange.respond_error(
                    502, "no part of the aggregate answered", extra=((COMPLETED, b"false"),)
                )
                return
            completed = b"true" if len(merged) == len(self.parts) else b"false"
            body = json.dumps(merged, separators=(",", ":")).encode()
            fields = [*JSON_TYPE, COMPLETED, b": ", completed, b"\r\n"]
            control = merged_cache_control(controls, completed == b"true")
            if control:
                fields += (b"Cache-Control", b": ", control, b"\r\n")
            route = exchange.route
            assert route is not None
            exchange.respond_local(200, fields, body, route)
        except asyncio.CancelledError:
            raise  # the client left, or the engine stops: the parts are cancelled below
        except Exception:
            log.exception("aggregate route %r failed", self.name)
            exchange.respond_error(502, "the aggregate could not be made")
        finally:
            for task in tasks.values():
                task.cancel()

    def headers_for(self, exchange: AggregateRequest) -> bytes:
        """The header fields every part of this request is sent (all but Host), each ending in CRLF."""
        headers = exchange.headers
        fields: list[tuple[bytes, bytes]] = [
            (b"Accept", b"application/json"),
            (b"X-Request-ID", field_value(headers, b"x-request-id") or exchange.new_request_id()),
        ]
        for name in (b"traceparent", b"tracestate"):
            value = field_value(headers, name)
            if value is not None:
                fields.append((name, value))
        if self.request_set:
            given = {name.lower() for name, _ in self.request_set}
            fields = [(n, v) for n, v in fields if n.lower() not in given]
            fields.extend(self.request_set)
        if exchange.consumer:
            fields.append((CONSUMER_HEADER, exchange.consumer))
        own = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
        return own + exchange.forwarded_fields() + b"\r\n"

    async def _call(
        self,
        part: Part,
        exchange: AggregateRequest,
        headers: bytes,
        deadline: float | None,
        tasks: Mapping[str, asyncio.Task[None]],
        replies: dict[str, Any],
        controls: list[bytes],
    ) -> None:
        """One part, start to end: its reply (shaped later) goes into `replies`; a failure is logged."""
        try:
            async with asyncio.timeout_at(deadline):
                if part.after:
                    # asyncio.wait, not await: a part cut short must not cancel the parts it waits for.
                    await asyncio.wait([tasks[group] for group in part.after])
                    for group in part.after:
                        if group not in replies:
                            raise PartFailed(f"it needs the reply of {group!r}, which failed")
                value, control = await self._request(part, exchange, headers, replies, deadline is None)
                replies[part.group] = value
                if control is not None:
                    controls.append(control)
        except TimeoutError:
            log.debug("aggregate %r: part %r missed the route's timeout", self.name, part.group)
        except (PartFailed, OSError) as error:  # (OSError: the reply failed, AggregateRequest.fetch)
            log.debug("aggregate %r: part %r failed: %s", self.name, part.group, error)

    async def _request(
        self,
        part: Part,
        exchange: AggregateRequest,
        headers: bytes,
        replies: Mapping[str, Any],
        own_timeout: bool,
    ) -> tuple[Any, bytes | None]:
        """The part's reply (parsed JSON) and its Cache-Control (None: it had none)."""
        service = part.service
        if service is None:
            raise PartFailed(f"no service named {part.service_name!r}")
        target = part.target(replies)
        key = (
            service.hash_key_of(exchange.client_address(), target, exchange.headers)
            if service.hashing
            else None
        )
        timeouts = service.config.timeouts
        tried: list[Backend] = []
        status = 0
        asked = exchange.now()
        try:
            while True:
                backend = service.pick(key, tried)
                if backend is None:
                    status = 503
                    if not tried:
                        service.unrouted += 1
                        raise PartFailed(f"no backend of service {service.name!r} is available")
                    raise PartFailed(f"no backend of service {service.name!r} could be reached")
                request = b"".join(
                    (
                        b"GET ",
                        target,
                        b" HTTP/1.1\r\nHost: ",
                        backend.address.encode(),
                        b"\r\n",
                        headers,
                        b"\r\n",
                    )
                )
                status = 0
                size = 0
                started = exchange.now()
                backend.in_flight += 1
                try:
                    reply = await exchange.fetch(
                        backend,
                        request,
                        max_body=MAX_BODY,
                        connect_timeout=timeouts.connect,
                        reply_timeout=service.response_timeout if own_timeout else None,
                        idle_timeout=timeouts.idle,
                    )
                    if reply is None:
                        backend.connect_failed()
                    else:
                        status = reply.status
                        size = len(reply.body)
                except asyncio.CancelledError:
                    if exchange.done:
                        status = 499  # the client left (a deadline counts as a failure: 0)
                    raise
                finally:
                    # Counted for its backend as a proxied request is; the room it leaves may serve the queue.
                    service.attempt_ended(backend, status, started, exchange.now(), size)
                if reply is None:
                    tried.append(backend)
                    continue  # nothing was sent: the next backend, as the proxy does
                break
        finally:
            # The part's answer, counted once for its service however many backends it tried.
            now = exchange.now()
            service.observe(status, now - asked, now)
        if not 200 <= status < 300:
            raise PartFailed(f"{backend.name} answered {status}")
        try:
            value = json.loads(reply.body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise PartFailed(f"{backend.name} answered with something that is not JSON") from None
        if not isinstance(value, dict | list):
            raise PartFailed(f"{backend.name} answered with JSON that is neither an object nor an array")
        return value, reply.header(b"cache-control")


def merged_cache_control(controls: list[bytes], complete: bool) -> bytes:
    """The merged reply's Cache-Control: no cache keeps a partial reply, nor one with a part that may not be
    kept (no-store, no-cache, private); else it is as fresh as its least fresh part (the least max-age)."""
    if not complete:
        return b"no-store"
    ages: list[int] = []
    for control in controls:
        for directive in control.lower().split(b","):
            name, _, value = directive.strip().partition(b"=")
            if name in (b"no-store", b"no-cache", b"private"):
                return b"no-store"
            if name in (b"max-age", b"s-maxage") and value.strip().strip(b'"').isdigit():
                ages.append(int(value.strip().strip(b'"')))
    return b"max-age=%d" % min(ages) if ages else b""
