"""The training stages: the method's trainer wired to the panel, the logs and Ctrl-C; the fit; the evaluation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..checkpoint import META_FILE
from ..console import stage
from ..perplexity import from_loss
from .data_setup import Splits
from .environment import Environment
from .model_setup import LoadedModel
from .rundirs import latest_checkpoint, resume_command
from .saving import save_adapter
from .session import RunContext

if TYPE_CHECKING:
    from transformers import TrainerCallback
    from transformers.trainer_utils import TrainOutput

    from .callbacks import MetricsCallback
    from .interrupts import InterruptGuard
    from .panel import TrainingView
    from .trainer import CountingTrainer


@dataclass(frozen=True)
class TrainerParts:
    trainer: CountingTrainer
    """The training method's TRL trainer, with token counting."""
    view: TrainingView
    """The live panel (process 0, on a terminal)."""
    metrics: MetricsCallback
    """Writes metrics.jsonl and the log lines, and keeps the history the summary reads."""
    guard: InterruptGuard
    """Turns Ctrl-C (and SIGTERM) into a saved, resumable stop."""


def build_trainer(run: RunContext, env: Environment, loaded: LoadedModel, splits: Splits, live: bool | None,
                  extra_callbacks: list[TrainerCallback]) -> TrainerParts:
    """The method's trainer wired to the panel, the logs and Ctrl-C."""
    from transformers.trainer_callback import PrinterCallback

    from ..distributed import is_main_process
    from ..methods.spec import TrainerInputs
    from .callbacks import MetricsCallback
    from .config import early_stopping_callbacks
    from .interrupts import InterruptGuard
    from .panel import TrainingView
    from .trackers import tracker_callbacks

    recipe, dirs = run.recipe, run.dirs
    main = is_main_process()  # with several processes, process 0 alone shows and records the run
    view = TrainingView(f"qlora4080 · {dirs.name}", env.hardware, live=live if main else False)
    metrics = MetricsCallback(run.log, dirs.logs / "metrics.jsonl", view, env.hardware)
    guard = InterruptGuard()
    # The trackers' runs stay open for the evaluation after training (which a Ctrl-C stop skips).
    trackers = (tracker_callbacks(recipe, dirs, evaluates_after=lambda: splits.evaluation is not None and not guard.requested)
                if main else [])
    callbacks = [metrics, guard, *trackers, *early_stopping_callbacks(recipe), *extra_callbacks]
    trainer = run.method.make_trainer(TrainerInputs(
        recipe=recipe, plan=env.plan, output_dir=dirs.checkpoint, model=loaded.model, tokenizer=loaded.tokenizer,
        train=splits.train, validation=splits.evaluation, callbacks=callbacks, log=run.log))
    metrics.trainer = trainer
    trainer.remove_callback(PrinterCallback)  # MetricsCallback prints a readable line instead
    return TrainerParts(trainer, view, metrics, guard)


def fit(run: RunContext, env: Environment, loaded: LoadedModel, splits: Splits, parts: TrainerParts) -> TrainOutput:
    """trainer.train() with OOM advice, and Ctrl-C turned into a saved, resumable stop."""
    from ..preflight import global_batch
    from .oom import is_out_of_memory, out_of_memory_error

    recipe, trainer, t = run.recipe, parts.trainer, run.recipe.training
    steps = trainer.args.max_steps if trainer.args.max_steps > 0 else f"{t.epochs:g} epoch(s) of"
    unit = run.method.records.unit
    processes = trainer.args.world_size
    batch = f"batch {t.batch_size} x grad-accum {t.grad_accum}" + (
        f" x {processes} processes = global batch {global_batch(recipe, processes)}" if processes > 1 else "")
    stage(f"Training: {splits.train.conversations} {unit}, {batch}, {steps} steps, lr {t.learning_rate}")
    if (needed := global_batch(recipe, processes)) > splits.train.conversations:
        run.log.line(f"warning: one optimizer step takes {needed} {unit} (batch x grad-accum x processes) but the "
                     f"data has {splits.train.conversations}: every step is the whole epoch and more; lower "
                     "training.grad_accum or training.batch_size", style="yellow")
    started = time.monotonic()
    try:
        with parts.guard:
            output = trainer.train(resume_from_checkpoint=str(run.checkpoint) if run.checkpoint else None)
    except BaseException as error:
        parts.view.stop()
        if is_out_of_memory(error):
            from ..hardware import memory_snapshot

            snapshot, step = memory_snapshot(env.hardware), trainer.state.global_step
            run.log.line(f"out of memory at step {step}: {error}", echo=False)
            raise out_of_memory_error(recipe, step, snapshot.get("peak"), snapshot.get("card_total")) from None
        raise
    parts.view.stop()
    run.stages.timings["Training"] = round(time.monotonic() - started, 2)
    if parts.guard.requested:
        _stop_interrupted(run, env, loaded, splits, parts, output)
    return output


def _stop_interrupted(run: RunContext, env: Environment, loaded: LoadedModel, splits: Splits, parts: TrainerParts,
                      output: TrainOutput) -> None:
    from ..distributed import is_main_process
    from .interrupts import TrainingInterrupted
    from .summary import build_summary, checkpoint_meta

    dirs, trainer = run.dirs, parts.trainer
    if is_main_process():  # the trainer's checkpoint is written by every process together; the adapter by one
        # With its metadata, so chat, eval and export take the adapter saved so far like a finished one.
        summary = build_summary(dirs, output, parts.metrics.history, splits.train, {}, run.stages.timings,
                                run.started, env.hardware, trainer, env.plan, env.memory_estimate_gib)
        meta = checkpoint_meta(run.recipe, env.plan, summary, splits.validation_file)
        save_adapter(loaded.model, loaded.tokenizer, dirs.checkpoint, {META_FILE: meta.to_json()},
                     last_good=latest_checkpoint(dirs.checkpoint))
    command, step = resume_command(run.recipe, dirs), trainer.state.global_step
    run.log.line(f"interrupted at step {step}; resume with: {command}", echo=False)
    stopped = TrainingInterrupted(f"training interrupted at step {step}; the adapter and a resumable checkpoint "
                                  f"are saved in {dirs.checkpoint}", hint=f"resume with:  {command}",
                                  exit_code=parts.guard.exit_code)
    stopped.shown_by_main_process = not is_main_process()  # every process stops here; process 0 says it once
    raise stopped


def evaluate(run: RunContext, splits: Splits, parts: TrainerParts) -> dict[str, float]:
    if splits.evaluation is None:
        return {}
    with run.stages.stage("Evaluating on the validation file"):
        metrics = parts.trainer.evaluate()
        if "eval_loss" in metrics and run.method.loss_is_perplexity:  # a preference loss is no perplexity
            metrics["eval_perplexity"] = from_loss(metrics["eval_loss"])
    return metrics
