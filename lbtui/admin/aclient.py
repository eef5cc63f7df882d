"""An asynchronous client of the admin API over httpx.AsyncClient, for `lbtui attach` (admin/remote.py).

It judges every answer as the synchronous client does (admin/client.py's ClientBase: the same header check,
identity, JSON, refusals and messages); only the transport differs.

Invariants:
- Every request runs under one deadline (`timeout`: connect, send, the whole answer); past it the request is
  abandoned and raises Unreachable. Connections are pooled and kept alive (httpx), at most MAX_CONNECTIONS.
- The first request identifies the API (`GET /api/v1/`), and so does the first request after a failure, and a
  change after IDLE_SECONDS without an answer: no change is sent to what was not identified since it last
  answered, and `identity` (its pid) says which server answers now. No answer is read without the
  `X-Lbtui-Admin` header.
- An answer httpx cannot read as HTTP (garbage, a connection closed at once) is looked at once more on a
  plain connection of its own, under the same deadline, to say what answered (its first bytes, or TLS).
- Requests from several tasks at once are fine (each names its actor); use it from one event loop.
- httpx (which imports rich) is imported by this module only: `lbtui ctl` never loads it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import httpx

from .client import (
    DEFAULT_TIMEOUT,
    ClientBase,
    ClientError,
    NotAdminApi,
    Unreachable,
    tls_probe_context,
)
from .identity import IDENTITY_PATH

MAX_CONNECTIONS: Final = 4  # the poller's reads and a change or two at once
IDLE_SECONDS: Final = (
    5.0  # a kept-alive connection unused this long is closed (the server may have closed it)
)
PROBE_BYTES: Final = 200  # what the second look at an answer that is not HTTP reads of it


class AsyncAdminClient(ClientBase):
    """The admin API at `url`, over a pool of kept-alive connections; aclose() at the end."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        actor: str = "key",
        timeout: float = DEFAULT_TIMEOUT,
        identify: bool = True,
    ) -> None:
        super().__init__(url, token, actor, timeout, identify)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_CONNECTIONS,
                keepalive_expiry=IDLE_SECONDS,
            ),
            trust_env=False,  # the admin API is reached directly: no proxy from the environment
            follow_redirects=False,
        )
        self._identifying: asyncio.Lock | None = None
        self._trusted_at: float | None = None  # when an answer last came with the header, since the identity

    async def aclose(self) -> None:
        await self._http.aclose()

    async def identify(self) -> dict[str, Any]:
        """Ask `GET /api/v1/` who answers: its identity, or NotAdminApi (ApiError for a token or Host refusal)."""
        was_the_api = self._answered
        value = await self._exchange("GET", IDENTITY_PATH, None, self.actor)
        return self.identified(value, was_the_api)

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, actor: str | None = None
    ) -> Any:
        """One request; the answer's JSON (or text, for non-JSON answers). Raises ClientError.

        Identifies first: the first request, any request after a failure (what answers may be another server
        now), and a change without an answer in the last IDLE_SECONDS."""
        if self._identify and (
            self._trusted_at is None or (method not in ("GET", "HEAD") and not self._trusted())
        ):
            await self._identify_once()
        return await self._exchange(method, path, body, actor or self.actor)

    def _trusted(self) -> bool:
        return self._trusted_at is not None and time.monotonic() - self._trusted_at < IDLE_SECONDS

    async def _identify_once(self) -> None:
        """Identify, once for all the tasks that want it at the same time."""
        if self._identifying is None:
            self._identifying = asyncio.Lock()
        started = time.monotonic()
        async with self._identifying:
            if self._trusted_at is not None and self._trusted_at >= started and self.identity is not None:
                return  # another task identified it while this one waited
            await self.identify()
            self._trusted_at = time.monotonic()

    async def _exchange(self, method: str, path: str, body: dict[str, Any] | None, actor: str) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._send(method, path, body, actor)
        except TimeoutError:
            self._trusted_at = None
            raise self.silent() from None
        except NotAdminApi:
            self._trusted_at = None
            raise
        except Unreachable:
            self._trusted_at = None
            raise

    async def _send(self, method: str, path: str, body: dict[str, Any] | None, actor: str) -> Any:
        headers, data = self.headers(actor, body)
        request = self._http.build_request(method, path, headers=headers, content=data)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TimeoutException:
            raise self.silent() from None
        except httpx.RemoteProtocolError:
            raise await self._second_look() from None
        except httpx.ProtocolError as error:  # a line too long, too many header lines
            raise self._not_the_api(f"its answer is not HTTP this client reads: {error}") from None
        except (httpx.TransportError, OSError) as error:
            raise self.unreachable(_cause(error)) from None
        try:
            refused = self.header_error(response.status_code, response.headers.get)
            if refused is not None:
                raise refused  # its body is not read: it may be anything, of any length
            try:
                raw = await response.aread()
            except httpx.TimeoutException:
                raise Unreachable(
                    f"{self.url} did not send its whole answer within {self.timeout:g}s"
                ) from None
            except (httpx.HTTPError, OSError) as error:
                raise Unreachable(f"the answer from {self.url} broke off: {_cause(error)}") from None
        finally:
            await response.aclose()
        if self._trusted_at is not None:
            self._trusted_at = time.monotonic()
        content_type = response.headers.get("Content-Type", "")
        return self.decode(
            f"{method} {path}", response.status_code, response.reason_phrase, content_type, raw
        )

    async def _second_look(self) -> ClientError:
        """What answered, when httpx could not read it as HTTP: its first line, TLS, or nothing at all."""
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as error:
            return self.unreachable(error)
        try:
            writer.write(f"GET {IDENTITY_PATH} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            await writer.drain()
            first = await reader.read(PROBE_BYTES)
        except OSError as error:
            return self.unreachable(error)
        finally:
            writer.close()
        if first.startswith(b"HTTP/"):  # it speaks HTTP after all: the connection broke off by chance
            return Unreachable(f"the connection to {self.url} broke off before its answer")
        if first:
            return self.not_http(first.split(b"\n", 1)[0].decode("latin-1"))
        return self.closed_at_once(await self._speaks_tls())

    async def _speaks_tls(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(
                self.host, self.port, ssl=tls_probe_context(), server_hostname=self.host
            )
        except (OSError, ValueError):
            return False
        writer.close()
        return True


def _cause(error: BaseException) -> BaseException:
    """The OSError under an httpx error (its strerror is the reason worth saying), else the error itself."""
    seen = error
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
        if isinstance(seen, OSError):
            return seen
    return error
