"""Training throughput on this machine: qlora4080 vs a plain TRL SFTTrainer script, same model, data, steps.

    .venv/bin/python bench/train_throughput.py [--steps 5] [--out bench/results/train_throughput.json]

Rows (each in a fresh Python process, one after the other, so none inherits warm-up from another):
  qlora4080            `qlora4080 train recipes/smollm2_135m_demo.toml` via the Python API
  trl-defaults         SFTTrainer + peft LoRA with TRL's default SFTConfig (bf16=True,
                       gradient_checkpointing=True) and TRL's own chat-template tokenization;
                       use_cpu=True is added because without it TRL refuses to start on a
                       CPU-only machine ("Your setup doesn't support bf16/gpu")
  trl-cpu-settings     the same script with bf16=False and gradient checkpointing off,
                       to separate qlora4080's own overhead from the device defaults
  trl-cpu-settings+checkpoint
                       as above, plus the resumable checkpoint qlora4080 writes when
                       training ends (save_strategy="steps"); that write is inside
                       train_runtime for qlora4080 too

tokens/s = tokens the trainer consumed (attention-mask sum, TRL's num_tokens) / train_runtime.
Run-to-run spread on a shared 2-core VM is large (+-15% seen), so every row except
trl-defaults (too slow, and ~15x off anyway) runs --repeats times, interleaved
(A B C A B C ...), and the median is reported with the range.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXTRA_OVERRIDES: list[str] = []
sys.path.insert(0, str(REPO))


def run_qlora4080(steps: int, workdir: Path) -> dict:
    import os

    from qlora4080 import load_recipe, train

    os.chdir(workdir)
    recipe = load_recipe(REPO / "recipes" / "smollm2_135m_demo.toml", [f"training.max_steps={steps}", "training.logging_steps=1", "data.validation=\"\""] + EXTRA_OVERRIDES)
    result = train(recipe, run_name="bench", live=False)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    runtime = next(line["train_runtime"] for line in lines if "train_runtime" in line)
    return {"tokens": result.summary["tokens_seen"], "train_runtime_s": runtime}


def run_trl(steps: int, workdir: Path, cpu_settings: bool, final_checkpoint: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from qlora4080.builtin_models import resolve_builtin

    model_dir = resolve_builtin("smollm2-135m-instruct")
    rows = [json.loads(line) for line in (REPO / "recipes/data/json_cards/train.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([{"messages": row["messages"]} for row in rows])
    extra = {"bf16": False, "gradient_checkpointing": False} if cpu_settings else {}
    extra["save_strategy"] = "steps" if final_checkpoint else "no"
    config = SFTConfig(
        output_dir=str(workdir / ("trl-cpu" if cpu_settings else "trl")), max_steps=steps, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, learning_rate=1e-3, logging_steps=1, save_steps=1000, report_to="none",
        max_length=256, seed=42, use_cpu=True, **extra,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    output = trainer.train()
    tokens = max(entry.get("num_tokens", 0) for entry in trainer.state.log_history)
    return {"tokens": int(tokens), "train_runtime_s": output.metrics["train_runtime"],
            "bf16": trainer.args.bf16, "gradient_checkpointing": trainer.args.gradient_checkpointing}


ROWS = {
    "qlora4080": lambda steps, work: run_qlora4080(steps, work),
    "trl-defaults": lambda steps, work: run_trl(steps, work, cpu_settings=False),
    "trl-cpu-settings": lambda steps, work: run_trl(steps, work, cpu_settings=True),
    "trl-cpu-settings+checkpoint": lambda steps, work: run_trl(steps, work, cpu_settings=True, final_checkpoint=True),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (trl-defaults runs once)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row in this process, print JSON
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_throughput.json")
    args = parser.parse_args()
    if args.row:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()
            row = ROWS[args.row](args.steps, Path(tmp))
        row["wall_s"] = round(time.monotonic() - started, 1)
        row["tokens_per_s"] = round(row["tokens"] / row["train_runtime_s"], 1)
        print("ROW " + json.dumps(row), flush=True)
        return

    import os
    import subprocess

    import torch

    results = {
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}",
        "model": "SmolLM2-135M-Instruct (builtin, fp32), LoRA r16 all-linear, batch 4, max_len 256, json_cards data",
        "steps": args.steps,
        "rows": {},
    }
    names = args.rows.split(",")
    samples: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            if name == "trl-defaults" and repeat > 0:
                continue
            done = subprocess.run([sys.executable, __file__, "--row", name, "--steps", str(args.steps)],
                                  capture_output=True, text=True, check=True)
            row = json.loads(next(line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")))
            samples[name].append(row)
            print(name, row, flush=True)
    for name, runs in samples.items():
        rates = sorted(run["tokens_per_s"] for run in runs)
        results["rows"][name] = {
            "tokens_per_s_median": statistics.median(rates),
            "tokens_per_s_range": [rates[0], rates[-1]],
            "runs": len(runs),
            "tokens": runs[0]["tokens"],
            **{k: v for k, v in runs[0].items() if k in ("bf16", "gradient_checkpointing")},
        }
    if "qlora4080" in results["rows"]:
        base = results["rows"]["qlora4080"]["tokens_per_s_median"]
        for row in results["rows"].values():
            row["qlora4080_vs_row"] = round(base / row["tokens_per_s_median"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
