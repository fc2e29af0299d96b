"""Command-line pieces the three scripts share: configuration flags and the
one-line error exit for bad input."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

from utils.config import Config, load_config, read_config_file
from utils.errors import InputError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON/YAML file overriding the default configuration")
    parser.add_argument("--magnifications", type=float, nargs="+", metavar="M",
                        help="objective magnification of each scale, highest first (default 40 10 2.5)")
    parser.add_argument("--tile-size", type=int, help="tile side in pixels at every scale (default 128)")


def resolve_config(args: argparse.Namespace, base: dict[str, Any] | None = None, **extra: Any) -> Config:
    """Defaults < ``base`` (e.g. the configuration saved with a model) < --config < flags."""
    values = dict(base or {})
    if args.config:
        values.update(read_config_file(args.config))
    flags = dict(magnifications=args.magnifications, tile_size=args.tile_size, **extra)
    values.update({k: v for k, v in flags.items() if v is not None})
    return load_config(None, **values)


def exit_on_input_error(main: Callable[..., int]) -> Callable[..., int]:
    """Turn :class:`InputError` into ``error: <message>`` and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper
