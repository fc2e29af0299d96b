"""TensorFlow's first import, without its start-up notes on the user's stderr.

TensorFlow's C++ core logs notes while it loads (oneDNN custom operations on,
CPU instructions it could use) before absl's logging is initialised, so they
reach stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says, with a line of absl's
own before them. Which lines appear depends on the CPU. They bury the
progress bars and one-line messages users read, so the first import sends
file descriptor 2 to a temporary file and writes back everything that is not
such a note (a real warning or error during the import still shows).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

#: What TensorFlow prints on start-up that tells the user nothing to act on:
#: absl's own notice, INFO lines in absl's format (``I0000 00:00:...``) and the
#: continuation line of the CPU-instructions note.
START_UP_NOTE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] .*"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.)$"
)


def without_start_up_notes(text: str) -> str:
    """``text`` less TensorFlow's start-up notes, every other line kept as it was."""
    return "".join(line for line in text.splitlines(keepends=True) if not START_UP_NOTE.match(line.rstrip("\n")))


def import_tensorflow_quietly() -> None:
    """Import TensorFlow once with its start-up notes filtered out of stderr.
    Nothing happens when it is already imported, and nothing is filtered when
    the user asks for TensorFlow's INFO lines (``TF_CPP_MIN_LOG_LEVEL=0``)."""
    if "tensorflow" in sys.modules:
        return
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                capture.seek(0)
                kept = without_start_up_notes(capture.read().decode("utf-8", errors="replace"))
                if kept:
                    sys.stderr.write(kept)
                    sys.stderr.flush()
    finally:
        os.close(saved)
