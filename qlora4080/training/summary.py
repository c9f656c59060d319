"""What a finished run reports: the summary table and summary.json, and the checkpoint's metadata."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from .. import __version__
from ..checkpoint import CheckpointMeta
from ..console import console
from ..hardware import Hardware
from ..recipe import Recipe
from .rundirs import RunDirs
from .runlog import RunLog

if TYPE_CHECKING:
    import torch
    from transformers.trainer_utils import TrainOutput

    from ..data.dataset import TokenizedSplit
    from ..model_types import Model
    from ..plan import RunPlan
    from .panel import MetricRecord
    from .trainer import CountingTrainer


class BestCheckpoint(TypedDict):
    """The evaluation with the lowest validation loss, whose checkpoint became the final adapter."""

    step: int
    eval_loss: float


class RunSummary(TypedDict, total=False):
    """summary.json, the run summary table and the checkpoint metadata's `summary`."""

    run_name: str
    steps: int
    first_loss: float | None
    last_loss: float | None
    best_loss: float | None
    train_loss_mean: float
    tokens_seen: int
    trained_tokens_seen: int
    dataset_tokens: int
    dataset_trained_tokens: int
    peak_memory_gib: float | None
    peak_memory_kind: str
    peak_reserved_gib: float
    """CUDA: the most memory torch's allocator held from the card (allocated plus its cache), what a card must have."""
    estimated_memory_gib: float
    """CUDA: the preflight's estimate for this run (CUDA context included), beside the peaks it predicted."""
    wall_seconds: float
    stage_seconds: dict[str, float]
    processes: int
    """Processes that trained together (torchrun / accelerate launch); 1 for a plain run."""
    global_batch: int
    """Sequences per optimizer step over all processes: per-device batch x grad-accum x processes."""
    eval_loss: float
    eval_perplexity: float
    best_checkpoint: BestCheckpoint
    """With early stopping: the best evaluation, the one the adapter was saved from."""
    stopped_early: bool
    """With early stopping: whether it stopped training before max_steps / epochs."""
    stopped_at_step: int
    """The step early stopping ended training at (only when it did)."""
    first_reward: float
    """A run that samples and scores answers (grpo): the mean total reward of its first logged steps."""
    last_reward: float
    """... and of its last logged steps: what training raised."""
    eval_reward: float
    """grpo, with validation prompts: the mean total reward of answers sampled to them after training."""
    plan: dict[str, object]
    """How the run trained on its machine: backend, device, compute dtype, quantization, optimizer, checkpointing,
    packing, padding-free (plan.RunPlan.summary_fields)."""


def count_parameters(model: Model) -> tuple[int, int]:
    """(trainable, all) weights; a 4-bit matrix counts its weights, not the bytes that pack two of them into one."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(_weights(p) for p in model.parameters())
    return trainable, total


def _weights(parameter: torch.nn.Parameter) -> int:
    state = getattr(parameter, "quant_state", None)  # bitsandbytes' Params4bit: the unpacked matrix's shape
    shape = getattr(state, "shape", None)
    if shape is not None:
        return int(math.prod(shape))
    return parameter.numel()


def build_summary(dirs: RunDirs, output: TrainOutput, history: list[MetricRecord], train_split: TokenizedSplit,
                  eval_metrics: dict[str, float], timings: dict[str, float], started: float, hardware: Hardware,
                  trainer: CountingTrainer, plan: RunPlan, estimate_gib: float | None = None) -> RunSummary:
    from ..hardware import memory_snapshot

    # The trainer's log history, not only this process's: after --resume it holds the steps before the resume point too,
    # so first_loss is the run's first loss, not the first one after resuming.
    losses = [float(r["loss"]) for r in trainer.state.log_history if "loss" in r] or [
        float(r["loss"]) for r in history if "loss" in r]
    snapshot = memory_snapshot(hardware)
    peak = snapshot.get("peak")
    summary: RunSummary = {
        "run_name": dirs.name,
        "steps": output.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "best_loss": min(losses) if losses else None,
        "train_loss_mean": output.training_loss,
        "tokens_seen": trainer.tokens_seen,
        "trained_tokens_seen": trainer.trained_tokens_seen,
        "dataset_tokens": train_split.tokens,
        "dataset_trained_tokens": train_split.trained_tokens,
        "peak_memory_gib": round(peak / 2**30, 3) if peak else None,
        "peak_memory_kind": "GPU allocated" if hardware.is_cuda else "process RSS",
        **({"peak_reserved_gib": round(snapshot["peak_reserved"] / 2**30, 3)} if "peak_reserved" in snapshot else {}),
        **({"estimated_memory_gib": estimate_gib} if estimate_gib is not None else {}),
        "wall_seconds": round(time.monotonic() - started, 2),
        "stage_seconds": timings,
        "processes": trainer.args.world_size,
        "global_batch": trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
        * trainer.args.world_size,
        "plan": plan.summary_fields(),
    }
    rewards = [float(r["reward"]) for r in trainer.state.log_history if isinstance(r.get("reward"), (int, float))]
    if rewards:
        summary["first_reward"], summary["last_reward"] = rewards[0], rewards[-1]
    if "eval_loss" in eval_metrics:
        summary["eval_loss"] = eval_metrics["eval_loss"]
    if "eval_reward" in eval_metrics:  # grpo: the mean reward of answers sampled to the validation prompts
        summary["eval_reward"] = eval_metrics["eval_reward"]
    if "eval_perplexity" in eval_metrics:
        summary["eval_perplexity"] = eval_metrics["eval_perplexity"]
    summary.update(early_stopping_summary(trainer))
    return summary


def early_stopping_summary(trainer: CountingTrainer) -> RunSummary:
    """best_checkpoint and stopped_early, read from the trainer's own records; {} when early stopping is off."""
    from transformers import EarlyStoppingCallback

    stopper = next((c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)), None)
    if stopper is None:
        return {}
    state = trainer.state
    out_of_patience = stopper.early_stopping_patience_counter >= stopper.early_stopping_patience
    summary: RunSummary = {"stopped_early": out_of_patience and state.global_step < state.max_steps}
    if summary["stopped_early"]:
        summary["stopped_at_step"] = state.global_step
    # The checkpoint load_best_model_at_end loaded (every evaluation is saved, so it is the best evaluation's).
    best = Path(state.best_model_checkpoint).name if state.best_model_checkpoint else ""
    step = int(best.removeprefix("checkpoint-")) if best.removeprefix("checkpoint-").isdigit() else state.best_global_step
    losses = [float(r["eval_loss"]) for r in state.log_history if r.get("step") == step and "eval_loss" in r]
    if step and losses:
        summary["best_checkpoint"] = {"step": step, "eval_loss": losses[0]}  # [1:]: the evaluation after training
    return summary


def print_summary(summary: RunSummary, log: RunLog) -> None:
    from rich.table import Table

    table = Table(title="Run summary", title_justify="left", show_header=False)
    table.add_column(style="dim")
    table.add_column()
    for key, value in summary.items():
        if key == "best_checkpoint" and isinstance(value, dict):
            value = f"step {value['step']}, eval_loss {value['eval_loss']:.4g}"
        elif key == "plan" and isinstance(value, dict):
            value = ", ".join(f"{name.replace('_', ' ')} {setting}" for name, setting in value.items())
        elif isinstance(value, dict):  # stage_seconds
            value = ", ".join(f"{name.split(' ')[0].lower()} {sec:.1f}s" for name, sec in value.items())
        table.add_row(key, _short(value))
    console.print(table)
    log.line("summary: " + json.dumps(summary), echo=False)


def checkpoint_meta(recipe: Recipe, plan: RunPlan, summary: RunSummary, validation_file: Path | None) -> CheckpointMeta:
    """What `chat` (and later eval/export) needs to rebuild the model exactly as trained."""
    import peft
    import torch
    import transformers
    import trl

    return CheckpointMeta(
        base_model=recipe.model.name,
        backend=plan.backend,
        load_in_4bit=plan.loading.load_in_4bit,  # what was loaded: chat, eval and export rebuild the same base
        dtype=recipe.model.dtype,
        max_seq_len=recipe.model.max_seq_len,
        train_on=recipe.data.train_on,
        thinking=recipe.model.thinking,
        method=recipe.training.method,
        started_from=str(Path(recipe.model.adapter).expanduser().resolve()) if recipe.model.adapter else None,
        trust_remote_code=recipe.model.trust_remote_code,
        recipe_path=str(recipe.source_path) if recipe.source_path else None,
        validation_file=str(validation_file) if validation_file else None,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        versions={"qlora4080": __version__, "python": platform.python_version(), "torch": torch.__version__,
                  "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__},
        summary=dict(summary),
    )


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
