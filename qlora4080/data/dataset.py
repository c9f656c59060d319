"""Conversations -> a tokenized `datasets.Dataset` of input_ids + labels for the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import QloraError
from .conversations import Conversations, Rejected
from .render import IGNORE_INDEX, TrainOn, render_many


@dataclass
class TokenizedSplit:
    dataset: Any  # datasets.Dataset with input_ids, labels
    conversations: int
    tokens: int
    trained_tokens: int
    truncated: int = 0
    dropped: list[Rejected] = field(default_factory=list)


def tokenize_conversations(
    source: Conversations, tokenizer: Any, max_seq_len: int, train_on: TrainOn, truncation: str = "keep_start"
) -> TokenizedSplit:
    """Render and mask every conversation; longer ones keep their first max_seq_len tokens or are dropped.

    A conversation whose trained tokens all fall past max_seq_len would only
    add compute, so it is dropped and reported rather than trained silently.
    """
    from datasets import Dataset

    rows: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    dropped: list[Rejected] = []
    truncated = tokens = trained = 0
    rendered_all = render_many([r["messages"] for r in source.records], tokenizer, train_on,
                               [r.get("tools") for r in source.records])
    for line, rendered in zip(source.lines, rendered_all):
        if isinstance(rendered, QloraError):
            dropped.append(Rejected(source.path, line, rendered.message))
            continue
        ids, labels = rendered["input_ids"], rendered["labels"]
        if len(ids) > max_seq_len:
            if truncation == "drop":
                dropped.append(Rejected(source.path, line, f"{len(ids)} tokens, longer than max_seq_len={max_seq_len} (truncation = drop)"))
                continue
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        if all(label == IGNORE_INDEX for label in labels):
            dropped.append(Rejected(source.path, line, f"no trained token within max_seq_len={max_seq_len}"))
            continue
        truncated += len(rendered["input_ids"]) > max_seq_len  # kept, but cut
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        tokens += len(ids)
        trained += sum(label != IGNORE_INDEX for label in labels)
    dropped.sort(key=lambda problem: problem.line)
    if not rows["input_ids"]:
        raise QloraError(
            f"every conversation in {source.path} was dropped; first: {dropped[0] if dropped else '?'}",
            hint="raise [model] max_seq_len or check the data",
        )
    return TokenizedSplit(
        dataset=Dataset.from_dict(rows),
        conversations=len(rows["input_ids"]),
        tokens=tokens,
        trained_tokens=trained,
        truncated=truncated,
        dropped=dropped,
    )
