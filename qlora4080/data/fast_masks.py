"""One template render per conversation instead of one per turn: a faster way to the exact masks.

The exact method (render.py) renders every prompt prefix of a conversation,
about k+1 renders for k assistant turns, and tokenizes each piece on its own.
This path reaches the same input_ids and labels with one render and one fast
whole-text tokenization per conversation:

1. render the whole conversation once through the compiled template (chunks
   are tokenized on a second thread while the next chunk renders);
2. find each assistant turn in that text: it starts right after the j-th
   assistant header H (learned once per template, templates.py) and ends at
   its end-of-turn marker after its answer (turns.py, the same code the exact
   path uses) -- the exact method's span whenever the template renders
   prefixes consistently;
3. find the same spans in the token ids: the j-th run of H's tokens, and as many
   marker tokens after it as the trained text contains. A record where this
   mapping is not certain (H's tokens not found as often as H's text, a turn
   without an end-of-turn marker, tool calls) goes down the exact path.

What one render cannot see -- that the prompt rendered alone is exactly the
text before the turn, and that whole-text and piecewise tokenization agree --
is checked by running the exact method on the first conversation of every
shape (roles, tool calls, reasoning, tools) and on every VERIFY_EVERY-th one. A
single difference sends the whole batch, and later batches with this template,
down the exact path: a template or tokenizer that splits differently in
general never uses this path. Records outside the sample rely on the checks of
step 3; `render_many(..., fast=False)` renders everything the exact way.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import QloraError
from .template_profile import TemplateProfile, template_profile
from .templates import (
    IGNORE_INDEX,
    TemplateError,
    TrainOn,
    compiled_renderer,
    marker_tokens,
    special_pattern,
)
from .turns import Span, turn_span
from .validate import structure_problem

VERIFY_EVERY = 64
MIN_BATCH = 16
CHUNK = 256  # conversations rendered while the previous chunk is tokenized
PROBE = 64  # a template whose first PROBE conversations mostly miss the fast path stops trying it
Rendered = dict[str, list[int]]
Notes = dict[int, tuple[list[str], list[Span]]]  # record index -> (how each trained turn was located, its span)


@dataclass
class TemplateFacts:
    """What the fast path learns once per tokenizer and template."""

    profile: TemplateProfile
    header_ids: list[int]
    marker_ids: frozenset[int]
    marker_pattern: re.Pattern[str]
    fallback: re.Pattern[str] | None  # the tokenizer's special tokens, for a template without end-of-turn markers
    disabled: str = ""  # why this template takes the exact path, once found out
    tried: int = 0  # conversations offered to the fast path so far
    fast: int = 0  # ... and those it rendered (the rest took the exact path)

    @property
    def generation_prompt(self) -> str:
        return self.profile.generation_prompt


_FACTS: weakref.WeakKeyDictionary[Any, dict[str, TemplateFacts | None]] = weakref.WeakKeyDictionary()


def template_facts(tokenizer: Any, examples: Sequence[Sequence[Mapping[str, Any]]] = ()) -> TemplateFacts | None:
    """The template's header and the tokenizer's marker tokens; None when no fast path applies."""
    template = getattr(tokenizer, "chat_template", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
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


def _learn_facts(tokenizer: Any, backend: Any, profile: TemplateProfile) -> TemplateFacts | None:
    markers = marker_tokens(tokenizer)
    marker_ids = frozenset(i for i in (backend.token_to_id(s) for s in markers) if i is not None)
    if not markers or not marker_ids:
        return None
    facts = TemplateFacts(
        profile=profile,
        header_ids=backend.encode(profile.header, add_special_tokens=False).ids,
        marker_ids=marker_ids,
        marker_pattern=re.compile("|".join(re.escape(s) for s in markers)),  # longest first, as the tokenizer splits
        fallback=special_pattern(tokenizer),
    )
    if not set(profile.closers + profile.tool_closers) <= set(markers):
        facts.disabled = "the template's end-of-turn markers are not single tokens of this tokenizer"
    return facts


def render_batch(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    tokenizer: Any,
    train_on: TrainOn,
    tools: Sequence[Any],
    exact: Any,
    profile: TemplateProfile | None = None,
) -> tuple[list[Rendered | QloraError], Notes]:
    """input_ids + labels for every conversation (or the error that rejects it), fast where proven equal.

    `exact(indices)` runs the exact method on those conversations and returns
    their results (or errors); it raises TemplateError when the template cannot
    be mapped, which then stops the batch as it would without this path.
    Also returns, for each record this path rendered, how its turns were located.
    """
    if len(conversations) < MIN_BATCH:  # the verification sample would be most of it: render exactly
        return exact(range(len(conversations))), {}
    facts = template_facts(tokenizer, conversations[:3])
    if facts is None or facts.disabled:
        return exact(range(len(conversations))), {}
    notes: Notes = {}
    if facts.tried < PROBE < len(conversations):
        # Try a first slice; a template this path rarely fits would otherwise cost a render more per record.
        head = _render_fast_or_exact(conversations[:PROBE], tokenizer, train_on, tools[:PROBE], exact, facts, notes)
        if not facts.disabled and facts.fast < facts.tried / 2:
            facts.disabled = f"only {facts.fast} of the first {facts.tried} conversations fit the fast path"
        rest = _offset(exact, PROBE)
        if facts.disabled:
            return head + rest(range(len(conversations) - PROBE)), notes
        tail_notes: Notes = {}
        tail = _render_fast_or_exact(conversations[PROBE:], tokenizer, train_on, tools[PROBE:], rest, facts, tail_notes)
        notes.update({PROBE + index: note for index, note in tail_notes.items()})
        return head + tail, notes
    return _render_fast_or_exact(conversations, tokenizer, train_on, tools, exact, facts, notes), notes


def _offset(exact: Any, offset: int) -> Any:
    return lambda indices: exact([offset + i for i in indices])


def _render_fast_or_exact(conversations: Sequence[Sequence[Mapping[str, Any]]], tokenizer: Any, train_on: TrainOn,
                          tools: Sequence[Any], exact: Any, facts: TemplateFacts, notes: Notes,
                          ) -> list[Rendered | QloraError]:
    try:
        render = compiled_renderer(tokenizer)
    except TemplateError:
        return exact(range(len(conversations)))
    results: list[Rendered | QloraError | None] = [None] * len(conversations)
    found: Notes = {}
    # Rendering is Python, tokenizing is Rust without the GIL: tokenize each chunk on a second thread
    # while the next one renders, and locate turns in each tokenized chunk while later ones tokenize.
    # Only that thread touches the tokenizer until all chunks are done.
    with ThreadPoolExecutor(max_workers=1) as tokenizing:
        chunks = []
        for begin in range(0, len(conversations), CHUNK):
            texts: list[str | None] = []
            for messages, record_tools in zip(conversations[begin:begin + CHUNK], tools[begin:begin + CHUNK]):
                try:
                    plain = messages if all(type(m) is dict for m in messages) else [dict(m) for m in messages]
                    texts.append(render(plain, record_tools, False))
                except QloraError:  # e.g. the template raised on this one: the exact path decides (and names why)
                    texts.append(None)
            chunks.append((begin, texts, tokenizing.submit(_encode, tokenizer, [t or "" for t in texts])))
        for begin, texts, future in chunks:
            located: list[tuple[int, list[int], list[tuple[int, int]]]] = []
            for index, text, encoding in zip(range(begin, begin + len(texts)), texts, future.result()):
                messages = conversations[index]
                problem = structure_problem(messages)
                if problem:  # the same rejection the exact path gives
                    results[index] = QloraError(problem)
                    continue
                if text is None:
                    continue
                ids = encoding.ids
                spans = _locate(messages, text, ids, train_on, facts)
                if spans is not None:
                    token_spans, char_spans = spans
                    located.append((index, ids, token_spans))
                    found[index] = (["fast"] * len(char_spans), char_spans)
            _accept(located, results)
    facts.tried += len(conversations)
    facts.fast += sum(isinstance(r, dict) for r in results)

    verify = _verification_sample(conversations, tools)
    pending = sorted(set(verify) | {i for i, r in enumerate(results) if r is None})
    exact_results = dict(zip(pending, exact(pending)))
    for index in verify:
        fast, reference = results[index], exact_results[index]
        if fast is not None and _differs(fast, reference):
            facts.disabled = f"conversation {index} differs between the fast and the exact path"
            return exact(range(len(conversations)))
    for index in pending:
        results[index] = exact_results[index]
    notes.update(found)  # those in the sample were found equal to the exact path's
    return results  # type: ignore[return-value]


def _locate(messages: Sequence[Mapping[str, Any]], text: str, ids: list[int], train_on: TrainOn,
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
    token_spans: list[tuple[int, int]] = []
    spans: list[Span] = []
    for number, index in enumerate(assistants):
        limit = headers[number + 1] if number + 1 < len(headers) else end
        span = turn_span(text, headers[number] + len(header), limit, messages[index], index == len(messages) - 1,
                         profile, facts.fallback)
        if span is None or not span.closed:
            return None
        if number < first_chosen:
            continue
        token_start = runs[number] + len(facts.header_ids)
        markers_inside = len(facts.marker_pattern.findall(text, span.start, span.end))
        token_end = _after_nth_special(ids, token_start, markers_inside, facts.marker_ids)
        if token_end is None:
            return None
        token_spans.append((token_start, token_end))
        spans.append(span)
    return token_spans, spans


def _find_all(text: str, needle: str) -> list[int]:
    """Start positions of every (non-overlapping) occurrence of `needle` in `text`."""
    starts, position = [], text.find(needle)
    while position >= 0 and needle:
        starts.append(position)
        position = text.find(needle, position + len(needle))
    return starts


def _runs(ids: list[int], pattern: list[int]) -> list[int]:
    """Start positions of every (non-overlapping) occurrence of `pattern` in `ids`."""
    if not pattern:
        return []
    starts, first, width, position = [], pattern[0], len(pattern), 0
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


def _after_nth_special(ids: list[int], start: int, n: int, special_ids: frozenset[int]) -> int | None:
    seen = 0
    for position in range(start, len(ids)):
        if ids[position] in special_ids:
            seen += 1
            if seen == n:
                return position + 1
    return None


def _accept(located: list[tuple[int, list[int], list[tuple[int, int]]]], results: list[Any]) -> None:
    for index, ids, spans in located:
        labels = [IGNORE_INDEX] * len(ids)
        for a, b in spans:
            labels[a:b] = ids[a:b]
        results[index] = {"input_ids": ids, "labels": labels}


def _encode(tokenizer: Any, texts: list[str]) -> list[Any]:
    """The Rust tokenizer on many texts at once, without offsets (what the tokenizer call does, faster)."""
    if not texts:
        return []
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: tokenizers >= 0.21
    return encode(texts, add_special_tokens=False)


def _shape(messages: Sequence[Mapping[str, Any]], tools: Any) -> tuple[Any, ...]:
    return (tools is not None, *((m.get("role"), bool(m.get("tool_calls")),
                                  bool(m.get("reasoning_content") or m.get("thinking") or m.get("reasoning")),
                                  isinstance(content := m.get("content"), str) and "</think>" in content, "name" in m)
                                 for m in messages))


def _verification_sample(conversations: Sequence[Sequence[Mapping[str, Any]]], tools: Sequence[Any]) -> list[int]:
    """The first conversation of every shape, and every VERIFY_EVERY-th one."""
    seen: set[tuple[Any, ...]] = set()
    chosen = []
    for index, (messages, record_tools) in enumerate(zip(conversations, tools)):
        shape = _shape(messages, record_tools)
        if shape not in seen or index % VERIFY_EVERY == 0:
            seen.add(shape)
            chosen.append(index)
    return chosen


def _differs(fast: Rendered | QloraError, reference: Rendered | QloraError) -> bool:
    if isinstance(fast, QloraError) or isinstance(reference, QloraError):
        return isinstance(fast, QloraError) != isinstance(reference, QloraError)
    return fast["input_ids"] != reference["input_ids"] or fast["labels"] != reference["labels"]


__all__ = ["VERIFY_EVERY", "Notes", "TemplateError", "render_batch", "template_facts"]
