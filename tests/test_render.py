"""Masking: the decoded trained tokens are exactly the assistant contents + end-of-turn, nothing else.

Templates: SmolLM2's own (ChatML), and TRL's bundled copies of the Llama-3,
Gemma and Phi-3 templates, applied to SmolLM2's tokenizer with the family's
special tokens added (the masking logic works on the rendered text, so the
vocabulary does not matter; the special tokens do).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from qlora4080.data.render import (
    IGNORE_INDEX,
    MaskReport,
    TemplateError,
    end_of_turn_ids,
    render_conversation,
    render_or_raise,
)
from qlora4080.errors import QloraError

TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"

SINGLE = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
]
MULTI = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one, please."},
    {"role": "assistant", "content": "Green, like grass."},
]
WITH_SYSTEM = [{"role": "system", "content": "You are terse."}] + MULTI

# family -> (template file or None for the tokenizer's own, extra special tokens, end-of-turn token, supports system)
FAMILIES = {
    "chatml-smollm2": (None, [], "<|im_end|>", True),
    "llama3": ("llama3.jinja", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>", True),
    "gemma": ("gemma.jinja", ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>", False),
    "qwen2.5": ("qwen2_5.jinja", [], "<|im_end|>", True),
    "qwen3-instruct-2507": ("qwen3_instruct_2507.jinja", [], "<|im_end|>", True),
    "phi3": ("phi3.jinja", ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"], "<|end|>", True),
}


def _tokenizer_for(base, family: str):
    template, specials, _, _ = FAMILIES[family]
    if template is None:
        return base
    tokenizer = copy.deepcopy(base)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = (TRL_TEMPLATES / template).read_text(encoding="utf-8")
    return tokenizer


def _trained_text(tokenizer, rendered) -> str:
    ids = [i for i, label in zip(rendered["input_ids"], rendered["labels"]) if label != IGNORE_INDEX]
    return tokenizer.decode(ids)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("conversation", ["single", "multi", "system"])
def test_trained_tokens_are_exactly_assistant_content_and_end_of_turn(smol_tokenizer, family, conversation):
    messages = {"single": SINGLE, "multi": MULTI, "system": WITH_SYSTEM}[conversation]
    _, _, eot, _supports_system = FAMILIES[family]
    tokenizer = _tokenizer_for(smol_tokenizer, family)
    rendered = render_conversation(messages, tokenizer)  # Gemma refuses a system role: it is folded into the user turn
    assert len(rendered["input_ids"]) == len(rendered["labels"])
    expected = "".join(m["content"] + eot for m in messages if m["role"] == "assistant")
    assert _trained_text(tokenizer, rendered) == expected
    # the untrained part is everything else, and labels equal ids where trained
    for token, label in zip(rendered["input_ids"], rendered["labels"]):
        assert label in (IGNORE_INDEX, token)
    # the ids are the template's text, nothing added or lost
    from qlora4080.data.templates import fold_system_prompt

    full = tokenizer.apply_chat_template(fold_system_prompt(list(messages), tokenizer), tokenize=False)
    assert tokenizer.decode(rendered["input_ids"]) == full


@pytest.mark.parametrize("family", FAMILIES)
def test_last_assistant_only(smol_tokenizer, family):
    tokenizer = _tokenizer_for(smol_tokenizer, family)
    eot = FAMILIES[family][2]
    rendered = render_conversation(MULTI, tokenizer, train_on="last_assistant")
    assert _trained_text(tokenizer, rendered) == "Green, like grass." + eot


def test_train_on_all_trains_every_token(smol_tokenizer):
    rendered = render_conversation(MULTI, smol_tokenizer, train_on="all")
    assert rendered["labels"] == rendered["input_ids"]


def test_role_header_and_trailing_newline_are_not_trained(smol_tokenizer):
    rendered = render_conversation(SINGLE, smol_tokenizer)
    pieces = [(smol_tokenizer.decode([i]), label != IGNORE_INDEX) for i, label in zip(rendered["input_ids"], rendered["labels"])]
    trained_pieces = [p for p, t in pieces if t]
    assert trained_pieces[-1] == "<|im_end|>"
    assert "assistant" not in "".join(trained_pieces)
    assert pieces[-1] == ("\n", False)  # the newline after <|im_end|> is template glue


def test_chatml_ids_match_whole_text_tokenization(smol_tokenizer):
    rendered = render_conversation(WITH_SYSTEM, smol_tokenizer)
    full = smol_tokenizer.apply_chat_template(WITH_SYSTEM, tokenize=False)
    assert rendered["input_ids"] == smol_tokenizer(full, add_special_tokens=False)["input_ids"]


def test_no_assistant_turn_is_an_error(smol_tokenizer):
    with pytest.raises(QloraError, match="no assistant turn"):
        render_conversation([{"role": "user", "content": "hi"}], smol_tokenizer)


def test_template_without_generation_prompt_is_refused(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    with pytest.raises(TemplateError, match="ignores add_generation_prompt"):
        render_conversation(SINGLE, tokenizer)


def test_template_that_rewrites_earlier_turns_is_mapped_in_the_full_render_with_a_warning(smol_tokenizer):
    # Changed on purpose: this used to be refused. Every turn can be found in the full render, so it is trained there.
    tokenizer = copy.deepcopy(smol_tokenizer)
    # Writes the number of messages at the top: every prefix renders differently.
    tokenizer.chat_template = (
        "{{ messages|length }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    report = MaskReport()
    rendered = render_or_raise([MULTI], tokenizer, report=report)[0]
    assert _trained_text(tokenizer, rendered) == "Blue.<|im_end|>Green, like grass.<|im_end|>"
    assert tokenizer.decode(rendered["input_ids"]) == tokenizer.apply_chat_template(MULTI, tokenize=False)
    assert report.turns["full render"] >= 1
    assert any("renders a conversation differently once later messages follow" in w for w in report.warnings())


def test_template_whose_generation_prompt_shares_nothing_with_its_turns_is_refused(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}Bot:{% endif %}"
    )
    with pytest.raises(TemplateError, match="shares nothing"):
        render_conversation(SINGLE, tokenizer)


def test_bad_train_on_value(smol_tokenizer):
    with pytest.raises(QloraError, match="train_on"):
        render_conversation(SINGLE, smol_tokenizer, train_on="user")


@pytest.mark.parametrize("family", FAMILIES)
def test_end_of_turn_ids_for_generation(smol_tokenizer, family):
    tokenizer = _tokenizer_for(smol_tokenizer, family)
    eot = FAMILIES[family][2]
    assert tokenizer.convert_tokens_to_ids(eot) in end_of_turn_ids(tokenizer)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "content": "SECRET-TOOL-RESULT 3C"},
    {"role": "assistant", "content": "It is 3 degrees in Oslo."},
]


@pytest.mark.parametrize("family", ["qwen2.5", "qwen3-instruct-2507"])
def test_tool_calls_are_trained_and_tool_results_are_not(smol_tokenizer, family):
    tokenizer = _tokenizer_for(smol_tokenizer, family)
    rendered = render_conversation(TOOL_CONVERSATION, tokenizer, tools=TOOLS)
    trained = _trained_text(tokenizer, rendered)
    assert "get_weather" in trained and '"Oslo"' in trained          # the call the model must learn to make
    assert trained.endswith("It is 3 degrees in Oslo.<|im_end|>")
    assert trained.count("<|im_end|>") == 2                          # both assistant turns end and are learned
    assert "SECRET-TOOL-RESULT" not in trained and "Weather in Oslo?" not in trained
    assert "get_weather" in tokenizer.decode(rendered["input_ids"])   # the tools schema is in the prompt


def test_reasoning_content_is_trained_on_the_last_turn_of_a_thinking_template(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (TRL_TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8")
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."}]
    trained = _trained_text(tokenizer, render_conversation(messages, tokenizer))
    assert "Two plus two is four." in trained and trained.endswith("4<|im_end|>")


def test_template_that_drops_earlier_reasoning_trains_each_turn_as_the_full_render_shows_it(smol_tokenizer):
    # Changed on purpose: this used to be refused for train_on = "assistant". Qwen3 renders reasoning only in the
    # last turn, so the first turn trains its answer and the last one its reasoning and answer.
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (TRL_TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8")
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "reasoning_content": "Two plus two."},
                {"role": "user", "content": "3+3?"},
                {"role": "assistant", "content": "6", "reasoning_content": "Three plus three."}]
    report = MaskReport()
    trained = _trained_text(tokenizer, render_or_raise([messages], tokenizer, report=report)[0])
    assert trained == "4<|im_end|><think>\nThree plus three.\n</think>\n\n6<|im_end|>"
    assert (report.reasoning_turns, report.reasoning_dropped) == (2, 1)
    assert any("keeps reasoning only in the last assistant turn" in w for w in report.warnings())
    trained = _trained_text(tokenizer, render_conversation(messages, tokenizer, train_on="last_assistant"))
    assert "Three plus three." in trained and trained.endswith("6<|im_end|>") and "Two plus two." not in trained


def test_a_template_that_refuses_system_gets_it_folded_into_the_first_user_turn_for_training_and_chat(smol_tokenizer):
    from qlora4080.data.render import MaskReport, render_or_reject, render_prompt

    tokenizer = _tokenizer_for(smol_tokenizer, "gemma")
    system, user = WITH_SYSTEM[0]["content"], WITH_SYSTEM[1]["content"]
    report = MaskReport()
    rendered = render_or_reject([WITH_SYSTEM, SINGLE], tokenizer, report=report)
    assert all(isinstance(r, dict) for r in rendered), rendered
    text = tokenizer.decode(rendered[0]["input_ids"])
    assert f"<start_of_turn>user\n{system}\n\n{user}" in text
    assert report.folded_system == 1 and any("refuses a system role" in w for w in report.warnings())
    prompt = tokenizer.decode(render_prompt(WITH_SYSTEM[:2], tokenizer))  # what chat and eval send
    assert f"<start_of_turn>user\n{system}\n\n{user}" in prompt
    assert prompt.endswith("<start_of_turn>model\n")
