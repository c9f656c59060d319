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

Records are of any kind (records.py): everything here reads only their "id",
and the dedup key the kind computes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from .vocabulary import Message

Item = TypeVar("Item")
Record = TypeVar("Record", bound=Mapping[str, object])
"""A build record of any kind: its own fields, plus "id" (shared by resampled copies), "source" and "tags"."""


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


def dedup_across_pools(records: list[Record], key: Callable[[Record], str]) -> list[Record]:
    """The first record of each content (`key`); copies of one record (the same id) all stay."""
    owner: dict[str, object] = {}
    kept = []
    for record in records:
        if owner.setdefault(key(record), record["id"]) == record["id"]:
            kept.append(record)
    return kept


def split(records: list[Record], ratio: float, floor: int, rng: random.Random,
          group: Callable[[Record], str] = lambda record: str(record["id"])) -> tuple[list[Record], list[Record]]:
    """(train, validation): whole groups held out, `ratio` of them but at least `floor`, at most half.

    A group is one record and its copies (the same id) by default; a record kind may group more widely
    (every answer to one prompt), so validation never scores a prompt training has seen.
    """
    groups = sorted({group(r) for r in records})
    rng.shuffle(groups)
    wanted = min(max(floor, round(ratio * len(groups))), len(groups) // 2)
    held = set(groups[:wanted])
    return [r for r in records if group(r) not in held], [r for r in records if group(r) in held]


__all__ = ["conversation_key", "dedup_across_pools", "interleave", "resample", "split"]
