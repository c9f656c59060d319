"""Messages + tokenizer -> input_ids and labels, built together so they never drift.

Works for any chat template, including ones without `{% generation %}`
markers. The whole conversation is rendered once; each assistant turn's
trained text is located in THAT render, so every turn trains exactly what
the full conversation shows for it:

    full     = render(messages)                                   # what training sees
    prompt_i = render(messages[:i], add_generation_prompt=True)   # ends with the generation prompt G

Where `full` starts with `prompt_i` minus G, and then the assistant header H
(templates.py learns G and H once per template; usually H == G), turn i starts
right after H ("prefix"). A template that renders earlier turns differently
once more follow (gpt-oss drops a tool call's analysis) is searched instead:
the text before the turn is found after the previous turn ("full render").
The trained text then runs through the turn's answer to its end-of-turn
marker (turns.py): `<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`... so the model
learns to stop; the header, the newline after the marker and whatever the
template appends after the last turn (Phi-3's EOS) are not trained.

Each piece of text (untrained, trained, untrained, ...) is tokenized on its
own and the ids concatenated, the way inference sees it: the prompt is
tokenized, then the answer's tokens follow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import QloraError
from .fast_masks import Notes, render_batch
from .template_profile import (
    TemplateProfile,
    after_tail,
    template_profile,
    template_warnings,
)
from .templates import (
    IGNORE_INDEX,
    TRAIN_ON_CHOICES,
    TemplateError,
    TemplateRefusal,
    TrainOn,
    compiled_renderer,
    fold_system_prompt,
    render_text,
    special_pattern,
    special_tokens,
)
from .turns import MaskReport, Span, turn_span
from .validate import structure_problem

__all__ = [
    "IGNORE_INDEX", "TRAIN_ON_CHOICES", "MaskReport", "TemplateError", "TemplateRefusal", "TrainOn",
    "end_of_turn_ids", "render_conversation", "render_conversations", "render_many", "render_prompt",
    "special_tokens", "template_warnings",
]


def render_conversation(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    train_on: TrainOn = "assistant",
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, list[int]]:
    """Tokenize one conversation with the tokenizer's chat template.

    Returns {"input_ids": [...], "labels": [...]} of equal length; labels are
    IGNORE_INDEX (-100) on every token that must not carry loss.
    """
    return render_conversations([messages], tokenizer, train_on, [tools])[0]


def render_conversations(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    tokenizer: Any,
    train_on: TrainOn = "assistant",
    tools: Sequence[list[dict[str, Any]] | None] | None = None,
    fast: bool = True,
    report: MaskReport | None = None,
) -> list[dict[str, list[int]]]:
    """render_conversation for many conversations at once (much faster); the first bad one raises."""
    results = render_many(conversations, tokenizer, train_on, tools, fast, report=report)
    for result in results:
        if isinstance(result, QloraError):
            raise result
    return results  # type: ignore[return-value]


def render_many(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    tokenizer: Any,
    train_on: TrainOn = "assistant",
    tools: Sequence[list[dict[str, Any]] | None] | None = None,
    fast: bool = True,
    report: MaskReport | None = None,
) -> list[dict[str, list[int]] | QloraError]:
    """ids + labels for every conversation, or the QloraError that rejects that one.

    A conversation is rejected on its own when its turns are out of order
    (validate.structure_problem), the template refuses it (TemplateRefusal) or
    one of its assistant turns cannot be found in its render. With `fast`,
    batches take the one-render path (fast_masks.py), which is checked against
    this module's exact method and falls back to it; without, every
    conversation is rendered prefix by prefix. A template that cannot be
    mapped at all raises TemplateError before any conversation is rendered.

    `report`, when given, collects how turns were located and the warnings to
    print once for the dataset (MaskReport.lines()).
    """
    if train_on not in TRAIN_ON_CHOICES:
        raise QloraError(f"train_on must be one of {', '.join(TRAIN_ON_CHOICES)}, not {train_on!r}")
    given = conversations
    conversations = [fold_system_prompt(c, tokenizer) for c in given]  # the same objects unless folded
    folded = sum(len(after) != len(before) for before, after in zip(given, conversations))
    record_tools = list(tools) if tools is not None else [None] * len(conversations)
    profile = template_profile(tokenizer, conversations) if train_on != "all" and conversations else None
    notes: Notes = {}

    def exact(indices: Iterable[int]) -> list[dict[str, list[int]] | QloraError]:
        indices = list(indices)
        outcome: dict[int, dict[str, list[int]] | QloraError] = {}
        plans: list[tuple[int, Plan]] = []
        for index in indices:
            try:
                plan = plan_conversation(conversations[index], tokenizer, train_on, record_tools[index], profile)
            except TemplateError:
                raise
            except QloraError as exc:  # this conversation only (TemplateRefusal, turn order, a turn not found)
                outcome[index] = exc
                continue
            plans.append((index, plan))
            notes[index] = (plan.strategies, plan.spans)
        for (index, _), rendered in zip(plans, tokenize_plans([(p.pieces, p.trained) for _, p in plans], tokenizer)):
            outcome[index] = rendered
        return [outcome[index] for index in indices]

    if fast:
        results, fast_notes = render_batch(conversations, tokenizer, train_on, record_tools, exact, profile)
    else:
        results, fast_notes = exact(range(len(conversations))), {}
    if report is not None:
        notes.update(fast_notes)  # the fast path's result stands for the records it kept
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


def tokenize_plans(plans: Sequence[tuple[list[str], list[bool]]], tokenizer: Any) -> list[dict[str, list[int]]]:
    """Tokenize the pieces of many planned conversations in one call; build ids and labels together."""
    all_pieces = [piece for pieces, _ in plans for piece in pieces]
    encoded = iter(_tokenize_pieces(tokenizer, all_pieces))
    results = []
    for pieces, trained in plans:
        input_ids: list[int] = []
        labels: list[int] = []
        for is_trained in trained:
            ids = next(encoded)
            input_ids += ids
            labels += ids if is_trained else [IGNORE_INDEX] * len(ids)
        results.append({"input_ids": input_ids, "labels": labels})
    return results


@dataclass
class Plan:
    """The rendered conversation cut into text pieces, each trained or not, and how each trained turn was found."""

    pieces: list[str]
    trained: list[bool]
    strategies: list[str] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)


def plan_conversation(messages: Sequence[Mapping[str, Any]], tokenizer: Any, train_on: TrainOn = "assistant",
                      tools: Any = None, profile: TemplateProfile | None = None) -> Plan:
    """Render one conversation and cut it into trained / untrained pieces (no tokenization yet)."""
    if train_on not in TRAIN_ON_CHOICES:
        raise QloraError(f"train_on must be one of {', '.join(TRAIN_ON_CHOICES)}, not {train_on!r}")
    messages = [dict(m) for m in messages]
    problem = structure_problem(messages)
    if problem:
        raise QloraError(problem)
    full = render_text(tokenizer, messages, tools, add_generation_prompt=False)
    if train_on == "all":
        return Plan([full], [True])
    profile = profile or template_profile(tokenizer, [messages])
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    chosen = assistants if train_on == "assistant" else assistants[-1:]
    try:
        # Prefixes through the compiled template (no per-call copying); a render it cannot do goes the exact way.
        located = _locate(tokenizer, messages, tools, full, profile, chosen, assistants, _render_fast)
    except TemplateError:
        located = _locate(tokenizer, messages, tools, full, profile, chosen, assistants, render_text)
    pieces: list[str] = []
    trained: list[bool] = []
    position = 0
    for _, span in located:
        pieces += [full[position:span.start], full[span.start:span.end]]
        trained += [False, True]
        position = span.end
    pieces.append(full[position:])
    trained.append(False)
    return Plan(pieces, trained, [strategy for strategy, _ in located], [span for _, span in located])


def _locate(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, full: str, profile: TemplateProfile,
            chosen: list[int], assistants: list[int], render: Any) -> list[tuple[str, Span]]:
    """(strategy, span) of each chosen assistant turn inside `full`."""
    prompts: dict[int, str] = {}
    starts: dict[int, int | None] = {}
    order = chosen
    for index in order:
        prompts[index] = render(tokenizer, messages[:index], tools, True)
        starts[index] = _prefix_start(full, prompts[index], profile)
    if None in starts.values() and order != assistants:  # searching needs where every earlier turn ends
        order = assistants
        for index in order:
            if index not in prompts:
                prompts[index] = render(tokenizer, messages[:index], tools, True)
                starts[index] = _prefix_start(full, prompts[index], profile)
    fallback = special_pattern(tokenizer)
    located: list[tuple[str, Span]] = []
    cursor = 0
    for number, index in enumerate(order):
        start, strategy = starts[index], "prefix"
        if start is None:
            start, strategy = _search_start(full, prompts[index], profile, cursor, messages[index - 1]), "full render"
        if start is None or start < cursor:
            raise QloraError(
                f"assistant message {index} cannot be located in the rendered conversation: the chat template renders "
                "the conversation before it differently when it is cut there, and that text was not found after the "
                "previous turn")
        following = starts.get(order[number + 1]) if number + 1 < len(order) else None
        limit = profile.limit(full) if following is None else max(_header_start(full, following, profile), start)
        span = turn_span(full, start, limit, messages[index], index == len(messages) - 1, profile, fallback)
        if span is None:
            raise QloraError(f"assistant message {index}: no end of the turn found in the rendered conversation "
                             "(neither its text nor an end-of-turn marker after its header)")
        cursor = span.end
        if index in chosen:
            located.append((strategy, span))
    return located


def _prefix_start(full: str, prompt: str, profile: TemplateProfile) -> int | None:
    """Where the turn's trained text starts when `full` begins with the prompt rendered alone (minus G, plus H)."""
    generation, header = profile.generation_prompt, profile.header
    if prompt.endswith(generation):
        base = len(prompt) - len(generation)
        if full.startswith(prompt[:base]) and full.startswith(header, base):
            return base + len(header)
    if full.startswith(prompt):  # a prompt without G (DeepSeek after tool output) the conversation continues
        return len(prompt)
    return None


def _header_start(full: str, start: int, profile: TemplateProfile) -> int:
    """Where the header before a turn starting at `start` begins (the turn before must end there)."""
    header = profile.header
    return start - len(header) if full.startswith(header, start - len(header)) else start


def _search_start(full: str, prompt: str, profile: TemplateProfile, cursor: int,
                  previous: Mapping[str, Any]) -> int | None:
    """Where the turn starts when earlier turns render differently: after the prompt's last message, then H."""
    content = previous.get("content")
    content = content if isinstance(content, str) else None
    generation, header = profile.generation_prompt, profile.header
    if prompt.endswith(generation):
        base = after_tail(full, prompt[: len(prompt) - len(generation)], cursor, content, then=header)
        return None if base is None else base + len(header)
    return after_tail(full, prompt, cursor, content)


def _render_fast(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool) -> str:
    """The compiled template rendered directly, as apply_chat_template would but without copying the messages."""
    return compiled_renderer(tokenizer)(messages, tools, add_generation_prompt)


def _tokenize_pieces(tokenizer: Any, pieces: list[str]) -> list[list[int]]:
    # The template already wrote BOS and every special token as text.
    non_empty = [p for p in pieces if p]
    encoded = iter(tokenizer(non_empty, add_special_tokens=False)["input_ids"]) if non_empty else iter(())
    return [next(encoded) if p else [] for p in pieces]


def render_prompt(messages: Sequence[Mapping[str, Any]], tokenizer: Any, tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of a conversation ready for the next assistant answer (used by chat and eval)."""
    text = render_text(tokenizer, fold_system_prompt([dict(m) for m in messages], tokenizer), tools,
                       add_generation_prompt=True)
    return _tokenize_pieces(tokenizer, [text])[0]


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that close an assistant turn in this template (what generation should stop on).

    Found the same way training finds them: render a one-turn conversation and
    take the last trained token, plus the tokenizer's EOS.
    """
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    ids: list[int] = []
    try:
        labels = render_conversation(probe, tokenizer)["labels"]
        trained = [label for label in labels if label != IGNORE_INDEX]
        if trained:
            ids.append(trained[-1])
    except QloraError:
        pass
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
