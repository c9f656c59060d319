"""The few architecture numbers the VRAM estimator needs, for bundled models (offline) or from a config.json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import QloraError


@dataclass(frozen=True)
class Architecture:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False
    fused_projections: bool = False
    """Phi-3: one qkv_proj and one gate_up_proj per layer instead of q/k/v and gate/up (same weights, fewer
    LoRA parameters: a LoRA's A matrix is shared by what would be three, or two, projections)."""
    norms_per_layer: int = 2
    """RMSNorms of hidden size in one decoder layer (Gemma-2 has four: before and after attention and MLP)."""

    def linear_shapes(self) -> list[tuple[str, int, int]]:
        """(name, in_features, out_features) of the linear projections in one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if self.fused_projections:
            return [
                ("qkv_proj", self.hidden, q + 2 * kv),
                ("o_proj", q, self.hidden),
                ("gate_up_proj", self.hidden, 2 * self.intermediate),
                ("down_proj", self.intermediate, self.hidden),
            ]
        return [
            ("q_proj", self.hidden, q),
            ("k_proj", self.hidden, kv),
            ("v_proj", self.hidden, kv),
            ("o_proj", q, self.hidden),
            ("gate_proj", self.hidden, self.intermediate),
            ("up_proj", self.hidden, self.intermediate),
            ("down_proj", self.intermediate, self.hidden),
        ]

    @property
    def linear_params(self) -> int:
        """Weights of all decoder linear layers (what 4-bit quantizes; their biases are not)."""
        return self.layers * sum(i * o for _, i, o in self.linear_shapes())

    @property
    def bias_params(self) -> int:
        """The q/k/v projections' biases (Qwen2), which stay unquantized."""
        return self.layers * (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0

    @property
    def embedding_params(self) -> int:
        """Input embedding plus the output head when it is not tied (both stay 16-bit under 4-bit)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def norm_params(self) -> int:
        return self.hidden * (self.norms_per_layer * self.layers + 1)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.bias_params + self.embedding_params + self.norm_params


QWEN3_4B = Architecture(36, 2560, 9728, 32, 8, 128, 151936, True)
QWEN25_7B = Architecture(28, 3584, 18944, 28, 4, 128, 152064, False, qkv_bias=True)
LLAMA31_8B = Architecture(32, 4096, 14336, 32, 8, 128, 128256, False)
PHI35_MINI = Architecture(32, 3072, 8192, 32, 32, 96, 32064, False, fused_projections=True)
GEMMA2_9B = Architecture(42, 3584, 14336, 16, 8, 256, 256000, True, norms_per_layer=4)
MISTRAL_7B = Architecture(32, 4096, 14336, 32, 8, 128, 32768, False)
SMOLLM2_135M = Architecture(30, 576, 1536, 9, 3, 64, 49152, True)

# Model ids (lower-case, org optional) -> architecture; every bundled recipe's model is here.
KNOWN: dict[str, Architecture] = {
    "qwen3-4b-instruct-2507": QWEN3_4B,
    "qwen3-4b-instruct-2507-bnb-4bit": QWEN3_4B,
    "qwen2.5-7b-instruct": QWEN25_7B,
    "qwen2.5-7b-instruct-bnb-4bit": QWEN25_7B,
    # the R1 distill of Qwen2.5-Math-7B keeps its base's shape
    "deepseek-r1-distill-qwen-7b": QWEN25_7B,
    "deepseek-r1-distill-qwen-7b-bnb-4bit": QWEN25_7B,
    "deepseek-r1-distill-qwen-7b-unsloth-bnb-4bit": QWEN25_7B,
    "meta-llama-3.1-8b-instruct": LLAMA31_8B,
    "llama-3.1-8b-instruct": LLAMA31_8B,
    "meta-llama-3.1-8b-instruct-bnb-4bit": LLAMA31_8B,
    "phi-3.5-mini-instruct": PHI35_MINI,
    "phi-3.5-mini-instruct-bnb-4bit": PHI35_MINI,
    "gemma-2-9b-it": GEMMA2_9B,
    "gemma-2-9b-it-bnb-4bit": GEMMA2_9B,
    "mistral-7b-instruct-v0.3": MISTRAL_7B,
    "mistral-7b-instruct-v0.3-bnb-4bit": MISTRAL_7B,
    "builtin:smollm2-135m-instruct": SMOLLM2_135M,
}


def from_config(config: Mapping[str, Any]) -> Architecture:
    """Read the numbers from a transformers config.json (Llama, Qwen, Mistral, Gemma, Phi-3 families)."""
    text = config.get("text_config", config)  # multimodal wrappers keep the language model inside
    try:
        hidden = text["hidden_size"]
        heads = text["num_attention_heads"]
        return Architecture(
            layers=text["num_hidden_layers"],
            hidden=hidden,
            intermediate=text["intermediate_size"],
            heads=heads,
            kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or hidden // heads,
            vocab=text["vocab_size"],
            tied_embeddings=bool(text.get("tie_word_embeddings", False)),
            qkv_bias=bool(text.get("attention_bias", False)) or text.get("model_type") == "qwen2",
            fused_projections=text.get("model_type") == "phi3",
            norms_per_layer=4 if text.get("model_type") in ("gemma2", "gemma3_text") else 2,
        )
    except KeyError as exc:
        raise QloraError(f"config.json lacks {exc.args[0]!r}, so memory cannot be estimated") from exc


def lookup(model_name: str) -> Architecture | None:
    """Architecture of a model without any network: the table, or a local folder's config.json."""
    key = model_name.lower()
    if key in KNOWN:
        return KNOWN[key]
    short = key.rsplit("/", 1)[-1]
    if short in KNOWN:
        return KNOWN[short]
    config = Path(model_name).expanduser() / "config.json"
    if config.is_file():
        return from_config(json.loads(config.read_text(encoding="utf-8")))
    return None


def resolve(model_name: str) -> Architecture:
    """lookup(), then the hub's config.json (network needed); a clear error when neither works."""
    found = lookup(model_name)
    if found is not None:
        return found
    from .hub import cache_only_unless_reachable

    try:
        from huggingface_hub import hf_hub_download

        with cache_only_unless_reachable():  # a cached config.json still works offline
            path = hf_hub_download(model_name, "config.json")
    except Exception as exc:  # offline, gated, missing: all mean "no numbers"
        raise QloraError(
            f"no architecture numbers for '{model_name}' (not in the built-in table, and its config.json could not be fetched: {type(exc).__name__})",
            hint="point model.name at a local folder with config.json, or connect to the network once",
        ) from exc
    return from_config(json.loads(Path(path).read_text(encoding="utf-8")))
