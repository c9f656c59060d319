"""`qlora4080 train`: a recipe in, an adapter out; --dry-run checks and estimates without loading a model."""

from __future__ import annotations

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
) -> None:
    """Train a LoRA adapter as the recipe says."""
    from ..recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    if dry_run:
        _dry_run(loaded, recipe, run_name, overwrite, target_gb)
        return
    from ..training.run import train as run_training

    result = run_training(loaded, run_name=run_name, overwrite=overwrite, resume=resume or resume_from is not None,
                          resume_from=resume_from, target_gb=target_gb)
    console.print(f"\n[bold green]Done.[/] Adapter: {result.checkpoint_dir}   Logs: {result.run_dir}")
    console.print(f"Chat with it:  qlora4080 chat {result.checkpoint_dir}")


def _dry_run(loaded: Recipe, recipe: Path, run_name: str | None, overwrite: bool, target_gb: float | None) -> None:
    from ..backends import choose_backend
    from ..hardware import detect
    from ..preflight import print_preflight, run_preflight
    from ..training.rundirs import plan_run_dirs

    dirs = plan_run_dirs(loaded, run_name, overwrite)
    console.print(f"[green]recipe OK[/]: {recipe}")
    console.print(loaded.to_toml(), markup=False)
    hardware = detect()
    backend, why = choose_backend(loaded.model.backend, hardware)
    console.print(f"backend: {backend} ({why})")
    print_preflight(run_preflight(loaded, hardware, backend, target_gb), hardware)
    console.print(f"would write the adapter to {dirs.checkpoint} and logs to {dirs.logs}")
