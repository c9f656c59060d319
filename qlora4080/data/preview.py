"""`qlora4080 data preview`: see exactly which tokens carry loss before spending GPU time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import TYPE_CHECKING, TypedDict

from ..errors import QloraError
from .conversations import record_messages, record_tools
from .render import MaskReport, render_or_reject
from .vocabulary import IGNORE_INDEX, TrainOn

if TYPE_CHECKING:
    from rich.console import RenderableType

    from .templates import Tokenizer


class _PreviewRowRequired(TypedDict):
    id: object  # the record's id, as written
    tokens: int
    trained: int
    cut: int  # tokens past max_seq_len
    segments: list[tuple[str, bool]]  # the text in runs, each trained or not


class PreviewRow(_PreviewRowRequired, total=False):
    """One record as `data preview` shows it."""

    skipped: str  # why training skips this record
    strategy: str  # how its assistant turns were located
    notes: list[str]  # the first row only: the template's summary line and warnings


def segments(ids: list[int], labels: list[int], tokenizer: Tokenizer) -> list[tuple[str, bool]]:
    """The rendered text cut into runs of trained / untrained tokens, each decoded as a whole."""
    runs = []
    position = 0
    for trained, group in groupby(labels, key=lambda label: label != IGNORE_INDEX):
        length = len(list(group))
        text = tokenizer.decode(ids[position : position + length])
        runs.append((text if isinstance(text, str) else "".join(text), trained))
        position += length
    return runs


def preview_rows(records: Sequence[Mapping[str, object]], tokenizer: Tokenizer, max_seq_len: int,
                 train_on: TrainOn) -> list[PreviewRow]:
    """One row per record; a record training would drop (the template refuses it) is a row that says why.

    Each row names how its assistant turns were located ("prefix", "full render");
    the first row also carries the template's notes (`notes`: a summary line,
    then every warning once), which render_row prints above it.
    """
    rows: list[PreviewRow] = []
    report = MaskReport(per_record=True)
    results = render_or_reject([record_messages(r) for r in records], tokenizer, train_on,
                               [record_tools(r) for r in records], report=report)
    for index, (record, rendered) in enumerate(zip(records, results)):
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
            "strategy": report.record_strategies.get(index, "all tokens" if train_on == "all" else ""),
        })
    if rows:
        rows[0]["notes"] = report.lines()
    return rows


def render_row(row: PreviewRow) -> RenderableType:
    """A Rich panel: trained text in bold green on a dark background, the rest dimmed (the template's notes above)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    text = Text()
    for piece, trained in row["segments"]:
        text.append(piece, style="bold green on grey15" if trained else "dim")
    if row.get("skipped"):
        panel = Panel(text, title=f"{row['id']}: skipped", title_align="left", border_style="yellow")
    else:
        cut = f", {row['cut']} cut by max_seq_len" if row["cut"] else ""
        title = (f"{row['id']}: {row['tokens']} tokens, {row['trained']} trained "
                 f"({100 * row['trained'] / max(row['tokens'], 1):.0f}%){cut}")
        subtitle = f"turns located by: {row['strategy']}" if row.get("strategy") else None
        panel = Panel(text, title=title, title_align="left", subtitle=subtitle, subtitle_align="right",
                      border_style="cyan")
    notes = row.get("notes")
    if not notes:
        return panel
    warned = any(line.startswith("warning:") for line in notes)
    header = Panel(Text("\n".join(notes)), title="chat template", title_align="left",
                   border_style="yellow" if warned else "cyan")
    return Group(header, panel)
