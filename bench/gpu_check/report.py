"""The report: a header saying what ran on what, and the cases as JSON and as Markdown tables."""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from typing import Any

PACKAGES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "unsloth", "unsloth_zoo",
            "triton", "xformers", "qlora4080"]

NOTES = [
    ("Models have random weights built from the real configs (numbers from qlora4080/architectures.py); the tokenizer "
     "is SmolLM2's (49152 ids, all below either model's vocabulary), so token ids are valid but text is meaningless: "
     "answers are compared as token ids."),
    ("Data: random token sequences of exactly seq-len tokens, labels = input_ids, no padding; tokens per step = "
     "batch x grad-accum x seq-len."),
    ("Step time = wall time between the ends of consecutive optimizer steps (CUDA synchronised). The first step is "
     "warm-up and is left out of the mean and of tokens/s; all step times are in the JSON."),
    "Losses are the trainer's per-step logged loss, with logging_nan_inf_filter=False so a NaN shows as NaN.",
    ("Peak VRAM = torch.cuda.max_memory_allocated / max_memory_reserved, reset right before trainer.train(): training "
     "only. The estimate (qlora4080/vram.py via preflight.memory_shape and the run's plan) also counts 0.5 GiB of CUDA context, which "
     "torch's counters never see; error % = (estimate - peak reserved) / peak reserved."),
    ("Reload: the adapter is saved, the model freed, a fresh base loaded by the same backend and the adapter attached "
     "with PeftModel.from_pretrained (on unsloth through FastLanguageModel.from_pretrained(adapter folder), which does "
     "that and re-applies its LoRA kernels), its weights cast to the dtype training held (trl keeps QLoRA adapters in bf16, "
     "peft loads fp32). 'chat loader' is infer.load_for_chat as `qlora4080 chat` runs it (a base without training "
     "preparation, the adapter in fp32), so small logit differences are expected there. 'adapter effect' = max logit "
     "change from switching the adapter off: it shows the compared answers depend on the adapter at all."),
    ("Merge: qlora4080.export.export_merged (16-bit base, peft merge_and_unload, safetensors, reloaded with plain "
     "transformers), plus logits of base + adapter vs the merged model on one batch. Unsloth adapters are checked in "
     "a separate process without unsloth, as `qlora4080 chat` / `export` would load them."),
    ("Allocator: every case's process starts with the same PYTORCH_CUDA_ALLOC_CONF / PYTORCH_ALLOC_CONF (settings: "
     "alloc_conf; unsloth sets expandable_segments on import, so it is set for all); each case records them at its start "
     "and end. loss_path names the trainer class, its compute_loss and the model class's forward that actually ran: "
     "unsloth swaps in its own, which is how its fused cross-entropy shows."),
    ("Recipes: the real recipe files, data and CLI (train, chat --prompt, eval --limit 4, export --merged; DPO from "
     "the SFT adapter) with model.name set to the random-weight model and a few steps. Peaks and the estimate come from "
     "the run's summary.json (whole process, loading included); each command's own peaks are in the JSON."),
    ("Packing (hf only): a pair packed by data/packing.py with its block-diagonal mask vs each sample alone; "
     "'plain sequence' is the pair as one unmasked sequence (the size of a leak, for "
     "contrast); 'position ids only' is the pair with restarting positions and no mask (informational). Under "
     "autocast on CUDA, as in training."),
]
CPU_NOTES = [
    ("CPU run (--tiny): VRAM fields are null. The project's hf backend loads fp32 without 4-bit there (its warning says "
     "so), and the plan (qlora4080/plan.py) picks adamw_torch, no checkpointing, fp32. Nothing here measures a GPU."),
    ("Peer row on CPU: use_cpu=True, bf16=False, no checkpointing, fp32, and Trainer.compute_loss instead of trl's "
     "Triton loss, which cannot run without a GPU (the fallback qlora4080's trainer takes too)."),
]


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def driver() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi not available ({type(exc).__name__})"
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "nvidia-smi failed"


def header(hardware: dict[str, Any] | None, argv: list[str], tiny: bool) -> dict[str, Any]:
    hw = hardware or {}
    total = hw.get("gpu_total_bytes")
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/gpu_check.py " + shlex.join(argv),
        "mode": "tiny (CPU code path, tiny models)" if tiny else "full (real architectures, random weights)",
        "gpu": hw.get("gpu_name") or "none",
        "gpu_memory_gib": round(total / 2**30, 2) if total else None,
        "bf16_supported": hw.get("bf16_supported"),
        "driver": driver(),
        "cuda": hw.get("cuda"),
        "cpu_cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "PYTORCH_CUDA_ALLOC_CONF (the parent's; cases: --alloc-conf)": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "unset"),
        "versions": versions(),
    }


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 0.01 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _precision(case: dict[str, Any]) -> str:
    t = case.get("trainer", {})
    dtype = "bf16" if t.get("bf16") else "fp16" if t.get("fp16") else "fp32"
    bits = "4-bit " if case.get("quantized_4bit") else ""
    checkpointing = "ckpt" if t.get("gradient_checkpointing") else ("unsloth ckpt" if case.get("backend") == "unsloth" else "no ckpt")
    return f"{bits}{dtype}, {t.get('optim', '?')}, {checkpointing}" if t else "n/a"


def markdown(report: dict[str, Any]) -> str:
    h, s = report["header"], report["settings"]
    lines = ["# qlora4080 GPU check", "", "| | |", "|---|---|"]
    for key, value in h.items():
        if key != "versions":
            lines.append(f"| {key} | {'`' + value + '`' if key == 'command' else _num(value)} |")
    lines += [f"| {name} | {version} |" for name, version in h["versions"].items()]
    lines.append(f"| shape | seq-len {s['seq_len']}, batch {s['batch_size']} x grad-accum {s['grad_accum']}, {s['steps']} "
                 f"steps, LoRA r{s['lora']['r']} alpha {s['lora']['alpha']} dropout {s['lora']['dropout']} "
                 f"{s['lora']['target_modules']}, lr {s['learning_rate']} constant |")
    lines += ["", "## Training", "",
              ("| case | run | ok | precision, optimizer, checkpointing | loss per step | finite | step s (mean, excl. 1st) "
               "| tokens/s | peak alloc GiB | peak reserved GiB | estimate GiB | estimate error |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in _rows(report["cases"]):
        losses = ", ".join(f"{x:.4f}" for x in c.get("losses", [])) or "n/a"
        error = f"{c['estimate_error_pct']:+.1f}%" if c.get("estimate_error_pct") is not None else "n/a"
        lines.append(f"| {c['case']} | {c.get('repeat', 0) + 1} | {_num(c['ok'])} | {_precision(c)} | {losses} | "
                     f"{_num(c.get('losses_finite'))} | {_num(c.get('mean_step_s_excl_first'), 3)} | {_num(c.get('tokens_per_s'), 1)} | "
                     f"{_num(c.get('peak_allocated_gib'))} | {_num(c.get('peak_reserved_gib'))} | {_num(c.get('estimate_gib'))} | {error} |")
    if report["settings"]["repeats"] > 1:
        lines += ["", "## Throughput over repeats", "", "| case | runs | tokens/s median | min | max |", "|---|---|---|---|---|"]
        for name in dict.fromkeys(c["case"] for c in report["cases"]):
            rates = [c["tokens_per_s"] for c in report["cases"] if c["case"] == name and c.get("tokens_per_s")]
            if rates:
                lines.append(f"| {name} | {len(rates)} | {statistics.median(rates):.1f} | {min(rates):.1f} | {max(rates):.1f} |")
    lines += _speed_ratios(_rows(report["cases"]))
    lines += _checks(_rows(report["cases"]))
    lines += _recipes([c for c in report["cases"] if c.get("backend") == "recipe"], s)
    lines += ["", "## Not run", ""] + ([f"- `{n['case']}`: {n['why']}. Next time: `{n['command']}`" for n in report.get("not_run", [])]
                                       or ["Everything chosen ran."])
    failures = [(c["case"], c.get("repeat", 0), e) for c in report["cases"] for e in c.get("errors", [])]
    lines += ["", "## Failures", ""]
    if not failures:
        lines.append("None.")
    for case, repeat, e in failures:
        message = " ".join(e["message"].split())[:400]
        lines.append(f"- `{case}` run {repeat + 1}, step **{e['step']}**: {e['type']}: {message}")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


RATIOS = (("unsloth", "hf"), ("unsloth", "peer"), ("hf", "peer"))
"""The speed comparisons the GPU section reports: unsloth against the project's own hf path and against the plain
TRL script a user would write; hf against that script."""


def speed_ratios(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per architecture, each pair's ratio of median tokens/s over the runs that trained (where both backends did)."""
    found = []
    for arch in dict.fromkeys(c["arch"] for c in cases):
        median = {}
        for backend in ("unsloth", "hf", "peer"):
            rates = [c["tokens_per_s"] for c in cases if c["arch"] == arch and c["backend"] == backend and c.get("tokens_per_s")]
            if rates:
                median[backend] = statistics.median(rates)
        for fast, slow in RATIOS:
            if fast in median and slow in median:
                found.append({"arch": arch, "ratio": f"{fast}/{slow}", "value": round(median[fast] / median[slow], 2),
                              "tokens_per_s": (round(median[fast], 1), round(median[slow], 1))})
    return found


def _speed_ratios(cases: list[dict[str, Any]]) -> list[str]:
    ratios = speed_ratios(cases)
    if not ratios:
        return []
    lines = ["", "## Speed ratios (median tokens/s over the runs)", "", "| architecture | ratio | value | tokens/s |", "|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['ratio']} | {r['value']:.2f}x | {r['tokens_per_s'][0]:.1f} vs {r['tokens_per_s'][1]:.1f} |"
              for r in ratios]
    return lines


def _rows(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The backend rows (unsloth, hf, peer); the recipe cases have a table of their own."""
    return [c for c in cases if c.get("backend") != "recipe"]


def _recipes(cases: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    if not cases:
        return []
    cap = settings.get("vram_cap_gib")
    lines = ["", f"## Recipes through the CLI (each command's allocator capped to a {cap:g} GiB card less 0.5 GiB of context)"
             if cap else "## Recipes through the CLI (no cap)", "",
             ("| case | ok | commands (s) | loss first -> last | peak alloc GiB | peak reserved GiB | estimate GiB | estimate error "
              "| merged answer = adapter answer | cap held |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        summary = c.get("summary") or {}
        commands = ", ".join(f"{step} {seconds:.0f}" for step, seconds in c.get("phase_seconds", {}).items()) or "n/a"
        first, last = summary.get("first_loss"), summary.get("last_loss")
        losses = f"{first:.4f} -> {last:.4f}" if first is not None and last is not None else "n/a"
        error = f"{c['estimate_error_pct']:+.1f}%" if c.get("estimate_error_pct") is not None else "n/a"
        export = c.get("export")
        held = [command["vram_cap_enforced"] for command in c.get("commands", {}).values() if "vram_cap_enforced" in command]
        gpu_peak = summary.get("peak_memory_gib") if summary.get("peak_reserved_gib") is not None else None  # on a CPU: RAM
        lines.append(f"| {c['case']} | {_num(c['ok'])} | {commands} | {losses} | {_num(gpu_peak)} | "
                     f"{_num(summary.get('peak_reserved_gib'))} | {_num(summary.get('estimated_memory_gib'))} | {error} | "
                     f"{_num(export['answers_match']) if export else 'n/a'} | {_num(all(held)) if held else 'n/a'} |")
    return lines


def _verdict(check: dict[str, Any] | None, text: str) -> str:
    if not check:
        return "not run"
    return f"{'pass' if check.get('pass') else 'FAIL'}: {text}"


def _checks(cases: list[dict[str, Any]]) -> list[str]:
    rows = [c for c in cases if c.get("repeat", 0) == 0 and c.get("backend") != "peer"]
    lines = ["", "## Checks (first run of each case)", "",
             ("| case | reload: 16 greedy tokens equal, logit diff, adapter weight diff | adapter effect (logits) "
              "| chat loader: tokens equal, logit diff | merge + export: answers match, logit diff (tol) "
              "| packing: block-mask diff (tol), plain sequence, position ids only, backward finite |"),
             "|---|---|---|---|---|---|"]
    for c in rows:
        r, chat, m, p = c.get("reload"), c.get("chat_path"), c.get("merge"), c.get("packing")
        reload = _verdict(r, f"{_num(r['tokens_equal'])}, {_num(r['max_logit_diff'], 3)}, {_num(r['max_adapter_weight_diff'], 3)}") if r else "not run"
        chat_cell = f"{_num(chat['tokens_equal'])}, {_num(chat['max_logit_diff'], 3)}" if chat else "not run"
        merge = _verdict(m, f"{_num(m['answers_match'])}, {_num(m['max_logit_diff'], 3)} ({_num(m['tolerance'], 2)})") if m else "not run"
        packing = _verdict(p, f"{_num(p['max_diff'], 3)} ({_num(p['tolerance'], 2)}), {_num(p['max_diff_plain_sequence'], 3)}, "
                              f"{_num(p['max_diff_position_ids_only'], 3)}, {_num(p['grads_finite'])}") if p else "n/a (hf only)"
        lines.append(f"| {c['case']} | {reload} | {_num(c.get('adapter_effect_max_logit'), 3)} | {chat_cell} | {merge} | {packing} |")
    return lines
