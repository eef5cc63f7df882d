"""The heads the proxy writes: the request's for the backend, and the Connection field of the client's response.

A request's head is filtered and written again for its backend (RFC 9110 7.6.1: hop-by-hop fields out;
X-Forwarded-*, Forwarded and X-Request-ID in; the Host in normal form; Content-Length in canonical digits;
the sticky cookie and a route's removed fields out), in three steps:

1. `filter_headers` reads the client's fields once: the body's framing, refusals (two Hosts, no Host in
   HTTP/1.1, a transfer coding other than chunked) and the filtered fields (`middle`).
2. `build_upstream_head` keeps that result per client connection while the next request's fields are the
   same (a keep-alive client mostly sends the same headers again), so step 1 runs once per connection.
3. `compose_request` (or `rewrite_for`, for a route that changes the request) writes the request line, the
   filtered fields and what the proxy adds: the bytes sent to the backend (`Exchange.upstream_request`).

`connection_field` is the one place that decides whether the client's connection ends after a response,
for every response: a backend's (Exchange.upstream_head), one made here (respond_local) and an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbtui.gateway.auth import CONSUMER_HEADER
from lbtui.gateway.routing import rewrite_target, set_headers, strip_prefix
from lbtui.gateway.sticky import without_cookie
from lbtui.http import (
    CHUNKED,
    HOP_BY_HOP,
    LENGTH,
    NEVER_CONNECTION_NAMED,
    NO_BODY,
    PLAIN_CONNECTION,
    SET_BY_PROXY,
    connection_tokens,
    field_value,
    forwarded_element,
    normal_host,
    protocol_names,
    without_fields,
    x_forwarded,
)

if TYPE_CHECKING:
    from lbtui.gateway.routing import CompiledRoute
    from lbtui.proxy.exchange import Exchange

CLOSE: bytes = b"Connection: close\r\n"
KEEP_ALIVE: bytes = b"Connection: keep-alive\r\n"


def connection_field(ex: Exchange) -> bytes:
    """The Connection field of the response to `ex` (b"": none needed), deciding whether the client's
    connection ends after it (`close_after`): when the client or the response said so, when the engine
    stops, or when the response comes before the request was read whole (its unread body cannot be told
    from a next request). An HTTP/1.0 client is told when the connection stays open."""
    if not ex.request_done and ex.req_framing != NO_BODY:
        ex.close_after = True
    if ex.close_after or not ex.keep_alive or ex.client.engine.closing:
        ex.close_after = True
        return CLOSE
    if ex.version == "1.0":
        return KEEP_ALIVE
    return b""


def build_upstream_head(ex: Exchange, cache: bool = True) -> None:
    """Re-serialise the request for the backend: hop-by-hop headers out, forwarding headers in.

    A client on a keep-alive connection mostly sends the same headers again and again: the filtered
    headers are kept per connection and reused while the next request's headers are equal.
    """
    client = ex.client
    headers = ex.headers
    single = client.engine.router.single
    strip = single.sticky_cookie() if single is not None and single.config.sticky is not None else b""
    cached = client.head_cache
    if cache and cached is not None and cached[0] == headers and cached[5] == strip and not ex.upgrade:
        middle, has_request_id, ex.req_framing, ex.content_length = cached[1:5]
        # The client address its X-Forwarded-For gave (trusted peers): that request's, not the address of
        # whatever request was filtered last on this connection without being kept (a Host rewritten in
        # normal form, HTTP/1.0): a trusted proxy sends many clients' requests on one connection.
        client.forwarded_client = cached[6]
    else:
        ex.strip_cookie = strip
        middle, has_request_id = filter_headers(ex)
        if (
            cache
            and not ex.upgrade
            and ex.refused is None
            and ex.version == "1.1"
            and ex.headers is headers  # (not when its Host was rewritten in normal form)
        ):
            client.head_cache = (
                headers,
                middle,
                has_request_id,
                ex.req_framing,
                ex.content_length,
                strip,
                client.forwarded_client,
            )
    if client.trusted is not None:
        ex.client_addr = client.forwarded_client
    if client.engine.router.single is not None:
        compose_request(ex, middle, has_request_id)
    else:  # composed once its route is known (start): a route may write the request again
        ex.middle = middle
        ex.has_request_id = has_request_id


def compose_request(ex: Exchange, middle: bytes, has_request_id: bool, consumer: bytes = b"") -> None:
    """The request line and the filtered headers (`middle`), an X-Request-ID if it had none, and the
    consumer auth named: the request's head for the backend."""
    if has_request_id and not consumer:
        ex.upstream_request = b"".join((ex.method, b" ", ex.url, b" HTTP/1.1\r\n", middle, b"\r\n\r\n"))
        return
    parts = [ex.method, b" ", ex.url, b" HTTP/1.1\r\n", middle]
    if not has_request_id:
        request_id = ex.request_id = ex.client.engine.request_ids.next()
        parts += (b"\r\nX-Request-ID: ", request_id)
    if consumer:  # after the filter, which drops any X-Consumer a client sent
        parts += (b"\r\n", CONSUMER_HEADER, b": ", consumer)
    parts.append(b"\r\n\r\n")
    ex.upstream_request = b"".join(parts)


def filter_headers(ex: Exchange) -> tuple[bytes, bool]:
    """The request's headers for the backend (no request line, no final CRLF), and whether it had an id.

    Also sets the request's body framing from Transfer-Encoding and Content-Length, and puts its Host in
    normal form (http.normal_host) in `headers`, so that routing sees what the backend gets.
    """
    client = ex.client
    dropped = HOP_BY_HOP
    parts: list[bytes] = []
    forwarded_for = None
    forwarded = None
    host = None
    request_id = None
    connection = None
    settings = None
    framing = NO_BODY
    hosts = 0
    strip = ex.strip_cookie
    for name, value in ex.headers:
        lname = name.lower()
        if lname in dropped:
            if lname == b"connection":
                connection = value if connection is None else connection + b"," + value
            elif lname == b"transfer-encoding":
                framing = CHUNKED
                if value.strip().lower() != b"chunked":  # the parser made sure chunked is last, and once
                    coding = value.decode("latin-1")
                    ex.refused = (
                        501,
                        f"the transfer coding {coding!r} is not supported (only chunked)",
                    )
            continue  # (Upgrade too: the protocols its route tunnels are written below, upgrade_offer)
        if lname == b"content-length":
            if value[:1] == b"0" and len(value) > 1:
                value = b"%d" % int(value)  # `005` is 5: the backend gets the number, not the spelling
            if framing == NO_BODY and value != b"0":
                framing = LENGTH
                ex.content_length = int(value)  # digits only: the parser refused anything else
        if lname in SET_BY_PROXY:
            if lname == b"http2-settings":
                settings = value
            continue
        if strip and lname == b"cookie":
            value = without_cookie(value, strip)  # sticky sessions: the backend never sees ours
            if not value:
                continue
        if lname == b"x-forwarded-for":
            # Believed only from a trusted proxy (listener trusted_proxies); anyone else's is dropped.
            if client.trusted is not None:
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            continue
        if lname == b"forwarded":  # RFC 7239: the same as X-Forwarded-For
            if client.trusted is not None:
                forwarded = value if forwarded is None else forwarded + b", " + value
            continue
        if lname == b"host":
            hosts += 1
            if hosts > 1:
                ex.refused = (400, "more than one Host header field")
            else:
                normal = normal_host(value)
                if normal is None:
                    ex.refused = (400, "the Host header field is not one valid host[:port]")
                elif normal != value:
                    ex.headers = [(n, normal if n.lower() == b"host" else v) for n, v in ex.headers]
                    value = normal
            host = value
        elif lname == b"x-request-id":
            request_id = value
        parts += (name, b": ", value, b"\r\n")
    if connection is not None and connection.lower() not in PLAIN_CONNECTION:
        named = connection_tokens(connection) - dropped - NEVER_CONNECTION_NAMED
        if named:  # headers the client marked as for this connection only: drop them too
            parts = without_fields(parts, named, 0)
    ex.req_framing = framing
    if host is None:
        if ex.version == "1.1":
            ex.refused = (400, "an HTTP/1.1 request needs a Host header field")
        else:  # HTTP/1.0 may leave it out; forwarded as HTTP/1.1, which must have one (empty: RFC 9112 3.2)
            parts.append(b"Host: \r\n")
    peer = client.peer_host
    if client.trusted is not None:
        client.forwarded_client = client.trusted.client_address(forwarded_for, peer)
    parts.append(x_forwarded(peer, forwarded_for, client.tls, host))
    if client.send_forwarded:
        own = forwarded_element(peer, client.scheme, host)
        parts += (b"\r\nForwarded: ", own if forwarded is None else forwarded + b", " + own)
    elif forwarded is not None:
        parts += (b"\r\nForwarded: ", forwarded)
    if ex.req_framing == CHUNKED:
        parts.append(b"\r\nTransfer-Encoding: chunked")
    offer = ex.upgrade_offer
    if offer:
        if settings is not None and b"h2c" in protocol_names(offer):
            parts += (b"\r\nConnection: upgrade, HTTP2-Settings\r\nHTTP2-Settings: ", settings)
        else:
            parts.append(b"\r\nConnection: upgrade")
        parts += (b"\r\nUpgrade: ", offer)
    return b"".join(parts), request_id is not None


def rewrite_for(ex: Exchange, route: CompiledRoute, consumer: bytes = b"") -> None:
    """The route's strip_prefix, request header changes and authenticated consumer: the request for the
    backend is written again (the API key itself is not passed on)."""
    if route.strip is not None:
        ex.url = strip_prefix(ex.url, route.strip, route.fold)
    if route.rewrite is not None or route.add_query:
        ex.url = rewrite_target(ex.url, route.rewrite, route.add_query)
    client = ex.client
    original = ex.headers
    cached = client.rewrite_cache
    if cached is not None and cached[0] is route and cached[1] == original and not ex.upgrade:
        # The same headers on this connection to the same route as last time: filtered as then.
        ex.headers, middle, has_request_id = cached[2], cached[3], cached[4]
    else:
        remove = route.request_remove
        if route.api_key is not None:
            remove = remove | {route.api_key}
        if remove:
            ex.headers = set_headers(original, remove, route.request_set)
        middle, has_request_id = filter_headers(ex)
        if not ex.upgrade:
            client.rewrite_cache = (route, original, ex.headers, middle, has_request_id)
    compose_request(ex, middle, has_request_id, consumer)


def forwarded_fields(ex: Exchange) -> bytes:
    client = ex.client
    forwarded_for = None
    if client.trusted is not None:  # a trusted proxy's X-Forwarded-For is believed, as for a proxied request
        chain = [v for n, v in ex.headers if n.lower() == b"x-forwarded-for"]
        if chain:
            forwarded_for = b", ".join(chain)
    return x_forwarded(client.peer_host, forwarded_for, client.tls, field_value(ex.headers, b"host"))
