"""trl's per-token log-probability kernel, in plain PyTorch, for tensors Triton cannot take.

trl 1.15 computes DPO's log-probabilities (policy and reference) only through
a Triton kernel (`trl.kernels.ChunkedLogProbFunction`): it leaves it `None`
where Triton is missing, so DPOTrainer fails on every CPU-only machine with
"'NoneType' object has no attribute 'apply'", and where Triton is installed
the kernel is called on CPU tensors too, and fails. This module computes the
same outputs from full logits with ordinary autograd: more memory than the
tiled kernel (the logits of a batch at once), which is what a CPU run can
afford; `DeviceLogProbs` picks the kernel for GPU tensors and this for the rest.
"""

from __future__ import annotations

import torch

OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


class PlainLogProbs:
    """Drop-in for the kernel's `apply`: the same arguments, the same five outputs (None where not asked)."""

    @staticmethod
    def apply(
        hidden: torch.Tensor,  # [N, H]
        weight: torch.Tensor,  # [V, H]
        bias: torch.Tensor | None,
        targets: torch.Tensor,  # [N]
        temperature: float,
        chunk_size: int,
        final_logit_softcapping: float | None = None,
        logit_scale: float = 1.0,
        outputs: tuple[str, ...] = OPTIONAL_OUTPUTS,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        del chunk_size  # the kernel's tiling; full logits here
        logits = hidden.float() @ weight.float().t()
        if bias is not None:
            logits = logits + bias.float()
        logits = logits * logit_scale
        if final_logit_softcapping is not None:
            logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
        logits = logits / temperature
        log_z = torch.logsumexp(logits, dim=-1)
        target = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        log_probs = target - log_z
        entropy = None
        if "entropy" in outputs:
            entropy = log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        with torch.no_grad():
            detached = logits.detach()
            log_sum_sq = (torch.logsumexp(2 * (detached - log_z.detach().unsqueeze(-1)), dim=-1)
                          if "log_sum_sq_probs" in outputs else None)
            mean_logits = detached.mean(-1) if "mean_logits" in outputs else None
            # argmax returns the first maximum: a tie with an earlier token is not a top-1 prediction (as in the kernel)
            is_top1 = detached.argmax(-1) == targets if "is_top1" in outputs else None
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1


class DeviceLogProbs:
    """trl's kernel for CUDA/XPU tensors (when trl has it), PlainLogProbs for every other device."""

    def __init__(self, kernel: object | None):
        self.kernel = kernel
        """trl's Triton kernel class, or None where Triton is not installed."""

    def apply(self, hidden: torch.Tensor, *args: object) -> object:
        if self.kernel is not None and hidden.device.type in ("cuda", "xpu"):
            return self.kernel.apply(hidden, *args)  # type: ignore[attr-defined]  # a torch.autograd.Function
        return PlainLogProbs.apply(hidden, *args)  # type: ignore[arg-type]  # the kernel's own argument list
