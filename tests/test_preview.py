"""data preview: the highlighted runs are exactly the trained tokens."""

from __future__ import annotations

import subprocess

from conftest import CLI, DEMO_RECIPE
from qlora4080.data.preview import preview_rows, render_row

CONVERSATION = {"id": "x", "messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                                        {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green."}]}


def test_trained_runs_are_the_assistant_turns(smol_tokenizer):
    row = preview_rows([CONVERSATION], smol_tokenizer, max_seq_len=512, train_on="assistant")[0]
    assert [text for text, trained in row["segments"] if trained] == ["Blue.<|im_end|>", "Green.<|im_end|>"]
    assert "".join(text for text, _ in row["segments"]) == smol_tokenizer.apply_chat_template(CONVERSATION["messages"], tokenize=False)
    assert row["cut"] == 0 and 0 < row["trained"] < row["tokens"]
    last_only = preview_rows([CONVERSATION], smol_tokenizer, max_seq_len=512, train_on="last_assistant")[0]
    assert [text for text, trained in last_only["segments"] if trained] == ["Green.<|im_end|>"]


def test_cut_is_reported(smol_tokenizer):
    row = preview_rows([CONVERSATION], smol_tokenizer, max_seq_len=20, train_on="assistant")[0]
    assert row["tokens"] == 20 and row["cut"] > 0
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(render_row(row))
    assert "cut by max_seq_len" in console.export_text()


def test_preview_command_on_the_demo_recipe():
    result = subprocess.run([*CLI, "data", "preview", str(DEMO_RECIPE), "-n", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" trained (") >= 2 and '"name":' in result.stdout
    assert "highlighted text carries the loss" in result.stdout
