"""Prove a GGUF with llama.cpp itself: it renders, tokenizes, stops and answers as the model it came from.

On each of the run's test prompts, llama.cpp (llama-cpp-python) must:
- render the chat template embedded in the GGUF (as llama-cpp-python renders it for a chat request) to the
  training render, byte for byte, generation prompt included, and tokenize that text to the training ids;
- treat every end-of-turn token the adapter was trained to emit as end-of-generation (EOG), with the same text;
- answer greedily like the merged model in transformers: for f16/bf16/q8_0 the same first SAME_TOKENS tokens
  on every prompt; for k-quants the share of prompts that agree is measured and recorded, and only a share
  below K_QUANT_FLOOR fails (see docs/benchmarks.md for the measurement behind it).
Any other difference is a QloraError that says which prompt, which position and both sides.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import QloraError

if TYPE_CHECKING:
    from .data.vocabulary import Message

SAME_TOKENS = 16
"""Greedy tokens compared per prompt."""
K_QUANT_FLOOR = 0.25
"""The least share of prompts on which a k-quant must give the merged model's first SAME_TOKENS tokens."""
EXACT_QUANTS = ("f16", "bf16", "q8_0")


class GgufMismatch(QloraError):
    """The GGUF does not behave like the model it was converted from."""


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def verify_gguf(gguf: Path, merged: Path, prompts: Sequence[Sequence[Message]], quant: str) -> dict[str, Any]:
    """Every check above on `prompts`; the report recorded in the export's JSON. Raises GgufMismatch."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from .data.render import end_of_turn_ids, render_prompt
    from .data.templates import fold_system_prompt, render_text
    from .infer import generate_answers, load_for_chat

    chat = load_for_chat(merged)  # the merged folder in plain transformers: what the GGUF must reproduce
    tokenizer = chat.tokenizer
    llm = llama_cpp.Llama(str(gguf), n_ctx=max(512, chat.context and min(chat.context, 4096)), verbose=False,
                          n_threads=os.cpu_count() or 1, seed=0)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise GgufMismatch(f"{gguf.name} has no chat template (tokenizer.chat_template)")

        def text_of(token: int) -> str:
            return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", errors="replace") if token >= 0 else ""

        formatter = Jinja2ChatFormatter(template=template, eos_token=text_of(llm.token_eos()),
                                        bos_token=text_of(llm.token_bos()))
        end_ids = end_of_turn_ids(tokenizer)
        for token in end_ids:
            trained = str(tokenizer.convert_ids_to_tokens(token))
            if text_of(token) != trained:
                raise GgufMismatch(f"token {token} is {trained!r} in training but {text_of(token)!r} in {gguf.name}")
            if not llama_cpp.llama_vocab_is_eog(vocab, token):
                raise GgufMismatch(f"the end-of-turn token {trained!r} ({token}) the adapter was trained to emit is not "
                                   f"an end-of-generation token in {gguf.name}: llama.cpp would not stop on it")
        expected = generate_answers(chat, prompts, max_new_tokens=SAME_TOKENS, batch_size=1)  # no padding: exact greedy
        agreeing = 0
        first_tokens = 0
        for index, messages in enumerate(prompts, start=1):
            folded = list(fold_system_prompt(list(messages), tokenizer))
            training_text = render_text(tokenizer, folded, None, add_generation_prompt=True)
            gguf_text = formatter(messages=folded).prompt  # type: ignore[arg-type]  # OpenAI-shaped dicts
            if gguf_text != training_text:
                at = _first_difference(gguf_text, training_text)
                raise GgufMismatch(f"prompt {index}: the GGUF's chat template renders differently from character {at}: "
                                   f"training {training_text[at:at + 40]!r}, GGUF {gguf_text[at:at + 40]!r}")
            training_ids = render_prompt(messages, tokenizer)
            gguf_ids = llm.tokenize(gguf_text.encode("utf-8"), add_bos=False, special=True)
            if gguf_ids != training_ids:
                at = next((i for i, (x, y) in enumerate(zip(gguf_ids, training_ids)) if x != y), min(len(gguf_ids), len(training_ids)))
                raise GgufMismatch(f"prompt {index}: llama.cpp tokenizes the prompt differently from token {at}: training "
                                   f"{training_ids[at:at + 5]}, GGUF {gguf_ids[at:at + 5]}")
            answer = _greedy(llm, vocab, gguf_ids, SAME_TOKENS)
            want = list(expected[index - 1].token_ids)[:SAME_TOKENS]
            if answer == want:
                agreeing += 1
            elif quant in EXACT_QUANTS:
                at = next((i for i, (x, y) in enumerate(zip(answer, want)) if x != y), min(len(answer), len(want)))
                raise GgufMismatch(
                    f"prompt {index}: llama.cpp's greedy answer leaves the merged model's at token {at + 1} of "
                    f"{SAME_TOKENS}: merged {tokenizer.decode(want)!r}, GGUF {tokenizer.decode(answer)!r}")
            first_tokens += answer[:1] == want[:1]
        rate = agreeing / len(prompts)
        if quant not in EXACT_QUANTS and rate < K_QUANT_FLOOR:
            raise GgufMismatch(f"{quant}: the GGUF gives the merged model's first {SAME_TOKENS} greedy tokens on only "
                               f"{agreeing} of {len(prompts)} prompts (the floor is {K_QUANT_FLOOR:.0%})",
                               hint="use q8_0 or q5_k_m for a model this small")
        return {
            "prompts": len(prompts),
            "template_renders_identically": True,
            "tokenizes_identically": True,
            "end_of_turn": [str(tokenizer.convert_ids_to_tokens(t)) for t in end_ids],
            "gguf_eos": text_of(llm.token_eos()),
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "greedy_tokens_compared": SAME_TOKENS,
            "greedy_agreement": f"{agreeing}/{len(prompts)}",
            "greedy_agreement_rate": round(rate, 3),
            "same_first_token": f"{first_tokens}/{len(prompts)}",
        }
    finally:
        llm.close()


def _greedy(llm: Any, vocab: Any, prompt: list[int], limit: int) -> list[int]:
    """llama.cpp's greedy continuation, up to its first end-of-generation token (not included)."""
    import llama_cpp

    out: list[int] = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(vocab, token) or len(out) >= limit:
            break
        out.append(token)
    return out
