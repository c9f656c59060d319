"""The command line. Each command: parse -> call one function -> print.

Heavy libraries (torch, transformers, trl) are imported inside the commands
that need them, so `qlora4080 --help` and recipe checks stay instant.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .console import console, print_error, warn
from .errors import QloraError

app = typer.Typer(
    name="qlora4080",
    help="Fine-tune chat LLMs with LoRA/QLoRA on one GPU (or the CPU) from a TOML recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

data_app = typer.Typer(help="Check and inspect training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SET_HELP = "Override a recipe value, e.g. --set training.learning_rate=1e-4 (repeatable)."


def _friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn QloraError into a readable panel + non-zero exit; Ctrl-C into exit 130.

    OSError is the last line of defence: a folder that cannot be written, a file
    where a folder should be, a full disk can surface from any library call, and
    each is the user's to fix, not a bug. Anything else stays a traceback, so a
    real bug is never disguised as a user error.
    """

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
        except OSError as error:
            print_error(os_error(error))
            raise typer.Exit(2) from None

    return wrapper


_PERMISSIONS = "check the permissions of that path and the folder holding it, or choose a folder you can write to"
_OS_HINTS = {
    errno.EACCES: _PERMISSIONS,
    errno.EPERM: _PERMISSIONS,
    errno.EROFS: "that file system is read-only: choose a folder on a writable disk",
    errno.ENOSPC: "the disk is full: free some space (old checkpoints/ and data_builds/ are large), then run again",
    errno.EDQUOT: "your disk quota is used up: free some space, then run again",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path, or move that file away",
    errno.EISDIR: "that path is a folder: give a file path instead",
    errno.ENOENT: "check that the path exists (a relative path starts from the current folder)",
}


def os_error(error: OSError) -> QloraError:
    """An operating-system refusal as a QloraError: which path, the system's reason, and what to do."""
    reason = error.strerror or str(error)
    if error.filename is not None and error.filename2 is not None:
        message = f"could not move {error.filename} to {error.filename2}: {reason}"
    elif error.filename is not None:
        message = f"could not read/write {error.filename}: {reason}"
    elif error.errno is not None:
        message = f"could not read/write a file: {reason}"
    else:  # raised by a library with its own sentence (transformers: "Can't load the model ...")
        message = str(error)
    hint = _OS_HINTS.get(error.errno or 0, "check the path or name above and try again")
    return QloraError(message, hint=hint)


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
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
    run_name: str | None = typer.Option(None, "--run-name", help="Name of the run (default: <recipe>-<timestamp>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of the same name."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run named by --run-name (default: this recipe's latest run) from its last checkpoint."),
    resume_from: Path | None = typer.Option(None, "--resume-from", help="Continue from this checkpoint folder (checkpoints/<run>/checkpoint-N)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, show hardware and the VRAM estimate; load no model."),
    target_gb: float | None = typer.Option(None, "--target-gb", help="Judge the VRAM estimate against a card of this size instead of the one found (default 16 without a GPU)."),
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


def _dry_run(loaded: Any, recipe: Path, run_name: str | None, overwrite: bool, target_gb: float | None) -> None:
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
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Answer this one prompt and exit."),
    tests: Path | None = typer.Option(None, "--tests", help="Run predefined prompts (.txt one a line, or .jsonl) and save the answers."),
    save: Path | None = typer.Option(None, "--save", help="With --tests: where to append answers (default runs/<run>/chat_tests.jsonl)."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (deterministic)."),
    compare: bool = typer.Option(False, "--compare", help="With --prompt: also show the base model's answer."),
) -> None:
    """Chat with a trained adapter (streaming), answer one --prompt, or run --tests."""
    from .chat import answer_once, chat_loop, read_test_prompts, run_tests
    from .infer import load_for_chat

    if prompt is None and compare:
        raise QloraError("--compare works with --prompt", where="--compare")
    test_prompts = read_test_prompts(tests) if tests else None  # a bad file fails before the model loads
    model = load_for_chat(checkpoint)
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    if test_prompts is not None:
        target = save or Path("runs") / Path(checkpoint).name / "chat_tests.jsonl"
        run_tests(model, test_prompts, target, system=system, **options)
        console.print(f"answers saved to {target}")
        return
    if prompt is not None:
        answer_once(model, prompt, system=system, compare=compare, **options)
        return
    piped = not sys.stdin.isatty()
    if piped:
        console.print("(reading prompts from standard input, one per line)", style="dim")
    chat_loop(model, system=system, echo=piped, **options)


@app.command("eval")
@_friendly
def evaluate_command(
    checkpoint: str = typer.Argument(..., help="checkpoints/<run> (or a model directory)"),
    data: Path | None = typer.Option(None, "--data", help="JSONL of conversations (default: the run's validation file)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N records."),
    baseline: bool = typer.Option(False, "--baseline", help="Also evaluate the base model (adapter off) and show the difference."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    out: Path | None = typer.Option(None, "--out", help="Folder for eval.json and eval.md (default runs/<run>)."),
) -> None:
    """Perplexity on assistant tokens, usability and JSON validity of generated answers."""
    from rich.progress import Progress
    from rich.table import Table

    from .checkpoint import CheckpointMeta
    from .data.conversations import read_conversations
    from .evaluate import evaluate, report_rows, to_eval_records, write_report
    from .infer import load_for_chat, read_checkpoint_meta

    meta = read_checkpoint_meta(checkpoint)
    settings = meta or CheckpointMeta(base_model=str(checkpoint))  # a plain model folder: the recipe defaults
    source = data or (Path(meta.validation_file) if meta and meta.validation_file else None)
    if source is None:
        raise QloraError("no data to evaluate on: the run had no validation file", where="--data", hint="pass --data FILE.jsonl")
    conversations = read_conversations(source)
    for problem in conversations.rejected[:5]:
        console.print(f"skipped {problem}", style="yellow", markup=False, soft_wrap=True)
    records = to_eval_records(conversations.records, limit)
    model = load_for_chat(checkpoint)
    passes = 2 if (baseline and model.has_adapter) else 1
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=len(records) * passes)
        report = evaluate(model, records, baseline=baseline, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          max_seq_len=settings.max_seq_len, train_on=settings.train_on,
                          on_batch=lambda n: progress.advance(task, n))
    header, rows = report_rows(report)
    table = Table(title=f"Evaluation on {len(records)} records of {source}", title_justify="left")
    for column in header:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    folder = out or Path("runs") / Path(checkpoint).name
    json_path, md_path = write_report(report, folder, str(source))
    console.print(f"saved {json_path} and {md_path}")


@app.command()
@_friendly
def generate(
    checkpoint: str = typer.Argument(..., help="checkpoints/<run>, a merged model directory, or a base model"),
    input: Path = typer.Option(..., "--input", "-i", help='JSONL: {"prompt": ...} or {"messages": [...]} per line.'),
    output: Path = typer.Option(..., "--output", "-o", help="JSONL of answers; ids already there are skipped (resume)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
) -> None:
    """Batch inference: answer every prompt of a JSONL file (greedy), resumable."""
    from rich.progress import Progress

    from .batch_infer import prepare_output, read_prompts, run_batch
    from .infer import load_for_chat

    parsed = read_prompts(input)
    resume = prepare_output(input, output)  # before the model loads: a wrong -o fails at once
    for problem in parsed.rejected:
        console.print(f"skipped {problem}", style="yellow", markup=False, soft_wrap=True)
    if resume.note:
        console.print(resume.note, style="yellow", markup=False, soft_wrap=True)
    todo = [p for p in parsed.prompts if p.id not in resume.done]
    console.print(f"{len(parsed.prompts)} prompts, {len(parsed.prompts) - len(todo)} already answered in {output}, "
                  f"{len(todo)} to go, {len(parsed.rejected)} bad line(s) skipped")
    if todo:
        model = load_for_chat(checkpoint)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("generating", total=len(todo))
            run_batch(model, todo, output, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      on_batch=lambda n: progress.advance(task, n))
        console.print(f"answers written to {output}")
    if parsed.rejected:
        raise typer.Exit(1)


@app.command()
@_friendly
def export(
    checkpoint: Path = typer.Argument(..., help="checkpoints/<run>"),
    merged: Path | None = typer.Option(None, "--merged", help="Folder for the merged 16-bit model (safetensors + tokenizer)."),
    gguf: str | None = typer.Option(None, "--gguf", help="Also/instead write GGUF with this quantization, e.g. q4_k_m (needs unsloth on CUDA)."),
    gguf_dir: Path | None = typer.Option(None, "--gguf-dir", help="Folder for the GGUF file and Ollama Modelfile (default <merged>-gguf)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the contents of a non-empty output folder."),
    prompt: str | None = typer.Option(None, "--prompt", help="Prompt used to check the merged model against the adapter."),
) -> None:
    """Merge LoRA into the base and save a standalone model; verify it answers like base + adapter."""
    from .export import export_gguf, export_merged

    if merged is None and gguf is None:
        raise QloraError("nothing to export", hint="pass --merged OUT_DIR and/or --gguf QUANT")
    if merged is not None:
        result = export_merged(checkpoint, merged, overwrite=overwrite, prompt=prompt)
        console.print(f"[green]merged model saved to {result.out_dir}[/]")
        console.print(f"check prompt: {result.prompt}", markup=False)
        console.print(f"  base + adapter: {result.adapter_answer}", markup=False)
        console.print(f"  merged (plain transformers): {result.merged_answer}", markup=False)
        if result.answers_match:
            console.print("[green]verified: the merged model gives the same greedy answer[/]")
        else:
            console.print("[yellow]the answers differ; expected only for adapters trained on a 4-bit base (the merge uses 16-bit weights)[/]")
    if gguf is not None:
        target = gguf_dir or Path(f"{merged or checkpoint}-gguf")
        path = export_gguf(checkpoint, target, gguf, overwrite=overwrite)
        console.print(f"[green]GGUF written to {path}[/] (Ollama: cd {target} && ollama create NAME -f Modelfile)")


@data_app.command("check")
@_friendly
def data_check(
    file: Path = typer.Argument(..., help="JSONL (one record a line) or .json (one array)."),
    format: str = typer.Option("auto", "--format", "-f", help="auto, messages, sharegpt, alpaca, prompt_completion, columns, cmath, mawps, emoji."),
    column: list[str] | None = typer.Option(None, "--column", "-c", help="Field name override, e.g. -c user=question -c assistant=answer."),
    show: int = typer.Option(5, "--show", min=0, help="How many problems to list."),
) -> None:
    """Validate a data file: every record must become a trainable conversation. Exit 1 when any is rejected."""
    from rich.table import Table

    from .data.check import check_file

    columns = {}
    for item in column or []:
        if "=" not in item:
            raise QloraError(f"--column {item!r} must be field=name", where="--column")
        key, value = item.split("=", 1)
        columns[key.strip()] = value.strip()
    result = check_file(file, format, columns)
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
@_friendly
def data_build(
    recipe: Path = typer.Argument(..., help="A recipe with [[data.sources]]."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a build with the same inputs exists."),
    tokens: bool = typer.Option(True, "--tokens/--no-tokens",
                                help="Also tokenize the build with the recipe's tokenizer: per-source drops and token counts."),
) -> None:
    """Normalize, clean, deduplicate, mix and split the recipe's sources; write JSONL + Arrow and a manifest."""
    from rich.table import Table

    from .data.pipeline import build_data
    from .quiet import quiet_libraries
    from .recipe import load_recipe

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


def _print_token_table(loaded: Any, build: Any) -> None:
    """Render + mask the build as training will: records dropped at tokenization, per source."""
    from rich.table import Table

    from .backends.loading import load_tokenizer, model_source
    from .data.dataset import tokens_by_source
    from .data.render import MaskReport

    template = loaded.resolve_path(loaded.model.chat_template) if loaded.model.chat_template else None
    try:  # only what is already on this machine: a build must not wait on the hub
        tokenizer = load_tokenizer(model_source(loaded.model.name), loaded.model, template, local_only=True)
    except QloraError:
        warn(f"token counts skipped: the tokenizer of {loaded.model.name} is not on this machine yet "
             "(training downloads it and reports the same counts in train.log; run data build again afterwards)")
        return
    report = MaskReport()
    by_source, dropped = tokens_by_source([build.train_file, build.validation_file], tokenizer,
                                          loaded.model.max_seq_len, loaded.data.train_on, loaded.data.truncation,
                                          report=report)
    console.print(f"[bold]Tokenized for {loaded.model.name}[/] (max_seq_len {loaded.model.max_seq_len}, "
                  f"truncation {loaded.data.truncation}, train_on {loaded.data.train_on})")
    table = Table()
    for column in ("source", "kept", "dropped", "truncated", "tokens", "trained"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name, tally in by_source.items():
        share = f" ({100 * tally.trained_tokens / max(tally.tokens, 1):.0f}%)"
        table.add_row(name, str(tally.kept), f"[red]{tally.dropped}[/]" if tally.dropped else "0", str(tally.truncated),
                      f"{tally.tokens:,}", f"{tally.trained_tokens:,}{share}")
    console.print(table)
    for problem in dropped[:5]:
        console.print(f"dropped {problem}", style="yellow", markup=False, soft_wrap=True)  # file:line stays whole
    if len(dropped) > 5:
        console.print(f"... and {len(dropped) - 5} more dropped at tokenization")
    for line in report.lines():
        console.print(line, style="yellow" if line.startswith("warning") else None, markup=False, soft_wrap=True)


@data_app.command("preview")
@_friendly
def data_preview(
    recipe: Path = typer.Argument(..., help="A recipe: its tokenizer, chat template and training data are used."),
    n: int = typer.Option(3, "-n", min=1, help="How many conversations to show."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
) -> None:
    """Show rendered training samples with the trained (loss) tokens highlighted. Loads the tokenizer only."""
    from .backends.loading import load_tokenizer, model_source
    from .data.conversations import read_conversations
    from .data.preview import preview_rows, render_row
    from .quiet import quiet_libraries
    from .recipe import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    quiet_libraries()
    if loaded.data.sources:
        from .data.pipeline import build_data

        path = build_data(loaded).train_file
    else:
        path = loaded.resolve_path(loaded.data.train)
    template = loaded.resolve_path(loaded.model.chat_template) if loaded.model.chat_template else None
    tokenizer = load_tokenizer(model_source(loaded.model.name), loaded.model, template)
    records = read_conversations(path).records[:n]
    rows = preview_rows(records, tokenizer, loaded.model.max_seq_len, loaded.data.train_on)
    for row in rows:
        console.print(render_row(row))
    tokens, trained = sum(r["tokens"] for r in rows), sum(r["trained"] for r in rows)
    console.print(f"{len(rows)} samples from {path}: {tokens} tokens, {trained} trained "
                  f"({100 * trained / max(tokens, 1):.0f}%); highlighted text carries the loss (train_on = {loaded.data.train_on})")


@app.command("recipes")
@_friendly
def list_recipes(
    folder: Path | None = typer.Option(None, "--dir", help="Folder of recipes (default: ./recipes, then the bundled ones)."),
) -> None:
    """List the bundled recipes."""
    from rich.table import Table

    from .preflight import run_preflight
    from .recipe import load_recipe
    from .recipes_index import find_recipes, recipe_summary

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
    about: list[tuple[str, str]] = []
    for path in paths:
        shown = path.name
        try:
            loaded = load_recipe(path)
        except QloraError as error:
            table.add_row(shown, "[red]invalid[/]", "", "", "", "", "")
            about.append((shown, f"[red]{error.message}[/]"))
            continue
        t = loaded.training
        report = run_preflight(loaded, None, offline=True)
        vram = f"{report.estimate.total_gib:.1f}" if report.estimate else "?"
        fits = "?" if report.fits is None else ("[green]yes[/]" if report.fits else "[red]no[/]")
        table.add_row(
            shown, loaded.model.name, str(loaded.model.max_seq_len), f"{t.batch_size} x {t.grad_accum}",
            "yes" if loaded.model.load_in_4bit else "no", vram, fits,
        )
        about.append((shown, recipe_summary(path)))
    console.print(table)
    for shown, text in about:
        if text:
            console.print(f"[bold]{shown}[/]: {text}")


def _display(path: Path) -> str:
    """A recipe path as the user would type it: relative to the working folder when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@app.command()
@_friendly
def doctor(
    recipe: Path | None = typer.Argument(None, help="Also judge what this recipe needs (its backend, 4-bit)."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (rows, ok, backend) instead of the table."),
) -> None:
    """Can this machine train? Python, torch and CUDA, package versions against the lock, unsloth, bitsandbytes, disk, hub.

    Exit 1 when something training needs is broken (or the recipe cannot run here).
    """
    from .doctor import print_report, run_doctor
    from .recipe import load_recipe

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
