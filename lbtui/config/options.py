"""Options: each config key declared once, on the dataclass field it fills, and one reader for all of them.

A section's dataclass (lbtui.config.model) declares every TOML key of its table on a field: ``option(convert,
default)``, ``required(convert, placeholder)``, ``array(convert)``, ``pairs(convert_key, convert_value)``,
``file_path()``, ``table(Section, default)`` for a nested table read the same way, or ``custom()`` for a key its
section's code reads itself (a listener's ``bind`` fills ``host`` and ``port``). A field with no declaration is
not a key (a service's ``name`` is the name of its table). From the declarations come the keys a table may hold
(``keys_of``, in field order: the order an unknown key's hint lists them in) and ``Options``, the one reader.

Invariants:
- An option that is absent takes its field's default; one that is bad is an issue in the run's Context and takes
  the default too (a required one its placeholder). A section's object is always built, so that the checks
  across its keys and across sections still run: every problem comes out in one run. A Config is returned only
  when no issue was found (lbtui.config.load).
- ``Options`` converts each key once: when a section's code first asks for it (``given``, ``get``) or when the
  object is built (``build``, in field order). A section asks first for what its checks need, so its issues
  come out in the order its code reads the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from lbtui.config.reader import Reader
from lbtui.config.values import nonempty

S = TypeVar("S")

_META: Final = "lbtui.config"
_MISSING: Any = dataclasses.MISSING


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """How one key is read: its kind, the key (empty: the field's name) and what converts its value."""

    kind: str  # "value", "array", "pairs", "path", "table" or "custom"
    key: str = ""
    convert: Callable[[Any], Any] | None = None
    convert_key: Callable[[Any], Any] | None = None
    required: bool = False
    placeholder: Any = None  # a required key's value when it is missing or bad (no Config is built then)
    hint: str | None = None  # a required key's fix when it is missing
    unique: bool = True  # an array's items: one listed twice is an issue
    empty_is_default: bool = False  # an empty array means the default (not "none")
    same_as: str | None = None  # absent: the value of this other field (a queue timeout defaults to connect)
    keep: tuple[str, ...] = ()  # a file path's values taken as given, not joined to the config's folder
    section: type | None = None  # a nested table's dataclass


def _declare(option: Option, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={_META: option})


def option(convert: Callable[[Any], Any], default: Any, *, key: str = "", same_as: str | None = None) -> Any:
    """A key whose value ``convert`` checks; ``default`` when absent or bad."""
    return _declare(Option("value", key, convert, same_as=same_as), default)


def required(
    convert: Callable[[Any], Any], placeholder: Any, *, hint: str | None = None, key: str = ""
) -> Any:
    """A key that must be given: "missing required key" (with ``hint``) otherwise."""
    return _declare(
        Option("value", key, convert, required=True, placeholder=placeholder, hint=hint), _MISSING
    )


def array(
    convert: Callable[[Any], Any],
    default: Any = (),
    *,
    unique: bool = True,
    empty_is_default: bool = False,
) -> Any:
    """An array whose items ``convert`` checks, as a tuple; a bad item is an issue and left out."""
    return _declare(
        Option("array", convert=convert, unique=unique, empty_is_default=empty_is_default), default
    )


def pairs(convert_key: Callable[[Any], Any], convert_value: Callable[[Any], Any], default: Any = ()) -> Any:
    """A table of free-form keys (header names, groups) as (key, value) pairs in file order."""
    return _declare(Option("pairs", convert=convert_value, convert_key=convert_key), default)


def file_path(
    default: Any = None, *, keep: tuple[str, ...] = (), required: bool = False, placeholder: str = ""
) -> Any:
    """A file's path, joined to the config file's folder when relative (``keep``: values taken as they are)."""
    declared = Option("path", convert=nonempty, keep=keep, required=required, placeholder=placeholder)
    return _declare(declared, _MISSING if required else default)


def table(section: type, default: Any) -> Any:
    """A nested table read as ``section`` declares (``default`` when absent)."""
    return _declare(Option("table", section=section), default)


def custom(default: Any = _MISSING, *, key: str = "") -> Any:
    """A key its section's code reads and passes to ``Options.build``."""
    return _declare(Option("custom", key), default)


class _Section:
    """What a section's dataclass declares, worked out once per class."""

    __slots__ = ("by_name", "keys", "read")

    def __init__(self, cls: type) -> None:
        # {field name: (key, Option, default)} for the declared fields.
        self.by_name: dict[str, tuple[str, Option, Any]] = {}
        for field in dataclasses.fields(cls):
            declared = field.metadata.get(_META)
            if field.init and declared is not None:
                self.by_name[field.name] = (declared.key or field.name, declared, field.default)
        # The fields build() reads itself, in field order (custom ones are the section code's).
        self.read = tuple(
            name for name, (_, declared, _) in self.by_name.items() if declared.kind != "custom"
        )
        self.keys = tuple(dict.fromkeys(key for key, _, _ in self.by_name.values()))


_SECTIONS: dict[type, _Section] = {}


def _section(cls: type) -> _Section:
    found = _SECTIONS.get(cls)
    if found is None:
        found = _SECTIONS[cls] = _Section(cls)
    return found


def keys_of(cls: type) -> tuple[str, ...]:
    """The keys a table read as ``cls`` may hold, in field order."""
    return _section(cls).keys


def read_table(reader: Reader, key: str, cls: type[S]) -> S | None:
    """The nested table ``key`` of ``reader`` read as ``cls`` declares; None when it is absent or not a table."""
    nested = reader.table(key, keys_of(cls))
    return None if nested is None else Options(nested, cls).build()


class Options(Generic[S]):
    """The declared keys of one table (a Reader) for the dataclass ``cls``, each converted once."""

    __slots__ = ("cls", "found", "reader", "section")

    def __init__(self, reader: Reader, cls: type[S]) -> None:
        self.reader = reader
        self.cls = cls
        self.section = _section(cls)
        self.found: dict[str, Any] = {}

    def given(self, name: str) -> Any:
        """Field ``name``'s value as the table gives it: None when the key is absent or its value is bad (a
        required key: its placeholder); an array or pairs as given (empty included)."""
        found = self.found
        if name in found:
            return found[name]
        key, declared, _ = self.section.by_name[name]
        reader = self.reader
        kind = declared.kind
        value: Any = None
        if key not in reader.data and not declared.required:
            if kind == "custom":
                raise TypeError(
                    f"{self.cls.__name__}.{name} is read by its section's code: pass it to build()"
                )
        elif kind == "value":
            assert declared.convert is not None
            if declared.required:
                value = reader.required(key, declared.convert, declared.placeholder, declared.hint)
            else:
                value = reader.value(key, declared.convert)
        elif kind == "array":
            assert declared.convert is not None
            value = reader.array(key, declared.convert, unique=declared.unique)
        elif kind == "pairs":
            assert declared.convert is not None
            assert declared.convert_key is not None
            value = reader.pairs(key, declared.convert_key, declared.convert)
        elif kind == "path":
            if declared.required:
                value = reader.required(key, nonempty, declared.placeholder)
            else:
                value = reader.value(key, nonempty)
            if value and value not in declared.keep:
                value = reader.ctx.resolve(value)
        elif kind == "table":
            assert declared.section is not None
            value = read_table(reader, key, declared.section)
        else:
            raise TypeError(f"{self.cls.__name__}.{name} is read by its section's code: pass it to build()")
        found[name] = value
        return value

    def get(self, name: str) -> Any:
        """Field ``name``'s value: as given, else its default."""
        value = self.given(name)
        if value is None or (not value and self.section.by_name[name][1].empty_is_default):
            _, declared, default = self.section.by_name[name]
            if declared.same_as is not None:
                return self.get(declared.same_as)
            if default is dataclasses.MISSING:
                raise TypeError(f"{self.cls.__name__}.{name} has no default")
            return default
        return value

    def build(self, **given: Any) -> S:
        """The object: ``given`` values as they are, every other declared key read (field order), the rest
        left to their defaults."""
        for name in self.section.read:
            if name not in given:
                given[name] = self.get(name)
        return self.cls(**given)
