"""The one shared Rich console and the few ways qlora4080 prints to it."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from .distributed import process_index
from .errors import QloraError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def speak_only_as_main_process() -> None:
    """Processes 1..N-1 print nothing but their own errors, one line each: process 0 shows the run once."""
    if process_index() != 0:
        console.quiet = True


def stage(message: str) -> None:
    """One line saying what is happening now (loading, training, saving...)."""
    console.print(f"[bold cyan]>>[/] {message}")


def warn(message: str) -> None:
    if process_index():
        return  # process 0 says the same
    err_console.print(f"[yellow]warning:[/] {message}")


def print_error(error: QloraError) -> None:
    if follower := process_index():
        if not getattr(error, "shown_by_main_process", False):  # process 0's own failure is in its panel already
            err_console.print(f"process {follower}: error: {error}", markup=False, soft_wrap=True)
        return
    body = Text()
    if error.where:
        body.append(f"{error.where}\n", style="bold")
    body.append(error.message)
    if error.hint:
        body.append("\n\n")
        body.append("What to do: ", style="bold green")
        body.append(error.hint)
    err_console.print(Panel(body, title="[bold red]error", border_style="red", expand=False))
