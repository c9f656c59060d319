"""Where commands write, checked before any model loads (loading takes seconds to minutes).

A path that cannot be written (a file where a folder is needed or the other way
round, a folder without write permission) is refused at once with the flag
that chose it, instead of after the model has loaded and the work is done.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import RECIPE_SNAPSHOT
from ..data.jsonl import check_not_special
from ..errors import QloraError
from ..toml_io import TOMLDecodeError, read_toml
from .friendly import NOT_A_FOLDER_HINT, PERMISSIONS_HINT

DEFAULT_RUNS_DIR = "runs"


def run_folder(checkpoint: str) -> Path:
    """runs/<run> for a checkpoint: its own logs folder, wherever the command runs from.

    `eval` once wrote ./runs/<name>/eval.json under the current folder: evaluating
    another project's checkpoint replaced this project's numbers. Now a relative
    runs_dir of the recipe snapshot is taken from the run's own project folder
    (the checkpoint's folder less checkpoints_dir). A plain model folder or a
    built-in model has no run: ./runs/<name>.
    """
    path = Path(checkpoint)
    return _runs_dir(path) / path.name


def _runs_dir(checkpoint: Path) -> Path:
    snapshot = checkpoint / RECIPE_SNAPSHOT
    if not snapshot.is_file():
        return Path(DEFAULT_RUNS_DIR)
    try:
        output = read_toml(snapshot).get("output")
    except (OSError, UnicodeDecodeError, TOMLDecodeError, RecursionError):  # only a hint here; chat/eval judge the checkpoint
        return Path(DEFAULT_RUNS_DIR)
    output = output if isinstance(output, dict) else {}
    runs_dir, checkpoints_dir = output.get("runs_dir"), output.get("checkpoints_dir")
    runs = Path(runs_dir) if isinstance(runs_dir, str) and runs_dir.strip() else Path(DEFAULT_RUNS_DIR)
    if runs.is_absolute() or not isinstance(checkpoints_dir, str):
        return runs
    # relative to the folder the run was started in: the checkpoint's parent minus checkpoints_dir
    parent, parts = checkpoint.resolve().parent, Path(checkpoints_dir).parts
    if not parts:  # checkpoints_dir = "."
        return parent / runs
    if parent.parts[-len(parts):] == parts:
        return Path(*parent.parts[:-len(parts)]) / runs
    return runs


def check_output_folder(folder: Path, flag: str, *, given: bool = True) -> None:
    """`folder` exists as a writable folder, or can be made. `flag` chose it (`given`) or would change it."""
    where = flag if given else None
    if folder.exists() and not folder.is_dir():
        raise QloraError(f"{folder} is a file, not a folder", where=where, hint=_elsewhere(flag, "a new or empty folder"))
    _check_can_write(folder, folder, where, flag)


def check_output_file(file: Path, flag: str, *, given: bool = True) -> None:
    """`file` is a writable file, or can be made in a writable folder (never a FIFO or device: writes would hang)."""
    where = flag if given else None
    check_not_special(file, where)
    if file.is_dir():
        raise QloraError(f"{file} is a folder, not a file", where=where, hint=_elsewhere(flag, "a file path, e.g. answers.jsonl"))
    if file.exists():
        if not os.access(file, os.W_OK):
            raise QloraError(f"{file} cannot be written: no write permission (or a read-only disk)", where=where,
                             hint=PERMISSIONS_HINT)
        return
    _check_can_write(file, file.parent, where, flag)


def check_input_file(file: Path, flag: str, what: str) -> None:
    """An input file named by `flag` exists and is a file (not a FIFO or device, which would never end)."""
    check_not_special(file, flag)
    if file.is_dir():
        raise QloraError(f"{file} is a folder, not a {what}", where=flag, hint=f"give {flag} a file")
    if not file.is_file():
        raise QloraError(f"{what} not found: {file}", where=flag,
                         hint="check the path (a relative path starts from the current folder)")


def _check_can_write(target: Path, folder: Path, where: str | None, flag: str) -> None:
    """`target` can be made: `folder` (the target itself, or the folder a target file goes in) is writable,
    or else the nearest part of its path that exists is a folder this process may write in."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path.cwd())
    if not existing.is_dir():
        raise QloraError(f"{target} cannot be made: {existing} is a file, not a folder", where=where, hint=NOT_A_FOLDER_HINT)
    if not os.access(existing, os.W_OK | os.X_OK):
        made = "" if existing == target else f" (to make {target})"
        raise QloraError(f"cannot write in {existing}{made}: no write permission (or a read-only disk)", where=where,
                         hint=f"{PERMISSIONS_HINT} ({flag})")


def _elsewhere(flag: str, what: str) -> str:
    return f"pass {flag} with {what}"
