"""bench/gpu_check.py: the GPU check's whole code path, run on CPU with --tiny, and its one-line refusals.

--tiny builds tiny Qwen3 and Llama models (random weights, SmolLM2's real
tokenizer), trains each through the project's hf backend and trainer and
through a plain TRL script (once), and runs the save/reload, chat-loader, merge and
packing checks, each case in its own process, as a GPU run does.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"
REPORTED = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "unsloth", "unsloth_zoo")


def run_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False)


def installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def test_tiny_run_writes_a_report_where_every_case_and_check_holds(tmp_path: Path, smollm2_dir: Path) -> None:
    out = tmp_path / "report"
    done = run_check("--tiny", "--out", str(out))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    report = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    cases = {case["case"]: case for case in report["cases"]}
    assert set(cases) == {"hf:qwen3-4b", "hf:llama-3.1-8b", "peer:qwen3-4b",  # on CPU the peer row runs once
                          "recipe:qwen3-4b-emoji", "recipe:qwen3-4b-emoji-dpo"}
    # a GPU run brings back a few files: everything is in these three, each child's output in the one log
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    log = (out / "gpu_check.log").read_text(encoding="utf-8")
    assert log.count("\n===== ") == 1 + 3 + 4 + 1  # the build, three backend cases, the SFT recipe's four commands, DPO
    for name in ("hf:qwen3-4b", "hf:llama-3.1-8b", "peer:qwen3-4b"):
        case = cases[name]
        # the same allocator settings in every case, and the loss path read off the objects that trained
        assert case["alloc_conf_at_start"] == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
                                               "PYTORCH_ALLOC_CONF": "expandable_segments:True"}
        assert case["loss_path"]["compute_loss"].endswith("compute_loss") and "ForCausalLM" in case["loss_path"]["causal_lm"]
    assert cases["hf:qwen3-4b"]["loss_path"]["trainer"].startswith("qlora4080.")
    assert cases["peer:qwen3-4b"]["loss_path"]["compute_loss"].endswith("PlainLossSFTTrainer.compute_loss")

    # the headline recipes through the CLI, on the tiny Qwen3: SFT then chat, eval, export; DPO from its adapter
    sft, dpo = cases.pop("recipe:qwen3-4b-emoji"), cases.pop("recipe:qwen3-4b-emoji-dpo")
    assert sft["ok"] and dpo["ok"], (sft["errors"], dpo["errors"])
    assert sft["steps_done"] == ["train", "chat --prompt", "eval --limit 4", "export --merged"] and dpo["steps_done"] == ["train"]
    assert sft["summary"]["steps"] == dpo["summary"]["steps"] == 2 and sft["summary"]["plan"]["quantization"] == "nf4"
    assert sft["eval"]["written"] and sft["export"]["config"] and sft["export"]["safetensors"]
    assert dpo["commands"]["train"]["argv"][-1].endswith("checkpoints/gpu-check-emoji")  # model.adapter = the SFT adapter
    assert all(command["exit"] == 0 for command in sft["commands"].values())
    assert report["not_run"] == []
    # the comparison the GPU section reports; on a CPU only hf and the peer script train
    [ratio] = report["speed_ratios"]
    hf_rate, peer_rate = cases["hf:qwen3-4b"]["tokens_per_s"], cases["peer:qwen3-4b"]["tokens_per_s"]
    assert ratio["arch"] == "qwen3-4b" and ratio["ratio"] == "hf/peer" and ratio["value"] == round(hf_rate / peer_rate, 2)
    for name, case in cases.items():
        assert case["ok"], (name, case["errors"])
        assert len(case["losses"]) == report["settings"]["steps"] == 2
        assert case["losses_finite"] and all(math.isfinite(loss) for loss in case["losses"])
        assert case["tokens_per_s"] > 0 and case["mean_step_s_excl_first"] > 0
        assert case["peak_allocated_gib"] is None and case["peak_reserved_gib"] is None  # CPU: no VRAM to measure
        assert case["estimate_gib"] > 0
    assert cases["hf:qwen3-4b"]["trainer"]["optim"] == "adamw_torch"  # device_defaults on CPU

    for name in ("hf:qwen3-4b", "hf:llama-3.1-8b"):
        case = cases[name]
        reload = case["reload"]
        assert len(reload["tokens_before"]) == 16 and reload["tokens_after"] == reload["tokens_before"]
        assert reload["max_adapter_weight_diff"] == 0.0 and reload["max_logit_diff"] < 1e-5
        assert case["adapter_effect_max_logit"] > 1e-4  # the adapter changes the output, so equal answers mean something
        assert case["chat_path"]["tokens"] == reload["tokens_before"]
        packing = case["packing"]
        assert packing["max_diff"] < 1e-4 < packing["max_diff_plain_sequence"], packing
        assert packing["grads_finite"] and packing["pass"]

    merge = cases["hf:qwen3-4b"]["merge"]
    assert merge["answers_match"] and merge["max_logit_diff"] < 1e-4 and merge["pass"]
    assert "merge" not in cases["hf:llama-3.1-8b"]  # the smaller architecture only, by default

    text = (out / "gpu_check.md").read_text(encoding="utf-8")
    assert "## Failures\n\nNone." in text
    for package in REPORTED:
        assert f"| {package} | {installed(package)} |" in text
    assert "| hf:qwen3-4b | 1 | yes |" in text and "--tiny" in text
    assert "| recipe:qwen3-4b-emoji | yes |" in text and "## Not run\n\nEverything chosen ran." in text


def test_a_spent_budget_starts_nothing_and_lists_each_part_with_its_command(tmp_path: Path) -> None:
    done = run_check("--tiny", "--budget-s", "1", "--min-case-s", "5", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text(encoding="utf-8"))
    assert report["cases"] == []
    assert [part["case"] for part in report["not_run"]] == ["build qwen3-4b+llama-3.1-8b"]
    assert report["not_run"][0]["command"].startswith("python bench/gpu_check.py --backends hf,peer --archs qwen3-4b,llama-3.1-8b "
                                                      "--recipes qwen3-4b-emoji,qwen3-4b-emoji-dpo")
    assert "## Not run\n\n- `build qwen3-4b+llama-3.1-8b`: " in (tmp_path / "gpu_check.md").read_text(encoding="utf-8")


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is not None, reason="unsloth is installed: this would start a real GPU run")
def test_missing_wheels_are_named_in_one_line(tmp_path: Path) -> None:
    done = run_check("--backends", "unsloth", "--archs", "qwen3-4b", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: missing Python package(s):") and "unsloth" in lines[0]
    assert not (tmp_path / "gpu_check.json").exists()
