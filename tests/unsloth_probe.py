"""Train qlora4080's SFT, DPO and ORPO runs for 2 steps through unsloth's rewritten TRL trainers, on the CPU.

    UNSLOTH_ALLOW_CPU=1 python tests/unsloth_probe.py WORK_DIR sft=RECIPE dpo=RECIPE orpo=RECIPE

Run as its own process by tests/test_unsloth_cpu.py: unsloth must be imported
before transformers, trl and peft, and it rewrites TRL's trainer classes for
the whole process. On a CUDA machine `import unsloth` applies that rewrite
itself; with UNSLOTH_ALLOW_CPU=1 it skips it, so it is applied here exactly as
unsloth's GPU import does (unsloth/_gpu_init.py: PatchFastRL through
models/llama.py, _patch_trl_trainer, context_parallel.patch_sft_trainer).

The run's stages are qlora4080's own (training/session.py: model, data,
LoRA, trainer, fit) with the backend name "unsloth", so the trainer
configuration is what an unsloth run gets; only the model is loaded by the hf
backend, since FastLanguageModel needs CUDA kernels. Prints one JSON line:
for each method the trainer's classes and settings, the losses, and whether
every row the model saw is one of the rows qlora4080 tokenized (ids and
labels); and what unsloth's own offline test answers inside and outside
qlora4080's hub context. One process for all of it: importing and patching
unsloth takes about a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from qlora4080.unsloth_setup import unsloth_import_problem

problem = unsloth_import_problem()
if problem:
    raise SystemExit(f"unsloth: {problem}")
os.environ["UNSLOTH_ALLOW_CPU"] = "0"  # read when each patch is applied: apply the rewrite as the GPU import does
from unsloth.context_parallel import patch_sft_trainer
from unsloth.models.rl import PatchFastRL
from unsloth.trainer import _patch_trl_trainer

PatchFastRL()
_patch_trl_trainer()
patch_sft_trainer()
os.environ["UNSLOTH_ALLOW_CPU"] = "1"

import torch
from transformers import TrainerCallback

from qlora4080.backends import hf
from qlora4080.data.vocabulary import IGNORE_INDEX
from qlora4080.hardware import Hardware
from qlora4080.plan import resolve_plan
from qlora4080.preference.tokens import orpo_columns
from qlora4080.recipe import load_recipe
from qlora4080.training.data_setup import prepare_splits
from qlora4080.training.environment import Environment
from qlora4080.training.fitting import build_trainer, fit
from qlora4080.training.model_setup import attach_lora, load_model
from qlora4080.training.rundirs import RunDirs, create_run_dirs
from qlora4080.training.runlog import RunLog
from qlora4080.training.session import RunContext


def unpadded(ids: torch.Tensor, mask: torch.Tensor | None) -> list[tuple[int, ...]]:
    rows = ids.tolist() if mask is None else [[t for t, m in zip(r, k) if m] for r, k in zip(ids.tolist(), mask.tolist())]
    return [tuple(row) for row in rows]


class SeenRows(TrainerCallback):
    """Records every training batch the model's forward receives (input ids and labels, padding removed)."""

    def __init__(self) -> None:
        self.inputs: list[tuple[int, ...]] = []
        self.labels: list[tuple[int, ...]] = []
        self.keys: set[str] = set()

    def attach(self, model: torch.nn.Module) -> None:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)  # ORPO passes the ids positionally
            if not module.training or not isinstance(ids, torch.Tensor):
                return
            mask = kwargs.get("attention_mask")
            mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            self.keys.update(kwargs)
            self.inputs += unpadded(ids, mask)
            if isinstance(kwargs.get("labels"), torch.Tensor):
                self.labels += unpadded(kwargs["labels"], mask)

        model.register_forward_pre_hook(hook, with_kwargs=True)


COLUMNS = {"sft": ("input_ids", "labels"), "dpo": ("prompt_ids", "chosen_ids", "rejected_ids"),
           "orpo": ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")}


def same_rows(method: str, ours, trainers) -> bool:
    """The trainer's training set holds qlora4080's rows, unchanged (no re-tokenization, no truncation)."""
    if method == "orpo":
        ours = orpo_columns(ours)
    return all([r[c] for r in ours] == [r[c] for r in trainers] for c in COLUMNS[method])


def expected_rows(method: str, dataset) -> tuple[set[tuple[int, ...]], set[tuple[int, ...]]]:
    """The (input ids, labels) rows qlora4080 tokenized, as the model should see them."""
    if method == "sft":
        return {tuple(r["input_ids"]) for r in dataset}, {tuple(r["labels"]) for r in dataset}
    if method == "orpo":
        rows = orpo_columns(dataset)
        return ({tuple(r[f"{s}_input_ids"]) for r in rows for s in ("chosen", "rejected")},
                {tuple(r[f"{s}_labels"]) for r in rows for s in ("chosen", "rejected")})
    # DPO: the prompt's positions carry no loss, the answer's carry its own ids
    return ({tuple(r["prompt_ids"] + r[f"{s}_ids"]) for r in dataset for s in ("chosen", "rejected")},
            {tuple([IGNORE_INDEX] * len(r["prompt_ids"]) + r[f"{s}_ids"]) for r in dataset for s in ("chosen", "rejected")})


def probe(method: str, recipe_path: Path, work: Path) -> dict[str, object]:
    recipe = load_recipe(recipe_path)
    dirs = RunDirs(method, work / "checkpoints" / method, work / "runs" / method)
    create_run_dirs(dirs, overwrite=False)
    run = RunContext.begin(recipe, dirs, RunLog(dirs.logs / "train.log"), None)
    hardware = Hardware(device="cpu")
    # the configuration an unsloth run gets; the model itself loads through hf
    env = Environment(hardware, "unsloth", hf, resolve_plan(recipe, hardware, "unsloth"))  # type: ignore[arg-type]
    base = load_model(run, env)
    splits = prepare_splits(run, base.tokenizer)
    loaded = attach_lora(run, env, base)
    seen = SeenRows()
    seen.attach(loaded.model)
    parts = build_trainer(run, env, loaded, splits, False, [])
    trainer = parts.trainer
    dataset = trainer.train_dataset
    output = fit(run, env, loaded, splits, parts)
    args = trainer.args
    inputs, labels = expected_rows(method, splits.train.dataset)
    return {
        "trainer_classes": [cls.__name__ for cls in type(trainer).__mro__],
        "padding_free": getattr(args, "padding_free", None),
        "packing": getattr(args, "packing", None),
        "max_length": getattr(args, "max_length", None),
        "steps": output.global_step,
        "losses": [r["loss"] for r in trainer.state.log_history if "loss" in r],
        "rows_seen": len(seen.inputs),
        "dataset_is_qlora4080_rows": same_rows(method, splits.train.dataset, dataset),
        "inputs_are_qlora4080_rows": bool(seen.inputs) and all(row in inputs for row in seen.inputs),
        # ORPO computes its losses from the logits outside the model: no labels reach the forward
        "labels_are_qlora4080_rows": bool(seen.labels) and all(row in labels for row in seen.labels) if method != "orpo" else None,
        "forward_keys": sorted(seen.keys),
    }


def offline_answers() -> dict[str, bool]:
    """unsloth's own "am I offline?" (models/loader_utils.py) outside and inside qlora4080's hub context."""
    from unsloth.models.loader_utils import _get_effective_local_files_only

    from qlora4080.hub import cache_only_unless_reachable

    outside = _get_effective_local_files_only({})
    with cache_only_unless_reachable() as online:
        inside = _get_effective_local_files_only({})
    return {"outside": outside, "inside": inside, "hub_reachable": online,
            "after": _get_effective_local_files_only({})}


def main() -> None:
    work = Path(sys.argv[1])
    report: dict[str, object] = {"offline": offline_answers()}
    for item in sys.argv[2:]:
        method, recipe = item.split("=", 1)
        report[method] = probe(method, Path(recipe), work)
    print(json.dumps(report))


main()
