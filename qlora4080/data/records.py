"""A record kind: one shape of training data (conversations, preference pairs, feedback), end to end.

The data build (pipeline.py, mixing.py) runs one loop for every kind: read a
source's rows, turn each into a record (or say why not), dedup by the record's
key, mix, split, write. Training, `data check`, `data build`'s token table,
`data preview` and `eval` then ask the kind for what differs. A training method
(qlora4080/methods) names the kind it reads; a new kind is one object that
satisfies `RecordKind`, wherever it is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import QloraError
from .conversations import Rejected

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..model_types import Tokenizer
    from ..recipe import Recipe, SourceSection
    from .dataset import SourceTokens, TokenizedSplit
    from .jsonl import Row


class Log(Protocol):
    """Where a stage reports (train.log and the terminal)."""

    def line(self, text: str, *, style: str | None = None, echo: bool = True) -> None: ...


@dataclass
class PoolStats:
    name: str
    format: str = ""
    read: int = 0
    rejected: int = 0
    duplicates: int = 0
    kept: int = 0
    in_mix: int = 0


BuildRecord = Mapping[str, object]
"""One line of a build's train.jsonl: the kind's own fields, plus "id", "source" and "tags" (every kind has them)."""


@dataclass
class Pool:
    """One source's kept records, its counts, and why each other record was refused."""

    records: list[BuildRecord]
    stats: PoolStats
    rejected: list[Rejected] = field(default_factory=list)


def renamed_fields(record: Mapping[str, object], columns: Mapping[str, str]) -> dict[str, object]:
    """The record with fields renamed as a source's `columns` says ({our name: its name}): `columns = {"chosen": "good"}`
    reads "good" as "chosen". Kinds that read named fields (pairs, feedback, prompts) read records through this."""
    renamed = dict(record)
    for ours, theirs in columns.items():
        if theirs in record:
            renamed[ours] = record[theirs]
    return renamed


def gather_pool(rows: list[Row], origin: Path, stats: PoolStats,
                to_record: Callable[[int, dict[str, object]], BuildRecord | str], key: Callable[[BuildRecord], str],
                *, unit: str, hint: str) -> Pool:
    """One source's rows -> its records, each content once (`key`), with counts and why each other row was refused.

    `to_record(line number, row)` is the kind's reader: a build record, or the reason the row is not one.
    A source whose rows all fail stops the build, naming the first reason.
    """
    pool: list[BuildRecord] = []
    rejects: list[Rejected] = []
    seen: set[str] = set()
    for number, row, problem in rows:
        stats.read += 1
        record = problem or (to_record(number, row) if isinstance(row, dict) else "expected a JSON object")
        if isinstance(record, str):
            stats.rejected += 1
            rejects.append(Rejected(origin, number, record))
            continue
        content = key(record)
        if content in seen:
            stats.duplicates += 1
            continue
        seen.add(content)
        pool.append(record)
    stats.kept = len(pool)
    if rows and not pool:
        first = rejects[0] if rejects else "all duplicates"
        raise QloraError(f"source '{stats.name}' has no usable {unit}; first problem: {first}", hint=hint)
    return Pool(pool, stats, rejects)


@dataclass(frozen=True)
class TokenTable:
    """What tokenizing a build does, per source (`data build`'s last table)."""

    by_source: dict[str, SourceTokens]
    dropped: list[Rejected]
    """Records that cannot be trained, with file and line."""
    heading: str
    """The settings that decided it, e.g. "max_seq_len 1024, train_on assistant"."""
    notes: list[str] = field(default_factory=list)
    """What the renderer wants said once (how answers were located, template warnings)."""


@dataclass(frozen=True)
class Preview:
    """What `data preview` shows: rendered rows (trained tokens highlighted) and a closing line."""

    rows: list[RenderableType]
    footer: str
    notes: list[str] = field(default_factory=list)


class RecordKind(Protocol):
    """Everything the data pipeline, training and the data commands need to know about one kind of record."""

    @property
    def name(self) -> str:
        """Short name, e.g. "conversations"; part of a data build's key."""

    @property
    def unit(self) -> str:
        """How a count of records reads: "conversations", "preference pairs"."""

    @property
    def formats(self) -> tuple[str, ...]:
        """The `--format` / `[[data.sources]] format` values this kind reads."""

    def fields(self, fmt: str) -> tuple[str, ...]:
        """The fields `--column` / `columns` may rename in format `fmt`."""

    def detect(self, records: Sequence[object]) -> str | None:
        """The format of these (first) records if they are of this kind, else None."""

    def check(self, record: object, fmt: str, columns: Mapping[str, str]) -> str | None:
        """Why one record of a file cannot be trained (None: it can) — `data check`."""

    def load_pool(self, rows: list[Row], origin: Path, source: SourceSection) -> Pool:
        """One [[data.sources]] entry's usable records, deduplicated by `key`, in the build's shape."""

    def key(self, record: BuildRecord) -> str:
        """The dedup key of a build record (the same content from two sources is one record)."""

    def split_group(self, record: BuildRecord) -> str:
        """Records of one group land on the same side of the train/validation split (e.g. one prompt's answers)."""

    def tokenize(self, train: Path, validation: Path | None, tokenizer: Tokenizer, recipe: Recipe,
                 log: Log) -> tuple[TokenizedSplit, TokenizedSplit | None]:
        """The training and validation splits as the trainer takes them; what was skipped goes to `log`."""

    def tokens_by_source(self, files: list[Path], tokenizer: Tokenizer, recipe: Recipe) -> TokenTable:
        """Per source of a build's files: kept, dropped, tokens, trained tokens."""

    def preview(self, path: Path, tokenizer: Tokenizer, recipe: Recipe, count: int) -> Preview:
        """The first `count` records of a file rendered as training sees them."""


def fields_by_format(kinds: Sequence[RecordKind]) -> dict[str, tuple[str, ...]]:
    """Every format of every kind, with the fields it reads."""
    return {fmt: kind.fields(fmt) for kind in kinds for fmt in kind.formats}
