"""The exact method: each assistant turn located through its prompt rendered alone (the reference path).

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
tokenized, then the answer's tokens follow. A cut next to an added token that
strips whitespace (Phi-3's `<|end|>` strips the newline after it) moves across
that whitespace, so the pieces tokenize as the whole text does.

fast_masks.py reaches the same ids and labels with one render per
conversation, and checks itself against this method.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

from ..errors import QloraError
from .compiled_template import compiled_renderer
from .template_profile import TemplateProfile, after_tail, template_profile
from .templates import (
    STRIPPED_WHITESPACE,
    Outcome,
    Render,
    Rendered,
    StripMarkers,
    TemplateError,
    Tools,
    render_text,
    special_pattern,
    strip_markers,
)
from .turns import Notes, Span, turn_span
from .validate import structure_problem
from .vocabulary import IGNORE_INDEX, TRAIN_ON_CHOICES, Message, TrainOn

if TYPE_CHECKING:
    from .templates import Tokenizer


@dataclass
class ExactBatch:
    """The exact method on chosen conversations of one batch: plan (render and cut) now, tokenize later.

    Calling it with indices renders and cuts those conversations at once and
    returns the step that tokenizes them (fast_masks.ExactMethod), so the fast
    path can run that step on its tokenizer thread; a conversation the method
    rejects comes back as its QloraError. `notes` keeps how each planned
    conversation's turns were located.
    """

    conversations: Sequence[Sequence[Message]]
    tokenizer: Tokenizer
    train_on: TrainOn
    tools: Sequence[Tools | None]
    profile: TemplateProfile | None
    notes: Notes = field(default_factory=dict)  # how each planned conversation's turns were located

    def __post_init__(self) -> None:
        try:  # prefixes through the compiled template, set up once for the batch
            self.render: Render | None = compiled_renderer(self.tokenizer)
        except TemplateError:
            self.render = None

    def __call__(self, indices: Iterable[int]) -> Callable[[], list[Outcome]]:
        indices = list(indices)
        outcome: dict[int, Outcome] = {}
        plans: list[tuple[int, Plan]] = []
        for index in indices:
            try:
                plan = plan_conversation(self.conversations[index], self.tokenizer, self.train_on, self.tools[index],
                                         self.profile, self.render)
            except TemplateError:
                raise
            except QloraError as exc:  # this conversation only (TemplateRefusal, turn order, a turn not found)
                outcome[index] = exc
                continue
            plans.append((index, plan))
            self.notes[index] = (plan.strategies, plan.spans)

        def tokenize() -> list[Outcome]:
            for (index, _), rendered in zip(plans, tokenize_plans([(p.pieces, p.trained) for _, p in plans],
                                                                   self.tokenizer)):
                outcome[index] = rendered
            return [outcome[index] for index in indices]

        return tokenize


def tokenize_plans(plans: Sequence[tuple[list[str], list[bool]]], tokenizer: Tokenizer) -> list[Rendered]:
    """Tokenize the pieces of many planned conversations in one call; build ids and labels together."""
    all_pieces = [piece for pieces, _ in plans for piece in pieces]
    encoded = iter(tokenize_pieces(tokenizer, all_pieces))
    results: list[Rendered] = []
    for _, trained in plans:
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


def plan_conversation(messages: Sequence[Message], tokenizer: Tokenizer, train_on: TrainOn = "assistant",
                      tools: Tools | None = None, profile: TemplateProfile | None = None,
                      render: Render | None = None) -> Plan:
    """Render one conversation and cut it into trained / untrained pieces (no tokenization yet).

    `render` (compiled_template.compiled_renderer) renders the prompt prefixes when
    given; a prefix it cannot render is rendered the way transformers does.
    """
    if train_on not in TRAIN_ON_CHOICES:
        raise QloraError(f"train_on must be one of {', '.join(TRAIN_ON_CHOICES)}, not {train_on!r}")
    messages = list(messages)
    problem = structure_problem(messages)
    if problem:
        raise QloraError(problem)
    full = render_text(tokenizer, messages, tools, add_generation_prompt=False)
    if train_on == "all":
        return Plan([full], [True])
    profile = profile or template_profile(tokenizer, [messages])
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    chosen = assistants if train_on == "assistant" else assistants[-1:]

    def exactly(prefix: Sequence[Message], prefix_tools: Tools | None, add_generation_prompt: bool) -> str:
        return render_text(tokenizer, prefix, prefix_tools, add_generation_prompt)

    try:
        # Prefixes through the compiled template (no per-call copying); a render it cannot do goes the exact way.
        located = _locate(messages, tools, full, profile, chosen, assistants, render or compiled_renderer(tokenizer),
                          special_pattern(tokenizer))
    except TemplateError:
        located = _locate(messages, tools, full, profile, chosen, assistants, exactly, special_pattern(tokenizer))
    cuts = [0]
    for _, span in located:
        cuts += [span.start, span.end]
    cuts.append(len(full))
    strips = strip_markers(tokenizer)
    if strips.right or strips.left:
        for number in range(1, len(cuts) - 1):
            cuts[number] = _cut_beside_strip(full, cuts[number], cuts[number - 1], cuts[number + 1], strips)
    pieces = [full[a:b] for a, b in pairwise(cuts)]
    trained = [number % 2 == 1 for number in range(len(pieces))]  # untrained, trained, untrained, ...
    return Plan(pieces, trained, [strategy for strategy, _ in located], [span for _, span in located])


def _cut_beside_strip(full: str, cut: int, low: int, high: int, strips: StripMarkers) -> int:
    """The cut moved across whitespace that an added token beside it strips, so pieces tokenize as the whole text.

    Whole-text tokenization drops the whitespace after an rstrip token (Phi-3's
    `<|end|>\n`) or before an lstrip token; a piece starting with that
    whitespace would tokenize it instead (a newline token after every `<|end|>`
    that inference never shows the model). The whitespace goes to the piece
    holding the token, where it is dropped as in the whole text. Stays within
    [low, high], the neighbouring cuts.
    """
    start = cut
    while start > low and full[start - 1] in STRIPPED_WHITESPACE:
        start -= 1
    end = cut
    while end < high and full[end] in STRIPPED_WHITESPACE:
        end += 1
    if start == end:
        return cut
    if strips.left and full.startswith(strips.left, end):
        return start
    if strips.right and full.endswith(strips.right, 0, start):
        return end
    return cut


def _locate(messages: list[Message], tools: Tools | None, full: str, profile: TemplateProfile, chosen: list[int],
            assistants: list[int], render: Render, fallback: re.Pattern[str] | None) -> list[tuple[str, Span]]:
    """(strategy, span) of each chosen assistant turn inside `full`; `fallback` matches the special tokens."""
    prompts: dict[int, str] = {}
    starts: dict[int, int | None] = {}
    order = chosen
    for index in order:
        prompts[index] = render(messages[:index], tools, True)
        starts[index] = _prefix_start(full, prompts[index], profile)
    if None in starts.values() and order != assistants:  # searching needs where every earlier turn ends
        order = assistants
        for index in order:
            if index not in prompts:
                prompts[index] = render(messages[:index], tools, True)
                starts[index] = _prefix_start(full, prompts[index], profile)
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


def _search_start(full: str, prompt: str, profile: TemplateProfile, cursor: int, previous: Message) -> int | None:
    """Where the turn starts when earlier turns render differently: after the prompt's last message, then H."""
    given = previous.get("content")
    content = given if isinstance(given, str) else None
    generation, header = profile.generation_prompt, profile.header
    if prompt.endswith(generation):
        base = after_tail(full, prompt[: len(prompt) - len(generation)], cursor, content, then=header)
        return None if base is None else base + len(header)
    return after_tail(full, prompt, cursor, content)


def tokenize_pieces(tokenizer: Tokenizer, pieces: list[str]) -> list[list[int]]:
    """Each piece's token ids, from one tokenizer call (no special tokens added: the template wrote BOS and the rest)."""
    non_empty = [p for p in pieces if p]
    encoded: Iterator[list[int]] = iter(tokenizer(non_empty, add_special_tokens=False)["input_ids"]) if non_empty else iter(())
    return [next(encoded) if p else [] for p in pieces]


__all__ = ["ExactBatch", "Plan", "plan_conversation", "tokenize_pieces", "tokenize_plans"]
