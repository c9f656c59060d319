"""Prompt records: a prompt to answer, with the reference the rewards read (what grpo trains on).

Read in the "prompts" format:

- `{"prompt": "...", "answer": ...}`: the prompt a string (one user turn,
  after an optional "system" string) or a message list ending with a user
  turn; `answer`, optional, is the reference (a string, a number, or a JSON
  value, kept as text);
- `{"messages": [...]}`: a conversation; when it ends with an assistant turn,
  that turn is the reference and the prompt is everything before it.

Every conversation format (cmath, mawps, alpaca, ...) reads too, the same way
as messages: CMATH's question is the prompt and its golden answer the
reference number. A build writes `{"id", "prompt": [messages], "answer",
"tags", "source"}`; the trainer gets each prompt as messages and renders it
with the chat template (the system turn folded in where the template has none,
as chat does), and every reward gets the record's "answer" and "tags".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..data.conversations import Rejected
from ..data.formats import DEFAULT_COLUMNS, FormatError, detect_format, to_messages
from ..data.mixing import conversation_key
from ..data.records import BuildRecord, Log, Pool, PoolStats, Preview, TokenTable, gather_pool, renamed_fields
from ..data.validate import validate_messages
from ..data.vocabulary import FORMATS, Message
from ..errors import QloraError
from ..preference.pair_records import cleaned_message
from ..preference.pairs import prompt_messages

if TYPE_CHECKING:
    from ..data.dataset import TokenizedSplit
    from ..data.jsonl import Row
    from ..model_types import Tokenizer
    from ..recipe import Recipe, SourceSection

PROMPTS_FORMAT = "prompts"
PROMPT_FIELDS = ("prompt", "messages", "system", "answer")
"""The fields a prompt record is read from; a source's `columns` can map each to another name."""
_ANSWER_FIELDS = ("completion", "chosen", "rejected", "label")
"""A record with one of these is an answer to train on (sft, dpo, kto), not a prompt."""


@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: list[Message]
    """Ends with a user (or tool) turn: the next turn is the model's."""
    answer: str | None = None
    """The reference the rewards compare with, as text (a JSON value is kept as its JSON)."""
    tags: tuple[str, ...] = ()
    line: int = 0
    """Its line in the file it was read from (0: not read from a file)."""


def mostly_prompts(records: Sequence[object]) -> bool:
    """Do most of the first records hold a prompt with no answer to train on (a "prompt", or messages ending with a
    user turn)?"""
    sample = [r for r in records[:20] if isinstance(r, dict)]

    def is_prompt(record: dict[str, object]) -> bool:
        if any(key in record for key in _ANSWER_FIELDS):
            return False
        messages = record.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            return messages[-1].get("role") in ("user", "tool")
        return "prompt" in record

    return bool(sample) and sum(map(is_prompt, sample)) * 2 > len(sample)


def detected_format(records: Sequence[object]) -> str:
    """How a file's records read as prompts: the prompts format, else the conversation format they are in."""
    return PROMPTS_FORMAT if mostly_prompts(records) else detect_format(records) or PROMPTS_FORMAT


def reference_text(value: object) -> str | None:
    """A reference answer as text: a string as is, anything else as its JSON (42 -> "42")."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    return json.dumps(value, ensure_ascii=False)


def to_prompt(record: Mapping[str, object], fmt: str, columns: Mapping[str, str], default_id: str) -> PromptRecord | str:
    """The prompt (and reference) a record holds in format `fmt`, or why it holds none."""
    fields = renamed_fields(record, columns) if fmt == PROMPTS_FORMAT else dict(record)
    if fmt == PROMPTS_FORMAT:
        if "prompt" in fields:
            prompt = prompt_messages(fields)
            if isinstance(prompt, str):
                return prompt
            messages: list[Message] = prompt
        elif isinstance(fields.get("messages"), list):
            messages = cast("list[Message]", fields["messages"])
        else:
            return "a prompt record needs 'prompt' (a string or messages) or 'messages'"
    else:
        try:
            messages = to_messages(record, fmt, columns)
        except FormatError as error:
            return str(error)
    answer = reference_text(fields.get("answer")) if fmt == PROMPTS_FORMAT else None
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        last = messages[-1].get("content")
        answer = answer if answer is not None else reference_text(last if isinstance(last, str) else None)
        messages = messages[:-1]
    if not messages:
        return "the record has no prompt before its answer"
    last = messages[-1].get("role") if isinstance(messages[-1], dict) else None
    if last not in ("user", "tool"):
        return f"the prompt must end with a user (or tool) turn, not {last!r}"
    # the prompt with a stand-in answer goes through the same checks as a conversation to train on
    if problem := validate_messages([*messages, {"role": "assistant", "content": "answer"}]):
        return problem
    tags = record.get("tags")
    return PromptRecord(str(record.get("id", default_id)), [cleaned_message(m, None) for m in messages], answer,
                        tuple(map(str, tags)) if isinstance(tags, list) else ())


@dataclass
class PromptFile:
    path: Path
    records: list[PromptRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def read_prompt_records(path: Path) -> PromptFile:
    """Every usable prompt of a JSONL file (a build's, or one in any format read as prompts), and why the others not."""
    from ..data.jsonl import read_jsonl

    rows = list(read_jsonl(path))
    fmt = detected_format([record for _, record, problem in rows if problem is None])
    result = PromptFile(path)
    for number, record, problem in rows:
        read = to_prompt(record, fmt, {}, f"line-{number}") if isinstance(record, dict) else problem or \
            "expected a JSON object"
        if isinstance(read, str):
            result.rejected.append(Rejected(path, number, read))
        else:
            result.records.append(replace(read, line=number))
    return result


class PromptRecords:
    name = "prompts"
    unit = "prompts"
    formats: tuple[str, ...] = (PROMPTS_FORMAT, *FORMATS)

    def fields(self, fmt: str) -> tuple[str, ...]:
        return PROMPT_FIELDS if fmt == PROMPTS_FORMAT else tuple(DEFAULT_COLUMNS.get(fmt, {}))

    def detect(self, records: Sequence[object]) -> str | None:
        return PROMPTS_FORMAT if mostly_prompts(records) else None

    def check(self, record: object, fmt: str, columns: Mapping[str, str]) -> str | None:
        if not isinstance(record, dict):
            return "expected a JSON object"
        read = to_prompt(record, fmt, columns, "")
        return read if isinstance(read, str) else None

    def load_pool(self, rows: list[Row], origin: Path, source: SourceSection) -> Pool:
        fmt = source.format
        if fmt == "auto":
            fmt = detected_format([row for _, row, problem in rows if problem is None])
        if fmt == PROMPTS_FORMAT and (unknown := sorted(set(source.columns) - set(PROMPT_FIELDS))):
            raise QloraError(f"source '{source.label}': columns names {', '.join(map(repr, unknown))}, which prompt "
                             "records do not have", where="[[data.sources]] columns",
                             hint=f"prompt columns are {', '.join(PROMPT_FIELDS)}")
        stats = PoolStats(name=source.label, format=fmt)

        def to_record(number: int, row: dict[str, object]) -> BuildRecord | str:
            read = to_prompt(row, fmt, source.columns, f"{stats.name}-{number}")
            if isinstance(read, str):
                return read
            return {"id": f"{stats.name}-{number}", "prompt": read.prompt, "answer": read.answer, "source": stats.name,
                    "tags": sorted(set(source.tags) | set(read.tags))}

        return gather_pool(rows, origin, stats, to_record, self.key, unit="prompt",
                           hint="check it with `qlora4080 data check FILE --format prompts`")

    def key(self, record: BuildRecord) -> str:
        """The prompt and its reference: the same question with two references is two records."""
        prompt = record["prompt"]
        assert isinstance(prompt, list)  # a prompt build record holds messages
        return conversation_key([*prompt, {"role": "assistant", "content": str(record.get("answer"))}])

    def split_group(self, record: BuildRecord) -> str:
        prompt = record["prompt"]
        assert isinstance(prompt, list)
        return conversation_key(prompt)

    def tokenize(self, train: Path, validation: Path | None, tokenizer: Tokenizer, recipe: Recipe,
                 log: Log) -> tuple[TokenizedSplit, TokenizedSplit | None]:
        train_split = _prompt_split("train", train, tokenizer, recipe, log)
        return train_split, _prompt_split("validation", validation, tokenizer, recipe, log) if validation else None

    def tokens_by_source(self, files: list[Path], tokenizer: Tokenizer, recipe: Recipe) -> TokenTable:
        from ..data.dataset import SourceTokens
        from ..data.jsonl import read_jsonl

        room = prompt_room(recipe)
        merged: dict[str, SourceTokens] = {}
        dropped: list[Rejected] = []
        for path in files:
            for number, record, _problem in read_jsonl(path):
                read = to_prompt(record, PROMPTS_FORMAT, {}, f"line-{number}") if isinstance(record, dict) else \
                    "not a prompt record"
                if isinstance(read, str):  # a build writes only records that read back; this one was edited
                    dropped.append(Rejected(path, number, read))
                    continue
                assert isinstance(record, dict)
                tally = merged.setdefault(str(record.get("source", path.stem)), SourceTokens())
                length = len(prompt_ids(read, tokenizer))
                if length > room:
                    tally.dropped += 1
                    dropped.append(Rejected(path, number, _too_long(length, room, recipe)))
                    continue
                tally.kept += 1
                tally.tokens += length
        return TokenTable(merged, dropped, f"max_seq_len {recipe.model.max_seq_len} = prompt up to {room} + "
                                           f"[grpo] max_completion_length {recipe.model.max_seq_len - room}; "
                                           "tokens count prompts, answers are generated while training")

    def preview(self, path: Path, tokenizer: Tokenizer, recipe: Recipe, count: int) -> Preview:
        from ..data.preview import render_row, segments
        from ..data.vocabulary import IGNORE_INDEX

        read = read_prompt_records(path)
        rows = []
        for record in read.records[:count]:
            ids = prompt_ids(record, tokenizer)
            rows.append(render_row({"id": record.id, "tokens": len(ids), "trained": 0, "cut": 0,
                                    "segments": segments(ids, [IGNORE_INDEX] * len(ids), tokenizer),
                                    "strategy": f"reference: {record.answer}" if record.answer else "no reference"}))
        shown = min(count, len(read.records))
        return Preview(rows, f"{shown} prompts from {path}, rendered as the model sees them before it answers; GRPO "
                             "samples the answers and trains on them by their rewards",
                       [f"skipped {problem}" for problem in read.rejected[:5]])


def prompt_ids(record: PromptRecord, tokenizer: Tokenizer) -> list[int]:
    """The prompt's tokens ready for the model's answer, as chat, eval and the trainer render them."""
    from ..data.render import render_prompt

    return render_prompt(record.prompt, tokenizer)


def prompt_room(recipe: Recipe) -> int:
    """Most prompt tokens a record may have: max_seq_len less the answer's room."""
    from .grpo_settings import GRPOSection

    return recipe.model.max_seq_len - recipe.table(GRPOSection).max_completion_length


def _too_long(length: int, room: int, recipe: Recipe) -> str:
    return (f"the prompt is {length} tokens; model.max_seq_len {recipe.model.max_seq_len} leaves {room} beside "
            "[grpo] max_completion_length")


def _prompt_split(key: str, path: Path, tokenizer: Tokenizer, recipe: Recipe, log: Log) -> TokenizedSplit:
    """The split as TRL's GRPOTrainer takes it: prompts as messages, "answer" and "tags" for the rewards."""
    from datasets import Dataset

    from ..data.dataset import SourceTokens, TokenizedSplit
    from ..data.templates import fold_system_prompt

    if not path.is_file():
        raise QloraError(f"{key} file not found: {path}", where=f"[data] {key}")
    read = read_prompt_records(path)
    room = prompt_room(recipe)
    rows: list[dict[str, object]] = []
    tally = SourceTokens()
    dropped: list[Rejected] = []
    for record in read.records:
        length = len(prompt_ids(record, tokenizer))
        if length > room:
            dropped.append(Rejected(path, record.line, f"prompt {record.id}: {_too_long(length, room, recipe)}"))
            continue
        tally.kept += 1
        tally.tokens += length
        rows.append({"id": record.id, "prompt": list(fold_system_prompt(record.prompt, tokenizer)),
                     "answer": record.answer, "tags": list(record.tags)})
    for problem in [*read.rejected, *dropped][:10]:
        log.line(f"skipped {problem}", style="yellow")
    if key == "train" and not rows:
        raise QloraError(f"{path} has no prompt that fits model.max_seq_len {recipe.model.max_seq_len} with room for "
                         "an answer", where=str(path), hint="raise model.max_seq_len or lower [grpo] "
                                                            "max_completion_length (see train.log for what was skipped)")
    with_reference = sum(row["answer"] is not None for row in rows)
    log.line(f"{key}: {len(rows)} prompts kept ({with_reference} with a reference answer; {len(read.rejected)} "
             f"rejected, {len(dropped)} longer than {room} tokens); {tally.tokens:,} prompt tokens")
    return TokenizedSplit(Dataset.from_list(rows), len(rows), tally.tokens, 0, 0, dropped=dropped)


PROMPTS = PromptRecords()
"""The prompt record kind (grpo)."""
