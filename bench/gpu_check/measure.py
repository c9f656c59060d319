"""What every training case measures the same way: data, step clock, memory, greedy answers, logits.

Timing: the wall time between the ends of consecutive optimizer steps (CUDA
synchronised first), so a step includes its data loading and logging. The
first step pays for CUDA kernel selection, allocator growth and lazy init; it
is reported but left out of the mean and of tokens/s.
"""

from __future__ import annotations

import math
import os
import sys
import time
from statistics import mean
from typing import Any

GiB = 2**30
PROMPT = "Name three primary colours."
NEW_TOKENS = 16
FIRST_ID = 100  # random tokens start above the tokenizer's special tokens


def synthetic_dataset(rows: int, seq_len: int, id_limit: int, seed: int = 0) -> Any:
    """Random token sequences of exactly seq_len tokens, labels = input_ids (every token trained, no padding)."""
    import torch
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_ID, id_limit, (rows, seq_len), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * seq_len for _ in ids], "labels": ids})


def random_batch(rows: int, length: int, id_limit: int, seed: int) -> Any:
    import torch

    return torch.randint(FIRST_ID, id_limit, (rows, length), generator=torch.Generator().manual_seed(seed))


def step_clock(cuda: bool) -> Any:
    """A TrainerCallback that records step end times, losses and grad norms (built late: transformers is heavy)."""
    import torch
    from transformers import TrainerCallback

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.losses: list[float] = []
            self.grad_norms: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.marks = [now()]

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.marks.append(now())

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))
                if logs.get("grad_norm") is not None:
                    self.grad_norms.append(float(logs["grad_norm"]))

    return StepClock()


def timing(clock: Any, tokens_per_step: int) -> dict[str, Any]:
    steps = [round(b - a, 4) for a, b in zip(clock.marks, clock.marks[1:])]
    timed = steps[1:]  # the first step is warm-up
    step_s = mean(timed) if timed else None
    losses = clock.losses
    return {
        "step_seconds": steps,
        "mean_step_s_excl_first": round(step_s, 4) if step_s else None,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": round(tokens_per_step / step_s, 1) if step_s else None,
        "losses": losses,
        "grad_norms": clock.grad_norms,
        "losses_finite": bool(losses) and all(math.isfinite(x) for x in losses),
    }


def reset_peak(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(cuda: bool) -> dict[str, float | None]:
    if not cuda:
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    import torch

    torch.cuda.synchronize()
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GiB, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GiB, 3)}


def allocated_gib(cuda: bool) -> float | None:
    if not cuda:
        return None
    import torch

    return round(torch.cuda.memory_allocated() / GiB, 3)


def estimate_error_pct(estimate_gib: float | None, peak_reserved_gib: float | None) -> float | None:
    """How far the estimate is from the measured peak, in % of the peak (positive: the estimate is high)."""
    if not estimate_gib or not peak_reserved_gib:
        return None
    return round(100 * (estimate_gib - peak_reserved_gib) / peak_reserved_gib, 1)


def estimate_fields(arch: Any, shape: Any, peak_reserved_gib: float | None) -> dict[str, Any]:
    """The project's estimate for this shape, next to the measured peak (error in % of the measurement)."""
    from dataclasses import asdict

    from qlora4080.vram import estimate

    result = estimate(arch, shape)
    return {"estimate_gib": round(result.total_gib, 3), "estimate_error_pct": estimate_error_pct(result.total_gib, peak_reserved_gib),
            "estimate_parts_gib": {k: round(v / GiB, 3) for k, v in result.parts.items()},
            "estimate_shape": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(shape).items()}}


def prompt_ids(tokenizer: Any) -> list[int]:
    from qlora4080.data.render import render_prompt

    return render_prompt([{"role": "user", "content": PROMPT}], tokenizer)


def greedy_ids(model: Any, ids: list[int], pad_id: int | None) -> list[int]:
    """Exactly NEW_TOKENS greedy tokens (EOS suppressed, so two runs always compare the same length)."""
    import torch

    input_ids = torch.tensor([ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=pad_id)
    return out[0, len(ids):].tolist()


def logits(model: Any, input_ids: Any) -> Any:
    """Full logits, fp32 on the CPU, for comparing two models on the same input."""
    import torch

    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.tensor([input_ids])
    with torch.inference_mode():
        return model(input_ids=input_ids.to(model.device)).logits.float().cpu()


def max_diff(a: Any, b: Any) -> float:
    return float((a - b).abs().max())


ALLOC_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
"""torch reads either (the second is the newer name); unsloth sets expandable_segments in them when it is imported."""


def alloc_conf() -> dict[str, str]:
    """The allocator settings this process has now: the parent sets the same ones for every case; a case records them
    when it starts and when it ends, so one that changed them (unsloth's import) shows in the report."""
    return {name: os.environ.get(name, "unset") for name in ALLOC_VARIABLES}


def apply_vram_cap(cap_gib: float) -> dict[str, Any]:
    """Let this process's allocator hold at most what a card of `cap_gib` leaves after the CUDA context.

    torch.cuda.set_per_process_memory_fraction limits what the caching allocator takes from the card; the CUDA
    context (which the estimate counts as 0.5 GiB) sits outside it, so the allocator gets the card less that. A
    run that fits under it fits the smaller card, measured rather than assumed.
    """
    import torch

    from qlora4080.vram import CUDA_CONTEXT_BYTES

    if cap_gib <= 0 or not torch.cuda.is_available():
        return {"vram_cap_gib": None}
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, (cap_gib * GiB - CUDA_CONTEXT_BYTES) / total)
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    # Proof that the limit holds with this allocator configuration: a block just over it must be refused.
    try:
        probe = torch.empty(int(fraction * total) + 256 * 2**20, dtype=torch.uint8, device="cuda")
        enforced = False
        del probe
    except torch.OutOfMemoryError:
        enforced = True
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()  # the probe is not the command's memory
    return {"vram_cap_gib": cap_gib, "vram_cap_fraction": round(fraction, 5),
            "allocator_limit_gib": round(fraction * total / GiB, 3), "vram_cap_enforced": enforced}


def loss_path(trainer: Any, model: Any) -> dict[str, Any]:
    """Where the loss is computed in this process, read off the objects that trained (not what the backend promises).

    unsloth replaces the model class's forward with its own (fused cross-entropy, chunked or cut-cross-entropy) and
    the trainer with a rewritten one; trl's SFTTrainer may compute the loss itself from hidden states. The
    qualified names say which ran.
    """

    def where(function: Any) -> str:
        function = getattr(function, "__func__", function)
        return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(function).__name__)}"

    base = model
    for attribute in ("base_model", "model"):  # PeftModel -> LoraModel -> the causal LM
        base = getattr(base, attribute, base)
    found: dict[str, Any] = {
        "trainer": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
        "compute_loss": where(type(trainer).compute_loss),
        "causal_lm": f"{type(base).__module__}.{type(base).__qualname__}",
        "causal_lm_forward": where(type(base).forward),
    }
    try:
        found["loss_function"] = where(base.loss_function)  # transformers' loss for this model class
    except (AttributeError, KeyError, ValueError):
        found["loss_function"] = None
    zoo = sys.modules.get("unsloth_zoo.loss_utils")
    if zoo is not None:
        found["unsloth_cut_cross_entropy"] = bool(getattr(zoo, "HAS_CUT_CROSS_ENTROPY", False))
    return found
