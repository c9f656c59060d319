"""The VRAM estimator: exact architecture arithmetic, sane components, overrides that really fit."""

from __future__ import annotations

import pytest
import torch

from qlora4080 import architectures as A
from qlora4080.vram import GiB, TrainingShape, estimate, fit_overrides, lora_params

# The architecture table against the real transformers classes (meta device: no memory, no download).
CONFIGS = {
    "qwen3": (A.QWEN3_4B, "Qwen3Config", {}),
    "qwen2": (A.QWEN25_7B, "Qwen2Config", {}),
    "llama": (A.LLAMA31_8B, "LlamaConfig", {}),
    "phi3": (A.PHI35_MINI, "Phi3Config", {}),
    "gemma2": (A.GEMMA2_9B, "Gemma2Config", {}),
    "mistral": (A.MISTRAL_7B, "MistralConfig", {}),
    "smollm2": (A.SMOLLM2_135M, "LlamaConfig", {}),
}


def _real_model_params(arch: A.Architecture, config_class: str) -> int:
    import transformers

    config = getattr(transformers, config_class)(
        num_hidden_layers=arch.layers, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
        num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads, head_dim=arch.head_dim,
        vocab_size=arch.vocab, tie_word_embeddings=arch.tied_embeddings,
    )
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_count_matches_the_real_model_class(name):
    arch, config_class, _ = CONFIGS[name]
    real = _real_model_params(arch, config_class)
    assert abs(arch.total_params - real) / real < 0.001, (arch.total_params, real)


def test_published_sizes():
    assert round(A.QWEN3_4B.total_params / 1e9, 2) == 4.02
    assert round(A.LLAMA31_8B.total_params / 1e9, 2) == 8.03
    assert round(A.GEMMA2_9B.total_params / 1e9, 2) == 9.24


def test_lora_parameter_count_matches_peft(smollm2_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(smollm2_dir))
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_params(A.SMOLLM2_135M, 16, "all-linear") == trainable
    assert lora_params(A.SMOLLM2_135M, 16, ("q_proj", "v_proj")) < trainable


def test_config_json_parsing(smollm2_dir):
    import json

    parsed = A.from_config(json.loads((smollm2_dir / "config.json").read_text()))
    assert parsed == A.SMOLLM2_135M
    assert A.lookup(str(smollm2_dir)) == A.SMOLLM2_135M
    assert A.lookup("unsloth/Qwen3-4B-Instruct-2507") is A.QWEN3_4B
    assert A.lookup("someone/unknown-model") is None


def test_components_move_the_right_way():
    base = TrainingShape(batch_size=2, seq_len=1024)
    total = estimate(A.QWEN3_4B, base).total
    assert estimate(A.QWEN3_4B, TrainingShape(batch_size=2, seq_len=1024, load_in_4bit=False)).total > total + 4 * GiB
    assert estimate(A.QWEN3_4B, TrainingShape(batch_size=2, seq_len=1024, gradient_checkpointing=False)).total > total + 2 * GiB
    assert estimate(A.QWEN3_4B, TrainingShape(batch_size=2, seq_len=2048)).total > total
    assert estimate(A.QWEN3_4B, TrainingShape(batch_size=2, seq_len=1024, optimizer="adamw_torch")).total > total
    assert estimate(A.QWEN3_4B, TrainingShape(batch_size=2, seq_len=1024, backend="unsloth")).total < total


def test_4bit_weights_are_about_a_quarter_of_16bit_plus_what_stays_unquantized():
    arch = A.LLAMA31_8B
    full = estimate(arch, TrainingShape(batch_size=1, seq_len=512, load_in_4bit=False)).parts["weights (16-bit)"]
    assert full == arch.total_params * 2
    hf = estimate(arch, TrainingShape(batch_size=1, seq_len=512)).parts
    unsloth = estimate(arch, TrainingShape(batch_size=1, seq_len=512, backend="unsloth")).parts
    assert hf["linear layers (4-bit NF4)"] == unsloth["linear layers (4-bit NF4)"]
    assert 0.25 < hf["linear layers (4-bit NF4)"] / (arch.linear_params * 2) < 0.26
    # peft's prepare_model_for_kbit_training upcasts embeddings and head to fp32; unsloth keeps them 16-bit
    assert hf["embeddings, head and norms (fp32: peft upcasts them)"] == pytest.approx(
        2 * unsloth["embeddings and head (16-bit), norms (fp32)"], rel=0.001)


def test_overrides_bring_the_estimate_under_budget():
    shape = TrainingShape(batch_size=8, seq_len=4096, gradient_checkpointing=False)
    budget = 16 * GiB
    assert estimate(A.QWEN3_4B, shape).total > budget
    overrides = fit_overrides(A.QWEN3_4B, shape, budget, grad_accum=2)
    assert overrides and overrides[0].startswith("--set model.max_seq_len=")  # shorter sequences first
    fields = {"model.max_seq_len": "seq_len", "training.batch_size": "batch_size", "lora.r": "lora_r",
              "training.gradient_checkpointing": "gradient_checkpointing", "model.load_in_4bit": "load_in_4bit"}
    changes = {}
    for item in overrides:
        key, value = item.removeprefix("--set ").split("=")
        if key in fields:
            changes[fields[key]] = value == "true" if value in ("true", "false") else int(value)
    from dataclasses import replace

    assert estimate(A.QWEN3_4B, replace(shape, **changes)).total <= budget
    if "training.batch_size" in {o.removeprefix("--set ").split("=")[0] for o in overrides}:
        assert "--set training.grad_accum=16" in overrides  # the effective batch is kept


def test_no_overrides_when_it_fits_and_none_when_hopeless():
    assert fit_overrides(A.SMOLLM2_135M, TrainingShape(batch_size=1, seq_len=512), 16 * GiB, 1) == []
    assert fit_overrides(A.GEMMA2_9B, TrainingShape(batch_size=1, seq_len=512), 2 * GiB, 1) is None


def test_every_bundled_recipe_fits_16gb_offline():
    from conftest import REPO

    from qlora4080.preflight import run_preflight
    from qlora4080.recipe import load_recipe

    for path in sorted((REPO / "recipes").glob("*.toml")):
        report = run_preflight(load_recipe(path), None, offline=True)
        assert report.estimate is not None, path
        assert report.fits, (path, report.estimate.total_gib)
        assert report.estimate.total_gib < 16 * 0.85, (path.name, report.estimate.total_gib)  # headroom


def test_preference_tuning_counts_both_answers_and_the_reference_copy():
    arch = A.QWEN3_4B
    sft = estimate(arch, TrainingShape(batch_size=2, seq_len=1024))
    dpo = estimate(arch, TrainingShape(batch_size=2, seq_len=1024, sequences_per_row=2, reference_adapter=True))
    assert dpo.parts["logits and loss"] == 2 * sft.parts["logits and loss"]
    assert dpo.parts["reference adapter (frozen copy)"] == sft.parts["LoRA parameters (fp32)"]
    assert dpo.total > sft.total
