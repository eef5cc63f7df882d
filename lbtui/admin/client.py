"""A small synchronous client of the admin API, for `lbtui ctl`: stdlib http.client only (httpx imports rich).
ClientBase is what it shares with the asynchronous client of `lbtui attach` (admin/aclient.py, over httpx): the
URL, the request's headers, and every judgement of an answer (header, identity, JSON, the messages), so that
both say the same of the same answer.

Every failure is a ClientError with a message fit for a user, in one line that names the URL:
- ApiError: lbtui's admin API answered an error (its message);
- Unreachable: no answer at all (nothing listens, the connection broke, nothing came within the timeout);
- NotAdminApi: something answered that is not lbtui's admin API, or not a version this client speaks;
- BadAnswer: the API's answer is not JSON of the shape asked for (a proxy in between, a bug).

Invariants: the first request of a client is `GET /api/v1/` (identify), and so is the first on a new
connection when it would carry a change; no answer is read, let alone acted on, without the `X-Lbtui-Admin`
header that names a version this client speaks (admin/identity.py).
The reads that have a shape (`state`, `backend`, `events`, ...) return the JSON only after it was read back
into the core's views with admin/schema.py, so that their callers can trust its keys.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Callable
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlsplit

import lbtui
from lbtui.config import AdminConfig

from .identity import (
    API_VERSION,
    HEADER,
    IDENTITY_PATH,
    TLS_ANSWER,
    VERSIONS,
    describe_answer,
    describe_bytes,
    header_versions,
    is_identity,
)
from .schema import backend_from_json, event_from_json, request_from_json, snapshot_from_json

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 10.0
# What reading JSON of another shape into a view raises (a missing key, a string where a list was wanted...).
SHAPE_ERRORS: Final = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def default_url() -> str:
    """The admin API's default address ([admin].bind's default) as a URL."""
    config = AdminConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


class ClientError(Exception):
    """A request to the admin API failed; the message says why."""


class ApiError(ClientError):
    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body  # the answer's JSON (a refused reload's `issues` are in it)


class Unreachable(ClientError):
    pass


class NotAdminApi(ClientError):
    """What answered at the URL is not lbtui's admin API (or speaks none of this client's versions)."""


class BadAnswer(ClientError):
    """lbtui's admin API answered, with something else than JSON of the shape asked for."""


def segment(name: str) -> str:
    """A name as one path segment."""
    return quote(name, safe="")


def shape_error(error: Exception) -> str:
    """What was wrong with a JSON value, from what reading it raised."""
    if isinstance(error, KeyError):
        return f"no {error.args[0]!r}" if error.args else "a key missing"
    return str(error) or error.__class__.__name__


def reload_answer(value: Any) -> None:
    """A reload's answer, checked: a summary, and lists of lines."""
    str(value["summary"])
    for key in ("changes", "warnings", "restart_needed"):
        if not isinstance(value.get(key, []), list):
            raise TypeError(f"{key!r} is not a list")


def _backend(value: Any) -> None:
    backend_from_json(value)
    if isinstance(value["in_flight"], bool) or not isinstance(value["in_flight"], int):
        raise TypeError("'in_flight' is not a whole number")


def _events(value: Any) -> None:
    for event in value["events"]:
        event_from_json(event)


def _requests(value: Any) -> None:
    for request in value["requests"]:
        request_from_json(request)


class ClientBase:
    """What the admin API's clients share (this synchronous one, and admin/aclient.py's over httpx for
    `lbtui attach`): the URL, what a request carries, and how an answer is judged (its header, its JSON, the
    identity), so that both say the same thing of the same answer."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        actor: str = "ctl",
        timeout: float = DEFAULT_TIMEOUT,
        identify: bool = True,
    ) -> None:
        try:
            parts = urlsplit(url if "://" in url else f"http://{url}")
        except ValueError as error:  # e.g. "http://[::1" (Invalid IPv6 URL)
            raise ClientError(f"the admin URL must be http://HOST:PORT, got {url!r} ({error})") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ClientError(f"the admin URL must be http://HOST:PORT, got {url!r}")
        try:
            self.port = parts.port or 80
        except ValueError:
            raise ClientError(f"the admin URL has a bad port: {url!r}") from None
        self.host = parts.hostname
        self.url = f"http://{parts.netloc}"
        self.token = token
        self.actor = actor
        self.timeout = timeout
        self.identity: dict[str, Any] | None = None  # GET /api/v1/'s answer, once asked
        self._identify = identify
        self._answered = False  # something has answered with the header: a later answer without it is news

    def headers(self, actor: str, body: dict[str, Any] | None) -> tuple[dict[str, str], bytes | None]:
        """A request's headers and its body's bytes."""
        headers = {"X-Lbtui-Actor": actor, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return headers, data

    def header_error(self, status: int, header: Callable[[str], str | None]) -> NotAdminApi | None:
        """NotAdminApi unless the answer (its status, its headers by name) carries the header with a version
        this client speaks; None when it does."""
        value = header(HEADER)
        if value is None:
            found = describe_answer(status, header("Content-Type") or "", header("Server") or "")
            return self._not_the_api(f"it answered {found}")
        versions = header_versions(value)
        if versions is None or not set(versions) & set(VERSIONS):
            spoken = ", ".join(str(v) for v in versions) if versions else repr(value[:20])
            return NotAdminApi(
                f"{self.url} is an lbtui admin API of version {spoken}; this lbtui ({lbtui.__version__}) "
                f"speaks version {API_VERSION}: use the lbtui release of the server"
            )
        self._answered = True
        return None

    def decode(self, what: str, status: int, reason: str, content_type: str, raw: bytes) -> Any:
        """An answer's body (to `what`, "METHOD PATH"): its JSON (or text, for non-JSON answers); ApiError for
        an error status, BadAnswer for bad JSON."""
        value: Any = raw.decode("utf-8", "replace")
        if content_type.startswith("application/json"):
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):
                raise BadAnswer(f"{self.url} answered {what} with bad JSON ({status})") from None
        if status >= 400:
            message = value.get("error") if isinstance(value, dict) else None
            raise ApiError(status, str(message or f"{status} {reason}"), value)
        return value

    def identified(self, value: Any, was_the_api: bool) -> dict[str, Any]:
        """`GET /api/v1/`'s answer, if it is an identity (kept); else NotAdminApi."""
        if not is_identity(value):
            self._answered = was_the_api  # the header alone does not make it the API
            raise self._not_the_api(f"GET {IDENTITY_PATH} answered JSON of another shape")
        identity: dict[str, Any] = value
        self.identity = identity
        return identity

    def unreachable(self, error: BaseException) -> Unreachable:
        return Unreachable(f"cannot reach the admin API at {self.url}: {_reason(error)}")

    def silent(self) -> Unreachable:
        return Unreachable(
            f"no answer from {self.url} within {self.timeout:g}s (it took the connection and said "
            "nothing: is it an lbtui admin API?)"
        )

    def checked(self, what: str, value: Any, check: Callable[[Any], object]) -> Any:
        """`value` (the answer to `what`) once `check(value)` read it without error; else BadAnswer."""
        self.parse(what, value, check)
        return value

    def parse(self, what: str, value: Any, parse: Callable[[Any], T]) -> T:
        """`parse(value)`, `value` being the answer to `what`; BadAnswer if it raises one of SHAPE_ERRORS."""
        try:
            return parse(value)
        except SHAPE_ERRORS as error:
            raise BadAnswer(
                f"{self.url} answered {what} with JSON of another shape ({shape_error(error)})"
            ) from None

    def closed_at_once(self, speaks_tls: bool) -> NotAdminApi:
        """What a new connection closed before any answer is: a TLS server does that to plain HTTP."""
        if speaks_tls:
            return self._not_the_api(f"it answered {TLS_ANSWER}")
        return self._not_the_api("it closed the connection without an answer")

    def not_http(self, line: str) -> NotAdminApi:
        """An answer whose first line is not HTTP's."""
        return self._not_the_api(f"it answered {describe_bytes(line)}")

    def _not_the_api(self, found: str) -> NotAdminApi:
        now = "no longer" if self._answered else "not"  # it was the API, earlier in this process
        return NotAdminApi(f"{self.url} is {now} an lbtui admin API ({found})")


class AdminClient(ClientBase):
    """One kept-alive connection to the admin API at `url`; from one thread. `identify=False` skips the
    identifying request (a second client of a URL another one identified); the header is checked anyway."""

    # `ctl drain --wait`: reads in a row with nothing in flight that make a backend drained (the engine counts
    # its requests exactly: one).
    quiet_reads = 1

    def __init__(
        self,
        url: str,
        token: str | None = None,
        actor: str = "ctl",
        timeout: float = DEFAULT_TIMEOUT,
        identify: bool = True,
    ) -> None:
        super().__init__(url, token, actor, timeout, identify)
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def identify(self) -> dict[str, Any]:
        """Ask `GET /api/v1/` who answers: its identity, or NotAdminApi (ApiError for a token or Host refusal)."""
        was_the_api = self._answered
        return self.identified(self._exchange("GET", IDENTITY_PATH, None), was_the_api)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; the answer's JSON (or text, for non-JSON answers). Raises ClientError.

        The first request identifies the API; so does a change that would open a new connection (the server
        may have been replaced since): no change is sent to what was not identified. A read needs no more
        than the header its answer must carry."""
        if self._identify and (
            self.identity is None or (self._connection is None and method not in ("GET", "HEAD"))
        ):
            self.identify()
        return self._exchange(method, path, body)

    def read(self, path: str, check: Callable[[Any], object]) -> Any:
        """GET `path`: its JSON once `check` read it without error (else BadAnswer)."""
        return self.checked(f"GET {path}", self.request("GET", path), check)

    def _exchange(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        headers, data = self.headers(self.actor, body)
        for attempt in (1, 2):
            reused = self._connection is not None
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                try:
                    self._connection.connect()
                except OSError as error:
                    self.close()
                    raise self.unreachable(error) from None
            try:
                self._connection.request(method, path, body=data, headers=headers)
                response = self._connection.getresponse()
            except TimeoutError:
                self.close()
                raise self.silent() from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
                self.close()
                if reused and attempt == 1 and method == "GET":
                    continue  # a kept-alive connection the server had closed: once more, on a new one
                if reused or not isinstance(error, http.client.RemoteDisconnected):
                    raise self.unreachable(error) from None
                raise self._closed_at_once() from None
            except http.client.BadStatusLine as error:
                self.close()
                line = str(error.args[0]) if error.args else ""
                raise self.not_http(line) from None
            except http.client.HTTPException as error:  # a line too long, too many header lines
                self.close()
                raise self._not_the_api(f"its answer is not HTTP this client reads: {error}") from None
            except OSError as error:
                self.close()
                raise self.unreachable(error) from None
            break
        self._check_header(response)
        try:
            raw = response.read()
        except TimeoutError:
            self.close()
            raise Unreachable(f"{self.url} did not send its whole answer within {self.timeout:g}s") from None
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise Unreachable(f"the answer from {self.url} broke off: {_reason(error)}") from None
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        content_type = response.getheader("Content-Type", "")
        return self.decode(f"{method} {path}", response.status, response.reason, content_type, raw)

    def _check_header(self, response: http.client.HTTPResponse) -> None:
        """NotAdminApi unless the answer carries the header with a version this client speaks."""
        error = self.header_error(response.status, response.getheader)
        if error is not None:
            response.close()  # its body is not read: it may be anything, of any length
            self.close()
            raise error

    def _closed_at_once(self) -> ClientError:
        """A new connection closed before any answer: a TLS server does that to plain HTTP; say if it is one."""
        try:
            with (
                socket.create_connection((self.host, self.port), timeout=self.timeout) as raw,
                tls_probe_context().wrap_socket(raw, server_hostname=self.host),
            ):
                pass
        except (OSError, ValueError):
            return self.closed_at_once(speaks_tls=False)
        return self.closed_at_once(speaks_tls=True)

    # -- the API, one method per endpoint (reads and changes checked for their shape) ---------------------
    def state(self) -> Any:
        return self.read("/api/v1/state", snapshot_from_json)

    def backend(self, name: str) -> Any:
        return self.read(f"/api/v1/backends/{segment(name)}", _backend)

    def events(self, limit: int = 100) -> Any:
        return self.read(f"/api/v1/events?limit={limit}", _events)

    def requests(self, limit: int = 20) -> Any:
        return self.read(f"/api/v1/requests?limit={limit}", _requests)

    def change(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A change: its audit event's JSON."""
        return self.checked(f"{method} {path}", self.request(method, path, body), event_from_json)

    def set_state(self, name: str, action: str) -> Any:
        return self.change("POST", f"/api/v1/backends/{segment(name)}/{action}")

    def set_weight(self, name: str, weight: int) -> Any:
        return self.change("PUT", f"/api/v1/backends/{segment(name)}/weight", {"weight": weight})

    def add_backend(self, service: str, name: str, address: str, group: str, weight: int) -> Any:
        body = {"name": name, "address": address, "group": group, "weight": weight}
        return self.change("POST", f"/api/v1/services/{segment(service)}/backends", body)

    def remove_backend(self, name: str) -> Any:
        return self.change("DELETE", f"/api/v1/backends/{segment(name)}")

    def set_algorithm(self, service: str, algorithm: str) -> Any:
        return self.change("PUT", f"/api/v1/services/{segment(service)}/algorithm", {"algorithm": algorithm})

    def set_split(self, service: str, split: dict[str, int]) -> Any:
        return self.change("PUT", f"/api/v1/services/{segment(service)}/split", dict(split))

    def flip(self, service: str) -> Any:
        return self.change("POST", f"/api/v1/services/{segment(service)}/flip")

    def reload(self) -> Any:
        return self.checked("POST /api/v1/reload", self.request("POST", "/api/v1/reload"), reload_answer)

    def start_ramp(self, service: str) -> Any:
        return self.change("POST", f"/api/v1/services/{segment(service)}/ramp")

    def abort_ramp(self, service: str) -> Any:
        return self.change("DELETE", f"/api/v1/services/{segment(service)}/ramp")

    def undo(self) -> Any:
        return self.change("POST", "/api/v1/undo")


def tls_probe_context() -> ssl.SSLContext:
    """A TLS client context that only learns whether a server speaks TLS (it trusts nothing it meets)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # not to trust it: only to learn whether it speaks TLS
    return context


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or error.__class__.__name__
