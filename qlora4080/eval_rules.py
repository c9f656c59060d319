"""Pure checks on generated answers: is it usable, is it valid JSON. No model needed, so each rule is unit-tested."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

# A repeated n-gram "fills the output" when it covers this share of the tokens.
DEGENERATE_NGRAM = 4
DEGENERATE_MIN_TOKENS = 16
DEGENERATE_COVERAGE = 0.5
DEGENERATE_RUN = 12  # the same token this many times in a row


@dataclass(frozen=True)
class Generated:
    """One generated answer as the evaluator sees it."""

    text: str
    """Decoded answer without special tokens, up to the stop token."""
    raw_text: str
    """Decoded with special tokens kept, up to (not including) the stop token."""
    token_ids: tuple[int, ...]
    stopped: bool
    """True when an end-of-turn/EOS token ended it before max_new_tokens."""


def usability_failures(answer: Generated, special_tokens: tuple[str, ...], template_markers: tuple[str, ...] = ()) -> list[str]:
    """Reasons the answer is not usable; an empty list means usable."""
    reasons = []
    if not answer.text.strip():
        reasons.append("empty")
    if not answer.stopped:
        reasons.append("no end-of-turn before max_new_tokens")
    leaked = [token for token in (*special_tokens, *template_markers) if token and token in answer.raw_text]
    if leaked:
        reasons.append("template/special tokens leaked")
    if is_degenerate(answer.token_ids):
        reasons.append("degenerate repetition")
    return reasons


def is_degenerate(ids: tuple[int, ...] | list[int]) -> bool:
    """A single token repeated in a long run, or one n-gram repeated over half of a long output."""
    ids = list(ids)
    run = longest = 0
    for previous, current in zip([None, *ids], ids):
        run = run + 1 if current == previous else 1
        longest = max(longest, run)
    if longest >= DEGENERATE_RUN:
        return True
    if len(ids) < DEGENERATE_MIN_TOKENS:
        return False
    grams = Counter(tuple(ids[i : i + DEGENERATE_NGRAM]) for i in range(len(ids) - DEGENERATE_NGRAM + 1))
    _, count = grams.most_common(1)[0]
    return count >= 3 and count * DEGENERATE_NGRAM / len(ids) >= DEGENERATE_COVERAGE


def json_check(answer: str, reference: str | None) -> tuple[bool, bool | None]:
    """(answer parses as JSON, same top-level keys as the reference when the reference is a JSON object)."""
    try:
        parsed = json.loads(answer)
    except (json.JSONDecodeError, TypeError):
        return False, False if json_object(reference) is not None else None
    expected = json_object(reference)
    if expected is None:
        return True, None
    return True, isinstance(parsed, dict) and set(parsed) == set(expected)


def json_object(text: str | None) -> dict[str, object] | None:
    """The JSON object the whole text is, or None (not JSON, or JSON that is not an object)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
