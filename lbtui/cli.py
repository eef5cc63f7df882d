"""The command line (README.md "Commands"; docs/operations.md for ctl and attach).

No traceback ever reaches the user.

The one place that wires the faces to the runtime: it hands the runtime the admin API's starter
(ServeOptions.admin_server), for `serve` and for the dashboard that hosts the engine, and hands `attach`'s
dashboard a RemoteController (a HaproxyController for a haproxy:// URL, as it hands `ctl` one; a FleetController
over one of those per URL where several are given); the dashboard, the admin API, the HAProxy client and the
fleet never import each other.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lbtui import __version__
from lbtui.config import ALGORITHMS, Config, ConfigError, load_config, parse_duration
from lbtui.features import ignored, refused

if TYPE_CHECKING:
    from textual.theme import Theme

    from lbtui.fleet import FleetController as Fleet
    from lbtui.haproxy.controller import HaproxyController

DEFAULT_CONFIG = "lbtui.toml"
GROUPS_ENV = "LBTUI_HAPROXY_GROUPS"
GROUPS_HELP = (
    "on HAProxy: a TOML file naming groups of each backend's servers and their canary ramp (default: "
    "$LBTUI_HAPROXY_GROUPS; see docs/haproxy.md)"
)
FRESH_HELP = "start from the config alone: do not restore [state].file (it is still written after changes)"


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _timeout(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a timeout must be above 0")
    return seconds


class _Version(argparse.Action):
    """--version: the version, and which data plane this install runs (known only by importing it)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from lbtui import data_plane_line

        print(f"lbtui {__version__}; {data_plane_line()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lbtui",
        description="A load balancer and API gateway that lives in your terminal.",
    )
    parser.add_argument(
        "--version", action=_Version, help="print the version and which data plane runs, then exit"
    )
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help=f"dashboard: config file (default ./{DEFAULT_CONFIG}, else the demo)",
    )
    parser.add_argument(
        "--demo", action="store_true", help="dashboard: the built-in demo even if a config exists"
    )
    parser.add_argument(
        "--read-only", action="store_true", help="dashboard: watch only; every steering key is off"
    )
    parser.add_argument("--fresh", action="store_true", help=f"dashboard: {FRESH_HELP}")
    parser.add_argument(
        "--theme",
        metavar="NAME",
        help="dashboard: colour theme: dark (default), light, high-contrast, one of Textual's, or the path of "
        "a .toml theme file (default: $LBTUI_THEME, else dark; see docs/themes.md)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the engine headless (SIGTERM drains and exits)")
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--config", "-c", metavar="FILE", help=f"config file (default: ./{DEFAULT_CONFIG})")
    source.add_argument("--demo", action="store_true", help="run the built-in demo: backends and traffic")
    serve.add_argument(
        "--grace", type=_duration, default=10.0, metavar="DURATION", help="shutdown deadline (default 10s)"
    )
    serve.add_argument(
        "--traffic",
        type=float,
        default=20.0,
        metavar="RPS",
        help="demo traffic in requests per second (default 20; 0 for none)",
    )
    serve.add_argument("--fresh", action="store_true", help=FRESH_HELP)

    check = sub.add_parser("check", help="validate a config file; exits 1 on an error")
    check.add_argument("file", metavar="FILE")
    _add_ctl(sub)

    attach = sub.add_parser(
        "attach",
        help="the dashboard on a running `lbtui serve` or HAProxy, or on several as a fleet",
        description="The dashboard on a running `lbtui serve` (through its admin API), a running HAProxy "
        "(through its stats socket), or several of them steered as one: every key works as in `lbtui`. "
        "Quitting leaves them running.",
    )
    attach.add_argument(
        "url",
        nargs="*",
        metavar="URL",
        help="the admin API (default: $LBTUI_ADMIN, else http://127.0.0.1:9901), or a HAProxy stats socket: "
        "haproxy:///path/admin.sock or haproxy://HOST:PORT; several: a fleet, steered as one (docs/fleet.md)",
    )
    attach.add_argument(
        "--token-env",
        metavar="VAR",
        help="the environment variable holding the admin token (default LBTUI_ADMIN_TOKEN)",
    )
    attach.add_argument("--haproxy-groups", metavar="FILE", help=GROUPS_HELP)
    # SUPPRESS: `lbtui --theme X attach` keeps the X given before the command.
    attach.add_argument(
        "--theme", metavar="NAME", default=argparse.SUPPRESS, help="colour theme, as for lbtui"
    )
    attach.add_argument(
        "--read-only",
        action="store_true",
        default=argparse.SUPPRESS,
        help="watch only; every steering key is off",
    )
    return parser


def _ctl_options(admin_dest: str) -> argparse.ArgumentParser:
    """ctl's options. --admin is repeatable (a fleet): given before COMMAND it lands in `admin`, after it in
    `admin_after` (a command's parser would otherwise replace the list given before it); cmd_ctl joins them."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin",
        metavar="URL",
        dest=admin_dest,
        action="append",
        default=argparse.SUPPRESS,
        help="the admin API (default: $LBTUI_ADMIN, else http://127.0.0.1:9901), or a HAProxy stats socket: "
        "haproxy:///path/admin.sock or haproxy://HOST:PORT; given again: a fleet, steered as one (docs/fleet.md)",
    )
    common.add_argument(
        "--token-env",
        metavar="VAR",
        default=argparse.SUPPRESS,
        help="the environment variable holding the admin token (default LBTUI_ADMIN_TOKEN)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON as it is"
    )
    common.add_argument("--haproxy-groups", metavar="FILE", default=argparse.SUPPRESS, help=GROUPS_HELP)
    common.add_argument(
        "--request-timeout",
        type=_timeout,
        default=argparse.SUPPRESS,
        metavar="DURATION",
        help="how long to wait for each answer of the admin API (default 10s)",
    )
    return common


def _add_ctl(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`lbtui ctl`: steer a running instance through its admin API (lbtui/admin/ctl.py runs it)."""
    # The options are taken before or after COMMAND alike; SUPPRESS keeps a command's parser from
    # overwriting what was given before it.
    common = _ctl_options("admin")
    after = _ctl_options("admin_after")
    ctl = sub.add_parser(
        "ctl",
        parents=[common],
        help="steer a running lbtui through its admin API",
        description="Steer a running lbtui through its admin API. Exit codes: 0 done, 1 refused, "
        "unreachable, or not an lbtui admin API, 2 bad usage, 3 drain --wait timed out.",
    )
    commands = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[after], help=help, description=help)

    command("state", "services and backends: state, health, weight, in flight, req/s, p99")
    drain = command("drain", "no new traffic to a backend; in-flight requests finish")
    drain.add_argument("name", metavar="NAME")
    drain.add_argument(
        "--wait", action="store_true", help="wait until nothing is in flight (exit 3 on timeout)"
    )
    drain.add_argument(
        "--timeout", type=_duration, default=60.0, metavar="DURATION", help="for --wait (default 60s)"
    )
    for name, text in (
        ("enable", "back to ready: the backend takes traffic again"),
        ("disable", "maintenance: no traffic at all, health checks stop (same as maint)"),
        ("maint", "maintenance: no traffic at all, health checks stop"),
        ("remove", "remove a backend (it drains first)"),
    ):
        command(name, text).add_argument("name", metavar="NAME")
    weight = command("weight", "set a backend's weight (0-1000)")
    weight.add_argument("name", metavar="NAME")
    weight.add_argument("weight", type=int, metavar="N")
    add = command("add", "add a backend to a service")
    add.add_argument("service", metavar="SERVICE")
    add.add_argument("name", metavar="NAME")
    add.add_argument("address", metavar="ADDRESS", help="host:port")
    add.add_argument("--group", default="default", help="its group (default: default)")
    add.add_argument("--weight", type=int, default=1, help="its weight (default 1)")
    algorithm = command("algorithm", "switch a service's algorithm")
    algorithm.add_argument("service", metavar="SERVICE")
    algorithm.add_argument("algorithm", metavar="NAME", help=", ".join(ALGORITHMS))
    split = command("split", "weight a service's groups, e.g. split shop blue=90 green=10")
    split.add_argument("service", metavar="SERVICE")
    split.add_argument("split", metavar="GROUP=WEIGHT", nargs="+")
    command("flip", "blue/green: swap the weights of a service's two groups").add_argument(
        "service", metavar="SERVICE"
    )
    command(
        "reload",
        "re-read the config file the instance started with and apply it (a bad file changes nothing)",
    )
    events = command("events", "the audit log, newest first")
    events.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default 20)")
    ramp = command("ramp", "start a service's canary ramp (its [services.NAME.ramp] steps), or --abort it")
    ramp.add_argument("service", metavar="SERVICE")
    ramp.add_argument("--abort", action="store_true", help="stop the ramp and roll back to the stable group")
    command("undo", "undo the last change (as u in the dashboard)")
    requests = command("requests", "the newest finished requests, newest first (the access log's tail)")
    requests.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default 20)")


def _load(path: str, verdict: str) -> Config | int:
    """The config at `path`, or the exit code after printing why not (errors, or keys this version refuses).

    Keys that this version accepts but ignores are printed as warnings; `verdict` ends the refusal message.
    """
    try:
        config = load_config(path)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        count = len(error.issues)
        print(f"lbtui: {path}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    for item in ignored(config):
        print(f"lbtui: {path}: warning: {item}", file=sys.stderr)
    blocked = refused(config)
    for item in blocked:
        print(f"lbtui: {path}: {item}", file=sys.stderr)
    if blocked:
        print(f"lbtui: {path}: {verdict}", file=sys.stderr)
        return 1
    return config


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.file, "valid, but uses what this version cannot run")
    if isinstance(config, int):
        return config
    backends = sum(len(s.backends) for s in config.services)
    print(
        f"{args.file}: ok ({len(config.listeners)} listener(s), {len(config.services)} service(s), "
        f"{backends} backend(s), {len(config.routes)} route(s))"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lbtui.admin.api import start_admin_server
    from lbtui.serve import ServeOptions, run

    config: Config | None = None
    if not args.demo:
        path = args.config
        if path is None:
            if not os.path.exists(DEFAULT_CONFIG):
                print(
                    f"lbtui: no --config given and no ./{DEFAULT_CONFIG} here; "
                    "use `lbtui serve --config FILE` or `lbtui serve --demo`",
                    file=sys.stderr,
                )
                return 2
            path = DEFAULT_CONFIG
        loaded = _load(path, "not started: remove or comment out the keys above")
        if isinstance(loaded, int):
            return loaded
        config = loaded
    options = ServeOptions(
        config=config,
        grace=args.grace,
        traffic_rate=args.traffic,
        fresh=args.fresh,
        admin_server=start_admin_server,
    )
    return run(options)


def _dashboard_theme(args: argparse.Namespace) -> Theme | int:
    """The dashboard's theme from --theme or $LBTUI_THEME, or the exit code after printing why not."""
    from lbtui.tui import themes

    if os.environ.get("NO_COLOR") == "":
        # no-color.org: only a non-empty NO_COLOR turns colour off; Textual would take an empty one too.
        del os.environ["NO_COLOR"]
    theme_name = args.theme or os.environ.get("LBTUI_THEME") or themes.DEFAULT_THEME
    try:
        theme = themes.load_theme(theme_name)
    except themes.UnknownThemeError as error:
        source = "" if args.theme else " (from LBTUI_THEME)"
        print(f"lbtui: {error}{source}", file=sys.stderr)
        return 2
    except themes.ThemeError as error:
        print(str(error), file=sys.stderr)
        count = len(error.issues)
        print(f"lbtui: theme {theme_name}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    return theme


def cmd_dashboard(args: argparse.Namespace) -> int:
    """`lbtui`: the dashboard with the engine inside (the UI is imported only here)."""
    from lbtui.admin.api import start_admin_server
    from lbtui.serve import ServeOptions
    from lbtui.tui import themes

    theme = _dashboard_theme(args)
    if isinstance(theme, int):
        return theme
    config: Config | None = None
    path = args.config or (DEFAULT_CONFIG if not args.demo and os.path.exists(DEFAULT_CONFIG) else None)
    if path is not None and not args.demo:
        loaded = _load(path, "not started: remove or comment out the keys above")
        if isinstance(loaded, int):
            return loaded
        config = loaded
    from lbtui.tui.app import Dashboard

    try:
        options = ServeOptions(config=config, fresh=args.fresh, admin_server=start_admin_server)
        app = Dashboard(options, read_only=args.read_only, theme=theme)
    except themes.ThemeError as error:  # one of the themes that come with lbtui was edited in place
        print(str(error), file=sys.stderr)
        return 1
    app.tune_gc = True
    # The engine runs on its own thread (lbtui/threaded.py). Python passes the GIL between threads every 5 ms
    # by default: a redraw would hold a request up that long. 1 ms keeps the engine's p99 within issue 3's
    # bar (benchmarks/README.md, Dashboard mode).
    sys.setswitchinterval(0.001)
    try:
        code = app.run()
    finally:
        if app.engine is not None and app.engine.running:
            app.engine.stop_blocking()  # the UI ended without `q` (a crash, a signal): drain anyway
    for message in app.messages:
        if message.startswith(("cannot listen", "state: ")):  # the state file's lines: what was restored
            print(f"lbtui: {message}", file=sys.stderr)
    # A crash inside Textual returns None from run() and leaves return_code 1: never report it as success.
    return code if isinstance(code, int) else (app.return_code or 0)


def _haproxy_controller(
    url: str, who: str, timeout: float | None = None, groups_file: str | None = None
) -> HaproxyController | None:
    """A HaproxyController for a `haproxy://` URL, or None after one line on stderr (a bad URL), or one per issue
    of a bad groups file (--haproxy-groups, else $LBTUI_HAPROXY_GROUPS)."""
    from lbtui.config import ConfigError
    from lbtui.haproxy.controller import TIMEOUT, HaproxyController
    from lbtui.haproxy.groups import Groups, load_groups

    groups = Groups()
    groups_file = groups_file or os.environ.get(GROUPS_ENV)
    if groups_file:
        try:
            groups = load_groups(groups_file)
        except ConfigError as error:
            for issue in error.issues:
                print(f"lbtui: {who}: {issue}", file=sys.stderr)
            return None
    try:
        return HaproxyController(url, timeout=timeout or TIMEOUT, groups=groups)
    except ValueError as error:
        print(f"lbtui: {who}: {error}", file=sys.stderr)
        return None


def cmd_ctl(args: argparse.Namespace) -> int:
    """`lbtui ctl`: over the admin API (lbtui/admin/ctl.py), or over HAProxy's Runtime API for a haproxy:// URL."""
    from lbtui.admin.ctl import admin_url
    from lbtui.admin.ctl import run as run_ctl

    urls = list(
        dict.fromkeys([*(getattr(args, "admin", None) or []), *(getattr(args, "admin_after", None) or [])])
    )
    args.admin = urls[0] if urls else None
    if len(urls) > 1:
        return _ctl_fleet(args, urls)
    url = admin_url(args)
    if not url.startswith("haproxy:"):
        return run_ctl(args)
    from lbtui.admin.direct import ControllerClient

    controller = _haproxy_controller(
        url, "ctl", getattr(args, "request_timeout", None), getattr(args, "haproxy_groups", None)
    )
    if controller is None:
        return 1
    return run_ctl(args, client=ControllerClient(controller, controller.close))


def _members(
    urls: list[str],
    who: str,
    token_env: str | None,
    timeout: float | None = None,
    groups_file: str | None = None,
) -> Fleet | int:
    """A FleetController over `urls` (HAProxy sockets and admin APIs, mixed), or the exit code after one line."""
    from lbtui.admin.client import ClientError
    from lbtui.admin.ctl import TOKEN_ENV
    from lbtui.admin.remote import TIMEOUT as REMOTE_TIMEOUT
    from lbtui.admin.remote import RemoteController
    from lbtui.core.control import Controller
    from lbtui.fleet import FleetController

    members: dict[str, Controller] = {}

    def close_all() -> None:
        for member in members.values():
            close = getattr(member, "close", None)
            if callable(close):
                close()

    for url in urls:
        if url.startswith("haproxy:"):
            haproxy = _haproxy_controller(url, who, timeout, groups_file)
            if haproxy is None:
                close_all()
                return 1
            members[url] = haproxy
            continue
        try:
            members[url] = RemoteController(
                url, os.environ.get(token_env or TOKEN_ENV) or None, timeout=timeout or REMOTE_TIMEOUT
            )
        except ClientError as error:
            print(f"lbtui: {who}: {error}", file=sys.stderr)
            close_all()
            return 2
    return FleetController(members)


def _ctl_fleet(args: argparse.Namespace, urls: list[str]) -> int:
    """`lbtui ctl --admin URL --admin URL ...`: every command on the fleet (lbtui/fleet.py), as on one."""
    from lbtui.admin.ctl import run as run_ctl
    from lbtui.admin.direct import ControllerClient

    fleet = _members(
        urls,
        "ctl",
        getattr(args, "token_env", None),
        getattr(args, "request_timeout", None),
        getattr(args, "haproxy_groups", None),
    )
    if isinstance(fleet, int):
        return fleet
    return run_ctl(args, client=ControllerClient(fleet, fleet.close))


def cmd_attach(args: argparse.Namespace) -> int:
    """`lbtui attach [URL]`: the same dashboard, steering a running `lbtui serve` through its admin API."""
    from lbtui.admin.client import ClientError, default_url
    from lbtui.admin.ctl import TOKEN_ENV, URL_ENV
    from lbtui.admin.remote import RemoteController
    from lbtui.core.control import ControlError, Controller
    from lbtui.tui import themes

    theme = _dashboard_theme(args)
    if isinstance(theme, int):
        return theme
    urls = list(dict.fromkeys(args.url))
    url = urls[0] if urls else os.environ.get(URL_ENV) or default_url()
    controller: Controller
    if len(urls) > 1:
        fleet = _members(urls, "attach", args.token_env, groups_file=args.haproxy_groups)
        if isinstance(fleet, int):
            return fleet
        controller = fleet
    elif url.startswith("haproxy:"):
        haproxy = _haproxy_controller(url, "attach", groups_file=args.haproxy_groups)
        if haproxy is None:
            return 1
        controller = haproxy
    else:
        try:
            controller = RemoteController(url, os.environ.get(args.token_env or TOKEN_ENV) or None)
        except ClientError as error:
            print(f"lbtui: attach: {error}", file=sys.stderr)
            return 2
    try:
        controller.snapshot()  # the API answers, before any screen is drawn
    except ControlError as error:
        print(f"lbtui: attach: {error}", file=sys.stderr)
        controller.close()
        return 1
    from lbtui.tui.app import Dashboard

    try:
        try:
            app = Dashboard(None, read_only=args.read_only, theme=theme, controller=controller)
        except themes.ThemeError as error:  # one of the themes that come with lbtui was edited in place
            print(str(error), file=sys.stderr)
            return 1
        code = app.run()
    finally:
        controller.close()  # the server goes on running
    return code if isinstance(code, int) else (app.return_code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return cmd_check(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "ctl":
            return cmd_ctl(args)
        if args.command == "attach":
            return cmd_attach(args)
        return cmd_dashboard(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the last line of defence: a message, never a traceback
        print(f"lbtui: internal error: {error.__class__.__name__}: {error}", file=sys.stderr)
        if os.environ.get("LBTUI_DEBUG"):
            raise
        return 70


if __name__ == "__main__":
    sys.exit(main())
