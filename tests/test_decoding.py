"""What an answer hands out while it grows: stop strings cut it, split characters wait, budgets end it.

Token by token through `Decoding.accept` with SmolLM2's real tokenizer, and
`DecodeBatch` on a tiny random model against `generate` (what chat uses).
"""

from __future__ import annotations

from qlora4080.decoding import DecodeBatch, Decoding, Sampling


def feed(tokenizer, text: str, sampling: Sampling, stop_ids: set[int] | None = None) -> tuple[Decoding, list[str]]:
    pieces: list[str] = []
    decoding = Decoding([], sampling, on_text=pieces.append)
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        decoding.accept(token, tokenizer, stop_ids or set(), room=100)
        if decoding.finished:
            break
    return decoding, pieces


def test_a_stop_string_is_never_handed_out_even_in_part(smol_tokenizer) -> None:
    decoding, pieces = feed(smol_tokenizer, "The answer is 42.\nUser: and more", Sampling(max_tokens=100, stop=("\nUser:",)))
    assert decoding.text == "The answer is 42."
    assert decoding.finish_reason == "stop"
    assert "".join(pieces) == "The answer is 42."
    assert not any("\n" in piece for piece in pieces)  # the stop's first character waited and never went out


def test_a_character_split_across_tokens_waits_until_whole(smol_tokenizer) -> None:
    text = "Café 🙂 ok"
    decoding, pieces = feed(smol_tokenizer, text, Sampling(max_tokens=100))
    assert not any("\ufffd" in piece for piece in pieces)
    assert "".join(pieces) + decoding.text[decoding.emitted:] == text
    assert decoding.finish_reason is None  # no stop, budget not reached


def test_the_budget_and_the_end_of_turn_token_end_an_answer(smol_tokenizer) -> None:
    decoding, pieces = feed(smol_tokenizer, "one two three four five", Sampling(max_tokens=3))
    assert decoding.finish_reason == "length" and decoding.completion_tokens == 3
    assert "".join(pieces) == decoding.text == smol_tokenizer.decode(decoding.generated)
    end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    decoding, pieces = feed(smol_tokenizer, "Hi<|im_end|>", Sampling(max_tokens=10), {end})
    assert decoding.finish_reason == "stop" and decoding.text == "Hi" and "".join(pieces) == "Hi"
    assert decoding.completion_tokens == 2  # the end-of-turn token counts as generated, as OpenAI's usage does


def test_decoded_together_or_alone_greedy_answers_are_generates(tiny_model_dir, smol_tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    from qlora4080.data.render import end_of_turn_ids
    from qlora4080.infer import ChatModel, generate, prompt_ids

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    chat = ChatModel(model, smol_tokenizer, "tiny", False, end_of_turn_ids(smol_tokenizer), 512)
    conversations = [[{"role": "user", "content": "Hi" + " there" * n}] for n in range(5)]
    expected = [generate(chat, messages, max_new_tokens=12) for messages in conversations]
    for size in (1, 5):
        decodings = [Decoding(prompt_ids(chat, messages), Sampling(temperature=0, max_tokens=12)) for messages in conversations]
        for start in range(0, len(decodings), size):
            DecodeBatch(model, smol_tokenizer, chat.stop_ids, chat.context).run(decodings[start:start + size])
        assert [d.text.strip() for d in decodings] == expected
    cancelled = Decoding(prompt_ids(chat, conversations[0]), Sampling(temperature=0, max_tokens=50))
    steps = iter(range(100))
    cancelled.is_cancelled = lambda: next(steps) >= 3
    DecodeBatch(model, smol_tokenizer, chat.stop_ids, chat.context).run([cancelled])
    assert cancelled.finish_reason == "cancelled" and cancelled.completion_tokens == 3


def test_a_vanishing_temperature_is_greedy_and_a_small_one_still_samples() -> None:
    """1e-300 once made the logits inf and the sampler fail (a 500 from serve, a traceback from chat)."""
    import torch

    from qlora4080.decoding import GREEDY_BELOW, choose_token

    logits = torch.tensor([1.0, 30.0, 29.5, -4.0])
    generator = torch.Generator().manual_seed(0)
    for temperature in (1e-300, 5e-324, GREEDY_BELOW / 2, GREEDY_BELOW, 1e-3):
        assert choose_token(logits, Sampling(temperature=temperature), generator) == 1, temperature
    drawn = {choose_token(logits, Sampling(temperature=2.0), generator) for _ in range(200)}
    assert {1, 2} <= drawn  # a real temperature still samples the two close tokens


def test_a_vanishing_top_p_keeps_the_most_likely_token() -> None:
    """top_p 1e-300 is 0.0 in float32: every token was dropped and serve answered 500."""
    import torch

    from qlora4080.decoding import choose_token

    generator = torch.Generator().manual_seed(0)
    for top_p in (1e-300, 5e-324, 1e-8):
        assert choose_token(torch.tensor([1.0, 3.0, 2.9]), Sampling(temperature=1.0, top_p=top_p), generator) == 1
