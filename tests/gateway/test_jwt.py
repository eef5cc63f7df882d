"""JWT auth through real sockets: every way a token can be wrong is a 401, and the subject goes upstream."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lbtui.config import parse_config
from lbtui.features import refused

SECRET = "s3cret-for-tests-only-" + "0123456789abcdef" * 4


def jwt_config(backend, auth: dict):
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {"app": {"backends": [{"name": backend.name, "address": backend.address}]}},
            "routes": [{"name": "api", "match": {"path_prefix": "/"}, "service": "app", "auth": auth}],
        },
        source="<test>",
    )


async def ask(client, token: str | None, extra: dict[str, str] | None = None):
    lines = ["GET /echo/me HTTP/1.1", "Host: t"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    await client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    return await client.read_response()


def claims(**changes):
    now = int(time.time())
    base = {"sub": "alice", "iss": "https://issuer.example", "aud": "shop", "exp": now + 300, "nbf": now - 10}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


async def test_hs256_tokens(backends, engine_factory, raw_client, monkeypatch):
    monkeypatch.setenv("JWT_SECRET", SECRET)
    b = await backends("b")
    auth = {
        "type": "jwt",
        "algorithms": ["HS256"],
        "secret_env": "JWT_SECRET",
        "issuer": "https://issuer.example",
        "audience": "shop",
    }
    engine = await engine_factory(jwt_config(b, auth))
    client = await raw_client(engine.address())
    good = jwt.encode(claims(), SECRET, algorithm="HS256")
    r = await ask(client, good, {"X-Consumer": "root"})
    assert r.status == 200
    seen = {k.lower(): v for k, v in json.loads(r.body)["headers"]}
    assert seen["x-consumer"] == "alice"  # from the token, never from the client

    now = int(time.time())
    header, _, _ = good.split(".")
    unsigned = jwt.encode(claims(), None, algorithm="none")
    bad = {
        "no token": None,
        "not a bearer": "",
        "garbage": "abc.def.ghi",
        "alg none": unsigned,
        "wrong secret": jwt.encode(claims(), "another-secret-" + "x" * 60, algorithm="HS256"),
        "tampered": f"{header}.{jwt.utils.base64url_encode(json.dumps(claims(sub='admin')).encode()).decode()}.{good.split('.')[2]}",
        "expired": jwt.encode(claims(exp=now - 60), SECRET, algorithm="HS256"),
        "not yet valid": jwt.encode(claims(nbf=now + 600), SECRET, algorithm="HS256"),
        "wrong issuer": jwt.encode(claims(iss="https://other.example"), SECRET, algorithm="HS256"),
        "no issuer": jwt.encode(claims(iss=None), SECRET, algorithm="HS256"),
        "wrong audience": jwt.encode(claims(aud="billing"), SECRET, algorithm="HS256"),
        "other algorithm": jwt.encode(claims(), SECRET, algorithm="HS512"),
        "header in the subject": jwt.encode(claims(sub="a\r\nX-Admin: 1"), SECRET, algorithm="HS256"),
    }
    for why, token in bad.items():
        r = await ask(client, token)
        assert r.status == 401, why
        assert r.header(
            "www-authenticate",
        ) in ("Bearer", 'Bearer error="invalid_token"'), why
    assert b.requests == 1


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_public_key_tokens(kind, backends, engine_factory, raw_client, tmp_path):
    private = (
        rsa.generate_private_key(65537, 2048) if kind == "RS256" else ec.generate_private_key(ec.SECP256R1())
    )
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "jwt.pub").write_bytes(pem)
    b = await backends("b")
    auth = {"type": "jwt", "algorithms": [kind], "public_key_file": str(tmp_path / "jwt.pub")}
    engine = await engine_factory(jwt_config(b, auth))
    client = await raw_client(engine.address())
    assert (await ask(client, jwt.encode(claims(), private, algorithm=kind))).status == 200
    other = (
        rsa.generate_private_key(65537, 2048) if kind == "RS256" else ec.generate_private_key(ec.SECP256R1())
    )
    assert (await ask(client, jwt.encode(claims(), other, algorithm=kind))).status == 401
    # The public key used as an HMAC secret (the classic key-confusion attack) is refused: HS256 is not pinned.
    assert (await ask(client, jwt.encode(claims(), SECRET, algorithm="HS256"))).status == 401


def test_a_missing_secret_or_key_file_refuses_the_config(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    config = parse_config(
        {
            "services": {"a": {"backends": [{"name": "x", "address": "127.0.0.1:1"}]}},
            "routes": [
                {
                    "match": {},
                    "service": "a",
                    "auth": {"type": "jwt", "algorithms": ["HS256"], "secret_env": "NO_SUCH_SECRET"},
                },
                {
                    "match": {"path": "/k"},
                    "service": "a",
                    "auth": {
                        "type": "jwt",
                        "algorithms": ["RS256"],
                        "public_key_file": str(tmp_path / "nope.pub"),
                    },
                },
            ],
        }
    )
    problems = [str(p) for p in refused(config)]
    assert any(
        p.startswith("routes[0].auth.secret_env: the environment variable 'NO_SUCH_SECRET' is not set")
        for p in problems
    )
    assert any(p.startswith("routes[1].auth.public_key_file: cannot read") for p in problems)
