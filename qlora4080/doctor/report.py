"""The doctor's rows and verdict, as a Rich table or as one JSON object."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "warn", "fail", "info"]

# The table's sections, in the order they are shown.
GROUPS = ("system", "gpu stack", "packages", "training")
STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "info": "cyan"}


@dataclass(frozen=True)
class Row:
    group: str
    """One of GROUPS: where the row is shown."""
    name: str
    """Short label; never wraps on screen."""
    status: Status
    """fail = training cannot run; warn = it runs, worse than it should; info = a fact, nothing to fix."""
    value: str
    """What was found."""
    hint: str | None = None
    """The next step, for anything not ok."""


@dataclass
class Report:
    rows: list[Row]
    backend: str | None
    """The backend training would use here (None when it cannot run)."""
    backend_reason: str
    device: str
    """"cuda" or "cpu"."""
    verdict: str
    """One sentence: can this machine train (this recipe), and how."""
    hint: str | None = None
    """What to do when it cannot."""
    recipe: str | None = None
    """The recipe file judged, if any."""

    @property
    def ok(self) -> bool:
        return not any(row.status == "fail" for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "backend": {"name": self.backend, "reason": self.backend_reason, "device": self.device},
            "recipe": self.recipe,
            "verdict": self.verdict,
            "hint": self.hint,
            "rows": [asdict(row) for row in self.rows],
        }


def exception_line(exc: BaseException) -> str:
    """`Type: first line of the message`: library errors can run to pages of advice."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def print_report(report: Report) -> None:
    from rich.table import Table
    from rich.text import Text

    from ..console import console

    # Names and statuses never wrap (80 columns is what CI and pipes get); the value column
    # takes the rest, and the hint sits under its value, where it can wrap freely.
    table = Table(title="qlora4080 doctor", title_justify="left")
    table.add_column("check", no_wrap=True, style="bold")
    table.add_column("status", no_wrap=True)
    table.add_column("found / what to do", overflow="fold", ratio=1)
    for group in GROUPS:
        rows = [row for row in report.rows if row.group == group]
        if not rows:
            continue
        if table.row_count:
            table.add_section()
        table.add_row(Text(group, style="dim italic"), "", "")
        for row in rows:
            cell = Text(row.value)
            if row.hint:
                cell.append(f"\n-> {row.hint}", style="dim" if row.status == "info" else STATUS_STYLE[row.status])
            table.add_row(row.name, Text(row.status, style=STATUS_STYLE[row.status]), cell)
    console.print(table)
    style = "bold green" if report.ok else "bold red"
    console.print(Text(report.verdict, style=style))
    if report.hint:
        console.print(Text.assemble(("What to do: ", "bold green"), report.hint))
