"""The run's first stage: the machine, doctor's verdict for the recipe, the backend, the plan, the preflight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import QloraError
from ..recipe import Recipe
from ..thinking import describe
from .rundirs import RunDirs
from .session import RunContext

if TYPE_CHECKING:
    from ..backends import Backend, BackendName
    from ..hardware import Hardware
    from ..plan import RunPlan


@dataclass(frozen=True)
class Environment:
    """Where the run trains and how: every later stage reads it."""

    hardware: Hardware
    backend_name: BackendName
    backend: Backend
    """The module that loads the model and attaches LoRA (backends/hf.py, backends/unsloth.py)."""
    plan: RunPlan
    """What the recipe's "auto" values became on this machine."""
    memory_estimate_gib: float | None = None
    """The preflight's VRAM estimate for one device; the summary puts the measured peak beside it."""


def set_up_environment(run: RunContext, target_gb: float | None) -> Environment:
    """Hardware, doctor's verdict for this recipe, the backend, the preflight, the recipe snapshot."""
    from ..backends import load_backend
    from ..distributed import check_sharding_supported, is_main_process, world_size
    from ..doctor import plan_training
    from ..hardware import detect
    from ..plan import resolve_plan
    from ..preflight import print_preflight, run_preflight
    from ..quiet import quiet_libraries

    recipe, log = run.recipe, run.log
    with run.stages.stage("Environment"):
        check_sharding_supported(recipe.model.backend)  # before the machine's verdict: the launch is at fault
        hardware = detect()
        # First doctor's checks: a broken stack is named before minutes of loading. On the unsloth path this
        # imports unsloth, which must patch transformers/trl/peft before anything imports them (quiet_libraries).
        verdict = plan_training(recipe.model.backend, recipe.model.load_in_4bit, hardware)
        if verdict.blockers or verdict.backend is None:
            first, more = (verdict.blockers[0], verdict.blockers[1:]) if verdict.blockers else (None, [])
            raise QloraError(f"this machine cannot train the recipe: {verdict.reason}"
                             + "".join(f"; also {problem.message}" for problem in more), where="[model] backend",
                             hint=first.hint if first else "run qlora4080 doctor RECIPE for the details")
        backend_name = verdict.backend  # verdict.warnings: the backend says those itself when it loads
        check_sharding_supported(backend_name)
        quiet_libraries()
        plan = resolve_plan(recipe, hardware, backend_name)
        backend = load_backend(backend_name)
        resumed = f" (resumed from {run.checkpoint})" if run.checkpoint else ""
        log.line(f"run {run.dirs.name}{resumed}: recipe {recipe.source_path}")
        log.line(f"backend: {backend_name} ({verdict.reason})")
        for line in plan.log_lines():
            log.line(line, style="yellow" if line.startswith("note:") else None)
        if recipe.model.thinking != "auto":
            log.line(describe(recipe.model.thinking))
        preflight = run_preflight(recipe, hardware, backend_name, target_gb, processes=world_size())
        print_preflight(preflight, hardware)
        if is_main_process():
            snapshot_recipe(recipe, run.dirs)
    # On a CPU the estimate is for a 16 GB card's plan: nothing this run measures compares with it
    estimate_gib = round(preflight.estimate.total_gib, 3) if preflight.estimate and hardware.is_cuda else None
    return Environment(hardware, backend_name, backend, plan, estimate_gib)


def snapshot_recipe(recipe: Recipe, dirs: RunDirs) -> None:
    """Save the resolved recipe next to the adapter (on resume, check_resume has made sure only safe keys moved)."""
    from ..checkpoint import RECIPE_SNAPSHOT

    dirs.checkpoint.mkdir(parents=True, exist_ok=True)
    staged = dirs.checkpoint / f".{RECIPE_SNAPSHOT}.tmp"
    staged.write_text(recipe.to_toml(), encoding="utf-8")
    staged.replace(dirs.checkpoint / RECIPE_SNAPSHOT)
