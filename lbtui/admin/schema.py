"""The admin API's JSON shapes, built from a Snapshot and the audit log's Events (docs/operations.md).

A stable contract: keys are only ever added. Durations are milliseconds (`_ms`) or seconds (`_seconds`),
rates are per second, times are Unix seconds (wall clock). A number that has no value (a latency with no
requests) is null, never NaN.
"""

from __future__ import annotations

import math
import time
from typing import Any

from lbtui.core.control import Event
from lbtui.core.model import BackendView, RampView, RouteView, ServiceView, Snapshot
from lbtui.core.stats import WindowView

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
        "removing": b.removing,
        "ejected_seconds_left": None if b.ejected_left is None else _number(b.ejected_left),
        "slow_share": None if b.slow_share is None else _number(b.slow_share),
        "rps": _number(b.window.rps),
        "p50_ms": _number(b.window.p50_ms),
        "p90_ms": _number(b.window.p90_ms),
        "p99_ms": _number(b.window.p99_ms),
        "window": window_json(b.window),
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
        "unrouted": s.unrouted,
        "retries": s.retries,
        "retries_refused": s.retries_refused,
        "queued": s.queued,
        "queue_length": s.queue_length,
        "queue_full": s.queue_full,
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
