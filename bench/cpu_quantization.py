"""QLoRA on a CPU: a 4-bit NF4 base against the fp32 base, the same demo training, on this machine.

    .venv/bin/python bench/cpu_quantization.py [--steps 6] [--repeats 2] [--out bench/results/cpu_quantization.json]

Rows (each `qlora4080 train` in a fresh process, interleaved A B C A B C ...):
  fp32               the demo recipe as shipped (load_in_4bit = false): fp32 weights, torch AdamW
  nf4                --set model.load_in_4bit=true: bitsandbytes' CPU backend, NF4 + double quantization
  nf4 + adamw_8bit   the same with --set training.optimizer=adamw_8bit (bitsandbytes' 8-bit AdamW)

Per row: seconds a step (the trainer's train_runtime / steps), tokens/s (tokens the trainer consumed /
train_runtime), peak RSS of the process (summary.json), the model's load time, the final loss. The load
average before each run is recorded: the machine is shared, so compare medians of interleaved runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "smollm2_135m_demo.toml"
ROWS = {
    "fp32": [],
    "nf4": ["model.load_in_4bit=true"],
    "nf4 + adamw_8bit": ["model.load_in_4bit=true", "training.optimizer=adamw_8bit"],
}


def run_once(overrides: list[str], steps: int, work: Path) -> dict:
    settings = [*overrides, f"training.max_steps={steps}", "training.logging_steps=1", 'data.validation=""']
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-m", "qlora4080", "train", str(RECIPE), "--run-name", "bench",
                           *(f"--set={item}" for item in settings)], cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"train failed ({overrides}):\n{done.stderr[-3000:]}")
    summary = json.loads((work / "runs" / "bench" / "summary.json").read_text())
    metrics = [json.loads(line) for line in (work / "runs" / "bench" / "metrics.jsonl").read_text().splitlines()]
    runtime = next(line["train_runtime"] for line in metrics if "train_runtime" in line)
    loading = next(seconds for stage, seconds in summary["stage_seconds"].items() if stage.startswith("Loading model"))
    return {"seconds_per_step": runtime / steps, "tokens_per_s": summary["tokens_seen"] / runtime,
            "peak_rss_gib": summary["peak_memory_gib"], "load_s": loading, "last_loss": summary["last_loss"],
            "plan": summary["plan"], "load_average_before": load}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu_quantization.json")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in ROWS}
    for _ in range(args.repeats):
        for name, overrides in ROWS.items():
            with tempfile.TemporaryDirectory() as work:
                runs[name].append(run_once(overrides, args.steps, Path(work)))
                print(name, runs[name][-1], flush=True)
    fp32 = statistics.median(r["seconds_per_step"] for r in runs["fp32"])
    table = {}
    for name, results in runs.items():
        step = statistics.median(r["seconds_per_step"] for r in results)
        table[name] = {"seconds_per_step_median": step, "seconds_per_step_range": [min(r["seconds_per_step"] for r in results),
                                                                                    max(r["seconds_per_step"] for r in results)],
                       "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in results),
                       "peak_rss_gib_median": statistics.median(r["peak_rss_gib"] for r in results),
                       "load_s_median": statistics.median(r["load_s"] for r in results),
                       "step_time_vs_fp32": step / fp32, "runs": results}
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "steps": args.steps, "repeats": args.repeats, "recipe": str(RECIPE.relative_to(REPO)), "rows": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    for name, row in table.items():
        print(f"{name:18s} {row['seconds_per_step_median']:6.2f} s/step  {row['tokens_per_s_median']:6.1f} tok/s  "
              f"peak RSS {row['peak_rss_gib_median']:.2f} GiB  load {row['load_s_median']:.1f} s  x{row['step_time_vs_fp32']:.2f}")


if __name__ == "__main__":
    main()
