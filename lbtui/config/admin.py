"""The [admin] table: the admin API's bind and token.

Invariants:
- No [admin] table: the admin API is off (``AdminConfig()``); a table turns it on unless it says enabled = false.
- An admin API on a non-loopback address needs a token (``token_env``), and its bind does not take a listener's.
"""

from __future__ import annotations

from collections.abc import Sequence

from lbtui.config.listeners import ParsedListener, bind_text
from lbtui.config.model import AdminConfig
from lbtui.config.options import Options, keys_of
from lbtui.config.reader import Context, Reader
from lbtui.config.values import boolean, is_loopback, listen_address, q


def parse_admin(ctx: Context, root: Reader, listeners: Sequence[ParsedListener]) -> AdminConfig:
    reader = root.table("admin", keys_of(AdminConfig))
    if reader is None:
        return AdminConfig()
    default = AdminConfig()
    opts = Options(reader, AdminConfig)
    bind = reader.value("bind", listen_address)
    host, port = bind if bind is not None else (default.host, default.port)
    token_env = opts.get("token_env")
    enabled = reader.get("enabled", boolean, True)
    if enabled and bind is not None and "token_env" not in reader and not is_loopback(host):
        ctx.add(
            reader.key_path("bind"),
            f"the admin API on non-loopback address {q(host)} needs a token",
            'set token_env = "LBTUI_ADMIN_TOKEN" (a variable holding the token), or bind to 127.0.0.1',
        )
    if enabled and port:
        for listener in listeners:
            if (listener.config.host.lower(), listener.config.port) == (host.lower(), port):
                ctx.add(
                    reader.key_path("bind"), f"{bind_text(host, port)} is already bound by {listener.path}"
                )
    return opts.build(host=host, port=port, token_env=token_env, enabled=enabled)
