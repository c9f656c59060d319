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


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint-N folder with the highest N that holds a trainer state."""
    found = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def find_resume_point(recipe: Recipe, run_name: str | None, resume_from: Path | None) -> tuple[RunDirs, Path]:
    """The run to continue and its checkpoint: an explicit folder, the named run, or this recipe's latest run."""
    checkpoints, runs = Path(recipe.output.checkpoints_dir), Path(recipe.output.runs_dir)
    if resume_from is not None:
        path = Path(resume_from)
        if (path / "trainer_state.json").is_file():
            checkpoint, run_folder = path, path.parent
        else:
            checkpoint, run_folder = latest_checkpoint(path), path
        if checkpoint is None:
            raise QloraError(f"no resumable checkpoint in {path}", where="--resume-from",
                             hint="pass checkpoints/<run> or checkpoints/<run>/checkpoint-N")
        return RunDirs(run_folder.name, run_folder, runs / run_folder.name), checkpoint
    name = run_name or recipe.output.run_name
    if name is None:
        candidates = [p for p in checkpoints.glob(f"{recipe.stem}-*") if p.is_dir() and latest_checkpoint(p)]
        if not candidates:
            raise QloraError(f"no earlier run of {recipe.stem} with a checkpoint in {checkpoints}/",
                             where="--resume", hint="name the run with --run-name, or start a new run without --resume")
        name = max(candidates, key=lambda p: latest_checkpoint(p).stat().st_mtime).name  # type: ignore[union-attr]
    dirs = RunDirs(name=name, checkpoint=checkpoints / name, logs=runs / name)
    checkpoint = latest_checkpoint(dirs.checkpoint)
    if checkpoint is None:
        raise QloraError(f"run '{name}' has no resumable checkpoint in {dirs.checkpoint}", where="--resume",
                         hint="checkpoints are written every training.save_steps steps and on Ctrl-C")
    return dirs, checkpoint
