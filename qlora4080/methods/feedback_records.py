"""Feedback records: one answer to a prompt, labelled desirable or undesirable (what kto trains on).

Two shapes are read, the two unpaired-feedback datasets come in:

- `{"prompt", "completion", "label"}`: the prompt a string (one user turn,
  after an optional "system" string) or a message list, the completion a
  string or one assistant message, the label true (desirable) or false;
- `{"messages", "label"}`: a whole conversation whose last assistant turn is
  the labelled answer.

A build writes each record in the first shape with message lists. The answer's
tokens are the ones SFT trains in a last assistant turn (the same renderer as
every other method), and every prompt's answers stay on one side of the
train/validation split, so `eval` can compare a prompt's desirable answers with
its undesirable ones.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast

from ..data.conversations import Rejected
from ..data.mixing import conversation_key
from ..data.records import BuildRecord, Log, Pool, PoolStats, Preview, TokenTable, gather_pool, renamed_fields
from ..data.validate import validate_messages
from ..data.vocabulary import Message
from ..errors import QloraError
from ..preference.pair_records import cleaned_message
from ..preference.pairs import answer_message, prompt_messages

if TYPE_CHECKING:
    from ..data.dataset import SourceTokens, TokenizedSplit
    from ..data.jsonl import Row
    from ..model_types import Tokenizer
    from ..recipe import Recipe, SourceSection

FEEDBACK_FORMAT = "feedback"
FEEDBACK_FIELDS = ("prompt", "completion", "label", "messages", "system")
"""The fields a feedback record is read from; a source's `columns` can map each to another name."""


@dataclass(frozen=True)
class Feedback:
    id: str
    prompt: list[Message]
    """Everything before the answer: ends with a user (or tool) turn."""
    completion: Message
    desirable: bool


@dataclass
class FeedbackFile:
    path: Path
    records: list[Feedback] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def mostly_feedback(records: Sequence[object]) -> bool:
    """Do most of the first records hold a labelled answer ("label" with "completion" or "messages")?"""
    sample = [r for r in records[:20] if isinstance(r, dict)]
    labelled = sum("label" in r and ("completion" in r or "messages" in r) for r in sample)
    return bool(sample) and labelled * 2 > len(sample)


def to_feedback(record: Mapping[str, object], default_id: str) -> Feedback | str:
    """The labelled answer a record holds, or why it holds none."""
    if "label" not in record:
        return "a feedback record needs 'label' (true: a desirable answer, false: an undesirable one)"
    label = record["label"]
    if not isinstance(label, bool):
        return f"'label' must be true or false, not {label!r}"
    if "prompt" in record:
        if "completion" not in record:
            return "a feedback record with 'prompt' needs 'completion' (the labelled answer)"
        prompt = prompt_messages(record)
        if isinstance(prompt, str):
            return prompt
        completion = answer_message(record["completion"], "completion")
        if isinstance(completion, str):
            return completion
    elif "messages" in record:
        messages = record["messages"]
        if not (isinstance(messages, list) and len(messages) >= 2):
            return "'messages' must be a conversation (a list of at least a user turn and an answer)"
        last = messages[-1]
        if not (isinstance(last, dict) and last.get("role") == "assistant"):
            return "'messages' must end with the labelled assistant answer"
        prompt, completion = cast("list[Message]", messages[:-1]), cast("Message", last)
    else:
        return "a feedback record needs 'prompt' and 'completion', or 'messages' ending with the answer"
    if problem := validate_messages([*prompt, completion]):
        return problem
    if prompt[-1]["role"] not in ("user", "tool"):
        return f"the prompt must end with a user (or tool) turn, not {prompt[-1]['role']!r}"
    return Feedback(str(record.get("id", default_id)), list(prompt), completion, label)


def read_feedback(path: Path) -> FeedbackFile:
    """Every usable feedback record of a JSONL file, and why each other line was refused."""
    from ..data.jsonl import read_jsonl

    result = FeedbackFile(path)
    for number, record, problem in read_jsonl(path):
        read = to_feedback(record, f"line-{number}") if isinstance(record, dict) else problem or "expected a JSON object"
        if isinstance(read, str):
            result.rejected.append(Rejected(path, number, read))
        else:
            result.records.append(read)
    return result


class FeedbackRecords:
    name = "feedback"
    unit = "feedback records"
    formats = (FEEDBACK_FORMAT,)

    def fields(self, fmt: str) -> tuple[str, ...]:
        return FEEDBACK_FIELDS

    def detect(self, records: Sequence[object]) -> str | None:
        return FEEDBACK_FORMAT if mostly_feedback(records) else None

    def check(self, record: object, fmt: str, columns: Mapping[str, str]) -> str | None:
        if not isinstance(record, dict):
            return "expected a JSON object"
        read = to_feedback(renamed_fields(record, columns), "")
        return read if isinstance(read, str) else None

    def load_pool(self, rows: list[Row], origin: Path, source: SourceSection) -> Pool:
        unknown = sorted(set(source.columns) - set(FEEDBACK_FIELDS))
        if unknown:
            raise QloraError(f"source '{source.label}': columns names {', '.join(map(repr, unknown))}, which feedback "
                             "records do not have", where="[[data.sources]] columns",
                             hint=f"feedback columns are {', '.join(FEEDBACK_FIELDS)}")
        stats = PoolStats(name=source.label, format=FEEDBACK_FORMAT)

        def to_record(number: int, row: dict[str, object]) -> BuildRecord | str:
            read = to_feedback(renamed_fields(row, source.columns), f"{stats.name}-{number}")
            if isinstance(read, str):
                return read
            return _build_record(read, f"{stats.name}-{number}", stats.name, source, row.get("tags"))

        # the same answer to the same prompt twice is one record: the first label read wins
        return gather_pool(rows, origin, stats, to_record, self.key, unit="feedback record",
                           hint="check it with `qlora4080 data check FILE --format feedback`")

    def key(self, record: BuildRecord) -> str:
        """The prompt and the answer (not the label: one answer labelled both ways is one record)."""
        return conversation_key([*_messages(record, "prompt"), *_messages(record, "completion")])

    def split_group(self, record: BuildRecord) -> str:
        """Every answer to one prompt on the same side: eval compares a prompt's good and bad answers."""
        return conversation_key(_messages(record, "prompt"))

    def tokenize(self, train: Path, validation: Path | None, tokenizer: Tokenizer, recipe: Recipe,
                 log: Log) -> tuple[TokenizedSplit, TokenizedSplit | None]:
        train_split = _feedback_split("train", train, tokenizer, recipe, log)
        return train_split, _feedback_split("validation", validation, tokenizer, recipe, log) if validation else None

    def tokens_by_source(self, files: list[Path], tokenizer: Tokenizer, recipe: Recipe) -> TokenTable:
        from ..data.dataset import SourceTokens
        from ..data.jsonl import read_jsonl

        merged: dict[str, SourceTokens] = {}
        dropped: list[Rejected] = []
        for path in files:
            for number, record, _problem in read_jsonl(path):
                read = to_feedback(record, f"line-{number}") if isinstance(record, dict) else "not a feedback record"
                if isinstance(read, str):  # a build writes only records that read back; this one was edited
                    dropped.append(Rejected(path, number, read))
                    continue
                assert isinstance(record, dict)
                tally = merged.setdefault(str(record.get("source", path.stem)), SourceTokens())
                tokens = tokenize_feedback([read], tokenizer, recipe.model.max_seq_len)
                dropped += [Rejected(path, number, why) for _, why in tokens.dropped]
                _tally(tally, tokens)
        return TokenTable(merged, dropped, f"max_seq_len {recipe.model.max_seq_len}; feedback: tokens count prompt "
                                           "and answer, trained counts the answer")

    def preview(self, path: Path, tokenizer: Tokenizer, recipe: Recipe, count: int) -> Preview:
        from ..data.preview import render_row, segments
        from ..data.vocabulary import IGNORE_INDEX

        read = read_feedback(path)
        rows = []
        for record in read.records[:count]:
            tokens = tokenize_feedback([record], tokenizer, recipe.model.max_seq_len)
            label = "desirable" if record.desirable else "undesirable"
            if not tokens.rows:
                why = tokens.dropped[0][1] if tokens.dropped else "no answer tokens"
                rows.append(render_row({"id": f"{record.id} {label}", "tokens": 0, "trained": 0, "cut": 0, "skipped": why,
                                        "segments": [(f"training skips this record: {why}", False)]}))
                continue
            row = tokens.rows[0]
            ids, labels = row["prompt_ids"] + row["completion_ids"], [IGNORE_INDEX] * len(row["prompt_ids"]) + row["completion_ids"]
            rows.append(render_row({"id": f"{record.id} {label}", "tokens": len(ids), "trained": len(row["completion_ids"]),
                                    "cut": tokens.truncated, "segments": segments(ids, labels, tokenizer),
                                    "strategy": "the answer as SFT trains a last assistant turn"}))
        shown = min(count, len(read.records))
        return Preview(rows, f"{shown} feedback records from {path}: the highlighted answer is what KTO raises "
                             "(desirable) or lowers (undesirable) against the reference",
                       [f"skipped {problem}" for problem in read.rejected[:5]])


class FeedbackRow(TypedDict):
    """One row as the KTO trainer takes it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool


@dataclass
class TokenizedFeedback:
    rows: list[FeedbackRow] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(record id, why) for records that cannot be trained."""
    truncated: int = 0


def tokenize_feedback(records: list[Feedback], tokenizer: Tokenizer, max_seq_len: int) -> TokenizedFeedback:
    """Each record's prompt and answer ids, split where SFT's last-assistant mask starts; a long answer is cut."""
    from ..data.render import render_conversation
    from ..preference.tokens import answer_split

    result = TokenizedFeedback()
    for record in records:
        rendered = render_conversation([*record.prompt, record.completion], tokenizer, train_on="last_assistant")
        split = answer_split(rendered["input_ids"], rendered["labels"])
        if split is None:
            result.dropped.append((record.id, "the chat template rendered no answer tokens"))
            continue
        prompt, completion = split
        room = max_seq_len - len(prompt)
        if room < 2:
            result.dropped.append((record.id, f"the prompt alone is {len(prompt)} tokens, max_seq_len is {max_seq_len}"))
            continue
        if len(completion) > room:
            result.truncated += 1
            completion = completion[:room]
        result.rows.append({"prompt_ids": prompt, "completion_ids": completion, "label": record.desirable})
    return result


def _feedback_split(key: str, path: Path, tokenizer: Tokenizer, recipe: Recipe, log: Log) -> TokenizedSplit:
    from datasets import Dataset

    from ..data.dataset import SourceTokens, TokenizedSplit

    if not path.is_file():
        raise QloraError(f"{key} file not found: {path}", where=f"[data] {key}")
    read = read_feedback(path)
    tokens = tokenize_feedback(read.records, tokenizer, recipe.model.max_seq_len)
    for problem in read.rejected[:10]:
        log.line(f"skipped {problem}", style="yellow")
    for record_id, why in tokens.dropped[:10]:
        log.line(f"skipped feedback record {record_id}: {why}", style="yellow")
    if key == "train":
        desirable = sum(row["label"] for row in tokens.rows)
        if not desirable or desirable == len(tokens.rows):
            raise QloraError(f"{path} has {desirable} desirable and {len(tokens.rows) - desirable} undesirable answers "
                             "that can be trained; KTO needs both", where=str(path),
                             hint='label good answers "label": true and bad ones "label": false (see train.log for '
                                  "records that were skipped)")
        if advice := _weight_advice(desirable, len(tokens.rows) - desirable, recipe):
            log.line(advice, style="yellow")
    # KTO samples in order (each batch's mismatched answers estimate its KL term): the order is the seed's, not
    # the file's, so a file sorted by label or by source still gives mixed batches; resumed runs get the same order.
    random.Random(recipe.training.seed).shuffle(tokens.rows)
    tally = SourceTokens()
    _tally(tally, tokens)
    desirable = sum(row["label"] for row in tokens.rows)
    log.line(f"{key}: {len(tokens.rows)} feedback records kept ({desirable} desirable, {len(tokens.rows) - desirable} "
             f"undesirable; {len(read.rejected)} rejected, {len(tokens.dropped)} dropped, {tokens.truncated} answers cut "
             f"to {recipe.model.max_seq_len}); {tally.tokens:,} tokens, {tally.trained_tokens:,} in answers")
    return TokenizedSplit(Dataset.from_list(tokens.rows), len(tokens.rows), tally.tokens, tally.trained_tokens,
                          tokens.truncated)


def _weight_advice(desirable: int, undesirable: int, recipe: Recipe) -> str | None:
    """The KTO paper's balance (its eq. 8): desirable_weight x desirable / (undesirable_weight x undesirable) in [1, 4/3]."""
    from .kto_settings import KTOSection

    settings = recipe.table(KTOSection)
    ratio = settings.desirable_weight * desirable / (settings.undesirable_weight * undesirable)
    if 1 <= ratio <= 4 / 3:
        return None
    low = settings.undesirable_weight * undesirable / desirable
    return (f"warning: {desirable} desirable and {undesirable} undesirable answers weigh {ratio:.2f} to 1 in the loss; "
            f"KTO works best between 1 and 1.33: set [kto] desirable_weight between {low:.2f} and {low * 4 / 3:.2f}")


def _tally(tally: SourceTokens, tokens: TokenizedFeedback) -> None:
    tally.dropped += len(tokens.dropped)
    tally.truncated += tokens.truncated
    for row in tokens.rows:
        tally.kept += 1
        tally.tokens += len(row["prompt_ids"]) + len(row["completion_ids"])
        tally.trained_tokens += len(row["completion_ids"])


def _messages(record: BuildRecord, side: str) -> list[Message]:
    value = record[side]
    assert isinstance(value, list)  # a feedback build record holds message lists
    return value


def _build_record(read: Feedback, record_id: str, name: str, source: SourceSection, tags: object) -> dict[str, object]:
    extra = map(str, tags) if isinstance(tags, list) else []
    completion = cleaned_message(read.completion, source.max_answer_chars)
    return {"id": record_id, "prompt": [cleaned_message(m, None) for m in read.prompt], "completion": [completion],
            "label": read.desirable, "source": name, "tags": sorted(set(source.tags) | set(extra))}


FEEDBACK = FeedbackRecords()
"""The feedback record kind (kto)."""
