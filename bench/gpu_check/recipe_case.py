"""The headline recipes as a user runs them: `qlora4080 train`, `chat`, `eval`, `export` on the random-weight model.

Each command is its own process, started through capped_cli.py so that its
CUDA allocator holds no more than the card the recipe is sized for (16 GiB by
default). The recipe's data, template handling, preflight and trainer are the
real ones; only model.name points at the random-weight model of the same
architecture, and training.max_steps keeps it to a few steps.

    qwen3-4b-emoji               train recipes/qwen3_4b_emoji.toml, then chat --prompt, eval --limit 4, export --merged
    qwen3-4b-emoji-dpo           train recipes/qwen3_4b_emoji_dpo.toml from the adapter the first one saved
    qwen3-4b-math-grpo           train recipes/qwen3_4b_math_grpo.toml from that adapter (hf, as the recipe says)
    qwen3-4b-math-grpo-unsloth   the same recipe on unsloth's rewritten GRPOTrainer, from a fresh adapter (CUDA only)

The parent runs these (it never imports torch); what each command printed goes
to the one log.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import measure
from .record import CaseRecord

REPO = Path(__file__).resolve().parents[2]
CAPPED_CLI = Path(__file__).resolve().parent / "capped_cli.py"
SFT_CASE = "qwen3-4b-emoji"
"""The case whose adapter the DPO and GRPO cases continue from."""
SFT_RUN = "gpu-check-emoji"


@dataclass(frozen=True)
class RecipeCase:
    recipe: str
    """Under recipes/."""
    run_name: str
    after_training: bool
    """chat, eval and export the adapter (the SFT case); the DPO case only trains and is measured."""
    needs_sft: bool = False
    sets: tuple[str, ...] = ()
    """Recipe values this case changes beyond the model, the steps and the adapter."""
    in_tiny: bool = True
    """Part of --tiny's default (the suite's CPU run). unsloth trains on CUDA only; GRPO's 8 answers of 256 tokens
    per prompt take minutes on 2 cores, and tests/test_grpo.py trains GRPO on a CPU already."""


GRPO_FASTER = ("training.grad_accum=1", "data.valid_ratio=0", "data.valid_min=0")
"""GRPO at the recipe's memory shape (8 answers of up to 256 tokens per prompt: random weights rarely stop early, so
every answer is full length) in fewer rounds of sampling: one prompt per step instead of 4, and no sampled
evaluation after training. Neither changes the peak, which one micro-step sets."""

RECIPE_CASES = {
    SFT_CASE: RecipeCase("qwen3_4b_emoji.toml", SFT_RUN, after_training=True),
    "qwen3-4b-emoji-dpo": RecipeCase("qwen3_4b_emoji_dpo.toml", "gpu-check-emoji-dpo", after_training=False, needs_sft=True),
    "qwen3-4b-math-grpo": RecipeCase("qwen3_4b_math_grpo.toml", "gpu-check-math-grpo", after_training=False, needs_sft=True,
                                     sets=GRPO_FASTER, in_tiny=False),
    # model.adapter= (empty) is none: the recipe continues from an adapter on hf only for now
    "qwen3-4b-math-grpo-unsloth": RecipeCase("qwen3_4b_math_grpo.toml", "gpu-check-math-grpo-unsloth", after_training=False,
                                             sets=(*GRPO_FASTER, "model.backend=unsloth", "model.adapter="), in_tiny=False),
}
RECIPE_ARCH = "qwen3-4b"
"""Every recipe here trains Qwen3-4B-Instruct-2507: they run on that architecture's random-weight model."""

Command = Callable[[list[str], Path, str, float], tuple[int | str, str]]
"""Runs a command line in a folder under a title with a timeout: (exit code or "timeout", its output)."""

SUMMARY_KEYS = ("steps", "first_loss", "last_loss", "tokens_seen", "trained_tokens_seen", "peak_memory_gib", "peak_reserved_gib",
                "estimated_memory_gib", "wall_seconds", "stage_seconds", "plan")


def run_recipe_case(name: str, model_dir: str, work: Path, steps: int, cap_gib: float, run: Command,
                    time_left: Callable[[], float]) -> dict[str, Any]:
    """Every step of one recipe case, each recorded; a failed step ends the case (later ones need its output).

    `work` is the working folder of every command (checkpoints/ and runs/ land there), the same for both cases.
    """
    case = RECIPE_CASES[name]
    work.mkdir(parents=True, exist_ok=True)
    record = CaseRecord(f"recipe:{name}", data={"backend": "recipe", "arch": RECIPE_ARCH, "repeat": 0, "recipe": f"recipes/{case.recipe}",
                                                "vram_cap_gib": cap_gib or None, "commands": {}})
    checkpoint = work / "checkpoints" / case.run_name
    sets = [f"model.name={model_dir}", f"training.max_steps={steps}", "training.logging_steps=1",
            f"training.save_steps={steps}", "output.report_to=[]", *case.sets]
    if case.needs_sft:
        sft = work / "checkpoints" / SFT_RUN
        if not (sft / "adapter_config.json").is_file():
            record.verdict("train", False, f"needs the adapter of recipe:{SFT_CASE} in {sft}, which did not finish", kind="NotRun")
            return record.result()
        sets.append(f"model.adapter={sft}")
    train = ["train", str(REPO / "recipes" / case.recipe), "--run-name", case.run_name, "--overwrite",
             "--target-gb", str(cap_gib or 16)] + [arg for value in sets for arg in ("--set", value)]
    steps_to_run = [("train", train)]
    if case.after_training:
        tokens = "16"
        steps_to_run += [
            ("chat --prompt", ["chat", str(checkpoint), "--prompt", "What is 12 + 30?", "--max-new-tokens", tokens]),
            ("eval --limit 4", ["eval", str(checkpoint), "--limit", "4", "--max-new-tokens", tokens, "--out", str(work / "eval")]),
            ("export --merged", ["export", str(checkpoint), "--merged", str(work / "merged"), "--overwrite"]),
        ]
    for step, arguments in steps_to_run:
        peaks_file = work / f"peaks-{case.run_name}-{step.split()[0]}.json"
        peaks_file.unlink(missing_ok=True)
        command = [sys.executable, str(CAPPED_CLI), "--cap-gib", str(cap_gib), "--report", str(peaks_file), "--", *arguments]
        started = time.monotonic()
        code, output = run(command, work, f"recipe:{name} {step}", time_left())
        record.phase_seconds[step] = round(time.monotonic() - started, 1)
        record.data["commands"][step] = {"argv": ["qlora4080", *arguments], "exit": code,
                                         **(json.loads(peaks_file.read_text(encoding="utf-8")) if peaks_file.is_file() else {})}
        if code != 0:
            record.verdict(step, False, f"exit {code}: {output.strip()[-1500:]}", kind="CommandFailed")
            break
        record.steps_done.append(step)
        if step == "train":
            record.data.update(_train_facts(work, case.run_name))
        elif step == "eval --limit 4":
            record.data["eval"] = _eval_facts(work / "eval")
        elif step == "export --merged":
            record.data["export"] = _export_facts(work / "merged", output)
        elif step == "chat --prompt":
            record.data["chat_answer"] = output.strip().splitlines()[-1][:200] if output.strip() else ""
    enforced = [c["vram_cap_enforced"] for c in record.data["commands"].values() if "vram_cap_enforced" in c]
    # a cap that did not hold means "fits the card" was not measured
    record.verdict("vram cap", not (cap_gib and enforced and not all(enforced)),
                   "an allocation over the capped limit succeeded: the cap did not hold")
    return record.result()


def _train_facts(work: Path, run_name: str) -> dict[str, Any]:
    """The run's own summary (its peaks and the preflight estimate), and the estimate against the process's peak."""
    summary_file = work / "runs" / run_name / "summary.json"
    if not summary_file.is_file():
        return {"summary": None}
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    facts: dict[str, Any] = {"summary": {key: summary.get(key) for key in SUMMARY_KEYS}}
    estimate, reserved = summary.get("estimated_memory_gib"), summary.get("peak_reserved_gib")
    facts.update(estimate_gib=estimate, peak_reserved_gib=reserved, peak_allocated_gib=summary.get("peak_memory_gib"),
                 estimate_error_pct=measure.estimate_error_pct(estimate, reserved))
    return facts


def _eval_facts(folder: Path) -> dict[str, Any]:
    report = folder / "eval.json"
    if not report.is_file():
        return {"written": False}
    data = json.loads(report.read_text(encoding="utf-8"))
    return {"written": True, "keys": sorted(data)[:12]}


def _export_facts(folder: Path, output: str) -> dict[str, Any]:
    return {"config": (folder / "config.json").is_file(), "safetensors": sorted(p.name for p in folder.glob("*.safetensors")),
            "answers_match": "verified: the merged model gives the same greedy answer" in output}
