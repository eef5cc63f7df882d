"""What the dashboard shows, as text: pure functions of the core's views (snapshots, events, requests).

No widget, no I/O, no clock but the one a view carries: each function turns a BackendView, ServiceView,
RouteView, Event or RequestView into the cells, lines or words the views put on screen, so that what the
dashboard says can be tested without running it. Colours are the theme's semantic variables (themes/*.toml),
always next to a word: a colour is never the only sign.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from rich.style import Style
from rich.text import Text

from lbtui.core.control import Event, ReloadRefused, ReloadResult
from lbtui.core.stats import bucket_bounds
from lbtui.core.views import BackendView, RampView, RequestView, RouteView, ServiceView, Snapshot
from lbtui.fleet import FleetInfo

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """Block characters scaled to the largest value; never alone: the caller puts the number beside it."""
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))] for v in values)


# HAProxy's colours, as the theme's semantic variables (themes/*.toml), always with a word: the colour is
# never the only sign.
STATE_STYLE = {"ready": "health-up", "drain": "health-drain", "maint": "health-maint"}
HEALTH_STYLE = {
    "up": "health-up",
    "down": "health-down",
    "going_up": "health-going",
    "going_down": "health-going",
    "ejected": "health-ejected",
}
# HAProxy's own status words (a HAProxy controller shows them as HAProxy says them): "UP 1/3" is up and failing
# checks, "DOWN 1/2" down and passing them: on their way, as going_down / going_up.
HAPROXY_HEALTH_STYLE = {
    "UP": "health-up",
    "DOWN": "health-down",
    "NOLB": "health-drain",
    "DRAIN": "health-drain",
    "MAINT": "health-maint",
}


def health_style(health: str) -> str:
    """The semantic style of a health word: lbtui's, or HAProxy's."""
    style = HEALTH_STYLE.get(health)
    if style is not None:
        return style
    word, _, progress = health.partition(" ")
    if progress[:1].isdigit() and word in ("UP", "DOWN"):
        return "health-going"
    return HAPROXY_HEALTH_STYLE.get(word, "")


# Latency and 5xx cells take latency-warn / errors-warn at these, then latency-bad / errors-bad; below, no
# colour (green is for health only).
LATENCY_WARN_MS = 100.0
LATENCY_BAD_MS = 500.0
ERRORS_WARN_PERCENT = 1.0
ERRORS_BAD_PERCENT = 5.0


def ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _past(
    value: float, text: str, kind: str, limits: tuple[float, float], palette: Mapping[str, Style]
) -> str | Text:
    """`text` in the `{kind}-bad` style at or past the bad limit, `{kind}-warn` at or past the warning one."""
    warn, bad = limits
    level = "bad" if value >= bad else "warn" if value >= warn else ""
    style = palette.get(f"{kind}-{level}") if level else None
    return Text.styled(text, style) if style else text


def sticky_share(requests: int, sticky: int) -> str:
    """The share of `requests` that came by their sticky cookie, in percent ("-" without requests)."""
    return f"{round(100 * sticky / requests)}%" if requests > 0 else "-"


def backend_cells(
    b: BackendView, palette: Mapping[str, Style] | None = None, sticky: bool = False
) -> dict[str, str | Text]:
    """The table cells of one backend, by column key, coloured by `palette` (semantic variable -> style);
    with `sticky` (its service has sticky sessions), the share of its requests since start that came by their
    cookie (the dashboard shows that of the last seconds).

    Styles are spans (Text.styled), so a cell whose colour changed compares unequal and is redrawn.
    """
    colours = palette or {}
    state = b.admin_state
    if state == "drain" and b.drained:
        state = "drained"  # nothing in flight: safe to take it down
    elif state == "drain" and b.drain_seconds is not None:
        state = f"drain {b.drain_seconds:.0f}s"
    health = b.health_label
    errors = b.status_classes[5] + b.status_classes[0]
    total = b.requests
    w = b.window
    # 5xx % of the window; with nothing in it, of every request so far.
    percent = 100.0 * w.error_ratio if w.requests else 100.0 * errors / total if total else None
    latency = (LATENCY_WARN_MS, LATENCY_BAD_MS)
    cells: dict[str, str | Text] = {
        "name": b.name,
        "group": b.group,
        "address": b.address,
        "state": Text.styled(state, colours.get(STATE_STYLE.get(b.admin_state, ""), "")),
        "health": Text.styled(health, colours.get(health_style(b.health), "")),
        "weight": str(b.weight),
        "in_flight": str(b.in_flight),
        "rps": f"{b.window.rps:.1f}",
        "requests": str(total),
        "errors": "-"
        if percent is None
        else _past(percent, f"{percent:.1f}", "errors", (ERRORS_WARN_PERCENT, ERRORS_BAD_PERCENT), colours),
        "p50": _past(w.p50_ms, ms(w.p50_ms), "latency", latency, colours) if w.requests else "-",
        "p99": _past(w.p99_ms, ms(w.p99_ms), "latency", latency, colours) if w.requests else "-",
    }
    if b.latency_avg_ms is not None:  # an engine with an average only (HAProxy): no percentile is made up
        cells["p50"] = cells["p99"] = "-"
        avg = b.latency_avg_ms
        cells["avg"] = "-" if math.isnan(avg) else _past(avg, ms(avg), "latency", latency, colours)
    if b.instances:  # a fleet's row (lbtui/fleet.py)
        cells["agree"] = agree_cell(b, colours)
        if "weight" in b.mixed:
            cells["weight"] = f"{b.weight}~"  # the most common weight; not every instance has it
    if sticky:
        cells["sticky"] = sticky_share(total, b.sticky_requests)
    return cells


def agree_cell(b: BackendView, colours: Mapping[str, Style]) -> str | Text:
    """A fleet's row: `3/3`; `2/3` in the warning colour where an instance differs or cannot be read;
    `DIVERGED` in the error colour where a rollback failed; `-` for one instance."""
    if not b.instances:
        return "-"
    if b.diverged:
        return Text.styled("DIVERGED", colours.get("errors-bad", ""))
    text = f"{b.agreeing}/{b.instances}"
    return text if b.agreeing == b.instances else Text.styled(text, colours.get("errors-warn", ""))


def split_bar(split: tuple[tuple[str, int], ...] | None, width: int = 20) -> str:
    """`blue 90% ██████████████████░░ green 10%` (first group filled): the split in words and a bar."""
    if not split:
        return "no split"
    total = sum(w for _, w in split) or 1
    shares = [(g, 100.0 * w / total) for g, w in split]
    if len(shares) != 2:
        return "  ".join(f"{g} {p:.0f}%" for g, p in shares)
    (a, pa), (b, pb) = shares
    filled = round(width * pa / 100.0)
    return f"{a} {pa:.0f}% {'█' * filled}{'░' * (width - filled)} {b} {pb:.0f}%"


def ramp_text(ramp: RampView | None) -> str:
    """A canary ramp in words: its progress and countdown, or how it ended."""
    if ramp is None:
        return ""
    if ramp.state == "running":
        steps = "/".join(str(p) for p in ramp.steps)
        wait = f", waiting for {ramp.waiting_for} requests" if ramp.waiting_for else ""
        return (
            f"ramp {ramp.step + 1}/{len(ramp.steps)} ({steps}%): {ramp.canary} {ramp.percent}%, "
            f"next in {ramp.hold_left:.0f}s{wait} (R aborts)"
        )
    if ramp.state == "done":
        return f"ramp done: {ramp.canary} {ramp.percent}%"
    return f"ramp {ramp.state}: {ramp.reason}"


def service_text(s: ServiceView) -> str:
    notes = [ramp_text(s.ramp)]
    if s.panic:
        notes.append("PANIC: too few healthy, every ready backend serves")
    if s.queue_length:
        notes.append(f"queue {s.queue_length}")
    if s.sticky:
        moves = [f"{n} {what}" for n, what in ((s.sticky_moved, "moved"), (s.sticky_unknown, "unknown")) if n]
        notes.append(f"sticky {s.sticky}" + (f" ({', '.join(moves)})" if moves else ""))
    return f"{s.name}: {s.algorithm}, {split_bar(s.split)}" + "".join(f"  │ {n}" for n in notes if n)


def services_line(snapshot: Snapshot) -> str:
    lines = [service_text(s) for s in snapshot.services]
    latency = snapshot.extra.get("latency")
    if latency and lines:  # an engine whose latency is not lbtui's percentiles says which figure it is
        lines[0] += f"  │ latency: {latency}"
    return "\n".join(lines)


def change_value(value: object) -> str:
    """An event's before or after value, short: dicts as `blue 90 green 10`."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def event_cells(event: Event) -> dict[str, str]:
    return {
        "id": str(event.id),
        "time": time.strftime("%H:%M:%S", time.localtime(event.time)),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "change": f"{change_value(event.before)} -> {change_value(event.after)}",
        "note": event.note,
    }


def event_line(event: Event) -> str:
    cells = event_cells(event)
    line = f"{cells['time']}  {event.actor:<6} {event.action:<9} {event.target:<16} {cells['change']}"
    return f"{line}  ({event.note})" if event.note else line


def recent_events_text(events: list[Event], filter_text: str, lines: int) -> str:
    """The newest `lines` events (newest first), or why there is none to show."""
    empty = f"no event matches the filter {filter_text!r}" if filter_text else "no events yet"
    return "\n".join(event_line(e) for e in events[:lines]) or empty


def change_text(event: Event) -> str:
    """What a key's change did, in one line (the message line)."""
    note = f" ({event.note})" if event.note else ""
    return f"{event.target}: {event.action} {change_value(event.before)} -> {change_value(event.after)}{note}"


def reload_text(result: ReloadResult) -> str:
    """What a reload changed: its summary and the first three changes."""
    shown = "; ".join(result.changes[:3]) + (" …" if len(result.changes) > 3 else "")
    return f"{result.summary()}: {shown}" if shown else result.summary()


def refused_text(refused: ReloadRefused) -> str:
    """Why a reload changed nothing: how many problems, and the first."""
    count = len(refused.issues)
    first = f": {refused.issues[0]}" if refused.issues else ""
    return f"reload refused, the running config stays ({count} problem{'s' if count != 1 else ''}){first}"


def matches(filter_text: str, *texts: str) -> bool:
    """Whether a row with `texts` is shown under the filter (any of them contains it, any case)."""
    wanted = filter_text.lower()
    return not wanted or any(wanted in text.lower() for text in texts)


def cache_hits(route: RouteView) -> str:
    """The share of a route's cache lookups that were hits ("-" before any, or without a cache)."""
    hits, misses = route.cache
    return f"{100 * hits // (hits + misses)}%" if hits + misses else "-"


def route_cells(route: RouteView) -> dict[str, str]:
    w = route.window
    sc = route.status_classes
    return {
        "name": route.name,
        "match": route.match,
        "target": route.target,
        "policies": ", ".join(route.policies) or "-",
        "hit": cache_hits(route),
        "rps": f"{w.rps:.1f}" if w else "-",
        "p50": ms(w.p50_ms) if w and w.requests else "-",
        "p99": ms(w.p99_ms) if w and w.requests else "-",
        "4xx": str(sc[4]),
        "5xx": str(sc[5]),
        "rejected": ", ".join(f"{why} {n}" for why, n in route.rejected) or "-",
    }


def routes_note(snapshot: Snapshot) -> str:
    """The line above the routes table: how routes are tried, and what no route took."""
    if not snapshot.routes:
        names = ", ".join(s.name for s in snapshot.services)
        return f"no routes: every request goes to the one service ({names})"
    unmatched = snapshot.extra.get("unmatched", {})
    counts = ", ".join(f"{why} {n}" for why, n in unmatched.items() if n)
    return "routes are tried most specific first: host, exact path, longest prefix, regex" + (
        f"  │ no route took: {counts}" if counts else ""
    )


def request_cells(r: RequestView) -> dict[str, str]:
    stamp = time.strftime("%H:%M:%S", time.localtime(r.time)) + f".{int(r.time % 1 * 1000):03d}"
    return {
        "time": stamp,
        "client": r.client,
        "method": r.method,
        "target": r.target,
        "status": str(r.status) if r.status else "fail",
        "route": r.route or "-",
        "consumer": r.consumer or "-",
        "backend": r.backend or "-",
        "ms": ms(r.duration_ms),
        "bytes": str(r.bytes_out),
    }


def latency_histogram(counts: tuple[int, ...], rows: int = 8, width: int = 40) -> list[str]:
    """The latency distribution of a window as text bars, in up to `rows` ranges of similar size."""
    nonzero = [i for i, c in enumerate(counts) if c]
    if not nonzero:
        return ["no requests in the window"]
    lo, hi = nonzero[0], nonzero[-1] + 1
    step = max(1, (hi - lo + rows - 1) // rows)
    groups = [(i, min(i + step, hi)) for i in range(lo, hi, step)]
    totals = [sum(counts[a:b]) for a, b in groups]
    peak = max(totals) or 1
    lines = []
    for (a, b), total in zip(groups, totals, strict=True):
        low, high = bucket_bounds(a)[0], bucket_bounds(b - 1)[1]
        bar = "█" * max(1 if total else 0, round(width * total / peak))
        lines.append(f"{low / 1000:>8.2f} - {high / 1000:>8.2f} ms {bar} {total}")
    return lines


def fleet_lines(snapshot: Snapshot, b: BackendView) -> list[str]:
    """A fleet's row per instance (lbtui/fleet.py's FleetInfo in the snapshot's extra), after a line that says
    on how many they agree, and why they diverged."""
    info = snapshot.extra.get("fleet")
    if not isinstance(info, FleetInfo):
        return []
    rows = info.rows.get((b.service, b.name), ())
    head = f"on {b.instances} instances: state and weight agree on {b.agreeing}"
    if b.mixed:
        head += f"; {', '.join(b.mixed)} {'differs' if len(b.mixed) == 1 else 'differ'}"
    lines = [head]
    if b.diverged:
        lines.append(
            f"DIVERGED: {b.diverged} (until a change of it succeeds everywhere, or they agree again)"
        )
    # 94 cells wide: the detail dialog's width (a URL longer than its column keeps its end, which tells them apart)
    lines.append(
        f"  {'instance':<28} {'state':<8} {'health':<10} {'weight':>6} {'in flight':>9} {'requests':>8} "
        f"{'req/s':>7} {'latency':>9}"
    )
    for row in rows:
        label = row.member if len(row.member) <= 28 else "…" + row.member[-27:]
        if row.backend is None:
            lines.append(f"  {label:<28} {'(no such backend here)' if row.reachable else 'UNREACHABLE'}")
            continue
        x = row.backend
        if x.latency_avg_ms is not None:
            latency = f"avg {ms(x.latency_avg_ms)}"
        elif x.window.requests:
            latency = f"p99 {ms(x.window.p99_ms)}"
        else:
            latency = "-"
        state = x.admin_state if row.reachable else f"{x.admin_state}?"
        lines.append(
            f"  {label:<28} {state:<8} {x.health_label:<10} {x.weight:>6} {x.in_flight:>9} {x.requests:>8} "
            f"{x.window.rps:>7.1f} {latency:>9}" + ("" if row.reachable else "  UNREACHABLE (last seen)")
        )
    return [*lines, ""]


def fleet_status(snapshot: Snapshot) -> str:
    """`fleet 3/3 up`, or `fleet 2/3 up, unreachable: URL` ("" for one instance)."""
    info = snapshot.extra.get("fleet")
    if not isinstance(info, FleetInfo):
        return ""
    down = info.unreachable
    text = f"fleet {len(info.members) - len(down)}/{len(info.members)} up"
    if down:
        text += ", unreachable: " + ", ".join(m.name for m in down)
    if info.diverged_services:
        text += ", DIVERGED: " + ", ".join(info.diverged_services)
    return text


def detail_text(snapshot: Snapshot, name: str) -> str:
    try:
        b = snapshot.backend(name)
    except KeyError:
        return f"{name}: removed"
    sc = b.status_classes
    w = b.window
    if b.latency_avg_ms is not None:  # an engine with an average only (HAProxy's rtime): no percentiles
        label = snapshot.extra.get("latency") or "avg"
        latency = [
            f"last {w.seconds:.1f} s: {w.requests} requests, {w.rps:.1f} req/s; "
            f"latency {label}: {b.latency_avg_ms:.0f} ms (no percentiles)"
        ]
        cost = ""
    else:
        latency = [
            f"last {w.seconds:.0f} s: {w.requests} requests, {w.rps:.1f} req/s, "
            f"p50 {w.p50_ms:.2f}  p90 {w.p90_ms:.2f}  p99 {w.p99_ms:.2f}  p99.9 {w.p999_ms:.2f} ms",
            "",
            *latency_histogram(w.counts),
        ]
        cost = f"   EWMA {b.ewma_ms:.2f} ms"
    lines = [
        f"{b.name}  ({b.service}, group {b.group}, {b.address})",
        f"state {b.admin_state}, health {b.health_label}, weight {b.weight}, in flight {b.in_flight}",
        f"requests {b.requests}   connect failures {b.connect_failures}{cost}",
        f"status: 1xx {sc[1]}  2xx {sc[2]}  3xx {sc[3]}  4xx {sc[4]}  5xx {sc[5]}  failed {sc[0]}",
        f"bytes in {b.bytes_in}  out {b.bytes_out}   responses cut mid-way {b.aborted}",
        *sticky_lines(snapshot, b),
        "",
        *fleet_lines(snapshot, b),
        *latency,
        "",
        *check_history(b),
        "",
        "escape: back",
    ]
    return "\n".join(lines)


def sticky_lines(snapshot: Snapshot, b: BackendView) -> list[str]:
    """A backend's sticky sessions since start, when its service has them."""
    try:
        cookie = snapshot.service(b.service).sticky
    except KeyError:
        cookie = None
    if not cookie:
        return []
    return [
        f"sticky {cookie}: {b.sticky_requests} of {b.requests} requests by cookie "
        f"({sticky_share(b.requests, b.sticky_requests)}), {b.sticky_cookies} sessions set here"
    ]


def check_history(b: BackendView, rows: int = 10) -> list[str]:
    """The newest active health checks of a backend, newest first."""
    if not b.checked:
        return ["health checks: none (the service has no `health` config; the backend counts as up)"]
    if not b.checks:
        return ["health checks: none yet"]
    lines = [f"health checks, newest first (last {min(rows, len(b.checks))} of {len(b.checks)} kept):"]
    for check in reversed(b.checks[-rows:]):
        stamp = time.strftime("%H:%M:%S", time.localtime(check.time))
        lines.append(f"  {stamp}  {'pass' if check.ok else 'FAIL':<4}  {check.detail}")
    return lines


def can_serve(health: str) -> bool:
    """Whether a backend of this health takes traffic: lbtui's `up`/`going_down`, HAProxy's `UP`, `UP 1/3` (going
    down) and `no check` (a server without checks counts as up)."""
    return health in ("up", "going_down", "no check") or health.partition(" ")[0] == "UP"


def status_level(snapshot: Snapshot) -> str:
    """ "error" when a service has no backend that can serve, "warning" when one is degraded, else "ok"."""
    level = "ok"
    for service in snapshot.services:
        serving = [b for b in service.backends if b.admin_state == "ready" and can_serve(b.health)]
        if not serving:
            return "error"
        if len(serving) < len(service.backends) or service.window.error_ratio > 0.05:
            level = "warning"
    return level


def status_line(snapshot: Snapshot, flags: tuple[str, ...] = ()) -> str:
    # An engine lbtui does not run (HAProxy) has no listeners of lbtui's: the line names the engine instead.
    listeners = "  ".join(f"{v.name} {v.url}" for v in snapshot.listeners) or str(
        snapshot.extra.get("engine") or "no listener"
    )
    requests = sum(s.window.requests for s in snapshot.services)
    errors = sum(s.window.errors for s in snapshot.services)
    rps = sum(s.window.rps for s in snapshot.services)
    # No percentiles where the engine has none (HAProxy without its request log: NaN): its rows show averages.
    p99s = [s.window.p99_ms for s in snapshot.services if not math.isnan(s.window.p99_ms)]
    uptime = time.strftime("%H:%M:%S", time.gmtime(snapshot.uptime))
    ratio = f"{100.0 * errors / requests:.1f}%" if requests else "-"
    if not p99s and snapshot.services:
        latency = "latency: avg per row"
    else:
        latency = f"p99 {ms(max(p99s, default=0.0))} ms" if requests else "p99 -"
    fleet = fleet_status(snapshot)
    if fleet:
        listeners = fleet if not snapshot.listeners else f"{fleet} │ {listeners}"
    line = f"{listeners} │ {rps:.1f} req/s │ 5xx {ratio} │ {latency} │ up {uptime}"
    return " │ ".join((line, *flags))
