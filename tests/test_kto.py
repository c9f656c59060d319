"""KTO on unpaired feedback: the records, the recipe's [kto] table, training, resume, eval and the data commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import DEMO_DATA, REPO, write_recipe
from test_resume import SigintAt, _losses
from typer.testing import CliRunner

from qlora4080 import load_recipe, train
from qlora4080.cli import app
from qlora4080.data.render import render_conversation
from qlora4080.data.vocabulary import IGNORE_INDEX
from qlora4080.errors import QloraError
from qlora4080.methods.feedback_records import FEEDBACK, read_feedback, to_feedback, tokenize_feedback
from qlora4080.methods.kto import contrasts
from qlora4080.training.interrupts import TrainingInterrupted

DEMO_RECIPE = REPO / "recipes" / "smollm2_135m_kto_demo.toml"


def write_feedback(path: Path, limit: int = 24) -> Path:
    """The demo's JSON cards labelled desirable, a chatty prose answer undesirable; a third of prompts get both."""
    lines = []
    for index, line in enumerate((DEMO_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()[:limit]):
        record = json.loads(line)
        prompt, card = record["messages"][0]["content"], record["messages"][1]["content"]
        prose = f"Sure! {json.loads(card)['name']} sounds like a lovely person. Anything else?"
        if index % 3 != 2:
            lines.append(json.dumps({"id": f"{record['id']}-good", "prompt": prompt, "completion": card, "label": True}))
        if index % 3 != 1:
            lines.append(json.dumps({"id": f"{record['id']}-bad", "prompt": prompt, "completion": prose, "label": False}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def kto_recipe(tmp_path: Path, model: Path, **training: object) -> Path:
    feedback = write_feedback(tmp_path / "feedback.jsonl")
    return write_recipe(tmp_path, str(model), data={"train": str(feedback), "validation": None},
                        training={"method": "kto", "max_steps": 10, "learning_rate": 5e-3, **training},
                        kto={"beta": 0.1})


def test_feedback_records_in_both_shapes_and_why_others_are_refused():
    plain = to_feedback({"prompt": "Hi", "completion": "Hello!", "label": True, "system": "Be brief."}, "x")
    assert not isinstance(plain, str)
    assert plain.prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert plain.completion == {"role": "assistant", "content": "Hello!"} and plain.desirable
    whole = to_feedback({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}],
                         "label": False, "id": "r7"}, "x")
    assert not isinstance(whole, str) and whole.id == "r7" and not whole.desirable
    assert whole.completion["content"] == "Go away"
    refusals = {
        "needs 'label'": {"prompt": "Hi", "completion": "Hello"},
        "'label' must be true or false, not 'yes'": {"prompt": "Hi", "completion": "Hello", "label": "yes"},
        "'label' must be true or false, not 1": {"prompt": "Hi", "completion": "Hello", "label": 1},
        "needs 'completion'": {"prompt": "Hi", "label": True},
        "'completion' is empty": {"prompt": "Hi", "completion": "  ", "label": True},
        "must end with the labelled assistant answer": {"messages": [{"role": "user", "content": "Hi"},
                                                                     {"role": "user", "content": "again"}], "label": True},
        "must end with a user (or tool) turn": {"prompt": [{"role": "user", "content": "Hi"},
                                                           {"role": "assistant", "content": "Yes"}],
                                                "completion": "Hello", "label": True},
        "needs 'prompt' and 'completion', or 'messages'": {"text": "Hi", "label": True},
    }
    for reason, record in refusals.items():
        problem = to_feedback(record, "x")
        assert isinstance(problem, str) and reason in problem, (reason, problem)


def test_feedback_is_detected_before_conversations_and_pairs():
    from qlora4080.methods.registry import record_kinds

    feedback = [{"prompt": "q", "completion": "a", "label": True}] * 3
    detected = next(kind.name for kind in record_kinds() if kind.detect(feedback))
    assert detected == "feedback"  # a prompt/completion record with a label is feedback, not a conversation
    assert FEEDBACK.detect([{"prompt": "q", "completion": "a"}]) is None
    assert FEEDBACK.detect([{"prompt": "q", "chosen": "a", "rejected": "b"}]) is None


def test_the_answer_is_exactly_what_sft_trains_in_a_last_assistant_turn(smol_tokenizer, tmp_path):
    records = read_feedback(write_feedback(tmp_path / "f.jsonl", limit=6)).records
    tokens = tokenize_feedback(records, smol_tokenizer, 256)
    assert len(tokens.rows) == len(records) and not tokens.dropped
    for record, row in zip(records, tokens.rows):
        rendered = render_conversation([*record.prompt, record.completion], smol_tokenizer, train_on="last_assistant")
        trained = [t for t, label in zip(rendered["input_ids"], rendered["labels"]) if label != IGNORE_INDEX]
        assert row["completion_ids"] == trained and row["label"] is record.desirable
        assert rendered["input_ids"][: len(row["prompt_ids"])] == row["prompt_ids"]
    cut = tokenize_feedback(records[:1], smol_tokenizer, len(tokens.rows[0]["prompt_ids"]) + 2)
    assert cut.truncated == 1 and len(cut.rows[0]["completion_ids"]) == 2
    assert tokenize_feedback(records[:1], smol_tokenizer, 10).dropped[0][1].startswith("the prompt alone is")


def test_contrasts_pair_each_good_answer_with_each_bad_one_of_the_same_prompt(tmp_path):
    records = read_feedback(write_feedback(tmp_path / "f.jsonl", limit=9)).records
    pairs = contrasts(records)
    assert len(pairs) == 3  # prompts 0, 3 and 6 have both labels; the others have one answer
    assert all(p.chosen["content"].startswith("{") and p.rejected["content"].startswith("Sure!") for p in pairs)


def test_recipe_errors_name_the_key_and_what_to_do(tmp_path, tiny_model_dir):
    path = kto_recipe(tmp_path, tiny_model_dir)
    with pytest.raises(QloraError, match=r'loss_type = "kto" estimates its KL term .*batch_size must be at least 2 '
                                         r"\(it is 1\)"):
        load_recipe(path, ["training.batch_size=1"])
    assert load_recipe(path, ["training.batch_size=1", 'kto.loss_type="apo_zero_unpaired"']).training.batch_size == 1
    with pytest.raises(QloraError, match="desirable_weight = 0: Input should be greater than 0") as info:
        load_recipe(path, ["kto.desirable_weight=0"])
    assert info.value.where == "--set kto.desirable_weight"
    written = write_recipe(tmp_path, str(tiny_model_dir), training={"method": "kto"}, kto={"undesirable_weight": -1})
    with pytest.raises(QloraError, match="undesirable_weight") as info:
        load_recipe(written)
    assert re.fullmatch(r".*recipe\.toml:\d+", info.value.where or ""), info.value.where  # the file and line
    with pytest.raises(QloraError, match="gamma"):
        load_recipe(path, ["kto.gamma=1"])
    with pytest.raises(QloraError, match=r"Input should be 'kto' or 'apo_zero_unpaired'"):
        load_recipe(path, ['kto.loss_type="sigmoid"'])
    (tmp_path / "sources").mkdir()
    sources = write_recipe(tmp_path / "sources", str(tiny_model_dir), training={"method": "kto"}, data={
        "train": None, "validation": None, "sources": [{"path": "x.jsonl", "format": "pairs"}]})
    with pytest.raises(QloraError, match=r'format = "pairs", a format of preference pairs .* training.method = "kto" '
                                         r'reads feedback records: set format = "feedback"'):
        load_recipe(sources)


def test_kto_settings_reach_trls_config(tmp_path, tiny_model_dir):
    from qlora4080.hardware import Hardware
    from qlora4080.methods.kto import build_kto_config
    from qlora4080.plan import resolve_plan

    recipe = load_recipe(kto_recipe(tmp_path, tiny_model_dir), ["kto.desirable_weight=1.33", "kto.beta=0.3"])
    config = build_kto_config(recipe, resolve_plan(recipe, Hardware(device="cpu"), "hf"), tmp_path / "o", has_eval=False)
    assert (config.beta, config.desirable_weight, config.undesirable_weight, config.loss_type) == (0.3, 1.33, 1.0, "kto")
    assert config.max_length == recipe.model.max_seq_len and config.bf16 is False  # fp32 on a CPU
    assert "[kto]" in recipe.to_toml() and "desirable_weight = 1.33" in recipe.to_toml()  # the snapshot keeps them


def test_a_file_with_one_label_only_is_refused_before_training(tmp_path, tiny_model_dir):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "q", "completion": "a", "label": True}) + "\n", encoding="utf-8")
    path = write_recipe(tmp_path, str(tiny_model_dir), data={"train": str(good), "validation": None},
                        training={"method": "kto"})
    with pytest.raises(QloraError, match="1 desirable and 0 undesirable answers .* KTO needs both"):
        train(load_recipe(path), run_name="bad", live=False)


def test_data_check_preview_and_build_read_feedback(tmp_path, tiny_model_dir):
    runner = CliRunner()
    recipe = kto_recipe(tmp_path, tiny_model_dir)  # writes feedback.jsonl
    feedback = tmp_path / "feedback.jsonl"
    with feedback.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "q", "completion": "a", "label": "thumbs up"}) + "\n")
    checked = runner.invoke(app, ["data", "check", str(feedback)], env={"COLUMNS": "200"})
    assert checked.exit_code != 0 and "feedback" in checked.output
    assert "'label' must be true or false, not 'thumbs up'" in checked.output
    shown = runner.invoke(app, ["data", "preview", str(recipe), "-n", "2"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "-good desirable" in shown.output and "what KTO raises" in shown.output
    sources = write_recipe(tmp_path, str(tiny_model_dir), data={
        "train": None, "validation": None, "build_dir": str(tmp_path / "builds"), "valid_min": 2,
        "sources": [{"path": str(feedback), "name": "fb"}]}, training={"method": "kto"})
    built = runner.invoke(app, ["data", "build", str(sources)], env={"COLUMNS": "200"})
    assert built.exit_code == 0, built.output
    assert "feedback: tokens count prompt" in " ".join(built.output.split())
    build = next(p for p in (tmp_path / "builds").iterdir() if p.is_dir() and not p.name.startswith("."))
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["counts"]["rejected"] == 1 and manifest["pools"][0]["format"] == "feedback"
    train_rows = [json.loads(line) for line in (build / "train.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (build / "validation.jsonl").read_text().splitlines()]
    assert {"prompt", "completion", "label", "source", "tags", "id"} <= set(train_rows[0])
    # a prompt's answers stay together: validation never holds a prompt training has seen
    assert not {json.dumps(r["prompt"]) for r in train_rows} & {json.dumps(r["prompt"]) for r in held}


@pytest.mark.slow
def test_kto_raises_good_answers_over_bad_ones_and_eval_says_so(tmp_path, tiny_model_dir):
    recipe = load_recipe(kto_recipe(tmp_path, tiny_model_dir))
    result = train(recipe, run_name="kto", live=False)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("kl" in r for r in records) and any("rewards/chosen" in r for r in records)
    log = (result.run_dir / "train.log").read_text()
    assert "feedback records kept (" in log and "kl " in log
    meta = json.loads((result.checkpoint_dir / "qlora4080.json").read_text())
    assert meta["method"] == "kto"
    assert "Kahneman-Tversky optimization (KTO)" in (result.checkpoint_dir / "README.md").read_text()
    outcome = CliRunner().invoke(app, ["eval", str(result.checkpoint_dir), "--data", str(tmp_path / "feedback.jsonl"),
                                       "--baseline", "--out", str(tmp_path / "eval")], env={"COLUMNS": "200"})
    assert outcome.exit_code == 0, outcome.output
    assert "Feedback evaluation: 8 desirable vs undesirable answers" in outcome.output
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["base"]["preference_accuracy"] == 0.0  # the tiny random model prefers the short prose answer
    assert saved["adapter"]["reward_accuracy"] >= 0.75 and saved["adapter"]["reward_margin"] > 1.0, saved["adapter"]


@pytest.mark.slow
def test_kto_resumes_after_ctrl_c_like_an_uninterrupted_run(tmp_path, tiny_model_dir):
    recipe = load_recipe(kto_recipe(tmp_path, tiny_model_dir, max_steps=6, save_steps=3, batch_size=2))
    straight = train(recipe, run_name="straight", live=False)
    expected = _losses(straight.run_dir)
    assert len(expected) == 6
    with pytest.raises(TrainingInterrupted) as info:
        train(recipe, run_name="cut", live=False, callbacks=[SigintAt(2)])
    assert "--resume --run-name cut" in info.value.hint
    resumed = train(recipe, run_name="cut", resume=True, live=False)
    assert resumed.summary["steps"] == 6
    combined = _losses(Path("runs/cut"))
    assert torch.allclose(torch.tensor(combined), torch.tensor(expected), atol=1e-4), (combined, expected)


def test_the_demo_recipe_loads_and_fits(tmp_path):
    recipe = load_recipe(DEMO_RECIPE)
    assert recipe.training.method == "kto" and recipe.training.batch_size >= 2
    feedback = read_feedback(recipe.resolve_path(str(recipe.data.train)))
    assert not feedback.rejected and len(contrasts(read_feedback(recipe.resolve_path(str(recipe.data.validation))).records)) == 40


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, text: str, *, style: str | None = None, echo: bool = True) -> None:
        self.lines.append(text)


def test_unbalanced_labels_get_the_papers_weight_advice(tmp_path, tiny_model_dir, smol_tokenizer):
    feedback = tmp_path / "skewed.jsonl"
    rows = [{"prompt": f"q{i}", "completion": f"answer {i}", "label": i < 3} for i in range(12)]  # 3 good, 9 bad
    feedback.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    path = write_recipe(tmp_path, str(tiny_model_dir), data={"train": str(feedback), "validation": None},
                        training={"method": "kto"})
    log = Lines()
    split, _ = FEEDBACK.tokenize(feedback, None, smol_tokenizer, load_recipe(path), log)
    assert split.conversations == 12
    assert any("weigh 0.33 to 1" in line and "desirable_weight between 3.00 and 4.00" in line for line in log.lines), log.lines
    balanced = Lines()
    FEEDBACK.tokenize(feedback, None, smol_tokenizer, load_recipe(path, ["kto.desirable_weight=3.5"]), balanced)
    assert not any("weigh" in line for line in balanced.lines)
    # the rows are in the seed's order, not the file's (KTO reads them in order: batches mix both labels)
    assert [row["label"] for row in split.dataset] != [row["label"] for row in rows]
