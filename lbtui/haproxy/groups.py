"""Groups of HAProxy servers: the small TOML that names them (`--haproxy-groups FILE`), and which group a server
is in.

The file (docs/haproxy.md, "Groups"):

    [backends.app.groups]
    blue = ["web1", "web2"]          # server names or glob patterns (fnmatch: *, ?, [abc])
    green = "web3*"                  # one pattern
    [backends.app.ramp]              # optional: the canary ramp, the keys and checks of lbtui's [services.X.ramp]
    steps = [10, 50, 100]
    hold = "30s"

Invariants:
- A server is in the first group (in file order) one of whose patterns matches its name; a server no pattern
  matches, and every server of a backend the file does not name, is in "default". Without a file every server is
  in "default" (one group: no split).
- A group's order is the file's: the first group is the stable one of a ramp, the second its canary.
- Reading never raises anything but ConfigError, whose issues name the file, the key path and what is wrong (the
  reader and validators of lbtui.config, the ramp's checks those of a service's ramp).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from lbtui.config import RampConfig
from lbtui.config.load import read_toml
from lbtui.config.options import keys_of
from lbtui.config.reader import ConfigError, ConfigIssue, Context, Reader
from lbtui.config.services import parse_ramp
from lbtui.config.values import Invalid, describe, join, string, valid_name

__all__ = ["DEFAULT_GROUP", "BackendGroups", "Groups", "load_groups", "parse_groups"]

DEFAULT_GROUP: Final = "default"
_BACKEND_KEYS: Final = ("groups", "ramp")
_PATTERN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:*?[]!")


@dataclass(frozen=True, slots=True)
class BackendGroups:
    """One HAProxy backend's groups: (name, patterns) in file order, and its canary ramp."""

    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ramp: RampConfig = field(default_factory=RampConfig)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.groups)

    def group_of(self, server: str) -> str | None:
        """The first group a pattern of which matches `server`; None: no pattern does."""
        for name, patterns in self.groups:
            if any(fnmatch.fnmatchcase(server, pattern) for pattern in patterns):
                return name
        return None


@dataclass(frozen=True, slots=True)
class Groups:
    """The groups file (or none: `source` empty, every server in "default")."""

    source: str = ""
    backends: tuple[tuple[str, BackendGroups], ...] = ()

    def of(self, backend: str) -> BackendGroups:
        return next((b for name, b in self.backends if name == backend), _NONE)

    def group_of(self, backend: str, server: str, assigned: Mapping[tuple[str, str], str]) -> str:
        """The group of one server: one given to it when it was added (`assigned`), else its pattern's, else
        "default"."""
        given = assigned.get((backend, server))
        if given is not None:
            return given
        return self.of(backend).group_of(server) or DEFAULT_GROUP

    def known(self, backend: str) -> tuple[str, ...]:
        """The groups a server of `backend` may be put in: the file's, and "default"."""
        names = self.of(backend).names
        return names if DEFAULT_GROUP in names else (*names, DEFAULT_GROUP)


_NONE: Final = BackendGroups()


def _pattern(value: object) -> str:
    text = string(value)
    if not text:
        raise Invalid("a server name pattern is empty", 'e.g. "web*" or "canary-1"')
    bad = sorted(set(text) - _PATTERN_CHARS)
    if bad:
        raise Invalid(
            f"{text!r} has characters no HAProxy server name has ({''.join(bad)!r})",
            "names are letters, digits, '-', '_', '.', ':'; patterns add *, ? and [...]",
        )
    return text


def _patterns(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (_pattern(value),)
    if not isinstance(value, list | tuple) or not value:
        raise Invalid(
            f"expected a pattern or a list of server names and patterns, got {describe(value)}",
            'e.g. blue = ["web1", "web2"] or green = "canary*"',
        )
    out: list[str] = []
    for item in value:
        pattern = _pattern(item)
        if pattern in out:
            raise Invalid(f"{pattern!r} is listed twice")
        out.append(pattern)
    return tuple(out)


def _backend(ctx: Context, reader: Reader) -> BackendGroups:
    groups = reader.pairs("groups", valid_name("group"), _patterns) or ()
    if "groups" in reader and not groups and not ctx.issues:
        ctx.add(reader.key_path("groups"), "names no group", 'e.g. blue = "web*" and green = "canary*"')
    ramp = parse_ramp(ctx, reader.table("ramp", keys_of(RampConfig)))
    return BackendGroups(groups, ramp)


def parse_groups(data: Mapping[str, object], source: str) -> Groups:
    """The groups of already-parsed TOML. Raises ConfigError listing every issue."""
    ctx = Context(source, None)
    root = Reader(ctx, data, "", ("backends",))
    backends: list[tuple[str, BackendGroups]] = []
    raw = data.get("backends")
    if raw is not None and not isinstance(raw, Mapping):
        ctx.add("backends", f"expected a table of HAProxy backends, got {describe(raw)}")
    elif raw is not None:
        for name, table in raw.items():
            path = join("backends", str(name))
            if ctx.convert(path, name, valid_name("HAProxy backend")) is None:
                continue
            reader = ctx.table(path, table, _BACKEND_KEYS)
            if reader is not None:
                backends.append((name, _backend(ctx, reader)))
    del root
    if ctx.issues:
        raise ConfigError(ctx.issues)
    return Groups(source, tuple(backends))


def load_groups(path: str | os.PathLike[str]) -> Groups:
    """Read and check a groups file. Raises ConfigError (file, key path, what is wrong), never a traceback."""
    file = os.fspath(path)
    try:
        return parse_groups(read_toml(file), file)
    except ConfigError:
        raise
    except Exception as exc:  # a bug here must still reach the operator as an issue, not a traceback
        raise ConfigError([ConfigIssue(file, "", f"internal error while reading: {exc!r}")]) from None
