"""`qlora4080 data ...`: check a data file, build the recipe's data mix, preview what training sees."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..console import console, warn
from ..errors import QloraError
from .app import SET_HELP, data_app
from .friendly import friendly_errors

if TYPE_CHECKING:
    from ..data.pipeline import Build
    from ..recipe import Recipe


@data_app.command("check")
@friendly_errors
def data_check(
    file: Path = typer.Argument(..., help="JSONL (one record a line) or .json (one array)."),
    format: str = typer.Option("auto", "--format", "-f", help="auto, or a format of the kind of records a training "
                                                         "method reads: qlora4080 methods lists them."),
    column: list[str] | None = typer.Option(None, "--column", "-c", help="Field name override, e.g. -c user=question -c assistant=answer."),
    show: int = typer.Option(5, "--show", min=0, help="How many problems to list."),
) -> None:
    """Validate a data file: every record must become a trainable conversation (or preference pair). Exit 1 when any is rejected."""
    from rich.table import Table

    from ..data.check import check_file
    from ..data.records import fields_by_format
    from ..methods.registry import record_kinds

    # Each format reads its own fields (pairs: prompt/chosen/rejected/system); a field the format does not read
    # was once accepted and silently ignored.
    kinds = record_kinds()
    fields_of = {name: fields for name, fields in fields_by_format(kinds).items() if fields}
    known = sorted(fields_of.get(format, []))
    columns: dict[str, str] = {}
    for item in column or []:
        if "=" not in item:
            raise QloraError(f"--column {item!r} must be field=name", where="--column")
        key, value = (part.strip() for part in item.split("=", 1))
        if not value:
            raise QloraError(f"--column {item!r}: the name after '=' is empty", where="--column",
                             hint="write field=name, e.g. -c user=question")
        if format not in fields_of:
            raise QloraError(f"--column renames the fields of one format, and --format {format} has none to rename",
                             where="--column", hint="pass --format with one of: " + ", ".join(fields_of))
        if key not in known:  # `-c =x` or `-c wizard=q` was once silently ignored
            raise QloraError(f"--column {item!r}: {key!r} is not a field --format {format} reads", where="--column",
                             hint=f"write field=name with a field among {', '.join(known)}")
        columns[key] = value
    result = check_file(file, format, columns, kinds)
    console.print(f"format: {result.format}{' (detected)' if result.detected else ''}")
    table = Table(title=str(file), title_justify="left")
    for name in ("records read", "valid", "rejected"):
        table.add_column(name, justify="right")
    table.add_row(str(result.read), str(result.valid), str(len(result.rejected)))
    console.print(table)
    if result.rejected:
        reasons = Table(title="rejected, by reason", title_justify="left")
        reasons.add_column("reason")
        reasons.add_column("records", justify="right")
        for reason, count in result.reasons().most_common():
            reasons.add_row(reason, str(count))
        console.print(reasons)
        for problem in result.rejected[:show]:
            console.print(str(problem), style="yellow", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print("[green]all records are usable[/]")


@data_app.command("build")
@friendly_errors
def data_build(
    # "\\[" keeps Rich from reading [[data.sources]] as markup (it printed "A recipe with [].")
    recipe: Path = typer.Argument(..., help="A recipe with \\[\\[data.sources]]."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a build with the same inputs exists."),
    tokens: bool = typer.Option(True, "--tokens/--no-tokens",
                                help="Also tokenize the build with the recipe's tokenizer: per-source drops and token counts."),
) -> None:
    """Normalize, clean, deduplicate, mix and split the recipe's sources; write JSONL + Arrow and a manifest."""
    from rich.table import Table

    from ..data.pipeline import build_data
    from ..quiet import quiet_libraries
    from ..recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    if not loaded.data.sources:
        raise QloraError("this recipe has no [[data.sources]]; its train/validation files are used as they are", where=str(recipe))
    quiet_libraries()
    build = build_data(loaded, force=force)
    # Headings go above the tables, not in them: a table's title wraps to the table's (narrow) width.
    console.print(f"[bold]{'Reused' if build.reused else 'Built'}[/] {build.folder}")
    table = Table()
    for column in ("source", "format", "read", "rejected", "duplicates", "kept", "in mix", "share"):
        table.add_column(column, justify="left" if column in ("source", "format") else "right")
    mixed = sum(p.in_mix for p in build.pools) or 1
    for p in build.pools:
        table.add_row(p.name, p.format, str(p.read), str(p.rejected), str(p.duplicates), str(p.kept), str(p.in_mix), f"{p.in_mix / mixed:.1%}")
    console.print(table)
    counts = build.manifest["counts"]
    console.print(f"train {counts['train']}, validation {counts['validation']}, rejected {counts['rejected']} "
                  f"(see {build.folder / 'rejects.jsonl'})", soft_wrap=True)
    if tokens:
        _print_token_table(loaded, build)


def _print_token_table(loaded: Recipe, build: Build) -> None:
    """Render + mask the build as training will: records dropped at tokenization, per source."""
    from rich.table import Table

    from ..backends.loading import load_tokenizer, model_source

    template = loaded.resolve_path(loaded.model.chat_template) if loaded.model.chat_template else None
    try:  # only what is already on this machine: a build must not wait on the hub
        tokenizer = load_tokenizer(model_source(loaded.model.name), loaded.model, template, local_only=True)
    except QloraError:
        warn(f"token counts skipped: the tokenizer of {loaded.model.name} is not on this machine yet "
             "(training downloads it and reports the same counts in train.log; run data build again afterwards)")
        return
    from ..data.pipeline import records_of

    tokens = records_of(loaded).tokens_by_source([build.train_file, build.validation_file], tokenizer, loaded)
    console.print(f"[bold]Tokenized for {loaded.model.name}[/] ({tokens.heading})")
    table = Table()
    for column in ("source", "kept", "dropped", "truncated", "tokens", "trained"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name, tally in tokens.by_source.items():
        share = f" ({100 * tally.trained_tokens / max(tally.tokens, 1):.0f}%)"
        table.add_row(name, str(tally.kept), f"[red]{tally.dropped}[/]" if tally.dropped else "0", str(tally.truncated),
                      f"{tally.tokens:,}", f"{tally.trained_tokens:,}{share}")
    console.print(table)
    for problem in tokens.dropped[:5]:
        console.print(f"dropped {problem}", style="yellow", markup=False, soft_wrap=True)  # file:line stays whole
    if len(tokens.dropped) > 5:
        console.print(f"... and {len(tokens.dropped) - 5} more dropped at tokenization")
    for line in tokens.notes:
        console.print(line, style="yellow" if line.startswith("warning") else None, markup=False, soft_wrap=True)


@data_app.command("preview")
@friendly_errors
def data_preview(
    recipe: Path = typer.Argument(..., help="A recipe: its tokenizer, chat template and training data are used."),
    n: int = typer.Option(3, "-n", min=1, help="How many conversations to show."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
) -> None:
    """Show rendered training samples with the trained (loss) tokens highlighted (for DPO: both answers of each pair)."""
    from ..backends.loading import load_tokenizer, model_source
    from ..quiet import quiet_libraries
    from ..recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    quiet_libraries()
    if loaded.data.train is not None:
        path = loaded.resolve_path(loaded.data.train)
    else:  # the recipe's rules: no train file means [[data.sources]], built here as training would
        from ..data.pipeline import build_data

        path = build_data(loaded).train_file
    template = loaded.resolve_path(loaded.model.chat_template) if loaded.model.chat_template else None
    tokenizer = load_tokenizer(model_source(loaded.model.name), loaded.model, template)
    from ..data.pipeline import records_of

    preview = records_of(loaded).preview(path, tokenizer, loaded, n)
    for note in preview.notes:
        console.print(note, style="yellow" if note.startswith("skipped") else None, markup=False, soft_wrap=True)
    for row in preview.rows:
        console.print(row)
    console.print(preview.footer, markup=False, soft_wrap=True)
