"""One [[data.sources]] entry read as preference pairs: the data build's pool step for dpo and orpo.

The rest of the build (mix, dedup across pools, split, manifest) is the one
sft uses (data/pipeline.py, data/mixing.py); only reading a record differs.
Each record goes through the same reader as a pair file (pairs.to_pair), so a
bad one is refused with its file and line for the same reasons, and is written
to the build in one shape: prompt and both answers as message lists.
"""

from __future__ import annotations

from pathlib import Path

from ..data.conversations import Rejected
from ..data.jsonl import Row
from ..data.mixing import PairBuildRecord, record_key
from ..data.pipeline import PoolStats
from ..data.validate import CONTROL_CHARS
from ..data.vocabulary import Message
from ..errors import QloraError
from ..recipe import SourceSection
from .pairs import PAIR_FIELDS, PreferencePair, to_pair, with_pair_fields

PAIR_FORMAT = "pairs"


def load_pair_pool(rows: list[Row], origin: Path, source: SourceSection) -> tuple[list[PairBuildRecord], PoolStats, list[Rejected]]:
    """The source's usable pairs (deduplicated), its counts, and why each other record was refused."""
    # A conversation format was refused with the recipe (Recipe._method_fits_the_data).
    unknown = sorted(set(source.columns) - set(PAIR_FIELDS))
    if unknown:
        raise QloraError(f"source '{source.label}': columns names {', '.join(map(repr, unknown))}, which pairs do not have",
                         where="[[data.sources]] columns", hint=f"pair columns are {', '.join(PAIR_FIELDS)}")
    stats = PoolStats(name=source.label, format=PAIR_FORMAT)
    pool: list[PairBuildRecord] = []
    rejects: list[Rejected] = []
    seen: set[str] = set()
    for number, row, problem in rows:
        stats.read += 1
        pair: PreferencePair | str = problem or "expected a JSON object"
        if problem is None and isinstance(row, dict):
            pair = to_pair(with_pair_fields(row, source.columns), f"{stats.name}-{number}")
        if isinstance(pair, str):
            stats.rejected += 1
            rejects.append(Rejected(origin, number, pair))
            continue
        assert isinstance(row, dict)  # to_pair only accepts an object
        record = _build_record(pair, f"{stats.name}-{number}", stats.name, source, row.get("tags"))
        if record["chosen"] == record["rejected"]:
            stats.rejected += 1
            rejects.append(Rejected(origin, number, f"'chosen' and 'rejected' are the same once cut to "
                                                    f"max_answer_chars = {source.max_answer_chars}"))
            continue
        key = record_key(record)
        if key in seen:
            stats.duplicates += 1
            continue
        seen.add(key)
        pool.append(record)
    stats.kept = len(pool)
    if rows and not pool:
        first = rejects[0] if rejects else "all duplicates"
        raise QloraError(f"source '{stats.name}' has no usable preference pair; first problem: {first}",
                         hint="check it with `qlora4080 data check FILE --format pairs`")
    return pool, stats, rejects


def _build_record(pair: PreferencePair, record_id: str, name: str, source: SourceSection, tags: object) -> PairBuildRecord:
    chosen, rejected = (_cleaned(answer, source.max_answer_chars) for answer in (pair.chosen, pair.rejected))
    extra = map(str, tags) if isinstance(tags, list) else []
    return {"id": record_id, "prompt": [_cleaned(m, None) for m in pair.prompt], "chosen": [chosen],
            "rejected": [rejected], "source": name, "tags": sorted(set(source.tags) | set(extra))}


def _cleaned(message: Message, max_chars: int | None) -> Message:
    """Control characters out, as the conversation build does; an answer cut to max_answer_chars when set."""
    content = message.get("content")
    if not isinstance(content, str):
        return message
    content = CONTROL_CHARS.sub("", content)
    return {**message, "content": content[:max_chars] if max_chars else content}
