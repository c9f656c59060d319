"""The Typer application and its `data` group; the command modules register on these."""

from __future__ import annotations

import typer

from ..console import console

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


@app.callback(invoke_without_command=True)
def main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        from .. import __version__

        console.print(f"qlora4080 {__version__}")
        raise typer.Exit(0)
