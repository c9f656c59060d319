"""`qlora4080 data preview`: see exactly which tokens carry loss before spending GPU time."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from ..errors import QloraError
from .render import IGNORE_INDEX, render_many


def segments(ids: list[int], labels: list[int], tokenizer: Any) -> list[tuple[str, bool]]:
    """The rendered text cut into runs of trained / untrained tokens, each decoded as a whole."""
    runs = []
    position = 0
    for trained, group in groupby(labels, key=lambda label: label != IGNORE_INDEX):
        length = len(list(group))
        runs.append((tokenizer.decode(ids[position : position + length]), trained))
        position += length
    return runs


def preview_rows(records: list[dict[str, Any]], tokenizer: Any, max_seq_len: int, train_on: str) -> list[dict[str, Any]]:
    """One row per record; a record training would drop (the template refuses it) is a row that says why."""
    rows: list[dict[str, Any]] = []
    results = render_many([r["messages"] for r in records], tokenizer, train_on, [r.get("tools") for r in records])
    for record, rendered in zip(records, results):
        if isinstance(rendered, QloraError):
            rows.append({"id": record.get("id"), "tokens": 0, "trained": 0, "cut": 0, "skipped": rendered.message,
                         "segments": [(f"training skips this record: {rendered.message}", False)]})
            continue
        ids, labels = rendered["input_ids"][:max_seq_len], rendered["labels"][:max_seq_len]
        rows.append({
            "id": record.get("id"),
            "tokens": len(ids),
            "trained": sum(label != IGNORE_INDEX for label in labels),
            "cut": len(rendered["input_ids"]) - len(ids),
            "segments": segments(ids, labels, tokenizer),
        })
    return rows


def render_row(row: dict[str, Any]) -> Any:
    """A Rich panel: trained text in bold green on a dark background, the rest dimmed."""
    from rich.panel import Panel
    from rich.text import Text

    text = Text()
    for piece, trained in row["segments"]:
        text.append(piece, style="bold green on grey15" if trained else "dim")
    if row.get("skipped"):
        return Panel(text, title=f"{row['id']}: skipped", title_align="left", border_style="yellow")
    cut = f", {row['cut']} cut by max_seq_len" if row["cut"] else ""
    title = f"{row['id']}: {row['tokens']} tokens, {row['trained']} trained ({100 * row['trained'] / max(row['tokens'], 1):.0f}%){cut}"
    return Panel(text, title=title, title_align="left", border_style="cyan")
