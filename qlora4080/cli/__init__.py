"""The command line. Each command: parse -> call one function -> print.

Heavy libraries (torch, transformers, trl) are imported inside the commands
that need them, so `qlora4080 --help` and recipe checks stay instant.

    app.py              the Typer app, the `data` group, --version
    friendly.py         QloraError and OSError as a readable panel and an exit code
    outputs.py          output paths checked before any model loads; a checkpoint's run folder
    train_commands.py   train (and --dry-run)
    model_commands.py   chat, eval, generate, export: the commands that load a trained model
    serve_command.py    serve: an OpenAI-compatible HTTP server over a checkpoint
    data_commands.py    data check, data build, data preview
    info_commands.py    recipes, doctor
    runs_commands.py    runs (list), runs compare, runs plot
"""

from __future__ import annotations

from .app import app
from .friendly import friendly_errors, os_error

# Importing a command module registers its commands; this order is the order of `qlora4080 --help`.
# isort: off
from . import train_commands, model_commands, serve_command, data_commands, info_commands, runs_commands  # noqa: F401
# isort: on

__all__ = ["app", "friendly_errors", "os_error"]
