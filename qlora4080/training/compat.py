"""Where the locked trl/transformers name things differently from their neighbours, decided once.

Every mapping onto an SFTConfig field whose name moved between releases goes
through here, so the rest of the code speaks one vocabulary. The lock pins one
release; these helpers still read the installed class, so a deliberate bump of
the lock fails loudly in the contract tests instead of at a user's first step.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model_types import Model


@cache
def sft_config_fields() -> frozenset[str]:
    """Field names of the installed trl's SFTConfig (TrainingArguments' included)."""
    from trl import SFTConfig

    return frozenset(field.name for field in dataclasses.fields(SFTConfig))


def checkpointing_options(enabled: bool) -> dict[str, Any]:  # keywords whose names depend on the trl release
    """SFTConfig keywords that turn activation (gradient) checkpointing on or off.

    trl <= 1.15 (the release unsloth 2026.10 accepts) names it
    `gradient_checkpointing`, as transformers' TrainingArguments do; trl 1.16
    renamed it `activation_checkpointing`. Non-reentrant checkpointing is what
    peft adapters on a frozen base need (the reentrant kind drops their grads).
    """
    fields = sft_config_fields()
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    kwargs_name = f"{name}_kwargs"
    options: dict[str, Any] = {name: enabled}
    if kwargs_name in fields:
        options[kwargs_name] = {"use_reentrant": False} if enabled else None
    return options


def fused_loss_usable(model: Model) -> bool:
    """Whether trl's fused LM-head loss (a Triton kernel) can run for this model.

    trl 1.15's SFTTrainer computes every loss through that kernel. Triton ships
    with the CUDA builds of torch only, and its kernels need a GPU, so on a CPU
    (and wherever triton is missing) the trainer takes transformers' own causal
    LM loss instead: the same masked mean over trained tokens, with full logits.
    """
    from importlib.util import find_spec

    if find_spec("triton") is None:
        return False
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        return False
    return device.type in ("cuda", "xpu")


def ensure_log_prob_kernel() -> None:
    """Give trl's preference trainers a per-token log-probability function that runs on the tensors' device.

    trl 1.15 computes DPO's log-probabilities only through its Triton kernel
    (`trl.trainer.utils._ChunkedLogProbFunction`): `None` where Triton is not
    installed (DPOTrainer then fails on its first step), and a GPU-only kernel
    where it is, even when the model is on a CPU (Triton installs beside a CPU
    torch too, as unsloth requires). The function put in its place sends GPU
    tensors to the kernel and CPU tensors to the plain-PyTorch equivalent in
    plain_logprobs.py. Installed once per process.
    """
    from trl.trainer import utils as trl_utils

    from .plain_logprobs import DeviceLogProbs

    current = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if isinstance(current, DeviceLogProbs):
        return
    setattr(trl_utils, "_ChunkedLogProbFunction", DeviceLogProbs(current))  # noqa: B010  (mypy: a class cannot be reassigned)
