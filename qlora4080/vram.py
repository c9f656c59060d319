"""Pure arithmetic: will this recipe fit this card? No torch, no weights.

Peak training memory = weights + LoRA parameters + their gradients + optimizer
states + activations + logits + CUDA overhead. Assumptions, each a constant
below so they can be calibrated against measurements:

- 4-bit NF4 with double quantization: 0.5 byte a weight, one 8-bit scale per
  64 weights and one fp32 scale per 256 of those. The rest (embeddings, the
  output head, norms, biases) is fp32 on the hf backend, where peft's
  prepare_model_for_kbit_training upcasts everything that is not 4-bit; unsloth
  upcasts only the norms and keeps embeddings and head in the compute dtype.
- LoRA weights and their gradients in fp32. AdamW keeps two fp32 states a
  weight; 8-bit AdamW (bitsandbytes) two uint8 states plus an fp32 scale per
  256, except for tensors under 4096 elements, which keep fp32 states.
These byte terms are checked against the bytes a real model holds (CPU, the
built-in model and random-weight models of the bundled families) in
tests/test_vram_measured.py.
- Activations in 16-bit with SDPA/flash attention (no seq x seq matrix). A
  decoder layer keeps about (12 h + 2 kv + 5 i) values a token for backward
  (norm outputs, q/k/v/o, the MLP's gate/up/act/product, the LoRA dropout
  copies). With gradient checkpointing only each layer's input (h values a
  token) is kept, plus one layer recomputed during backward.
- Logits: the hf path holds b x s x vocab in 16-bit plus fp32 copies for the
  loss and its gradient (10 bytes an entry); unsloth computes the loss in
  chunks (about 4 bytes an entry).
- CUDA context and allocator slack: 0.5 GiB + 8% of everything else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .architectures import Architecture
from .backend_capabilities import capabilities

GiB = 2**30
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
NF4_BYTES_PER_MATRIX = 256 * 4 + 16 * 4 + 4
"""Each 4-bit matrix also keeps its own code tables (256 fp32 for the scales' 8-bit code, 16 for NF4) and an offset."""
FP32 = 4
ADAMW_STATE_BYTES = 8
"""torch AdamW: exp_avg and exp_avg_sq in fp32."""
EIGHT_BIT_STATE_BYTES = 2 + 2 * 4 / 256
"""bitsandbytes' 8-bit AdamW: two uint8 states and two fp32 scales per block of 256."""
EIGHT_BIT_MIN_SIZE = 4096
"""bitsandbytes keeps fp32 states for tensors smaller than this (its min_8bit_size)."""
EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")
CUDA_CONTEXT_BYTES = 0.5 * GiB
ALLOCATOR_SLACK = 0.08


@dataclass(frozen=True)
class GenerationShape:
    """A method that samples its training answers (grpo): what the generation before each step holds."""

    answers_per_prompt: int
    """Answers sampled to each prompt, generated together with the batch's other prompts' answers."""
    answer_tokens: int
    """Most tokens generated per answer."""
    answers_key: str
    """The recipe key of answers_per_prompt (e.g. "grpo.num_generations"), for the fixes the preflight prints."""
    answer_tokens_key: str
    """The recipe key of answer_tokens (e.g. "grpo.max_completion_length")."""


@dataclass(frozen=True)
class TrainingShape:
    """The recipe values that decide memory."""

    batch_size: int
    seq_len: int
    load_in_4bit: bool = True
    weight_bytes: int = 2
    """Bytes per value of the compute dtype (2 for bf16/fp16, 4 for fp32): every weight when not 4-bit."""
    lora_r: int = 16
    lora_targets: tuple[str, ...] | str = "all-linear"
    gradient_checkpointing: bool = True
    optimizer: str = "adamw_8bit"
    backend: str = "hf"
    sequences_per_row: int = 1
    """2 for preference tuning: a pair's chosen and rejected answers go through the model in one batch."""
    reference_adapter: bool = False
    """Preference tuning from a trained adapter keeps a frozen copy of it as the reference policy."""
    generation: GenerationShape | None = None
    """Answers sampled before each step (grpo): a batch row is then one prompt's answers, sequences_per_row of them."""


@dataclass
class Estimate:
    parts: dict[str, float] = field(default_factory=dict)
    """Bytes per component, in the order they are shown."""

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def total_gib(self) -> float:
        return self.total / GiB


def lora_tensor_sizes(arch: Architecture, r: int, targets: tuple[str, ...] | str) -> list[int]:
    """Elements of each LoRA matrix (A: r x in, B: out x r) over the whole model."""
    chosen = [s for s in arch.linear_shapes() if targets == "all-linear" or s[0] in targets]
    return [size for _, i, o in chosen for size in (r * i, r * o)] * arch.layers


def lora_params(arch: Architecture, r: int, targets: tuple[str, ...] | str) -> int:
    return sum(lora_tensor_sizes(arch, r, targets))


def optimizer_state_bytes(tensor_sizes: list[int], optimizer: str) -> float:
    """Bytes of AdamW state for trainable tensors of these sizes."""
    if optimizer not in EIGHT_BIT_OPTIMIZERS:
        return sum(tensor_sizes) * ADAMW_STATE_BYTES
    return sum(n * (EIGHT_BIT_STATE_BYTES if n >= EIGHT_BIT_MIN_SIZE else ADAMW_STATE_BYTES) for n in tensor_sizes)


def weight_parts(arch: Architecture, shape: TrainingShape) -> dict[str, float]:
    """Bytes of the base model's weights, by how they are stored."""
    if not shape.load_in_4bit:
        return {f"weights ({8 * shape.weight_bytes}-bit)": arch.total_params * shape.weight_bytes}
    if capabilities(shape.backend).keeps_embeddings_16bit:
        rest = (arch.embedding_params + arch.bias_params) * shape.weight_bytes + arch.norm_params * FP32
        label = f"embeddings and head ({8 * shape.weight_bytes}-bit), norms (fp32)"
    else:
        rest = (arch.embedding_params + arch.bias_params + arch.norm_params) * FP32
        label = "embeddings, head and norms (fp32: peft upcasts them)"
    matrices = arch.layers * len(arch.linear_shapes())
    return {"linear layers (4-bit NF4)": arch.linear_params * NF4_BYTES_PER_WEIGHT + matrices * NF4_BYTES_PER_MATRIX,
            label: rest}


def activation_bytes(arch: Architecture, shape: TrainingShape) -> float:
    tokens = shape.batch_size * shape.sequences_per_row * shape.seq_len
    kv = arch.kv_heads * arch.head_dim
    per_layer = tokens * (12 * arch.hidden + 2 * kv + 5 * arch.intermediate) * 2
    if shape.gradient_checkpointing:
        return arch.layers * tokens * arch.hidden * 2 + per_layer
    return arch.layers * per_layer


def estimate(arch: Architecture, shape: TrainingShape) -> Estimate:
    """Peak memory of one training step, by component (bytes)."""
    sizes = lora_tensor_sizes(arch, shape.lora_r, shape.lora_targets)
    adapter = sum(sizes)
    parts = {
        **weight_parts(arch, shape),
        "LoRA parameters (fp32)": adapter * FP32,
        "LoRA gradients (fp32)": adapter * FP32,
        f"optimizer states ({shape.optimizer})": optimizer_state_bytes(sizes, shape.optimizer),
        f"activations ({'checkpointed' if shape.gradient_checkpointing else 'all layers kept'})": activation_bytes(arch, shape),
        "logits and loss": (shape.batch_size * shape.sequences_per_row * shape.seq_len * arch.vocab
                            * capabilities(shape.backend).logits_bytes),
    }
    if shape.reference_adapter:
        parts["reference adapter (frozen copy)"] = adapter * FP32
    if shape.generation is not None:
        # Sampling runs before the training pass, without gradients: its KV cache and the sampler's logits are
        # held while activations are not, so only what exceeds the training pass adds to the peak.
        sequences = shape.batch_size * shape.generation.answers_per_prompt
        kv_cache = arch.layers * 2 * arch.kv_heads * arch.head_dim * shape.weight_bytes * sequences * shape.seq_len
        sampling = sequences * arch.vocab * FP32 * 2  # one position's logits and their softmax, per answer
        training_pass = sum(value for key, value in parts.items() if key.startswith(("activations", "logits")))
        parts[f"generation beyond the training pass (KV cache of {sequences} answers)"] = max(
            0.0, kv_cache + sampling - training_pass)
    subtotal = sum(parts.values())
    parts["CUDA context + allocator slack"] = CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * subtotal
    return Estimate(parts)


def fit_overrides(arch: Architecture, shape: TrainingShape, budget_bytes: float, grad_accum: int) -> list[str] | None:
    """`--set` overrides, in the order to try them, that bring the estimate under budget; None if nothing does.

    Order: fewer sampled answers per prompt (grpo), lower max_seq_len, then batch 1
    with more grad-accum (same effective batch), then gradient checkpointing,
    then a smaller LoRA rank, then 4-bit.
    """
    if estimate(arch, shape).total <= budget_bytes:
        return []
    overrides: dict[str, str] = {}
    # Each step: the recipe overrides to print, and the same change to the shape being estimated.
    steps: list[tuple[dict[str, str], Callable[[TrainingShape], TrainingShape]]] = []
    # a sampled answer keeps its room: max_seq_len is prompt + answer (recipes refuse less than 8 prompt tokens)
    answer_room = shape.generation.answer_tokens + 64 if shape.generation is not None else 0
    for seq in (1536, 1024, 768, 512):
        if answer_room <= seq < shape.seq_len:
            steps.append(({"model.max_seq_len": str(seq)}, functools.partial(replace, seq_len=seq)))
    if shape.batch_size > 1:
        steps.append((
            {"training.batch_size": "1", "training.grad_accum": str(grad_accum * shape.batch_size)},
            functools.partial(replace, batch_size=1),
        ))
    if not shape.gradient_checkpointing:
        steps.append(({"training.gradient_checkpointing": "true"}, functools.partial(replace, gradient_checkpointing=True)))
    for r in (8, 4):
        if r < shape.lora_r:
            steps.append(({"lora.r": str(r), "lora.alpha": str(2 * r)}, functools.partial(replace, lora_r=r)))
    if not shape.load_in_4bit:
        steps.append(({"model.load_in_4bit": "true"}, functools.partial(replace, load_in_4bit=True)))
    if shape.generation is not None:  # first fewer answers per prompt (4, then 2): each is a sequence of the batch
        fewer = [n for n in (4, 2) if n < shape.generation.answers_per_prompt]
        steps[:0] = [({shape.generation.answers_key: str(n)}, functools.partial(_answers_per_prompt, answers=n))
                     for n in fewer]
    current = shape
    for settings, change in steps:
        current = change(current)
        overrides.update(settings)
        if estimate(arch, current).total <= budget_bytes:
            return [f"--set {key}={value}" for key, value in overrides.items()]
    return None


def _answers_per_prompt(shape: TrainingShape, answers: int) -> TrainingShape:
    assert shape.generation is not None  # only offered for a shape that samples its answers
    return replace(shape, sequences_per_row=answers, generation=replace(shape.generation, answers_per_prompt=answers))
