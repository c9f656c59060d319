"""Messages + tokenizer -> input_ids and labels, built together so they never drift.

The entry points of the data layer's rendering; labels are IGNORE_INDEX on
every token that must not carry loss, and each assistant turn trains exactly
what the full conversation shows for it (its answer and end-of-turn marker).

- render_or_reject: a dataset's conversations -> each one's ids and labels, or
  the QloraError that rejects that record (the others go on). What `train`,
  `data build` and `data preview` use.
- render_or_raise / render_conversation: the same, raising the first rejection.
- render_prompt: a conversation ready for the next answer (chat and eval).

Datasets take the one-render path (fast_masks.py) where it is proven equal to
the exact method (exact_masks.py), which every conversation can take.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import QloraError
from .exact_masks import ExactBatch, tokenize_pieces
from .fast_masks import FastPathState, render_batch
from .template_profile import template_profile, template_warnings
from .templates import (
    Outcome,
    Rendered,
    TemplateError,
    TemplateRefusal,
    Tools,
    fold_system_prompt,
    render_text,
    special_tokens,
)
from .turns import MaskReport
from .vocabulary import IGNORE_INDEX, TRAIN_ON_CHOICES, Message, TrainOn

if TYPE_CHECKING:
    from .templates import Tokenizer

__all__ = [
    "IGNORE_INDEX", "TRAIN_ON_CHOICES", "FastPathState", "MaskReport", "Outcome", "Rendered", "TemplateError",
    "TemplateRefusal", "TrainOn", "end_of_turn_ids", "render_conversation", "render_or_raise", "render_or_reject",
    "render_prompt", "special_tokens", "template_warnings",
]


def render_conversation(
    messages: Sequence[Message],
    tokenizer: Tokenizer,
    train_on: TrainOn = "assistant",
    tools: Tools | None = None,
) -> Rendered:
    """Tokenize one conversation with the tokenizer's chat template; QloraError when it cannot be trained on.

    Returns {"input_ids": [...], "labels": [...]} of equal length; labels are
    IGNORE_INDEX (-100) on every token that must not carry loss.
    """
    return render_or_raise([messages], tokenizer, train_on, [tools])[0]


def render_or_raise(
    conversations: Sequence[Sequence[Message]],
    tokenizer: Tokenizer,
    train_on: TrainOn = "assistant",
    tools: Sequence[Tools | None] | None = None,
    fast: bool = True,
    report: MaskReport | None = None,
) -> list[Rendered]:
    """render_conversation for many conversations at once (much faster); the first one rejected raises its error."""
    results = render_or_reject(conversations, tokenizer, train_on, tools, fast, report=report)
    rendered: list[Rendered] = []
    for result in results:
        if isinstance(result, QloraError):
            raise result
        rendered.append(result)
    return rendered


def render_or_reject(
    conversations: Sequence[Sequence[Message]],
    tokenizer: Tokenizer,
    train_on: TrainOn = "assistant",
    tools: Sequence[Tools | None] | None = None,
    fast: bool = True,
    report: MaskReport | None = None,
    fast_state: FastPathState | None = None,
) -> list[Outcome]:
    """ids + labels for every conversation, or the QloraError that rejects that one (what a dataset needs).

    A conversation is rejected on its own when its turns are out of order
    (validate.structure_problem), the template refuses it (TemplateRefusal) or
    one of its assistant turns cannot be found in its render. With `fast`,
    batches take the one-render path (fast_masks.py), which is checked against
    the exact method (exact_masks.py) and falls back to it; without, every
    conversation is rendered prefix by prefix. A template that cannot be
    mapped at all raises TemplateError before any conversation is rendered.

    `report`, when given, collects how turns were located and the warnings to
    print once for the dataset (MaskReport.lines()). `fast_state` says which
    path the fast path's batches take (FastPathState); a fresh one when not
    given, so earlier calls never decide this one's path.
    """
    if train_on not in TRAIN_ON_CHOICES:
        raise QloraError(f"train_on must be one of {', '.join(TRAIN_ON_CHOICES)}, not {train_on!r}")
    given = conversations
    conversations = [fold_system_prompt(c, tokenizer) for c in given]  # the same objects unless folded
    folded = sum(len(after) != len(before) for before, after in zip(given, conversations))
    record_tools = list(tools) if tools is not None else [None] * len(conversations)
    profile = template_profile(tokenizer, conversations) if train_on != "all" and conversations else None
    exact = ExactBatch(conversations, tokenizer, train_on, record_tools, profile)
    if fast:
        results, fast_notes = render_batch(conversations, tokenizer, train_on, record_tools, exact,
                                           fast_state or FastPathState())
    else:
        results, fast_notes = exact(range(len(conversations)))(), {}
    if report is not None:
        notes = {**exact.notes, **fast_notes}  # the fast path's result stands for the records it kept
        if profile is not None:
            report.add_template(profile)
        report.train_on = train_on
        if folded:
            report.folded_system += folded
        report.conversations += len(conversations)
        report.fast += len(fast_notes)
        for index, result in enumerate(results):
            if isinstance(result, dict) and index in notes:
                report.count(index, *notes[index])
    return results


def render_prompt(messages: Sequence[Message], tokenizer: Tokenizer, tools: Tools | None = None) -> list[int]:
    """Token ids of a conversation ready for the next assistant answer (used by chat and eval)."""
    text = render_text(tokenizer, fold_system_prompt(list(messages), tokenizer), tools, add_generation_prompt=True)
    return tokenize_pieces(tokenizer, [text])[0]


def end_of_turn_ids(tokenizer: Tokenizer) -> list[int]:
    """Token ids that close an assistant turn in this template (what generation should stop on).

    Found the same way training finds them: render a one-turn conversation and
    take the last trained token, plus the tokenizer's EOS.
    """
    probe: list[Message] = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    ids: list[int] = []
    try:
        labels = render_conversation(probe, tokenizer)["labels"]
        trained = [label for label in labels if label != IGNORE_INDEX]
        if trained:
            ids.append(trained[-1])
    except QloraError:
        pass
    eos = tokenizer.eos_token_id
    if isinstance(eos, int) and eos not in ids:
        ids.append(eos)
    return ids
