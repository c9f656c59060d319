"""Preference pairs as a record kind: what dpo and orpo train on (see data/records.py for the interface).

A record is read by the same reader as a pair file (pairs.to_pair), so a bad
one is refused with its file and line for the same reasons, and a build writes
each pair in one shape: prompt and both answers as message lists. Tokenizing
uses the SFT renderer (tokens.py), so the answer is exactly what SFT trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.mixing import conversation_key
from ..data.records import BuildRecord, Log, Pool, PoolStats, Preview, TokenTable, gather_pool, renamed_fields
from ..data.validate import CONTROL_CHARS
from ..data.vocabulary import Message
from ..errors import QloraError
from .pairs import PAIR_FIELDS, PreferencePair, mostly_pairs, to_pair

if TYPE_CHECKING:
    from ..data.dataset import TokenizedSplit
    from ..data.jsonl import Row
    from ..model_types import Tokenizer
    from ..recipe import Recipe, SourceSection

PAIR_FORMAT = "pairs"


class PairRecords:
    name = "pairs"
    unit = "preference pairs"
    formats = (PAIR_FORMAT,)

    def fields(self, fmt: str) -> tuple[str, ...]:
        return PAIR_FIELDS

    def detect(self, records: Sequence[object]) -> str | None:
        return PAIR_FORMAT if mostly_pairs(records) else None

    def check(self, record: object, fmt: str, columns: Mapping[str, str]) -> str | None:
        if not isinstance(record, dict):
            return "expected a JSON object"
        pair = to_pair(renamed_fields(record, columns), "")
        return pair if isinstance(pair, str) else None

    def load_pool(self, rows: list[Row], origin: Path, source: SourceSection) -> Pool:
        # A conversation format was refused with the recipe (Recipe._check_method_fits_the_data).
        unknown = sorted(set(source.columns) - set(PAIR_FIELDS))
        if unknown:
            raise QloraError(f"source '{source.label}': columns names {', '.join(map(repr, unknown))}, which pairs do "
                             "not have", where="[[data.sources]] columns", hint=f"pair columns are {', '.join(PAIR_FIELDS)}")
        stats = PoolStats(name=source.label, format=PAIR_FORMAT)

        def to_record(number: int, row: dict[str, object]) -> BuildRecord | str:
            pair = to_pair(renamed_fields(row, source.columns), f"{stats.name}-{number}")
            if isinstance(pair, str):
                return pair
            record = _build_record(pair, f"{stats.name}-{number}", stats.name, source, row.get("tags"))
            if record["chosen"] == record["rejected"]:
                return f"'chosen' and 'rejected' are the same once cut to max_answer_chars = {source.max_answer_chars}"
            return record

        return gather_pool(rows, origin, stats, to_record, self.key, unit="preference pair",
                           hint="check it with `qlora4080 data check FILE --format pairs`")

    def key(self, record: BuildRecord) -> str:
        """The prompt and both answers, in order."""
        prompt, chosen, rejected = (_messages(record, side) for side in ("prompt", "chosen", "rejected"))
        return conversation_key([*prompt, *chosen, {"role": "rejected", "content": ""}, *rejected])

    def split_group(self, record: BuildRecord) -> str:
        """Every pair of one prompt on the same side: validation never scores a prompt training has seen."""
        return conversation_key(_messages(record, "prompt"))

    def tokenize(self, train: Path, validation: Path | None, tokenizer: Tokenizer, recipe: Recipe,
                 log: Log) -> tuple[TokenizedSplit, TokenizedSplit | None]:
        train_split = _pair_split("train", train, tokenizer, recipe, log)
        return train_split, _pair_split("validation", validation, tokenizer, recipe, log) if validation else None

    def tokens_by_source(self, files: list[Path], tokenizer: Tokenizer, recipe: Recipe) -> TokenTable:
        from .tokens import pair_tokens_by_source

        by_source, dropped = pair_tokens_by_source(files, tokenizer, recipe.model.max_seq_len)
        return TokenTable(by_source, dropped, f"max_seq_len {recipe.model.max_seq_len}; pairs: tokens count both "
                                              "answers with their prompt, trained counts the answers")

    def preview(self, path: Path, tokenizer: Tokenizer, recipe: Recipe, count: int) -> Preview:
        from ..data.preview import render_row
        from .pairs import read_pairs
        from .preview import pair_preview_rows

        pairs = read_pairs(path)
        rows = pair_preview_rows(pairs.pairs[:count], tokenizer, recipe.model.max_seq_len)
        return Preview([render_row(row) for row in rows],
                       f"{min(count, len(pairs.pairs))} pairs from {path}: the highlighted answer is what "
                       f"{recipe.training.method.upper()} scores, chosen against rejected",
                       [f"skipped {problem}" for problem in pairs.rejected[:5]])


def _pair_split(key: str, path: Path, tokenizer: Tokenizer, recipe: Recipe, log: Log) -> TokenizedSplit:
    from datasets import Dataset

    from ..data.dataset import TokenizedSplit
    from .pairs import read_pairs
    from .tokens import tokenize_pairs

    if not path.is_file():
        raise QloraError(f"{key} file not found: {path}", where=f"[data] {key}")  # a build's files always exist
    read = read_pairs(path)
    tokens = tokenize_pairs(read.pairs, tokenizer, recipe.model.max_seq_len)
    for problem in read.rejected[:10]:
        log.line(f"skipped {problem}", style="yellow")
    for pair_id, why in tokens.dropped[:10]:
        log.line(f"skipped pair {pair_id}: {why}", style="yellow")
    if key == "train" and not tokens.rows:
        raise QloraError(f"no usable preference pair in {path} ({len(read.rejected)} rejected, "
                         f"{len(tokens.dropped)} dropped)", where=str(path),
                         hint='each line needs "prompt", "chosen" and "rejected" (see train.log for each reason)')
    answers = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in tokens.rows)
    total = answers + sum(2 * len(r["prompt_ids"]) for r in tokens.rows)
    log.line(f"{key}: {len(tokens.rows)} pairs kept ({len(read.rejected)} rejected, {len(tokens.dropped)} "
             f"dropped, {tokens.truncated} answers cut to {recipe.model.max_seq_len}); "
             f"{total:,} tokens, {answers:,} in answers")
    return TokenizedSplit(Dataset.from_list(tokens.rows), len(tokens.rows), total, answers, tokens.truncated)


def _messages(record: BuildRecord, side: str) -> list[Message]:
    value = record[side]
    assert isinstance(value, list)  # a pair build record holds message lists
    return value


def _build_record(pair: PreferencePair, record_id: str, name: str, source: SourceSection, tags: object) -> dict[str, object]:
    chosen, rejected = (cleaned_message(answer, source.max_answer_chars) for answer in (pair.chosen, pair.rejected))
    extra = map(str, tags) if isinstance(tags, list) else []
    return {"id": record_id, "prompt": [cleaned_message(m, None) for m in pair.prompt], "chosen": [chosen],
            "rejected": [rejected], "source": name, "tags": sorted(set(source.tags) | set(extra))}


def cleaned_message(message: Message, max_chars: int | None) -> Message:
    """Control characters out, as the conversation build does; an answer cut to max_answer_chars when set."""
    content = message.get("content")
    if not isinstance(content, str):
        return message
    content = CONTROL_CHARS.sub("", content)
    return {**message, "content": content[:max_chars] if max_chars else content}


PAIRS = PairRecords()
"""The preference-pair record kind (dpo, orpo)."""
