"""A small synchronous client of the admin API, for `lbtui ctl`: stdlib http.client only (httpx imports rich).

Every failure is one of two exceptions with a message fit for a user: ApiError (the API answered an error)
and Unreachable (no answer at all).
"""

from __future__ import annotations

import http.client
import json
from typing import Any, Final
from urllib.parse import quote, urlsplit

from lbtui.config import AdminConfig

DEFAULT_TIMEOUT: Final = 10.0


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


def segment(name: str) -> str:
    """A name as one path segment."""
    return quote(name, safe="")


class AdminClient:
    def __init__(
        self, url: str, token: str | None = None, actor: str = "ctl", timeout: float = DEFAULT_TIMEOUT
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
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; the answer's JSON (or text, for non-JSON answers). Raises ClientError."""
        headers = {"X-Lbtui-Actor": self.actor, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._connection.request(method, path, body=data, headers=headers)
                response = self._connection.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
                self.close()
                if attempt == 1 and method == "GET":
                    continue  # a kept-alive connection the server had closed: once more, on a new one
                raise Unreachable(f"cannot reach the admin API at {self.url}: {error}") from None
            except (OSError, http.client.HTTPException) as error:
                self.close()
                reason = getattr(error, "strerror", None) or str(error) or error.__class__.__name__
                raise Unreachable(f"cannot reach the admin API at {self.url}: {reason}") from None
            break
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        content_type = response.getheader("Content-Type", "")
        value: Any = raw.decode("utf-8", "replace")
        if content_type.startswith("application/json"):
            try:
                value = json.loads(raw)
            except ValueError:
                raise ApiError(
                    response.status, f"the admin API answered bad JSON ({response.status})"
                ) from None
        if response.status >= 400:
            message = value.get("error") if isinstance(value, dict) else None
            raise ApiError(response.status, str(message or f"{response.status} {response.reason}"), value)
        return value

    # -- the API, one method per endpoint --------------------------------------------------------------------
    def state(self) -> Any:
        return self.request("GET", "/api/v1/state")

    def backend(self, name: str) -> Any:
        return self.request("GET", f"/api/v1/backends/{segment(name)}")

    def events(self, limit: int = 100) -> Any:
        return self.request("GET", f"/api/v1/events?limit={limit}")

    def set_state(self, name: str, action: str) -> Any:
        return self.request("POST", f"/api/v1/backends/{segment(name)}/{action}")

    def set_weight(self, name: str, weight: int) -> Any:
        return self.request("PUT", f"/api/v1/backends/{segment(name)}/weight", {"weight": weight})

    def add_backend(self, service: str, name: str, address: str, group: str, weight: int) -> Any:
        body = {"name": name, "address": address, "group": group, "weight": weight}
        return self.request("POST", f"/api/v1/services/{segment(service)}/backends", body)

    def remove_backend(self, name: str) -> Any:
        return self.request("DELETE", f"/api/v1/backends/{segment(name)}")

    def set_algorithm(self, service: str, algorithm: str) -> Any:
        return self.request("PUT", f"/api/v1/services/{segment(service)}/algorithm", {"algorithm": algorithm})

    def set_split(self, service: str, split: dict[str, int]) -> Any:
        return self.request("PUT", f"/api/v1/services/{segment(service)}/split", dict(split))

    def flip(self, service: str) -> Any:
        return self.request("POST", f"/api/v1/services/{segment(service)}/flip")

    def reload(self) -> Any:
        return self.request("POST", "/api/v1/reload")

    def start_ramp(self, service: str) -> Any:
        return self.request("POST", f"/api/v1/services/{segment(service)}/ramp")

    def abort_ramp(self, service: str) -> Any:
        return self.request("DELETE", f"/api/v1/services/{segment(service)}/ramp")

    def undo(self) -> Any:
        return self.request("POST", "/api/v1/undo")

    def requests(self, limit: int = 20) -> Any:
        return self.request("GET", f"/api/v1/requests?limit={limit}")
