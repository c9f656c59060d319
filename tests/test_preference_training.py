"""DPO through the staged run on a tiny model: the preference moves, and an SFT adapter is the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DEMO_DATA, write_recipe

from qlora4080 import load_recipe, train
from qlora4080.checkpoint import CheckpointMeta
from qlora4080.errors import QloraError
from qlora4080.evaluate import report_rows
from qlora4080.infer import ChatModel
from qlora4080.preference.evaluate import evaluate_pairs
from qlora4080.preference.pairs import read_pairs
from qlora4080.preference.score import answer_log_probs, pair_log_probs, preference_score
from qlora4080.preference.tokens import tokenize_pairs


def write_pairs(path: Path, limit: int = 24) -> Path:
    """The demo's JSON cards as chosen answers, a chatty prose answer as rejected."""
    lines = []
    for line in (DEMO_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()[:limit]:
        record = json.loads(line)
        prompt, card = record["messages"][0]["content"], record["messages"][1]["content"]
        name = json.loads(card)["name"]
        lines.append(json.dumps({"id": record["id"], "prompt": prompt, "chosen": card,
                                 "rejected": f"Sure! {name} sounds like a lovely person. Anything else?"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def dpo_recipe(tmp_path: Path, model: Path, **training: object) -> Path:
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    return write_recipe(tmp_path, str(model), data={"train": str(pairs), "validation": None},
                        training={"method": "dpo", "max_steps": 10, "learning_rate": 5e-3, **training},
                        preference={"beta": 0.1})


@pytest.mark.slow
def test_dpo_makes_the_model_prefer_the_chosen_answers(tmp_path, tiny_model_dir, smol_tokenizer):
    recipe = load_recipe(dpo_recipe(tmp_path, tiny_model_dir))
    rows = tokenize_pairs(read_pairs(tmp_path / "pairs.jsonl").pairs, smol_tokenizer, 128).rows
    result = train(recipe, run_name="dpo", live=False)
    base = pair_log_probs(result.model, rows, adapter_off=True)  # the reference: where DPO started
    trained = pair_log_probs(result.model, rows)
    before, after = preference_score(base, base), preference_score(trained, base)
    assert before.accuracy == 0.0 and before.mean_margin == 0.0
    assert after.accuracy >= 0.9 and after.mean_margin > 1.0, after
    # and in plain log-probabilities the chosen cards gained on the rejected answers
    assert preference_score(trained).mean_margin > preference_score(base).mean_margin + 1.0
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in records)  # TRL's preference metrics reach the log and the panel
    assert "pref acc" in (result.run_dir / "train.log").read_text()
    # eval --baseline on pairs: the same comparison, as a report with the base model beside the adapter
    report = evaluate_pairs(ChatModel(result.model, smol_tokenizer, "", True), read_pairs(tmp_path / "pairs.jsonl").pairs,
                            max_seq_len=128, baseline=True)
    assert report.metrics["adapter"]["mean_margin"] > report.metrics["base"]["mean_margin"] + 1.0
    header, rows = report_rows(report)
    assert header == ["metric", "base", "adapter", "delta"]
    assert any(row[0].startswith("prefers the chosen answer") for row in rows)
    # the same through the command line: eval sees pairs in --data and says so in eval.json
    from typer.testing import CliRunner

    from qlora4080.cli import app

    outcome = CliRunner().invoke(app, ["eval", str(result.checkpoint_dir), "--data", str(tmp_path / "pairs.jsonl"),
                                       "--baseline", "--out", str(tmp_path / "eval")])
    assert outcome.exit_code == 0, outcome.output
    assert "Preference evaluation on 24 pairs" in outcome.output
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["adapter"]["mean_margin"] == pytest.approx(report.metrics["adapter"]["mean_margin"], abs=1e-3)


@pytest.mark.slow
def test_orpo_needs_no_reference_and_moves_the_preference(tmp_path, tiny_model_dir, smol_tokenizer):
    recipe = load_recipe(dpo_recipe(tmp_path, tiny_model_dir), ["training.method=orpo", "preference.beta=0.5"])
    rows = tokenize_pairs(read_pairs(tmp_path / "pairs.jsonl").pairs, smol_tokenizer, 128).rows
    result = train(recipe, run_name="orpo", live=False)
    assert list(result.model.peft_config) == ["default"]  # no reference copy: ORPO is reference-free
    base, trained = pair_log_probs(result.model, rows, adapter_off=True), pair_log_probs(result.model, rows)
    assert preference_score(trained).mean_margin > preference_score(base).mean_margin + 1.0
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/accuracies" in r for r in records)
    assert CheckpointMeta.load(result.checkpoint_dir).method == "orpo"


@pytest.mark.slow
def test_an_sft_adapter_is_the_reference(tmp_path, tiny_model_dir, tiny_checkpoint, smol_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(dpo_recipe(tmp_path, tiny_model_dir, max_steps=4),
                         [f"model.adapter={json.dumps(str(tiny_checkpoint))}"])
    result = train(recipe, run_name="dpo-from-sft", live=False)
    rows = tokenize_pairs(read_pairs(tmp_path / "pairs.jsonl").pairs, smol_tokenizer, 128).rows[:6]
    sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_checkpoint).eval()
    expected = answer_log_probs(sft, rows, "chosen_ids")
    model = result.model
    assert "ref" in model.peft_config  # TRL kept a frozen copy of the SFT adapter
    model.set_adapter("ref")
    reference = answer_log_probs(model, rows, "chosen_ids")
    model.set_adapter("default")
    trained = answer_log_probs(model, rows, "chosen_ids")
    assert reference == pytest.approx(expected, abs=1e-4)
    assert trained != pytest.approx(expected, abs=1e-4)  # the policy itself moved away from the SFT model
    assert not (result.checkpoint_dir / "ref").exists()  # only the trained adapter is saved, not the reference copy
    meta = CheckpointMeta.load(result.checkpoint_dir)
    assert meta is not None and meta.method == "dpo" and meta.started_from == str(tiny_checkpoint.resolve())
    # eval --baseline: base, the SFT model it started from, and the DPO adapter, in one table
    pairs = read_pairs(tmp_path / "pairs.jsonl").pairs[:6]
    report = evaluate_pairs(ChatModel(model, smol_tokenizer, "", True), pairs, max_seq_len=128, baseline=True,
                            sft_adapter=Path(meta.started_from))
    sft_margins = [c - r for c, r in zip(expected, answer_log_probs(sft, rows, "rejected_ids"))]
    assert report.metrics["sft"]["mean_margin"] == pytest.approx(sum(sft_margins) / len(sft_margins), abs=1e-3)
    assert report_rows(report)[0] == ["metric", "base", "sft", "adapter", "delta vs sft"]
    assert list(model.peft_config) == ["default", "ref"]  # the SFT adapter was loaded for the comparison only


def test_dpo_without_usable_pairs_is_a_clear_error(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n", encoding="utf-8")
    path = write_recipe(tmp_path, str(tiny_model_dir), data={"train": str(bad), "validation": None},
                        training={"method": "dpo"})
    with pytest.raises(QloraError, match="no usable preference pair"):
        train(load_recipe(path), run_name="bad", live=False)


def test_data_preview_shows_both_answers_of_a_pair(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from qlora4080.cli import app

    outcome = CliRunner().invoke(app, ["data", "preview", str(dpo_recipe(tmp_path, tiny_model_dir)), "-n", "2"],
                                 env={"COLUMNS": "200"})
    assert outcome.exit_code == 0, outcome.output
    first = json.loads((tmp_path / "pairs.jsonl").read_text().splitlines()[0])
    assert f"{first['id']} chosen" in outcome.output and f"{first['id']} rejected" in outcome.output
    assert "2 pairs from" in outcome.output and "what DPO scores" in outcome.output


def test_sft_weight_adds_trls_sft_loss_beside_the_preference_loss(tmp_path, tiny_model_dir):
    from qlora4080.hardware import Hardware
    from qlora4080.plan import resolve_plan
    from qlora4080.preference.trainer import build_dpo_config

    plain = load_recipe(dpo_recipe(tmp_path, tiny_model_dir), ["preference.loss_type=ipo"])
    config = build_dpo_config(plain, resolve_plan(plain, Hardware(device="cpu"), "hf"), tmp_path / "out", has_eval=False)
    assert (config.loss_type, config.loss_weights) == (["ipo"], [1.0])
    mixed = load_recipe(dpo_recipe(tmp_path, tiny_model_dir), ["preference.sft_weight=0.5"])
    config = build_dpo_config(mixed, resolve_plan(mixed, Hardware(device="cpu"), "hf"), tmp_path / "out", has_eval=False)
    assert (config.loss_type, config.loss_weights) == (["sigmoid", "sft"], [1.0, 0.5])
    with pytest.raises(QloraError, match="sft_weight"):
        load_recipe(dpo_recipe(tmp_path, tiny_model_dir), ["preference.sft_weight=-1"])
