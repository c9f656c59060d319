"""One resolved plan: what a recipe's "auto" values become on a machine, decided once.

The model loader, the memory preflight, the trainer arguments, train.log,
summary.json and the checkpoint's metadata all read the same `RunPlan`, so
they cannot disagree. (They used to: the preflight assumed 8-bit AdamW where
the trainer fell back to torch AdamW, and a CPU run asked for 4-bit was
recorded as 4-bit although it loaded fp32.)

Device defaults, and why:
- compute dtype: fp32 on a CPU (bf16 autocast there was measured ~17x slower),
  bf16 on GPUs that have it, else fp16.
- 4-bit NF4 (QLoRA) wherever the recipe asks and bitsandbytes is installed:
  bitsandbytes >= 0.49 quantizes and trains on the CPU too.
- optimizer: 8-bit AdamW on CUDA (a quarter of AdamW's state), torch AdamW on a
  CPU, where a LoRA's optimizer state is small and 8-bit AdamW only adds work.
- gradient checkpointing on CUDA (memory), off on a CPU (it only costs time).
- padding-free batching: always off, said explicitly. unsloth's SFTTrainer
  turns it on whenever it is left unset and then drops `max_length`;
  transformers' sdpa/eager attention does not keep padding-free rows apart.
  `data.packing` (a block-diagonal mask, hf backend) is the way to fill rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .backend_capabilities import backends_that, capabilities
from .errors import QloraError
from .hardware import Hardware, has_module
from .vram import EIGHT_BIT_OPTIMIZERS

if TYPE_CHECKING:
    from .backends import BackendName
    from .recipe import ModelSection, Recipe

ComputeDtype = Literal["float32", "bfloat16", "float16"]
Quantization = Literal["nf4"]
A_16GB_CUDA_CARD = Hardware(device="cuda", gpu_name="a 16 GB card", gpu_total_bytes=16 * 10**9, bf16_supported=True)
"""The card a recipe is planned for when the preflight runs on a machine without CUDA."""


@dataclass(frozen=True)
class ModelLoading:
    """How the base model's weights are loaded: the part of a plan that inference shares with training."""

    device: Literal["cuda", "cpu"]
    compute_dtype: ComputeDtype
    quantization: Quantization | None
    """"nf4": the decoder's linear layers are 4-bit NF4 (bitsandbytes, double quantization); None: all in compute_dtype."""
    notes: tuple[str, ...] = ()
    """Where this differs from what the recipe asked, and why."""

    @property
    def load_in_4bit(self) -> bool:
        return self.quantization is not None

    def describe(self) -> str:
        weights = "4-bit NF4 linear layers (bitsandbytes)" if self.quantization else f"{self.compute_dtype} weights"
        return f"{weights}, {self.compute_dtype} compute on {self.device}"


@dataclass(frozen=True)
class RunPlan:
    """Everything a training run decides from the recipe and the machine before it loads anything."""

    backend: BackendName
    loading: ModelLoading
    optimizer: str
    gradient_checkpointing: bool
    packing: bool
    """Short conversations packed into max_seq_len rows with a block-diagonal mask (hf backend only)."""
    padding_free: bool
    """TRL's padding-free batching; always False (see the module docstring), stated so no library decides it."""
    notes: tuple[str, ...] = ()

    @property
    def device(self) -> Literal["cuda", "cpu"]:
        return self.loading.device

    @property
    def bf16(self) -> bool:
        return self.device == "cuda" and self.loading.compute_dtype == "bfloat16"

    @property
    def fp16(self) -> bool:
        return self.device == "cuda" and self.loading.compute_dtype == "float16"

    def log_lines(self) -> list[str]:
        """How the run trains, for train.log (one fact a line)."""
        on = {True: "on", False: "off"}
        settings = (f"optimizer: {self.optimizer}; gradient checkpointing: {on[self.gradient_checkpointing]}; "
                    f"packing: {on[self.packing]}; padding-free: {on[self.padding_free]}")
        return [f"model: {self.loading.describe()}", settings,
                *(f"note: {note}" for note in (*self.loading.notes, *self.notes))]

    def summary_fields(self) -> dict[str, object]:
        """The plan as summary.json records it."""
        return {"backend": self.backend, "device": self.device, "compute_dtype": self.loading.compute_dtype,
                "quantization": self.loading.quantization or "none", "optimizer": self.optimizer,
                "gradient_checkpointing": self.gradient_checkpointing, "packing": self.packing,
                "padding_free": self.padding_free}


def compute_dtype(requested: str, hardware: Hardware) -> ComputeDtype:
    """The recipe's `model.dtype` on this machine: "auto" is fp32 on a CPU, bf16 on GPUs that have it, else fp16."""
    if requested in ("float32", "bfloat16", "float16"):
        return requested  # type: ignore[return-value]  # the three literals, checked above
    if not hardware.is_cuda:
        return "float32"
    return "bfloat16" if hardware.bf16_supported else "float16"


def model_loading(model: ModelSection, hardware: Hardware) -> ModelLoading:
    """How `model` loads on `hardware`: the one decision the trainer, chat, eval and export share."""
    dtype = compute_dtype(model.dtype, hardware)
    notes = []
    if not hardware.is_cuda and dtype != "float32":
        notes.append(f"dtype = {dtype} on a CPU is much slower than float32; kept because the recipe asks")
    quantization: Quantization | None = None
    if model.load_in_4bit:
        if has_module("bitsandbytes"):
            quantization = "nf4"
        else:
            notes.append("load_in_4bit = true, but bitsandbytes is not installed: the weights load in "
                         f"{dtype} (make venv installs it)")
    return ModelLoading("cuda" if hardware.is_cuda else "cpu", dtype, quantization, tuple(notes))


def resolve_plan(recipe: Recipe, hardware: Hardware, backend: BackendName) -> RunPlan:
    """The run's plan; QloraError when the recipe asks for something this machine cannot do."""
    training = recipe.training
    loading = model_loading(recipe.model, hardware)
    bitsandbytes = has_module("bitsandbytes")
    if training.optimizer != "auto":
        optimizer = training.optimizer
    else:
        optimizer = "adamw_8bit" if hardware.is_cuda and bitsandbytes else "adamw_torch"
    if optimizer in EIGHT_BIT_OPTIMIZERS and not bitsandbytes:
        raise QloraError(f"training.optimizer = {optimizer} needs bitsandbytes, which is not installed",
                         where="[training] optimizer", hint="make venv (it installs bitsandbytes), or --set training.optimizer=auto")
    if training.gradient_checkpointing is None:
        checkpointing = hardware.is_cuda
    else:
        checkpointing = training.gradient_checkpointing
    if recipe.data.packing and not capabilities(backend).packs_rows:
        able = backends_that("packs_rows")
        raise QloraError(f"data.packing = true is not supported with the {backend} backend yet",
                         hint=f"--set model.backend={able[0]} (packs with a block-diagonal mask), or --set data.packing=false")
    return RunPlan(backend=backend, loading=loading, optimizer=optimizer, gradient_checkpointing=checkpointing,
                   packing=recipe.data.packing, padding_free=False)
