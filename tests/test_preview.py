"""data preview: the highlighted runs are exactly the trained tokens."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

from conftest import CLI, DEMO_RECIPE
from rich.console import Console

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
    result = subprocess.run([*CLI, "data", "preview", str(DEMO_RECIPE), "-n", "2"], check=False, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" trained (") >= 2 and '"name":' in result.stdout
    assert "highlighted text carries the loss" in result.stdout


def test_preview_names_how_turns_were_located_and_warns_once(smol_tokenizer):
    # New: the template's notes (strategy, warnings) head the preview, once; each row names its strategy.
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (Path(__import__("trl").__file__).parent / "chat_templates" / "deepseekv3.jinja").read_text()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]})
    rows = preview_rows([CONVERSATION, {**CONVERSATION, "id": "y"}], tokenizer, max_seq_len=512, train_on="assistant")
    assert [row["strategy"] for row in rows] == ["prefix", "prefix"]
    assert rows[0]["notes"][0].startswith("masks: 4 assistant turns located: 4 by \"prefix\"")
    assert any(line.startswith("warning:") and "generation prompt adds" in line for line in rows[0]["notes"])
    assert "notes" not in rows[1]
    console = Console(record=True, width=200)
    for row in rows:
        console.print(render_row(row))
    shown = console.export_text()
    assert shown.count("generation prompt adds") == 1 and shown.count("turns located by: prefix") == 2
