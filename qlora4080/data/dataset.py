"""Conversations -> a tokenized `datasets.Dataset` of input_ids + labels for the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import QloraError
from .conversations import Conversations, Rejected, record_messages, record_tools
from .render import MaskReport, render_or_reject
from .vocabulary import IGNORE_INDEX, TrainOn

if TYPE_CHECKING:
    from datasets import Dataset

    from .templates import Tokenizer


@dataclass
class TokenizedSplit:
    dataset: Dataset  # input_ids, labels
    conversations: int
    tokens: int
    trained_tokens: int
    truncated: int = 0
    dropped: list[Rejected] = field(default_factory=list)
    by_source: dict[str, SourceTokens] = field(default_factory=dict)


@dataclass
class SourceTokens:
    """Per data source (the `source` tag a data build writes): what tokenization did to its records."""

    kept: int = 0
    dropped: int = 0
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0

    def add(self, other: SourceTokens) -> None:
        self.kept += other.kept
        self.dropped += other.dropped
        self.truncated += other.truncated
        self.tokens += other.tokens
        self.trained_tokens += other.trained_tokens


def tokenize_conversations(
    source: Conversations, tokenizer: Tokenizer, max_seq_len: int, train_on: TrainOn, truncation: str = "keep_start",
    allow_empty: bool = False, report: MaskReport | None = None,
) -> TokenizedSplit:
    """Render and mask every conversation; longer ones keep their first max_seq_len tokens or are dropped.

    A conversation whose trained tokens all fall past max_seq_len would only
    add compute, so it is dropped and reported rather than trained silently.
    So is one the chat template refuses (or whose turns are out of order): it
    is dropped with its file:line and the reason, and the rest go on. Only when
    nothing is left does this stop (unless allow_empty).
    """
    from datasets import Dataset

    rows: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    dropped: list[Rejected] = []
    rendered_all = render_or_reject([record_messages(r) for r in source.records], tokenizer, train_on,
                                    [record_tools(r) for r in source.records], report=report)
    by_source: dict[str, SourceTokens] = {}
    for line, record, rendered in zip(source.lines, source.records, rendered_all):
        tally = by_source.setdefault(str(record.get("source") or source.path.name), SourceTokens())
        if isinstance(rendered, QloraError):
            dropped.append(Rejected(source.path, line, rendered.message))
            tally.dropped += 1
            continue
        ids, labels = rendered["input_ids"], rendered["labels"]
        if len(ids) > max_seq_len:
            if truncation == "drop":
                dropped.append(Rejected(source.path, line, f"{len(ids)} tokens, longer than max_seq_len={max_seq_len} (truncation = drop)"))
                tally.dropped += 1
                continue
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        if all(label == IGNORE_INDEX for label in labels):
            dropped.append(Rejected(source.path, line, f"no trained token within max_seq_len={max_seq_len}"))
            tally.dropped += 1
            continue
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        tally.kept += 1
        tally.truncated += len(rendered["input_ids"]) > max_seq_len  # kept, but cut
        tally.tokens += len(ids)
        tally.trained_tokens += sum(label != IGNORE_INDEX for label in labels)
    dropped.sort(key=lambda problem: problem.line)
    if not rows["input_ids"] and not allow_empty:
        by_length = dropped and all("max_seq_len" in problem.reason for problem in dropped)
        raise QloraError(
            f"every conversation in {source.path} was dropped ({len(dropped)}); first: {dropped[0] if dropped else '?'}",
            hint="raise [model] max_seq_len" if by_length else
            "fix those records, or set [model] chat_template to a template that accepts them",
        )
    total = SourceTokens()
    for tally in by_source.values():
        total.add(tally)
    return TokenizedSplit(
        dataset=Dataset.from_dict(rows),
        conversations=total.kept,
        tokens=total.tokens,
        trained_tokens=total.trained_tokens,
        truncated=total.truncated,
        dropped=dropped,
        by_source=by_source,
    )


def tokens_by_source(files: list[Path], tokenizer: Tokenizer, max_seq_len: int, train_on: TrainOn,
                     truncation: str = "keep_start", report: MaskReport | None = None,
                     ) -> tuple[dict[str, SourceTokens], list[Rejected]]:
    """What tokenization does to each source of a data build (train and validation together), and its drops."""
    from .conversations import read_conversations

    merged: dict[str, SourceTokens] = {}
    dropped: list[Rejected] = []
    for path in files:
        source = read_conversations(path)
        if not source.records:
            continue
        split = tokenize_conversations(source, tokenizer, max_seq_len, train_on, truncation, allow_empty=True,
                                       report=report)
        dropped += split.dropped
        for name, tally in split.by_source.items():
            merged.setdefault(name, SourceTokens()).add(tally)
    return merged, dropped
