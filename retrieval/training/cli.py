"""Command-line flags generated from :class:`~retrieval.training.config.TrainConfig`.

Every field ``section.name`` is a flag twice: ``--section.name`` and the plain ``--name-with-dashes`` (names are
unique across sections, a test checks it), e.g. ``--optim.lr_head 1e-3`` = ``--lr-head 1e-3``,
``--data.kb_features kb.h5`` = ``--kb-features kb.h5``. Booleans take ``--flag`` / ``--no-flag``; tuples take
several values; ``none`` clears an optional field. ``--config FILE.json`` loads a base config (e.g. a run's
``config.json``) that the other flags override. Only the flags given on the command line override anything.
Usage errors raise :class:`UsageError` (the driver prints one line and exits 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterator
from typing import Any

from foundations.cli import CLIParser
from foundations.errors import UsageError
from retrieval.training.config import TrainConfig
from foundations.errors import ConfigError

SECTIONS = ("data", "model", "optim", "loop", "eval")


def config_fields() -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """``(section, field, type hint)`` for every leaf field of TrainConfig."""
    hints = typing.get_type_hints(TrainConfig)
    for section in SECTIONS:
        cls = hints[section]
        sub_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield section, f, sub_hints[f.name]


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


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


def build_parser(description: str = "") -> argparse.ArgumentParser:
    p = CLIParser(prog="python -m retrieval.train", description=description, allow_abbrev=False)
    p.add_argument("--config", help="base config JSON (e.g. a run's config.json); other flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for section, f, hint in config_fields():
        group = p.add_argument_group(section) if not any(g.title == section for g in p._action_groups) \
            else next(g for g in p._action_groups if g.title == section)
        flags = [f"--{f.name.replace('_', '-')}", f"--{section}.{f.name}"]
        kind, optional = _base_type(hint)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = dict(dest=f"{section}.{f.name}", default=argparse.SUPPRESS,
                                      help=f"{f.metadata.get('help', '')} (default: {default!r})")
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            kwargs.update(nargs="+", type=_converter(item, False, flags[0]), metavar="K")
        else:
            kwargs.update(type=_converter(kind, optional, flags[0]), metavar=f.name.upper())
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            if "const" in f.metadata:
                kwargs.update(nargs="?", const=f.metadata["const"])
        group.add_argument(*flags, **kwargs)
    return p


def parse_config(argv: list[str] | None, description: str = "") -> tuple[TrainConfig, bool]:
    """(the resolved config, whether --print-config was given). Raises UsageError on any user mistake."""
    args = vars(build_parser(description).parse_args(argv))
    base: dict[str, Any] = {s: {} for s in SECTIONS}
    if args.get("config"):
        try:
            base = TrainConfig.load(args["config"]).to_dict()
        except OSError as exc:
            raise UsageError(f"--config {args['config']}: {exc.strerror or exc}") from None
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        base.pop("format_version", None)
    for key, value in args.items():
        if "." in key:
            section, name = key.split(".", 1)
            base[section][name] = list(value) if isinstance(value, tuple) else value
    try:
        return TrainConfig.from_dict(base, "flags"), bool(args.get("print_config"))
    except (ConfigError, TypeError) as exc:
        raise UsageError(str(exc)) from None
