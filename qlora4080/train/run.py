"""train(recipe) -> a trained adapter in checkpoints/<run>/ and logs in runs/<run>/."""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..console import stage
from ..recipe import Recipe
from .rundirs import RunDirs, create_run_dirs, plan_run_dirs

META_FILE = "qlora4080.json"
RECIPE_SNAPSHOT = "recipe.toml"


@dataclass
class TrainResult:
    run_name: str
    checkpoint_dir: Path
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False)
    """The trained model (base + adapter), still in memory, for chatting or evaluating right away."""
    tokenizer: Any = field(default=None, repr=False)


def train(recipe: Recipe, *, run_name: str | None = None, overwrite: bool = False) -> TrainResult:
    """Train a LoRA adapter as the recipe says. Raises QloraError for anything the user can fix."""
    dirs = plan_run_dirs(recipe, run_name, overwrite)  # before anything heavy: a name clash fails fast
    stage("Environment")
    from ..backends import choose_backend
    from ..hardware import detect
    from ..quiet import quiet_libraries

    quiet_libraries()

    started = time.monotonic()
    hardware = detect()
    backend, why = choose_backend(recipe.model.backend, hardware)
    stage(f"  {hardware.describe()}; backend: {backend} ({why})")

    create_run_dirs(dirs, overwrite)
    from .callbacks import RunLog

    log = RunLog(dirs.logs / "train.log")
    try:
        return _train(recipe, dirs, hardware, backend, log, started)
    finally:
        log.close()


def _train(recipe: Recipe, dirs: RunDirs, hardware: Any, backend: str, log: Any, started: float) -> TrainResult:
    from .callbacks import MetricsCallback
    from .config import build_sft_config, device_defaults

    log.line(f"run {dirs.name}: recipe {recipe.source_path}, {hardware.describe()}, backend {backend}")
    (dirs.checkpoint / RECIPE_SNAPSHOT).write_text(recipe.to_toml(), encoding="utf-8")
    template_path = recipe.resolve_path(recipe.model.chat_template) if recipe.model.chat_template else None
    defaults = device_defaults(recipe, hardware)

    t0 = time.monotonic()
    stage(f"Loading model {recipe.model.name}")
    if backend == "unsloth":
        from ..backends import unsloth as engine

        model, tokenizer = engine.load_model(recipe.model, hardware, template_path=template_path)
    else:
        from ..backends import hf as engine

        model, tokenizer = engine.load_model(recipe.model, hardware, template_path=template_path)
    log.line(f"model loaded in {time.monotonic() - t0:.1f}s")

    t0 = time.monotonic()
    stage("Preparing data (chat template, assistant-only labels)")
    train_split, eval_split = _prepare_data(recipe, tokenizer, log)
    log.line(f"data ready in {time.monotonic() - t0:.1f}s")

    stage(f"Attaching LoRA r={recipe.lora.r} alpha={recipe.lora.alpha} on {recipe.lora.target_modules}")
    if backend == "unsloth":
        model = engine.attach_lora(model, recipe.lora, defaults.gradient_checkpointing)
    else:
        model = engine.attach_lora(model, recipe.lora, recipe.training.seed)
    trainable, total = _count_parameters(model)
    log.line(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")

    from trl import SFTTrainer

    config = build_sft_config(recipe, hardware, dirs.checkpoint, has_eval=eval_split is not None, backend=backend)
    metrics = MetricsCallback(log, dirs.logs / "metrics.jsonl")
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_split.dataset,
        eval_dataset=eval_split.dataset if eval_split else None,
        processing_class=tokenizer,
        callbacks=[metrics],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # MetricsCallback prints a readable line instead
    stage(
        f"Training: {train_split.conversations} conversations, batch {recipe.training.batch_size} x "
        f"grad-accum {recipe.training.grad_accum}, {trainer.args.max_steps if trainer.args.max_steps > 0 else recipe.training.epochs} "
        f"{'steps' if trainer.args.max_steps > 0 else 'epoch(s)'}, lr {recipe.training.learning_rate}"
    )
    t0 = time.monotonic()
    output = trainer.train()
    train_seconds = time.monotonic() - t0

    eval_metrics: dict[str, float] = {}
    if eval_split is not None:
        stage("Evaluating on the validation file")
        eval_metrics = trainer.evaluate()
        if "eval_loss" in eval_metrics:
            eval_metrics["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50))

    stage(f"Saving adapter to {dirs.checkpoint}")
    model.save_pretrained(dirs.checkpoint)
    tokenizer.save_pretrained(dirs.checkpoint)  # includes the exact chat template used in training
    losses = [r["loss"] for r in metrics.history if "loss" in r]
    summary = {
        "run_name": dirs.name,
        "steps": output.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "best_loss": min(losses) if losses else None,
        "train_loss_mean": output.training_loss,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.monotonic() - started, 2),
        "train_tokens": train_split.tokens,
        "trained_tokens": train_split.trained_tokens,
        **{k: v for k, v in eval_metrics.items() if k in ("eval_loss", "eval_perplexity")},
    }
    _write_meta(dirs, recipe, backend, summary)
    (dirs.logs / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    log.line("summary: " + ", ".join(f"{k}={_short(v)}" for k, v in summary.items()))
    return TrainResult(dirs.name, dirs.checkpoint, dirs.logs, summary, model=model, tokenizer=tokenizer)


def _prepare_data(recipe: Recipe, tokenizer: Any, log: Any) -> tuple[Any, Any]:
    from ..data.conversations import read_conversations
    from ..data.dataset import tokenize_conversations

    splits = []
    for key in ("train", "validation"):
        value = getattr(recipe.data, key)
        if value is None:
            splits.append(None)
            continue
        source = read_conversations(recipe.resolve_path(value))
        split = tokenize_conversations(source, tokenizer, recipe.model.max_seq_len, recipe.data.train_on)
        problems = source.rejected + split.dropped
        for problem in problems[:10]:
            log.line(f"skipped {problem}", style="yellow")
        if len(problems) > 10:
            log.line(f"... and {len(problems) - 10} more skipped records", style="yellow")
        log.line(
            f"{key}: {split.conversations} conversations kept ({len(source.rejected)} rejected, "
            f"{len(split.dropped)} dropped, {split.truncated} truncated to {recipe.model.max_seq_len}); "
            f"{split.tokens:,} tokens, {split.trained_tokens:,} trained ({100 * split.trained_tokens / max(split.tokens, 1):.1f}%)"
        )
        splits.append(split)
    return splits[0], splits[1]


def _count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _write_meta(dirs: RunDirs, recipe: Recipe, backend: str, summary: dict[str, Any]) -> None:
    """What `chat` (and later eval/export) needs to rebuild the model exactly as trained."""
    import torch
    import transformers
    import trl
    import peft

    meta = {
        "format": 1,
        "base_model": recipe.model.name,
        "backend": backend,
        "load_in_4bit": recipe.model.load_in_4bit,
        "dtype": recipe.model.dtype,
        "max_seq_len": recipe.model.max_seq_len,
        "train_on": recipe.data.train_on,
        "trust_remote_code": recipe.model.trust_remote_code,
        "recipe_path": str(recipe.source_path) if recipe.source_path else None,
        "validation_file": str(recipe.resolve_path(recipe.data.validation)) if recipe.data.validation else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": {
            "qlora4080": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "peft": peft.__version__,
        },
        "summary": summary,
    }
    (dirs.checkpoint / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
