"""Prove a GGUF with llama.cpp itself: it renders, tokenizes, stops and answers as the model it came from.

On each of the run's test prompts, llama.cpp (llama-cpp-python) must:
- render the chat template embedded in the GGUF (as llama-cpp-python renders it for a chat request) to the
  training render, byte for byte, generation prompt included, and tokenize that text to the training ids;
- treat every end-of-turn token the adapter was trained to emit as end-of-generation (EOG), with the same text;
- give the merged model's own greedy answers nearly the probabilities the merged model gives them, token by
  token (teacher-forced): the mean and the worst difference in log-probability must stay within what the
  quantization is measured to cost (TOLERANCES, bench/gguf_logit_gap.py, docs/benchmarks.md). Free-running
  greedy answers are compared too and recorded, not required: where the merged model's top two tokens are
  nearly tied, q8_0's rounding alone swaps them and the answers part ways (measured: a swap at a margin of
  1.2 nats on SmolLM2-135M), while a GGUF that lost the adapter or is another model differs on every answer.
Any other difference is a QloraError that says which prompt, which position and both sides.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import QloraError

if TYPE_CHECKING:
    from .data.vocabulary import Message

SAME_TOKENS = 16
"""Greedy tokens compared per prompt."""


@dataclass(frozen=True)
class Tolerance:
    """How far (nats) llama.cpp's log-probability of the merged model's greedy tokens may be from the merged model's."""

    mean: float
    worst: float


TOLERANCES = {
    # Measured on the demo adapter (SmolLM2-135M, 8 prompts x 16 tokens, bench/gguf_logit_gap.py): mean / worst
    # f16 0.001 / 0.010, q8_0 0.041 / 0.879, q4_k_m 0.145 / 1.154; the base model without the adapter, as q8_0,
    # 0.228 / 3.088. Each bound is about twice the measured cost, so q8_0 and f16 still tell a lost adapter apart.
    "f16": Tolerance(0.02, 0.25),
    "bf16": Tolerance(0.02, 0.25),
    "q8_0": Tolerance(0.1, 2.0),
    "q5_k_m": Tolerance(0.3, 3.0),
    "q4_k_m": Tolerance(0.3, 3.0),
}


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
        errors: list[float] = []
        worst: tuple[float, int, int, float, float, int] = (-1.0, 0, 0, 0.0, 0.0, 0)
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
            want = list(expected[index - 1].token_ids)[:SAME_TOKENS]
            for position, (merged_logp, gguf_logp) in enumerate(zip(_merged_logprobs(chat, training_ids, want),
                                                                    _gguf_logprobs(llm, training_ids, want))):
                errors.append(abs(merged_logp - gguf_logp))
                if errors[-1] > worst[0]:
                    worst = (errors[-1], index, position, merged_logp, gguf_logp, want[position])
            answer = _greedy(llm, vocab, gguf_ids, SAME_TOKENS)
            agreeing += answer == want
            first_tokens += answer[:1] == want[:1]
        mean = sum(errors) / max(1, len(errors))
        allowed = TOLERANCES[quant]
        if worst[0] > allowed.worst:
            _, index, position, merged_logp, gguf_logp, token = worst
            raise GgufMismatch(
                f"prompt {index}, answer token {position + 1} ({tokenizer.decode([token])!r}): its log-probability is "
                f"{gguf_logp:.3f} in llama.cpp but {merged_logp:.3f} in the merged model, {worst[0]:.3f} nats apart; "
                f"{quant} allows {allowed.worst} (about twice what its rounding was measured to cost)",
                hint="the GGUF does not compute what the merged model computes: another model, a lost adapter, or a "
                     "conversion llama.cpp gets wrong for this architecture")
        if mean > allowed.mean:
            raise GgufMismatch(
                f"llama.cpp's log-probabilities of the merged model's greedy answers differ from the merged model's by "
                f"{mean:.3f} nats on average over {len(errors)} tokens; {quant} allows {allowed.mean}",
                hint="the GGUF does not compute what the merged model computes: another model, a lost adapter (the "
                     "demo's base model without it measured 0.23 as q8_0), or a conversion problem")
        return {
            "prompts": len(prompts),
            "template_renders_identically": True,
            "tokenizes_identically": True,
            "end_of_turn": [str(tokenizer.convert_ids_to_tokens(t)) for t in end_ids],
            "gguf_eos": text_of(llm.token_eos()),
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "greedy_tokens_compared": SAME_TOKENS,
            "greedy_agreement": f"{agreeing}/{len(prompts)}",
            "greedy_agreement_rate": round(agreeing / len(prompts), 3),
            "logprob_difference_nats": {"mean": round(mean, 4), "worst": round(worst[0], 4), "tokens": len(errors)},
            "tolerance_nats": {"mean": allowed.mean, "worst": allowed.worst},
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


def _merged_logprobs(chat: Any, prompt: list[int], answer: list[int]) -> list[float]:
    """The merged model's log-probability of each answer token, after the prompt and the answer before it."""
    import torch

    with torch.no_grad():
        logits = chat.model(input_ids=torch.tensor([prompt + answer], device=chat.model.device)).logits[0]
        steps = torch.log_softmax(logits[len(prompt) - 1:len(prompt) - 1 + len(answer)].float(), dim=-1)
    return [float(steps[i, token]) for i, token in enumerate(answer)]


def _gguf_logprobs(llm: Any, prompt: list[int], answer: list[int]) -> list[float]:
    """llama.cpp's log-probability of each answer token, fed one at a time (only the last row of logits is kept,
    so memory stays one vocabulary wide whatever the context)."""
    import llama_cpp
    import numpy as np

    llm.reset()
    out: list[float] = []
    llm.eval(prompt)
    for token in answer:
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        logits = row.astype(np.float64)
        out.append(float(logits[token] - np.logaddexp.reduce(logits)))
        llm.eval([token])
    return out
