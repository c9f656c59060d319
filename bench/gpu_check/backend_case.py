"""One (backend, architecture) case through the project's own code: 4-bit load, LoRA, training, then checks.

Runs in a process of its own (bench/gpu_check.py --case): unsloth must be
imported before transformers, trl and peft, which it patches, and a fresh
process starts with clean CUDA memory counters. Every call below is the one
`qlora4080 train` makes: backends/{hf,unsloth}.py load_model + attach_lora,
training/config.py build_sft_config (device defaults decide precision,
optimizer and checkpointing), training/trainer.py counting_trainer_class.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks, measure, models
from .record import MARK, CaseRecord, release_memory

BATCH_SIZE = 1
GRAD_ACCUM = 16
TINY_GRAD_ACCUM = 4  # on 2 CPU cores each micro-batch of a 49152-token head costs ~0.2 s; 4 still accumulates
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}  # the headline recipe's adapter
LEARNING_RATE = 2e-4


@dataclass(frozen=True)
class CaseOptions:
    backend: str
    """unsloth, hf or peer."""
    arch: str
    """A key of models.ARCH_KEYS."""
    model_dir: str
    work: Path
    """A scratch folder of this case (trainer output, adapter, merged model)."""
    steps: int
    seq_len: int
    tiny: bool
    timing_only: bool = False
    """Repeats after the first only train and time; the checks ran once already."""
    merge: bool = False
    script: str = ""
    """bench/gpu_check.py, to start the post-training checks of an unsloth adapter in a process without unsloth."""

    @property
    def grad_accum(self) -> int:
        return TINY_GRAD_ACCUM if self.tiny else GRAD_ACCUM


def make_recipe(opts: CaseOptions) -> Any:
    from qlora4080.recipe import (
        DataSection,
        LoraSection,
        ModelSection,
        Recipe,
        TrainingSection,
    )

    return Recipe(
        model=ModelSection(name=opts.model_dir, max_seq_len=opts.seq_len, load_in_4bit=True, backend=opts.backend),
        lora=LoraSection(**LORA),
        data=DataSection(train="synthetic random tokens (bench/gpu_check)"),
        # constant lr, no warm-up: with 3 steps, a warm-up would leave the adapter at zero
        training=TrainingSection(max_steps=opts.steps, batch_size=BATCH_SIZE, grad_accum=opts.grad_accum, learning_rate=LEARNING_RATE,
                                 scheduler="constant", warmup_ratio=0.0, optimizer="auto", logging_steps=1, save_steps=10**6),
    )


def run_backend_case(opts: CaseOptions, record: CaseRecord) -> None:
    unsloth = opts.backend == "unsloth"
    if unsloth:
        with record.step("import unsloth"):
            from qlora4080.unsloth_setup import unsloth_import_problem

            # first, as the CLI does it: it patches transformers, trl and peft, and writes its generated
            # trainers into the project's cache rather than the working folder
            problem = unsloth_import_problem()
            if problem:
                raise RuntimeError(f"unsloth: {problem}")
    from qlora4080.backends import load_backend
    from qlora4080.hardware import detect
    from qlora4080.plan import resolve_plan
    from qlora4080.preflight import memory_shape
    from qlora4080.quiet import quiet_libraries

    quiet_libraries()
    hardware = detect()
    cuda = hardware.is_cuda
    recipe = make_recipe(opts)
    plan = resolve_plan(recipe, hardware, opts.backend)  # what `qlora4080 train` decides for this recipe here
    backend = load_backend(opts.backend)  # the module training/model_setup.py drives: backends/hf.py or unsloth.py
    with record.step("load model (4-bit)"):
        model, tokenizer = backend.load_model(recipe.model, hardware)
    record.data["quantized_4bit"] = bool(getattr(model, "is_loaded_in_4bit", False))
    record.data["allocated_after_load_gib"] = measure.allocated_gib(cuda)
    with record.step("attach LoRA"):
        model = backend.attach_lora(model, recipe.lora, seed=recipe.training.seed,
                                    gradient_checkpointing=plan.gradient_checkpointing)
    record.data["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with record.step("train"):
        train(model, tokenizer, recipe, plan, opts, record)
    record.verdict("train", record.data["losses_finite"], f"losses per step: {record.data['losses']}")
    with record.check("estimate"):
        numbers = models.architecture(opts.arch, opts.tiny, model.config.vocab_size)
        record.data.update(measure.estimate_fields(numbers, memory_shape(recipe, plan), record.data.get("peak_reserved_gib")))
    if opts.timing_only:
        return

    dtype_name = plan.loading.compute_dtype
    if not unsloth:  # run.py refuses packing on unsloth, so only the hf path packs
        with record.check("packing (block-diagonal mask)"):
            packing = record.data["packing"] = checks.packing_check(model, tokenizer, opts.seq_len, dtype_name, len(tokenizer))
            record.verdict("packing (block-diagonal mask)", packing["pass"],
                           f"max diff {packing['max_diff']:.3g} (tolerance {packing['tolerance']:.3g}, plain sequence "
                           f"{packing['max_diff_plain_sequence']:.3g}), loss {packing['loss']:.4g}, grads finite {packing['grads_finite']}")
    with record.step("generate before saving"):
        before, trained = answer_before_saving(model, tokenizer, unsloth)
    with record.check("adapter effect"), model.disable_adapter():
        record.data["adapter_effect_max_logit"] = measure.max_diff(before["logits"], measure.logits(model, before["prompt_ids"]))
    adapter_dir = opts.work / "adapter"
    with record.step("save adapter"):
        import torch

        from qlora4080.checkpoint import META_FILE
        from qlora4080.training.saving import save_adapter
        from qlora4080.training.summary import checkpoint_meta

        # as the run's final save does: adapter + tokenizer + the metadata chat and export read, all or nothing
        meta = checkpoint_meta(recipe, plan, {}, None)
        save_adapter(model, tokenizer, adapter_dir, {META_FILE: meta.to_json()})
        torch.save(before, opts.work / "before.pt")
    del model
    release_memory()
    with record.check("reload (fresh base + PeftModel.from_pretrained)"):
        reload = record.data["reload"] = reload_check(opts, recipe, hardware, dtype_name, before, trained, tokenizer.pad_token_id)
        record.verdict("reload (fresh base + PeftModel.from_pretrained)", reload["pass"],
                       f"tokens before {reload['tokens_before']} after {reload['tokens_after']}; adapter weight diff "
                       f"{reload['max_adapter_weight_diff']:.3g}")
    if unsloth:
        # `qlora4080 chat` and `export` never import unsloth: check its adapter the way they will load it
        record.data.update(post_checks_in_child(opts, record))
    else:
        adapter_checks(opts, adapter_dir, before, len(tokenizer), record)


def answer_before_saving(model: Any, tokenizer: Any, unsloth: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trained model's greedy answer and prompt logits, and a copy of its LoRA weights."""
    if unsloth:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    prompt = measure.prompt_ids(tokenizer)
    before = {"prompt_ids": prompt, "tokens": measure.greedy_ids(model, prompt, tokenizer.pad_token_id),
              "logits": measure.logits(model, prompt)}
    return before, checks.adapter_snapshot(model)


def reload_check(opts: CaseOptions, recipe: Any, hardware: Any, dtype_name: str, before: dict[str, Any],
                 trained: dict[str, Any], pad_id: int | None) -> dict[str, Any]:
    """A fresh base + the saved adapter, prepared as the trained model was: the same 16 greedy tokens?"""
    adapter_dir = opts.work / "adapter"
    if opts.backend == "unsloth":
        import torch
        from unsloth import FastLanguageModel

        # unsloth's own reload: its loader reads adapter_config.json, loads that base, attaches the adapter with
        # PeftModel.from_pretrained and puts back the fused LoRA kernels training ran with (plain peft would not)
        reloaded, _ = FastLanguageModel.from_pretrained(model_name=str(adapter_dir), max_seq_length=opts.seq_len,
                                                        dtype=getattr(torch, dtype_name), load_in_4bit=True)
        weight_diff = checks.match_trained(reloaded, trained)
        FastLanguageModel.for_inference(reloaded)
    else:
        from qlora4080.backends import hf

        base, _ = hf.load_model(recipe.model, hardware)  # for training: prepared exactly as the trained base was
        reloaded, weight_diff = checks.load_adapter(base, adapter_dir, trained)
        del base
    tokens = measure.greedy_ids(reloaded, before["prompt_ids"], pad_id)
    diff = measure.max_diff(measure.logits(reloaded, before["prompt_ids"]), before["logits"])
    del reloaded
    release_memory()
    return {"tokens_before": before["tokens"], "tokens_after": tokens, "tokens_equal": tokens == before["tokens"],
            "max_logit_diff": diff, "max_adapter_weight_diff": weight_diff,
            "pass": tokens == before["tokens"] and weight_diff == 0.0}


def train(model: Any, tokenizer: Any, recipe: Any, plan: Any, opts: CaseOptions, record: CaseRecord) -> None:
    from transformers.trainer_callback import PrinterCallback

    from qlora4080.training.compat import fused_loss_usable
    from qlora4080.training.config import build_sft_config
    from qlora4080.training.trainer import counting_trainer_class

    t = recipe.training
    dataset = measure.synthetic_dataset(t.max_steps * t.batch_size * t.grad_accum, opts.seq_len, len(tokenizer))
    config = build_sft_config(recipe, plan, opts.work / "trainer", has_eval=False)
    config.logging_nan_inf_filter = False  # a NaN loss must show as NaN, not as the mean of the earlier steps
    cuda = plan.device == "cuda"
    clock = measure.step_clock(cuda)
    trainer = counting_trainer_class()(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    measure.reset_peak(cuda)
    trainer.train()
    from accelerate.utils import extract_model_from_parallel

    # With bf16/fp16, accelerate wrapped model.forward in autocast for training; take it off so the checks
    # compare the trained model and its reloads as chat runs them (the packing check adds autocast itself).
    extract_model_from_parallel(model, keep_fp32_wrapper=False)
    record.data.update(measure.peak_memory(cuda))
    record.data.update(measure.timing(clock, t.batch_size * t.grad_accum * opts.seq_len))
    record.data["tokens_seen"] = trainer.tokens_seen
    record.data["trainer"] = trainer_settings(config, fused_loss_usable(model), "qlora4080 counting_trainer_class")
    record.data["loss_path"] = measure.loss_path(trainer, model)


def trainer_settings(config: Any, fused_loss: bool, trainer: str) -> dict[str, Any]:
    return {"trainer": trainer, "optim": str(getattr(config.optim, "value", config.optim)), "bf16": bool(config.bf16),
            "fp16": bool(config.fp16), "gradient_checkpointing": bool(config.gradient_checkpointing),
            "learning_rate": config.learning_rate, "batch_size": config.per_device_train_batch_size,
            "grad_accum": config.gradient_accumulation_steps, "max_length": config.max_length,
            # what the project's trainer asks for; loss_path says what the trained objects actually ran
            "loss": "trl fused LM-head loss (Triton)" if fused_loss else "transformers Trainer.compute_loss (no Triton/GPU)"}


def adapter_checks(opts: CaseOptions, adapter_dir: Path, before: dict[str, Any], id_limit: int, record: CaseRecord) -> None:
    """The chat loader on the saved adapter, then (when asked) merge + export."""
    with record.check("chat loader (infer.load_for_chat)"):
        record.data["chat_path"] = checks.chat_path_check(adapter_dir, before)
    if opts.merge:
        with record.check("merge + export (export.export_merged)"):
            merge = record.data["merge"] = checks.merge_check(adapter_dir, opts.work / "merged", opts.model_dir, id_limit)
            record.verdict("merge + export (export.export_merged)", merge["pass"],
                           f"max logit diff {merge['max_logit_diff']:.3g} > tolerance {merge['tolerance']:.3g}")


def post_checks_in_child(opts: CaseOptions, record: CaseRecord) -> dict[str, Any]:
    """Run adapter_checks in a fresh process (no unsloth); its errors join this case's."""
    command = [sys.executable, opts.script, "--post", f"{opts.backend}:{opts.arch}", "--model-dir", opts.model_dir,
               "--work", str(opts.work), "--seq-len", str(opts.seq_len), "--steps", str(opts.steps)]
    if opts.merge:
        command.append("--merge")
    if opts.tiny:
        command.append("--tiny")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    # into this case's output (the one log), without the child's result line: the parent reads this case's own
    echoed = "".join(line for line in (done.stdout + done.stderr).splitlines(keepends=True) if not line.startswith(MARK))
    print(f"----- post-training checks (a process without unsloth) -----\n{echoed}", flush=True)
    found = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if not found:
        record.errors.append({"step": "chat loader / merge (child process)", "type": "ChildProcessError",
                              "message": f"exit code {done.returncode}; {done.stderr.strip()[-1000:]}", "traceback": ""})
        return {}
    child = json.loads(found[-1][len(MARK):])
    record.errors.extend(child.get("errors", []))
    record.steps_done.extend(child.get("steps_done", []))
    record.phase_seconds.update(child.get("phase_seconds", {}))
    return {k: child[k] for k in ("chat_path", "merge") if k in child}


def run_post_checks(opts: CaseOptions, record: CaseRecord) -> None:
    """The --post entry: chat loader and merge on the adapter a case left in opts.work."""
    import torch

    from qlora4080.quiet import quiet_libraries

    quiet_libraries()
    before = torch.load(opts.work / "before.pt")
    id_limit = models.tokenizer_size(opts.model_dir)
    adapter_checks(opts, opts.work / "adapter", before, id_limit, record)
