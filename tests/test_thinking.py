"""One thinking switch: `[model] thinking` is written into the chat template, so every render agrees.

Qwen3's hybrid template (TRL's stored copy of the original) reads `enable_thinking`; with it false the
generation prompt ends in an empty `<think></think>` block and the model answers at once. A model trained
that way must not start thinking again when a later program (chat, a merged export, llama.cpp, Ollama,
vLLM) renders with the template's default or even asks for thinking.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import write_recipe
from test_clear_errors import flat
from typer.testing import CliRunner

from qlora4080.backends.loading import prepare_tokenizer
from qlora4080.cli import app
from qlora4080.data.templates import render_text
from qlora4080.errors import QloraError
from qlora4080.thinking import recorded_thinking, template_has_switch, with_thinking

QWEN3 = Path(__import__("trl").__file__).parent / "chat_templates" / "qwen3.jinja"
EMPTY_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
QUESTION = [{"role": "user", "content": "Maria is 34 and lives in Lisbon."}]


def qwen3_tokenizer(smol_tokenizer, thinking):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = QWEN3.read_text(encoding="utf-8")
    return prepare_tokenizer(tokenizer, None, thinking)


def generation_prompt(tokenizer, **kwargs) -> str:
    return tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True, **kwargs)


def test_thinking_off_wins_over_any_value_a_caller_passes(smol_tokenizer):
    tokenizer = qwen3_tokenizer(smol_tokenizer, False)
    for asked in ({}, {"enable_thinking": True}, {"enable_thinking": False}):
        assert generation_prompt(tokenizer, **asked).endswith(EMPTY_THINK), asked
    assert recorded_thinking(tokenizer.chat_template) is False


def test_thinking_on_and_auto(smol_tokenizer):
    on = qwen3_tokenizer(smol_tokenizer, True)
    assert not generation_prompt(on, enable_thinking=False).endswith(EMPTY_THINK)
    auto = qwen3_tokenizer(smol_tokenizer, "auto")
    assert auto.chat_template == QWEN3.read_text(encoding="utf-8")  # the authors' template, untouched
    assert generation_prompt(auto, enable_thinking=False).endswith(EMPTY_THINK)
    assert recorded_thinking(auto.chat_template) == "auto"


def test_setting_the_switch_again_replaces_it(smol_tokenizer):
    once = with_thinking(QWEN3.read_text(encoding="utf-8"), False)
    twice = with_thinking(with_thinking(once, True), False)
    assert twice == once
    assert recorded_thinking(with_thinking(once, True)) is True
    assert template_has_switch(once) and not template_has_switch("{{ messages }}")


def test_the_training_render_continues_the_prompt_chat_will_send(smol_tokenizer):
    """With thinking off, the answer trains right after the empty think block the generation prompt ends in."""
    tokenizer = qwen3_tokenizer(smol_tokenizer, False)
    prompt = render_text(tokenizer, QUESTION, None, True)
    history = render_text(tokenizer, [*QUESTION, {"role": "assistant", "content": "{\"age\": 34}"}], None, False)
    assert prompt.endswith(EMPTY_THINK) and history.startswith(prompt)


def test_a_switch_on_a_template_without_one_is_an_error(smol_tokenizer):
    with pytest.raises(QloraError) as caught:
        prepare_tokenizer(copy.deepcopy(smol_tokenizer), None, False)
    assert caught.value.where == "[model] thinking"
    assert "no thinking switch" in caught.value.message


def test_data_preview_shows_the_switch_and_refuses_it_where_the_template_has_none(tiny_model_dir, tmp_path):
    runner = CliRunner()
    template = tmp_path / "qwen3.jinja"
    template.write_text(QWEN3.read_text(encoding="utf-8"), encoding="utf-8")
    recipe = write_recipe(tmp_path, str(tiny_model_dir), model={"chat_template": str(template), "thinking": False})
    shown = runner.invoke(app, ["data", "preview", str(recipe), "-n", "1"])
    assert shown.exit_code == 0, shown.output
    assert "thinking: off" in shown.output
    refused = runner.invoke(app, ["data", "preview", str(recipe), "-n", "1", "--set", "model.chat_template="])
    assert refused.exit_code == 2
    assert "no thinking switch" in flat(refused.output) and 'model.thinking = "auto"' in flat(refused.output)


def test_a_model_trained_with_thinking_off_does_not_think_after_merge(tiny_model_dir, tmp_path):
    """Trained with thinking off: the checkpoint, chat and the merged export all end the prompt in <think></think>."""
    from transformers import AutoTokenizer

    from qlora4080 import load_recipe, train
    from qlora4080.checkpoint import CheckpointMeta
    from qlora4080.export import export_merged
    from qlora4080.infer import load_for_chat

    template = tmp_path / "qwen3.jinja"
    template.write_text(QWEN3.read_text(encoding="utf-8"), encoding="utf-8")
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 2},
                                      model={"chat_template": str(template), "thinking": False}))
    checkpoint = train(recipe, run_name="nothink", live=False).checkpoint_dir

    meta = CheckpointMeta.load(checkpoint)
    assert meta is not None and meta.thinking is False
    assert "thinking: off" in (tmp_path / "runs" / "nothink" / "train.log").read_text(encoding="utf-8")
    chat = load_for_chat(checkpoint)
    assert render_text(chat.tokenizer, QUESTION, None, True).endswith(EMPTY_THINK)

    merged = tmp_path / "merged"
    export_merged(checkpoint, merged, prompt=QUESTION[0]["content"])
    exported = AutoTokenizer.from_pretrained(merged)
    assert generation_prompt(exported, enable_thinking=True).endswith(EMPTY_THINK)


def test_continuing_an_adapter_with_another_switch_is_noted(tiny_model_dir, tmp_path):
    from qlora4080 import load_recipe, train

    template = tmp_path / "qwen3.jinja"
    template.write_text(QWEN3.read_text(encoding="utf-8"), encoding="utf-8")
    first = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 1},
                                     model={"chat_template": str(template), "thinking": False}))
    checkpoint = train(first, run_name="off", live=False).checkpoint_dir
    again = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 1},
                                     model={"chat_template": str(template), "adapter": str(checkpoint)}))
    train(again, run_name="auto", live=False)
    log = (tmp_path / "runs" / "auto" / "train.log").read_text(encoding="utf-8")
    assert 'trained with model.thinking = false, this run renders with "auto"' in " ".join(log.split())


def test_the_modelfile_keeps_thinking_off_as_go_renders_it(smol_tokenizer, go_renderer):
    """Ollama renders the Modelfile's TEMPLATE with Go: with thinking off it ends in the same empty think block."""
    from test_modelfile import CONVERSATIONS, go_render, training_render

    from qlora4080.modelfile import build_modelfile

    tokenizer = qwen3_tokenizer(smol_tokenizer, False)
    modelfile = build_modelfile("model.gguf", tokenizer, CONVERSATIONS)
    rendered = go_render(go_renderer, modelfile.shape.go_template(), CONVERSATIONS)
    for messages, got in zip(CONVERSATIONS, rendered, strict=True):
        assert got == training_render(tokenizer, messages)
        assert got.endswith(EMPTY_THINK)
