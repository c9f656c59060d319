"""Where each trained assistant turn lies in one render and in its whole-text tokens (the fast path's step 2-3).

In the text: the turn starts right after the j-th assistant header H (learned
once per template, template_profile.py) and ends at its end-of-turn marker
after its answer (turns.py, the code the exact path uses too). In the tokens:
after the j-th run of H's tokens, through as many marker tokens as the
trained text holds. Whatever makes that mapping uncertain (H's tokens found
a different number of times than its text, a turn without an end-of-turn
marker, tool calls) leaves the record to the exact path.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ..errors import QloraError
from .template_profile import TemplateProfile, template_profile
from .templates import marker_tokens, special_pattern
from .turns import Span, turn_span
from .vocabulary import Message, TrainOn

if TYPE_CHECKING:
    from tokenizers import Tokenizer as RustTokenizer

    from .templates import Tokenizer


@dataclass(frozen=True)
class TemplateFacts:
    """What the fast path learns once per tokenizer and template: facts, the same for every batch."""

    profile: TemplateProfile
    header_ids: list[int]
    marker_ids: frozenset[int]
    marker_pattern: re.Pattern[str]
    fallback: re.Pattern[str] | None  # the tokenizer's special tokens, for a template without end-of-turn markers
    unusable: str = ""  # why this template can never take the fast path ("" when it can)


_FACTS: weakref.WeakKeyDictionary[Tokenizer, dict[str, TemplateFacts | None]] = weakref.WeakKeyDictionary()


def template_facts(tokenizer: Tokenizer, examples: Sequence[Sequence[Message]] = ()) -> TemplateFacts | None:
    """The template's header and the tokenizer's marker tokens; None when no fast path applies."""
    template = getattr(tokenizer, "chat_template", None)
    backend = backend_of(tokenizer)
    if not isinstance(template, str) or backend is None:
        return None
    try:
        known = _FACTS.setdefault(tokenizer, {})
    except TypeError:
        known = {}
    if template not in known:
        try:
            profile = template_profile(tokenizer, examples)
        except QloraError:  # the exact path says why
            return None
        known[template] = _learn_facts(tokenizer, backend, profile)
    return known[template]


def backend_of(tokenizer: Tokenizer) -> RustTokenizer | None:
    """The `tokenizers` object behind a fast tokenizer (None for a slow one, which this path does not serve)."""
    return cast("RustTokenizer | None", getattr(tokenizer, "backend_tokenizer", None))


def _learn_facts(tokenizer: Tokenizer, backend: RustTokenizer, profile: TemplateProfile) -> TemplateFacts | None:
    markers = marker_tokens(tokenizer)
    marker_ids = frozenset(i for i in (backend.token_to_id(s) for s in markers) if i is not None)
    if not markers or not marker_ids:
        return None
    unusable = ""
    if not set(profile.closers + profile.tool_closers) <= set(markers):
        unusable = "the template's end-of-turn markers are not single tokens of this tokenizer"
    return TemplateFacts(
        profile=profile,
        header_ids=backend.encode(profile.header, add_special_tokens=False).ids,
        marker_ids=marker_ids,
        marker_pattern=re.compile("|".join(re.escape(s) for s in markers)),  # longest first, as the tokenizer splits
        fallback=special_pattern(tokenizer),
        unusable=unusable,
    )


def locate_turns(messages: Sequence[Message], text: str, ids: list[int], train_on: TrainOn,
            facts: TemplateFacts) -> tuple[list[tuple[int, int]], list[Span]] | None:
    """Token spans [start, end) to train (and their text spans), or None to leave the record to the exact path."""
    if train_on == "all":
        return [(0, len(ids))], []
    profile = facts.profile
    assistants = []
    for index, message in enumerate(messages):
        if message.get("role") == "assistant":
            if message.get("tool_calls") or not isinstance(message.get("content"), str):
                return None
            assistants.append(index)
    header = profile.header
    headers = _find_all(text, header)
    runs = _runs(ids, facts.header_ids)
    if not len(runs) == len(headers) == len(assistants):
        # One header per assistant turn, in text and in tokens, or the mapping is not certain: a header
        # tokenized differently in context (merged with what follows), or its text inside a message.
        return None
    first_chosen = 0 if train_on == "assistant" else len(assistants) - 1
    end = profile.limit(text)
    last = len(messages) - 1
    token_spans: list[tuple[int, int]] = []
    spans: list[Span] = []
    for number, index in enumerate(assistants):
        limit = headers[number + 1] if number + 1 < len(headers) else end
        span = turn_span(text, headers[number] + len(header), limit, messages[index], index == last,
                         profile, facts.fallback)
        if span is None or not span.closed:
            return None
        if number < first_chosen:
            continue
        token_start = runs[number] + len(facts.header_ids)
        markers_inside = len(facts.marker_pattern.findall(text, span.start, span.end))
        token_end = _after_nth_marker(ids, token_start, markers_inside, facts.marker_ids)
        if token_end is None:
            return None
        token_spans.append((token_start, token_end))
        spans.append(span)
    return token_spans, spans


def _find_all(text: str, needle: str) -> list[int]:
    """Start positions of every (non-overlapping) occurrence of `needle` in `text`."""
    starts: list[int] = []
    position = text.find(needle)
    while position >= 0 and needle:
        starts.append(position)
        position = text.find(needle, position + len(needle))
    return starts


def _runs(ids: list[int], pattern: list[int]) -> list[int]:
    """Start positions of every (non-overlapping) occurrence of `pattern` in `ids`."""
    if not pattern:
        return []
    starts: list[int] = []
    first, width, position = pattern[0], len(pattern), 0
    while True:
        try:
            position = ids.index(first, position)
        except ValueError:
            return starts
        if ids[position:position + width] == pattern:
            starts.append(position)
            position += width
        else:
            position += 1


def _after_nth_marker(ids: list[int], start: int, n: int, marker_ids: frozenset[int]) -> int | None:
    """The position just after the n-th marker token at or after `start`, or None when there are fewer (or n < 1)."""
    seen = 0
    for position in range(start, len(ids)):  # a plain loop: the scans are short, and it beats any iterator chain
        if ids[position] in marker_ids:
            seen += 1
            if seen == n:
                return position + 1
    return None


__all__ = ["TemplateFacts", "backend_of", "locate_turns", "template_facts"]
