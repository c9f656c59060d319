"""Inputs built to break a parser (deep nesting, huge integers, lone surrogates, impossible sizes) end
in a clear error naming the file, line or key: never a traceback, never a hang."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_recipe
from typer.testing import CliRunner, Result

from qlora4080 import load_recipe
from qlora4080.cli import app
from qlora4080.data.jsonl import read_jsonl
from qlora4080.errors import QloraError

DEEP = 100_000  # far past Python's recursion limit


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text)).strip()


def test_a_recipe_nested_thousands_deep_is_a_located_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path, str(tiny_model_dir))
    recipe.write_text(recipe.read_text() + "[extra]\nx = " + "[" * DEEP + "]" * DEEP + "\n")
    with pytest.raises(QloraError, match="nested too deeply") as failed:
        load_recipe(recipe)
    assert failed.value.where == str(recipe)
    with pytest.raises(QloraError):
        load_recipe(write_recipe(tmp_path, str(tiny_model_dir)), ["training.seed=" + "[" * DEEP + "]" * DEEP])
    done = invoke("doctor", str(recipe), "--json")
    assert isinstance(json.loads(done.output), dict)  # JSON, as asked, not a traceback


@pytest.mark.parametrize(("line", "reason"), [
    ("[" * DEEP + "]" * DEEP, "nested too deeply"),
    ('{"messages": [{"role": "user", "content": "hi"}], "n": ' + "9" * 5000 + "}", "4300"),
    ('{"messages": [{"role": "user", "content": "a \\ud800 b"}, {"role": "assistant", "content": "ok"}]}',
     "lone surrogate"),
])
def test_data_lines_that_break_parsers_are_reported_with_their_line(tmp_path: Path, line: str, reason: str) -> None:
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    data = tmp_path / "data.jsonl"
    data.write_text(good + "\n" + line + "\n" + good + "\n", encoding="utf-8")
    rows = list(read_jsonl(data))
    assert [(number, problem is None) for number, _, problem in rows] == [(1, True), (2, False), (3, True)]
    assert reason in str(rows[1][2])
    done = invoke("data", "check", str(data))
    assert f"{data}:2" in flat(done.output) and reason in flat(done.output)


@pytest.mark.parametrize(("override", "key"), [
    ("training.seed=-1", "training.seed"),
    ("training.seed=4294967296", "training.seed"),
    ("data.total=1000000000", "data.total"),
])
def test_impossible_values_are_refused_with_the_recipe(tmp_path: Path, tiny_model_dir: Path, override: str, key: str) -> None:
    with pytest.raises(QloraError) as refused:
        load_recipe(write_recipe(tmp_path, str(tiny_model_dir)), [override])
    assert key.split(".")[1] in str(refused.value) + str(refused.value.where)


@pytest.mark.parametrize("size", ["-1", "nan", "inf", "0"])
def test_target_gb_must_be_a_card_size(tmp_path: Path, tiny_model_dir: Path, size: str) -> None:
    recipe = write_recipe(tmp_path, str(tiny_model_dir))
    done = invoke("train", str(recipe), "--dry-run", "--target-gb", size)
    assert done.exit_code == 2 and "is not a card size" in flat(done.output)
