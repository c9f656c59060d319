"""Run every check in the one order that is safe, then say in one sentence whether training can run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..hardware import Hardware
from .plan import TrainingPlan, plan_training
from .report import Report, Row

if TYPE_CHECKING:
    from ..recipe import Recipe

SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def run_doctor(recipe: Recipe | None = None) -> Report:
    """Every check, for this machine alone or for training `recipe` on it. Loads no model."""
    from .gpu_stack import bitsandbytes_row, gguf_rows, stack_import_row, unsloth_row
    from .machine import cache_rows, hub_row, python_rows, torch_rows
    from .packages import package_rows, read_lock

    rows = python_rows()
    found, hardware = torch_rows()
    rows += found
    # unsloth patches transformers, trl and peft when imported, so it goes before anything imports
    # them; plan_training may import it too (as train would), bitsandbytes needs only torch.
    rows.append(unsloth_row(hardware))
    plan = plan_training(recipe.model.backend if recipe else "auto", recipe.model.load_in_4bit if recipe else False,
                         hardware)
    rows.append(bitsandbytes_row(hardware))
    rows += gguf_rows(hardware)
    rows.append(stack_import_row())
    rows += package_rows(read_lock(), hardware.is_cuda)
    rows += cache_rows()
    rows.append(hub_row())
    rows += training_rows(recipe, plan, hardware)
    return _verdict(rows, plan, hardware, recipe)


def training_rows(recipe: Recipe | None, plan: TrainingPlan, hardware: Hardware) -> list[Row]:
    rows = []
    if recipe is not None:
        rows.append(Row("training", "recipe", "info", str(recipe.source_path or recipe.stem)))
    if plan.backend is not None:
        rows.append(Row("training", "backend", "ok", f"{plan.backend}: {plan.reason}"))
    rows += [Row("training", "blocker", "fail", p.message, p.hint) for p in plan.blockers]
    rows += [Row("training", "caveat", "warn", p.message, p.hint) for p in plan.warnings]
    return rows


def device_phrase(plan: TrainingPlan, hardware: Hardware, recipe: Recipe | None) -> str:
    """Where and in which precision training would run, e.g. "CPU (fp32)" or "RTX 4080 (bf16, 4-bit)"."""
    requested = recipe.model.dtype if recipe else "auto"
    if requested != "auto":
        dtype = requested
    elif not hardware.is_cuda:
        dtype = "float32"
    else:
        dtype = "bfloat16" if hardware.bf16_supported else "float16"
    if not hardware.is_cuda:
        return f"CPU ({SHORT_DTYPE[dtype]})"
    four_bit = recipe is not None and recipe.model.load_in_4bit and not plan.warnings
    return f"{hardware.gpu_name or 'CUDA'} ({SHORT_DTYPE[dtype]}{', 4-bit' if four_bit else ''})"


def _verdict(rows: list[Row], plan: TrainingPlan, hardware: Hardware, recipe: Recipe | None) -> Report:
    what = f" recipe {recipe.stem}" if recipe else ""
    failed = [row for row in rows if row.status == "fail"]
    device = "cuda" if hardware.is_cuda else "cpu"
    source = str(recipe.source_path) if recipe is not None and recipe.source_path else None
    if not failed and plan.backend is not None:
        verdict = f"This machine can train{what} with the {plan.backend} backend on {device_phrase(plan, hardware, recipe)}."
        return Report(rows, plan.backend, plan.reason, device, verdict, recipe=source)
    if not failed:  # a plan without a backend always carries a blocker row; stay safe if it ever does not
        return Report(rows, None, plan.reason, device, f"This machine cannot train{what}: {plan.reason}", recipe=source)
    first = failed[0]
    problem = first.value if first.group == "training" else f"{first.name}: {first.value}"
    more = f" (and {len(failed) - 1} more problem{'s' if len(failed) > 2 else ''} above)" if len(failed) > 1 else ""
    return Report(rows, None, plan.reason, device, f"This machine cannot train{what}: {problem}{more}",
                  hint=first.hint, recipe=source)
