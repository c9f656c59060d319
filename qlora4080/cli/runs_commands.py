"""`qlora4080 runs`: list the runs, `runs compare A B ...` side by side, `runs plot RUN` draws loss.png.

Reading runs needs no model library; matplotlib loads only inside `runs plot`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..console import console
from .app import app
from .friendly import friendly_errors

if TYPE_CHECKING:
    from ..runs_report import Comparison, RunRecord

runs_app = typer.Typer(help="List, compare and plot training runs (runs/<run>/).", no_args_is_help=False)
app.add_typer(runs_app, name="runs")

RUNS_DIR_HELP = "Folder of run logs (the recipe's output.runs_dir)."
CHECKPOINTS_DIR_HELP = "Folder of checkpoints (default: where each run's recipe put them, else ./checkpoints)."
STATUS_STYLE = {"finished": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}
# Counts in eval.json that say how much was evaluated, not how well: JSON only, not the table.
_EVAL_COUNTS = {"records", "tokens", "pairs", "json_records", "mean_nll"}


@runs_app.callback(invoke_without_command=True)
@friendly_errors
def runs_list(
    ctx: typer.Context,
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help=RUNS_DIR_HELP),
    checkpoints_dir: Path | None = typer.Option(None, "--checkpoints-dir", help=CHECKPOINTS_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the runs: status, method, base model, steps, losses, eval results, wall time, peak memory."""
    if ctx.invoked_subcommand is not None:
        return
    from ..runs_report import list_runs

    records = list_runs(runs_dir, checkpoints_dir)
    if as_json:
        _print_json([record.to_json() for record in records])
        return
    if not records:
        console.print(f"no runs in {runs_dir} yet (`qlora4080 train RECIPE` writes them there)")
        return
    _print_list(records, runs_dir)


@runs_app.command("compare")
@friendly_errors
def runs_compare(
    names: list[str] = typer.Argument(..., help="Two or more run names (folders under --runs-dir)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help=RUNS_DIR_HELP),
    checkpoints_dir: Path | None = typer.Option(None, "--checkpoints-dir", help=CHECKPOINTS_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Runs side by side: the recipe keys that differ, then final loss, eval metrics, wall time, peak memory."""
    from ..errors import QloraError
    from ..runs_report import compare_runs, select_runs

    runs = select_runs(runs_dir, names, checkpoints_dir)  # a run named twice (or by name and by path) is one run
    if len(runs) < 2:
        raise QloraError("compare needs at least two different runs", hint="qlora4080 runs compare RUN_A RUN_B")
    comparison = compare_runs(runs)
    if as_json:
        _print_json(comparison.to_json())
        return
    _print_comparison(comparison)


@runs_app.command("plot")
@friendly_errors
def runs_plot(
    name: str = typer.Argument(..., help="Run name (a folder under --runs-dir)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help=RUNS_DIR_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", help="PNG file to write (default runs/<run>/loss.png)."),
) -> None:
    """Draw training loss, eval loss and learning rate (and DPO/ORPO's reward margin) against the step."""
    from ..plots import check_plot_target, write_loss_plot
    from ..runs_report import select_runs
    from .outputs import check_output_file

    run = select_runs(runs_dir, [name])[0]
    if out is not None:
        check_plot_target(out)  # a PNG file, never a run's metrics.jsonl or another file of the user's
        check_output_file(out, "--out")
    console.print(f"loss plot written to {write_loss_plot(run.run_dir, out)}", markup=False)


# The list's columns, most telling first; a narrow terminal shows only those that fit (--json has them all).
LIST_COLUMNS = ("run", "status", "steps", "loss", "eval loss", "time", "method", "peak GiB", "started", "ppl", "base model",
                "eval.json")
NUMERIC_COLUMNS = frozenset({"steps", "loss", "eval loss", "ppl", "time", "peak GiB"})
# Width a column needs to stay readable (header or typical value), plus the table's borders and padding.
COLUMN_WIDTHS = {"run": 16, "status": 10, "steps": 5, "loss": 6, "eval loss": 9, "time": 7, "method": 6, "peak GiB": 8,
                 "started": 16, "ppl": 6, "base model": 16, "eval.json": 16}


def _fitting_columns(width: int) -> list[str]:
    shown: list[str] = []
    used = 1
    for column in LIST_COLUMNS:
        if used + COLUMN_WIDTHS[column] + 3 > width and len(shown) >= 2:
            break
        shown.append(column)
        used += COLUMN_WIDTHS[column] + 3
    return shown


def _print_list(records: list[RunRecord], runs_dir: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    columns = _fitting_columns(console.width)
    table = Table(title=escape(f"Runs in {runs_dir}"), title_justify="left")
    for column in columns:
        numeric = column in NUMERIC_COLUMNS
        table.add_column(column, justify="right" if numeric else "left", overflow="fold",
                         no_wrap=column in ("status", "started") or numeric, min_width=min(COLUMN_WIDTHS[column], 12))
    for run in records:
        status = run.status.status + (f" ({run.status.note})" if run.status.note else "")
        # names and values come from folders and files: "[red]x" is a name, not markup
        cells = {
            "run": escape(run.name), "status": f"[{STATUS_STYLE[run.status.status]}]{status}[/]",
            "method": escape(run.method or "?"), "base model": escape(_short_model(run.base_model)),
            "started": run.started or "?", "steps": _fmt(run.steps),
            # a grpo run's loss is about 0 on policy: its reward says how training went
            "loss": _fmt(run.final_loss) if run.final_reward is None else f"reward {_fmt(run.final_reward)}",
            "eval loss": _fmt(run.eval_loss), "ppl": _fmt(run.eval_perplexity),
            "eval.json": escape(_eval_summary(run.eval_metrics)), "time": _duration(run.wall_seconds),
            "peak GiB": _fmt(run.peak_memory_gib),
        }
        table.add_row(*(cells[column] for column in columns))
    console.print(table)
    if len(columns) < len(LIST_COLUMNS):
        hidden = ", ".join(column for column in LIST_COLUMNS if column not in columns)
        console.print(f"(not shown at this width: {hidden}; see a wider terminal, or --json)", style="dim")
    for run in records:
        for problem in run.problems:
            console.print(f"note: {run.name}: {problem}", style="yellow", markup=False, soft_wrap=True)


def _print_comparison(comparison: Comparison) -> None:
    from rich.markup import escape
    from rich.table import Table

    names = [escape(run.name) for run in comparison.runs]
    settings = Table(title="Recipe keys that differ", title_justify="left")
    settings.add_column("key")
    for name in names:
        settings.add_column(name, overflow="fold")
    for key, values in comparison.recipe_differences.items():
        settings.add_row(escape(key), *(escape(_fmt(value)) for value in values))
    if comparison.recipe_differences:
        console.print(settings)
    elif all(run.recipe for run in comparison.runs):
        console.print("the runs' recipes are the same")
    missing = [run.name for run in comparison.runs if not run.recipe]
    if missing:
        console.print(f"no recipe snapshot found for {', '.join(missing)} (pass --checkpoints-dir if the checkpoints are "
                      "elsewhere)", style="yellow", markup=False)
    results = Table(title="Results", title_justify="left")
    results.add_column("")
    for name in names:
        results.add_column(name, justify="right")
    results.add_row("status", *(run.status.status for run in comparison.runs))
    for label, values in comparison.results.items():
        if any(value is not None for value in values):
            results.add_row(escape(label), *(_fmt(value, percent=_is_rate(label)) for value in values))
    console.print(results)


def _print_json(data: object) -> None:
    # plain stdout: no Rich wrapping in JSON; NaN/Infinity (a diverged loss) become null, which every JSON reader takes
    sys.stdout.write(json.dumps(_finite(data), indent=2, default=str, allow_nan=False) + "\n")


def _finite(data: object) -> object:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def _eval_summary(metrics: dict[str, float]) -> str:
    shown = [(key, value) for key, value in metrics.items() if key not in _EVAL_COUNTS]
    return ", ".join(f"{key.removesuffix('_rate')} {_fmt(value, percent=_is_rate(key))}" for key, value in shown) or "-"


def _is_rate(key: str) -> bool:
    return key.endswith(("_rate", "accuracy"))


def _short_model(name: str | None) -> str:
    """A local folder by its name (the full path is in --json); hub ids and builtin names as they are."""
    if not name:
        return "?"
    return Path(name).name if name.startswith(("/", "~", ".")) else name


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):  # a damaged summary.json can say NaN
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _fmt(value: object, percent: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}" if percent else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)
