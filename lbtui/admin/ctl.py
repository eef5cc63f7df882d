"""`lbtui ctl`: steer a running lbtui through its admin API (the parser is in lbtui/cli.py).

Exit codes: 0 done; 1 the API refused (its message), could not be reached, or what answered is not lbtui's
admin API (or not its version, or its JSON is of another shape): one line on stderr, never a traceback;
2 bad usage (argparse); 3 `drain --wait` reached its timeout with requests still in flight.

The client (admin/client.py) identifies the API before the first command's request, and hands over only
JSON that reads back into the core's views; the formatting here still takes any value (`str()`), so that
nothing an answer holds can end in a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TextIO

from lbtui.admin.client import DEFAULT_TIMEOUT, AdminClient, ApiError, ClientError, default_url
from lbtui.admin.direct import ControllerClient

EXIT_TIMEOUT: Final = 3
TOKEN_ENV: Final = "LBTUI_ADMIN_TOKEN"
URL_ENV: Final = "LBTUI_ADMIN"
POLL_SECONDS: Final = 0.1


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return " ".join(f"{k}={_value(v)}" for k, v in value.items()) or "none"
    return str(value)


def describe(event: dict[str, Any]) -> str:
    """One line for a change the API made: what, before -> after."""
    action, target = event.get("action"), event.get("target")
    before, after = event.get("before"), event.get("after")
    if action == "add" and isinstance(after, dict):
        return (
            f"{target}: added to {after.get('service')} ({after.get('address')}, group {after.get('group')}, "
            f"weight {after.get('weight')})"
        )
    if action == "remove":
        return f"{target}: removing (no new traffic; gone once nothing is in flight)"
    text = f"{target}: {action} {_value(before)} -> {_value(after)}"
    note = event.get("note")
    return f"{text} ({note})" if note else text


def _p99(figures: dict[str, Any]) -> str:
    """A service's or backend's p99, or "-" when its window has no request (its percentiles are zeros then)."""
    if not (figures.get("window") or {}).get("requests"):
        return "-"
    return _ms(figures.get("p99_ms"))


def _ms(value: Any) -> str:
    text = _milliseconds(value)
    return f"{text} ms" if text != "-" else text


def _milliseconds(value: Any) -> str:
    """A duration in ms, to 10 us below 10 ms (a request on loopback takes a few hundred us), else to 0.1 ms."""
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.2f}" if value < 10.0 else f"{value:.1f}"


def _rate(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def format_state(state: dict[str, Any]) -> str:
    """The human view of GET /api/v1/state: each service, then its backends in a table."""
    lines: list[str] = []
    for service in state.get("services", []):
        split = service.get("split")
        # An engine with an average latency only (HAProxy's rtime): that column, under its own name.
        average = any(b.get("latency_avg_ms") is not None for b in service.get("backends", []))
        head = f"{service['name']}: {service['algorithm']}"
        if split:
            head += f", split {_value(split)}"
        head += f", {_rate(service.get('rps'))} req/s"
        if not average:
            head += f", p99 {_p99(service)}"
        if service.get("panic"):
            head += ", PANIC (too few healthy)"
        lines.append(head)
        latency = "AVG MS (HAPROXY, LAST 1024)" if average else "P99"
        # A fleet (lbtui/fleet.py): on how many instances each row's state and weight agree, or DIVERGED.
        fleet = any(b.get("fleet") for b in service.get("backends", []))
        rows = [["NAME", "GROUP", "STATE", "HEALTH", "WEIGHT", *(["AGREE"] if fleet else []), "IN-FLIGHT"]]
        rows[0] += ["REQ/S", latency]
        for b in service.get("backends", []):
            shown = "drained" if b["admin_state"] == "drain" and b.get("drained") else b["admin_state"]
            admin_state = f"{shown}" + (" (removing)" if b.get("removing") else "")
            agree = []
            if fleet:
                f = b.get("fleet") or {}
                agree = [
                    "DIVERGED" if f.get("diverged") else f"{f.get('agreeing', 0)}/{f.get('instances', 0)}"
                ]
            rows.append(
                [
                    str(b["name"]),
                    str(b["group"]),
                    admin_state,
                    str(b.get("health_label") or b["health"]),
                    str(b["weight"]),
                    *agree,
                    str(b["in_flight"]),
                    _rate(b.get("rps")),
                    _milliseconds(b.get("latency_avg_ms")) if average else _p99(b),
                ]
            )
        lines.extend(_table(rows))
        lines.append("")
    if not lines:
        return "no services"
    return "\n".join(lines).rstrip()


def format_events(events: Sequence[dict[str, Any]]) -> str:
    if not events:
        return "no events"
    out = []
    for event in events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(event["time"])))
        out.append(f"{when}  #{event['id']}  {event.get('actor')}: {describe(event)}")
    return "\n".join(out)


def format_requests(requests: Sequence[dict[str, Any]]) -> str:
    """The newest finished requests, newest first, as the dashboard's access log shows them."""
    if not requests:
        return "no requests yet"
    rows = [["TIME", "CLIENT", "METHOD", "TARGET", "STATUS", "ROUTE", "CONSUMER", "BACKEND", "MS"]]
    for r in requests:
        at = float(r["time"])
        when = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"
        duration = r.get("duration_ms")
        rows.append(
            [
                when,
                str(r.get("client") or "-"),
                str(r.get("method")),
                str(r.get("target")),
                str(r.get("status")),
                str(r.get("route") or "-"),
                str(r.get("consumer") or "-"),
                str(r.get("backend") or "-"),
                _milliseconds(duration),
            ]
        )
    return "\n".join(_table(rows, indent=""))


def parse_split(items: Sequence[str]) -> dict[str, int]:
    split: dict[str, int] = {}
    for item in items:
        group, sep, percent = item.partition("=")
        if not sep or not group or not percent.strip().isdigit():
            raise ClientError(f"a split is GROUP=WEIGHT ..., e.g. blue=90 green=10; got {item!r}")
        split[group] = int(percent)
    return split


class Ctl:
    """One `lbtui ctl` run: a client, where to print, and the command's arguments."""

    def __init__(
        self, args: argparse.Namespace, out: TextIO, err: TextIO, client: ControllerClient | None = None
    ) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.json = bool(getattr(args, "json", False))
        self.client: AdminClient | ControllerClient
        if client is not None:  # a Controller of another engine (HAProxy's), built by lbtui/cli.py
            self.client = client
            return
        token_env = getattr(args, "token_env", None) or TOKEN_ENV
        timeout = getattr(args, "request_timeout", None) or DEFAULT_TIMEOUT
        self.client = AdminClient(admin_url(args), os.environ.get(token_env) or None, timeout=timeout)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def change(self, event: Any) -> int:
        self.say(json.dumps(event, indent=2) if self.json else describe(event))
        return 0

    def run(self) -> int:
        command: Callable[[], int] = getattr(self, "cmd_" + self.args.ctl_command.replace("-", "_"))
        try:
            return command()
        finally:
            self.client.close()

    # -- commands ---------------------------------------------------------------------------------------------
    def cmd_state(self) -> int:
        state = self.client.state()
        self.say(json.dumps(state, indent=2) if self.json else format_state(state))
        return 0

    def cmd_events(self) -> int:
        answer = self.client.events(self.args.limit)
        self.say(json.dumps(answer, indent=2) if self.json else format_events(answer["events"]))
        return 0

    def cmd_drain(self) -> int:
        self.change(self.client.set_state(self.args.name, "drain"))
        if not self.args.wait:
            return 0
        return self.wait_drained(self.args.name, self.args.timeout)

    def wait_drained(self, name: str, timeout: float) -> int:
        """Poll the backend until nothing is in flight; print the count as it goes down."""
        deadline = time.monotonic() + timeout
        last: int | None = None
        # Reads in a row with nothing in flight before it is drained: lbtui's engine counts exactly (one read);
        # a polled engine (HAProxy) is drained when scur stays 0 across several of its polls.
        quiet_reads = self.client.quiet_reads
        quiet = 0
        while True:
            try:
                in_flight = int(self.client.backend(name)["in_flight"])
            except ApiError as error:
                if error.status == 404:
                    self.say(f"{name}: gone")
                    return 0
                raise
            if in_flight != last:
                if self.json:
                    self.say(json.dumps({"backend": name, "in_flight": in_flight}))
                else:
                    self.say(f"{name}: {in_flight} in flight")
                last = in_flight
            quiet = quiet + 1 if in_flight == 0 else 0
            if quiet >= quiet_reads:
                if not self.json:
                    self.say(f"{name}: drained")
                return 0
            if time.monotonic() >= deadline:
                print(
                    f"lbtui ctl: {name}: still {in_flight} in flight after {self.args.timeout:g}s",
                    file=self.err,
                )
                return EXIT_TIMEOUT
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def cmd_enable(self) -> int:
        return self.change(self.client.set_state(self.args.name, "enable"))

    def cmd_maint(self) -> int:
        return self.change(self.client.set_state(self.args.name, "maint"))

    cmd_disable = cmd_maint

    def cmd_weight(self) -> int:
        return self.change(self.client.set_weight(self.args.name, self.args.weight))

    def cmd_add(self) -> int:
        a = self.args
        return self.change(self.client.add_backend(a.service, a.name, a.address, a.group, a.weight))

    def cmd_remove(self) -> int:
        return self.change(self.client.remove_backend(self.args.name))

    def cmd_algorithm(self) -> int:
        return self.change(self.client.set_algorithm(self.args.service, self.args.algorithm))

    def cmd_split(self) -> int:
        return self.change(self.client.set_split(self.args.service, parse_split(self.args.split)))

    def cmd_flip(self) -> int:
        return self.change(self.client.flip(self.args.service))

    def cmd_ramp(self) -> int:
        if self.args.abort:
            return self.change(self.client.abort_ramp(self.args.service))
        follow = getattr(self.client, "follow_ramp", None)  # HAProxy's: the ramp runs in this process
        if follow is None:
            self.change(self.client.start_ramp(self.args.service))
            return 0
        try:
            started = self.client.start_ramp(self.args.service)
            self.change(started)
        except KeyboardInterrupt:  # Ctrl-C as it began: it runs in this process, so it ends with it
            self.change(self.client.abort_ramp(self.args.service))
            return 1
        return int(follow(self.args.service, started, self.change))

    def cmd_undo(self) -> int:
        return self.change(self.client.undo())

    def cmd_requests(self) -> int:
        answer = self.client.requests(self.args.limit)
        self.say(json.dumps(answer, indent=2) if self.json else format_requests(answer["requests"]))
        return 0

    def cmd_reload(self) -> int:
        """What the reload changed; or, for a bad file, its problems (on stderr) and exit 1."""
        try:
            answer = self.client.reload()
        except ApiError as error:
            if error.status != 400 or not isinstance(error.body, dict):
                raise
            if self.json:
                self.say(json.dumps(error.body, indent=2))
            else:
                print(f"lbtui ctl: reload refused: {error}", file=self.err)
                issues = error.body.get("issues")
                for issue in issues if isinstance(issues, list) else []:
                    if not isinstance(issue, dict):
                        continue
                    where = ": ".join(str(issue.get(k)) for k in ("file", "key_path") if issue.get(k))
                    print(f"  {where}: {issue.get('message')}", file=self.err)
            return 1
        if self.json:
            self.say(json.dumps(answer, indent=2))
            return 0
        self.say(str(answer.get("summary", "reloaded")))
        for key in ("changes", "warnings", "restart_needed"):
            for line in answer.get(key, []):  # lists: the client checked
                self.say(f"  {line}")
        return 0


def admin_url(args: argparse.Namespace) -> str:
    """The URL `ctl` steers: --admin, else $LBTUI_ADMIN, else the default admin API."""
    # --admin is repeatable, before or after COMMAND (lbtui/cli.py): several make a fleet, one is this URL
    given = getattr(args, "admin", None)
    urls = (
        [given] if isinstance(given, str) else [*(given or []), *(getattr(args, "admin_after", None) or [])]
    )
    admin = urls[0] if urls else None
    url: str = admin or os.environ.get(URL_ENV) or default_url()
    return url


def run(
    args: argparse.Namespace,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    client: ControllerClient | None = None,
) -> int:
    """Run `lbtui ctl`'s command (over `client` where one is given, else the admin API at `admin_url(args)`);
    errors go to `err` as one line, never a traceback."""
    try:
        return Ctl(args, out, err, client).run()
    except ClientError as error:
        print(f"lbtui ctl: {error}", file=err)
        return 1
