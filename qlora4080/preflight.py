"""Before anything loads: the hardware found, a VRAM estimate by component, a verdict, and fixes.

With several processes (one per GPU) the estimate is per device: each process
holds a full copy of the model, its own LoRA optimizer state and its own batch.
What grows with the processes is the global batch, said on its own line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.table import Table

from .architectures import lookup, resolve
from .console import console
from .errors import QloraError
from .hardware import Hardware
from .plan import A_16GB_CUDA_CARD, RunPlan, resolve_plan
from .recipe import Recipe
from .vram import Estimate, GiB, TrainingShape, estimate, fit_overrides

if TYPE_CHECKING:
    from .backends import BackendName

DEFAULT_TARGET_GB = 16.0


@dataclass
class Preflight:
    estimate: Estimate | None
    budget_bytes: float
    budget_label: str
    fits: bool | None
    overrides: list[str] | None
    problem: str | None = None
    processes: int = 1
    """Processes training together (one per GPU), each with the memory estimated above."""
    global_batch: int = 1
    """Sequences per optimizer step over all processes: per-device batch x grad-accum x processes."""
    batch_formula: str = ""
    """How `global_batch` is made, in words."""


def memory_shape(recipe: Recipe, plan: RunPlan) -> TrainingShape:
    """The values of the recipe and of its plan that decide memory."""
    from .methods.registry import method_spec

    t = recipe.training
    method = method_spec(t.method)
    generation = method.generation(recipe)
    return TrainingShape(
        batch_size=t.batch_size,
        seq_len=recipe.model.max_seq_len,
        load_in_4bit=plan.loading.load_in_4bit,
        weight_bytes=4 if plan.loading.compute_dtype == "float32" else 2,
        lora_r=recipe.lora.r,
        lora_targets=tuple(recipe.lora.target_modules) if isinstance(recipe.lora.target_modules, list) else "all-linear",
        gradient_checkpointing=plan.gradient_checkpointing,
        optimizer=plan.optimizer,
        backend=plan.backend,
        # e.g. DPO: chosen and rejected in one batch (the reference pass runs without gradients: no activations)
        # grpo: a batch row is one prompt's sampled answers
        sequences_per_row=generation.answers_per_prompt if generation else method.sequences_per_row,
        reference_adapter=method.reference_copy(recipe),
        generation=generation,
    )


def card_plan(recipe: Recipe, hardware: Hardware | None, backend: BackendName) -> RunPlan:
    """The plan the estimate is for: this machine's when it has CUDA, else the one a 16 GB CUDA card would get."""
    card = hardware if hardware is not None and hardware.is_cuda else A_16GB_CUDA_CARD
    return resolve_plan(recipe, card, backend)


def global_batch(recipe: Recipe, processes: int) -> int:
    """Sequences (or preference pairs) per optimizer step: per-device batch x grad-accum x processes."""
    return recipe.training.batch_size * recipe.training.grad_accum * processes


def run_preflight(recipe: Recipe, hardware: Hardware | None, backend: BackendName = "hf", target_gb: float | None = None,
                  offline: bool = False, processes: int = 1) -> Preflight:
    """Estimate one device against the card found, or against `target_gb` (default 16 GB) when there is none."""
    t = recipe.training
    batch: dict[str, Any] = {"processes": processes, "global_batch": global_batch(recipe, processes),
             "batch_formula": f"{t.batch_size} per device x grad-accum {t.grad_accum} x {processes} processes"}
    if hardware is not None and hardware.is_cuda and target_gb is None:
        budget, label = float(hardware.gpu_total_bytes or 0), f"{hardware.gpu_name} ({(hardware.gpu_total_bytes or 0) / GiB:.1f} GiB)"
    else:
        gb = target_gb or DEFAULT_TARGET_GB
        budget, label = gb * GiB, f"a {gb:g} GB card"
    try:
        plan = card_plan(recipe, hardware, backend)
        arch = lookup(recipe.model.name) if offline else resolve(recipe.model.name)
    except QloraError as error:
        return Preflight(None, budget, label, None, None, problem=error.message, **batch)
    if arch is None:
        return Preflight(None, budget, label, None, None, problem=f"no architecture numbers for '{recipe.model.name}' offline",
                         **batch)
    shape = memory_shape(recipe, plan)
    result = estimate(arch, shape)
    fits = result.total <= budget
    overrides = None if fits else fit_overrides(arch, shape, budget, recipe.training.grad_accum)
    return Preflight(result, budget, label, fits, overrides, **batch)


def print_preflight(report: Preflight, hardware: Hardware | None) -> None:
    if hardware is not None:
        console.print(f"[bold]Hardware:[/] {hardware.describe()}")
    if report.processes > 1:
        console.print(f"[bold]Processes:[/] {report.processes}: global batch {report.global_batch} "
                      f"({report.batch_formula}); the memory estimate is per device")
    if report.estimate is None:
        console.print(f"[yellow]No VRAM estimate:[/] {report.problem}")
        return
    table = Table(title=f"Estimated peak GPU memory vs {report.budget_label}", title_justify="left")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    for name, value in report.estimate.parts.items():
        table.add_row(name, f"{value / GiB:.2f}")
    table.add_row("[bold]total[/]", f"[bold]{report.estimate.total_gib:.2f}[/]")
    console.print(table)
    budget_gib = report.budget_bytes / GiB
    if report.fits:
        console.print(f"[green]Verdict: fits[/] ({report.estimate.total_gib:.1f} of {budget_gib:.1f} GiB, {budget_gib - report.estimate.total_gib:.1f} GiB headroom)")
    elif report.overrides:
        console.print(f"[red]Verdict: does not fit[/] ({report.estimate.total_gib:.1f} of {budget_gib:.1f} GiB). These overrides would make it fit:")
        console.print("  " + " ".join(report.overrides), markup=False)
    else:
        console.print(f"[red]Verdict: does not fit[/] ({report.estimate.total_gib:.1f} of {budget_gib:.1f} GiB), even with shorter sequences, batch 1, a smaller LoRA rank and 4-bit: pick a smaller model.")
