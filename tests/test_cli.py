"""The command line as a user runs it: the installed entry point in a subprocess, exit codes, stdin, stderr.

Argument handling, errors and printing are tested in-process, faster, in test_cli_runner.py.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, DEMO_RECIPE, write_recipe


def run(*args: str, stdin: str | None = None, timeout: int = 600, columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "COLUMNS": str(columns)})


def test_help_is_instant_and_lists_commands():
    started = time.monotonic()
    result = run("--help")
    assert result.returncode == 0
    for command in ("train", "chat", "recipes"):
        assert command in result.stdout
    assert time.monotonic() - started < 5


def test_methods_lists_every_registered_method_with_its_data():
    from qlora4080.methods.registry import METHODS

    result = run("methods")
    assert result.returncode == 0, result.stderr
    for spec in METHODS.values():  # what the registry holds is what the user is told, nothing written twice
        assert f"{spec.name}: {spec.summary[:30]}" in " ".join(result.stdout.split())
        assert spec.records.unit in result.stdout
    assert "[preference]" in result.stdout and "pairs" in result.stdout


HEAVY = ("torch", "transformers", "trl", "peft", "datasets")

# Every command's --help in one interpreter, then which heavy libraries got imported (on stderr: help is on stdout).
HELP_PROBE = f"""
import sys
HEAVY = {HEAVY!r}
from qlora4080.cli import app
for command in ([], ["train"], ["chat"], ["eval"], ["generate"], ["export"], ["recipes"], ["doctor"], ["methods"],
                ["data", "check"], ["data", "build"], ["data", "preview"]):
    try:
        app([*command, "--help"], prog_name="qlora4080")
    except SystemExit:
        pass
print(sorted(name for name in HEAVY if name in sys.modules), file=sys.stderr)
"""


def test_help_does_not_import_torch():
    result = subprocess.run([CLI[0], "-c", HELP_PROBE], capture_output=True, text=True, check=True)
    assert result.stderr.strip() == "[]"


def test_the_installed_command_is_this_app():
    """`qlora4080` on the PATH runs qlora4080.cli:app (the package metadata says so)."""
    from importlib.metadata import entry_points

    from qlora4080.cli import app

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "qlora4080"]
    assert script.value == "qlora4080.cli:app" and script.load() is app


def test_a_bad_recipe_is_a_panel_on_stderr_and_exit_2(tmp_path):
    (tmp_path / "t.jsonl").write_text("{}\n")
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[model]\nname = "builtin:smollm2-135m-instruct"\nmax_seq_lenn = 64\n[data]\ntrain = "t.jsonl"\n')
    result = run("train", str(recipe))
    assert result.returncode == 2
    assert f"{recipe}:3" in result.stderr and "unknown key 'max_seq_lenn' in [model]" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_recipes_keep_names_whole_in_80_columns():
    """80 columns is what a pipe or CI log gets: names must stay whole there too (the listing itself: test_cli_runner.py)."""
    result = run("recipes", "--dir", str(DEMO_RECIPE.parent), columns=80)
    assert result.returncode == 0, result.stderr
    for name in ("smollm2_135m_demo", "qwen3_4b_emoji", "qwen25_7b_chat", "llama31_8b_chat", "phi35_mini_chat",
                 "gemma2_9b_chat", "mistral_7b_chat"):
        assert f"{name}.toml" in result.stdout
        assert f"{name}.toml: " in result.stdout  # its one-line description below the table
    assert "within a 16 GB card" in result.stdout and "GiB" in result.stdout and "invalid" not in result.stdout
    assert "…" not in result.stdout
    demo_row = next(line for line in result.stdout.splitlines() if line.startswith("│ smollm2_135m_demo.toml"))
    assert "256" in demo_row and "4 x 1" in demo_row and "yes" in demo_row


def test_train_then_scripted_chat_repl_on_tiny_model(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 2})
    trained = run("train", str(recipe), "--run-name", "cli-tiny")
    assert trained.returncode == 0, trained.stderr
    assert "Done." in trained.stdout and "qlora4080 chat checkpoints/cli-tiny" in trained.stdout

    again = run("train", str(recipe), "--run-name", "cli-tiny")
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr

    script = "Hello\n/system Be brief.\nAnother\n/reset\n/bogus\n/exit\nnever sent\n"
    chat = run("chat", "checkpoints/cli-tiny", "--max-new-tokens", "3", stdin=script)
    assert chat.returncode == 0, chat.stderr
    out = chat.stdout
    assert out.count("assistant>") == 2
    assert "(system prompt set; conversation cleared)" in out
    assert "(conversation cleared)" in out
    assert "unknown command /bogus" in out
    assert "never sent" not in out

    ended = run("chat", "checkpoints/cli-tiny", "--max-new-tokens", "2", stdin="Only line, then end of input\n")
    assert ended.returncode == 0, ended.stderr  # Ctrl-D / end of input leaves cleanly
    assert ended.stdout.count("assistant>") == 1

    # The tiny model's context is 512 tokens: a long chat drops its oldest exchanges, a huge line is refused.
    long_lines = "".join(f"Message {i}: " + "a few more words here " * 25 + "\n" for i in range(6))
    long_chat = run("chat", "checkpoints/cli-tiny", "--max-new-tokens", "2", stdin=long_lines + "word " * 600 + "\n")
    assert long_chat.returncode == 0, long_chat.stderr
    assert long_chat.stdout.count("assistant>") == 6
    assert "oldest messages were dropped to fit the model's 512-token context" in long_chat.stdout
    assert "that message alone does not fit the model's 512-token context" in long_chat.stdout


@pytest.mark.slow
def test_demo_recipe_end_to_end_with_real_smollm2():
    """The README's demo, shortened: real SmolLM2 from the package, real TRL, then chat --prompt."""
    trained = run("train", str(DEMO_RECIPE), "--set", "training.max_steps=3", "--set", "training.logging_steps=1", "--run-name", "demo")
    assert trained.returncode == 0, trained.stderr + trained.stdout
    summary = json.loads(Path("runs/demo/summary.json").read_text())
    assert summary["steps"] == 3 and summary["first_loss"] > summary["last_loss"]
    answer = run("chat", "checkpoints/demo", "--compare", "--prompt", "Ines Moreau is a 29-year-old architect from Lyon.")
    assert answer.returncode == 0, answer.stderr
    assert "base model (adapter off):" in answer.stdout and "with the trained adapter:" in answer.stdout
    base = run("chat", "builtin:smollm2-135m-instruct", "--prompt", "What is the capital of France?", "--max-new-tokens", "20")
    assert base.returncode == 0 and "Paris" in base.stdout
    # The README's GGUF export of the demo, checked by llama.cpp on the run's validation prompts.
    exported = run("export", "checkpoints/demo", "--gguf", "q8_0")
    assert exported.returncode == 0, exported.stderr + exported.stdout
    shown = " ".join(exported.stdout.split())
    assert "verified with llama.cpp on 8 test prompts" in shown and "get the same log-probabilities within" in shown
    check = json.loads(Path("checkpoints/demo-gguf/qlora4080_gguf.json").read_text())["verification"]
    assert check["logprob_difference_nats"]["mean"] <= check["tolerance_nats"]["mean"]
    assert 8 <= check["logprob_difference_nats"]["tokens"] <= 8 * 16  # up to 16 answer tokens of each prompt
    assert sorted(p.name for p in Path("checkpoints/demo-gguf").iterdir()) == ["Modelfile", "demo-q8_0.gguf",
                                                                              "qlora4080_gguf.json"]
