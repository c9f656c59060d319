"""Model loading backends: unsloth (GPU fast path) or hf (transformers + peft), behind one interface.

Each backend module provides the functions of `Backend`; the training run asks
`load_backend(name)` for one and never branches on which it got.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, cast, get_args

from ..errors import QloraError
from ..hardware import Hardware
from ..unsloth_setup import unsloth_import_problem

if TYPE_CHECKING:
    from ..model_types import Model, Tokenizer
    from ..recipe import LoraSection, ModelSection

BackendName = Literal["hf", "unsloth"]
"""A backend that can train: the recipe's "auto" becomes one of these (backend_capabilities.BACKENDS: a test checks)."""
BACKEND_NAMES: tuple[BackendName, ...] = get_args(BackendName)
BACKEND_FUNCTIONS = ("load_model", "attach_lora")


class Backend(Protocol):
    """What a training run needs from a backend (a module with these functions)."""

    def load_model(self, model_cfg: ModelSection, hardware: Hardware, *,
                   template_path: Path | None = None) -> tuple[Model, Tokenizer]:
        """The base model (4-bit where asked and possible) and its tokenizer with the run's chat template."""

    def attach_lora(self, model: Model, lora: LoraSection, *, seed: int, gradient_checkpointing: bool) -> Model:
        """A fresh LoRA adapter on the base, initialised from `seed`; only adapter weights train."""


def load_backend(name: str) -> Backend:
    """The backend module for "hf" or "unsloth" (imported here, so unsloth's import stays late and explicit)."""
    if name not in BACKEND_NAMES:
        raise QloraError(f"unknown backend {name!r}", where="[model] backend",
                         hint=f"use auto, {' or '.join(BACKEND_NAMES)}")
    module = importlib.import_module(f".{name}", __package__)
    missing = [function for function in BACKEND_FUNCTIONS if not callable(getattr(module, function, None))]
    if missing:  # a programming error, named instead of an AttributeError halfway through a run
        raise TypeError(f"qlora4080.backends.{name} does not implement {', '.join(missing)} of the Backend interface")
    return cast(Backend, module)


def choose_backend(requested: str, hardware: Hardware) -> tuple[BackendName, str]:
    """(backend, one-line reason) for the recipe's `model.backend`."""
    if requested == "hf":
        return "hf", "backend = hf in the recipe"
    if requested == "unsloth":
        if not hardware.is_cuda:
            raise QloraError(
                "backend = unsloth needs a CUDA GPU and none was found",
                hint="set model.backend = \"auto\" (or \"hf\") to run on this machine: --set model.backend=auto",
            )
        reason = _unsloth_problem()
        if reason:
            raise QloraError(f"backend = unsloth, but {reason}", hint="make venv GPU=1 (see qlora4080 doctor), or --set model.backend=hf")
        return "unsloth", "backend = unsloth in the recipe"
    if not hardware.is_cuda:
        return "hf", "no CUDA GPU, so transformers + peft on CPU (fp32)"
    reason = _unsloth_problem()
    if reason:
        return "hf", f"{reason}, so transformers + peft"
    return "unsloth", "CUDA GPU and unsloth available"


def _unsloth_problem() -> str | None:
    problem = unsloth_import_problem()  # imports it: it must patch transformers before anything imports them
    if problem == "not installed":
        return "unsloth is not installed"
    return f"unsloth {problem}" if problem else None
