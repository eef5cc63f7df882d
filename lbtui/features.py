"""What the engine will not run with, beyond validation, and keys it accepts that have no effect where they are.

A secret that a key names and that is not there (an API key, a JWT key, the admin token, a sticky cookie's
key) makes the engine refuse to start; a key that has no effect where it is (sticky
sessions on a service no http route reaches) is reported as a warning.
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
    out.extend(missing_sticky_secrets(config))
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


def missing_sticky_secrets(config: Config) -> list[Unsupported]:
    """Sticky services whose `secret_env` is not set: with another key, every session would move (a reload
    refuses them too)."""
    out: list[Unsupported] = []
    for service in config.services:
        sticky = service.sticky
        if sticky is not None and sticky.secret_env is not None and not os.environ.get(sticky.secret_env):
            out.append(
                Unsupported(
                    f"services.{service.name}.sticky.secret_env",
                    f"the environment variable {sticky.secret_env!r} is not set (it holds the key of the "
                    "sticky cookie's values)",
                )
            )
    return out


def ignored(config: Config) -> list[Unsupported]:
    """Keys the engine runs without: validated, and reported so nobody counts on them."""
    out: list[Unsupported] = []
    http = any(listener.mode == "http" for listener in config.listeners)
    routed = {route.service for route in config.routes if route.service is not None}
    for service in config.services:
        base = f"services.{service.name}"
        reached = http and (service.name in routed or (not config.routes and len(config.services) == 1))
        if service.sticky is not None and not reached:
            out.append(
                Unsupported(
                    f"{base}.sticky",
                    "has no effect: no http route sends requests to this service (a cookie is HTTP; tcp "
                    "listeners and aggregate parts pick without it)",
                )
            )
    return out
