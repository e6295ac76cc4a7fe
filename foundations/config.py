"""Strict loading of typed dataclass configs (litgpt ``Config`` / open_clip JSON configs in spirit).

``from_dict(cls, data)`` builds a (nested) dataclass and raises :class:`~foundations.errors.ConfigError` naming
every unknown key; lists become tuples where the field is a tuple. ``load_json`` / ``save_json`` read and
atomically write a config file.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from foundations.errors import ConfigError
from foundations.io import atomic_write_text

T = TypeVar("T")


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data`` strictly: unknown keys raise, nested dataclasses recurse."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) for {cls.__name__}: {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = dataclass_in(hints[name])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where}.{name}")
        elif isinstance(value, list) and typing.get_origin(strip_optional(hints[name])[0]) is tuple:
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # e.g. a required field missing
        raise ConfigError(f"{where}: {exc}") from None


def strip_optional(hint: Any) -> tuple[Any, bool]:
    """``(the non-None type, whether None is allowed)`` of a type hint."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def dataclass_in(hint: Any) -> type | None:
    """The dataclass named by a type hint (``X`` or ``X | None``), else None."""
    base, _ = strip_optional(hint)
    return base if dataclasses.is_dataclass(base) else None  # type: ignore[return-value]


def load_json(path: str | Path) -> Any:
    """A JSON file's content; a missing or malformed file is a :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_config_json(path: str | Path) -> dict[str, Any]:
    """A saved config's fields: a JSON object (else a :class:`ConfigError` naming the file) without its
    ``format_version``."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    data.pop("format_version", None)
    return data


def save_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a reader sees the old or the new file)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
