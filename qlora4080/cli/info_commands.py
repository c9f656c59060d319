"""What can run here: `qlora4080 recipes` (the recipes and their VRAM estimates), `methods`, and `doctor`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..console import console
from ..errors import QloraError
from .app import SET_HELP, app
from .friendly import friendly_errors


@app.command("recipes")
@friendly_errors
def list_recipes(
    folder: Path | None = typer.Option(None, "--dir", help="Folder of recipes (default: ./recipes, then the bundled ones)."),
) -> None:
    """List the bundled recipes."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from ..preflight import run_preflight
    from ..recipe import load_recipe
    from ..recipes_index import find_recipes, recipe_summary

    paths = find_recipes(folder)
    folders = sorted({_display(p.parent) for p in paths})
    table = Table(title=f"Recipes in {', '.join(folders)}: estimated peak VRAM on a CUDA card (hf backend)",
                  title_justify="left", caption="batch = batch size x gradient accumulation; fits = within a 16 GB card",
                  caption_justify="left")
    # Names and numbers never wrap: a narrow terminal (or CI's 80 columns) folds the model id instead,
    # and the one-line descriptions go below the table where they can wrap freely.
    table.add_column("recipe", no_wrap=True)
    table.add_column("model", overflow="fold", min_width=12)
    for column in ("seq", "batch", "4-bit", "GiB", "fits"):
        table.add_column(column, no_wrap=True, justify="right" if column in ("seq", "GiB") else "left")
    # Below the table, per recipe: its description, or why it is invalid, in red. Texts from the files and
    # error messages are printed as they are, never read as markup: "[model]" in a message must stay visible.
    about: list[Text] = []
    for path in paths:
        shown = escape(path.name)
        try:
            loaded = load_recipe(path)
        except QloraError as error:
            table.add_row(shown, "[red]invalid[/]", "", "", "", "", "")
            about.append(Text.assemble((path.name, "bold"), ": ", (error.message, "red")))
            continue
        t = loaded.training
        report = run_preflight(loaded, None, offline=True)
        vram = f"{report.estimate.total_gib:.1f}" if report.estimate else "?"
        fits = "?" if report.fits is None else ("[green]yes[/]" if report.fits else "[red]no[/]")
        table.add_row(
            shown, escape(loaded.model.name), str(loaded.model.max_seq_len), f"{t.batch_size} x {t.grad_accum}",
            "yes" if loaded.model.load_in_4bit else "no", vram, fits,
        )
        if summary := recipe_summary(path):
            about.append(Text.assemble((path.name, "bold"), ": ", summary))
    console.print(table)
    for line in about:
        console.print(line)


@app.command("methods")
@friendly_errors
def list_methods() -> None:
    """List the training methods a recipe can name (training.method), what data each reads, and its settings table."""
    from rich.markup import escape
    from rich.table import Table

    from ..methods.registry import METHODS

    table = Table(title=escape("Training methods ([training] method = ...)"), title_justify="left")
    for column in ("method", "reads", "formats", "settings"):
        table.add_column(column, overflow="fold", no_wrap=column == "method")
    for spec in METHODS.values():
        table.add_row(spec.name, spec.records.unit, ", ".join(spec.records.formats), f"[{spec.table}]" if spec.table else "-")
    console.print(table, markup=False)
    for spec in METHODS.values():  # below the table, where the sentences can wrap
        console.print(f"{spec.name}: {spec.summary}", markup=False)
        for line in spec.details:
            console.print(f"  {line}", markup=False, soft_wrap=True)
    console.print("A source's format may be left out: `auto` detects the records the method reads.", markup=False)


def _display(path: Path) -> str:
    """A recipe path as the user would type it: relative to the working folder when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@app.command()
@friendly_errors
def doctor(
    recipe: Path | None = typer.Argument(None, help="Also judge what this recipe needs (its backend, 4-bit)."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (rows, ok, backend) instead of the table."),
) -> None:
    """Can this machine train? Python, torch and CUDA, package versions against the lock, unsloth, bitsandbytes, disk, hub.

    Exit 1 when something training needs is broken (or the recipe cannot run here).
    """
    from ..doctor import print_report, run_doctor
    from ..recipe import load_recipe

    if set_ and recipe is None:
        raise QloraError("--set needs a recipe to change", where="--set", hint="qlora4080 doctor RECIPE --set section.key=value")
    loaded = load_recipe(recipe, set_) if recipe is not None else None
    report = run_doctor(loaded)
    if as_json:
        import json

        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        print_report(report)
    if not report.ok:
        raise typer.Exit(1)
