"""The run's last stage: process 0 saves the adapter, its tokenizer and metadata, and summary.json; all return it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..checkpoint import META_FILE
from .data_setup import Splits
from .environment import Environment
from .fitting import TrainerParts
from .model_setup import LoadedModel
from .rundirs import latest_checkpoint
from .saving import save_adapter
from .session import RunContext, TrainResult

if TYPE_CHECKING:
    from transformers.trainer_utils import TrainOutput

    from .summary import RunSummary


def save_on_main_process(run: RunContext, env: Environment, loaded: LoadedModel, splits: Splits, parts: TrainerParts,
                         output: TrainOutput, eval_metrics: dict[str, float]) -> TrainResult:
    """Process 0 writes the adapter and summary; the others wait for it and return the same summary."""
    from ..distributed import decided_by_main, sum_over_processes

    # The summary counts every process's tokens; each trainer counted only its own.
    counters = sum_over_processes([parts.trainer.tokens_seen, parts.trainer.trained_tokens_seen])
    parts.trainer.tokens_seen, parts.trainer.trained_tokens_seen = counters
    saved: list[TrainResult] = []

    def save() -> RunSummary:
        saved.append(save_run(run, env, loaded, splits, parts, output, eval_metrics))
        return saved[0].summary

    summary = decided_by_main(save, "saving the adapter")
    if saved:
        return saved[0]
    dirs = run.dirs
    return TrainResult(dirs.name, dirs.checkpoint, dirs.logs, summary, model=loaded.model, tokenizer=loaded.tokenizer)


def save_run(run: RunContext, env: Environment, loaded: LoadedModel, splits: Splits, parts: TrainerParts,
             output: TrainOutput, eval_metrics: dict[str, float]) -> TrainResult:
    """Adapter + tokenizer (its exact chat template) + metadata, all or nothing; then summary.json."""
    from ..plots import plot_after_training
    from .saving import model_card_file
    from .summary import build_summary, checkpoint_meta, print_summary

    dirs = run.dirs
    summary = build_summary(dirs, output, parts.metrics.history, splits.train, eval_metrics, run.stages.timings,
                            run.started, env.hardware, parts.trainer, env.plan, env.memory_estimate_gib)
    with run.stages.stage(f"Saving adapter to {dirs.checkpoint}"):
        meta = checkpoint_meta(run.recipe, env.plan, summary, splits.validation_file)
        save_adapter(loaded.model, loaded.tokenizer, dirs.checkpoint,
                     {META_FILE: meta.to_json(), **model_card_file(meta, dirs.checkpoint)},
                     last_good=latest_checkpoint(dirs.checkpoint))
    (dirs.logs / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    plot_after_training(dirs.logs, run.log)
    print_summary(summary, run.log)
    return TrainResult(dirs.name, dirs.checkpoint, dirs.logs, summary, model=loaded.model, tokenizer=loaded.tokenizer)
