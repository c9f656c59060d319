"""Where a run writes: checkpoints/<run>/ and runs/<run>/, never over an existing run by accident."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import QloraError
from ..recipe import Recipe


@dataclass(frozen=True)
class RunDirs:
    name: str
    checkpoint: Path
    """Adapter, tokenizer + chat template, recipe snapshot (and intermediate trainer checkpoints)."""
    logs: Path
    """train.log, metrics.jsonl, summary.json."""


def plan_run_dirs(recipe: Recipe, run_name: str | None = None, overwrite: bool = False) -> RunDirs:
    """Pick the run's folders; refuse to reuse a named run's folders unless `overwrite`."""
    name = run_name or recipe.output.run_name
    checkpoints = Path(recipe.output.checkpoints_dir)
    runs = Path(recipe.output.runs_dir)
    if name is None:
        base = f"{recipe.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        name, suffix = base, 1
        while (checkpoints / name).exists() or (runs / name).exists():
            suffix += 1
            name = f"{base}-{suffix}"
    dirs = RunDirs(name=name, checkpoint=checkpoints / name, logs=runs / name)
    taken = [p for p in (dirs.checkpoint, dirs.logs) if p.exists() and any(p.iterdir())]
    if taken and not overwrite:
        raise QloraError(
            f"run '{name}' already exists: {', '.join(map(str, taken))}",
            hint="pick another --run-name, or pass --overwrite to replace it",
        )
    return dirs


def create_run_dirs(dirs: RunDirs, overwrite: bool) -> None:
    for path in (dirs.checkpoint, dirs.logs):
        if overwrite and path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
