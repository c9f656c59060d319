"""Inputs built to break a parser (deep nesting, huge integers, lone surrogates, impossible sizes) end
in a clear error naming the file, line or key: never a traceback, never a hang."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import DEMO_DATA, write_recipe
from typer.testing import CliRunner, Result

from qlora4080 import load_recipe, train
from qlora4080.cli import app
from qlora4080.data.jsonl import read_jsonl
from qlora4080.data.pipeline import build_data, build_key
from qlora4080.errors import QloraError
from qlora4080.runlock import holding
from qlora4080.toml_io import dumps_toml

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


@pytest.mark.parametrize(("fmt", "item", "reason"), [
    ("columns", "=x", "'' is not a field --format columns reads"),
    ("columns", "wizard=q", "'wizard' is not a field"),
    ("columns", "user=", "is empty"),
    ("alpaca", "user=q", "'user' is not a field --format alpaca reads"),  # a field of another format: once ignored
    ("auto", "user=q", "--format auto has none to rename"),
])
def test_data_check_columns_must_name_a_field(tmp_path: Path, fmt: str, item: str, reason: str) -> None:
    done = invoke("data", "check", str(DEMO_DATA / "train.jsonl"), "-f", fmt, "-c", item)
    assert done.exit_code == 2 and reason in flat(done.output), done.output


def test_a_source_weight_of_inf_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path, str(tiny_model_dir), data={"train": None, "validation": None})
    recipe.write_text(recipe.read_text() + f'\n[[data.sources]]\npath = "{DEMO_DATA / "train.jsonl"}"\nweight = inf\n')
    with pytest.raises(QloraError, match="weight"):
        load_recipe(recipe)


def test_a_parquet_source_that_is_really_jsonl_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "data.parquet"
    shutil.copy(DEMO_DATA / "train.jsonl", fake)
    recipe = tmp_path / "mix.toml"
    recipe.write_text(dumps_toml({"model": {"name": "builtin:smollm2-135m-instruct"},
                                  "data": {"sources": [{"path": str(fake), "name": "fake"}],
                                           "build_dir": str(tmp_path / "builds")}}))
    with pytest.raises(QloraError, match="cannot be read as Parquet") as failed:
        build_data(load_recipe(recipe))
    assert "fake" in str(failed.value.where)


def test_a_concurrent_data_build_hint_speaks_of_the_build(tmp_path: Path) -> None:
    recipe_path = tmp_path / "mix.toml"
    recipe_path.write_text(dumps_toml({"model": {"name": "builtin:smollm2-135m-instruct"},
                                       "data": {"sources": [{"path": str(DEMO_DATA / "train.jsonl")}],
                                                "build_dir": str(tmp_path / "builds")}}))
    recipe = load_recipe(recipe_path)
    folder = Path(recipe.data.build_dir) / f"{recipe.stem}-{build_key(recipe)}"
    with holding(folder, "data build"), pytest.raises(QloraError, match="in use") as refused:
        build_data(recipe)
    assert "--run-name" not in (refused.value.hint or "") and "wait for that build" in (refused.value.hint or "")


def test_checkpoint_metadata_with_impossible_values_is_named(tmp_path: Path, tiny_checkpoint: Path) -> None:
    copy = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, copy, ignore=shutil.ignore_patterns("checkpoint-*"))
    meta = json.loads((copy / "qlora4080.json").read_text())
    (copy / "qlora4080.json").write_text(json.dumps({**meta, "max_seq_len": -5}))
    done = invoke("chat", str(copy), "--prompt", "hi")
    assert done.exit_code == 2 and "qlora4080.json" in flat(done.output) and "is damaged" in flat(done.output)


def test_eval_on_a_run_still_training_says_so(tmp_path: Path) -> None:
    run = tmp_path / "checkpoints" / "busy"
    run.mkdir(parents=True)
    (run / ".qlora4080-run").write_text("busy\n")
    with holding(run, "run 'busy'"):
        done = invoke("eval", str(run))
    assert done.exit_code == 2 and "is still training" in flat(done.output)


def test_grad_accum_past_the_dataset_is_warned(tmp_path: Path, tiny_model_dir: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text("".join((DEMO_DATA / "train.jsonl").read_text().splitlines(keepends=True)[:6]))
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), data={"train": str(small), "validation": None},
                                      training={"max_steps": 1, "batch_size": 2, "grad_accum": 4}))
    result = train(recipe, run_name="accum", live=False)
    assert "one optimizer step takes 8 conversations" in (result.run_dir / "train.log").read_text()


@pytest.mark.parametrize("damage", ["adapter_config_rank", "tokenizer_missing"])
def test_a_checkpoint_whose_files_do_not_fit_is_named(tmp_path: Path, tiny_checkpoint: Path, damage: str) -> None:
    copy = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, copy, ignore=shutil.ignore_patterns("checkpoint-*"))
    if damage == "adapter_config_rank":  # the config says r=4, the weights are r=8
        config = json.loads((copy / "adapter_config.json").read_text())
        (copy / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    else:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (copy / name).unlink()
    done = invoke("chat", str(copy), "--prompt", "hi", "--max-new-tokens", "2")
    assert done.exit_code == 2, done.output
    expected = ("does not load" if damage == "adapter_config_rank"
                else "cannot be used: tokenizer_config.json, tokenizer.json are missing")
    assert f"the checkpoint {copy} {expected}" in flat(done.output), done.output


def _chat(checkpoint: Path, *args: bytes | str, stdin: bytes | None = None, close_stdin: bool = False):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "qlora4080", "chat", str(checkpoint), *args], input=stdin,
                          capture_output=True, timeout=300, preexec_fn=(lambda: os.close(0)) if close_stdin else None,
                          env={**os.environ, "COLUMNS": "200"})


def test_a_prompt_past_the_model_s_positions_is_refused_before_generating(tiny_checkpoint: Path) -> None:
    done = _chat(tiny_checkpoint, "--prompt", "word " * 2000, "--max-new-tokens", "4")
    out = flat((done.stdout + done.stderr).decode(errors="replace"))
    assert done.returncode == 2 and "does not fit the model's 512-token context" in out and "Traceback" not in out


def test_chat_input_that_is_not_utf8_or_not_there_is_named(tiny_checkpoint: Path) -> None:
    bad_prompt = _chat(tiny_checkpoint, "--prompt", b"caf\xe9 \xff")
    assert bad_prompt.returncode == 2 and "not valid UTF-8" in bad_prompt.stderr.decode(errors="replace")
    closed = _chat(tiny_checkpoint, close_stdin=True)
    assert closed.returncode == 2 and "standard input is closed" in flat(closed.stderr.decode(errors="replace"))
    piped = _chat(tiny_checkpoint, "--max-new-tokens", "2", stdin=b"\xff\xfe bad\nHello\n")
    out = (piped.stdout + piped.stderr).decode(errors="replace")
    assert piped.returncode == 0 and "not UTF-8 text" in out and "Traceback" not in out, out[-2000:]
