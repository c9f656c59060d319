"""Batch inference (resume, bad lines), chat --tests, and export round trips on the tiny adapter."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch
from conftest import CLI

from qlora4080.batch_infer import read_prompts
from qlora4080.errors import QloraError


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})


PROMPTS = [
    '{"id": "a", "prompt": "Maria is 34 and lives in Lisbon."}',
    "{not json",
    '{"id": "b", "messages": [{"role": "user", "content": "Hi"}], "topic": "greeting"}',
    '{"id": "c", "prompt": ""}',
    '{"id": "d", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}',
    '{"prompt": "No id here.", "system": "Be brief."}',
    '{"id": "a", "prompt": "duplicate"}',
]


def test_prompt_file_reports_every_bad_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(PROMPTS) + "\n")
    parsed = read_prompts(path)
    ids = [p.id for p in parsed.prompts]
    assert ids[:2] == ["a", "b"] and re.fullmatch(r"line-6-[0-9a-f]{8}", ids[2])  # line number + prompt: no collisions
    assert parsed.prompts[1].extra == {"topic": "greeting"}
    assert parsed.prompts[2].messages[0] == {"role": "system", "content": "Be brief."}
    assert [(r.line, r.reason.split(":")[0]) for r in parsed.rejected] == [
        (2, "bad JSON"),
        (4, "needs a non-empty 'prompt' string or a 'messages' list"),
        (5, "the last message is already an assistant answer; end with a user (or tool) message"),
        (7, "duplicate id 'a'"),
    ]


def test_generate_writes_answers_skips_bad_lines_and_resumes(tiny_checkpoint, tmp_path):
    source, output = tmp_path / "prompts.jsonl", tmp_path / "out" / "answers.jsonl"
    source.write_text("\n".join(PROMPTS) + "\n")
    first = run("generate", str(tiny_checkpoint), "-i", str(source), "-o", str(output), "--max-new-tokens", "4")
    assert first.returncode == 1  # answers written, but bad lines are never silent
    assert f"{source}:2: bad JSON" in first.stdout
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["id"] for line in lines] == [p.id for p in read_prompts(source).prompts]
    assert lines[1]["topic"] == "greeting" and isinstance(lines[0]["answer"], str)

    # an interrupted run: keep the first answer and half of the second line
    text = output.read_text().splitlines()
    output.write_text(text[0] + "\n" + text[1][: len(text[1]) // 2])
    again = run("generate", str(tiny_checkpoint), "-i", str(source), "-o", str(output), "--max-new-tokens", "4")
    assert "1 already answered" in again.stdout and "2 to go" in again.stdout
    assert f"{output}:2: the last line was cut off" in again.stdout
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]  # the cut line is gone: valid JSONL
    assert sorted(ids) == sorted(p.id for p in read_prompts(source).prompts)


def test_chat_tests_file_runs_and_saves(tiny_checkpoint, tmp_path):
    tests = tmp_path / "tests.txt"
    tests.write_text("# comment\nFirst question\n\nSecond question\n")
    save = tmp_path / "answers.jsonl"
    result = run("chat", str(tiny_checkpoint), "--tests", str(tests), "--save", str(save), "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert "test 1/2" in result.stdout and "test 2/2" in result.stdout and "Second question" in result.stdout
    saved = [json.loads(line) for line in save.read_text().splitlines()]
    assert [s["prompt"] for s in saved] == ["First question", "Second question"]


def test_export_merged_round_trip(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora4080.export import export_merged
    from qlora4080.infer import load_for_chat

    out = tmp_path / "merged"
    result = export_merged(tiny_checkpoint, out, prompt="Maria is 34 and lives in Lisbon.")
    assert result.answers_match, (result.adapter_answer, result.merged_answer)
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in out.iterdir()}
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in plain.named_parameters())
    adapter = load_for_chat(tiny_checkpoint)
    ids = torch.tensor([AutoTokenizer.from_pretrained(out)("Hello there, who are you?")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, adapter.model(input_ids=ids).logits, atol=1e-4)
    assert (out / "chat_template.jinja").read_text() == (tiny_checkpoint / "chat_template.jinja").read_text()

    with pytest.raises(QloraError, match="not empty"):
        export_merged(tiny_checkpoint, out)


def test_export_cli_verifies_and_explains_bad_gguf_requests(tiny_checkpoint, tmp_path):
    result = run("export", str(tiny_checkpoint), "--merged", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert "verified: the merged model gives the same greedy answer" in result.stdout
    unknown = run("export", str(tiny_checkpoint), "--gguf", "q3_xs", "--gguf-dir", str(tmp_path / "g"))
    assert unknown.returncode == 2
    assert "unknown GGUF quantization 'q3_xs'" in unknown.stderr and "q4_k_m" in unknown.stderr
    assert not (tmp_path / "g").exists()
    nothing = run("export", str(tiny_checkpoint))
    assert nothing.returncode == 2 and "nothing to export" in nothing.stderr


def test_chat_loads_a_merged_folder_and_a_bare_base(tiny_model_dir):
    from qlora4080.infer import generate, load_for_chat

    bare = load_for_chat(tiny_model_dir)
    assert not bare.has_adapter
    assert isinstance(generate(bare, [{"role": "user", "content": "Hi"}], max_new_tokens=3), str)


def test_generate_refuses_prompts_past_the_models_positions_before_answering(tiny_checkpoint, tmp_path):
    """The tiny model has 512 positions: a 700-word prompt once ran on and answered junk, exit 0."""
    source, output = tmp_path / "prompts.jsonl", tmp_path / "answers.jsonl"
    source.write_text(json.dumps({"id": "short", "prompt": "Hi"}) + "\n"
                      + json.dumps({"id": "essay", "prompt": "word " * 700}) + "\n")
    refused = run("generate", str(tiny_checkpoint), "-i", str(source), "-o", str(output), "--max-new-tokens", "4")
    text = " ".join(refused.stdout.split()) + " ".join(refused.stderr.split())
    assert refused.returncode == 2 and "1 prompt(s) do not fit the model's 512-token context" in text, text
    assert "essay (" in text and not output.exists()
