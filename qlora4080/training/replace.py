"""`--overwrite` replaces a run only once the new one has something to show for itself.

It used to delete the old run's folders before the new run had loaded a model:
a new run that then failed (a bad seed, a full disk, a kill) left neither run.
Now the old folders are renamed aside (`.<name>.replaced-<pid>` beside them,
an atomic rename on one filesystem) and settled when the run ends: deleted
once the new run has saved an adapter or a checkpoint, put back otherwise. A
process killed before it could settle leaves them aside; the next run of the
same name (holding the run's lock) settles them the same way.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

ASIDE_INFIX = ".replaced-"


@dataclass(frozen=True)
class MovedAside:
    original: Path
    aside: Path


def move_aside(path: Path) -> MovedAside:
    aside = path.parent / f".{path.name}{ASIDE_INFIX}{os.getpid()}"
    if aside.exists():
        shutil.rmtree(aside)
    path.rename(aside)
    return MovedAside(path, aside)


def produced_output(checkpoint: Path) -> bool:
    """Has the run saved anything worth more than the run it replaced: an adapter or a trainer checkpoint?"""
    from ..run_folders import latest_checkpoint

    return (checkpoint / "adapter_model.safetensors").is_file() or latest_checkpoint(checkpoint) is not None


def settle_replaced(moved: list[MovedAside], checkpoint: Path) -> None:
    """Delete the old run when the new one produced output; otherwise put the old run's folders back."""
    if moved:
        _settle(moved, keep_new=produced_output(checkpoint))


def _settle(moved: list[MovedAside], keep_new: bool) -> None:
    for item in moved:
        if keep_new:
            shutil.rmtree(item.aside, ignore_errors=True)
            continue
        if item.original.is_dir() and not item.original.is_symlink():
            shutil.rmtree(item.original)  # only the failed new run's own folder, made a moment ago
        item.aside.rename(item.original)


def stale_asides(run_folder: Path) -> list[MovedAside]:
    """Folders an earlier `--overwrite` of this run moved aside and never settled (it was killed)."""
    pattern = f".{run_folder.name}{ASIDE_INFIX}*"
    return [MovedAside(run_folder, aside) for aside in sorted(run_folder.parent.glob(pattern))
            if aside.name.rpartition("-")[2].isdigit() and aside.is_dir()]


def settle_stale(folders: tuple[Path, ...], checkpoint: Path) -> list[str]:
    """Settle what a killed `--overwrite` run left aside (call with the run's lock held); lines for the log."""
    stale = [item for folder in folders for item in stale_asides(folder)[-1:]]  # the newest; older ones stay for the user
    if not stale:
        return []
    keep_new = produced_output(checkpoint)  # decided once, before putting back any folder
    _settle(stale, keep_new)
    done = "removed: the run that replaced it had saved output" if keep_new else "put back"
    return [f"note: {item.aside} (left by an interrupted --overwrite) was {done}" for item in stale]
