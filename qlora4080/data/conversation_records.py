"""Conversations as a record kind: what sft trains on (see records.py for the interface).

Every conversation format (messages, sharegpt, alpaca, ...) is normalized to
messages, cleaned and validated; tokenizing renders each with the chat template
and labels the trained turns (train_on), as render.py decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..thinking import describe, template_has_switch
from .formats import DEFAULT_COLUMNS, FormatError, detect_format, to_messages
from .mixing import conversation_key
from .records import BuildRecord, Log, Pool, PoolStats, Preview, TokenTable, gather_pool
from .validate import CONTROL_CHARS, validate_messages
from .vocabulary import FORMATS, Message

if TYPE_CHECKING:
    from ..model_types import Tokenizer
    from ..recipe import Recipe, SourceSection
    from .dataset import TokenizedSplit
    from .jsonl import Row
    from .render import MaskReport


def clean(messages: Sequence[Message]) -> list[Message]:
    """Strip control characters; drop turns left empty (an assistant turn with tool calls is kept)."""
    cleaned: list[Message] = []
    for message in messages:
        if not isinstance(message, dict):  # not a message at all: left for validate_messages to name
            cleaned.append(message)
            continue
        message = message.copy()  # the caller's record stays as read
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = CONTROL_CHARS.sub("", content).strip()
        if not message.get("content") and not message.get("tool_calls"):
            continue
        cleaned.append(message)
    return cleaned


class ConversationRecords:
    name = "conversations"
    unit = "conversations"
    formats: tuple[str, ...] = FORMATS

    def fields(self, fmt: str) -> tuple[str, ...]:
        return tuple(DEFAULT_COLUMNS.get(fmt, {}))

    def detect(self, records: Sequence[object]) -> str | None:
        return detect_format(records)

    def check(self, record: object, fmt: str, columns: Mapping[str, str]) -> str | None:
        try:
            return validate_messages(to_messages(record, fmt, columns))
        except FormatError as exc:
            return str(exc)

    def load_pool(self, rows: list[Row], origin: Path, source: SourceSection) -> Pool:
        fmt = source.format
        if fmt == "auto":
            fmt = detect_format([row for _, row, problem in rows if problem is None]) or "messages"
        stats = PoolStats(name=source.label, format=fmt)

        def to_record(number: int, row: dict[str, object]) -> BuildRecord | str:
            try:
                messages = clean(to_messages(row, fmt, source.columns, source.max_answer_chars))
            except FormatError as exc:
                return str(exc)
            if problem := validate_messages(messages):
                return problem
            extra_tags = row.get("tags")
            record: dict[str, object] = {
                "id": f"{stats.name}-{number}", "messages": messages, "source": stats.name,
                "tags": sorted(set(source.tags) | set(map(str, extra_tags if isinstance(extra_tags, list) else [])))}
            if row.get("tools"):
                record["tools"] = row["tools"]
            return record

        return gather_pool(rows, origin, stats, to_record, self.key, unit="record",
                           hint="check the format and columns of this source with `qlora4080 data check`")

    def key(self, record: BuildRecord) -> str:
        messages = record["messages"]
        assert isinstance(messages, list)  # every conversation record has its messages
        return conversation_key(messages)

    def split_group(self, record: BuildRecord) -> str:
        return str(record["id"])  # each conversation on its own (and a repeated one with its copies)

    def tokenize(self, train: Path, validation: Path | None, tokenizer: Tokenizer, recipe: Recipe,
                 log: Log) -> tuple[TokenizedSplit, TokenizedSplit | None]:
        from .render import MaskReport

        report = MaskReport()  # how each assistant turn was located, and the template's warnings, said once
        train_split = _tokenize_split("train", train, recipe, tokenizer, log, report)
        validation_split = _tokenize_split("validation", validation, recipe, tokenizer, log, report) if validation else None
        for line in report.lines():
            log.line(line, style="yellow" if line.startswith("warning") else None)
        return train_split, validation_split

    def tokens_by_source(self, files: list[Path], tokenizer: Tokenizer, recipe: Recipe) -> TokenTable:
        from .dataset import tokens_by_source
        from .render import MaskReport

        report = MaskReport()
        by_source, dropped = tokens_by_source(files, tokenizer, recipe.model.max_seq_len, recipe.data.train_on,
                                              recipe.data.truncation, report=report)
        heading = (f"max_seq_len {recipe.model.max_seq_len}, truncation {recipe.data.truncation}, "
                   f"train_on {recipe.data.train_on}")
        return TokenTable(by_source, dropped, heading, report.lines())

    def preview(self, path: Path, tokenizer: Tokenizer, recipe: Recipe, count: int) -> Preview:
        from .conversations import read_conversations
        from .preview import preview_rows, render_row

        records = read_conversations(path).records[:count]
        rows = preview_rows(records, tokenizer, recipe.model.max_seq_len, recipe.data.train_on)
        notes = [describe(recipe.model.thinking)] if (
            recipe.model.thinking != "auto" or template_has_switch(str(tokenizer.chat_template))) else []
        tokens, trained = sum(r["tokens"] for r in rows), sum(r["trained"] for r in rows)
        footer = (f"{len(rows)} samples from {path}: {tokens} tokens, {trained} trained "
                  f"({100 * trained / max(tokens, 1):.0f}%); highlighted text carries the loss "
                  f"(train_on = {recipe.data.train_on})")
        return Preview([render_row(row) for row in rows], footer, notes)


def _tokenize_split(key: str, file: Path, recipe: Recipe, tokenizer: Tokenizer, log: Log,
                    report: MaskReport) -> TokenizedSplit:
    """One split with assistant-only labels; what was skipped and why goes to train.log."""
    from .conversations import read_conversations
    from .dataset import tokenize_conversations

    source = read_conversations(file)
    split = tokenize_conversations(source, tokenizer, recipe.model.max_seq_len, recipe.data.train_on,
                                   recipe.data.truncation, allow_empty=key == "validation", report=report)
    problems = source.rejected + split.dropped
    for problem in problems[:10]:
        log.line(f"skipped {problem}", style="yellow")
    if len(problems) > 10:
        log.line(f"... and {len(problems) - 10} more skipped records", style="yellow")
    log.line(
        f"{key}: {split.conversations} conversations kept ({len(source.rejected)} rejected, "
        f"{len(split.dropped)} dropped, {split.truncated} truncated to {recipe.model.max_seq_len}); "
        f"{split.tokens:,} tokens, {split.trained_tokens:,} trained ({100 * split.trained_tokens / max(split.tokens, 1):.1f}%)"
    )
    if recipe.data.sources and split.dropped and split.conversations:
        log.line("  dropped at tokenization, by source: "
                 + ", ".join(f"{name} {tally.dropped}" for name, tally in split.by_source.items()))
    return split


CONVERSATIONS = ConversationRecords()
"""The conversation record kind (sft)."""
