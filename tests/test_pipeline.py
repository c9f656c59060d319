"""The data pipeline: counts, rejects, dedup, mixing, split, reproducible builds and their reuse by train."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from conftest import DEMO_DATA, write_recipe

from qlora4080.data.conversation_records import CONVERSATIONS
from qlora4080.data.mixing import conversation_key, dedup_across_pools, interleave, resample, split
from qlora4080.data.pipeline import build_data
from qlora4080.errors import QloraError
from qlora4080.recipe import load_recipe
from qlora4080.toml_io import dumps_toml


def _pool(name: str, n: int) -> list[dict]:
    return [{"id": f"{name}-{i}", "source": name, "messages": [{"role": "user", "content": f"{name} q{i}"},
                                                              {"role": "assistant", "content": f"{name} a{i}"}]} for i in range(n)]


def _recipe(tmp_path: Path, sources: list[dict], **data) -> Path:
    recipe = {"model": {"name": "builtin:smollm2-135m-instruct"},
              "data": {"sources": sources, "build_dir": str(tmp_path / "builds"), "valid_min": 2, **data},
              "training": {"seed": 7}}
    path = tmp_path / "mix.toml"
    path.write_text(dumps_toml(recipe))
    return path


@pytest.fixture()
def sources(tmp_path):
    alpaca = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": f"Say {i}", "output": f"{i}"} for i in range(30)]
    rows.insert(3, {"instruction": "Say 1", "output": "1"})            # duplicate of row 1
    rows.insert(5, {"instruction": "no answer"})                        # rejected
    rows.insert(7, {"instruction": "bell\x07 ring", "output": "ding"})   # control char cleaned
    alpaca.write_text("\n".join(json.dumps(r) for r in rows) + "\n{bad json\n")
    return [{"path": str(DEMO_DATA / "train.jsonl"), "name": "cards", "weight": 1.0, "tags": ["json"]},
            {"path": str(alpaca), "format": "alpaca", "weight": 1.0}]


def test_build_counts_rejects_and_outputs(tmp_path, sources):
    build = build_data(load_recipe(_recipe(tmp_path, sources, mix="resample", total=200)))
    cards, alpaca = build.pools
    assert (cards.name, cards.format, cards.read, cards.kept) == ("cards", "messages", 320, 320)
    assert (alpaca.format, alpaca.read, alpaca.rejected, alpaca.duplicates, alpaca.kept) == ("alpaca", 34, 2, 1, 31)
    rejects = [json.loads(line) for line in (build.folder / "rejects.jsonl").read_text().splitlines()]
    assert [(Path(r["file"]).name, r["line"]) for r in rejects] == [("alpaca.jsonl", 6), ("alpaca.jsonl", 34)]
    train = [json.loads(line) for line in build.train_file.read_text().splitlines()]
    validation = [json.loads(line) for line in build.validation_file.read_text().splitlines()]
    assert len(train) + len(validation) == 200 and len(validation) == 10
    alpaca_texts = [m["content"] for r in train + validation if r["source"] == "alpaca" for m in r["messages"]]
    assert "bell ring" in alpaca_texts  # resample took every alpaca record; the BEL character was stripped
    assert not any("\x07" in text for text in alpaca_texts)
    assert all("json" in r["tags"] for r in train if r["source"] == "cards")
    manifest = json.loads((build.folder / "manifest.json").read_text())
    assert manifest["counts"] == {"train": len(train), "validation": 10, "rejected": 2}
    for name in ("train", "validation", "pools/cards", "pools/alpaca"):
        assert (build.folder / name / "dataset_info.json").is_file()


def test_same_recipe_and_seed_give_byte_identical_builds_and_are_reused(tmp_path, sources):
    first = build_data(load_recipe(_recipe(tmp_path, sources)))
    again = build_data(load_recipe(_recipe(tmp_path, sources)))
    assert again.reused and again.folder == first.folder
    forced = build_data(load_recipe(_recipe(tmp_path, sources)), force=True)
    assert not forced.reused
    assert forced.manifest["sha256"] == first.manifest["sha256"]
    changed = build_data(load_recipe(_recipe(tmp_path, sources), ["training.seed=8"]))
    assert changed.folder != first.folder and changed.manifest["sha256"] != first.manifest["sha256"]


def test_interleave_follows_weights_without_repeats():
    mixed = interleave([_pool("a", 300), _pool("b", 300)], [3, 1], random.Random(0))
    assert sorted(r["id"] for r in mixed) == sorted(r["id"] for r in _pool("a", 300) + _pool("b", 300))  # all, once each
    a_done = max(i for i, r in enumerate(mixed) if r["source"] == "a") + 1  # the heavier pool runs out first
    assert 0.70 < 300 / a_done < 0.80  # while both pools had records, the mix followed the weights
    assert all(r["source"] == "b" for r in mixed[a_done:])  # then the rest of b


def test_resample_gives_exact_counts_with_replacement_when_short():
    mixed = resample([_pool("a", 200), _pool("b", 20)], [1, 1], random.Random(0), total=100)
    counts = Counter(r["source"] for r in mixed)
    assert counts == {"a": 50, "b": 50}
    assert len({r["id"] for r in mixed if r["source"] == "a"}) == 50
    assert len({r["id"] for r in mixed if r["source"] == "b"}) == 20  # every b record, then repeats
    assert Counter(r["source"] for r in resample([_pool("a", 50), _pool("b", 50)], [0, 0], random.Random(0), None)) == {"a": 45, "b": 45}


def test_dedup_across_pools_keeps_intended_repeats():
    a, b = _pool("a", 3), _pool("a", 3)
    for record in b:
        record["id"] = record["id"].replace("a-", "b-")  # same conversations, another pool
    repeats = [a[0], a[0]]
    kept = dedup_across_pools(a + b + repeats, CONVERSATIONS.key)
    assert [r["id"] for r in kept] == ["a-0", "a-1", "a-2", "a-0", "a-0"]
    assert conversation_key(a[0]["messages"]) == conversation_key(b[0]["messages"])


def test_split_floor_cap_and_no_leak():
    records = _pool("a", 40)
    records += [records[0], records[0]]  # resampled copies
    train, validation = split(records, ratio=0.05, floor=100, rng=random.Random(1))
    assert len({r["id"] for r in validation}) == 20  # floor 100 capped at half of 40 unique
    assert not {r["id"] for r in train} & {r["id"] for r in validation}


def test_hub_source_without_network_names_the_dataset(tmp_path):
    with pytest.raises(QloraError, match="could not load hub dataset 'someone/some-set'") as info:
        build_data(load_recipe(_recipe(tmp_path, [{"hub": "someone/some-set"}])))
    assert "local file" in info.value.hint


def test_source_needs_exactly_one_location(tmp_path):
    with pytest.raises(QloraError, match="exactly one of path"):
        load_recipe(_recipe(tmp_path, [{"name": "nothing"}]))


def test_train_uses_the_build_and_eval_defaults_to_its_validation(tmp_path, tiny_model_dir, sources):
    from qlora4080 import train

    path = write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 2},
                        data={"train": None, "validation": None, "sources": sources,
                              "build_dir": str(tmp_path / "builds"), "valid_min": 4})
    result = train(load_recipe(path), run_name="from-sources", live=False)
    log = (result.run_dir / "train.log").read_text()
    assert "source cards (messages): read 320" in log and "source alpaca (alpaca): read 34, rejected 2, duplicates 1" in log
    meta = json.loads((result.checkpoint_dir / "qlora4080.json").read_text())
    assert meta["validation_file"].endswith("validation.jsonl") and "builds" in meta["validation_file"]


def test_build_table_counts_records_dropped_at_tokenization_per_source(tmp_path, smol_tokenizer):
    import os
    import subprocess

    from conftest import CLI

    from qlora4080.data.dataset import tokens_by_source

    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps(r) + "\n" for r in _pool("short", 12)))
    long = tmp_path / "long.jsonl"
    rows = _pool("long", 12)
    for row in rows[:5]:  # five answers far past max_seq_len: nothing of them would be trained
        row["messages"][0]["content"] = "word " * 200
    long.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe_path = _recipe(tmp_path, [{"path": str(short)}, {"path": str(long)}], valid_min=2, mix="resample", total=24)
    recipe = load_recipe(recipe_path, ["model.max_seq_len=64"])
    build = build_data(recipe)
    by_source, dropped = tokens_by_source([build.train_file, build.validation_file], smol_tokenizer, 64, "assistant")
    assert by_source["long"].dropped == 5 and by_source["long"].kept == 7
    assert by_source["short"].dropped == 0 and by_source["short"].kept == 12
    assert len(dropped) == 5 and all("no trained token within max_seq_len=64" in p.reason for p in dropped)

    result = subprocess.run([*CLI, "data", "build", str(recipe_path), "--set", "model.max_seq_len=64"],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Tokenized for builtin:smollm2-135m-instruct (max_seq_len 64" in result.stdout
    long_row = [line for line in result.stdout.splitlines() if line.startswith("│ long ")][-1]  # the token table
    assert [cell.strip() for cell in long_row.strip("│").split("│")][:4] == ["long", "7", "5", "0"]
    assert "dropped" in result.stdout and "no trained token within max_seq_len=64" in result.stdout


def test_headline_recipe_builds_offline_from_its_three_normalized_sources(tmp_path):
    from conftest import REPO

    recipe = load_recipe(REPO / "recipes" / "qwen3_4b_emoji.toml", [f"data.build_dir={tmp_path / 'builds'}"])
    build = build_data(recipe)
    assert [(p.name, p.format, p.rejected) for p in build.pools] == [("emoji", "emoji", 0), ("cmath", "cmath", 0), ("mawps", "mawps", 0)]
    assert [p.in_mix for p in build.pools] == [80, 160, 160]  # resample: weights 0.5 : 1 : 1 of total 400
    records = [json.loads(line) for f in (build.train_file, build.validation_file) for line in f.read_text().splitlines()]
    by_source = {name: [r for r in records if r["source"] == name] for name in ("emoji", "cmath", "mawps")}
    assert all("math" in r["tags"] for r in by_source["cmath"] + by_source["mawps"])
    mawps_user = [r["messages"][0]["content"] for r in by_source["mawps"]]
    assert not any("N_0" in text or "N_1" in text for text in mawps_user)  # placeholders filled from Numbers
    assert all(r["messages"][1]["content"].lstrip("-").isdigit() for r in by_source["mawps"] + by_source["cmath"])
    emoji_answers = {r["messages"][1]["content"] for r in by_source["emoji"]}
    assert any("🎯" in a and "专心" not in a for a in emoji_answers)  # answer_zh empty -> answer_en
    assert any("一次只做一件事" in a for a in emoji_answers)


def test_a_message_that_is_not_an_object_is_a_rejected_line_not_a_crash(tmp_path):
    path = tmp_path / "chats.jsonl"
    good = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in [{"messages": ["hi", {"role": "assistant", "content": "x"}]}, *good]))
    build = build_data(load_recipe(_recipe(tmp_path, [{"path": str(path), "format": "messages"}])))
    assert (build.pools[0].rejected, build.pools[0].kept) == (1, 12)
    rejects = [json.loads(line) for line in (build.folder / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [(1, "message 0 is not an object")]


def test_build_files_are_written_whole_with_no_temporary_left(tmp_path, sources):
    build = build_data(load_recipe(_recipe(tmp_path, sources)))
    assert not [p.name for p in build.folder.iterdir() if p.name.startswith(".")]
    assert json.loads((build.folder / "manifest.json").read_text())["key"] in build.folder.name
