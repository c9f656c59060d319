"""train(recipe) -> a trained adapter in checkpoints/<run>/ and logs in runs/<run>/."""

from __future__ import annotations

import json
import math
import platform
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..console import console, stage
from ..recipe import Recipe
from .resume_check import check_resume
from .rundirs import (
    RunDirs,
    create_run_dirs,
    find_resume_point,
    latest_checkpoint,
    plan_run_dirs,
    recipe_inputs,
)
from .saving import save_adapter

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


def train(
    recipe: Recipe,
    *,
    run_name: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    resume_from: Path | None = None,
    target_gb: float | None = None,
    callbacks: list[Any] | None = None,
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
            resume_notes = check_resume(recipe, dirs.checkpoint / RECIPE_SNAPSHOT, dirs.name)
        else:
            plan_run_dirs(recipe, dirs.name, overwrite)  # again, under the lock: another run may have just finished
            create_run_dirs(dirs, overwrite, recipe_inputs(recipe))
            resume_notes = []
        dirs.logs.mkdir(parents=True, exist_ok=True)
        log = RunLog(dirs.logs / "train.log")
        try:
            for note in resume_notes:
                log.line(note, style="yellow")
            return _train(recipe, dirs, checkpoint, log, target_gb, callbacks or [], live)
        finally:
            log.close()


def _train(recipe: Recipe, dirs: RunDirs, checkpoint: Path | None, log: Any, target_gb: float | None,
           extra_callbacks: list[Any], live: bool | None) -> TrainResult:
    from .stages import Stages

    started = time.monotonic()
    stages = Stages(log)
    with stages.stage("Environment"):
        from ..doctor import plan_training
        from ..errors import QloraError
        from ..hardware import detect
        from ..preflight import print_preflight, run_preflight
        from ..quiet import quiet_libraries

        hardware = detect()
        # First, doctor's checks for this recipe: a broken stack is named before minutes of loading. On the
        # unsloth path this imports unsloth, which must patch transformers/trl/peft before anything else
        # imports them (quiet_libraries does).
        plan = plan_training(recipe.model.backend, recipe.model.load_in_4bit, hardware)
        if plan.blockers or plan.backend is None:
            first, *more = plan.blockers or [None]
            raise QloraError(f"this machine cannot train the recipe: {plan.reason}"
                             + "".join(f"; also {problem.message}" for problem in more), where="[model] backend",
                             hint=(first.hint if first else "run qlora4080 doctor RECIPE for the details"))
        backend, why = plan.backend, plan.reason  # plan.warnings: the backend says those itself when it loads
        quiet_libraries()
        if recipe.data.packing and backend == "unsloth":
            raise QloraError("data.packing = true is not supported with the unsloth backend yet",
                             hint="--set model.backend=hf (packs with a block-diagonal mask), or --set data.packing=false")
        log.line(f"run {dirs.name}{' (resumed from ' + str(checkpoint) + ')' if checkpoint else ''}: recipe {recipe.source_path}")
        log.line(f"backend: {backend} ({why})")
        print_preflight(run_preflight(recipe, hardware, backend, target_gb), hardware)
        _snapshot_recipe(recipe, dirs, log)

    from .config import build_sft_config, device_defaults

    defaults = device_defaults(recipe, hardware)
    template_path = recipe.resolve_path(recipe.model.chat_template) if recipe.model.chat_template else None
    with stages.stage(f"Loading model {recipe.model.name}"):
        if backend == "unsloth":
            from ..backends import unsloth as engine

            model, tokenizer = engine.load_model(recipe.model, hardware, template_path=template_path)
        else:
            from ..backends import hf as engine

            model, tokenizer = engine.load_model(recipe.model, hardware, template_path=template_path)

    with stages.stage("Preparing data (chat template, assistant-only labels)"):
        train_split, eval_split, validation_file = _prepare_data(recipe, tokenizer, log)

    with stages.stage(f"Attaching LoRA r={recipe.lora.r} alpha={recipe.lora.alpha} on {recipe.lora.target_modules}"):
        if backend == "unsloth":
            model = engine.attach_lora(model, recipe.lora, defaults.gradient_checkpointing)
        else:
            model = engine.attach_lora(model, recipe.lora, recipe.training.seed)
        trainable, total = _count_parameters(model)
        log.line(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")

    from .callbacks import MetricsCallback
    from .interrupts import InterruptGuard, TrainingInterrupted
    from .oom import is_out_of_memory, out_of_memory_error
    from .panel import TrainingView
    from .trainer import counting_trainer_class

    collator = _pack(recipe, hardware, tokenizer, train_split, eval_split, log) if recipe.data.packing else None
    config = build_sft_config(recipe, hardware, dirs.checkpoint, has_eval=eval_split is not None, backend=backend)
    view = TrainingView(f"qlora4080 · {dirs.name}", hardware, live=live)
    metrics = MetricsCallback(log, dirs.logs / "metrics.jsonl", view, hardware)
    guard = InterruptGuard()
    trainer = counting_trainer_class()(
        model=model,
        args=config,
        train_dataset=train_split.dataset,
        eval_dataset=eval_split.dataset if eval_split else None,
        processing_class=tokenizer,
        callbacks=[metrics, guard, *_tensorboard(dirs), *extra_callbacks],
        **({"data_collator": collator} if collator is not None else {}),
    )
    metrics.trainer = trainer
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # MetricsCallback prints a readable line instead
    steps = trainer.args.max_steps if trainer.args.max_steps > 0 else f"{recipe.training.epochs:g} epoch(s) of"
    stage(
        f"Training: {train_split.conversations} conversations, batch {recipe.training.batch_size} x "
        f"grad-accum {recipe.training.grad_accum}, {steps} steps, lr {recipe.training.learning_rate}"
    )
    t0 = time.monotonic()
    try:
        with guard:
            output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except BaseException as error:
        view.stop()
        if is_out_of_memory(error):
            from ..hardware import memory_snapshot

            snapshot = memory_snapshot(hardware)
            log.line(f"out of memory at step {trainer.state.global_step}: {error}", echo=False)
            raise out_of_memory_error(recipe, trainer.state.global_step, snapshot.get("peak"), snapshot.get("card_total")) from None
        raise
    view.stop()
    stages.timings["Training"] = round(time.monotonic() - t0, 2)

    if guard.requested:
        save_adapter(model, tokenizer, dirs.checkpoint, last_good=latest_checkpoint(dirs.checkpoint))
        command = _resume_command(recipe, dirs)
        log.line(f"interrupted at step {trainer.state.global_step}; resume with: {command}", echo=False)
        raise TrainingInterrupted(
            f"training interrupted at step {trainer.state.global_step}; the adapter and a resumable checkpoint are saved in {dirs.checkpoint}",
            hint=f"resume with:  {command}",
        )

    eval_metrics: dict[str, float] = {}
    if eval_split is not None:
        with stages.stage("Evaluating on the validation file"):
            eval_metrics = trainer.evaluate()
            if "eval_loss" in eval_metrics:
                eval_metrics["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50))

    summary = _summary(dirs, output, metrics.history, train_split, eval_metrics, stages.timings, started, hardware, trainer)
    with stages.stage(f"Saving adapter to {dirs.checkpoint}"):
        # the tokenizer carries the exact chat template used in training; the metadata tells chat/eval/export how
        save_adapter(model, tokenizer, dirs.checkpoint, {META_FILE: _meta_json(recipe, backend, summary, validation_file)},
                     last_good=latest_checkpoint(dirs.checkpoint))
    (dirs.logs / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    _print_summary(summary, log)
    return TrainResult(dirs.name, dirs.checkpoint, dirs.logs, summary, model=model, tokenizer=tokenizer)


def _pack(recipe: Recipe, hardware: Any, tokenizer: Any, train_split: Any, eval_split: Any, log: Any) -> Any:
    """Replace each split's rows by packed rows; the collator that batches them (block-diagonal mask)."""
    import torch
    from datasets import Dataset

    from ..backends.loading import compute_dtype_name
    from ..data.packing import PackedCollator, pack_rows

    for name, split in (("train", train_split), ("validation", eval_split)):
        if split is None:
            continue
        rows = split.dataset.to_list()
        packed = pack_rows(rows, recipe.model.max_seq_len)
        split.dataset = Dataset.from_list(packed)
        fill = sum(len(r["input_ids"]) for r in packed) / (len(packed) * recipe.model.max_seq_len)
        log.line(f"{name}: packed {len(rows)} conversations into {len(packed)} sequences of up to "
                 f"{recipe.model.max_seq_len} tokens ({fill:.0%} full)")
    dtype = getattr(torch, compute_dtype_name(recipe.model.dtype, hardware))
    return PackedCollator(tokenizer.pad_token_id, dtype=dtype)


def _snapshot_recipe(recipe: Recipe, dirs: RunDirs, log: Any) -> None:
    """Save the resolved recipe next to the adapter (on resume, check_resume has made sure only safe keys moved)."""
    dirs.checkpoint.mkdir(parents=True, exist_ok=True)
    staged = dirs.checkpoint / f".{RECIPE_SNAPSHOT}.tmp"
    staged.write_text(recipe.to_toml(), encoding="utf-8")
    staged.replace(dirs.checkpoint / RECIPE_SNAPSHOT)


def _tensorboard(dirs: RunDirs) -> list[Any]:
    from ..hardware import has_module

    if not has_module("tensorboard"):
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(dirs.logs / "tensorboard")))]


def _resume_command(recipe: Recipe, dirs: RunDirs) -> str:
    source = recipe.source_path
    try:
        shown = source.relative_to(Path.cwd()) if source else "RECIPE"
    except ValueError:
        shown = source
    overrides = "".join(f" --set {shlex.quote(item)}" for item in recipe.overrides)
    return f"qlora4080 train {shlex.quote(str(shown))}{overrides} --resume --run-name {dirs.name}"


def _prepare_data(recipe: Recipe, tokenizer: Any, log: Any) -> tuple[Any, Any, Path | None]:
    """Tokenized train and validation splits, and the validation file they came from (for eval later)."""
    from ..data.conversations import read_conversations
    from ..data.dataset import tokenize_conversations

    files = {key: recipe.resolve_path(getattr(recipe.data, key)) if getattr(recipe.data, key) else None
             for key in ("train", "validation")}
    if recipe.data.sources:
        from ..data.pipeline import build_data

        build = build_data(recipe)
        log.line(f"data build {build.folder} ({'reused: inputs unchanged' if build.reused else 'built'})")
        for pool in build.pools:
            log.line(f"  source {pool.name} ({pool.format}): read {pool.read}, rejected {pool.rejected}, "
                     f"duplicates {pool.duplicates}, kept {pool.kept}, in the mix {pool.in_mix}")
        files = {"train": build.train_file, "validation": build.validation_file}
        if not build.validation_file.read_text(encoding="utf-8").strip():
            files["validation"] = None
    splits = []
    for key in ("train", "validation"):
        if files[key] is None:
            splits.append(None)
            continue
        source = read_conversations(files[key])
        split = tokenize_conversations(source, tokenizer, recipe.model.max_seq_len, recipe.data.train_on,
                                       recipe.data.truncation, allow_empty=key == "validation")
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
        if key == "validation" and split.conversations == 0:
            # every validation record was dropped: train anyway, without periodic evaluation
            log.line("warning: no validation record survived tokenization, so this run has no evaluation", style="yellow")
            splits.append(None)
            files["validation"] = None
            continue
        if recipe.data.sources and split.dropped:
            log.line("  dropped at tokenization, by source: "
                     + ", ".join(f"{name} {tally.dropped}" for name, tally in split.by_source.items()))
        splits.append(split)
    return splits[0], splits[1], files["validation"].resolve() if files["validation"] else None


def _count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _summary(dirs: RunDirs, output: Any, history: list[dict[str, Any]], train_split: Any, eval_metrics: dict[str, float],
             timings: dict[str, float], started: float, hardware: Any, trainer: Any) -> dict[str, Any]:
    from ..hardware import memory_snapshot

    losses = [r["loss"] for r in history if "loss" in r]
    peak = memory_snapshot(hardware).get("peak")
    return {
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
        "wall_seconds": round(time.monotonic() - started, 2),
        "stage_seconds": timings,
        **{k: v for k, v in eval_metrics.items() if k in ("eval_loss", "eval_perplexity")},
    }


def _print_summary(summary: dict[str, Any], log: Any) -> None:
    from rich.table import Table

    table = Table(title="Run summary", title_justify="left", show_header=False)
    table.add_column(style="dim")
    table.add_column()
    for key, value in summary.items():
        if key == "stage_seconds":
            value = ", ".join(f"{name.split(' ')[0].lower()} {sec:.1f}s" for name, sec in value.items())
        table.add_row(key, _short(value))
    console.print(table)
    log.line("summary: " + json.dumps(summary), echo=False)


def _meta_json(recipe: Recipe, backend: str, summary: dict[str, Any], validation_file: Path | None) -> str:
    """What `chat` (and later eval/export) needs to rebuild the model exactly as trained."""
    import peft
    import torch
    import transformers
    import trl

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
        "validation_file": str(validation_file) if validation_file else None,
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
    return json.dumps(meta, indent=2)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
