"""unsloth's FastLanguageModel: 4-bit base, LoRA, unsloth gradient checkpointing (CUDA only).

Two of unsloth's defaults are turned off here, for what a user of the recipe expects:
- it swaps a named 16-bit repository (`Qwen/Qwen3-4B-Instruct-2507`,
  `unsloth/Qwen3-4B-Instruct-2507`, `meta-llama/Llama-3.1-8B-Instruct`) for its
  own pre-quantized `-unsloth-bnb-4bit` repository (models/loader.py, mapper.py).
  The run would then train on other base weights than the ones chat, eval and
  export rebuild from `model.name`, and without network it would look for a
  repository the user never named. `use_exact_model_name=True` loads the named
  one, quantized to NF4 on load as the hf backend does; train.log names the
  repository unsloth actually resolved.
- it decides "offline" from HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE alone
  (models/loader_utils.py), not from huggingface_hub's constants. When the hub
  cannot be reached, `local_files_only=True` is passed (and hub.py sets the
  variables for the call), so a cached model loads at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..console import warn
from ..hardware import Hardware
from ..hub import cache_only_unless_reachable
from ..plan import model_loading
from ..recipe import LoraSection, ModelSection
from .loading import model_source, prepare_tokenizer

if TYPE_CHECKING:
    from ..model_types import Model, Tokenizer

# unsloth takes explicit names; these are the linear projections of the
# Llama/Qwen/Mistral/Gemma/Phi-3 families it supports.
ALL_LINEAR_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_model(model_cfg: ModelSection, hardware: Hardware, *, template_path: Path | None = None) -> tuple[Model, Tokenizer]:
    import torch
    from unsloth import FastLanguageModel

    loading = model_loading(model_cfg, hardware)
    source = model_source(model_cfg.name)
    resolved: list[str] = []
    with cache_only_unless_reachable() as online:  # without network: the local cache at once, not a minute of retries
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=source,
            max_seq_length=model_cfg.max_seq_len,
            dtype=getattr(torch, loading.compute_dtype),
            load_in_4bit=loading.load_in_4bit,
            trust_remote_code=model_cfg.trust_remote_code,
            use_exact_model_name=True,
            local_files_only=not online,
            on_model_resolved=resolved.append,
        )
    if resolved and resolved[-1] != source:
        warn(f"unsloth loaded {resolved[-1]} for model.name = {model_cfg.name}")
    # Some unsloth versions return a processor for multimodal families; the text tokenizer is inside.
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return model, prepare_tokenizer(tokenizer, template_path, model_cfg.thinking)


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
