"""Out of GPU memory: what was seen, and what to change first, as --set overrides."""

from __future__ import annotations

from ..errors import QloraError
from ..recipe import Recipe
from ..vram import GiB


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def oom_advice(recipe: Recipe) -> list[str]:
    """Ordered: shorter sequences, batch 1 with more accumulation, smaller LoRA rank, less evaluation."""
    t, advice = recipe.training, []
    seq = recipe.model.max_seq_len
    if seq > 256:
        advice.append(f"--set model.max_seq_len={max(256, seq // 2)}")
    if t.batch_size > 1:
        advice.append(f"--set training.batch_size=1 --set training.grad_accum={t.grad_accum * t.batch_size}")
    if recipe.lora.r > 4:
        advice.append(f"--set lora.r={recipe.lora.r // 2} --set lora.alpha={max(1, recipe.lora.alpha // 2)}")
    if t.eval_steps > 0:
        advice.append(f"--set training.eval_steps={t.eval_steps * 4}")
    if not recipe.model.load_in_4bit:
        advice.append("--set model.load_in_4bit=true")
    return advice


def out_of_memory_error(recipe: Recipe, step: int, peak_bytes: int | None, total_bytes: int | None) -> QloraError:
    seen = ""
    if peak_bytes:
        seen = f"; peak seen {peak_bytes / GiB:.2f} GiB" + (f" of {total_bytes / GiB:.1f} GiB" if total_bytes else "")
    advice = oom_advice(recipe)
    lines = "\n".join(f"  {i}. {a}" for i, a in enumerate(advice, start=1))
    return QloraError(
        f"out of GPU memory at step {step}{seen}",
        hint=f"try these in order (add them to the train command, or change the recipe):\n{lines}" if advice else "pick a smaller model",
        exit_code=3,
    )
