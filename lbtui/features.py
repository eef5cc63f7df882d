"""What this version of the engine does with a config: keys it refuses, and keys it accepts but ignores.

The config schema (ARCHITECTURE section 5) is ahead of the engine. A key that would leave a user unprotected
if it were silently ignored (authentication, rate limits, CORS, aggregation, routes that rewrite) makes
the engine refuse to start; a key that only tunes behaviour not built yet (stickiness) is reported as
a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lbtui.config import Config
from lbtui.gateway.auth import missing_keys
from lbtui.gateway.jwt_auth import key_problem


@dataclass(frozen=True, slots=True)
class Unsupported:
    key_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.key_path}: {self.message}"


LATER = "not in this version of lbtui yet"


def refused(config: Config) -> list[Unsupported]:
    """Keys the engine will not run with: ignoring them would change what reaches a backend or a client."""
    out: list[Unsupported] = []
    for i in missing_keys(config.consumers):
        env = config.consumers[i].api_key_env
        out.append(
            Unsupported(
                f"consumers[{i}].api_key_env",
                f"the environment variable {env!r} is not set (it holds this consumer's API key)",
            )
        )
    for i, route in enumerate(config.routes):
        base = f"routes[{i}]"
        if route.auth is not None and route.auth.type == "jwt":
            problem = key_problem(route.auth)
            if problem is not None:
                out.append(Unsupported(f"{base}.auth.{problem[0]}", problem[1]))
    admin = config.admin
    if admin.enabled and admin.token_env is not None and not os.environ.get(admin.token_env):
        out.append(
            Unsupported(
                "admin.token_env",
                f"the environment variable {admin.token_env!r} is not set (it holds the admin API's token)",
            )
        )
    return out


def ignored(config: Config) -> list[Unsupported]:
    """Keys the engine runs without: validated, and reported so nobody counts on them."""
    out: list[Unsupported] = []
    for service in config.services:
        base = f"services.{service.name}"
        if service.sticky is not None:
            out.append(Unsupported(f"{base}.sticky", f"sticky sessions are {LATER}"))
    return out
