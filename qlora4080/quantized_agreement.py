"""How close a 16-bit merge comes to the 4-bit model an adapter was trained on.

A LoRA adapter trained on a 4-bit NF4 base learned to correct that base,
rounding and all. A merge adds it to the 16-bit weights instead (merging into
4-bit weights would round the LoRA update away), so the merged model is the
16-bit base + adapter, exactly, and not the 4-bit model that was trained.
export checks the first equality exactly; this module measures the second, on
the run's own validation prompts: how many greedy answers the merged model
shares with the 4-bit model as trained. It is reported, not required: the
difference is the quantization's, not a fault of the merge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from .checkpoint import CheckpointMeta
    from .data.vocabulary import Message
    from .infer import ChatModel

PROMPTS = 8


class Agreement(TypedDict):
    prompts: int
    same_answers: int
    """Prompts where the merged model's greedy answer equals the 4-bit model's, token for token."""
    same_first_token: int


def validation_prompts(meta: CheckpointMeta, limit: int = PROMPTS) -> list[list[Message]]:
    """The conversations of the run's validation file up to their first assistant turn (at most `limit`)."""
    path = Path(meta.validation_file) if meta.validation_file else None
    prompts: list[list[Message]] = []
    if path is None or not path.is_file():
        return prompts
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            messages = json.loads(line)["messages"]
            first_answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        except (json.JSONDecodeError, KeyError, StopIteration, TypeError):
            continue
        if first_answer > 0:
            prompts.append(messages[:first_answer])
        if len(prompts) == limit:
            break
    return prompts


def agreement_with_4bit_model(checkpoint: Path, meta: CheckpointMeta, merged: ChatModel,
                              prompts: list[list[Message]], max_new_tokens: int) -> Agreement:
    """Greedy answers of the merged model against the 4-bit base + adapter, the model as trained."""
    from peft import PeftModel

    from .backends import hf
    from .hardware import detect
    from .infer import ChatModel, generate_answers

    base, _ = hf.load_model(meta.model_section(load_in_4bit=True), detect(), for_training=False)
    trained = ChatModel(PeftModel.from_pretrained(base, checkpoint).eval(), merged.tokenizer, "", True, merged.stop_ids)
    expected = generate_answers(trained, prompts, max_new_tokens=max_new_tokens)
    got = generate_answers(merged, prompts, max_new_tokens=max_new_tokens)
    return Agreement(prompts=len(prompts),
                     same_answers=sum(a.token_ids == b.token_ids for a, b in zip(expected, got, strict=True)),
                     same_first_token=sum(a.token_ids[:1] == b.token_ids[:1] for a, b in zip(expected, got, strict=True)))
