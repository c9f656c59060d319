"""Preference pairs through [[data.sources]]: validation with file:line, dedup, mix, split; data check; resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_recipe
from test_resume import SigintAt, _losses
from typer.testing import CliRunner

from qlora4080 import load_recipe, train
from qlora4080.cli import app
from qlora4080.data.pipeline import build_data
from qlora4080.errors import QloraError
from qlora4080.preference.pairs import read_pairs
from qlora4080.training.interrupts import TrainingInterrupted

PAIRS = Path(__file__).resolve().parent.parent / "recipes" / "data" / "json_card_pairs" / "train.jsonl"


def write_sources(folder: Path) -> tuple[Path, Path]:
    """Two sources in the two pair shapes, with a bad line, a duplicate and a pair that is also in the other file."""
    demo = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()[:40]]
    renamed = [{"question": p["prompt"], "good": p["chosen"], "bad": p["rejected"], "tags": ["cards"]} for p in demo[:24]]
    renamed.insert(2, {"question": "Who is Ana?", "good": "{}"})  # line 3: no rejected answer
    renamed.append(renamed[0])  # a duplicate inside the source
    whole = [{"chosen": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}],
              "rejected": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["rejected"]}]}
             for p in demo[20:40]]  # demo[20:24] are in both sources
    whole.insert(0, {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                     "rejected": [{"role": "user", "content": "Hey"}, {"role": "assistant", "content": "Yo"}]})  # line 1
    first, second = folder / "renamed.jsonl", folder / "ultrafeedback.jsonl"
    for path, rows in ((first, renamed), (second, whole)):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return first, second


def sources_recipe(folder: Path, model: Path, second_source: dict[str, object] | None = None, **training: object) -> Path:
    first, second = write_sources(folder)
    sources = [{"name": "renamed", "path": str(first), "format": "pairs", "tags": ["json"],
                "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}},
               {"name": "uf", "path": str(second), **(second_source or {})}]
    return write_recipe(folder, str(model), data={"train": None, "validation": None, "sources": sources, "valid_ratio": 0.2,
                                                 "valid_min": 4, "build_dir": str(folder / "builds")},
                        training={"method": "dpo", "max_steps": 4, **training})


def test_pairs_go_through_the_data_build(tmp_path, tiny_model_dir):
    recipe = load_recipe(sources_recipe(tmp_path, tiny_model_dir))
    build = build_data(recipe)
    pools = {pool.name: pool for pool in build.pools}
    assert (pools["renamed"].format, pools["renamed"].read, pools["renamed"].rejected, pools["renamed"].duplicates,
            pools["renamed"].kept) == ("pairs", 26, 1, 1, 24)
    assert (pools["uf"].read, pools["uf"].rejected, pools["uf"].kept) == (21, 1, 20)
    assert pools["renamed"].in_mix + pools["uf"].in_mix == 40  # the 4 pairs in both sources are mixed in once
    rejects = [json.loads(line) for line in (build.folder / "rejects.jsonl").read_text().splitlines()]
    assert {(Path(r["file"]).name, r["line"]) for r in rejects} == {("renamed.jsonl", 3), ("ultrafeedback.jsonl", 1)}
    assert "'rejected' is missing" in next(r["reason"] for r in rejects if r["line"] == 3)
    assert "share no prompt" in next(r["reason"] for r in rejects if r["line"] == 1)
    train_pairs, validation_pairs = read_pairs(build.train_file), read_pairs(build.validation_file)
    assert not train_pairs.rejected and not validation_pairs.rejected  # the build writes pairs its reader takes back
    assert len(train_pairs.pairs) + len(validation_pairs.pairs) == 40 and len(validation_pairs.pairs) == 8
    train_prompts = {p.prompt[-1]["content"] for p in train_pairs.pairs}
    assert not train_prompts & {p.prompt[-1]["content"] for p in validation_pairs.pairs}
    first = json.loads(build.train_file.read_text().splitlines()[0])
    assert set(first) == {"id", "prompt", "chosen", "rejected", "source", "tags"}
    assert first["tags"] == (["cards", "json"] if first["source"] == "renamed" else [])
    # the same sources built for sft would be another build, never this one reused
    assert build_data(recipe).reused
    assert load_recipe(recipe.source_path, ["training.method=orpo"]).data.sources  # orpo reads pair sources too


def test_a_conversation_format_for_pairs_and_pairs_for_sft_are_refused(tmp_path, tiny_model_dir):
    with pytest.raises(QloraError, match=r'sources\]\] 2 \(uf\) has format = "alpaca", a format of conversations .* reads preference pairs: set format = "pairs"'):
        load_recipe(sources_recipe(tmp_path, tiny_model_dir, {"format": "alpaca"}))
    path = sources_recipe(tmp_path, tiny_model_dir)
    with pytest.raises(QloraError, match=r'format = "pairs", a format of preference pairs \(training.method = "dpo" or "orpo"\), but training.method = "sft" reads conversations'):
        load_recipe(path, ["training.method=sft"])


def test_unknown_pair_columns_are_named(tmp_path, tiny_model_dir):
    recipe = load_recipe(sources_recipe(tmp_path, tiny_model_dir, {"columns": {"answer": "x"}}))
    with pytest.raises(QloraError, match="columns names 'answer', which pairs do not have"):
        build_data(recipe)


def test_data_check_and_build_on_pairs(tmp_path, tiny_model_dir):
    first, _ = write_sources(tmp_path)
    runner = CliRunner()
    good = runner.invoke(app, ["data", "check", str(PAIRS)])
    assert good.exit_code == 0, good.output
    assert "format: pairs (detected)" in good.output
    bad = runner.invoke(app, ["data", "check", str(first), "-f", "pairs", "-c", "prompt=question", "-c", "chosen=good",
                              "-c", "rejected=bad"], env={"COLUMNS": "200"})
    assert bad.exit_code == 1
    assert f"{first}:3: a preference record needs 'chosen' and 'rejected'; 'rejected' is missing" in bad.output
    recipe = sources_recipe(tmp_path, tiny_model_dir)
    built = runner.invoke(app, ["data", "build", str(recipe)], env={"COLUMNS": "200"})
    assert built.exit_code == 0, built.output
    assert "train 32, validation 8, rejected 2" in built.output
    assert "pairs: tokens count both answers" in built.output


@pytest.mark.slow
def test_dpo_from_sources_resumes_after_ctrl_c_like_an_uninterrupted_run(tmp_path, tiny_model_dir):
    recipe = load_recipe(sources_recipe(tmp_path, tiny_model_dir, max_steps=6, save_steps=3, batch_size=2,
                                        learning_rate=5e-3))
    straight = train(recipe, run_name="straight", live=False)
    expected = _losses(straight.run_dir)
    assert len(expected) == 6
    assert "data build" in (straight.run_dir / "train.log").read_text()
    with pytest.raises(TrainingInterrupted) as info:
        train(recipe, run_name="cut", live=False, callbacks=[SigintAt(2)])
    assert "--resume --run-name cut" in info.value.hint
    assert (Path("checkpoints/cut") / "adapter_model.safetensors").is_file()
    resumed = train(recipe, run_name="cut", resume=True, live=False)
    assert resumed.summary["steps"] == 6
    combined = _losses(Path("runs/cut"))
    assert torch.allclose(torch.tensor(combined), torch.tensor(expected), atol=1e-4), (combined, expected)


def test_every_pair_of_one_prompt_lands_on_the_same_side_of_the_split():
    import random

    from qlora4080.data.mixing import split
    from qlora4080.preference.pair_records import PAIRS

    def record(number: int, prompt: int) -> dict[str, object]:
        return {"id": f"p-{number}", "prompt": [{"role": "user", "content": f"question {prompt}"}],
                "chosen": [{"role": "assistant", "content": f"good {number}"}],
                "rejected": [{"role": "assistant", "content": f"bad {number}"}]}

    records = [record(number, number // 3) for number in range(30)]  # 10 prompts, 3 pairs each
    train, validation = split(records, 0.3, 1, random.Random(0), PAIRS.split_group)
    held = {PAIRS.split_group(r) for r in validation}
    assert len(held) == 3 and len(validation) == 9  # whole prompts held out: 30% of the 10
    assert not held & {PAIRS.split_group(r) for r in train}
