"""The [[listeners]] section, and each listener's tls table.

Invariants:
- No [[listeners]] at all means one default listener (``DEFAULT_LISTENER``, http on 127.0.0.1:8080); an empty
  array is an issue.
- Listener names are unique, and so are binds (port 0, any free port, never clashes).
- A tls table's files are read and loaded as a pair as the engine will (lbtui.tlsfiles), so that ``lbtui check``
  and a reload find a bad file before a start does; both files are checked, for one round of fixes.
- The checks that need the services (a tcp listener's service exists) are lbtui.config.load's: a
  ``ParsedListener`` keeps where each listener was for them.
"""

from __future__ import annotations

from lbtui.config.model import DEFAULT_LISTENER, ListenerConfig, TLSConfig
from lbtui.config.options import Options, keys_of
from lbtui.config.reader import Context, Reader
from lbtui.config.values import listen_address, nonempty, q, valid_name

# Keys that mean something to http listeners only: a tcp listener passes bytes through and reads no HTTP.
HTTP_ONLY_LISTENER_KEYS = (
    "trusted_proxies",
    "upgrades",
    "escaped_slashes",
    "headers_with_underscores",
    "forwarded",
)


class ParsedListener:
    """A parsed listener and where it was, for the checks that need the services."""

    __slots__ = ("config", "path", "service_path")

    def __init__(self, config: ListenerConfig, path: str, service_path: str) -> None:
        self.config = config
        self.path = path
        self.service_path = service_path


def parse_listeners(ctx: Context, root: Reader) -> list[ParsedListener]:
    if "listeners" not in root:
        return [ParsedListener(DEFAULT_LISTENER, "the default listener", "listeners")]
    readers = root.tables("listeners", keys_of(ListenerConfig), "write [[listeners]] tables")
    if readers is None:
        return []
    if not root.data["listeners"]:
        ctx.add(
            "listeners",
            "at least one listener is required",
            "add [[listeners]] with bind = \"127.0.0.1:8080\", or leave 'listeners' out for that default",
        )
    listeners: list[ParsedListener] = []
    names: dict[str, str] = {}
    binds: dict[tuple[str, int], str] = {}
    for index, reader in readers:
        opts = Options(reader, ListenerConfig)
        name = reader.get("name", valid_name("listener"), f"listener{index}")
        host, port = reader.required("bind", listen_address, ("", 0), 'e.g. bind = "127.0.0.1:8080"')
        mode = opts.get("mode")
        service = reader.value("service", nonempty)
        if mode == "tcp" and "service" not in reader:
            ctx.add(reader.path, "missing required key 'service'", "a tcp listener forwards to one service")
        if mode == "http" and "service" in reader:
            ctx.add(
                reader.key_path("service"),
                "only used by tcp listeners",
                "remove it; http listeners pick a service through [[routes]]",
            )
            service = None
        tls = parse_tls(ctx, reader.table("tls", keys_of(TLSConfig)), mode)
        config = opts.build(name=name, host=host, port=port, service=service, tls=tls)
        if mode == "tcp":
            for key in HTTP_ONLY_LISTENER_KEYS:
                if key in reader:
                    ctx.add(
                        reader.key_path(key),
                        "only used by http listeners",
                        "a tcp listener passes bytes through and reads no HTTP",
                    )
        if name in names:
            ctx.add(reader.key_path("name"), f"listener name {q(name)} is already used at {names[name]}")
        else:
            names[name] = reader.path
        bind_key = (host.lower(), port)
        if host and port:  # port 0 asks for any free port: never a clash
            if bind_key in binds:
                ctx.add(
                    reader.key_path("bind"), f"{bind_text(host, port)} is already bound by {binds[bind_key]}"
                )
            else:
                binds[bind_key] = reader.path
        listeners.append(ParsedListener(config, reader.path, reader.key_path("service")))
    return listeners


def bind_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_tls(ctx: Context, reader: Reader | None, mode: str) -> TLSConfig | None:
    if reader is None:
        return None
    config = Options(reader, TLSConfig).build()
    if config.cert and config.key:
        # Load the pair as the engine will. Imported here: only configs with TLS pay for the ssl import.
        from lbtui.tlsfiles import TLSFileError, check_readable, load_server_context

        readable = True
        for which, path in (("cert", config.cert), ("key", config.key)):
            try:
                check_readable(which, path)
            except TLSFileError as error:  # both files are checked: one round of fixes, not two
                ctx.add(reader.key_path(which), error.message, error.hint)
                readable = False
        if readable:
            try:
                load_server_context(config.cert, config.key, alpn=("http/1.1",) if mode == "http" else ())
            except TLSFileError as error:
                ctx.add(reader.key_path(error.which), error.message, error.hint)
    return config
