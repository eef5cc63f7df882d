"""Reading TOML tables while collecting issues: the issue types, the collector (`Context`) and `Reader`.

Invariants:
- Every problem found becomes a `ConfigIssue` in the run's `Context` (file, key path, what is wrong, a fix);
  nothing raises while a config is read. `Context.convert` turns a converter's `Invalid` into an issue, and any
  other exception too (a converter's bug must reach the operator as an issue, not a traceback). The one
  `ConfigError` with all of them is raised by lbtui.config.load when the reading ends.
- Issues are kept in the order they were found: a table's unknown keys first (file order), then its values as
  its section reads them.
- Key paths are TOML's: `services.shop.backends[1].name`; a key that is not bare is quoted
  (`routes[0].match.headers."X Tenant"`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from lbtui.config.values import Invalid, describe, join, q, suggest

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    key_path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = (
            f"{self.file}: {self.key_path}: {self.message}"
            if self.key_path
            else f"{self.file}: {self.message}"
        )
        return f"{text}; {self.hint}" if self.hint else text


class ConfigError(Exception):
    """Every problem found in one config, one ``ConfigIssue`` each, in the order they were found."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[tuple[ConfigIssue, ...]]]:
        return (type(self), (self.issues,))


class Context:
    """One validation run: where the input came from and every issue found so far."""

    __slots__ = ("base_dir", "file", "issues")

    def __init__(self, file: str, base_dir: str | None) -> None:
        self.file = file
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = []

    def add(self, key_path: str, message: str, hint: str | None = None) -> None:
        self.issues.append(ConfigIssue(self.file, key_path, message, hint))

    def convert(self, key_path: str, raw: object, convert: Callable[[Any], T]) -> T | None:
        """``convert(raw)``, or None after recording why not. No exception gets past this."""
        try:
            return convert(raw)
        except Invalid as exc:
            self.add(key_path, exc.message, exc.hint)
        except Exception as exc:  # a converter bug must still surface as an issue, not a traceback
            self.add(key_path, f"invalid value {describe(raw)}: {exc}")
        return None

    def table(self, key_path: str, raw: object, allowed: Sequence[str]) -> Reader | None:
        if not isinstance(raw, Mapping):
            self.add(key_path, f"expected a table, got {describe(raw)}")
            return None
        return Reader(self, raw, key_path, allowed)

    def resolve(self, path: str) -> str:
        """A file path relative to the config file's directory (kept as given for dict input)."""
        path = os.path.expanduser(path)
        if self.base_dir is not None and not os.path.isabs(path):
            path = os.path.join(self.base_dir, path)
        return os.path.normpath(path)

    def reference(self, key_path: str, name: str, known: Sequence[str], kind: str) -> bool:
        if name in known:
            return True
        self.add(key_path, f"no {kind} named {q(name)}", suggest(name, known, f"defined {kind}s"))
        return False


class Reader:
    """One table being read: converted values out, issues (at their key paths) into the context."""

    __slots__ = ("ctx", "data", "path")

    def __init__(self, ctx: Context, data: Mapping[Any, Any], path: str, allowed: Sequence[str]) -> None:
        self.ctx = ctx
        self.data = data
        self.path = path
        for key in data:
            if not isinstance(key, str):
                ctx.add(path, f"keys must be strings, got {describe(key)}")
            elif key not in allowed:
                ctx.add(self.key_path(key), "unknown key", suggest(key, allowed, "allowed keys"))

    def key_path(self, key: str) -> str:
        return join(self.path, key)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def value(self, key: str, convert: Callable[[Any], T]) -> T | None:
        """The converted value, or None when the key is absent or the value is bad (an issue is recorded)."""
        if key not in self.data:
            return None
        return self.ctx.convert(self.key_path(key), self.data[key], convert)

    def get(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        found = self.value(key, convert)
        return default if found is None else found

    def required(self, key: str, convert: Callable[[Any], T], placeholder: T, hint: str | None = None) -> T:
        """The converted value; if absent or bad, an issue and ``placeholder`` (no Config will be built)."""
        if key not in self.data:
            self.ctx.add(self.path, f"missing required key {q(key)}", hint)
            return placeholder
        return self.get(key, convert, placeholder)

    def one_of(self, key: str, other: str, hint: str) -> None:
        """Exactly one of two keys: an issue when both are given, or neither (``key`` named as the missing one,
        ``hint`` naming the other)."""
        if key in self.data and other in self.data:
            self.ctx.add(self.path, f"give either {q(key)} or {q(other)}, not both")
        elif key not in self.data and other not in self.data:
            self.ctx.add(self.path, f"missing required key {q(key)}", hint)

    def table(self, key: str, allowed: Sequence[str]) -> Reader | None:
        if key not in self.data:
            return None
        return self.ctx.table(self.key_path(key), self.data[key], allowed)

    def tables(
        self, key: str, allowed: Sequence[str], hint: str | None = None
    ) -> list[tuple[int, Reader]] | None:
        """An array of tables, as (index, reader); elements that are not tables are reported and skipped."""
        if key not in self.data:
            return None
        raw, path = self.data[key], self.key_path(key)
        if not isinstance(raw, list | tuple):
            self.ctx.add(path, f"expected an array of tables, got {describe(raw)}", hint)
            return None
        readers = []
        for index, item in enumerate(raw):
            reader = self.ctx.table(f"{path}[{index}]", item, allowed)
            if reader is not None:
                readers.append((index, reader))
        return readers

    def array(self, key: str, convert: Callable[[Any], T], *, unique: bool = True) -> tuple[T, ...] | None:
        if key not in self.data:
            return None
        raw, path = self.data[key], self.key_path(key)
        if not isinstance(raw, list | tuple):
            self.ctx.add(path, f"expected an array, got {describe(raw)}")
            return None
        items: list[T] = []
        for index, item in enumerate(raw):
            found = self.ctx.convert(f"{path}[{index}]", item, convert)
            if found is None:
                continue
            if unique and found in items:
                self.ctx.add(f"{path}[{index}]", f"{q(str(found))} is listed twice")
                continue
            items.append(found)
        return tuple(items)

    def pairs(
        self, key: str, convert_key: Callable[[Any], str], convert_value: Callable[[Any], T]
    ) -> tuple[tuple[str, T], ...] | None:
        """A table of free-form keys (header names, groups) as pairs in file order."""
        if key not in self.data:
            return None
        raw, path = self.data[key], self.key_path(key)
        if not isinstance(raw, Mapping):
            self.ctx.add(path, f"expected a table, got {describe(raw)}")
            return None
        found: list[tuple[str, T]] = []
        for name, item in raw.items():
            if not isinstance(name, str):
                self.ctx.add(path, f"keys must be strings, got {describe(name)}")
                continue
            item_path = join(path, name)
            good_name = self.ctx.convert(item_path, name, convert_key)
            good_item = self.ctx.convert(item_path, item, convert_value)
            if good_name is not None and good_item is not None:
                found.append((good_name, good_item))
        return tuple(found)
