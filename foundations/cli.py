"""Command-line plumbing shared by every ``vlt5r`` subcommand (the drivers in :mod:`vlt5r.drivers`).

* :class:`CLIParser` — argparse whose own usage errors raise :class:`UsageError` instead of printing the usage.
* :func:`run` — the one exit-code convention: usage error -> one ``error:`` line, exit 2; user error (bad file,
  id or value: :class:`UserError`, an ``OSError`` that names a file, or a full / read-only disk) -> one ``error:``
  line, exit 1; Ctrl-C -> exit 130; anything else is a bug and propagates with its traceback.
* :func:`add_config_flags` / :func:`config_from_flags` — every leaf field of a nested typed dataclass config as a
  flag, twice: ``--section.sub.name`` and the plain ``--name-with-dashes`` (plain names must be unique).
  Booleans take ``--flag`` / ``--no-flag``; tuples take several values; ``none`` clears an optional field. Only
  flags given on the command line override the base config; a driver's own flags (not config fields) are left out.
* :func:`start_training_command` — the trainers' shared start: ``--print-config``, or logging for this rank.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

from foundations.config import dataclass_in, from_dict, strip_optional
from foundations.errors import ConfigError, UsageError, UserError, one_line
from foundations.io import disk_failure

T = TypeVar("T")


class CLIParser(argparse.ArgumentParser):
    """argparse for every command here: usage errors raise :class:`UsageError` (one line, exit 2); the
    description and epilog keep their line breaks (examples stay readable in ``-h``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call a driver's ``main(argv)`` under the exit-code convention (see the module docstring)."""
    try:
        return main(argv) or 0
    except UsageError as exc:
        print_error(one_line(exc))
        return 2
    except UserError as exc:
        print_error(one_line(exc))
        return 1
    except Exception as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            print_error(f"{exc.filename}: {exc.strerror or one_line(exc)}")
            return 1
        why = disk_failure(exc)  # a full disk deep in a library that names no file (faiss / safetensors: strerror only)
        if why is None:  # not about a file the user named, nor the disk: a bug, show the traceback
            raise
        print_error(f"{why} ({one_line(exc)})")
        return 1
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130


def command(fn: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Make a driver's body ``fn(argv)`` its ``main(argv=None) -> exit code`` under :func:`run`."""

    @functools.wraps(fn)
    def main(argv: Sequence[str] | None = None) -> int:
        return run(fn, argv)

    return main


def setup_logging(quiet: bool = False, main_process: bool = True) -> None:
    """INFO (or WARNING with ``--quiet``, or on non-zero torchrun ranks) to stderr, one format for every command."""
    level = logging.WARNING if quiet or not main_process else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


# -- config dataclasses as flags ---------------------------------------------------------------------------------
def config_leaves(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """``(dotted path, field, type hint)`` for every leaf field of a (nested) dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = dataclass_in(hints[f.name])
        if sub is not None and not strip_optional(hints[f.name])[1]:
            yield from config_leaves(sub, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def _converter(kind: Any, optional: bool, flag: str) -> Any:
    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {kind.__name__}, got {text!r}") from None

    convert.__name__ = kind.__name__
    return convert


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add a flag for every leaf of config dataclass ``cls`` (help from ``field(metadata={"help": ...})``, choices
    from ``metadata["choices"]``, an optional value from ``metadata["const"]``). Groups follow the top section."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    seen: dict[str, str] = {}
    for path, f, hint in config_leaves(cls):
        plain = f"--{f.name.replace('_', '-')}"
        if plain in seen:
            raise AssertionError(f"{cls.__name__}: flag {plain} is both {seen[plain]} and {path}")
        seen[plain] = path
        section = path.split(".", 1)[0] if "." in path else "options"
        group = groups.get(section) or groups.setdefault(section, parser.add_argument_group(section))
        kind, optional = strip_optional(hint)
        kwargs: dict[str, Any] = dict(dest=path, default=argparse.SUPPRESS,
                                      help=f"{f.metadata.get('help', '')} (default: {_default(f)!r})")
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs.update(nargs="+", type=_converter(typing.get_args(kind)[0], False, plain), metavar="V")
        else:
            kwargs.update(type=_converter(kind, optional, plain), metavar=f.name.upper())
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            if "const" in f.metadata:
                kwargs.update(nargs="?", const=f.metadata["const"])
        group.add_argument(plain, f"--{path}", **kwargs)


def base_config(path: str | None) -> dict[str, Any]:
    """The ``--config FILE.json`` a driver's flags override (e.g. a run's saved ``config.json``), without its
    ``format_version``; ``{}`` when no file is given. A missing or malformed file is a usage error."""
    if path is None:
        return {}
    from foundations.config import load_config_json

    try:
        return load_config_json(path)
    except ConfigError as exc:
        raise UsageError(f"--config {exc}") from None


def config_from_flags(cls: type[T], args: argparse.Namespace | dict[str, Any],
                      base: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from a base dict (e.g. a saved ``config.json``) overridden by the dotted flags in ``args``."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    merged: dict[str, Any] = base if base is not None else {}
    for key, value in values.items():
        if "." not in key and key not in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            continue  # a driver's own flag, not a config field
        *parents, name = key.split(".")
        node = merged
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = list(value) if isinstance(value, tuple) else value
    try:
        return from_dict(cls, merged, "flags")
    except ConfigError as exc:
        raise UsageError(one_line(exc)) from None


def start_training_command(cfg: Any, print_only: bool, main_process: bool) -> bool:
    """The start a trainer's driver shares: with ``--print-config`` print the resolved config and return True (the
    command is done); otherwise set up logging (INFO on the main process only) and return False."""
    if print_only:
        print(json.dumps(cfg.to_dict(), indent=2))
        return True
    setup_logging(main_process=main_process)
    return False
