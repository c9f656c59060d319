"""A long chat keeps fitting the model's context: the oldest exchanges go first, the system prompt stays."""

from __future__ import annotations

from qlora4080.chat import fit_history
from qlora4080.data.render import render_prompt
from qlora4080.infer import ChatModel


def _exchanges(n: int) -> list[dict]:
    history = []
    for i in range(n):
        history += [{"role": "user", "content": f"Question number {i}: tell me about topic {i}."},
                    {"role": "assistant", "content": f"Answer {i}: " + "some words " * 10}]
    return history


def test_short_history_is_kept_whole(smol_tokenizer):
    chat = ChatModel(None, smol_tokenizer, "", False, context=8192)
    history = _exchanges(3) + [{"role": "user", "content": "And now?"}]
    assert fit_history(chat, "Be brief.", history, 256) == (history, 0)


def test_oldest_exchanges_are_dropped_until_prompt_and_answer_fit(smol_tokenizer):
    history = _exchanges(6) + [{"role": "user", "content": "Last question?"}]
    full = len(render_prompt([{"role": "system", "content": "Be brief."}, *history], smol_tokenizer))
    chat = ChatModel(None, smol_tokenizer, "", False, context=full)  # room for the prompt, not for a 100-token answer
    kept, dropped = fit_history(chat, "Be brief.", history, 100)
    assert dropped > 0 and dropped % 2 == 0 and kept == history[dropped:]
    assert kept[0]["role"] == "user" and kept[-1]["content"] == "Last question?"
    prompt = render_prompt([{"role": "system", "content": "Be brief."}, *kept], smol_tokenizer)
    assert len(prompt) + 100 <= chat.context
    longer = render_prompt([{"role": "system", "content": "Be brief."}, *history[dropped - 2:]], smol_tokenizer)
    assert len(longer) + 100 > chat.context  # no more was dropped than needed
    assert "Be brief." in smol_tokenizer.decode(prompt)


def test_a_message_too_long_for_the_context_alone_gives_nothing(smol_tokenizer):
    chat = ChatModel(None, smol_tokenizer, "", False, context=64)
    assert fit_history(chat, None, [{"role": "user", "content": "word " * 200}], 16) == ([], 1)
