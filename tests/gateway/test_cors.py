"""CORS at the gateway: preflights answered (never forwarded), grants only for configured origins."""

from __future__ import annotations

from lbtui.config import parse_config

APP = "https://app.example"


async def test_cors(scripted, engine_factory, raw_client):
    async def upstream(reader, writer, up):
        while True:
            await up.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\n\r\nok"
            )  # a backend that would grant everyone: the gateway's config decides instead

    up = await scripted(upstream)
    config = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {"app": {"backends": [{"name": "up", "address": up.address}]}},
            "routes": [
                {
                    "name": "api",
                    "match": {"path_prefix": "/api", "methods": ["GET", "PUT"]},
                    "service": "app",
                    "cors": {
                        "allow_origins": [APP],
                        "allow_methods": ["GET", "PUT"],
                        "allow_headers": ["Content-Type", "X-Token"],
                        "max_age": "10m",
                    },
                }
            ],
        },
        source="<test>",
    )
    engine = await engine_factory(config)
    client = await raw_client(engine.address())

    async def send(method: str, headers: dict[str, str]):
        lines = [f"{method} /api/items HTTP/1.1", "Host: t", *(f"{k}: {v}" for k, v in headers.items())]
        await client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await client.read_response(head=method == "HEAD")

    r = await send(
        "OPTIONS",
        {
            "Origin": APP,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type, x-token",
        },
    )
    assert r.status == 204
    assert r.body == b""
    assert r.header("access-control-allow-origin") == APP
    assert r.header("access-control-allow-methods") == "GET, PUT"
    assert r.header("access-control-allow-headers") == "Content-Type, X-Token"
    assert r.header("access-control-max-age") == "600"
    assert r.header("vary") == "Origin"
    for refused in (
        {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        {"Origin": APP, "Access-Control-Request-Method": "DELETE"},
        {"Origin": APP, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "X-Admin"},
    ):
        r = await send("OPTIONS", refused)
        assert r.status == 403, refused
        assert r.header("access-control-allow-origin") is None
        client = await raw_client(engine.address())  # a refusal closes the connection
    assert up.received == []  # no preflight reached the backend

    r = await send("GET", {"Origin": APP})
    assert r.status == 200
    assert r.header_all("access-control-allow-origin") == [APP]  # the backend's "*" was dropped
    assert r.header("vary") == "Origin"
    r = await send("GET", {"Origin": "https://evil.example"})
    assert r.status == 200  # served (the browser enforces CORS) but granted nothing
    assert r.header("access-control-allow-origin") is None
    r = await send("GET", {})
    assert r.header("access-control-allow-origin") is None
    assert len(up.received) == 3
