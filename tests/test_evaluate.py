"""eval: perplexity against a hand computation, batched generation, task metrics, the side-by-side report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CLI, DEMO_DATA, REPO, write_recipe

from qlora4080.data.conversations import read_conversations
from qlora4080.data.render import render_conversation
from qlora4080.errors import QloraError
from qlora4080.eval_report import AnswerRow, EvalReport, PairRow
from qlora4080.eval_rules import Generated
from qlora4080.evaluate import evaluate, perplexity, report_rows, score, to_eval_records, write_report
from qlora4080.infer import generate, generate_answers, load_for_chat
from qlora4080.task_metrics import exact_match


@pytest.fixture(scope="module")
def chat(tiny_checkpoint):
    return load_for_chat(tiny_checkpoint)


@pytest.fixture(scope="module")
def records():
    return to_eval_records(read_conversations(DEMO_DATA / "validation.jsonl").records, limit=5)


def _hand_perplexity(chat, records) -> float:
    """Position by position, no batching: -log p(token) summed over assistant tokens, then exp(mean)."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for record in records:
            rendered = render_conversation(record.messages, chat.tokenizer)
            ids = rendered["input_ids"]
            logits = chat.model(input_ids=torch.tensor([ids])).logits[0]
            for position in range(1, len(ids)):
                if rendered["labels"][position] == -100:
                    continue
                log_probs = torch.log_softmax(logits[position - 1].double(), dim=-1)
                nll -= float(log_probs[ids[position]])
                count += 1
    return math.exp(nll / count)


def test_perplexity_matches_a_hand_computation_with_padding(chat, records):
    measured = perplexity(chat, records, batch_size=3)  # batches of 3 and 2: padding inside a batch
    expected = _hand_perplexity(chat, records)
    assert measured["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert measured["tokens"] == sum(
        sum(1 for label in render_conversation(r.messages, chat.tokenizer)["labels"][1:] if label != -100) for r in records)


def test_adapter_changes_perplexity(chat, records):
    assert perplexity(chat, records, use_adapter=False)["perplexity"] != pytest.approx(perplexity(chat, records)["perplexity"])


def test_batched_left_padded_generation_equals_one_at_a_time(chat, records):
    prompts = [r.prompt for r in records[:4]]
    batched = generate_answers(chat, prompts, max_new_tokens=8, batch_size=4)
    single = [generate(chat, p, max_new_tokens=8) for p in prompts]
    assert [a.text for a in batched] == single


def test_evaluate_with_baseline_and_report_files(chat, records, tmp_path):
    report = evaluate(chat, records, baseline=True, max_new_tokens=8, batch_size=4)
    for side in ("base", "adapter"):
        assert 0.0 <= report.metrics[side]["usability_rate"] <= 1.0
        assert report.metrics[side]["json_records"] == 5  # the demo data is tagged json
        assert len(report.rows[side]) == 5
    json_path, md_path = write_report(report, tmp_path, "validation.jsonl")
    saved = json.loads(json_path.read_text())
    assert saved["adapter"]["perplexity"] == report.metrics["adapter"]["perplexity"]
    assert saved["records"]["base"] == [row.to_json() for row in report.rows["base"]]
    table = md_path.read_text()
    assert "| metric | base | adapter | delta |" in table and "perplexity (assistant tokens)" in table


def test_eval_cli_defaults_to_the_runs_validation_file(tiny_checkpoint, tmp_path):
    import subprocess

    result = subprocess.run([*CLI, "eval", str(tiny_checkpoint), "--limit", "3", "--baseline", "--max-new-tokens", "4",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Evaluation on 3 records" in result.stdout and "usability rate" in result.stdout
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "eval.md").is_file()


# ---- task metrics: exact match on records tagged math, token F1 on math/short ----------------------

def _record(id: str, question: str, reference: str, tags: list[str]) -> dict:
    return {"id": id, "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reference}],
            "tags": tags}


def _generated(text: str) -> Generated:
    return Generated(text=text, raw_text=text, token_ids=tuple(range(len(text))), stopped=True)


def test_score_adds_exact_match_and_f1_to_tagged_records_only(chat):
    records = to_eval_records([
        _record("m1", "5 + 7?", "12", ["math", "en"]),
        _record("m2", "小芳有59个苹果，送给同学32个，还剩多少个苹果？", "27", ["math", "zh"]),
        _record("m3", "Name it", "none", ["math"]),  # no number in the reference: not counted
        _record("s1", "Capital of France?", "Paris", ["short"]),
        _record("e1", "Tip?", "🎯 focus", ["emoji"]),
    ])
    answers = [_generated(t) for t in ("The answer is 12.", "还剩28个", "4", "paris", "🎯 focus")]
    metrics, rows = score(chat, records, answers)
    assert metrics["exact_match_rate"] == 0.5 and metrics["exact_match_records"] == 2 and metrics["exact_match_unscored"] == 1
    assert metrics["f1_records"] == 4 and metrics["token_f1"] == pytest.approx((0.5 + 0.0 + 0.0 + 1.0) / 4)
    by_id = {row.id: row.checks for row in rows}
    assert by_id["m1"]["answer_number"] == "12" and by_id["m1"]["exact_match"] is True
    assert by_id["m2"]["answer_number"] == "28" and by_id["m2"]["reference_number"] == "27" and by_id["m2"]["exact_match"] is False
    assert "exact_match" not in by_id["m3"] and by_id["m3"]["reference_number"] is None
    assert by_id["s1"]["f1"] == 1.0 and "exact_match" not in by_id["s1"]
    assert not {"exact_match", "f1", "answer_number"} & set(by_id["e1"])


def _report(**metrics: dict) -> EvalReport:
    return EvalReport({side: {"failures": {}, **values} for side, values in metrics.items()}, {})


def test_report_rows_show_task_metrics_with_counts_and_delta():
    header, rows = report_rows(_report(
        base={"perplexity": 3.0, "exact_match_rate": 0.25, "exact_match_records": 20, "token_f1": 0.1, "f1_records": 24},
        adapter={"perplexity": 2.0, "exact_match_rate": 0.5, "exact_match_records": 20, "token_f1": 0.4, "f1_records": 24},
    ))
    assert header == ["metric", "base", "adapter", "delta"]
    assert ["exact match, final number (tagged math, 20 records)", "25.0%", "50.0%", "+25.0%"] in rows
    assert ["token F1 (tagged math/short, 24 records)", "0.100", "0.400", "+0.300"] in rows


def test_report_rows_leave_out_task_metrics_without_tagged_records():
    _, rows = report_rows(_report(model={"perplexity": 2.0, "usability_rate": 1.0}))
    assert [row[0] for row in rows] == ["perplexity (assistant tokens)", "usability rate"]


def test_eval_json_is_each_models_metrics_then_each_models_rows():
    """The shape users and `runs` read: a column per model, failures inside it, rows under "records"."""
    answers = EvalReport({"adapter": {"perplexity": 2.0, "usability_rate": 0.5, "failures": {"empty": 1}}},
                         {"adapter": [AnswerRow("a", "{}", True, (), {"json_valid": True}), AnswerRow("b", "", False, ("empty",))]})
    assert answers.to_json() == {
        "adapter": {"perplexity": 2.0, "usability_rate": 0.5, "failures": {"empty": 1}},
        "records": {"adapter": [{"id": "a", "answer": "{}", "usable": True, "failures": [], "json_valid": True},
                                {"id": "b", "answer": "", "usable": False, "failures": ["empty"]}]}}
    assert answers.number("adapter", "failures") is None and answers.failures("adapter") == {"empty": 1}
    pairs = EvalReport({"base": {"pairs": 1, "failures": {}}, "adapter": {"pairs": 1, "reward_margin": 0.5, "failures": {}}},
                       {"base": [PairRow("p", -1.0, False)], "adapter": [PairRow("p", 2.0, True)]})
    assert list(pairs.to_json()) == ["base", "adapter", "records"]
    assert pairs.to_json()["records"] == {"base": [{"id": "p", "margin": -1.0, "prefers_chosen": False}],
                                          "adapter": [{"id": "p", "margin": 2.0, "prefers_chosen": True}]}


def test_tags_of_eval_records():
    one = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "1"}]}
    assert to_eval_records([one | {"tags": "math"}])[0].tags == ["math"]  # one tag as a string, not its letters
    assert to_eval_records([one])[0].tags == []
    with pytest.raises(QloraError, match="'tags' of record 'r7' must be a list of strings") as raised:
        to_eval_records([one | {"id": "r7", "tags": {"math": 1}}], source="valid.jsonl")
    assert raised.value.where == "valid.jsonl"


def test_eval_baseline_on_the_headline_data_prints_exact_match(tiny_model_dir, tmp_path, monkeypatch):
    """Build the headline recipe's data, train a tiny adapter on it, then `eval --baseline` through the CLI."""
    from typer.testing import CliRunner

    from qlora4080 import load_recipe, train
    from qlora4080.cli import app
    from qlora4080.console import console
    from qlora4080.data.pipeline import build_data

    build = build_data(load_recipe(REPO / "recipes" / "qwen3_4b_emoji.toml", [f"data.build_dir={tmp_path / 'builds'}"]))
    validation = [json.loads(line) for line in build.validation_file.read_text(encoding="utf-8").splitlines()]
    math_records = [r for r in validation if "math" in r["tags"]]
    assert math_records and len(math_records) < len(validation)  # the tags survive the build; emoji records are not math
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir),
                                      data={"train": str(build.validation_file), "validation": str(build.validation_file)},
                                      training={"max_steps": 2}, output={"checkpoints_dir": "checkpoints", "runs_dir": "runs"}))
    checkpoint = train(recipe, run_name="headline", live=False).checkpoint_dir

    monkeypatch.setattr(console, "_width", 200)  # one table row a line
    result = CliRunner().invoke(app, ["eval", str(checkpoint), "--baseline", "--max-new-tokens", "6", "--out", "report"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "report" / "eval.json").read_text(encoding="utf-8"))
    references = {r["id"]: r["messages"][-1]["content"] for r in validation}
    label = f"exact match, final number (tagged math, {len(math_records)} records)"
    values = []
    for side in ("base", "adapter"):
        rows = saved["records"][side]
        scored = [row for row in rows if "exact_match" in row]
        assert len(scored) == len(math_records) == saved[side]["exact_match_records"]
        assert saved[side]["exact_match_rate"] == sum(row["exact_match"] for row in scored) / len(scored)
        for row in scored:  # each verdict is the pure function's on the saved answer
            assert row["exact_match"] == exact_match(row["answer"], references[row["id"]]).correct
        assert all("exact_match" not in row and "f1" not in row for row in rows if row not in scored)
        values.append(f"{saved[side]['exact_match_rate']:.1%}")
    printed = next(line for line in result.output.splitlines() if label in line)
    assert [cell.strip() for cell in printed.split("│")[2:4]] == values
    assert f"| {label} | {values[0]} | {values[1]} |" in (tmp_path / "report" / "eval.md").read_text(encoding="utf-8")
    assert "token F1 (tagged math/short" in result.output
