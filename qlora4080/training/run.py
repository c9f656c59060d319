"""train(recipe) -> a trained adapter in checkpoints/<run>/ and logs in runs/<run>/.

The same function runs in every process of `torchrun` / `accelerate launch`:
process 0 plans the run (name, folders, lock) and saves it; the others receive
its plan and take part in every step the trainer shares (see distributed.py).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint import META_FILE, RECIPE_SNAPSHOT
from ..recipe import Recipe
from .checkpoint_saving import remove_stale_staging
from .data_setup import prepare_splits
from .environment import set_up_environment
from .finish import save_on_main_process
from .fitting import build_trainer, evaluate, fit
from .model_setup import attach_lora, load_model
from .replace import settle_replaced, settle_stale
from .resume_check import check_resume
from .rundirs import (
    RunDirs,
    check_not_finished,
    check_resumable,
    create_run_dirs,
    find_resume_point,
    plan_run_dirs,
    recipe_inputs,
    resume_command,
    trainer_state,
)
from .saving import remove_dead_staging
from .session import RunContext, TrainResult

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
    from ..console import speak_only_as_main_process
    from ..distributed import decided_by_main, is_main_process, start_process_group
    from .runlog import RunLog

    speak_only_as_main_process()
    start_process_group()
    with ExitStack() as held:  # process 0's run lock, held until the run ends
        # Before anything heavy: a bad name, a name clash, a changed recipe or a missing checkpoint fails fast.
        # Process 0 decides (the default name has a timestamp) and every other process receives the same plan.
        dirs, checkpoint, notes = decided_by_main(
            lambda: _plan_run(recipe, held, run_name, overwrite, resume, resume_from), "planning the run's folders")
        log = RunLog(dirs.logs / "train.log" if is_main_process() else None)
        try:
            for note in notes:
                log.line(note, style="yellow")
            run = RunContext.begin(recipe, dirs, log, checkpoint)
            env = set_up_environment(run, target_gb)
            base = load_model(run, env)
            splits = prepare_splits(run, base.tokenizer)
            loaded = attach_lora(run, env, base)
            parts = build_trainer(run, env, loaded, splits, live, callbacks or [])
            output = fit(run, env, loaded, splits, parts)
            return save_on_main_process(run, env, loaded, splits, parts, output, evaluate(run, splits, parts))
        except BaseException:
            from .trackers import close_failed_run

            close_failed_run()  # the trainer calls no callback when it raises: the tracker runs end here, as failed
            raise
        finally:
            log.close()


def _plan_run(recipe: Recipe, held: ExitStack, run_name: str | None, overwrite: bool, resume: bool,
              resume_from: Path | None) -> tuple[RunDirs, Path | None, list[str]]:
    """The run's folders (made), the checkpoint to resume from, notes for the log; the run lock joins `held`."""
    from ..runlock import holding

    resuming = resume or resume_from is not None
    if resuming:
        dirs, checkpoint = find_resume_point(recipe, run_name, resume_from)
    else:
        dirs, checkpoint = plan_run_dirs(recipe, run_name, overwrite), None
    # One lock per folder the run writes, keyed by the real path: two runs of one name with different
    # checkpoints_dir still share runs/<name>, and a symlinked --resume-from is the same run as its target.
    for folder in sorted({dirs.checkpoint.resolve(), dirs.logs.resolve()}):
        held.enter_context(holding(folder, f"run '{dirs.name}'"))
    notes = settle_stale((dirs.checkpoint, dirs.logs), dirs.checkpoint)
    remove_stale_staging(dirs.checkpoint)  # half-written saves of a killed process: never finished, never used
    remove_dead_staging(dirs.checkpoint)
    if resuming:
        assert checkpoint is not None
        skipped = [p.name for p in dirs.checkpoint.glob("checkpoint-*") if p != checkpoint and trainer_state(p) is None
                   and p.name.split("-")[-1].isdigit() and int(p.name.split("-")[-1]) > int(checkpoint.name.split("-")[-1])]
        notes += [f"note: {name} has no intact trainer_state.json (a save cut short); resuming from {checkpoint.name}"
                  for name in sorted(skipped)]
        notes += check_resume(recipe, dirs.checkpoint / RECIPE_SNAPSHOT, dirs.name)
        check_not_finished(checkpoint, dirs.name)  # after the recipe check, which names a changed max_steps
        check_resumable(checkpoint, "--resume-from" if resume_from is not None else "--resume")
    else:
        plan_run_dirs(recipe, dirs.name, overwrite)  # again, under the lock: another run may have just finished
        moved = create_run_dirs(dirs, overwrite, recipe_inputs(recipe))
        held.callback(settle_replaced, moved, dirs.checkpoint)  # runs before the locks are released
    dirs.logs.mkdir(parents=True, exist_ok=True)
    return dirs, checkpoint, notes

