"""`qlora4080 train`: a recipe in, an adapter out; --dry-run checks and estimates without loading a model.

`--processes N` starts N training processes on this machine under torchrun (one per GPU); the
same command also runs as is under `torchrun ... -m qlora4080 train` or `accelerate launch`.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..console import console
from .app import SET_HELP, app
from .friendly import friendly_errors

if TYPE_CHECKING:
    from ..recipe import Recipe


@app.command()
@friendly_errors
def train(
    recipe: Path = typer.Argument(..., help="TOML recipe, e.g. recipes/smollm2_135m_demo.toml"),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
    run_name: str | None = typer.Option(None, "--run-name", help="Name of the run (default: <recipe>-<timestamp>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of the same name."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run named by --run-name (default: this recipe's latest run) from its last checkpoint."),
    resume_from: Path | None = typer.Option(None, "--resume-from", help="Continue from this checkpoint folder (checkpoints/<run>/checkpoint-N)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, show hardware and the VRAM estimate; load no model."),
    target_gb: float | None = typer.Option(None, "--target-gb", help="Judge the VRAM estimate against a card of this size instead of the one found (default 16 without a GPU)."),
    processes: int = typer.Option(1, "--processes", min=1, help="Train with N processes on this machine, one per GPU (data parallel), started with torchrun."),
) -> None:
    """Train a LoRA adapter as the recipe says."""
    from ..console import speak_only_as_main_process
    from ..distributed import end_process_group, world_size
    from ..recipe import load_recipe

    speak_only_as_main_process()  # under torchrun / accelerate launch: process 0 alone prints
    if target_gb is not None and not (math.isfinite(target_gb) and 0 < target_gb <= 4096):
        from ..errors import QloraError

        raise QloraError(f"--target-gb {target_gb} is not a card size", where="--target-gb",
                         hint="give the card's memory in GB, e.g. --target-gb 16")
    loaded = load_recipe(recipe, set_ or [])
    if dry_run:
        _dry_run(loaded, recipe, run_name, overwrite, target_gb, max(processes, world_size()))
        return
    if processes > 1:
        check_processes(processes)
        arguments = ["train", str(recipe), *[f"--set={item}" for item in set_ or []]]
        arguments += [f"--run-name={run_name}"] if run_name is not None else []
        arguments += ["--overwrite"] * overwrite + ["--resume"] * resume
        arguments += [f"--resume-from={resume_from}"] if resume_from is not None else []
        arguments += [f"--target-gb={target_gb}"] if target_gb is not None else []
        console.print(f"Starting {processes} processes: torchrun --standalone --nproc_per_node {processes} "
                      f"-m qlora4080 {shlex.join(arguments)}", markup=False)
        from ..launcher import launch_processes

        if code := launch_processes(processes, arguments):
            raise typer.Exit(code)
        return
    from ..training.run import train as run_training

    try:
        result = run_training(loaded, run_name=run_name, overwrite=overwrite, resume=resume or resume_from is not None,
                              resume_from=resume_from, target_gb=target_gb)
    finally:
        end_process_group()
    console.print(f"\n[bold green]Done.[/] Adapter: {result.checkpoint_dir}   Logs: {result.run_dir}")
    console.print(f"Chat with it:  qlora4080 chat {result.checkpoint_dir}")


def check_processes(processes: int) -> None:
    """--processes N: not inside another launch, and no more processes than GPUs when there are GPUs."""
    import torch

    from ..distributed import world_size
    from ..errors import QloraError

    if world_size() > 1:
        raise QloraError(f"--processes {processes} inside a run that torchrun or accelerate already started "
                         f"({world_size()} processes)", where="--processes",
                         hint="leave out --processes when starting qlora4080 with torchrun or accelerate launch")
    gpus = torch.cuda.device_count()
    if gpus and processes > gpus:
        raise QloraError(f"--processes {processes}, but this machine has {gpus} GPU(s): one process trains on one GPU",
                         where="--processes", hint=f"--processes {gpus} (or fewer)")


def _dry_run(loaded: Recipe, recipe: Path, run_name: str | None, overwrite: bool, target_gb: float | None,
             processes: int) -> None:
    from ..backends import choose_backend
    from ..hardware import detect
    from ..plan import resolve_plan
    from ..preflight import print_preflight, run_preflight
    from ..training.rundirs import plan_run_dirs

    dirs = plan_run_dirs(loaded, run_name, overwrite)
    console.print(f"[green]recipe OK[/]: {recipe}")
    console.print(loaded.to_toml(), markup=False)
    hardware = detect()
    backend, why = choose_backend(loaded.model.backend, hardware)
    console.print(f"backend: {backend} ({why})")
    for line in resolve_plan(loaded, hardware, backend).log_lines():
        console.print(line, markup=False)
    print_preflight(run_preflight(loaded, hardware, backend, target_gb, processes=processes), hardware)
    console.print(f"would write the adapter to {dirs.checkpoint} and logs to {dirs.logs}")
