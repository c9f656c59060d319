"""The command line in-process (typer's CliRunner): arguments, errors and what is printed.

Fast: no subprocess per call, and nothing here loads a model except the
run-folder tests, which use the tiny checkpoint fixture. Whatever would load
a model where it must not is replaced by a stand-in that fails the test.
tests/test_cli.py keeps the end-to-end runs through the installed entry point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import DEMO_RECIPE
from typer.testing import CliRunner, Result

from qlora4080 import __version__
from qlora4080.cli import app
from qlora4080.cli.outputs import run_folder
from qlora4080.console import console, err_console

MODEL = "builtin:smollm2-135m-instruct"
GOOD = f'[model]\nname = "{MODEL}"\nmax_seq_len = 64\n\n[data]\ntrain = "t.jsonl"\n'
CONVERSATION = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """200 columns, so a message is never wrapped mid-phrase.

    Rich reads COLUMNS once, when a console is made, if it is set then; so the
    width is set on the shared consoles themselves, as Console(width=...) would.
    """
    for shared in (console, err_console):
        monkeypatch.setattr(shared, "_width", 200)


def invoke(*args: str, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), input=stdin)
    # Anything but a clean exit is an exception that escaped: a traceback for the user.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result


def flat(text: str) -> str:
    """Panel text as one line: borders gone, wrapped lines joined."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text)).strip()


def recipe(folder: Path, text: str = GOOD, name: str = "r.toml") -> Path:
    (folder / "t.jsonl").write_text(CONVERSATION, encoding="utf-8")
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model (seconds to minutes) is what these checks must come before: make it fail the test."""

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the command refused its arguments")

    for target in ("qlora4080.infer.load_for_chat", "qlora4080.export.export_merged", "qlora4080.gguf_export.export_gguf"):
        monkeypatch.setattr(target, loaded)


# --- help, version, flags -----------------------------------------------------------------------


COMMANDS = {
    (): ["train", "chat", "eval", "generate", "export", "recipes", "doctor", "data"],
    ("train",): ["--set", "--run-name", "--overwrite", "--resume", "--resume-from", "--dry-run", "--target-gb"],
    ("chat",): ["--prompt", "--tests", "--save", "--system", "--max-new-tokens", "--temperature", "--compare"],
    ("eval",): ["--data", "--limit", "--baseline", "--max-new-tokens", "--batch-size", "--out"],
    ("generate",): ["--input", "--output", "--max-new-tokens", "--batch-size"],
    ("export",): ["--merged", "--gguf", "--gguf-dir", "--overwrite", "--prompt", "--no-verify"],
    ("recipes",): ["--dir"],
    ("doctor",): ["--set", "--json"],
    ("data",): ["check", "build", "preview"],
    ("data", "check"): ["--format", "--column", "--show"],
    ("data", "build"): ["--set", "--force", "--tokens"],
    ("data", "preview"): ["-n", "--set"],
}


@pytest.mark.parametrize("command", list(COMMANDS), ids=lambda c: " ".join(c) or "qlora4080")
def test_every_command_has_help_naming_its_options(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert f"Usage: qlora4080 {' '.join(command)}".rstrip() in flat(result.output)
    for option in COMMANDS[command]:
        assert option in result.output, option


def test_commands_are_listed_in_the_order_of_the_workflow():
    out = invoke("--help").output
    listed = [name for name in re.findall(r"^│ (\w+) ", out, flags=re.MULTILINE) if name in COMMANDS[()]]
    assert listed == COMMANDS[()]


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"qlora4080 {__version__}"


def test_no_arguments_shows_help():
    result = invoke()
    assert "Usage:" in result.output and "train" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["train", "r.toml", "--bogus"], "No such option: --bogus"),
    (["train"], "Missing argument 'recipe'"),
    (["chat", "x", "--max-new-tokens", "0"], "Invalid value for '--max-new-tokens'"),
    (["chat", "x", "--temperature", "warm"], "Invalid value for '--temperature'"),
    (["generate", "x", "-i", "in.jsonl"], "Missing option '--output'"),
    (["data", "check"], "Missing argument 'file'"),
    (["nonsense"], "No such command 'nonsense'"),
])
def test_bad_flags_are_usage_errors(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in flat(result.output)


@pytest.mark.parametrize(("args", "where", "message"), [
    (["chat", MODEL, "--compare"], "--compare", "--compare works with --prompt"),
    (["chat", MODEL, "--save", "a.jsonl"], "--save", "--save works with --tests"),
    (["export", "checkpoints/x"], None, "nothing to export"),
    (["doctor", "--set", "training.epochs=2"], "--set", "--set needs a recipe to change"),
])
def test_flags_that_need_another_flag(args, where, message, no_model_loads):
    result = invoke(*args)
    assert result.exit_code == 2
    assert (f"{where} {message}" if where else message) in flat(result.output)


# --- missing and wrong files --------------------------------------------------------------------


def test_missing_recipe_file():
    result = invoke("train", "nope.toml")
    assert result.exit_code == 2 and "recipe file not found: nope.toml" in flat(result.output)


def test_missing_prompt_file_names_its_flag(tmp_path, no_model_loads):
    result = invoke("generate", MODEL, "-i", "absent.jsonl", "-o", "out.jsonl")
    assert result.exit_code == 2 and "--input input file not found: absent.jsonl" in flat(result.output)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.txt"])
def test_missing_tests_file_names_tests_not_input(name, no_model_loads):
    result = invoke("chat", MODEL, "--tests", name)
    text = flat(result.output)
    assert result.exit_code == 2
    assert f"--tests tests file not found: {name}" in text and "--input" not in text


def test_chat_on_a_folder_that_is_not_a_checkpoint(tmp_path):
    result = invoke("chat", str(tmp_path), "--prompt", "hi")
    assert result.exit_code == 2 and f"{tmp_path} is not a qlora4080 checkpoint" in flat(result.output)


def test_a_folder_given_as_the_tests_file(tmp_path, no_model_loads):
    (tmp_path / "prompts").mkdir()
    result = invoke("chat", MODEL, "--tests", "prompts")
    assert result.exit_code == 2 and "--tests prompts is a folder, not a tests file" in flat(result.output)


def test_data_check_reports_each_bad_record_with_its_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(CONVERSATION + "{broken\n" + '{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    result = invoke("data", "check", str(data))
    out = result.output
    assert result.exit_code == 1
    assert "format: messages (detected)" in out and "rejected, by reason" in out
    assert f"{data}:2: bad JSON" in out
    assert f"{data}:3: no assistant turn, so nothing would be trained" in out
    assert "all records are usable" not in out


def test_data_check_on_a_good_file(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(CONVERSATION * 3, encoding="utf-8")
    result = invoke("data", "check", str(data))
    assert result.exit_code == 0 and "all records are usable" in result.output


def test_data_check_bad_column_flag(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(CONVERSATION, encoding="utf-8")
    result = invoke("data", "check", str(data), "-c", "user")
    assert result.exit_code == 2 and "--column --column 'user' must be field=name" in flat(result.output)


# --- recipes: file, line, key -------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["max_seq_lenn = 64", '"max_seq_lenn" = 64', "'max_seq_lenn' = 64"])
def test_bad_recipe_key_names_file_line_and_key(tmp_path, spelling):
    path = recipe(tmp_path, GOOD.replace("max_seq_len = 64", spelling))
    result = invoke("train", str(path), "--dry-run")
    text = flat(result.output)
    assert result.exit_code == 2
    assert f"{path}:3 unknown key 'max_seq_lenn' in [model]" in text
    assert "did you mean 'max_seq_len'?" in text


def test_a_dotted_key_outside_its_table_is_found_on_its_line(tmp_path):
    path = recipe(tmp_path, f'model.name = "{MODEL}"\nmodel.max_seq_lenn = 64\n\n[data]\ntrain = "t.jsonl"\n')
    result = invoke("train", str(path), "--dry-run")
    assert result.exit_code == 2 and f"{path}:2 unknown key 'max_seq_lenn' in [model]" in flat(result.output)


def test_bad_value_from_set_blames_the_flag(tmp_path):
    result = invoke("train", str(recipe(tmp_path)), "--dry-run", "--set", "training.batch_size=zero")
    text = flat(result.output)
    assert result.exit_code == 2
    assert '--set training.batch_size training.batch_size = "zero"' in text and str(tmp_path / "r.toml") not in text


def test_malformed_set_item(tmp_path):
    result = invoke("train", str(recipe(tmp_path)), "--dry-run", "--set", "training.max_steps")
    assert result.exit_code == 2 and "--set override 'training.max_steps' has no '='" in flat(result.output)


# --- train --dry-run ----------------------------------------------------------------------------


def test_dry_run_of_the_demo_recipe_with_overrides(tmp_path):
    result = invoke("train", str(DEMO_RECIPE), "--dry-run", "--set", "training.max_steps=3", "-s", "lora.r=4")
    out = result.output
    assert result.exit_code == 0, out
    assert f"recipe OK: {DEMO_RECIPE}" in out
    assert re.search(r"^max_steps = 3$", out, flags=re.MULTILINE) and re.search(r"^r = 4$", out, flags=re.MULTILINE)
    assert "Hardware: CPU only" in out and "backend: hf" in out
    assert re.search(r"would write the adapter to checkpoints/smollm2_135m_demo-\d{8}-\d{6} and logs to runs/", out)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "runs").exists()


def test_dry_run_shows_the_estimate_and_the_overrides_that_would_fit():
    qwen = DEMO_RECIPE.parent / "qwen3_4b_emoji.toml"
    fits = invoke("train", str(qwen), "--dry-run")
    assert fits.exit_code == 0, fits.output
    assert "Estimated peak GPU memory vs a 16 GB card" in fits.output
    for part in ("linear layers (4-bit NF4)", "embeddings, head and norms (fp32", "LoRA parameters", "optimizer states (adamw_8bit)",
                 "activations (checkpointed)", "logits and loss"):
        assert part in fits.output
    assert "Verdict: fits" in fits.output

    small = invoke("train", str(qwen), "--dry-run", "--target-gb", "6", "--set", "model.max_seq_len=4096")
    assert small.exit_code == 0, small.output
    assert "Verdict: does not fit" in small.output and "--set model.max_seq_len=" in small.output


def test_dry_run_refuses_a_run_name_that_is_not_a_plain_name(tmp_path):
    result = invoke("train", str(recipe(tmp_path)), "--dry-run", "--run-name", "../outside")
    assert result.exit_code == 2 and "--run-name run name '../outside' must be a plain name" in flat(result.output)


# --- recipes and doctor -------------------------------------------------------------------------


def test_recipes_lists_each_recipe_its_estimate_and_description(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(DEMO_RECIPE, folder / "demo.toml")
    (folder / "data").symlink_to(DEMO_RECIPE.parent / "data")  # the demo's data paths are relative to its folder
    (folder / "broken.toml").write_text("# A recipe with a typo\n[model]\nnmae = 'x'\n", encoding="utf-8")
    result = invoke("recipes", "--dir", str(folder))
    out = result.output
    assert result.exit_code == 0, out
    assert "Recipes in mine:" in flat(out)  # as typed from the working folder
    demo_row = next(line for line in out.splitlines() if line.startswith("│ demo.toml"))
    assert MODEL in demo_row and "256" in demo_row and "4 x 1" in demo_row and "yes" in demo_row
    assert "demo.toml: Demo: teach SmolLM2-135M" in out
    broken_row = next(line for line in out.splitlines() if line.startswith("│ broken.toml"))
    assert "invalid" in broken_row
    assert "broken.toml: 3 problems:" in out
    assert "- unknown key 'nmae' in [model] (line 3); did you mean 'name'?" in out  # "[model]" is text, not markup
    assert "- missing required [data]" in out


def test_recipes_in_an_empty_folder(tmp_path):
    result = invoke("recipes", "--dir", str(tmp_path))
    assert result.exit_code == 2 and "no recipes found" in flat(result.output)


def test_doctor_json_is_one_object_of_rows():
    result = invoke("doctor", "--json")
    report = json.loads(result.stdout)  # nothing but the object on stdout
    assert result.exit_code == (0 if report["ok"] else 1)
    assert set(report) == {"ok", "backend", "recipe", "verdict", "hint", "rows"}
    assert set(report["backend"]) == {"name", "reason", "device"}
    assert report["recipe"] is None and report["verdict"]
    assert report["rows"] and all(set(row) == {"group", "name", "status", "value", "hint"} for row in report["rows"])
    assert {row["status"] for row in report["rows"]} <= {"ok", "info", "warn", "fail"}


def test_doctor_json_with_a_recipe_names_it(tmp_path):
    result = invoke("doctor", str(recipe(tmp_path)), "--json", "--set", "model.backend=hf")
    report = json.loads(result.stdout)
    assert report["recipe"] and "r" in report["recipe"]


# --- output paths are checked before any model loads --------------------------------------------


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A file where a folder is needed."""
    path = tmp_path / "a-file"
    path.write_text("keep me\n")
    return path


@pytest.fixture
def conversations(tmp_path: Path) -> Path:
    path = tmp_path / "valid.jsonl"
    path.write_text(CONVERSATION, encoding="utf-8")
    return path


@pytest.mark.parametrize(("where", "message"), [
    (lambda b: b, "{b} is a file, not a folder"),
    (lambda b: b / "sub", "{b}/sub cannot be made: {b} is a file, not a folder"),
])
def test_unusable_export_folder_fails_before_loading(tmp_path, blocker, no_model_loads, where, message):
    result = invoke("export", str(tmp_path / "checkpoints" / "run"), "--merged", str(where(blocker)))
    assert result.exit_code == 2
    assert "--merged " + message.format(b=blocker) in flat(result.output)
    assert blocker.read_text() == "keep me\n"


def test_unusable_gguf_folder_fails_before_loading(tmp_path, blocker, no_model_loads):
    result = invoke("export", str(tmp_path / "run"), "--gguf", "q4_k_m", "--gguf-dir", str(blocker))
    assert result.exit_code == 2 and f"--gguf-dir {blocker} is a file, not a folder" in flat(result.output)


@pytest.mark.parametrize(("where", "message"), [
    (lambda b: b, "{b} is a file, not a folder"),
    (lambda b: b / "eval", "{b}/eval cannot be made: {b} is a file, not a folder"),
])
def test_unusable_eval_folder_fails_before_loading(blocker, conversations, no_model_loads, where, message):
    result = invoke("eval", "some-model-folder", "--data", str(conversations), "--out", str(where(blocker)))
    assert result.exit_code == 2
    assert "--out " + message.format(b=blocker) in flat(result.output)


def test_unwritable_eval_folder_fails_before_loading(tmp_path, conversations, no_model_loads, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # as root, every path is writable: refuse this one the way a read-only folder would
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and not (Path(path) == locked and mode & os.W_OK))
    result = invoke("eval", "some-model-folder", "--data", str(conversations), "--out", str(locked / "eval"))
    text = flat(result.output)
    assert result.exit_code == 2
    assert f"--out cannot write in {locked} (to make {locked}/eval): no write permission" in text
    assert "check the permissions" in text


def test_eval_default_folder_under_a_file_fails_before_loading(tmp_path, conversations, no_model_loads):
    (tmp_path / "runs").write_text("not a folder\n")
    result = invoke("eval", "my-model", "--data", str(conversations))
    assert result.exit_code == 2 and "runs/my-model cannot be made: runs is a file, not a folder" in flat(result.output)


@pytest.mark.parametrize(("save", "message"), [
    ("answers", "answers is a folder, not a file"),
    ("a-file/answers.jsonl", "a-file/answers.jsonl cannot be made"),
])
def test_unusable_chat_save_path_fails_before_loading(tmp_path, blocker, no_model_loads, save, message):
    (tmp_path / "answers").mkdir()
    (tmp_path / "prompts.txt").write_text("Hello\n")
    result = invoke("chat", MODEL, "--tests", "prompts.txt", "--save", save)
    assert result.exit_code == 2 and f"--save {message}" in flat(result.output)


def test_unwritable_chat_save_file_fails_before_loading(tmp_path, no_model_loads, monkeypatch):
    (tmp_path / "prompts.txt").write_text("Hello\n")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("")
    real_access = os.access  # reading stays allowed: only writing is refused
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and not (Path(path) == answers and mode & os.W_OK))
    result = invoke("chat", MODEL, "--tests", "prompts.txt", "--save", str(answers))
    assert result.exit_code == 2 and f"--save {answers} cannot be written" in flat(result.output)


# --- the run folder follows the recipe's output.runs_dir ---------------------------------------


def _checkpoint_logging_to(tiny_checkpoint: Path, tmp_path: Path, runs_dir: Path | None) -> Path:
    """A copy of the tiny checkpoint whose recipe snapshot sends logs to `runs_dir` (None: no snapshot)."""
    folder = tmp_path / "checkpoints" / "mine"
    shutil.copytree(tiny_checkpoint, folder, ignore=shutil.ignore_patterns("checkpoint-*"))
    snapshot = folder / "recipe.toml"
    if runs_dir is None:
        snapshot.unlink()
    else:
        text = snapshot.read_text(encoding="utf-8")
        snapshot.write_text(re.sub(r'runs_dir = ".*"', f'runs_dir = "{runs_dir}"', text), encoding="utf-8")
    return folder


def test_chat_tests_and_eval_write_into_the_recipes_runs_dir(tiny_checkpoint, tmp_path):
    folder = _checkpoint_logging_to(tiny_checkpoint, tmp_path, tmp_path / "logs")
    (tmp_path / "prompts.txt").write_text("Hello\n")
    chat = invoke("chat", str(folder), "--tests", "prompts.txt", "--max-new-tokens", "2")
    assert chat.exit_code == 0, chat.output
    answers = tmp_path / "logs" / "mine" / "chat_tests.jsonl"
    assert f"answers saved to {answers}" in flat(chat.output)
    assert json.loads(answers.read_text(encoding="utf-8"))["id"].startswith("line-1")

    evaluated = invoke("eval", str(folder), "--limit", "1", "--max-new-tokens", "2", "--batch-size", "1")
    assert evaluated.exit_code == 0, evaluated.output
    assert (tmp_path / "logs" / "mine" / "eval.json").is_file() and (tmp_path / "logs" / "mine" / "eval.md").is_file()
    assert not (tmp_path / "runs").exists()


def test_eval_replaces_only_its_own_reports(tiny_checkpoint, tmp_path):
    """A second eval replaces the first one's report; a user's eval.md, or a link at eval.json, is left alone."""
    args = ["eval", str(tiny_checkpoint), "--limit", "1", "--max-new-tokens", "2", "--batch-size", "1", "--out"]
    ours = tmp_path / "reports"
    for _ in range(2):
        evaluated = invoke(*args, str(ours))
        assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((ours / "eval.json").read_text(encoding="utf-8"))["records"]

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "eval.md").write_text("my own evaluation notes\n", encoding="utf-8")
    refused = invoke(*args, str(notes))
    assert refused.exit_code == 2 and "is not an eval report written by qlora4080" in flat(refused.output), refused.output
    assert (notes / "eval.md").read_text(encoding="utf-8") == "my own evaluation notes\n"
    assert not (notes / "eval.json").exists()

    linked = tmp_path / "linked"
    linked.mkdir()
    elsewhere = tmp_path / "precious.json"
    elsewhere.write_text("{}", encoding="utf-8")
    (linked / "eval.json").symlink_to(elsewhere)
    refused = invoke(*args, str(linked))
    assert refused.exit_code == 2 and elsewhere.read_text(encoding="utf-8") == "{}"


def test_run_folder_falls_back_to_runs(tiny_checkpoint, tmp_path):
    assert run_folder(str(_checkpoint_logging_to(tiny_checkpoint, tmp_path, None))) == Path("runs") / "mine"
    assert run_folder(str(tmp_path / "plain-model")) == Path("runs") / "plain-model"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "recipe.toml").write_text("[output\nruns_dir = ", encoding="utf-8")
    assert run_folder(str(tmp_path / "broken")) == Path("runs") / "broken"


def test_run_folder_reads_a_relative_runs_dir(tmp_path):
    """Relative to the working folder, as training wrote it."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "recipe.toml").write_text(GOOD + '\n[output]\nruns_dir = "my-logs"\n', encoding="utf-8")
    assert run_folder(str(tmp_path / "ckpt")) == Path("my-logs") / "ckpt"
