"""What is measured: the target names, the gateway case, and the request wrk sends each target.

Every target answers GET with 200 and BODY (nginx's `return 200`, through the proxies); readiness checks expect
exactly that.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BODY = b"hello, world\n"
# The dashboard targets: `lbtui --config FILE` (the engine inside the dashboard) on a pseudo-terminal, pinned
# exactly like `lbtui serve` (the whole process on the proxy CPU), and, for information, not pinned at all.
DASHBOARDS = ("dashboard", "dashboard-unpinned")
# The gateway target: `lbtui serve` like `lbtui`, same backends, same pinning, with one route (path_prefix)
# that asks for an API key and rate-limits per consumer; wrk sends the key and a path the route takes. The
# limit is far above what one CPU can serve, so it is never hit (a 429 would be a non-2xx error).
GATEWAY = "lbtui-gateway"
GATEWAY_PREFIX = "/api"
GATEWAY_PATH = "/api/bench"
GATEWAY_KEY_HEADER = "X-API-Key"
GATEWAY_KEY = "lbtui-bench-key"  # not a secret: the config holds its SHA-256, as a real one would
GATEWAY_RATE = 1_000_000  # requests per second for the one consumer (and the burst)
# The HAProxy request-log case (issue 15: the dashboard attached costs HAProxy at most 2%): HAProxy with the ring
# log of docs/haproxy.md and a stats socket, alone (`haproxy-logged`: what writing the log costs HAProxy) and with
# `lbtui attach` on a pty reading that log (`haproxy-attached`; the dashboard not pinned, its CPU counted).
LOGGED = "haproxy-logged"
ATTACHED = "haproxy-attached"
HAPROXY_LOGGED = (LOGGED, ATTACHED)
# lbtui's request-log format and ring name (lbtui/haproxy/requestlog.py), repeated here: benchmarks/ is stdlib
# only and imports nothing of lbtui; tests/benchmarks checks the two agree.
RING = "lbtui"
LOG_FORMAT = "lbtui1 %b %s %ST %Ta|%Tr %B %Ts%ms %ci %rt %HM %HU"
TARGETS = ("direct", "haproxy", "lbtui", GATEWAY, *DASHBOARDS, *HAPROXY_LOGGED)
DEFAULT_TARGETS = ("direct", "haproxy", "lbtui", GATEWAY)
DASHBOARD_MODE_TARGETS = ("lbtui", *DASHBOARDS)  # --dashboard
VARIANT = "variant:"  # --variant NAME=CMD adds the target "variant:NAME": CMD pinned like `dashboard`


def is_dashboard(target: str) -> bool:
    return target in DASHBOARDS or target.startswith(VARIANT)


def target_request(target: str) -> tuple[str, dict[str, str]]:
    """The path every request to a target asks for, and the headers it carries (beyond wrk's own)."""
    if target == GATEWAY:
        return GATEWAY_PATH, {GATEWAY_KEY_HEADER: GATEWAY_KEY}
    return "/", {}
