"""Prometheus metrics: a Snapshot in the text exposition format, version 0.0.4.

Written by hand (no prometheus_client at run time): the format is small, and a snapshot already holds every
number. Invariants:
- Every family has a HELP and a TYPE line, once, before its samples; counters end in `_total`.
- Label values escape backslash, double quote and newline; HELP text escapes backslash and newline.
- Histograms are cumulative: `_bucket{le=...}` never decreases along LATENCY_BOUNDS, `le="+Inf"` equals
  `_count`. They come from the engine's own latency histogram since start (core.stats): a bucket of it is
  counted under the first bound at or above its upper edge, so a bound is exact to within 1/64 of itself, and
  `_sum` adds up bucket midpoints (exact to the same 1/64), which costs the data plane nothing per request.
- Rendering costs O(backends + routes), never O(traffic).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from lbtui import __version__, data_plane_build
from lbtui.core.stats import BUCKETS, bucket_bounds, bucket_value_us
from lbtui.core.views import BackendView, Snapshot

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# The `le` bounds (seconds) of every latency histogram: 0.1 ms to 30 s, then +Inf. A request on loopback or a
# local network takes a few hundred microseconds: below 0.5 ms it needs bounds of its own to be told apart.
LATENCY_BOUNDS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# For each engine bucket, the index of the first bound at or above its upper edge (len(bounds): +Inf only).
_BOUND_OF: Final = tuple(
    next(
        (k for k, bound in enumerate(LATENCY_BOUNDS) if bucket_bounds(i)[1] <= round(bound * 1_000_000)),
        len(LATENCY_BOUNDS),
    )
    for i in range(BUCKETS)
)
_MIDPOINT_S: Final = tuple(bucket_value_us(i) / 1_000_000.0 for i in range(BUCKETS))

# Status classes as BackendView.status_classes orders them; "none": failed with no response at all.
STATUS_CLASSES: Final = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
HEALTH_STATES: Final = ("up", "down", "going_up", "going_down", "ejected")
ADMIN_STATES: Final = ("ready", "drain", "maint")


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: Sequence[tuple[str, str]]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape_label(value)}"' for name, value in labels) + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Sequence[tuple[str, str]], value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {format_value(value)}")

    def histogram(self, name: str, labels: Sequence[tuple[str, str]], counts: Sequence[int]) -> None:
        """One histogram's samples from the engine's latency bucket counts (core.stats.BUCKETS long)."""
        per_bound = [0] * (len(LATENCY_BOUNDS) + 1)
        total = 0.0
        count = 0
        bound_of = _BOUND_OF
        midpoint = _MIDPOINT_S
        for index, c in enumerate(counts):
            if c:
                per_bound[bound_of[index]] += c
                total += c * midpoint[index]
                count += c
        running = 0
        for bound, c in zip(LATENCY_BOUNDS, per_bound, strict=False):
            running += c
            self.sample(f"{name}_bucket", [*labels, ("le", format_value(bound))], running)
        self.sample(f"{name}_bucket", [*labels, ("le", "+Inf")], count)
        self.sample(f"{name}_sum", labels, total)
        self.sample(f"{name}_count", labels, count)

    def by_status_class(
        self, name: str, help_text: str, rows: Iterable[tuple[Sequence[tuple[str, str]], Sequence[int]]]
    ) -> None:
        """A counter family by status class (label `code`): one row per (labels, status class counts)."""
        self.family(name, "counter", help_text)
        for labels, classes in rows:
            for code, n in zip(STATUS_CLASSES, classes, strict=True):
                self.sample(name, [*labels, ("code", code)], n)

    def histograms(
        self, name: str, help_text: str, rows: Iterable[tuple[Sequence[tuple[str, str]], Sequence[int]]]
    ) -> None:
        """A histogram family: one row per (labels, latency bucket counts)."""
        self.family(name, "histogram", help_text)
        for labels, counts in rows:
            self.histogram(name, labels, counts)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _backend_labels(b: BackendView) -> list[tuple[str, str]]:
    return [("service", b.service), ("backend", b.name), ("group", b.group)]


def _backend_families(out: _Writer, backends: Sequence[BackendView]) -> None:
    def each(name: str, kind: str, help_text: str, value: Iterable[tuple[BackendView, float]]) -> None:
        out.family(name, kind, help_text)
        for b, v in value:
            out.sample(name, _backend_labels(b), v)

    out.by_status_class(
        "lbtui_backend_requests_total",
        'Requests a backend finished, by status class (code="none": failed with no response).',
        ((_backend_labels(b), b.status_classes) for b in backends),
    )
    each(
        "lbtui_backend_in_flight",
        "gauge",
        "Requests a backend is serving now.",
        ((b, b.in_flight) for b in backends),
    )
    out.histograms(
        "lbtui_backend_latency_seconds",
        "Time from a request's arrival to its response's end (or failure), per backend, since start.",
        ((_backend_labels(b), b.latency_counts) for b in backends),
    )
    each(
        "lbtui_backend_up",
        "gauge",
        "1 when health checks say a backend is up (up, or going_down and not yet down), else 0.",
        ((b, 1 if b.health in ("up", "going_down") else 0) for b in backends),
    )
    out.family("lbtui_backend_health", "gauge", "A backend's health: 1 for its state, 0 for the others.")
    for b in backends:
        for state in HEALTH_STATES:
            out.sample(
                "lbtui_backend_health", [*_backend_labels(b), ("state", state)], int(b.health == state)
            )
    out.family(
        "lbtui_backend_admin_state",
        "gauge",
        "What the operator set: 1 for a backend's admin state, 0 for the others.",
    )
    for b in backends:
        for state in ADMIN_STATES:
            out.sample(
                "lbtui_backend_admin_state",
                [*_backend_labels(b), ("state", state)],
                int(b.admin_state == state),
            )
    each("lbtui_backend_weight", "gauge", "A backend's weight.", ((b, b.weight) for b in backends))
    each(
        "lbtui_backend_ejections_total",
        "counter",
        "Times outlier detection ejected a backend.",
        ((b, b.ejections_total) for b in backends),
    )
    each(
        "lbtui_backend_sticky_requests_total",
        "counter",
        "Requests a backend took because their sticky cookie named it.",
        ((b, b.sticky_requests) for b in backends),
    )
    each(
        "lbtui_backend_sticky_cookies_set_total",
        "counter",
        "Sticky cookies set that name a backend: sessions that began on it or moved to it.",
        ((b, b.sticky_cookies) for b in backends),
    )
    each(
        "lbtui_backend_connect_failures_total",
        "counter",
        "Connections to a backend that failed (refused, timed out).",
        ((b, b.connect_failures) for b in backends),
    )
    each(
        "lbtui_backend_responses_aborted_total",
        "counter",
        "Responses from a backend cut after their head was forwarded (the client's connection was reset).",
        ((b, b.aborted) for b in backends),
    )
    each(
        "lbtui_backend_request_bytes_total",
        "counter",
        "Request body bytes clients sent through to a backend.",
        ((b, b.bytes_in) for b in backends),
    )
    each(
        "lbtui_backend_response_bytes_total",
        "counter",
        "Response body bytes a backend's responses sent to clients.",
        ((b, b.bytes_out) for b in backends),
    )


def _counter(extra: Mapping[str, object], key: str) -> int:
    counters = extra.get("counters")
    value = counters.get(key, 0) if isinstance(counters, Mapping) else 0
    return value if isinstance(value, int) else 0


def render(snapshot: Snapshot) -> str:
    """The snapshot as Prometheus text (CONTENT_TYPE); the engine's counters come from `snapshot.extra`."""
    out = _Writer()
    extra = snapshot.extra
    out.family("lbtui_build_info", "gauge", "The version of lbtui and how its data plane runs; always 1.")
    data_plane = "compiled" if data_plane_build() == "compiled" else "pure"
    out.sample("lbtui_build_info", [("version", __version__), ("data_plane", data_plane)], 1)
    out.family("lbtui_uptime_seconds", "gauge", "Seconds since the engine started.")
    out.sample("lbtui_uptime_seconds", [], float(snapshot.uptime))
    out.family("lbtui_connections_open", "gauge", "Client connections open now (http and tcp listeners).")
    out.sample("lbtui_connections_open", [], snapshot.connections)
    for name, key, help_text in (
        (
            "lbtui_connections_refused_total",
            "connections_refused",
            "Client connections turned away over [limits] max_connections.",
        ),
        (
            "lbtui_header_timeouts_total",
            "header_timeouts",
            "Client connections closed with a 408: a request head did not arrive within header_timeout.",
        ),
        (
            "lbtui_tls_handshake_failures_total",
            "tls_handshake_failures",
            "Client connections closed before any request: the TLS handshake failed or timed out.",
        ),
        (
            "lbtui_access_log_dropped_total",
            "access_log_dropped",
            "Access log lines dropped because the log's queue was full (the disk did not keep up).",
        ),
        (
            "lbtui_underscore_headers_dropped_total",
            "underscore_headers_dropped",
            "Request header fields named with '_' dropped (listener headers_with_underscores = drop).",
        ),
        (
            "lbtui_underscore_requests_refused_total",
            "underscore_requests_refused",
            "Requests refused 400 for a header field named with '_' (headers_with_underscores = reject).",
        ),
    ):
        out.family(name, "counter", help_text)
        out.sample(name, [], _counter(extra, key))
    out.family(
        "lbtui_unmatched_requests_total",
        "counter",
        "Requests no route took, by reason (no_route: 404, method: 405).",
    )
    unmatched = extra.get("unmatched")
    if isinstance(unmatched, Mapping):
        for reason, n in sorted(unmatched.items()):
            out.sample("lbtui_unmatched_requests_total", [("reason", str(reason).replace(" ", "_"))], n)

    _backend_families(out, [b for s in snapshot.services for b in s.backends])

    services = snapshot.services
    out.by_status_class(
        "lbtui_service_requests_total",
        "Requests a service answered, by status class, once each however many backends were tried "
        '(code="none": no answer at all).',
        (((("service", s.name),), s.status_classes) for s in services),
    )
    out.histograms(
        "lbtui_service_latency_seconds",
        "Time from a request's arrival to its answer's end, per service (retries included), since start.",
        (((("service", s.name),), s.latency_counts) for s in services),
    )
    for name, kind, help_text, attribute in (
        ("lbtui_service_retries_total", "counter", "Requests sent again to another backend.", "retries"),
        (
            "lbtui_service_retries_refused_total",
            "counter",
            "Retries the retry budget did not allow.",
            "retries_refused",
        ),
        (
            "lbtui_service_unrouted_total",
            "counter",
            "Requests answered 503 because no backend could take them.",
            "unrouted",
        ),
        (
            "lbtui_service_queued_total",
            "counter",
            "Requests that waited for a backend under max_connections.",
            "queued",
        ),
        (
            "lbtui_service_queue_full_total",
            "counter",
            "Requests answered 503 at once because the service's queue was full.",
            "queue_full",
        ),
        ("lbtui_service_queue_length", "gauge", "Requests waiting for a backend now.", "queue_length"),
        (
            "lbtui_service_sticky_moved_total",
            "counter",
            "Sticky sessions moved: their cookie named a backend that could not take the request (maint, down, "
            "ejected, being removed, or its group without a share of the split).",
            "sticky_moved",
        ),
        (
            "lbtui_service_sticky_unknown_total",
            "counter",
            "Sticky cookies that named no backend of the service (forged, made with another key, or a backend "
            "that is gone): picked anew.",
            "sticky_unknown",
        ),
    ):
        out.family(name, kind, help_text)
        for s in services:
            out.sample(name, [("service", s.name)], getattr(s, attribute))

    routes = snapshot.routes
    out.by_status_class(
        "lbtui_route_requests_total",
        "Requests a route answered, by status class.",
        (((("route", r.name),), r.status_classes) for r in routes),
    )
    out.family(
        "lbtui_route_rejections_total",
        "counter",
        "Requests the gateway answered itself on a route, by reason (auth, rate limit, cors, ...).",
    )
    for r in routes:
        for reason, n in r.rejected:
            out.sample("lbtui_route_rejections_total", [("route", r.name), ("reason", reason)], n)
    out.histograms(
        "lbtui_route_latency_seconds",
        "Time from a request's arrival to its response's end, per route (rejections included), since start.",
        (((("route", r.name),), r.latency_counts) for r in routes),
    )
    out.family("lbtui_route_cache_hits_total", "counter", "Responses a route's cache answered.")
    for r in routes:
        out.sample("lbtui_route_cache_hits_total", [("route", r.name)], r.cache[0])
    out.family(
        "lbtui_route_cache_misses_total", "counter", "Cacheable requests a route's cache did not hold."
    )
    for r in routes:
        out.sample("lbtui_route_cache_misses_total", [("route", r.name)], r.cache[1])
    return out.text()
