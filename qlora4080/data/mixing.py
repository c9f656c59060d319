"""Pools of records -> one mix by weight -> dedup across pools -> train / validation split (data build's middle).

Mixing: weights are relative (normalized to 1; all zero means equal); a pool
of weight 0 next to weighted ones stays out of the mix (its `in_mix` is 0).
- interleave: pools are drawn at random in proportion to their weights; a pool
  that runs out is no longer drawn and the others go on by their relative
  weights until every pool is used up, so each kept record is in the mix
  exactly once (nothing repeated, nothing left out);
- resample: exact per-pool counts of `total` (default 0.9 x all records),
  sampling with replacement only when a pool is smaller than its share.
The second dedup removes the same conversation arriving from two pools; the
repeats resample made on purpose stay. The split keeps every copy of a
conversation on one side, so validation never contains a training record.

Records are conversations (sft) or preference pairs (dpo, orpo); everything
here works on either, telling them apart by their fields.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from typing import TypedDict, TypeVar, final

from .vocabulary import Message

Item = TypeVar("Item")


class _BuildRecordRequired(TypedDict):
    id: str  # "<source name>-<line>": one id per input record, shared by its resampled copies
    messages: list[Message]
    source: str  # the source (pool) name
    tags: list[str]


@final  # final, so `"messages" in record` tells a conversation from a pair for mypy too
class BuildRecord(_BuildRecordRequired, total=False):
    """One line of a build's train.jsonl / validation.jsonl."""

    tools: object  # the record's tool definitions, as written


@final
class PairBuildRecord(TypedDict):
    """One line of a preference build's train.jsonl / validation.jsonl (preference/pairs.py reads it back)."""

    id: str
    prompt: list[Message]
    chosen: list[Message]  # one assistant message, in TRL's conversational shape
    rejected: list[Message]
    source: str
    tags: list[str]


AnyBuildRecord = TypeVar("AnyBuildRecord", BuildRecord, PairBuildRecord)


def conversation_key(messages: Sequence[Message]) -> str:
    """Stable hash of roles, contents and tool calls: the dedup key."""
    canonical = [[m.get("role"), m.get("content"), m.get("tool_calls")] for m in messages]
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _normalized(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [1 / len(weights)] * len(weights) if total == 0 else [w / total for w in weights]


def interleave(pools: list[list[Item]], weights: list[float], rng: random.Random) -> list[Item]:
    """Every record of every weighted pool exactly once, in an order drawn by weight.

    Each next record comes from a pool chosen at random in proportion to the
    weights of the pools that still have records, so while all pools last the
    mix follows the weights, and when one runs out the rest go on by their
    relative weights (stopping at the first empty pool would drop most of a
    big pool next to a small one).
    """
    order = [rng.sample(pool, len(pool)) for pool in pools]
    probs = _normalized(weights)
    active = [i for i, p in enumerate(probs) if p > 0 and order[i]]
    mixed: list[Item] = []
    taken = [0] * len(pools)
    while len(active) > 1:
        index = rng.choices(active, weights=[probs[i] for i in active])[0]
        mixed.append(order[index][taken[index]])
        taken[index] += 1
        if taken[index] == len(order[index]):
            active.remove(index)
    for index in active:  # the last pool left: the rest of it, in its shuffled order
        mixed += order[index][taken[index]:]
    return mixed


def resample(pools: list[list[Item]], weights: list[float], rng: random.Random, total: int | None) -> list[Item]:
    size = total or int(0.9 * sum(len(p) for p in pools))
    mixed: list[Item] = []
    for pool, share in zip(pools, _normalized(weights)):
        count = round(size * share)
        if not pool or count == 0:
            continue
        if count <= len(pool):
            mixed += rng.sample(pool, count)
        else:
            mixed += rng.sample(pool, len(pool)) + rng.choices(pool, k=count - len(pool))
    rng.shuffle(mixed)
    return mixed


def record_key(record: BuildRecord | PairBuildRecord) -> str:
    """The dedup key of a conversation, or of a pair (its prompt and both answers, in order)."""
    if "messages" in record:
        return conversation_key(record["messages"])
    return conversation_key([*record["prompt"], *record["chosen"], {"role": "rejected", "content": ""},
                             *record["rejected"]])


def dedup_across_pools(records: list[AnyBuildRecord]) -> list[AnyBuildRecord]:
    owner: dict[str, str] = {}
    kept = []
    for record in records:
        key = record_key(record)
        if owner.setdefault(key, record["id"]) == record["id"]:
            kept.append(record)
    return kept


def split(records: list[AnyBuildRecord], ratio: float, floor: int, rng: random.Random,
          ) -> tuple[list[AnyBuildRecord], list[AnyBuildRecord]]:
    ids = sorted({r["id"] for r in records})
    rng.shuffle(ids)
    wanted = min(max(floor, round(ratio * len(ids))), len(ids) // 2)
    held = set(ids[:wanted])
    return [r for r in records if r["id"] not in held], [r for r in records if r["id"] in held]


__all__ = ["BuildRecord", "PairBuildRecord", "conversation_key", "dedup_across_pools", "interleave", "record_key", "resample",
           "split"]
