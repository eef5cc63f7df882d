"""The built-in demo: a "shop" service with blue and green backends on loopback, and traffic to it."""

from __future__ import annotations

import random

from lbtui.config import Config, parse_config
from lbtui.demo.backends import DemoBackend, Profile

DEMO_LISTEN = "127.0.0.1:8080"


def demo_backends(seed: int | None = None) -> list[DemoBackend]:
    rng = random.Random(seed)
    return [
        DemoBackend("blue-1", Profile(latency=0.004, jitter=0.35, rng=rng)),
        DemoBackend("blue-2", Profile(latency=0.006, jitter=0.5, rng=rng)),
        DemoBackend("blue-3", Profile(latency=0.009, jitter=0.8, rng=rng)),
        DemoBackend("green-1", Profile(latency=0.012, jitter=0.6, error_rate=0.03, rng=rng)),
    ]


def demo_config(backends: list[DemoBackend], bind: str = DEMO_LISTEN) -> Config:
    """The demo's config, for backends that are already listening."""
    return parse_config(
        {
            "listeners": [{"name": "web", "bind": bind, "mode": "http"}],
            "services": {
                "shop": {
                    "algorithm": "least_connections",
                    "split": {"blue": 90, "green": 10},
                    # green fails ~3% of requests and is a little slower than blue, and the demo's traffic is
                    # light (p99 is noisy): within these limits a ramp (R) climbs to 100%.
                    "ramp": {
                        "steps": [25, 50, 100],
                        "hold": "10s",
                        "max_5xx_excess": 6,
                        "max_p99_ratio": 3,
                        "p99_slack": "100ms",
                    },
                    "health": {"path": "/healthz", "interval": "2s", "timeout": "1s", "rise": 2, "fall": 3},
                    # A backend that fails 5 requests in a row sits out 30 s (never more than half of them); one
                    # that comes back (up again, out of maint, added) takes its full share over 20 s.
                    "outlier": {"consecutive_5xx": 5, "base_ejection": "30s", "max_ejected_percent": 50},
                    "slow_start": "20s",
                    "backends": [
                        {"name": b.name, "address": b.address, "group": b.name.split("-")[0]}
                        for b in backends
                    ],
                }
            },
        },
        source="<demo>",
    )
