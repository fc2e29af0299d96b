"""Command-line pieces the three scripts share: configuration flags and the
one-line error exit for bad input.

Every failure a user can cause or fix (bad input, an unwritable or full disk,
Ctrl-C) ends in one ``error:`` line and a non-zero exit; ``--debug`` shows the
traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.config import Config, load_config, read_config_file
from utils.errors import ConfigError, InputError
from utils.io import remove_stale_temporaries
from utils.log import error, info, set_quiet


DEBUG_VARIABLE = "TISSUE_AL_DEBUG"


def debugging() -> bool:
    """Whether ``--debug`` was given (also seen by worker processes)."""
    return os.environ.get(DEBUG_VARIABLE) == "1"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps each script's docstring as written and shows every option's
    default where it has one and its help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False, [])
                or action.default is argparse.SUPPRESS):
            return text
        value = action.default
        if isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value)
        return f"{text} (default: {str(value).replace('%', '%%')})"


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)


def add_config_arguments(parser: argparse.ArgumentParser, defaults_from: str = "") -> None:
    """The "configuration" group. ``defaults_from`` says where unset values come
    from before the built-in defaults (e.g. "the model's"), so that --help
    does not promise a default that a saved configuration replaces."""
    default = Config()
    where = f"default: {defaults_from}, else " if defaults_from else "default "
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", help="JSON/YAML file overriding the default configuration")
    group.add_argument("--magnifications", type=float, nargs="+", metavar="M",
                       help=f"objective magnification of each scale, highest first "
                            f"({where}{' '.join(f'{m:g}' for m in default.magnifications)})")
    group.add_argument("--tile-size", type=int,
                       help=f"tile side in pixels at every scale ({where}{default.tile_size})")


def add_slide_arguments(parser: argparse.ArgumentParser, workers: int, workers_help: str) -> None:
    """The "slides" group of the two scripts that read whole slides."""
    group = parser.add_argument_group("slides")
    group.add_argument("--mpp", metavar="MPP|FILE",
                       help="base µm/px of level 0, overriding the slides' metadata: one value, or a CSV file of "
                            "slide,mpp rows (the slides it does not list use their metadata)")
    group.add_argument("--workers", type=int, default=workers, help=workers_help)
    group.add_argument("--overwrite", action="store_true",
                       help="redo slides whose outputs exist; needed when they were made with other settings")
    group.add_argument("--shard", metavar="I/N",
                       help="process only share I of N of the sorted slides (0 <= I < N), e.g. for an array job")


def add_message_arguments(parser: argparse.ArgumentParser) -> None:
    """The "messages" group, last in every script."""
    group = parser.add_argument_group("messages")
    group.add_argument("--quiet", action="store_true", help="print warnings and errors only")
    group.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    group.add_argument("--version", action=_Versions, nargs=0,
                       help="print the versions of this tool, TensorFlow and OpenSlide, and exit")


class _Versions(argparse.Action):
    """Imports TensorFlow only when asked: it takes seconds."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        import openslide
        import tensorflow as tf

        from utils import __version__

        print(f"{parser.prog} {__version__}; TensorFlow {tf.__version__}; OpenSlide "
              f"{openslide.__library_version__} (openslide-python {openslide.__version__})")
        parser.exit()


def resolve_config(args: argparse.Namespace, base: dict[str, Any] | None = None, **extra: Any) -> Config:
    """Defaults < ``base`` (e.g. the configuration saved with a model) < --config < flags."""
    values = dict(base or {})
    if args.config:
        values.update(read_config_file(args.config))
    flags = dict(magnifications=args.magnifications, tile_size=args.tile_size, **extra)
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return load_config(None, **values)
    except ConfigError as exc:
        if args.config and not str(exc).startswith(str(args.config)):
            raise ConfigError(f"{args.config} (with the flags given): {exc}") from None
        raise


def prepare_output(folder: Path) -> None:
    """Create the output folder and clear what killed runs left half-written there."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temporaries(folder):
        info(f"removed {path}, left half-written by an interrupted run")


def exit_on_input_error(main: Callable[..., int]) -> Callable[..., int]:
    """Turn bad input, disk trouble and Ctrl-C into one ``error:`` line: exit
    status 2 for input, 3 for the disk, 130 for an interruption."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        warnings.formatwarning = _one_line_warning
        arguments = sys.argv[1:] if argv is None else argv
        set_quiet("--quiet" in arguments)
        if "--debug" in arguments:
            os.environ[DEBUG_VARIABLE] = "1"
            return main(argv)
        try:
            return main(argv)
        except InputError as exc:
            error(str(exc))
            return 2
        except OSError as exc:
            error(describe_os_error(exc))
            return 3
        except KeyboardInterrupt:
            error("interrupted; finished work is kept, rerun the same command to go on")
            return 130

    return wrapper


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


def describe_os_error(exc: OSError) -> str:
    """One line naming the file and what to do about the failure."""
    where = f"{exc.filename}: " if exc.filename else ""
    hints = {
        errno.ENOSPC: "the disk is full; free space or choose another --output, then rerun (finished work is kept)",
        errno.EDQUOT: "the disk quota is exhausted; free space, then rerun (finished work is kept)",
        errno.EACCES: "permission denied; choose a folder you can write to",
        errno.EROFS: "the file system is read-only; choose another --output",
        errno.ENOTDIR: "a path component is a file, not a folder",
    }
    return f"{where}{exc.strerror or exc}" + (f" ({hints[exc.errno]})" if exc.errno in hints else "")
