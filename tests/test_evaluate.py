"""eval: perplexity against a hand computation, batched generation, the side-by-side report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CLI, DEMO_DATA

from qlora4080.data.conversations import read_conversations
from qlora4080.data.render import render_conversation
from qlora4080.evaluate import evaluate, perplexity, to_eval_records, write_report
from qlora4080.infer import generate, generate_answers, load_for_chat


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
        assert 0.0 <= report[side]["usability_rate"] <= 1.0
        assert report[side]["json_records"] == 5  # the demo data is tagged json
        assert len(report["records"][side]) == 5
    json_path, md_path = write_report(report, tmp_path, "validation.jsonl")
    saved = json.loads(json_path.read_text())
    assert saved["adapter"]["perplexity"] == report["adapter"]["perplexity"]
    table = md_path.read_text()
    assert "| metric | base | adapter | delta |" in table and "perplexity (assistant tokens)" in table


def test_eval_cli_defaults_to_the_runs_validation_file(tiny_checkpoint, tmp_path):
    import subprocess

    result = subprocess.run([*CLI, "eval", str(tiny_checkpoint), "--limit", "3", "--baseline", "--max-new-tokens", "4",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Evaluation on 3 records" in result.stdout and "usability rate" in result.stdout
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "eval.md").is_file()
