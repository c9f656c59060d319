"""Source formats -> messages, auto-detection, and `qlora4080 data check`."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import CLI

from qlora4080.data.check import check_file
from qlora4080.data.formats import FormatError, detect_format, to_messages

U, A, S = "user", "assistant", "system"


def roles(messages):
    return [(m["role"], m["content"]) for m in messages]


def test_sharegpt_roles_map_to_chat_roles():
    record = {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                                {"from": "gpt", "value": "Hello"}, {"from": "function", "value": "42"},
                                {"from": "GPT", "value": "It is 42."}]}
    assert roles(to_messages(record, "sharegpt")) == [(S, "Be kind."), (U, "Hi"), (A, "Hello"), ("tool", "42"), (A, "It is 42.")]
    with pytest.raises(FormatError, match="turn 0 has from='robot'"):
        to_messages({"conversations": [{"from": "robot", "value": "x"}]}, "sharegpt")


def test_alpaca_instruction_and_input_become_the_user_turn():
    assert roles(to_messages({"instruction": "Translate.", "input": "bonjour", "output": "hello"}, "alpaca")) == [
        (U, "Translate.\n\nbonjour"), (A, "hello")]
    assert roles(to_messages({"instruction": "Say hi.", "input": "", "output": "hi", "system": "Terse."}, "alpaca")) == [
        (S, "Terse."), (U, "Say hi."), (A, "hi")]
    with pytest.raises(FormatError, match="missing or empty 'output'"):
        to_messages({"instruction": "x", "output": ""}, "alpaca")


def test_prompt_completion_text_and_conversational():
    assert roles(to_messages({"prompt": "2+2?", "completion": "4"}, "prompt_completion")) == [(U, "2+2?"), (A, "4")]
    conversational = {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Yo"}]}
    assert roles(to_messages(conversational, "prompt_completion")) == [(U, "Hi"), (A, "Yo")]


def test_columns_with_a_column_map():
    record = {"q": "Capital of France?", "a": "Paris"}
    assert roles(to_messages(record, "columns", {"user": "q", "assistant": "a"})) == [(U, "Capital of France?"), (A, "Paris")]


def test_cmath_question_golden():
    record = {"id": "cmath-1", "question": "小明有3个苹果，又买了2个，一共几个？", "golden": "5", "grade": 1}
    assert roles(to_messages(record, "cmath")) == [(U, "小明有3个苹果，又买了2个，一共几个？"), (A, "5")]


def test_mawps_fills_number_placeholders():
    record = {"Question": "Tom has N_0 apples and buys N_1 more. How many apples does he have?", "Numbers": "3.0 2.0",
              "Answer": 5.0, "Equation": "N_0 + N_1"}
    assert roles(to_messages(record, "mawps")) == [(U, "Tom has 3 apples and buys 2 more. How many apples does he have?"), (A, "5")]
    assert to_messages({"Question": "N_0 / N_1", "Numbers": [2.5, 2], "Answer": 1.25}, "mawps")[0]["content"] == "2.5 / 2"
    with pytest.raises(FormatError, match="uses N_2 but 'Numbers' has 2"):
        to_messages({"Question": "N_0 N_1 N_2", "Numbers": "1 2", "Answer": 3}, "mawps")


def test_emoji_prefers_chinese_answer_falls_back_to_english_and_cuts_long_answers():
    assert roles(to_messages({"prompt": "开心", "answer_zh": "😊", "answer_en": ":)"}, "emoji")) == [(U, "开心"), (A, "😊")]
    assert roles(to_messages({"prompt": "happy", "answer_zh": "", "answer_en": "😊"}, "emoji")) == [(U, "happy"), (A, "😊")]
    long = to_messages({"prompt": "p", "answer_zh": "好" * 5000}, "emoji")
    assert len(long[1]["content"]) == 3000
    assert len(to_messages({"prompt": "p", "answer_zh": "好" * 5000}, "emoji", max_answer_chars=100)[1]["content"]) == 100
    with pytest.raises(FormatError, match="neither 'answer_zh' nor 'answer_en'"):
        to_messages({"prompt": "p"}, "emoji")


def test_field_names_are_overridable_for_other_mirrors():
    record = {"query": "什么是1+1？", "response": "2"}
    assert roles(to_messages(record, "cmath", {"user": "query", "assistant": "response"})) == [(U, "什么是1+1？"), (A, "2")]


def test_auto_detection():
    assert detect_format([{"messages": [{"role": "user", "content": "x"}]}]) == "messages"
    assert detect_format([{"conversations": [{"from": "human", "value": "x"}]}]) == "sharegpt"
    assert detect_format([{"instruction": "x", "output": "y"}]) == "alpaca"
    assert detect_format([{"prompt": "x", "completion": "y"}]) == "prompt_completion"
    assert detect_format([{"foo": 1}]) is None


def test_check_reports_rejects_with_line_numbers(tmp_path):
    path = tmp_path / "mix.jsonl"
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "a"}, {"instruction": "c", "input": "d", "output": "e"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    result = check_file(path)
    assert (result.format, result.detected, result.read, result.valid) == ("alpaca", True, 4, 2)
    assert [(r.line, r.reason.split(" (")[0]) for r in result.rejected] == [(2, "missing or empty 'output'"), (4, "bad JSON: Expecting property name enclosed in double quotes")]


def test_check_reads_a_json_array_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"prompt": "x", "completion": "y"}] * 3))
    assert check_file(path).valid == 3


def test_data_check_cli_exit_codes(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps({"question": "q", "golden": "g"}) + "\n")
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    ok = subprocess.run([*CLI, "data", "check", str(good), "--format", "cmath"], capture_output=True, text=True)
    assert ok.returncode == 0 and "all records are usable" in ok.stdout
    fail = subprocess.run([*CLI, "data", "check", str(bad), "--format", "cmath"], capture_output=True, text=True)
    assert fail.returncode == 1 and f"{bad}:1: missing or empty 'golden'" in fail.stdout
    unknown = subprocess.run([*CLI, "data", "check", str(tmp_path / "nope.jsonl")], capture_output=True, text=True)
    assert unknown.returncode == 2 and "file not found" in unknown.stderr
