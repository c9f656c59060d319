"""vram.py's byte terms against the bytes real models hold, measured on the CPU.

The 4-bit weights (packed NF4 + quantization constants), the unquantized rest
(which peft's prepare_model_for_kbit_training upcasts to fp32), the LoRA
parameters, their gradients and the optimizer's state are the same bytes on a
CPU as on a GPU: bitsandbytes quantizes and steps its 8-bit AdamW on both.
Each term must be within 5% of what the real model holds.

Models: the built-in SmolLM2-135M (real weights, all 30 layers), and random
weights for each bundled family from its real configuration (hidden size,
heads, vocabulary, fused or split projections, extra norms, biases, tied
head) with ONE decoder layer, so that seven families fit a 2-core CI run. The
estimate is linear in the layer count, and it is given the same one-layer
architecture; the full-depth check is SmolLM2's.
"""

from __future__ import annotations

import dataclasses
import gc
import json

import pytest
import torch

from qlora4080 import architectures as A
from qlora4080.memory_terms import GRADIENTS, LINEAR_4BIT, LORA, OPTIMIZER, UNQUANTIZED, measure_training_bytes
from qlora4080.vram import TrainingShape, estimate

TOLERANCE = 0.05
# family -> (architecture, transformers config class, extra config keys)
FAMILIES = {
    "qwen3-4b": (A.QWEN3_4B, "Qwen3Config", {}),
    "qwen2.5-7b": (A.QWEN25_7B, "Qwen2Config", {}),
    "llama-3.1-8b": (A.LLAMA31_8B, "LlamaConfig", {}),
    "phi-3.5-mini": (A.PHI35_MINI, "Phi3Config", {"pad_token_id": 0}),
    "gemma-2-9b": (A.GEMMA2_9B, "Gemma2Config", {}),
    "mistral-7b": (A.MISTRAL_7B, "MistralConfig", {}),
}


def one_layer_model(tmp_path, arch: A.Architecture, config_class: str, extra: dict, tokenizer) -> str:
    """Random bf16 weights of the family with one decoder layer, saved as a model folder.

    The folder gets SmolLM2's tokenizer (the loader wants one with a chat template); its vocabulary plays no
    part in the bytes measured, and the random inputs stay inside it.
    """
    import transformers

    config = getattr(transformers, config_class)(
        num_hidden_layers=1, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
        num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads, head_dim=arch.head_dim,
        vocab_size=arch.vocab, tie_word_embeddings=arch.tied_embeddings, **extra,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    del model
    gc.collect()
    return str(tmp_path)


def errors(estimate_parts: dict[str, float], measured: dict[str, int]) -> dict[str, float]:
    """(estimate - measured) / measured, by term."""
    return {term: (estimate_parts[term] - measured[term]) / measured[term] for term in estimate_parts}


def estimated(arch: A.Architecture, optimizer: str, lora_r: int = 16) -> dict[str, float]:
    """The estimate's byte terms, named as memory_terms measures them."""
    parts = estimate(arch, TrainingShape(batch_size=1, seq_len=8, weight_bytes=4, lora_r=lora_r, optimizer=optimizer)).parts
    return {LINEAR_4BIT: parts["linear layers (4-bit NF4)"],
            UNQUANTIZED: parts["embeddings, head and norms (fp32: peft upcasts them)"],
            LORA: parts["LoRA parameters (fp32)"], GRADIENTS: parts["LoRA gradients (fp32)"],
            OPTIMIZER: parts[f"optimizer states ({optimizer})"]}


def _assert_within_tolerance(expected: dict[str, float], measured: dict[str, int]) -> None:
    off = errors(expected, measured)
    table = "\n".join(f"  {term}: estimated {expected[term]:,.0f}, measured {measured[term]:,} ({off[term]:+.2%})"
                      for term in expected)
    assert all(abs(error) <= TOLERANCE for error in off.values()), f"estimate off by more than {TOLERANCE:.0%}:\n{table}"


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "adamw_torch"])
def test_builtin_model_bytes_match_the_estimate(smollm2_dir, optimizer):
    _assert_within_tolerance(estimated(A.SMOLLM2_135M, optimizer), measure_training_bytes(str(smollm2_dir), optimizer))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_bundled_family_bytes_match_the_estimate(tmp_path, family, smol_tokenizer):
    arch, config_class, extra = FAMILIES[family]
    one_layer = dataclasses.replace(arch, layers=1)
    model_dir = one_layer_model(tmp_path, one_layer, config_class, extra, smol_tokenizer)
    _assert_within_tolerance(estimated(one_layer, "adamw_8bit"), measure_training_bytes(model_dir, "adamw_8bit"))


def test_small_tensors_keep_fp32_optimizer_state(tiny_model_dir):
    """bitsandbytes keeps 32-bit states for tensors under 4096 elements; the estimate counts them so."""
    tiny = A.from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    _assert_within_tolerance(estimated(tiny, "adamw_8bit", lora_r=8), measure_training_bytes(str(tiny_model_dir), "adamw_8bit", lora_r=8))
