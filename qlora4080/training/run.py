"""train(recipe) -> a trained adapter in checkpoints/<run>/ and logs in runs/<run>/."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint import META_FILE, RECIPE_SNAPSHOT
from ..recipe import Recipe
from .resume_check import check_resume
from .rundirs import (
    RunDirs,
    create_run_dirs,
    find_resume_point,
    plan_run_dirs,
    recipe_inputs,
)
from .session import TrainingRun, TrainResult

if TYPE_CHECKING:
    from transformers import TrainerCallback

__all__ = ["META_FILE", "RECIPE_SNAPSHOT", "TrainResult", "resume_command", "train"]


def train(
    recipe: Recipe,
    *,
    run_name: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    resume_from: Path | None = None,
    target_gb: float | None = None,
    callbacks: list[TrainerCallback] | None = None,
    live: bool | None = None,
) -> TrainResult:
    """Train a LoRA adapter as the recipe says. Raises QloraError for anything the user can fix.

    `resume` continues the named (or latest) run of this recipe from its last
    checkpoint; `callbacks` are extra transformers TrainerCallbacks; `live`
    forces the Rich panel on or off (default: on when output is a terminal).
    """
    # Before anything heavy: a bad name, a name clash, a changed recipe or a missing checkpoint fails fast.
    from ..runlock import holding
    from .runlog import RunLog

    resuming = resume or resume_from is not None
    if resuming:
        dirs, checkpoint = find_resume_point(recipe, run_name, resume_from)
    else:
        dirs, checkpoint = plan_run_dirs(recipe, run_name, overwrite), None
    with holding(dirs.checkpoint, f"run '{dirs.name}'"):
        if resuming:
            notes = check_resume(recipe, dirs.checkpoint / RECIPE_SNAPSHOT, dirs.name)
        else:
            plan_run_dirs(recipe, dirs.name, overwrite)  # again, under the lock: another run may have just finished
            create_run_dirs(dirs, overwrite, recipe_inputs(recipe))
            notes = []
        dirs.logs.mkdir(parents=True, exist_ok=True)
        log = RunLog(dirs.logs / "train.log")
        try:
            for note in notes:
                log.line(note, style="yellow")
            run = _run_class(recipe)(recipe, dirs, log, checkpoint)
            run.set_up_environment(target_gb)
            run.set_up_model()
            run.set_up_data()
            run.attach_lora()
            run.build_trainer(live, callbacks or [])
            output = run.fit()
            return run.save(output, run.evaluate())
        finally:
            log.close()


def _run_class(recipe: Recipe) -> type[TrainingRun]:
    """The staged run for the recipe's training method: SFT, or preference tuning on top of it."""
    if recipe.training.method in ("dpo", "orpo"):
        from ..preference.run import PreferenceRun

        return PreferenceRun
    return TrainingRun


def resume_command(recipe: Recipe, dirs: RunDirs) -> str:
    """The command that continues this run exactly: same recipe file, same --set values, same run."""
    source = recipe.source_path
    shown: Path | str = "RECIPE"
    if source is not None:
        shown = source.relative_to(Path.cwd()) if source.is_relative_to(Path.cwd()) else source
    overrides = "".join(f" --set {shlex.quote(item)}" for item in recipe.overrides)
    return f"qlora4080 train {shlex.quote(str(shown))}{overrides} --resume --run-name {dirs.name}"
