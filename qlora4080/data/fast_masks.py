"""One template render per conversation instead of one per turn: a faster way to the exact masks.

The exact method (exact_masks.py) renders every prompt prefix of a conversation,
about k+1 renders for k assistant turns, and tokenizes each piece on its own.
This path reaches the same input_ids and labels with one render and one fast
whole-text tokenization per conversation:

1. render the whole conversation once through the compiled template (chunks
   are tokenized on a second thread while the next chunk renders);
2. find each assistant turn in that text, and then in its tokens (fast_spans.py):
   the exact method's span whenever the template renders prefixes
   consistently; a record where the mapping is not certain goes down the
   exact path.

What one render cannot see -- that the prompt rendered alone is exactly the
text before the turn, and that whole-text and piecewise tokenization agree --
is checked by running the exact method on the first conversation of every
shape (roles, tool calls, reasoning, tools) and on every VERIFY_EVERY-th one;
that check renders while the tokenizer thread still has chunks to do. A single
difference sends the whole batch, and the later batches that share its
FastPathState (one dataset), down the exact path: a template or tokenizer that
splits differently in general never uses this path. Records outside the
sample rely on the checks of step 2; `render_or_reject(..., fast=False)`
renders everything the exact way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING, cast

from ..errors import QloraError
from .compiled_template import compiled_renderer
from .fast_spans import TemplateFacts, backend_of, locate_turns, template_facts
from .templates import IGNORE_INDEX, Outcome, Render, Rendered, TemplateError, Tools
from .turns import Notes
from .validate import structure_problem
from .vocabulary import Message, TrainOn

if TYPE_CHECKING:
    from tokenizers import Encoding

    from .templates import Tokenizer

VERIFY_EVERY = 64
MIN_BATCH = 16
PROBE = 64  # a dataset whose first PROBE conversations mostly miss the fast path stops trying it
CHUNK = 256  # conversations rendered while the previous chunk is tokenized (the first chunk is the probe's)

ExactMethod = Callable[[Sequence[int]], Callable[[], list[Outcome]]]
"""exact(indices) renders and cuts those conversations the exact way now and returns the step that tokenizes them
(the fast path runs that step on its tokenizer thread). Raises TemplateError when the template cannot be mapped."""


@dataclass
class FastPathState:
    """Which path the batches of one dataset take, found out while rendering it.

    render_or_reject makes a fresh one per call unless given one, so earlier,
    unrelated calls never decide the path; pass the same object to every batch
    of one dataset to probe and verify the template once for all of them.
    """

    disabled: str = ""  # why these batches take the exact path, once found out
    tried: int = 0  # conversations offered to the fast path so far
    fast: int = 0  # ... and those it rendered (the rest took the exact path)


def render_batch(
    conversations: Sequence[Sequence[Message]],
    tokenizer: Tokenizer,
    train_on: TrainOn,
    tools: Sequence[Tools | None],
    exact: ExactMethod,
    state: FastPathState,
) -> tuple[list[Outcome], Notes]:
    """input_ids + labels for every conversation (or the error that rejects it), fast where proven equal.

    `exact` is the exact method on chosen conversations (see ExactMethod); a
    TemplateError it raises stops the batch as it would without this path.
    `state` says, and learns, whether this dataset's batches take this path.
    Also returns, for each record this path rendered, how its turns were located.
    """
    everything = range(len(conversations))
    if len(conversations) < MIN_BATCH:  # the verification sample would be most of it: render exactly
        return exact(everything)(), {}
    facts = template_facts(tokenizer, conversations[:3])
    if facts is not None and facts.unusable:
        state.disabled = state.disabled or facts.unusable
    if facts is None or state.disabled:
        return exact(everything)(), {}
    try:
        render = compiled_renderer(tokenizer)
    except TemplateError:
        return exact(everything)(), {}
    return _FastBatch(conversations, tokenizer, train_on, tools, exact, facts, state, render).run()


@dataclass
class _Chunk:
    begin: int
    texts: list[str | None]  # None: not rendered (rejected for its turn order, or the template raised)
    encodings: Future[list[Encoding]]


@dataclass
class _FastBatch:
    """One batch through the fast path: render, tokenize on a second thread, locate, verify against the exact path."""

    conversations: Sequence[Sequence[Message]]
    tokenizer: Tokenizer
    train_on: TrainOn
    tools: Sequence[Tools | None]
    exact: ExactMethod
    facts: TemplateFacts
    state: FastPathState
    render: Render
    results: list[Outcome | None] = field(default_factory=list)
    found: Notes = field(default_factory=dict)
    unrendered: list[int] = field(default_factory=list)
    misses: list[int] = field(default_factory=list)  # rendered, but left to the exact path by the checks of step 2
    located: int = 0  # conversations [0, located) have been through _locate_chunk
    tallied: int = 0  # ... and [0, tallied) counted into state.tried / state.fast

    def run(self) -> tuple[list[Outcome], Notes]:
        size = len(self.conversations)
        self.results = [None] * size
        probing = self.state.tried < PROBE < size
        sample = _verification_sample(self.conversations, self.tools)
        reference: dict[int, Outcome] = {}
        probe_failed = False
        # Rendering is Python, tokenizing is Rust without the GIL: the tokenizer thread encodes each chunk
        # while the next one renders, and is the only thread that touches the tokenizer until it is shut down.
        with ThreadPoolExecutor(max_workers=1) as tokenizing:
            waiting: deque[_Chunk] = deque()
            for begin, end in _chunk_bounds(size):
                texts = self._render_chunk(begin, end)
                waiting.append(_Chunk(begin, texts, tokenizing.submit(_encode, self.tokenizer, texts)))
                if len(waiting) > 1:  # locate the chunk before this one while the tokenizer works on this one
                    self._locate_chunk(waiting.popleft())
                if probing and self.located >= PROBE:  # the first chunk, PROBE conversations, is located
                    probing, probe_failed = False, self._probe_failed()
                    if probe_failed:
                        for chunk in waiting:
                            chunk.encodings.cancel()
                        break
            else:
                # Render the check's conversations now, while the tokenizer still has chunks to do; their
                # tokenization is queued after those chunks.
                checked = sorted(set(sample) | set(self.unrendered))
                check = tokenizing.submit(self.exact(checked))
                while waiting:
                    self._locate_chunk(waiting.popleft())
                reference.update(zip(checked, check.result()))
        if probe_failed:
            return self._after_failed_probe(sample)
        self._count()
        if self.misses:
            reference.update(zip(self.misses, self.exact(self.misses)()))
        return self._finish(sample, reference, range(size))

    def _render_chunk(self, begin: int, end: int) -> list[str | None]:
        texts: list[str | None] = []
        for index in range(begin, end):
            messages = self.conversations[index]
            problem = structure_problem(messages)
            if problem:  # the same rejection the exact path gives, without rendering
                self.results[index] = QloraError(problem)
                texts.append(None)
                continue
            try:
                # The compiled template reads plain dicts; anything else is copied into one, as transformers would.
                plain = messages if all(type(m) is dict for m in messages) else [
                    cast(Message, dict(m)) for m in messages]
                texts.append(self.render(plain, self.tools[index], False))
            except QloraError:  # e.g. the template raised on this one: the exact path decides (and names why)
                texts.append(None)
                self.unrendered.append(index)
        return texts

    def _locate_chunk(self, chunk: _Chunk) -> None:
        for index, text, encoding in zip(count(chunk.begin), chunk.texts, chunk.encodings.result()):
            if text is None:
                continue
            ids = encoding.ids
            located = locate_turns(self.conversations[index], text, ids, self.train_on, self.facts)
            if located is None:
                self.misses.append(index)
                continue
            token_spans, spans = located
            labels = [IGNORE_INDEX] * len(ids)
            for a, b in token_spans:
                labels[a:b] = ids[a:b]
            self.results[index] = _accept(ids, labels)
            self.found[index] = (["fast"] * len(spans), spans)
        self.located = chunk.begin + len(chunk.texts)

    def _count(self) -> None:
        """Add the conversations located since the last count to the state's tally."""
        self.state.tried += self.located - self.tallied
        self.state.fast += sum(isinstance(r, dict) for r in self.results[self.tallied:self.located])
        self.tallied = self.located

    def _probe_failed(self) -> bool:
        """Whether the probe's conversations mostly missed the fast path (which then stays off for this state)."""
        self._count()
        if self.state.fast < self.state.tried / 2:
            self.state.disabled = (f"only {self.state.fast} of the first {self.state.tried} conversations "
                                   "fit the fast path")
        return bool(self.state.disabled)

    def _after_failed_probe(self, sample: list[int]) -> tuple[list[Outcome], Notes]:
        """The probed head keeps its checked fast results; everything after it goes the exact way."""
        head = range(PROBE)
        checked = sorted({i for i in sample if i < PROBE} | {i for i in self.unrendered if i < PROBE}
                         | {i for i in self.misses if i < PROBE})
        reference = dict(zip(checked, self.exact(checked)()))
        results, notes = self._finish([i for i in sample if i < PROBE], reference, head)
        rest = self.exact(range(PROBE, len(self.conversations)))()
        return results + rest, notes

    def _finish(self, sample: Sequence[int], reference: Mapping[int, Outcome],
                indices: range) -> tuple[list[Outcome], Notes]:
        """Compare the sample with the exact path; fill in what the fast path left, or give it all to the exact path."""
        for index in sample:
            fast = self.results[index]
            if fast is not None and _differs(fast, reference[index]):
                self.state.disabled = f"conversation {index} differs between the fast and the exact path"
                return self.exact(indices)(), {}
        for index, outcome in reference.items():
            self.results[index] = outcome
        # Those in the sample were found equal to the exact path's; the exact path's own notes stand for the rest.
        notes = {index: note for index, note in self.found.items() if index in indices}
        return cast("list[Outcome]", self.results[indices.start:indices.stop]), notes


def _chunk_bounds(size: int) -> Iterator[tuple[int, int]]:
    """[begin, end) of each chunk: a small first one, the probe's (it also starts the tokenizer early), then CHUNK-sized ones."""
    begin, end = 0, min(PROBE, size)
    while begin < size:
        yield begin, end
        begin, end = end, min(end + CHUNK, size)


def _accept(ids: list[int], labels: list[int]) -> Rendered:
    """A conversation the fast path rendered (a seam for tests)."""
    return {"input_ids": ids, "labels": labels}


def _encode(tokenizer: Tokenizer, texts: Sequence[str | None]) -> list[Encoding]:
    """The Rust tokenizer on many texts at once, without offsets (what the tokenizer call does, faster)."""
    if not texts:
        return []
    backend = backend_of(tokenizer)
    assert backend is not None  # template_facts found it, or this path would not run
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: tokenizers >= 0.21
    return cast("list[Encoding]", encode([t or "" for t in texts], add_special_tokens=False))


def _shape(messages: Sequence[Message], tools: Tools | None) -> tuple[object, ...]:
    shape: list[object] = [tools is not None]
    for message in messages:
        fields: Mapping[str, object] = message  # "thinking" and "reasoning" are read too, though Message does not name them
        content = fields.get("content")
        shape.append((fields.get("role"), bool(fields.get("tool_calls")),
                      bool(fields.get("reasoning_content") or fields.get("thinking") or fields.get("reasoning")),
                      isinstance(content, str) and "</think>" in content, "name" in fields))
    return tuple(shape)


def _verification_sample(conversations: Sequence[Sequence[Message]], tools: Sequence[Tools | None]) -> list[int]:
    """The first conversation of every shape, and every VERIFY_EVERY-th one."""
    seen: set[tuple[object, ...]] = set()
    chosen = []
    for index, (messages, record_tools) in enumerate(zip(conversations, tools)):
        shape = _shape(messages, record_tools)
        if shape not in seen or index % VERIFY_EVERY == 0:
            seen.add(shape)
            chosen.append(index)
    return chosen


def _differs(fast: Outcome, reference: Outcome) -> bool:
    if isinstance(fast, QloraError) or isinstance(reference, QloraError):
        return isinstance(fast, QloraError) != isinstance(reference, QloraError)
    return fast["input_ids"] != reference["input_ids"] or fast["labels"] != reference["labels"]


__all__ = ["MIN_BATCH", "PROBE", "VERIFY_EVERY", "ExactMethod", "FastPathState", "render_batch"]
