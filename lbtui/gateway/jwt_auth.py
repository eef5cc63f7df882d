"""JWT authentication (RFC 7519) per route, with PyJWT: `Authorization: Bearer <token>`.

- The algorithms are the route's (`algorithms`), never the token's: a token whose header names another, or
  `none`, is refused. HMAC and public-key algorithms cannot share a route (config.py), so a public key can
  never be used as an HMAC secret.
- The signature, `exp` and `nbf` (when present), and the route's `issuer` and `audience` (when given) are
  checked; any failure is `401` with `WWW-Authenticate: Bearer error="invalid_token"`, a missing token `401`
  with `WWW-Authenticate: Bearer`.
- The token's `sub` goes upstream as `X-Consumer` (the client's own is always dropped), and is the
  `consumer` of rate limits.
- The key: the secret in the environment variable `secret_env` (HS*), or the PEM public key in
  `public_key_file`, read when lbtui starts; `problem` says what is wrong with either, for check and serve.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from lbtui.config import AuthConfig


def key_problem(auth: AuthConfig, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(key, what is wrong) when the route's key cannot be had; None when it can."""
    env = os.environ if environ is None else environ
    if auth.secret_env is not None and not env.get(auth.secret_env):
        return (
            "secret_env",
            f"the environment variable {auth.secret_env!r} is not set (it holds the JWT secret)",
        )
    if auth.public_key_file is not None:
        try:
            _public_key(auth.public_key_file)
        except OSError as error:
            return "public_key_file", f"cannot read {auth.public_key_file}: {error.strerror or error}"
        except ValueError:
            return "public_key_file", f"{auth.public_key_file} holds no PEM public key"
    return None


def _public_key(path: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    with open(path, "rb") as file:
        return load_pem_public_key(file.read())


class JwtVerifier:
    def __init__(self, auth: AuthConfig, environ: Mapping[str, str] | None = None) -> None:
        import jwt  # PyJWT, only where a route asks for it

        env = os.environ if environ is None else environ
        self._jwt = jwt
        self.algorithms = list(auth.algorithms)
        self.issuer = auth.issuer
        self.audience = auth.audience
        self.key: Any
        if auth.public_key_file is not None:
            self.key = _public_key(auth.public_key_file)
        else:
            self.key = env.get(auth.secret_env or "", "").encode()
        self.failures: dict[str, int] = {}  # why tokens were refused (class name of PyJWT's error)

    def consumer(self, authorization: bytes | None) -> tuple[bytes | None, bytes]:
        """(the token's subject, b"") when the bearer token is good; (None, a WWW-Authenticate value) if not."""
        if authorization is None or authorization[:7].lower() != b"bearer ":
            return None, b"Bearer"
        token = authorization[7:].strip()
        try:
            claims = self._jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                options={"verify_aud": self.audience is not None, "require": ["iss"] if self.issuer else []},
            )
        except self._jwt.PyJWTError as error:
            kind = type(error).__name__
            self.failures[kind] = self.failures.get(kind, 0) + 1
            return None, b'Bearer error="invalid_token"'
        subject = claims.get("sub")
        name = str(subject).encode("utf-8", "replace") if subject is not None else b"jwt"
        if any(c < 0x20 or c == 0x7F for c in name):  # it becomes a header value: no control bytes
            self.failures["BadSubject"] = self.failures.get("BadSubject", 0) + 1
            return None, b'Bearer error="invalid_token"'
        return name, b""
