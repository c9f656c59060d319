"""Can this recipe train on this hardware? Judged before any model loads.

`train` calls `training_blockers` first, so a run that cannot work stops in a
second with what to do, instead of after a download. It imports at most
unsloth (first, as training would) and bitsandbytes, never transformers, trl
or peft: on the unsloth path those must be imported after unsloth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..hardware import Hardware, has_module
from .packages import FIX, FIX_GPU, REQUIRED

if TYPE_CHECKING:
    from ..backends import BackendName
    from ..recipe import Recipe


@dataclass(frozen=True)
class Problem:
    message: str
    """What is wrong, in one line."""
    hint: str
    """What to do about it."""

    def __str__(self) -> str:
        return f"{self.message} (what to do: {self.hint})"


@dataclass(frozen=True)
class TrainingPlan:
    backend: BackendName | None
    """"unsloth" or "hf"; None when a blocker stops training."""
    reason: str
    """Why that backend (or why none)."""
    blockers: list[Problem] = field(default_factory=list)
    """Training cannot run until these are fixed."""
    warnings: list[Problem] = field(default_factory=list)
    """Training runs, differently from what the recipe asks."""


def training_blockers(recipe: Recipe, hardware: Hardware) -> list[Problem]:
    """What makes training `recipe` on `hardware` impossible; empty when it can run."""
    return plan_training(recipe.model.backend, recipe.model.load_in_4bit, hardware).blockers


def plan_training(backend: str, load_in_4bit: bool, hardware: Hardware) -> TrainingPlan:
    """The backend `train` would pick for `model.backend` / `model.load_in_4bit`, and what stands in the way."""
    from ..backends import choose_backend
    from ..errors import QloraError

    missing = [name for name in REQUIRED if not has_module(name)]
    if missing:
        what = f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
        return TrainingPlan(None, what, [Problem(what, FIX)])
    try:
        # The same choice train makes (on the unsloth path this is where unsloth is imported).
        chosen, reason = choose_backend(backend, hardware)
    except QloraError as error:
        message = error.message.strip().splitlines()[0]
        hint = error.hint or FIX_GPU
        if not hardware.is_cuda:
            hint += f"; or train on a CUDA machine set up with {FIX_GPU}"
        return TrainingPlan(None, message, [Problem(message, hint)])
    blockers, warnings = [], []
    if load_in_4bit and not has_module("bitsandbytes"):
        # plan.model_loading loads the weights unquantized then: the run works, with more memory.
        warnings.append(Problem("load_in_4bit = true, but bitsandbytes is not installed: the model loads unquantized "
                                "(more memory)", f"{FIX}, or --set model.load_in_4bit=false"))
    elif load_in_4bit and hardware.is_cuda:  # on a CPU bitsandbytes quantizes with its CPU backend
        from .gpu_stack import bitsandbytes_problem

        problem = bitsandbytes_problem()
        if problem:
            blockers.append(Problem(f"load_in_4bit = true on the {chosen} backend, but {problem}",
                                    f"reinstall with {FIX_GPU}, or --set model.load_in_4bit=false"))
    return TrainingPlan(None if blockers else chosen, reason, blockers, warnings)
