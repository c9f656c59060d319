"""unsloth's FastLanguageModel: 4-bit base, LoRA, unsloth gradient checkpointing (CUDA only)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..hardware import Hardware
from ..hub import cache_only_unless_reachable
from ..recipe import LoraSection, ModelSection
from .loading import compute_dtype_name, model_source, prepare_tokenizer

if TYPE_CHECKING:
    from ..model_types import Model, Tokenizer

# unsloth takes explicit names; these are the linear projections of the
# Llama/Qwen/Mistral/Gemma/Phi-3 families it supports.
ALL_LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_model(model_cfg: ModelSection, hardware: Hardware, *, template_path: Path | None = None) -> tuple[Model, Tokenizer]:
    import torch
    from unsloth import FastLanguageModel

    dtype = getattr(torch, compute_dtype_name(model_cfg.dtype, hardware))
    with cache_only_unless_reachable():  # without network: the local cache at once, not a minute of retries
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=model_source(model_cfg.name),
            max_seq_length=model_cfg.max_seq_len,
            dtype=dtype,
            load_in_4bit=model_cfg.load_in_4bit,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    # Some unsloth versions return a processor for multimodal families; the text tokenizer is inside.
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return model, prepare_tokenizer(tokenizer, template_path)


def attach_lora(model: Model, lora: LoraSection, *, seed: int, gradient_checkpointing: bool = True) -> Model:
    """unsloth's LoRA, with its own (offloaded) gradient checkpointing; `seed` initialises the adapter."""
    from unsloth import FastLanguageModel

    targets = ALL_LINEAR_NAMES if lora.target_modules == "all-linear" else list(lora.target_modules)
    return FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
        random_state=seed,
    )
