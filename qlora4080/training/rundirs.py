"""Where a run writes: checkpoints/<run>/ and runs/<run>/, never over an existing run by accident.

`--overwrite` once removed `checkpoints/..` (the user's whole folder) for
`--run-name ..`. Now a run name is a plain name, and a folder is only ever
removed when it is a run folder this tool wrote (it holds RUN_MARKER, or the
files of a run from before the marker existed) and holds none of the run's
own inputs.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import QloraError
from ..recipe import Recipe, run_name_problem

RUN_MARKER = ".qlora4080-run"
# What runs written before the marker existed hold: enough to recognise them as ours.
EARLIER_RUN_FILES = ("qlora4080.json", "recipe.toml", "train.log", "metrics.jsonl", "summary.json")


@dataclass(frozen=True)
class RunDirs:
    name: str
    checkpoint: Path
    """Adapter, tokenizer + chat template, recipe snapshot (and intermediate trainer checkpoints)."""
    logs: Path
    """train.log, metrics.jsonl, summary.json."""


def plan_run_dirs(recipe: Recipe, run_name: str | None = None, overwrite: bool = False) -> RunDirs:
    """Pick the run's folders; refuse to reuse a named run's folders unless `overwrite`."""
    if run_name is not None:
        check_run_name(run_name, "--run-name")  # an empty --run-name "" is refused too, not taken as "default"
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


def check_run_name(name: str, where: str) -> None:
    if problem := run_name_problem(name):
        raise QloraError(problem, where=where, hint="e.g. --run-name my-run-2")


def create_run_dirs(dirs: RunDirs, overwrite: bool, inputs: list[Path] | None = None) -> None:
    """Make the run's folders (replacing them only when `overwrite` and safe) and mark them as ours."""
    for path in (dirs.checkpoint, dirs.logs):
        if overwrite and path.exists():
            check_removable(path, inputs or [])
            shutil.rmtree(path)
    for path in (dirs.checkpoint, dirs.logs):
        path.mkdir(parents=True, exist_ok=True)
        (path / RUN_MARKER).write_text(f"{dirs.name}\n", encoding="utf-8")


def is_run_folder(path: Path) -> bool:
    return (path / RUN_MARKER).is_file() or any((path / name).is_file() for name in EARLIER_RUN_FILES)


def check_removable(path: Path, inputs: list[Path]) -> None:
    """Refuse to remove anything but a run folder of ours that holds none of the run's inputs."""
    if path.is_symlink() or not path.is_dir():
        raise QloraError(f"{path} is not a run folder (it is a file or a link); it was left as it is",
                         hint="remove or rename it yourself, or choose another --run-name")
    if any(path.iterdir()) and not is_run_folder(path):
        raise QloraError(f"{path} exists but was not written by qlora4080, so --overwrite leaves it alone",
                         hint="choose another --run-name, or move that folder away yourself")
    folder = path.resolve()
    inside = [p for p in inputs if p.resolve() == folder or folder in p.resolve().parents]
    if inside:
        raise QloraError(f"--overwrite would delete {path}, which holds this run's own input {inside[0]}",
                         hint="keep recipes, data and models outside checkpoints/ and runs/, or choose another --run-name")


def recipe_inputs(recipe: Recipe) -> list[Path]:
    """Files and folders a run reads: never inside a folder that --overwrite may remove."""
    paths = [recipe.source_path] if recipe.source_path else []
    for value in (recipe.data.train, recipe.data.validation, recipe.model.chat_template):
        if value:
            paths.append(recipe.resolve_path(value))
    paths += [recipe.resolve_path(source.path) for source in recipe.data.sources if source.path]
    model = Path(recipe.model.name).expanduser()
    if model.exists():
        paths.append(model)
    return paths


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint-N folder with the highest N that holds a trainer state."""
    found = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def find_resume_point(recipe: Recipe, run_name: str | None, resume_from: Path | None) -> tuple[RunDirs, Path]:
    """The run to continue and its checkpoint: an explicit folder, the named run, or this recipe's latest run."""
    checkpoints, runs = Path(recipe.output.checkpoints_dir), Path(recipe.output.runs_dir)
    if resume_from is not None:
        path = Path(resume_from)
        given = path / "trainer_state.json"
        run_folder = path.parent if given.is_file() else path
        checkpoint = path if given.is_file() else latest_checkpoint(path)
        if checkpoint is None:
            raise QloraError(f"no resumable checkpoint in {path}", where="--resume-from",
                             hint="pass checkpoints/<run> or checkpoints/<run>/checkpoint-N")
        return RunDirs(run_folder.name, run_folder, runs / run_folder.name), checkpoint
    if run_name is not None:
        check_run_name(run_name, "--run-name")  # an empty --run-name "" is refused too, not taken as "default"
    name = run_name or recipe.output.run_name
    if name is None:
        latest = {p: saved for p in checkpoints.glob(f"{recipe.stem}-*") if p.is_dir() and (saved := latest_checkpoint(p))}
        if not latest:
            raise QloraError(f"no earlier run of {recipe.stem} with a checkpoint in {checkpoints}/",
                             where="--resume", hint="name the run with --run-name, or start a new run without --resume")
        name = max(latest, key=lambda p: latest[p].stat().st_mtime).name
    dirs = RunDirs(name=name, checkpoint=checkpoints / name, logs=runs / name)
    found = latest_checkpoint(dirs.checkpoint)
    if found is None:
        raise QloraError(f"run '{name}' has no resumable checkpoint in {dirs.checkpoint}", where="--resume",
                         hint="checkpoints are written every training.save_steps steps and on Ctrl-C")
    return dirs, found
