"""Bad input as users met it: a clear message, a non-zero exit, never a Python traceback.

Broken checkpoints (chat, eval, export), an OS refusal surfacing from any command,
and recipe mistakes: typos (also in [[data.sources]]), --set names, an empty
model name, a folder given as the recipe.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
from conftest import CLI
from typer.testing import CliRunner

from qlora4080.cli import app, friendly_errors
from qlora4080.recipe import SECTIONS

MODEL = "builtin:smollm2-135m-instruct"  # a known name; none of these tests gets as far as loading it


def invoke(*args: str):
    """Run the CLI in-process (torch is imported once for the whole file); wide, so messages do not wrap."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    # Anything but a clean exit is an exception that escaped: a traceback for the user.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def flat(text: str) -> str:
    """Panel text as one line: borders gone, wrapped lines joined (in case the console width was fixed elsewhere)."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text)).strip()


# --- broken checkpoints -------------------------------------------------------------------------


def _damaged_copy(tiny_checkpoint: Path, tmp_path: Path, damage: str) -> Path:
    """A copy of the shared checkpoint with its adapter deleted or cut short (the fixture itself stays whole)."""
    folder = tmp_path / "checkpoints" / "broken"
    shutil.copytree(tiny_checkpoint, folder)
    weights = folder / "adapter_model.safetensors"
    if damage == "deleted":
        weights.unlink()
    elif damage in ("chat_template.jinja", "tokenizer_config.json"):
        (folder / damage).unlink()
    else:
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) - 100])  # the header is whole, the last tensor is not
    return folder


EXPECTED = {"deleted": "adapter_model.safetensors is missing", "truncated": "adapter_model.safetensors is damaged or truncated",
            # transformers' own errors blamed [model] name for these
            "chat_template.jinja": "chat_template.jinja is missing", "tokenizer_config.json": "tokenizer_config.json is missing"}


@pytest.mark.parametrize("damage", list(EXPECTED))
@pytest.mark.parametrize("command", ["chat", "eval", "export"])
def test_broken_adapter_is_named_with_what_to_do(tiny_checkpoint, tmp_path, damage, command):
    folder = _damaged_copy(tiny_checkpoint, tmp_path, damage)
    args = {
        "chat": ["chat", str(folder), "--prompt", "Hi", "--max-new-tokens", "2"],
        "eval": ["eval", str(folder), "--limit", "1", "--max-new-tokens", "2", "--out", str(tmp_path / "eval")],
        "export": ["export", str(folder), "--merged", str(tmp_path / "merged")],
    }[command]
    result = invoke(*args)
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert EXPECTED[damage] in text and str(folder) in text
    assert "re-train: qlora4080 train" in text and "--run-name broken --overwrite" in text
    assert "Traceback" not in result.output
    assert not (tmp_path / "merged").exists() and not (tmp_path / "eval").exists()  # nothing written on the way out


def test_the_copy_hint_for_a_broken_adapter_works(tiny_checkpoint, tmp_path):
    """The hint offers the run's last intermediate save: doing what it says gives a checkpoint that answers."""
    folder = _damaged_copy(tiny_checkpoint, tmp_path, "truncated")
    saves = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1]))
    assert saves, "the tiny run keeps a checkpoint-N folder"
    text = flat(invoke("chat", str(folder), "--prompt", "Hi").output)
    assert f"copy adapter_model.safetensors and adapter_config.json from {saves[-1]}" in text
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(saves[-1] / name, folder / name)
    fixed = invoke("chat", str(folder), "--prompt", "Hi", "--max-new-tokens", "2")
    assert fixed.exit_code == 0, fixed.output


def test_damaged_checkpoint_meta_is_named(tiny_checkpoint, tmp_path):
    folder = tmp_path / "checkpoints" / "meta"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "qlora4080.json").write_text('{"base_model": "x", ', encoding="utf-8")  # cut mid-write
    result = invoke("chat", str(folder), "--prompt", "Hi")
    text = flat(result.output)
    assert result.exit_code == 2 and f"qlora4080.json in {folder} is damaged" in text


def test_export_to_a_file_is_refused(tiny_checkpoint, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"keep me")
    result = invoke("export", str(tiny_checkpoint), "--merged", str(target))
    assert result.exit_code == 2 and f"{target} is a file, not a folder" in flat(result.output)
    assert target.read_bytes() == b"keep me"


# --- the OSError line of defence ----------------------------------------------------------------


def test_os_error_from_inside_training_is_a_panel_not_a_traceback(tmp_path):
    """A file where the checkpoints folder should be: the run folder cannot be made (NotADirectoryError)."""
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\nname = "{MODEL}"\n[data]\ntrain = "train.jsonl"\n', encoding="utf-8")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    result = subprocess.run([*CLI, "train", str(recipe), "--run-name", "r1", "--set", f"output.checkpoints_dir={blocker}/sub"], check=False,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"could not read/write {blocker}/sub" in result.stderr and "Not a directory" in result.stderr
    assert "a part of that path is a file, not a folder" in result.stderr
    assert blocker.read_text() == "not a folder\n"


def test_friendly_errors_turns_os_errors_into_exit_2_but_keeps_bugs_as_tracebacks():
    @friendly_errors
    def refused() -> None:
        raise PermissionError(13, "Permission denied", "/data/checkpoints/run")

    @friendly_errors
    def bug() -> None:
        raise ValueError("a programming error")

    with pytest.raises(typer.Exit) as info:
        refused()
    assert info.value.exit_code == 2
    with pytest.raises(ValueError):
        bug()


# --- recipes ------------------------------------------------------------------------------------


def _recipe(tmp_path: Path, text: str) -> Path:
    (tmp_path / "train.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_typo_in_a_required_key_shows_the_typo_first_then_what_is_missing(tmp_path):
    path = _recipe(tmp_path, '[model]\nmax_seq_len = 256\nnmae = "x"\nbackend = "vllm"\n\n[data]\ntrain = "train.jsonl"\n')
    result = invoke("train", str(path), "--dry-run")
    out = result.output
    assert result.exit_code == 2
    assert "3 problems:" in out
    typo = out.index("- unknown key 'nmae' in [model] (line 3); did you mean 'name'?")
    missing = out.index("- missing required 'name' in [model] (line 1)")
    choice = out.index('model.backend = "vllm"')
    assert typo < missing < choice and "(line 4)" in out
    assert "more problem(s)" not in out


def test_typo_inside_data_sources_names_the_table_key_and_line(tmp_path):
    path = _recipe(tmp_path, f'[model]\nname = "{MODEL}"\n\n[data]\n\n[[data.sources]]\npath = "train.jsonl"\n\n'
                             '[[data.sources]]  # the second pool\npth = "train.jsonl"\n')
    result = invoke("train", str(path), "--dry-run")
    text = flat(result.output)
    assert result.exit_code == 2
    assert "unknown [[data.sources]] #2 key 'pth'" in text and "did you mean 'path'?" in text
    assert f"{path}:10" in text and "'sources'" not in text


@pytest.mark.parametrize(("override", "message", "close"), [
    ("foo.bar=1", "--set foo.bar=1: unknown section 'foo'", f"allowed: {', '.join(SECTIONS)}"),
    ("trainig.epochs=2", "--set trainig.epochs=2: unknown section 'trainig'", "did you mean 'training'?"),
    ("model.nmae=x", "--set model.nmae=x: unknown key 'nmae' in [model]", "did you mean 'name'?"),
])
def test_unknown_names_in_set_blame_the_flag_not_the_file(tmp_path, override, message, close):
    path = _recipe(tmp_path, f'[model]\nname = "{MODEL}"\n\n[data]\ntrain = "train.jsonl"\n')
    result = invoke("train", str(path), "--dry-run", "--set", override)
    text = flat(result.output)
    assert result.exit_code == 2
    assert f"--set {message}" in text  # where ("--set") above the message
    assert close in text and str(path) not in text


def test_empty_model_name_is_an_error(tmp_path):
    path = _recipe(tmp_path, f'[model]\nname = "{MODEL}"\n\n[data]\ntrain = "train.jsonl"\n')
    result = invoke("train", str(path), "--dry-run", "--set", "model.name=")
    text = flat(result.output)
    assert result.exit_code == 2 and "--set model.name [model] name is empty" in text
    in_file = invoke("train", str(_recipe(tmp_path, '[model]\nname = "  "\n\n[data]\ntrain = "train.jsonl"\n')), "--dry-run")
    assert in_file.exit_code == 2 and f"{tmp_path / 'r.toml'}:2 [model] name is empty" in flat(in_file.output)


def test_a_folder_given_as_the_recipe(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    empty = invoke("train", str(folder))
    assert empty.exit_code == 2 and f"{folder} is a folder, not a recipe file" in flat(empty.output)
    assert "not found" not in empty.output
    (folder / "b.toml").write_text("")
    (folder / "a.toml").write_text("")
    listed = invoke("train", str(folder))
    assert listed.exit_code == 2 and f"pass one of its recipes: {folder / 'a.toml'}, {folder / 'b.toml'}" in flat(listed.output)


def test_a_binary_file_given_as_the_recipe(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"[model]\n\xff\xfe\x00junk")
    result = invoke("train", str(path), "--dry-run")
    assert result.exit_code == 2 and f"{path}:2 not a TOML recipe: byte 0xff is not UTF-8 text" in flat(result.output)
