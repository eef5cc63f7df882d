"""The admin API's JSON shapes, built from a Snapshot and the audit log's Events (docs/operations.md).

A stable contract: keys are only ever added. Durations are milliseconds (`_ms`) or seconds (`_seconds`),
rates are per second, times are Unix seconds (wall clock). A number that has no value (a latency with no
requests) is null, never NaN.

The `*_from_json` functions read them back into the core's views (`lbtui attach` steers a remote engine with
the same dashboard): `snapshot_json(snapshot_from_json(x), now=x["time"]) == x`, and so for each shape. What a
view has and the JSON does not (the latency counts since start, `latency_counts`) comes back empty.
"""

from __future__ import annotations

import math
import time
from typing import Any

from lbtui.config import ConfigIssue
from lbtui.core.control import Event, ReloadRefused, ReloadResult
from lbtui.core.stats import BUCKETS, WindowView
from lbtui.core.views import (
    BackendView,
    CheckView,
    ListenerView,
    RampView,
    RequestView,
    RouteView,
    ServiceView,
    Snapshot,
)

SCHEMA_VERSION = 1

STATUS_CLASSES = ("failed", "1xx", "2xx", "3xx", "4xx", "5xx")  # "failed": no status at all (connect, reset)


def _number(value: float, digits: int = 3) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def window_json(window: WindowView) -> dict[str, Any]:
    """The last seconds of traffic: how many, how fast, how slow."""
    return {
        "seconds": _number(window.seconds),
        "requests": window.requests,
        "errors": window.errors,
        "rps": _number(window.rps),
        "p50_ms": _number(window.p50_ms),
        "p90_ms": _number(window.p90_ms),
        "p99_ms": _number(window.p99_ms),
        "p999_ms": _number(window.p999_ms),
        # The latency histogram, sparse: [bucket index, count] of the buckets with requests (core/stats.py).
        "buckets": [[i, c] for i, c in enumerate(window.counts) if c],
    }


def status_classes_json(classes: tuple[int, ...]) -> dict[str, int]:
    return dict(zip(STATUS_CLASSES, classes, strict=True))


def backend_json(b: BackendView) -> dict[str, Any]:
    return {
        "name": b.name,
        "service": b.service,
        "group": b.group,
        "address": b.address,
        "weight": b.weight,
        "admin_state": b.admin_state,
        "health": b.health,
        "health_label": b.health_label,
        "health_count": b.health_count,
        "health_of": b.health_of,
        "checked": b.checked,
        "in_flight": b.in_flight,
        "requests": b.requests,
        "status_classes": status_classes_json(b.status_classes),
        "bytes_in": b.bytes_in,
        "bytes_out": b.bytes_out,
        "connect_failures": b.connect_failures,
        "ewma_ms": _number(b.ewma_ms),
        "drain_seconds": None if b.drain_seconds is None else _number(b.drain_seconds),
        "drained": b.drained,
        "removing": b.removing,
        "ejected_seconds_left": None if b.ejected_left is None else _number(b.ejected_left),
        "slow_share": None if b.slow_share is None else _number(b.slow_share),
        "ejections_total": b.ejections_total,
        "sticky_requests": b.sticky_requests,
        "sticky_cookies_set": b.sticky_cookies,
        "latency_avg_ms": None if b.latency_avg_ms is None else _number(b.latency_avg_ms),
        "aborted": b.aborted,
        "checks": [
            {"time": round(c.time, 3), "ok": c.ok, "detail": c.detail, "duration_ms": _number(c.duration_ms)}
            for c in b.checks
        ],
        "rps": _number(b.window.rps),
        "p50_ms": _number(b.window.p50_ms),
        "p90_ms": _number(b.window.p90_ms),
        "p99_ms": _number(b.window.p99_ms),
        "window": window_json(b.window),
        # A fleet's row (lbtui/fleet.py): on how many instances its state and weight agree, what differs, and
        # why they diverged ("" while in step); null for one instance.
        "fleet": None
        if not b.instances
        else {
            "instances": b.instances,
            "agreeing": b.agreeing,
            "mixed": list(b.mixed),
            "diverged": b.diverged,
        },
    }


def ramp_json(r: RampView) -> dict[str, Any]:
    return {
        "stable": r.stable,
        "canary": r.canary,
        "steps": list(r.steps),
        "step": r.step,
        "percent": r.percent,
        "state": r.state,
        "hold_seconds_left": _number(r.hold_left),
        "waiting_for": r.waiting_for,
        "reason": r.reason,
    }


def service_json(s: ServiceView) -> dict[str, Any]:
    return {
        "name": s.name,
        "algorithm": s.algorithm,
        "split": dict(s.split) if s.split else None,
        "groups": list(s.groups),
        "backup_group": s.backup_group,
        "panic": s.panic,
        "in_flight": s.in_flight,
        "requests": s.requests,
        "status_classes": status_classes_json(s.status_classes),
        "unrouted": s.unrouted,
        "retries": s.retries,
        "retries_refused": s.retries_refused,
        "queued": s.queued,
        "queue_length": s.queue_length,
        "queue_full": s.queue_full,
        "sticky_cookie": s.sticky,
        "sticky_moved": s.sticky_moved,
        "sticky_unknown": s.sticky_unknown,
        "rps": _number(s.window.rps),
        "p50_ms": _number(s.window.p50_ms),
        "p90_ms": _number(s.window.p90_ms),
        "p99_ms": _number(s.window.p99_ms),
        "window": window_json(s.window),
        "ramp": ramp_json(s.ramp) if s.ramp is not None else None,
        "backends": [backend_json(b) for b in s.backends],
    }


def route_json(r: RouteView) -> dict[str, Any]:
    return {
        "name": r.name,
        "match": r.match,
        "target": r.target,
        "policies": list(r.policies),
        "status_classes": status_classes_json(r.status_classes),
        "rejected": dict(r.rejected),
        "cache": {"hits": r.cache[0], "misses": r.cache[1]},
        "window": window_json(r.window) if r.window is not None else None,
    }


def snapshot_json(snapshot: Snapshot, now: float | None = None) -> dict[str, Any]:
    """`GET /api/v1/state`."""
    return {
        "version": SCHEMA_VERSION,
        "time": round(time.time() if now is None else now, 3),
        "uptime_seconds": _number(snapshot.uptime),
        "connections": snapshot.connections,
        "listeners": [
            {"name": x.name, "mode": x.mode, "address": x.address, "tls": x.tls, "url": x.url}
            for x in snapshot.listeners
        ],
        "services": [service_json(s) for s in snapshot.services],
        "routes": [route_json(r) for r in snapshot.routes],
        "unmatched": {str(k): v for k, v in snapshot.extra.get("unmatched", {}).items()},
    }


def event_json(event: Event) -> dict[str, Any]:
    """One audited change (a mutation's answer, and each entry of `GET /api/v1/events`)."""
    return {
        "id": event.id,
        "time": round(event.time, 3),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "before": _plain(event.before),
        "after": _plain(event.after),
        "note": event.note,
        "text": event.describe(),
    }


def _plain(value: Any) -> Any:
    """A value of an event as JSON has it (events carry str, int, dicts of them, or None)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return _number(value, 6)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def request_json(r: RequestView) -> dict[str, Any]:
    """One finished request (`GET /api/v1/requests`, the access log's tail)."""
    return {
        "time": round(r.time, 3),
        "client": r.client,
        "method": r.method,
        "target": r.target,
        "status": r.status,
        "backend": r.backend,
        "service": r.service,
        "duration_ms": _number(r.duration_ms),
        "bytes_out": r.bytes_out,
        "route": r.route,
        "consumer": r.consumer,
    }


# -- back into views ---------------------------------------------------------------------------------------


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _classes(value: dict[str, int]) -> tuple[int, int, int, int, int, int]:
    a, b, c, d, e, f = (int(value[k]) for k in STATUS_CLASSES)
    return (a, b, c, d, e, f)


def window_from_json(value: dict[str, Any]) -> WindowView:
    counts = [0] * BUCKETS
    for index, count in value.get("buckets", ()):
        counts[index] = count
    return WindowView(
        seconds=_float(value["seconds"]),
        requests=value["requests"],
        errors=value["errors"],
        rps=_float(value["rps"]),
        p50_ms=_float(value["p50_ms"]),
        p90_ms=_float(value["p90_ms"]),
        p99_ms=_float(value["p99_ms"]),
        p999_ms=_float(value["p999_ms"]),
        counts=tuple(counts),
    )


def backend_from_json(value: dict[str, Any]) -> BackendView:
    return BackendView(
        name=value["name"],
        service=value["service"],
        group=value["group"],
        address=value["address"],
        weight=value["weight"],
        admin_state=value["admin_state"],
        health=value["health"],
        health_count=value["health_count"],
        in_flight=value["in_flight"],
        requests=value["requests"],
        status_classes=_classes(value["status_classes"]),
        bytes_in=value["bytes_in"],
        bytes_out=value["bytes_out"],
        connect_failures=value["connect_failures"],
        ewma_ms=_float(value["ewma_ms"]),
        drain_seconds=_optional(value["drain_seconds"]),
        drained=value.get("drained", False),
        removing=value["removing"],
        window=window_from_json(value["window"]),
        health_of=value["health_of"],
        checks=tuple(
            CheckView(c["time"], c["ok"], c["detail"], _float(c["duration_ms"]))
            for c in value.get("checks", ())
        ),
        checked=value["checked"],
        ejected_left=_optional(value["ejected_seconds_left"]),
        slow_share=_optional(value["slow_share"]),
        ejections_total=value.get("ejections_total", 0),
        sticky_requests=value.get("sticky_requests", 0),
        sticky_cookies=value.get("sticky_cookies_set", 0),
        latency_avg_ms=_optional(value.get("latency_avg_ms")),
        aborted=value.get("aborted", 0),
        **_fleet_from_json(value.get("fleet")),
    )


def _fleet_from_json(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    return {
        "instances": value["instances"],
        "agreeing": value["agreeing"],
        "mixed": tuple(value["mixed"]),
        "diverged": value["diverged"],
    }


def ramp_from_json(value: dict[str, Any]) -> RampView:
    return RampView(
        stable=value["stable"],
        canary=value["canary"],
        steps=tuple(value["steps"]),
        step=value["step"],
        percent=value["percent"],
        state=value["state"],
        hold_left=_float(value["hold_seconds_left"]),
        waiting_for=value["waiting_for"],
        reason=value["reason"],
    )


def service_from_json(value: dict[str, Any]) -> ServiceView:
    split = value["split"]
    backends = tuple(backend_from_json(b) for b in value["backends"])
    if "status_classes" in value:
        classes = _classes(value["status_classes"])
    else:  # a server from before services counted answers: its backends' attempts are what it counted
        a, b, c, d, e, f = (sum(x.status_classes[i] for x in backends) for i in range(6))
        classes = (a, b, c, d, e, f + value["unrouted"])  # (unrouted: 503s)
    return ServiceView(
        name=value["name"],
        algorithm=value["algorithm"],
        split=tuple(split.items()) if split else None,
        groups=tuple(value["groups"]),
        backup_group=value["backup_group"],
        backends=backends,
        unrouted=value["unrouted"],
        window=window_from_json(value["window"]),
        ramp=ramp_from_json(value["ramp"]) if value["ramp"] is not None else None,
        panic=value["panic"],
        retries=value["retries"],
        retries_refused=value["retries_refused"],
        queued=value["queued"],
        queue_length=value["queue_length"],
        queue_full=value["queue_full"],
        sticky=value.get("sticky_cookie"),
        sticky_moved=value.get("sticky_moved", 0),
        sticky_unknown=value.get("sticky_unknown", 0),
        status_classes=classes,
    )


def route_from_json(value: dict[str, Any]) -> RouteView:
    window = value["window"]
    return RouteView(
        name=value["name"],
        match=value["match"],
        target=value["target"],
        policies=tuple(value["policies"]),
        window=window_from_json(window) if window is not None else None,
        status_classes=_classes(value["status_classes"]),
        rejected=tuple(value["rejected"].items()),
        cache=(value["cache"]["hits"], value["cache"]["misses"]),
    )


def snapshot_from_json(value: dict[str, Any]) -> Snapshot:
    """`GET /api/v1/state` as a Snapshot. Its `time` is the server's wall clock (only differences are used)."""
    return Snapshot(
        time=float(value["time"]),
        uptime=_float(value["uptime_seconds"]),
        listeners=tuple(
            ListenerView(x["name"], x["mode"], x["address"], x["tls"]) for x in value["listeners"]
        ),
        services=tuple(service_from_json(s) for s in value["services"]),
        connections=value["connections"],
        extra={"unmatched": dict(value.get("unmatched", {}))},
        routes=tuple(route_from_json(r) for r in value["routes"]),
    )


def event_from_json(value: dict[str, Any]) -> Event:
    return Event(
        id=value["id"],
        time=float(value["time"]),
        actor=value["actor"],
        action=value["action"],
        target=value["target"],
        before=value["before"],
        after=value["after"],
        note=value["note"],
    )


def request_from_json(value: dict[str, Any]) -> RequestView:
    return RequestView(
        time=float(value["time"]),
        client=value["client"],
        method=value["method"],
        target=value["target"],
        status=value["status"],
        backend=value["backend"],
        service=value["service"],
        duration_ms=_float(value["duration_ms"]),
        bytes_out=value["bytes_out"],
        route=value["route"],
        consumer=value["consumer"],
    )


def refusal_json(refused: ReloadRefused) -> dict[str, Any]:
    """A refused reload: what the file's problems are; nothing changed."""
    issues = refused.issues
    source = issues[0].file if issues else "the config"
    return {
        "error": f"{source}: {len(issues)} problem(s); nothing changed, the running config stays",
        "issues": [
            {"file": issue.file, "key_path": issue.key_path, "message": issue.message, "hint": issue.hint}
            for issue in issues
        ],
    }


def refusal_from_json(value: dict[str, Any]) -> ReloadRefused:
    return ReloadRefused(
        ConfigIssue(str(i["file"]), str(i["key_path"]), str(i["message"]), _text_or_none(i.get("hint")))
        for i in value["issues"]
    )


def reload_from_json(value: dict[str, Any], events: list[Event]) -> ReloadResult:
    """A reload's answer (ReloadResult.json()) read back; `events` are those of its event ids that are known."""
    wanted = {int(i) for i in value.get("events", [])}
    return ReloadResult(
        source=str(value["source"]),
        changes=[str(line) for line in value.get("changes", [])],
        events=[event for event in events if event.id in wanted],
        restart_needed=[str(line) for line in value.get("restart_needed", [])],
        warnings=[str(line) for line in value.get("warnings", [])],
    )


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
