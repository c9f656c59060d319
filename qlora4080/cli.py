"""The command line. Each command: parse -> call one function -> print.

Heavy libraries (torch, transformers, trl) are imported inside the commands
that need them, so `qlora4080 --help` and recipe checks stay instant.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from .console import console, print_error
from .errors import QloraError

app = typer.Typer(
    name="qlora4080",
    help="Fine-tune chat LLMs with LoRA/QLoRA on one GPU (or the CPU) from a TOML recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SET_HELP = "Override a recipe value, e.g. --set training.learning_rate=1e-4 (repeatable)."


def _friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn QloraError into a readable panel + non-zero exit; Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except QloraError as error:
            print_error(error)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            console.print("\ninterrupted", style="yellow")
            raise typer.Exit(130) from None

    return wrapper


@app.callback(invoke_without_command=True)
def main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        from . import __version__

        console.print(f"qlora4080 {__version__}")
        raise typer.Exit(0)


@app.command()
@_friendly
def train(
    recipe: Path = typer.Argument(..., help="TOML recipe, e.g. recipes/smollm2_135m_demo.toml"),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help=SET_HELP),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Name of the run (default: <recipe>-<timestamp>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of the same name."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run named by --run-name (default: this recipe's latest run) from its last checkpoint."),
    resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Continue from this checkpoint folder (checkpoints/<run>/checkpoint-N)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, show hardware and the VRAM estimate; load no model."),
    target_gb: Optional[float] = typer.Option(None, "--target-gb", help="Judge the VRAM estimate against a card of this size instead of the one found (default 16 without a GPU)."),
) -> None:
    """Train a LoRA adapter as the recipe says."""
    from .recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    if dry_run:
        _dry_run(loaded, recipe, run_name, overwrite, target_gb)
        return
    from .training.run import train as run_training

    result = run_training(loaded, run_name=run_name, overwrite=overwrite, resume=resume or resume_from is not None,
                          resume_from=resume_from, target_gb=target_gb)
    console.print(f"\n[bold green]Done.[/] Adapter: {result.checkpoint_dir}   Logs: {result.run_dir}")
    console.print(f"Chat with it:  qlora4080 chat {result.checkpoint_dir}")


def _dry_run(loaded: Any, recipe: Path, run_name: Optional[str], overwrite: bool, target_gb: Optional[float]) -> None:
    from .backends import choose_backend
    from .hardware import detect
    from .preflight import print_preflight, run_preflight
    from .training.rundirs import plan_run_dirs

    dirs = plan_run_dirs(loaded, run_name, overwrite)
    console.print(f"[green]recipe OK[/]: {recipe}")
    console.print(loaded.to_toml(), markup=False)
    hardware = detect()
    backend, why = choose_backend(loaded.model.backend, hardware)
    console.print(f"backend: {backend} ({why})")
    print_preflight(run_preflight(loaded, hardware, backend, target_gb), hardware)
    console.print(f"would write the adapter to {dirs.checkpoint} and logs to {dirs.logs}")


@app.command()
@_friendly
def chat(
    checkpoint: str = typer.Argument(..., help="checkpoints/<run>, a model directory, or builtin:<name>"),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Answer this one prompt and exit."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (deterministic)."),
    compare: bool = typer.Option(False, "--compare", help="With --prompt: also show the base model's answer."),
) -> None:
    """Chat with a trained adapter (streaming), or answer one --prompt."""
    from .chat import answer_once, chat_loop
    from .infer import load_for_chat

    if prompt is None and compare:
        raise QloraError("--compare works with --prompt", where="--compare")
    model = load_for_chat(checkpoint)
    if prompt is not None:
        answer_once(model, prompt, system=system, max_new_tokens=max_new_tokens, temperature=temperature, compare=compare)
        return
    piped = not sys.stdin.isatty()
    if piped:
        console.print("(reading prompts from standard input, one per line)", style="dim")
    chat_loop(model, system=system, max_new_tokens=max_new_tokens, temperature=temperature, echo=piped)


@app.command("recipes")
@_friendly
def list_recipes(
    folder: Optional[Path] = typer.Option(None, "--dir", help="Folder of recipes (default: ./recipes, then the bundled ones)."),
) -> None:
    """List the bundled recipes."""
    from rich.table import Table

    from .recipe import load_recipe
    from .recipes_index import find_recipes, recipe_summary

    from .preflight import run_preflight

    table = Table(title="Recipes (estimated peak VRAM on a CUDA card, hf backend)")
    for column in ("recipe", "model", "seq", "batch x accum", "4-bit", "est. VRAM", "fits 16 GB", "about"):
        table.add_column(column)
    for path in find_recipes(folder):
        try:
            loaded = load_recipe(path)
        except QloraError as error:
            table.add_row(_display(path), f"[red]invalid: {error.message}[/]", "", "", "", "", "", "")
            continue
        t = loaded.training
        report = run_preflight(loaded, None, offline=True)
        vram = f"{report.estimate.total_gib:.1f} GiB" if report.estimate else "?"
        fits = "?" if report.fits is None else ("[green]yes[/]" if report.fits else "[red]no[/]")
        table.add_row(
            _display(path), loaded.model.name, str(loaded.model.max_seq_len), f"{t.batch_size} x {t.grad_accum}",
            "yes" if loaded.model.load_in_4bit else "no", vram, fits, recipe_summary(path),
        )
    console.print(table)


def _display(path: Path) -> str:
    """A recipe path as the user would type it: relative to the working folder when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
