"""The one shared Rich console and the few ways qlora4080 prints to it."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from .errors import QloraError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def stage(message: str) -> None:
    """One line saying what is happening now (loading, training, saving...)."""
    console.print(f"[bold cyan]>>[/] {message}")


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}")


def print_error(error: QloraError) -> None:
    body = Text()
    if error.where:
        body.append(f"{error.where}\n", style="bold")
    body.append(error.message)
    if error.hint:
        body.append("\n\n")
        body.append("What to do: ", style="bold green")
        body.append(error.hint)
    err_console.print(Panel(body, title="[bold red]error", border_style="red", expand=False))
