"""One small exception family for bad input.

Scripts catch :class:`InputError`, print its one-line message (which names the
file and the fix) and carry on with the next slide or exit non-zero. Anything
else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Base class: something the user gave us cannot be used as it is."""


class ConfigError(InputError):
    """A configuration file or flag has an unknown key or an invalid value."""


class SlideError(InputError):
    """A slide cannot be opened or read."""


class MppError(SlideError):
    """The slide's µm/px is missing or implausible; ``--mpp`` fixes it."""


class MagnificationError(SlideError):
    """A requested magnification is higher than the slide was scanned at."""


class AnnotationError(InputError):
    """An annotation file cannot be parsed or names an unknown class."""


class ModelError(InputError):
    """A model or weights file does not fit the data or the configuration."""
