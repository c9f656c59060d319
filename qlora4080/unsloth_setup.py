"""Importing unsloth the one way qlora4080 does it.

`import unsloth` patches transformers, trl and peft, so it must come before
them in the process; it prints a banner on stdout (sent to stderr here, so
`doctor --json` stays JSON), and unsloth_zoo writes the trainer classes it
generates into `unsloth_compiled_cache/` under the current folder unless
UNSLOTH_COMPILE_LOCATION says otherwise: into the user's project, or into a
clone of this repository. The cache goes under qlora4080's own cache folder
instead (an explicit UNSLOTH_COMPILE_LOCATION is kept).
"""

from __future__ import annotations

import functools
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path

from .builtin_models import cache_root
from .hardware import has_module

COMPILE_LOCATION_VARIABLE = "UNSLOTH_COMPILE_LOCATION"


def compile_cache() -> Path:
    """Where unsloth_zoo writes its generated trainer classes (read once, when unsloth_zoo is imported)."""
    return Path(os.environ.get(COMPILE_LOCATION_VARIABLE) or cache_root() / "unsloth_compiled_cache")


@functools.cache
def unsloth_import_problem() -> str | None:
    """None when `import unsloth` works, else why not ("not installed", or the import's error in one line).

    Tried once per process: a failed import is not retried, and a working one is not repeated.
    """
    if not has_module("unsloth"):
        return "not installed"
    os.environ.setdefault(COMPILE_LOCATION_VARIABLE, str(compile_cache()))
    try:
        with redirect_stdout(sys.stderr):
            import unsloth  # noqa: F401
    except Exception as exc:  # noqa: BLE001  unsloth raises many kinds of errors on unsupported set-ups
        lines = str(exc).strip().splitlines()
        return f"import failed: {type(exc).__name__}: {lines[0]}" if lines else f"import failed: {type(exc).__name__}"
    return None
