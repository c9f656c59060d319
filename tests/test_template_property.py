"""Property: on generated conversations, each assistant turn trains exactly its answer + end-of-turn as rendered.

For every template of test_template_families.FAMILIES: a random number of exchanges, an optional system
message (where the template takes one), and contents mixing words, whitespace and text that looks like
template markup (`<|im_end|>`, `<｜Assistant｜>`, `</think>`, `{{ }}`, other families' end-of-turn tokens).
The trained text of each turn must equal what `expected_turns` says the template renders for it, the ids must
be the full render's text, and the one-render path must give the same ids and labels as the exact one.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_template_families import (
    FAMILIES,
    decode,
    expected_turns,
    family_tokenizer,
    trained_turns,
)

from qlora4080.data import fast_masks
from qlora4080.data.render import render_or_reject

MARKUP = ["<|im_end|>", "<|im_start|>assistant\n", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "</think>", "<think>",
          "{{ }}", "{% raw %}", "<|end|>", "<|eot_id|>", "<end_of_turn>", "<|return|>", "<|assistant|>\n"]
WORDS = ["Hello", "42", "yes", "Blue sky", "naïve café", "x = {a: 1}", "😀"]
piece = st.one_of(st.sampled_from(MARKUP), st.sampled_from(WORDS), st.sampled_from([" ", "\n", "  "]),
                  st.text(alphabet="abcxyz <>|{}%\n", min_size=1, max_size=6))
text = st.lists(piece, min_size=1, max_size=6).map("".join).filter(str.strip)  # a blank turn is not data


@st.composite
def conversations(draw: Any, system: bool) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system and draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        messages += [{"role": "user", "content": draw(text)}, {"role": "assistant", "content": draw(text)}]
    if draw(st.integers(min_value=0, max_value=5)) == 0:  # sometimes a question is left unanswered
        messages.append({"role": "user", "content": draw(text)})
    return messages


@pytest.mark.parametrize("name", FAMILIES)
def test_trained_text_is_each_answer_and_its_end_of_turn(smol_tokenizer, name):
    tokenizer = family_tokenizer(smol_tokenizer, name)

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(messages=conversations(FAMILIES[name].system), last_only=st.booleans())
    def check(messages: list[dict[str, Any]], last_only: bool) -> None:
        train_on = "last_assistant" if last_only else "assistant"
        rendered = render_or_reject([messages], tokenizer, train_on, fast=False)[0]
        assert isinstance(rendered, dict), rendered
        assert trained_turns(tokenizer, smol_tokenizer, rendered) == expected_turns(name, messages, train_on)
        assert decode(tokenizer, smol_tokenizer, rendered["input_ids"]) == tokenizer.apply_chat_template(
            messages, tokenize=False)
        copies = fast_masks.MIN_BATCH
        state = fast_masks.FastPathState()
        assert render_or_reject([messages] * copies, tokenizer, train_on, fast_state=state) == [rendered] * copies
        assert "differs" not in state.disabled  # the fast path never disagreed with the exact one

    check()
