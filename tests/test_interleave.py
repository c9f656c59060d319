"""mix = "interleave": every kept record of every weighted pool goes into the mix exactly once, in a weighted order.

Pools are drawn at random in proportion to their weights; a pool that runs
out is no longer drawn and the others go on until all are used up. Seeded.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import CLI

from qlora4080.data.mixing import interleave
from qlora4080.data.pipeline import build_data
from qlora4080.errors import QloraError
from qlora4080.recipe import load_recipe
from qlora4080.toml_io import dumps_toml


def _pool(name: str, n: int) -> list[dict]:
    return [{"id": f"{name}-{i}", "source": name, "messages": [{"role": "user", "content": f"{name} q{i}"},
                                                              {"role": "assistant", "content": f"{name} a{i}"}]} for i in range(n)]


def _ids(records: list[dict]) -> list[str]:
    return [r["id"] for r in records]


def _exhausted_at(mixed: list[dict], name: str) -> int:
    """How many records the mix holds when pool `name` gives its last one."""
    return max(i for i, r in enumerate(mixed) if r["source"] == name) + 1


def test_a_big_pool_next_to_a_tiny_one_goes_in_whole():
    big, tiny = _pool("big", 10_000), _pool("tiny", 3)
    mixed = interleave([big, tiny], [1, 1], random.Random(42))
    assert len(mixed) == 10_003
    assert sorted(_ids(mixed)) == sorted(_ids(big + tiny))  # every record, each exactly once
    assert _exhausted_at(mixed, "tiny") <= 20  # drawn 1:1 while it lasted, so it ran out early; big went on alone


def test_shares_follow_the_weights_while_both_pools_last():
    a, b = _pool("a", 4000), _pool("b", 4000)
    mixed = interleave([a, b], [3, 1], random.Random(0))
    assert sorted(_ids(mixed)) == sorted(_ids(a + b))
    both = mixed[:_exhausted_at(mixed, "a")]  # a (weight 3) runs out first
    assert 0.72 < Counter(r["source"] for r in both)["a"] / len(both) < 0.78
    assert all(r["source"] == "b" for r in mixed[len(both):])


def test_the_rest_go_on_by_their_relative_weights_when_one_runs_out():
    mixed = interleave([_pool("a", 30), _pool("b", 3000), _pool("c", 3000)], [1, 2, 1], random.Random(5))
    after_a = mixed[_exhausted_at(mixed, "a"):_exhausted_at(mixed, "b")]
    assert 0.62 < Counter(r["source"] for r in after_a)["b"] / len(after_a) < 0.71  # b : c = 2 : 1
    assert len(mixed) == 6030


def test_same_seed_same_mix_other_seed_other_order():
    pools, weights = [_pool("a", 500), _pool("b", 50)], [2, 1]
    first = _ids(interleave(pools, weights, random.Random(7)))
    assert first == _ids(interleave(pools, weights, random.Random(7)))
    other = _ids(interleave(pools, weights, random.Random(8)))
    assert other != first and sorted(other) == sorted(first)


def test_zero_weights():
    a, b = _pool("a", 100), _pool("b", 100)
    assert _ids(interleave([a, b], [1, 0], random.Random(0))) == _ids(interleave([a], [1], random.Random(0)))  # b stays out
    equal = interleave([a, b], [0, 0], random.Random(0))  # all zero means equal
    assert sorted(_ids(equal)) == sorted(_ids(a + b))
    assert 0.35 < Counter(r["source"] for r in equal[:100])["a"] / 100 < 0.65
    assert interleave([a, []], [1, 1], random.Random(0)) and interleave([[], []], [1, 1], random.Random(0)) == []


def _write(path: Path, name: str, n: int) -> Path:
    path.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in _pool(name, n)), encoding="utf-8")
    return path


def test_build_puts_every_record_in_the_mix_and_the_table_says_so(tmp_path):
    big, tiny = _write(tmp_path / "big.jsonl", "big", 10_000), _write(tmp_path / "tiny.jsonl", "tiny", 3)
    recipe_path = tmp_path / "mix.toml"
    recipe_path.write_text(dumps_toml({
        "model": {"name": "builtin:smollm2-135m-instruct"},
        "data": {"sources": [{"path": str(big)}, {"path": str(tiny)}], "build_dir": str(tmp_path / "builds")},
        "training": {"seed": 3}}))
    build = build_data(load_recipe(recipe_path))
    assert [(p.name, p.kept, p.in_mix) for p in build.pools] == [("big", 10_000, 10_000), ("tiny", 3, 3)]
    counts = build.manifest["counts"]
    assert counts["train"] + counts["validation"] == 10_003
    rows = [json.loads(line) for f in (build.train_file, build.validation_file) for line in f.read_text().splitlines()]
    assert Counter(r["source"] for r in rows) == {"big": 10_000, "tiny": 3}
    assert len({r["id"] for r in rows}) == 10_003

    result = subprocess.run([*CLI, "data", "build", str(recipe_path), "--no-tokens"], check=False, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, result.stderr
    table = {cells[0]: cells for line in result.stdout.splitlines() if line[:1] in ("│", "┃")
             and (cells := [c.strip() for c in line.replace("┃", "│").strip("│").split("│")])}
    header = table["source"]
    assert table["big"][header.index("in mix")] == "10000" and table["tiny"][header.index("in mix")] == "3"


def test_two_sources_with_one_name_are_refused_before_their_counts_mix(tmp_path):
    # Pools are told apart by name (ids, the source tag, in_mix): a/train.jsonl and b/train.jsonl would share "train".
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _write(tmp_path / "a" / "train.jsonl", "a", 5), _write(tmp_path / "b" / "train.jsonl", "b", 5)
    recipe_path = tmp_path / "same.toml"
    recipe_path.write_text(dumps_toml({"model": {"name": "builtin:smollm2-135m-instruct"},
                                       "data": {"sources": [{"path": str(first)}, {"path": str(second)}],
                                                "build_dir": str(tmp_path / "builds")}}))
    with pytest.raises(QloraError, match="1 and 2 are both named 'train'") as info:
        build_data(load_recipe(recipe_path))
    assert 'name = "' in info.value.hint
