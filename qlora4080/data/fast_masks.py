"""One template render per conversation instead of one per turn: a faster way to the exact masks.

The exact method (render.py) renders every prompt prefix of a conversation,
about 2k+1 renders for k assistant turns, and tokenizes each piece on its own.
This path reaches the same input_ids and labels with one render and one fast
whole-text tokenization per conversation:

1. render the whole conversation once through the compiled template (chunks
   are tokenized on a second thread while the next chunk renders);
2. find each assistant turn in that text: its trained part starts right after
   the last generation-prompt text G (e.g. `<|im_start|>assistant\\n`, learned
   once per template) before its content, and ends with the first special token
   after its content -- the exact method's span whenever the template renders
   prefixes consistently;
3. find the same spans in the token ids: the j-th run of G's tokens, and as many
   special tokens after it as the trained text contains. A record where this
   mapping is not certain (G's tokens not found as often as G's text, a content
   the template rewrote, tool calls without text) goes down the exact path.

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

import os
import re
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import QloraError
from .render import (
    IGNORE_INDEX,
    TemplateError,
    TrainOn,
    _render,
    compiled_renderer,
    special_tokens,
)
from .validate import structure_problem

VERIFY_EVERY = 64
MIN_BATCH = 16
CHUNK = 256  # conversations rendered while the previous chunk is tokenized
PROBE = 64  # a template whose first PROBE conversations mostly miss the fast path stops trying it
Rendered = dict[str, list[int]]


@dataclass
class TemplateFacts:
    """What the fast path learns once per tokenizer and template."""

    generation_prompt: str
    generation_ids: list[int]
    special_ids: frozenset[int]
    special_pattern: re.Pattern[str]
    disabled: str = ""  # why this template takes the exact path, once found out
    tried: int = 0  # conversations offered to the fast path so far
    fast: int = 0  # ... and those it rendered (the rest took the exact path)


_FACTS: weakref.WeakKeyDictionary[Any, dict[str, TemplateFacts | None]] = weakref.WeakKeyDictionary()


def template_facts(tokenizer: Any) -> TemplateFacts | None:
    """The template's generation prompt and the tokenizer's special tokens; None when no fast path applies."""
    template = getattr(tokenizer, "chat_template", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(template, str) or backend is None:
        return None
    try:
        known = _FACTS.setdefault(tokenizer, {})
    except TypeError:
        known = {}
    if template not in known:
        known[template] = _learn_facts(tokenizer, backend)
    return known[template]


def _learn_facts(tokenizer: Any, backend: Any) -> TemplateFacts | None:
    probe = [{"role": "user", "content": "Hi"}]
    try:
        without = _render(tokenizer, probe, None, add_generation_prompt=False)
        with_prompt = _render(tokenizer, probe, None, add_generation_prompt=True)
    except QloraError:
        return None
    # What the generation prompt adds after the shared text (Phi-3 ends a prompt-less render with EOS instead).
    shared = len(os.path.commonprefix([without, with_prompt]))
    generation_prompt = with_prompt[shared:]
    if not generation_prompt:
        return None
    specials = special_tokens(tokenizer)
    special_ids = frozenset(i for i in (backend.token_to_id(s) for s in specials) if i is not None)
    if not specials or not special_ids:
        return None
    return TemplateFacts(
        generation_prompt=generation_prompt,
        generation_ids=backend.encode(generation_prompt, add_special_tokens=False).ids,
        special_ids=special_ids,
        special_pattern=re.compile("|".join(re.escape(s) for s in specials)),  # longest first, as the tokenizer splits
    )


def render_batch(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    tokenizer: Any,
    train_on: TrainOn,
    tools: Sequence[Any],
    exact: Any,
) -> list[Rendered | QloraError]:
    """input_ids + labels for every conversation (or the error that rejects it), fast where proven equal.

    `exact(indices)` runs the exact method on those conversations and returns
    their results (or errors); it raises TemplateError when the template cannot
    be split consistently, which then stops the batch as it would without this path.
    """
    if len(conversations) < MIN_BATCH:  # the verification sample would be most of it: render exactly
        return exact(range(len(conversations)))
    facts = template_facts(tokenizer)
    if facts is None or facts.disabled:
        return exact(range(len(conversations)))
    if facts.tried < PROBE < len(conversations):
        # Try a first slice; a template this path rarely fits would otherwise cost a render more per record.
        head = _render_fast_or_exact(conversations[:PROBE], tokenizer, train_on, tools[:PROBE], exact, facts)
        if not facts.disabled and facts.fast < facts.tried / 2:
            facts.disabled = f"only {facts.fast} of the first {facts.tried} conversations fit the fast path"
        rest = _offset(exact, PROBE)
        if facts.disabled:
            return head + rest(range(len(conversations) - PROBE))
        return head + _render_fast_or_exact(conversations[PROBE:], tokenizer, train_on, tools[PROBE:], rest, facts)
    return _render_fast_or_exact(conversations, tokenizer, train_on, tools, exact, facts)


def _offset(exact: Any, offset: int) -> Any:
    return lambda indices: exact([offset + i for i in indices])


def _render_fast_or_exact(conversations: Sequence[Sequence[Mapping[str, Any]]], tokenizer: Any, train_on: TrainOn,
                          tools: Sequence[Any], exact: Any, facts: TemplateFacts) -> list[Rendered | QloraError]:
    try:
        render = compiled_renderer(tokenizer)
    except TemplateError:
        return exact(range(len(conversations)))
    texts: list[str | None] = []
    # Rendering is Python, tokenizing is Rust without the GIL: tokenize each chunk on a second thread
    # while the next one renders. Only that thread touches the tokenizer until all chunks are done.
    with ThreadPoolExecutor(max_workers=1) as tokenizing:
        futures = []
        for begin in range(0, len(conversations), CHUNK):
            chunk: list[str | None] = []
            for messages, record_tools in zip(conversations[begin:begin + CHUNK], tools[begin:begin + CHUNK]):
                try:
                    plain = messages if all(type(m) is dict for m in messages) else [dict(m) for m in messages]
                    chunk.append(render(plain, record_tools, False))
                except QloraError:  # e.g. the template raised on this one: the exact path decides (and names why)
                    chunk.append(None)
            texts += chunk
            futures.append(tokenizing.submit(_encode, tokenizer, [t or "" for t in chunk]))
        encoded = [encoding for future in futures for encoding in future.result()]

    results: list[Rendered | QloraError | None] = [None] * len(conversations)
    located: list[tuple[int, list[int], list[tuple[int, int]]]] = []
    for index, (messages, text) in enumerate(zip(conversations, texts)):
        problem = structure_problem(messages)
        if problem:  # the same rejection the exact path gives
            results[index] = QloraError(problem)
            continue
        if text is None:
            continue
        ids = encoded[index].ids
        spans = _locate(messages, text, ids, train_on, facts)
        if spans is not None:
            located.append((index, ids, spans))
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
    return results  # type: ignore[return-value]


def _locate(messages: Sequence[Mapping[str, Any]], text: str, ids: list[int], train_on: TrainOn,
            facts: TemplateFacts) -> list[tuple[int, int]] | None:
    """Token spans [start, end) to train, or None to leave the record to the exact path."""
    if train_on == "all":
        return [(0, len(ids))]
    assistants = [m for m in messages if m.get("role") == "assistant"]
    first_chosen = 0 if train_on == "assistant" else len(assistants) - 1
    prompt = facts.generation_prompt
    cursor = 0
    char_spans: list[tuple[int, int]] = []
    for number, message in enumerate(assistants):
        content = message.get("content")
        if not isinstance(content, str) or message.get("tool_calls"):
            return None
        content = content.strip()
        found = text.find(content, cursor) if content else -1
        if found < 0:
            return None
        header = text.rfind(prompt, cursor, found)
        if header < 0:
            return None
        special = facts.special_pattern.search(text, found + len(content))
        if special is None:
            return None
        cursor = special.end()
        if number >= first_chosen:
            char_spans.append((header + len(prompt), cursor))

    runs = _runs(ids, facts.generation_ids)
    if not len(runs) == text.count(prompt) == len(assistants):
        # One header per assistant turn, in text and in tokens, or the mapping is not certain: a generation
        # prompt tokenized differently in context (merged with what follows), or its text inside a message.
        return None
    token_spans: list[tuple[int, int]] = []
    width = len(facts.generation_ids)
    for start, end in char_spans:
        nth = text.count(prompt, 0, start)  # this turn's header is the nth generation prompt in the text
        token_start = runs[nth - 1] + width
        specials_inside = len(facts.special_pattern.findall(text, start, end))
        token_end = _after_nth_special(ids, token_start, specials_inside, facts.special_ids)
        if token_end is None:
            return None
        token_spans.append((token_start, token_end))
    return token_spans


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
    return (tools is not None, *((m.get("role"), bool(m.get("tool_calls")), bool(m.get("reasoning_content")),
                                  "name" in m) for m in messages))


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


__all__ = ["VERIFY_EVERY", "TemplateError", "render_batch", "template_facts"]
