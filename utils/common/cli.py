"""Command-line pieces the three scripts share: the help layout, the option
groups they have in common, the settings file read once, and the
configuration and options those resolve to."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from utils.common.config import Config, build_config, read_settings
from utils.common.errors import ConfigError
from utils.common.io import remove_stale_temporaries
from utils.common.log import info, set_messages


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


def add_config_arguments(parser: argparse.ArgumentParser, defaults_from: str = "",
                         section: str = "") -> argparse._ArgumentGroup:
    """The "configuration" group. ``defaults_from`` says where unset values come
    from before the built-in defaults (e.g. "the model's"), so that --help
    does not promise a default that a saved configuration replaces;
    ``section`` names the file's section that holds this script's options."""
    default = Config()
    where = f"default: {defaults_from}, else " if defaults_from else "default "
    group = parser.add_argument_group("configuration")
    also = (f"; its {section}: section sets this script's options below, which the flags override"
            if section else "")
    group.add_argument("--config", help=f"JSON/YAML file overriding the default configuration{also}, or a "
                                        f"shipped preset by name (e.g. original, for presets/original.yaml)")
    group.add_argument("--magnifications", type=float, nargs="+", metavar="M",
                       help=f"objective magnification of each scale, highest first "
                            f"({where}{' '.join(f'{m:g}' for m in default.magnifications)})")
    group.add_argument("--tile-size", type=int,
                       help=f"tile side in pixels at every scale ({where}{default.tile_size})")
    return group


def add_upsampling_argument(group: argparse._ArgumentGroup) -> None:
    """``--allow-upsampling``, for the scripts that read slides: the fix their
    errors suggest for a scan coarser than the finest scale."""
    group.add_argument("--allow-upsampling", action="store_true", default=None,
                       help="allow magnifications above the scan's by resampling up "
                            "(the configuration's allow_upsampling)")


def add_slide_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The "slides" group of the two scripts that read whole slides; each adds
    its own ``--workers`` there, from its options."""
    group = parser.add_argument_group("slides")
    group.add_argument("--mpp", metavar="MPP|FILE",
                       help="base µm/px of level 0, overriding the slides' metadata: one value, or a CSV file of "
                            "slide,mpp rows (the slides it does not list use their metadata)")
    group.add_argument("--overwrite", action="store_true",
                       help="redo the slides whose outputs were made with other settings or inputs (those made "
                            "with the same are kept)")
    group.add_argument("--shard", metavar="I/N",
                       help="process only share I of N of the sorted slides (0 <= I < N), e.g. for an array job")
    return group


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


def start(args: argparse.Namespace, section: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What every script does once its flags are parsed: pass ``--quiet`` and
    ``--debug`` on, and read the ``--config`` file once, into its
    configuration keys and the options of this script's ``section``."""
    set_messages(args.quiet, args.debug)
    if not args.config:
        return {}, {}
    keys, sections = read_settings(args.config)
    return keys, sections[section]


def resolve_config(args: argparse.Namespace, file_keys: dict[str, Any], base: dict[str, Any] | None = None,
                   **extra: Any) -> Config:
    """Defaults < ``base`` (e.g. the configuration saved with a model) < the
    --config file's keys < flags."""
    values = {**(base or {}), **file_keys}
    flags = dict(magnifications=args.magnifications, tile_size=args.tile_size, **extra)
    values.update({k: v for k, v in flags.items() if v is not None})  # None: the flag was not given
    try:
        return build_config(values, args.config or "flags")
    except ConfigError as exc:
        if args.config and not str(exc).startswith(str(args.config)):
            raise ConfigError(f"{args.config} (with the flags given): {exc}") from None
        raise


def prepare_output(folder: Path) -> None:
    """Create the output folder and clear what killed runs left half-written there."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temporaries(folder):
        info(f"removed {path}, left half-written by an interrupted run")
