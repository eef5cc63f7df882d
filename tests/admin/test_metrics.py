"""admin/metrics.py: the Prometheus text format, parsed back line by line, and counters moving on real traffic."""

from __future__ import annotations

import math
import re

import httpx
import pytest

from lbtui.admin.metrics import LATENCY_BOUNDS, escape_label, render
from lbtui.config import parse_config
from lbtui.core.stats import BUCKETS, SlidingWindow, bucket_index, merge_views, window_view
from lbtui.core.views import BackendView, RouteView, ServiceView, Snapshot

# name{labels} value: label values may hold escaped quotes, backslashes and newlines.
SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? (\S+)$'
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, dict[str, str], float]]]:
    """(family -> (type, help), samples) from exposition text; fails on any line it does not understand."""
    families: dict[str, list[str]] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"HELP twice for {name}"
            families[name] = [help_text]
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert families.get(name) == families[name][:1], f"TYPE of {name} without HELP first, or twice"
            families[name].append(kind)
        else:
            match = SAMPLE.match(line)
            assert match is not None, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            samples.append(
                (
                    name,
                    {k: unescape(v) for k, v in LABEL.findall(labels or "")},
                    float(value.replace("+Inf", "inf")),
                )
            )
    return {name: (entry[1], entry[0]) for name, entry in families.items()}, samples


def family_of(name: str, families: dict[str, tuple[str, str]]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and families.get(base, ("",))[0] == "histogram":
            return base
    return name


def counts_of(latencies_ms: list[float]) -> tuple[int, ...]:
    counts = [0] * BUCKETS
    for ms in latencies_ms:
        counts[bucket_index(int(ms * 1000))] += 1
    return tuple(counts)


def backend(name: str, service: str = "shop", group: str = "blue", **fields: object) -> BackendView:
    base: dict[str, object] = {
        "name": name,
        "service": service,
        "group": group,
        "address": "127.0.0.1:9001",
        "weight": 1,
        "admin_state": "ready",
        "health": "up",
        "health_count": 0,
        "in_flight": 0,
        "requests": 0,
        "status_classes": (0, 0, 0, 0, 0, 0),
        "bytes_in": 0,
        "bytes_out": 0,
        "connect_failures": 0,
        "ewma_ms": 1.0,
        "drain_seconds": None,
        "removing": False,
        "window": window_view(1.0, 0, 0, [0] * BUCKETS),
    }
    base.update(fields)
    return BackendView(**base)  # type: ignore[arg-type]


def fixed_snapshot() -> Snapshot:
    backends = (
        backend(
            "blue-1",
            requests=6,
            status_classes=(1, 0, 4, 0, 0, 1),
            in_flight=2,
            bytes_in=100,
            bytes_out=2000,
            ejections_total=3,
            latency_counts=counts_of([0.2, 0.7, 3.0, 40.0, 700.0, 60_000.0]),
        ),
        # A label value with every character that must be escaped.
        backend('we"ird\\name\nx', group="g\\1", admin_state="drain", health="going_down", weight=5),
    )
    shop = ServiceView(
        name="shop",
        algorithm="round_robin",
        split=None,
        groups=("blue", "g\\1"),
        backup_group=None,
        backends=backends,
        unrouted=7,
        window=merge_views([b.window for b in backends]),
        retries=4,
        retries_refused=2,
        queue_length=9,
    )
    return Snapshot(
        time=100.0,
        uptime=3723.5,
        listeners=(),
        services=(shop,),
        connections=12,
        extra={
            "unmatched": {"no route": 4, "method": 1},
            "counters": {
                "connections_refused": 5,
                "header_timeouts": 6,
                "tls_handshake_failures": 7,
                "access_log_dropped": 8,
            },
        },
        routes=(
            RouteView(
                "api",
                "prefix /api",
                "shop",
                (),
                None,
                (0, 0, 212, 0, 19, 1),
                (("auth", 7), ("rate limit", 12)),
                (38, 12),
                counts_of([1.0] * 200 + [30.0] * 32),
            ),
        ),
    )


def value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    found = [v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_every_family_has_help_and_type_and_counters_end_in_total() -> None:
    families, samples = parse(render(fixed_snapshot()))
    assert families
    for name, (kind, help_text) in families.items():
        assert kind in ("counter", "gauge", "histogram"), name
        assert help_text, name
        assert name.startswith("lbtui_")
        assert name.endswith("_total") == (kind == "counter"), name
    for name, _, _ in samples:
        assert family_of(name, families) in families, f"{name} has no HELP/TYPE"


def test_values_of_a_fixed_snapshot() -> None:
    _, samples = parse(render(fixed_snapshot()))
    b1 = {"service": "shop", "backend": "blue-1", "group": "blue"}
    assert value(samples, "lbtui_backend_requests_total", code="2xx", **b1) == 4
    assert value(samples, "lbtui_backend_requests_total", code="none", **b1) == 1
    assert value(samples, "lbtui_backend_in_flight", **b1) == 2
    assert value(samples, "lbtui_backend_request_bytes_total", **b1) == 100
    assert value(samples, "lbtui_backend_response_bytes_total", **b1) == 2000
    assert value(samples, "lbtui_backend_ejections_total", **b1) == 3
    assert value(samples, "lbtui_backend_admin_state", state="ready", **b1) == 1
    assert value(samples, "lbtui_backend_admin_state", state="drain", **b1) == 0
    assert value(samples, "lbtui_backend_health", state="up", **b1) == 1
    assert value(samples, "lbtui_backend_up", **b1) == 1
    assert value(samples, "lbtui_service_retries_total", service="shop") == 4
    assert value(samples, "lbtui_service_retries_refused_total", service="shop") == 2
    assert value(samples, "lbtui_service_unrouted_total", service="shop") == 7
    assert value(samples, "lbtui_service_queue_length", service="shop") == 9
    assert value(samples, "lbtui_route_requests_total", route="api", code="4xx") == 19
    assert value(samples, "lbtui_route_rejections_total", route="api", reason="rate limit") == 12
    assert value(samples, "lbtui_route_cache_hits_total", route="api") == 38
    assert value(samples, "lbtui_route_cache_misses_total", route="api") == 12
    assert value(samples, "lbtui_connections_open") == 12
    assert value(samples, "lbtui_connections_refused_total") == 5
    assert value(samples, "lbtui_header_timeouts_total") == 6
    assert value(samples, "lbtui_tls_handshake_failures_total") == 7
    assert value(samples, "lbtui_access_log_dropped_total") == 8
    assert value(samples, "lbtui_unmatched_requests_total", reason="no_route") == 4
    assert value(samples, "lbtui_uptime_seconds") == 3723.5
    info = [labels for name, labels, v in samples if name == "lbtui_build_info" and v == 1]
    assert len(info) == 1
    assert info[0]["data_plane"] in ("compiled", "pure")
    assert info[0]["version"]


def test_label_values_are_escaped_and_read_back() -> None:
    text = render(fixed_snapshot())
    assert 'backend="we\\"ird\\\\name\\nx"' in text
    assert 'group="g\\\\1"' in text
    _, samples = parse(text)
    weird = {"service": "shop", "backend": 'we"ird\\name\nx', "group": "g\\1"}
    assert value(samples, "lbtui_backend_weight", **weird) == 5
    assert value(samples, "lbtui_backend_up", **weird) == 1  # going_down still serves
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


@pytest.mark.parametrize(
    ("family", "labels", "count"),
    [
        ("lbtui_backend_latency_seconds", {"backend": "blue-1"}, 6),
        ("lbtui_route_latency_seconds", {"route": "api"}, 232),
    ],
)
def test_histograms_are_cumulative_and_end_with_inf(family: str, labels: dict[str, str], count: int) -> None:
    _, samples = parse(render(fixed_snapshot()))
    buckets = [
        (ls["le"], v)
        for n, ls, v in samples
        if n == f"{family}_bucket" and all(ls.get(k) == w for k, w in labels.items())
    ]
    bounds = [float(le.replace("+Inf", "inf")) for le, _ in buckets]
    assert bounds == [*LATENCY_BOUNDS, math.inf]
    cumulative = [v for _, v in buckets]
    assert cumulative == sorted(cumulative)
    assert cumulative[-1] == count == value(samples, f"{family}_count", **labels)
    total = value(samples, f"{family}_sum", **labels)
    assert total > 0


def test_histogram_buckets_put_each_latency_under_its_bound() -> None:
    _, samples = parse(render(fixed_snapshot()))
    b1 = {"backend": "blue-1"}

    def le(bound: str) -> float:
        return value(samples, "lbtui_backend_latency_seconds_bucket", le=bound, **b1)

    # 0.2, 0.7, 3, 40, 700 and 60000 ms
    assert le("0.0001") == 0
    assert le("0.00025") == 1
    assert le("0.0005") == 1
    assert le("0.001") == 2
    assert le("0.005") == 3
    assert le("0.05") == 4
    assert le("1.0") == 5
    assert le("30.0") == 5
    assert le("+Inf") == 6
    total = value(samples, "lbtui_backend_latency_seconds_sum", **b1)
    assert total == pytest.approx(60.7439, rel=1 / 64)


def test_prometheus_client_parses_it() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(render(fixed_snapshot()))}
    # prometheus_client names counter families without their _total.
    assert families["lbtui_backend_requests"].type == "counter"
    assert families["lbtui_backend_latency_seconds"].type == "histogram"
    weird = [s for s in families["lbtui_backend_weight"].samples if s.value == 5]
    assert weird[0].labels["backend"] == 'we"ird\\name\nx'


def test_sliding_window_totals_keep_what_leaves_the_window() -> None:
    window = SlidingWindow(slots=3, now=0.0)
    for second in range(10):
        window.record(0.001, second % 2 == 0, second + 0.5)
    counts, errors = window.totals()
    assert sum(counts) == 10
    assert errors == 5
    assert window.view(9.9).requests == 3  # the window itself still forgets


async def test_counters_move_with_real_traffic(backends, engine_factory) -> None:  # type: ignore[no-untyped-def]
    b1 = await backends("b1")
    config = parse_config(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "services": {"app": {"backends": [{"name": "b1", "address": b1.address}]}},
            "routes": [
                {"name": "api", "match": {"path_prefix": "/api"}, "service": "app"},
                {
                    "name": "limited",
                    "match": {"path_prefix": "/limited"},
                    "service": "app",
                    "rate_limit": {"rate": 1, "per": "1m", "burst": 1},
                },
            ],
        },
        source="<test>",
    )
    engine = await engine_factory(config)
    before = parse(render(engine.controller.snapshot()))[1]
    async with httpx.AsyncClient(base_url=engine.url()) as client:
        for _ in range(5):
            assert (await client.get("/api/x")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/limited")).status_code == 200
        assert (await client.get("/limited")).status_code == 429
    _, samples = parse(render(engine.controller.snapshot()))
    b1_labels = {"service": "app", "backend": "b1", "group": "default"}
    assert value(before, "lbtui_backend_requests_total", code="2xx", **b1_labels) == 0
    assert value(samples, "lbtui_backend_requests_total", code="2xx", **b1_labels) == 6
    assert value(samples, "lbtui_backend_latency_seconds_count", **b1_labels) == 6
    assert value(samples, "lbtui_backend_latency_seconds_bucket", le="+Inf", **b1_labels) == 6
    assert value(samples, "lbtui_backend_response_bytes_total", **b1_labels) > 0
    assert value(samples, "lbtui_route_requests_total", route="api", code="2xx") == 5
    assert value(samples, "lbtui_route_latency_seconds_count", route="api") == 5
    assert value(samples, "lbtui_route_requests_total", route="limited", code="4xx") == 1
    assert value(samples, "lbtui_route_rejections_total", route="limited", reason="rate limit") == 1
    assert value(samples, "lbtui_unmatched_requests_total", reason="no_route") == 1
    assert value(samples, "lbtui_connections_open") >= 1
    assert value(samples, "lbtui_uptime_seconds") > 0
