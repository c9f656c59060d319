"""The byte terms of vram.py's estimate, measured on a live model and optimizer.

The estimate is arithmetic on architecture numbers; these functions count the
bytes a real model actually holds, by the same components, so the two can be
compared on any device (tests/test_vram_measured.py on the CPU, the GPU check
on a card). Tensors that share storage (tied embeddings, the 8-bit
optimizer's shared quantization maps) are counted once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .model_types import Model

LINEAR_4BIT = "linear layers (4-bit NF4)"
UNQUANTIZED = "unquantized weights (embeddings, head, norms, biases)"
LORA = "LoRA parameters"
GRADIENTS = "LoRA gradients"
OPTIMIZER = "optimizer states"


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of these tensors, each storage counted once."""
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def _quant_state_tensors(state: object) -> Iterator[torch.Tensor]:
    """The tensors of a bitsandbytes QuantState, its nested (double-quantization) state included."""
    import torch

    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            yield value
        elif type(value).__name__ == "QuantState":
            yield from _quant_state_tensors(value)


def weight_bytes(model: Model) -> dict[str, int]:
    """The base model's weights: 4-bit layers (packed weights + quantization constants) and everything else.

    LoRA parameters are left out (see `lora_bytes`).
    """
    quantized: list[torch.Tensor] = []
    rest: list[torch.Tensor] = []
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            continue
        state = getattr(parameter, "quant_state", None)
        if state is not None:
            quantized.append(parameter)
            quantized.extend(_quant_state_tensors(state))
        else:
            rest.append(parameter)
    parts = {UNQUANTIZED: unique_bytes(rest)}
    if quantized:
        parts[LINEAR_4BIT] = unique_bytes(quantized)
    return parts


def lora_bytes(model: Model) -> int:
    return unique_bytes(p for p in model.parameters() if p.requires_grad)


def gradient_bytes(model: Model) -> int:
    return unique_bytes(p.grad for p in model.parameters() if p.requires_grad and p.grad is not None)


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors (after at least one step)."""
    import torch

    return unique_bytes(value for state in optimizer.state.values() for value in state.values()
                        if isinstance(value, torch.Tensor))


def measure_training_bytes(model_dir: str, optimizer: str, lora_r: int = 16) -> dict[str, int]:
    """Load `model_dir` 4-bit for training as `train` does (CPU), attach LoRA, take one step; bytes by component."""
    import torch
    from transformers import Trainer, TrainingArguments

    from .backends import hf
    from .hardware import Hardware
    from .recipe import LoraSection, ModelSection

    model, _ = hf.load_model(ModelSection(name=model_dir, load_in_4bit=True), Hardware(device="cpu"), for_training=True)
    model = hf.attach_lora(model, LoraSection(r=lora_r, alpha=2 * lora_r, dropout=0.0), seed=0)
    measured: dict[str, int] = {**weight_bytes(model), LORA: lora_bytes(model)}
    ids = torch.randint(0, 1000, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    measured[GRADIENTS] = gradient_bytes(model)
    args = TrainingArguments(output_dir="unused", optim=optimizer, use_cpu=True, report_to="none")
    optimizer_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)  # what the trainer builds for `optim`
    stepper = optimizer_class([p for p in model.parameters() if p.requires_grad], **kwargs)
    stepper.step()
    measured[OPTIMIZER] = optimizer_bytes(stepper)
    return measured
