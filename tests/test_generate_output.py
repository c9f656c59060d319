"""`generate -o`: only a new file or a file of earlier answers is appended to; a cut-off last line is repaired.

Every refusal happens before the model loads and leaves the files byte for byte
as they were; only the resume test loads the tiny checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlora4080.batch_infer import prepare_output
from qlora4080.cli import app
from qlora4080.errors import QloraError

PROMPTS = '{"id": "a", "prompt": "Hi"}\n{"id": "b", "prompt": "Hello"}\n{"id": "c", "prompt": "Hey"}\n'
ANSWER_A = '{"id": "a", "answer": "kept from the first run", "stopped": true}\n'


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info  # no traceback
    return result


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text)).strip()


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(PROMPTS, encoding="utf-8")
    return path


def generate(prompts: Path, output: Path | str, checkpoint: str = "no-model-needed"):
    return invoke("generate", checkpoint, "-i", str(prompts), "-o", str(output), "--max-new-tokens", "2")


@pytest.mark.parametrize("spelling", ["same", "relative", "symlink"])
def test_output_that_is_the_input_is_refused(prompts, tmp_path, spelling):
    output = {
        "same": prompts,
        "relative": Path("sub") / ".." / prompts.name,  # the tests run in tmp_path
        "symlink": tmp_path / "answers.jsonl",
    }[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        output.symlink_to(prompts)
    before = prompts.read_bytes()
    result = generate(prompts, output)
    assert result.exit_code == 2
    assert "is the same file as the input" in flat(result.output) and "answers would be appended to your prompts" in flat(result.output)
    assert prompts.read_bytes() == before


def test_output_folder_is_refused(prompts, tmp_path):
    folder = tmp_path / "answers"
    folder.mkdir()
    result = generate(prompts, folder)
    assert result.exit_code == 2
    assert f"{folder} is a folder; answers go into one JSONL file" in flat(result.output)
    assert list(folder.iterdir()) == []


def test_output_under_a_file_is_refused(prompts, tmp_path):
    blocker = tmp_path / "notes"
    blocker.write_text("x\n")
    result = generate(prompts, blocker / "answers.jsonl")
    assert result.exit_code == 2 and f"{blocker} is a file" in flat(result.output)


@pytest.mark.parametrize(("content", "line", "what"), [
    ("meeting notes\nsecond line\n", 1, "is not valid JSON"),
    (PROMPTS, 1, 'is not an answer as generate writes them (a JSON object with "id" and "answer")'),
    ('["a", "list"]\n', 1, "is not an answer as generate writes them"),
    (ANSWER_A + "\n" + '{"note": "mine"}\n', 3, "is not an answer as generate writes them"),
    (ANSWER_A + "a plain last line\n", 2, "is not valid JSON"),  # not the start of an answer: not taken for a cut one
])
def test_foreign_output_is_refused_and_left_alone(prompts, tmp_path, content, line, what):
    output = tmp_path / "existing.txt"
    output.write_text(content, encoding="utf-8")
    result = generate(prompts, output)
    text = flat(result.output)
    assert result.exit_code == 2
    assert f"{output}:{line} line {line} {what}" in text
    assert "move" in text or "fix or delete" in text
    assert output.read_text(encoding="utf-8") == content


def test_broken_line_before_the_end_is_an_error_not_a_guess(prompts, tmp_path):
    output = tmp_path / "answers.jsonl"
    content = ANSWER_A + '{"id": "b", "ans\n' + '{"id": "c", "answer": "x", "stopped": true}\n'
    output.write_text(content, encoding="utf-8")
    result = generate(prompts, output)
    text = flat(result.output)
    assert result.exit_code == 2
    assert f"{output}:2 line 2 is not valid JSON" in text and "fix or delete line 2" in text
    assert output.read_text(encoding="utf-8") == content


@pytest.mark.parametrize("cut", ['{"id": "b", "answer": "half an ans', '{"i', '{"id": "b"', '{"id": "b", "answer": "caf\xc3'])
def test_cut_last_line_is_dropped_and_its_prompt_is_answered_again(prompts, tmp_path, cut):
    output = tmp_path / "answers.jsonl"
    output.write_bytes(ANSWER_A.encode() + cut.encode("latin-1"))  # latin-1: the last case ends mid UTF-8 character
    resume = prepare_output(prompts, output)
    assert resume.done == {"a"}
    assert resume.note and f"{output}:2: the last line was cut off" in resume.note
    assert output.read_text(encoding="utf-8") == ANSWER_A


def test_resume_over_a_cut_line_gives_valid_jsonl(prompts, tmp_path, tiny_checkpoint):
    output = tmp_path / "answers.jsonl"
    output.write_text(ANSWER_A + '{"id": "b", "answer": "cut her', encoding="utf-8")
    result = generate(prompts, output, str(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    assert f"{output}:2: the last line was cut off by an interrupted run; dropped it, its prompt (id 'b') is answered again" in result.output
    assert "1 already answered" in result.output and "2 to go" in result.output
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]  # every line parses
    assert [line["id"] for line in lines] == ["a", "b", "c"]
    assert lines[0]["answer"] == "kept from the first run"


def test_a_new_output_and_a_file_of_answers_are_accepted(prompts, tmp_path):
    assert prepare_output(prompts, tmp_path / "new" / "answers.jsonl").done == set()
    output = tmp_path / "answers.jsonl"
    output.write_text(ANSWER_A + "\n", encoding="utf-8")
    resume = prepare_output(prompts, output)
    assert resume.done == {"a"} and resume.note is None
    assert output.read_text(encoding="utf-8") == ANSWER_A + "\n"
    with pytest.raises(QloraError):
        prepare_output(prompts, prompts)
