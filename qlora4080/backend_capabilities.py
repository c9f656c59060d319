"""What each training backend can do, declared once: callers ask a capability, never a backend's name.

The recipe's `model.backend` choices, the run plan (packing), the trainer
arguments (who applies gradient checkpointing), the launch checks (sharding),
continuing from an adapter and the memory estimate (how weights and logits
are held) all read this table. tests/test_backend_capabilities.py checks that each entry
names a module that implements the Backend interface, and that each claim is
what the code does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    summary: str
    """One line for the recipe's help and `qlora4080 doctor`."""
    needs_cuda: bool
    """Trains only on a CUDA GPU."""
    packs_rows: bool
    """data.packing: short conversations packed into one row with a block-diagonal mask."""
    continues_adapter: bool
    """model.adapter: loads a trained adapter, trainable, to continue from (DPO/KTO after SFT)."""
    owns_gradient_checkpointing: bool
    """Applies gradient checkpointing itself when the adapter is attached (the trainer must not apply it again)."""
    shardable: bool
    """Trains under FSDP or DeepSpeed sharding (not only plain DDP)."""
    keeps_embeddings_16bit: bool
    """With 4-bit weights, embeddings, head and biases stay 16-bit (peft otherwise upcasts them to fp32)."""
    logits_bytes: int
    """Bytes per token and vocabulary entry that the logits and the loss hold at their peak."""


BACKENDS: dict[str, Capabilities] = {
    "hf": Capabilities(
        summary="transformers + peft + bitsandbytes: every device, every feature",
        needs_cuda=False, packs_rows=True, continues_adapter=True, owns_gradient_checkpointing=False,
        shardable=True, keeps_embeddings_16bit=False, logits_bytes=10,  # bf16 logits, their fp32 upcast in the loss
    ),
    "unsloth": Capabilities(
        summary="unsloth's patched kernels on a CUDA GPU: faster, less memory",
        needs_cuda=True, packs_rows=False, continues_adapter=False, owns_gradient_checkpointing=True,
        shardable=False, keeps_embeddings_16bit=True, logits_bytes=4,  # its fused cross-entropy works in chunks
    ),
}
"""The backends that can train, each a module qlora4080/backends/<name>.py."""


def capabilities(name: str) -> Capabilities:
    """What backend `name` can do (a name the recipe or the plan has already checked)."""
    return BACKENDS[name]


def backends_that(claim: str) -> list[str]:
    """The backends whose capability `claim` (a field of Capabilities) is true: for messages."""
    return [name for name, declared in BACKENDS.items() if getattr(declared, claim)]
