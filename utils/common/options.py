"""Options declared once, on the dataclass a script fills.

Each setting of training and inference is a field of its options dataclass
(:class:`utils.learning.train_options.TrainOptions`, :class:`utils.maps.inference.InferenceOptions`)
declared with :func:`option`: its default, its help and its command-line
group live there and nowhere else. :func:`add_option_arguments` derives the
argparse flags from the fields, and :func:`resolve_options` layers the values:
the field defaults, then the section of the ``--config`` file named after the
script (``training:`` or ``inference:``), then the flags given. Editing a
default in the dataclass therefore changes what the script does and what its
``--help`` says.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from utils.common.errors import ConfigError


def option(default: Any, help: str, group: str, *, flag: str | None = None, **argparse_keywords: Any) -> Any:
    """A dataclass field that is also a command-line flag (``--field-name``,
    or ``flag``) and a key of a configuration file's section. A boolean that
    defaults to True is switched off by its ``flag`` (e.g. ``--no-augment``)."""
    metadata = {"help": help, "group": group, "flag": flag, "argparse": argparse_keywords}
    return dataclasses.field(default=default, metadata=metadata)


def declared(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`option`."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def add_option_arguments(parser: argparse.ArgumentParser, cls: type,
                         groups: dict[str, argparse._ArgumentGroup]) -> None:
    """One flag per declared field, in the named groups (created on first use).
    Every flag defaults to None, meaning "not given", so that the file's value
    or the field default applies; the help shows the field default."""
    hints = typing.get_type_hints(cls)
    for f in declared(cls):
        meta = f.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        group = groups[meta["group"]]
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        keywords = dict(meta["argparse"])
        text = meta["help"]
        if hints[f.name] is bool:
            action = "store_false" if f.default else "store_true"
            group.add_argument(flag, dest=f.name, action=action, default=None, help=text)
            continue
        if f.default not in (None, ()) and "default" not in text:
            shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            text = f"{text} (default: {shown})"
        keywords.setdefault("type", _scalar_type(hints[f.name]))
        if _is_sequence(hints[f.name]):
            keywords.setdefault("nargs", "*")
        group.add_argument(flag, dest=f.name, default=None, help=text.replace("%", "%%"), **keywords)


def resolve_options(cls: type, args: argparse.Namespace, file_values: dict[str, Any], source: str,
                    **fixed: Any) -> Any:
    """``cls`` from its field defaults < ``file_values`` (a configuration
    file's section, named ``source`` in errors) < the flags given in ``args``;
    ``fixed`` sets the fields that are not options (paths, resolved values)."""
    known = {f.name for f in declared(cls)}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], name, value, source) for name, value in file_values.items()}
    for name in known:
        given = getattr(args, name, None)
        if given is not None:  # argparse gives a list for nargs; the fields hold tuples
            values[name] = tuple(given) if _is_sequence(hints[name]) else given
    return cls(**values, **fixed)


def origin(cls: type, name: str, args: argparse.Namespace, file_values: dict[str, Any], source: str) -> str:
    """Where the value of option ``name`` came from, for the log: its flag,
    the configuration file (``source``) or the default."""
    field = next(f for f in declared(cls) if f.name == name)
    if getattr(args, name, None) is not None:
        return field.metadata["flag"] or "--" + name.replace("_", "-")
    return source if name in file_values else "default"


def _coerce(hint: Any, name: str, value: Any, source: str) -> Any:
    """A value read from YAML as the field's type: paths from strings, tuples from lists."""
    if value is None:
        return None
    scalar = _scalar_type(hint)
    items = value if _is_sequence(hint) else [value]
    if _is_sequence(hint) and not isinstance(value, list):
        raise ConfigError(f"{source}: {name} must be a list, not {value!r}")
    try:
        converted = [item if scalar is str and isinstance(item, str) else _convert(scalar, item) for item in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} must be of type {scalar.__name__}, not {value!r}") from None
    return tuple(converted) if _is_sequence(hint) else converted[0]


def _convert(scalar: type, item: Any) -> Any:
    if scalar is bool and not isinstance(item, bool):
        raise TypeError(item)
    if scalar in (int, float) and (isinstance(item, bool) or not isinstance(item, (int, float))):
        raise TypeError(item)
    if scalar is int and int(item) != item:
        raise TypeError(item)
    return scalar(item)


def _is_sequence(hint: Any) -> bool:
    return any(typing.get_origin(t) is tuple for t in (hint, *typing.get_args(hint)))


def _scalar_type(hint: Any) -> type:
    """int for ``int | None``, str for ``tuple[str, ...]``, Path for ``Path | None``."""
    for candidate in (hint, *typing.get_args(hint)):
        if typing.get_origin(candidate) is tuple:
            return _scalar_type(typing.get_args(candidate)[0])
        if candidate in (int, float, str, bool, Path):
            return candidate
    raise TypeError(f"no command-line type for {hint}")
