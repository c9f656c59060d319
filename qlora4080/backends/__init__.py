"""Model loading backends. Chosen by a plain `if`: unsloth (GPU fast path) or hf (transformers + peft)."""

from __future__ import annotations

from ..errors import QloraError
from ..hardware import Hardware, has_module


def choose_backend(requested: str, hardware: Hardware) -> tuple[str, str]:
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
            raise QloraError(f"backend = unsloth, but {reason}", hint="pip install 'qlora4080[gpu]', or --set model.backend=hf")
        return "unsloth", "backend = unsloth in the recipe"
    if not hardware.is_cuda:
        return "hf", "no CUDA GPU, so transformers + peft on CPU (fp32)"
    reason = _unsloth_problem()
    if reason:
        return "hf", f"{reason}, so transformers + peft"
    return "unsloth", "CUDA GPU and unsloth available"


def _unsloth_problem() -> str | None:
    if not has_module("unsloth"):
        return "unsloth is not installed"
    try:
        import unsloth  # noqa: F401  (must be imported before transformers to patch it)
    except Exception as exc:  # unsloth raises many kinds of errors on unsupported set-ups
        return f"unsloth failed to import ({type(exc).__name__}: {exc})"
    return None
